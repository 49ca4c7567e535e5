//! The command line (clap): subcommands and the flags that override the config file.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// campeer: watch this board's camera from any browser, over WebRTC.
#[derive(Debug, Parser)]
#[command(name = "campeer", version, about, long_about = None)]
pub struct Cli {
    /// Config file (TOML). The default path is used only if it exists; a path given here must exist.
    #[arg(
        long,
        short,
        global = true,
        env = "CAMPEER_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    /// Log filter (overrides log.level), e.g. `debug` or `campeer=debug,webrtc=warn`.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture, encode once and stream to every viewer of the room (embedded signaling server and
    /// viewer page unless --signal-url points at a remote one).
    Run(RunArgs),
    /// Run only the signaling server and viewer page (for a public host).
    Serve(ServeArgs),
    /// List cameras, audio capture devices and H.264 encoders.
    Devices {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration and exit (non-zero with the offending key when it is wrong).
    Check,
    /// Print an access token for a room.
    Token {
        /// Room name (`*` for every room).
        #[arg(long)]
        room: String,
        /// `viewer` or `camera`.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Validity, e.g. `24h`, `30d`, `90m`.
        #[arg(long, default_value = "24h")]
        ttl: String,
    },
}

/// Flags of `campeer run`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// Room to publish in [default: camera].
    #[arg(long)]
    pub room: Option<String>,
    /// Address of the embedded server [default: 0.0.0.0:8080].
    #[arg(long)]
    pub listen: Option<String>,
    /// Use a remote signaling server (ws:// or wss://…/ws) instead of the embedded one.
    #[arg(long)]
    pub signal_url: Option<String>,
    /// Video source: auto, test, v4l2:/dev/videoN, libcamera[:name], pipeline:<desc> [default: auto].
    #[arg(long)]
    pub video: Option<String>,
    /// Audio source: none, test, alsa:<device>, pipeline:<desc> [default: none].
    #[arg(long)]
    pub audio: Option<String>,
}

/// Flags of `campeer serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 0.0.0.0:8080].
    #[arg(long)]
    pub listen: Option<String>,
}
