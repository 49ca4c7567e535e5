//! The built binary's command line: config errors name the key and line, `check` passes every
//! shipped config, `token` prints tokens, `--help` shows the flags.

mod common;
use std::process::Command;

fn campeer(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(common::bin());
    cmd.args(args).env_remove("CAMPEER_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run campeer");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &common::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn a_missing_config_file_is_an_error() {
    let (code, _, err) = campeer(&["check", "--config", "/nonexistent/campeer.toml"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/campeer.toml"), "{err}");
}

#[test]
fn an_unknown_key_names_the_key_and_line() {
    let dir = common::TempDir::new("cli");
    let f = write(
        &dir,
        "c.toml",
        "[camera]\nroom = \"yard\"\n\n[video]\nwidth = 640\nframe-rate = 30\n",
    );
    let (code, _, err) = campeer(&["check", "--config", &f], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("frame-rate") && err.contains("line 6"),
        "{err}"
    );
}

#[test]
fn a_bad_value_names_the_key_and_line() {
    let dir = common::TempDir::new("cli");
    let f = write(&dir, "c.toml", "[video]\nbitrate-kbps = \"lots\"\n");
    let (code, _, err) = campeer(&["check", "--config", &f], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("bitrate-kbps") && err.contains("line 2"),
        "{err}"
    );
    // A value of the right type but out of range names the key too.
    let f = write(&dir, "d.toml", "[video]\nframerate = 1000\n");
    let (code, _, err) = campeer(&["check", "--config", &f], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("video.framerate"), "{err}");
    // And so does a bad environment override.
    let (code, _, err) = campeer(&["check"], &[("CAMPEER__VIDEO__SOURCE", "webcam")]);
    assert_ne!(code, 0);
    assert!(err.contains("video.source"), "{err}");
}

#[test]
fn check_passes_every_shipped_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for dir in ["config", "config/examples"] {
        for e in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                files.push(p);
            }
        }
    }
    assert!(
        files.len() >= 4,
        "config/campeer.toml and three examples: {files:?}"
    );
    for f in files {
        let (code, out, err) = campeer(&["check", "--config", f.to_str().unwrap()], &[]);
        assert_eq!(code, 0, "{}: {out}{err}", f.display());
        assert!(out.contains("valid"), "{out}");
    }
}

#[test]
fn token_prints_a_token_for_the_room_and_role() {
    let dir = common::TempDir::new("cli");
    let secret = dir.path().join("secret");
    let env = [(
        "CAMPEER__SERVER__SECRET_FILE",
        format!("\"{}\"", secret.display()),
    )];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, out, err) = campeer(
        &["token", "--room", "yard", "--role", "viewer", "--ttl", "2h"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let token = out.trim();
    let key = campeer::signal::token::TokenKey::new(
        std::fs::read_to_string(&secret)
            .unwrap()
            .trim()
            .as_bytes()
            .to_vec(),
    );
    let now = std::time::SystemTime::now();
    let claims = key
        .verify(token, "yard", campeer::signal::protocol::Role::Viewer, now)
        .expect("valid token");
    let secs = claims.exp - now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!((7100..=7200).contains(&secs), "{secs}");
    assert!(
        key.verify(token, "yard", campeer::signal::protocol::Role::Camera, now)
            .is_err()
    );
    let (code, _, err) = campeer(&["token", "--room", "yard", "--role", "admin"], &env);
    assert_ne!(code, 0);
    assert!(err.contains("admin"), "{err}");
}

#[test]
fn run_help_shows_the_flags() {
    let (code, out, _) = campeer(&["run", "--help"], &[]);
    assert_eq!(code, 0);
    for flag in [
        "--room",
        "--listen",
        "--signal-url",
        "--video",
        "--audio",
        "--config",
    ] {
        assert!(out.contains(flag), "{flag} missing from:\n{out}");
    }
    let (code, out, _) = campeer(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("campeer "), "{out}");
}
