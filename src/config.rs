//! campeer's configuration: the TOML file, environment overrides and command-line overrides.
//!
//! Owns the shape of every key (kebab-case, unknown keys refused), its default, and validation.
//! Precedence, lowest first: built-in defaults, the file, `CAMPEER__SECTION__KEY` environment
//! variables, command-line flags. `config/campeer.toml` documents every key.

use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, naming the key (and the line, for the file).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a bad value.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message: line, column, key and what was expected.
        message: String,
    },
    /// An environment override is malformed or names an unknown key.
    #[error("environment override {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// Dotted key path, e.g. `video.width`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The camera side of `campeer run`.
    pub camera: CameraConfig,
    /// What is captured and how it is encoded.
    pub video: VideoConfig,
    /// Audio capture and Opus encoding.
    pub audio: AudioConfig,
    /// The signaling server (embedded in `run`, standalone in `serve`).
    pub server: ServerConfig,
    /// STUN/TURN servers for the camera and the viewers.
    pub ice: IceConfig,
    /// Recording to disk.
    pub record: RecordConfig,
    /// HLS for players without WebRTC.
    pub hls: HlsConfig,
    /// RTMP servers the stream is pushed to.
    pub rtmp: Vec<RtmpConfig>,
    /// The RTSP server for NVRs, VLC and ffmpeg.
    pub rtsp: RtspConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[camera]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct CameraConfig {
    /// The room this camera joins.
    pub room: String,
    /// The camera's display name (default: the host name).
    pub name: String,
    /// A remote signaling server (`ws://` or `wss://…/ws`); empty means the embedded server.
    pub signal_url: String,
    /// The camera token for a remote server (the embedded server's cameras mint their own).
    pub token: String,
    /// Extra PEM certificates trusted for a `wss://` signal-url (private CA, self-signed).
    pub signal_ca: Option<std::path::PathBuf>,
    /// Most viewers served at once; the next one gets an `error`.
    pub max_viewers: usize,
    /// Keep capturing with no viewer (`true`), or only while someone watches (`false`).
    pub always_on: bool,
    /// With `always-on = false`: how long capture keeps running after the last viewer leaves.
    #[serde(deserialize_with = "de_duration")]
    pub idle_stop: Duration,
    /// `/healthz` reports unhealthy, and capture restarts, when no frame came for this long.
    #[serde(deserialize_with = "de_duration")]
    pub stall_timeout: Duration,
    /// A viewer whose connection is not up this long after its answer is dropped, and its
    /// place among `max-viewers` freed.
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Local UDP addresses WebRTC binds. `0.0.0.0:0` means every interface except loopback, so
    /// loopback is listed on its own for viewers on the board itself.
    pub rtc_bind: Vec<String>,
    /// Resolve viewers' `.local` (mDNS) host candidates with multicast DNS queries. Helps direct
    /// LAN connections come up faster; off sends no multicast at all.
    pub mdns: bool,
    /// `lowest`: the playout-delay RTP extension (min=max=0) on every video packet, so the
    /// browser shows each frame at once; `smooth`: the browser's own jitter buffering.
    pub latency: LatencyMode,
    /// Pictures a second in the `/mjpeg` stream (0: no `/mjpeg`).
    pub mjpeg_fps: u32,
}

/// How the browser is asked to buffer video.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatencyMode {
    /// playout-delay min=max=0: no jitter buffer beyond what decoding needs.
    #[default]
    Lowest,
    /// No playout-delay extension: the browser buffers as it sees fit.
    Smooth,
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
            room: "camera".into(),
            name: String::new(),
            signal_url: String::new(),
            token: String::new(),
            signal_ca: None,
            max_viewers: 10,
            always_on: true,
            idle_stop: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            rtc_bind: vec!["0.0.0.0:0".into(), "127.0.0.1:0".into()],
            mdns: true,
            latency: LatencyMode::default(),
            mjpeg_fps: 10,
        }
    }
}

/// `[video]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct VideoConfig {
    /// `auto`, `test`, `v4l2:/dev/videoN`, `libcamera[:name]` or `pipeline:<gst-launch>`.
    pub source: String,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frames per second.
    pub framerate: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Time between periodic keyframes.
    #[serde(deserialize_with = "de_duration")]
    pub keyframe_interval: Duration,
    /// `auto` or a GStreamer H.264 encoder element name.
    pub encoder: String,
    /// The codec for viewers whose browser cannot decode H.264: `vp8` (a second encode, run
    /// only while such a viewer watches) or `none` (they get a clear refusal).
    pub fallback: Fallback,
    /// What to do with a V4L2 camera's own H.264: pass it through, or decode and encode it.
    pub camera_h264: CameraH264,
    /// Lower renditions for viewers on slow links: `auto`, `none` or a comma-separated list of
    /// `WIDTHxHEIGHT@KBPS`.
    pub lower_rungs: String,
}

pub use crate::media::source::CameraH264;

impl VideoConfig {
    /// The lower renditions `lower-rungs` asks for, highest first (`auto`: derived from the
    /// main size and bitrate, see [`RungSpec::auto_for`]).
    pub fn lower_rungs(&self) -> Result<Vec<RungSpec>, RungSpecError> {
        RungSpec::parse_list(
            &self.lower_rungs,
            self.width,
            self.height,
            self.bitrate_kbps,
        )
    }
}

use crate::media::rendition::{RungSpec, RungSpecError};

/// `video.fallback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// VP8, encoded once for every such viewer.
    Vp8,
    /// No second encode.
    None,
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self {
            source: "auto".into(),
            width: 1280,
            height: 720,
            framerate: 30,
            bitrate_kbps: 2500,
            keyframe_interval: Duration::from_secs(2),
            encoder: "auto".into(),
            fallback: Fallback::Vp8,
            camera_h264: CameraH264::Auto,
            lower_rungs: "auto".into(),
        }
    }
}

/// `[audio]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AudioConfig {
    /// `none`, `test`, `alsa:<device>` or `pipeline:<gst-launch>`.
    pub source: String,
    /// Opus bitrate in kbit/s.
    pub bitrate_kbps: u32,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            source: "none".into(),
            bitrate_kbps: 64,
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerConfig {
    /// Address the HTTP/WebSocket server listens on.
    pub listen: String,
    /// PEM certificate chain; with `tls-key`, serves https/wss.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Rooms anyone may join without a token; `"*"` opens every room.
    pub open_rooms: Vec<String>,
    /// The token secret itself (prefer `secret-file`).
    pub secret: String,
    /// File holding the token secret; created with a random secret when missing.
    pub secret_file: Option<PathBuf>,
    /// Largest signaling message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Most peers in one room.
    pub max_peers_per_room: usize,
    /// Most rooms at once.
    pub max_rooms: usize,
    /// Sustained messages per second one connection may send (bursts of twice that pass).
    pub messages_per_second: u32,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// A WebSocket that has not joined a room this long after opening (or leaving one) is closed.
    #[serde(deserialize_with = "de_duration")]
    pub join_timeout: Duration,
    /// HTTP request headers (and a TLS handshake) must arrive within this.
    #[serde(deserialize_with = "de_duration")]
    pub header_timeout: Duration,
    /// Most open connections; 0 = three quarters of the file-descriptor limit.
    pub max_connections: usize,
    /// Most open connections from one address.
    pub max_connections_per_address: usize,
    /// Origins whose pages may open `/ws` besides the server's own; `*` allows every origin.
    pub allowed_origins: Vec<String>,
    /// Names (besides addresses and LAN-only names) pages may reach this server by over plain
    /// http and still use open rooms without a token; `*` trusts every name.
    pub host_names: Vec<String>,
    /// A bearer token that opens `/metrics` to other machines (empty: this machine only).
    pub metrics_token: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            tls_cert: None,
            tls_key: None,
            open_rooms: vec![],
            secret: String::new(),
            secret_file: None,
            max_message_bytes: 64 * 1024,
            max_peers_per_room: 64,
            max_rooms: 1024,
            messages_per_second: 50,
            idle_timeout: Duration::from_secs(60),
            join_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_connections: 0,
            max_connections_per_address: 64,
            allowed_origins: vec![],
            host_names: vec![],
            metrics_token: String::new(),
        }
    }
}

/// `[ice]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct IceConfig {
    /// Static STUN/TURN servers, for the camera and handed to viewers.
    pub servers: Vec<IceServerConfig>,
    /// TURN REST (coturn `use-auth-secret`) ephemeral credentials.
    pub turn_rest: Option<TurnRestConfig>,
    /// `all` or `relay` (TURN only).
    pub transport_policy: TransportPolicy,
}

/// One `[[ice.servers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct IceServerConfig {
    /// `stun:`, `turn:` or `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN user name.
    #[serde(default)]
    pub username: Option<String>,
    /// TURN password.
    #[serde(default)]
    pub credential: Option<String>,
}

/// `[ice.turn-rest]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TurnRestConfig {
    /// `turn:`/`turns:` URLs of the coturn server.
    pub urls: Vec<String>,
    /// coturn's `static-auth-secret`.
    pub secret: String,
    /// How long handed-out credentials stay valid.
    #[serde(default = "default_turn_ttl", deserialize_with = "de_duration")]
    pub ttl: Duration,
    /// Also hand credentials to peers in open rooms, who joined without a token (anyone who
    /// can reach the server could then relay through the TURN server).
    #[serde(default)]
    pub for_open_rooms: bool,
}

fn default_turn_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// ICE transport policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportPolicy {
    /// `all` on the LAN; a camera that joins a remote server and has a TURN server uses
    /// `relay` for its own connections (webrtc-rs 0.21.1 was seen to fail DTLS over relay pairs
    /// through a symmetric NAT when host and server-reflexive pairs were also in play).
    #[default]
    Auto,
    /// Host, server-reflexive and relay candidates.
    All,
    /// Relay (TURN) candidates only.
    Relay,
}

/// `[record]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RecordConfig {
    /// Record from start-up (`POST /recordings/start` and `/stop` switch it at run time).
    pub enabled: bool,
    /// The directory segments are written to (created when missing).
    pub path: std::path::PathBuf,
    /// A segment is closed at the first keyframe after this long.
    #[serde(deserialize_with = "de_duration")]
    pub segment: Duration,
    /// Segments last written longer ago than this are deleted (`0s`: kept whatever their age).
    #[serde(deserialize_with = "de_duration")]
    pub keep: Duration,
    /// The oldest segments are deleted while all of them together take more (0: no cap).
    pub max_disk_mb: u64,
    /// The oldest segments are deleted while the file system has less free space than this.
    pub min_free_mb: u64,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            path: "/var/lib/campeer/recordings".into(),
            segment: Duration::from_secs(60),
            keep: Duration::from_secs(7 * 24 * 3600),
            max_disk_mb: 0,
            min_free_mb: 256,
        }
    }
}

/// One `[[rtmp]]` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RtmpConfig {
    /// `rtmp://host[:port]/app/streamkey` (or `rtmps://`).
    pub url: String,
}

/// `[hls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct HlsConfig {
    /// Serve `/hls/<room>/index.m3u8`.
    pub enabled: bool,
    /// Segmenting stops this long after the last request for the playlist.
    #[serde(deserialize_with = "de_duration")]
    pub idle_stop: Duration,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            idle_stop: Duration::from_secs(30),
        }
    }
}

/// `[rtsp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RtspConfig {
    /// Serve `rtsp://host:port/<room>`.
    pub enabled: bool,
    /// Address:port of the RTSP listener.
    pub listen: String,
    /// The user name clients give.
    pub user: String,
    /// The password clients give (digest or basic authentication).
    pub password: String,
    /// Serve without credentials (the operator's explicit choice).
    pub open: bool,
}

impl Default for RtspConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "0.0.0.0:8554".into(),
            user: "campeer".into(),
            password: String::new(),
            open: false,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `campeer=debug,webrtc=warn`, ...
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration like \"5s\" or \"24h\": {e}"
        ))
    })
}

/// The default config file path.
pub const DEFAULT_PATH: &str = "/etc/campeer/campeer.toml";

impl Config {
    /// Load: the file (when `path` is `Some`, it must exist; `None` means defaults only), then
    /// the `CAMPEER__…` variables from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        let shown = path
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("<defaults>"));
        // Parse the file alone first, so errors carry its line and column.
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("CAMPEER__"))
            .collect();
        if !overrides.is_empty() {
            // Same text parsed successfully just above.
            let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: shown.clone(),
                message: e.to_string(),
            })?;
            for (var, value) in &overrides {
                apply_env(&mut table, var, value)?;
            }
            config = toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Env {
                    var: overrides
                        .iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    message: e.message().to_owned(),
                })?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Check values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message,
            })
        };
        if !crate::signal::router::valid_room(&self.camera.room) {
            return bad(
                "camera.room",
                format!(
                    "{:?}: 1-64 characters of A-Z a-z 0-9 _ - .",
                    self.camera.room
                ),
            );
        }
        if !(16..=7680).contains(&self.video.width) || self.video.width % 2 != 0 {
            return bad(
                "video.width",
                format!("{} (expected an even number 16-7680)", self.video.width),
            );
        }
        if !(16..=4320).contains(&self.video.height) || self.video.height % 2 != 0 {
            return bad(
                "video.height",
                format!("{} (expected an even number 16-4320)", self.video.height),
            );
        }
        if !(1..=240).contains(&self.video.framerate) {
            return bad(
                "video.framerate",
                format!("{} (expected 1-240)", self.video.framerate),
            );
        }
        if self.camera.stall_timeout < Duration::from_secs(1) {
            // Below a second, a slow first frame or a low frame rate would restart capture.
            return bad(
                "camera.stall-timeout",
                format!(
                    "{:?} (capture restarts after this long without a frame: at least 1s)",
                    self.camera.stall_timeout
                ),
            );
        }
        if self.camera.connect_timeout < Duration::from_secs(1) {
            return bad(
                "camera.connect-timeout",
                format!(
                    "{:?} (a viewer's connection needs time to come up: at least 1s)",
                    self.camera.connect_timeout
                ),
            );
        }
        if let Err(e) = self.video.lower_rungs() {
            return bad("video.lower-rungs", e.to_string());
        }
        if !(50..=100_000).contains(&self.video.bitrate_kbps) {
            return bad(
                "video.bitrate-kbps",
                format!("{} (expected 50-100000)", self.video.bitrate_kbps),
            );
        }
        if self.video.keyframe_interval < Duration::from_millis(100)
            || self.video.keyframe_interval > Duration::from_secs(60)
        {
            return bad(
                "video.keyframe-interval",
                format!("{:?} (expected 100ms-60s)", self.video.keyframe_interval),
            );
        }
        if let Err(e) = crate::media::source::VideoSource::parse(&self.video.source) {
            return bad("video.source", e);
        }
        if let Err(e) = crate::media::source::AudioSource::parse(&self.audio.source) {
            return bad("audio.source", e);
        }
        if !(6..=510).contains(&self.audio.bitrate_kbps) {
            return bad(
                "audio.bitrate-kbps",
                format!("{} (expected 6-510)", self.audio.bitrate_kbps),
            );
        }
        if self.camera.max_viewers == 0 {
            return bad("camera.max-viewers", "0 (at least 1)".into());
        }
        if !self.camera.signal_url.is_empty()
            && !(self.camera.signal_url.starts_with("ws://")
                || self.camera.signal_url.starts_with("wss://"))
        {
            return bad(
                "camera.signal-url",
                format!("{:?} (expected ws://… or wss://…)", self.camera.signal_url),
            );
        }
        if let Some(ca) = &self.camera.signal_ca {
            if let Err(e) = std::fs::metadata(ca) {
                return bad("camera.signal-ca", format!("{}: {e}", ca.display()));
            }
        }
        if self.camera.rtc_bind.is_empty() {
            return bad(
                "camera.rtc-bind",
                "empty (at least one address:port)".into(),
            );
        }
        for a in &self.camera.rtc_bind {
            if a.parse::<std::net::SocketAddr>().is_err() {
                return bad("camera.rtc-bind", format!("{a:?} is not an address:port"));
            }
        }
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "server.listen",
                format!("{:?} is not an address:port", self.server.listen),
            );
        }
        if self.rtsp.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "rtsp.listen",
                format!("{:?} is not an address:port", self.rtsp.listen),
            );
        }
        if self.rtsp.enabled && !self.rtsp.open {
            if self.rtsp.user.is_empty() || self.rtsp.user.contains(':') {
                return bad(
                    "rtsp.user",
                    format!("{:?} (a name without ':')", self.rtsp.user),
                );
            }
            if self.rtsp.password.chars().count() < 8 {
                return bad(
                    "rtsp.password",
                    "at least 8 characters (or rtsp.open = true to serve without credentials)"
                        .into(),
                );
            }
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return bad("server.tls-cert", "tls-cert and tls-key go together".into());
        }
        for room in &self.server.open_rooms {
            if room != "*" && !crate::signal::router::valid_room(room) {
                return bad(
                    "server.open-rooms",
                    format!("{room:?} is not a valid room name"),
                );
            }
        }
        if self.server.max_message_bytes < 1024 || self.server.max_message_bytes > 1024 * 1024 {
            return bad(
                "server.max-message-bytes",
                format!("{} (expected 1024-1048576)", self.server.max_message_bytes),
            );
        }
        if self.server.messages_per_second == 0 {
            return bad("server.messages-per-second", "0 (at least 1)".into());
        }
        if self.server.max_peers_per_room < 2 {
            return bad(
                "server.max-peers-per-room",
                format!("{} (at least 2)", self.server.max_peers_per_room),
            );
        }
        if self.server.max_rooms == 0 {
            return bad("server.max-rooms", "0 (at least 1)".into());
        }
        for (key, d) in [
            ("server.join-timeout", self.server.join_timeout),
            ("server.header-timeout", self.server.header_timeout),
        ] {
            if d < Duration::from_secs(1) {
                return bad(key, format!("{d:?} (at least 1s)"));
            }
        }
        for o in &self.server.allowed_origins {
            let ok = o == "*"
                || ((o.starts_with("http://") || o.starts_with("https://"))
                    && !o
                        .trim_end_matches('/')
                        .contains(|c: char| c == '?' || c == '#')
                    && o.split("://").nth(1).is_some_and(|a| {
                        let a = a.trim_end_matches('/');
                        !a.is_empty() && !a.contains('/')
                    }));
            if !ok {
                return bad(
                    "server.allowed-origins",
                    format!("{o:?} (expected \"*\" or an origin: http[s]://host[:port])"),
                );
            }
        }
        for n in &self.server.host_names {
            let ok = n == "*"
                || (!n.is_empty()
                    && n.len() <= 253
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
            if !ok {
                return bad(
                    "server.host-names",
                    format!("{n:?} (expected \"*\" or a DNS name without scheme or port)"),
                );
            }
        }
        if self.record.segment < Duration::from_secs(2)
            || self.record.segment > Duration::from_secs(3600)
        {
            return bad(
                "record.segment",
                format!("{:?} (expected 2s-1h)", self.record.segment),
            );
        }
        for (i, t) in self.rtmp.iter().enumerate() {
            let ok = (t.url.starts_with("rtmp://") || t.url.starts_with("rtmps://"))
                && t.url
                    .split("://")
                    .nth(1)
                    .is_some_and(|r| r.split('/').count() >= 3)
                && !t.url.contains(char::is_whitespace);
            if !ok {
                return bad(
                    &format!("rtmp[{i}].url"),
                    format!(
                        "{:?} (expected rtmp://host[:port]/app/streamkey)",
                        crate::outputs::rtmp::without_key(&t.url)
                    ),
                );
            }
        }
        if self.hls.idle_stop < Duration::from_secs(1) {
            return bad(
                "hls.idle-stop",
                format!(
                    "{:?} (players ask every segment: at least 1s)",
                    self.hls.idle_stop
                ),
            );
        }
        if self.record.path.as_os_str().is_empty() {
            return bad("record.path", "empty (a directory for the segments)".into());
        }
        if self.server.max_connections_per_address == 0 {
            return bad(
                "server.max-connections-per-address",
                "0 (at least 1)".into(),
            );
        }
        for (i, s) in self.ice.servers.iter().enumerate() {
            check_ice_urls(&format!("ice.servers[{i}].urls"), &s.urls)?;
        }
        if let Some(t) = &self.ice.turn_rest {
            check_ice_urls("ice.turn-rest.urls", &t.urls)?;
            if t.secret.is_empty() {
                return bad("ice.turn-rest.secret", "empty".into());
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return bad(
                "log.level",
                format!("{:?} is not a log filter", self.log.level),
            );
        }
        Ok(())
    }
}

fn check_ice_urls(key: &str, urls: &[String]) -> Result<(), ConfigError> {
    if urls.is_empty() {
        return Err(ConfigError::Invalid {
            key: key.into(),
            message: "no URL".into(),
        });
    }
    for u in urls {
        if !(u.starts_with("stun:") || u.starts_with("turn:") || u.starts_with("turns:")) {
            return Err(ConfigError::Invalid {
                key: key.into(),
                message: format!("{u:?} (expected stun:, turn: or turns:)"),
            });
        }
    }
    Ok(())
}

/// Apply one `CAMPEER__SECTION__KEY=value` override to the raw table. The value is read as a
/// TOML value when it is one (`5`, `true`, `["a"]`), else as a string.
fn apply_env(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let path: Vec<String> = var
        .trim_start_matches("CAMPEER__")
        .split("__")
        .map(|p| p.to_ascii_lowercase().replace('_', "-"))
        .collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(err("expected CAMPEER__SECTION__KEY".into()));
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let (last, parents) = path.split_last().ok_or_else(|| err("empty key".into()))?;
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| err(format!("`{p}` is not a section")))?;
    }
    cur.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "campeer-cfg-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        let r = Config::load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, []).unwrap();
        assert_eq!(c.video.width, 1280);
        assert_eq!(c.camera.room, "camera");
        assert!(
            c.server.open_rooms.is_empty(),
            "rooms must be protected by default"
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = load_str("[video]\nwidth = 640\nwidht = 480\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("widht") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn rtsp_needs_a_password_unless_opened_on_purpose() {
        let e = load_str("[rtsp]\nenabled = true\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rtsp.password"), "{e}");
        let e = load_str("[rtsp]\nenabled = true\npassword = \"short\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rtsp.password"), "{e}");
        let e = load_str(
            "[rtsp]\nenabled = true\nuser = \"a:b\"\npassword = \"long enough\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rtsp.user"), "{e}");
        let e = load_str("[rtsp]\nlisten = \"8554\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rtsp.listen"), "{e}");
        for ok in [
            "[rtsp]\nenabled = true\npassword = \"long enough\"\n",
            "[rtsp]\nenabled = true\nopen = true\n",
        ] {
            assert!(load_str(ok, &[]).is_ok(), "{ok}");
        }
        // Off by default, and then nothing is asked of it.
        // unwrap: the empty configuration is valid
        assert!(!load_str("", &[]).unwrap().rtsp.enabled);
    }

    #[test]
    fn bad_value_names_key() {
        let e = load_str("[video]\nframerate = \"fast\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("framerate") && e.contains("line 2"), "{e}");
        let e = load_str("[video]\nwidth = 641\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("video.width"), "{e}");
        let e = load_str("[camera]\nidle-stop = \"soon\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("idle-stop") || e.contains("soon"), "{e}");
        let e = load_str("[camera]\nstall-timeout = \"200ms\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("camera.stall-timeout"), "{e}");
        let e = load_str("[video]\nfallback = \"vp9\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("vp9"), "{e}");
        let e = load_str("[video]\ncamera-h264 = \"transcode\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("transcode"), "{e}");
        // unwrap: a valid value
        let c = load_str("", &[("CAMPEER__VIDEO__CAMERA_H264", "re-encode")]).unwrap();
        assert_eq!(c.video.camera_h264, CameraH264::ReEncode);
    }

    #[test]
    fn env_overrides_file() {
        let c = load_str(
            "[video]\nwidth = 640\n",
            &[
                ("CAMPEER__VIDEO__WIDTH", "320"),
                ("CAMPEER__CAMERA__ROOM", "shed"),
                ("CAMPEER__SERVER__OPEN_ROOMS", "[\"shed\"]"),
            ],
        )
        .unwrap();
        assert_eq!(c.video.width, 320);
        assert_eq!(c.camera.room, "shed");
        assert_eq!(c.server.open_rooms, vec!["shed".to_string()]);
        let e = load_str("", &[("CAMPEER__VIDEO__COLOUR", "red")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CAMPEER__VIDEO__COLOUR") && e.contains("colour"),
            "{e}"
        );
    }
}
