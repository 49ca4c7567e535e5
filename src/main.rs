//! `campeer`: clap → config → tracing → run.

use anyhow::{Context, bail};
use campeer::cli::{Cli, Command};
use campeer::config::{self, Config};
use campeer::signal::protocol::Role;
use clap::Parser;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

fn load_config(cli: &Cli) -> Result<(Config, Option<PathBuf>), config::ConfigError> {
    let path = match &cli.config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(config::DEFAULT_PATH)).filter(|p| p.exists()),
    };
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    // Flags override the file and the environment: apply them as the last overrides.
    let mut flag = |section: &str, key: &str, value: &Option<String>| {
        if let Some(v) = value {
            env.push((format!("CAMPEER__{section}__{key}"), toml_string(v)));
        }
    };
    match &cli.command {
        Command::Run(a) => {
            flag("CAMERA", "ROOM", &a.room);
            flag("SERVER", "LISTEN", &a.listen);
            flag("CAMERA", "SIGNAL_URL", &a.signal_url);
            flag("VIDEO", "SOURCE", &a.video);
            flag("AUDIO", "SOURCE", &a.audio);
        }
        Command::Serve(a) => flag("SERVER", "LISTEN", &a.listen),
        _ => {}
    }
    if let Some(level) = &cli.log_level {
        env.push(("CAMPEER__LOG__LEVEL".into(), toml_string(level)));
    }
    let config = Config::load(path.as_deref(), env)?;
    Ok((config, path))
}

/// Quote a flag value as a TOML string so it is never read as a number or array.
fn toml_string(v: &str) -> String {
    toml::Value::String(v.to_owned()).to_string()
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("webrtc=warn,rtc=warn,{level}"))
    });
    let tty = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(tty);
    // journald adds its own timestamps; plain lines there.
    if tty {
        builder.init()
    } else {
        builder.without_time().init()
    }
    // webrtc-rs reports send-path errors only through `log`: route them into tracing.
    let _ = tracing_log::LogTracer::init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (config, path) = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("campeer: {e:#}");
            std::process::exit(2);
        }
    };
    match cli.command {
        Command::Check => {
            let shown = path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "built-in defaults".into());
            println!("{shown}: configuration is valid");
            Ok(())
        }
        Command::Token { room, role, ttl } => {
            let role: Role = role.parse().map_err(anyhow::Error::msg)?;
            let ttl: Duration =
                humantime::parse_duration(&ttl).with_context(|| format!("--ttl {ttl:?}"))?;
            if room != "*" && !campeer::signal::router::valid_room(&room) {
                bail!("--room {room:?}: 1-64 characters of A-Z a-z 0-9 _ - .");
            }
            let key = campeer::signal::token::TokenKey::new(campeer::signal::load_secret(&config)?);
            println!("{}", key.sign(&room, role, ttl, SystemTime::now()));
            Ok(())
        }
        Command::Devices { json } => {
            let inv = campeer::devices::inventory();
            if json {
                println!("{}", serde_json::to_string_pretty(&inv)?);
            } else {
                print!("{}", campeer::devices::render(&inv));
            }
            Ok(())
        }
        Command::Run(_) | Command::Serve(_) => {
            init_tracing(&config.log.level);
            let cli_for_reload = Cli::parse();
            let reload: campeer::daemon::Reload =
                Box::new(move || load_config(&cli_for_reload).map(|(c, _)| c));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let result = rt.block_on(async {
                match cli.command {
                    Command::Serve(_) => campeer::daemon::serve(config, reload).await,
                    _ => campeer::daemon::run(config, reload).await,
                }
            });
            // Do not wait for stray blocking tasks (a device stuck in a syscall).
            rt.shutdown_timeout(Duration::from_millis(300));
            result.map_err(|e| {
                tracing::error!(error = %e, "campeer stopped");
                anyhow::Error::new(e)
            })
        }
    }
}
