//! The camera side of `campeer run`: joins its room on the signaling server (embedded or remote)
//! as `camera`, answers every viewer's offer with a WebRTC connection fed from the one encode,
//! trickles ICE both ways, and cleans viewers up when they leave, close or fail.
//!
//! One task owns the signaling connection and every viewer's [`peer::Peer`]; webrtc-rs callbacks
//! reach it only through a channel, and so do calls from outside the room (WHEP players,
//! [`CallCommand`]), which become viewers like any other, answered with every candidate. The camera pings the server every 5 s and treats 15 s of
//! silence as a lost connection (a cut link leaves TCP hanging for minutes otherwise). A lost
//! connection is retried with jittered exponential backoff: capped at 1 s for the first minute
//! (so a camera is back within about a second of its link returning), then at 10 s. Each
//! process joins with one random `instance`, so on rejoining the server retires the connection
//! it replaces at once. Viewers keep streaming meanwhile; their next offer after a rejoin starts
//! a fresh connection.

pub mod congestion;
mod feed;
pub mod peer;
pub mod rtcp;
pub mod turn_check;
pub mod turn_tcp;
mod warn_gate;

use crate::media::pipeline::MediaPipeline;
use crate::signal::protocol::{
    ClientMessage, ErrorCode, IceCandidate, IceServer, PeerId, Role, ServerMessage,
};
use crate::signal::token::TokenKey;
use futures_util::{SinkExt, StreamExt};
use peer::{Peer, PeerEvent, PeerSetup, PeerStats};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warn_gate::{WarnGate, warn_gated};
use webrtc::peer_connection::{RTCIceServer, RTCPeerConnectionState};

/// A camera asks its server for fresh TURN credentials this long before those it has expire.
const ICE_REFRESH_BEFORE: Duration = Duration::from_secs(600);

/// The earliest expiry (Unix seconds) of the TURN REST credentials among `servers`: their
/// user names are `<expiry>:<peer>`.
fn earliest_turn_expiry(servers: &[IceServer]) -> Option<u64> {
    servers
        .iter()
        .filter_map(|s| {
            s.username
                .as_deref()?
                .split_once(':')?
                .0
                .parse::<u64>()
                .ok()
        })
        .min()
}

/// Warnings anyone can cause pass at most once per this interval (see [`warn_gate`]).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest wait between attempts during the first [`FAST_RETRY_FOR`] of an outage.
pub const FAST_BACKOFF: Duration = Duration::from_secs(1);
/// How long after losing a working connection the camera retries at [`FAST_BACKOFF`].
pub const FAST_RETRY_FOR: Duration = Duration::from_secs(60);
/// How often the camera pings the signaling server.
pub const PING_EVERY: Duration = Duration::from_secs(5);
/// Silence (no frame, not even a pong) after which the signaling connection counts as lost.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(15);
/// Time allowed for the TCP connection to the signaling server (the SYN is resent after 1 s).
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for the TLS and WebSocket handshakes after TCP connects.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the camera proves it may join.
#[derive(Clone, Debug)]
pub enum CameraAuth {
    /// No token (open room).
    None,
    /// A fixed token from config.
    Token(String),
    /// Mint a fresh camera token for each connection (embedded server: same secret).
    Mint(TokenKey),
}

/// The camera's settings.
#[derive(Clone, Debug)]
pub struct CameraSettings {
    /// `ws://` or `wss://` URL of the signaling endpoint.
    pub signal_url: String,
    /// Room to join.
    pub room: String,
    /// Name shown to viewers.
    pub name: String,
    /// How to authenticate.
    pub auth: CameraAuth,
    /// Most viewers at once.
    pub max_viewers: usize,
    /// ICE servers from config, TURN REST credentials minted afresh for each viewer's call so
    /// that they never expire during a long uptime (the server's `created` adds more).
    pub ice: crate::signal::ice::IceProvider,
    /// ICE relay-only policy.
    pub relay_only: bool,
    /// Relay-only whenever a TURN server is known (`transport-policy = "auto"` on a camera
    /// joined to a remote server).
    pub relay_when_turn: bool,
    /// Local UDP addresses for WebRTC.
    pub udp_addrs: Vec<String>,
    /// Resolve viewers' mDNS candidates.
    pub mdns: bool,
    /// Latency mode `lowest`: playout-delay min=max=0 on every video packet.
    pub playout_delay_zero: bool,
    /// A viewer not connected this long after its answer is dropped.
    pub connect_timeout: Duration,
    /// The room's viewers' share of capture demand, set whenever their number changes
    /// (on-demand capture).
    pub viewer_demand: Option<Arc<crate::media::bus::DemandCounter>>,
    /// Extra trust anchors for a `wss://` signaling server (a private CA or self-signed
    /// certificate), besides the system's roots.
    pub signal_ca: Option<std::path::PathBuf>,
}

/// Shared, read-mostly state for `/metrics`, `/healthz` and readiness.
#[derive(Debug, Default)]
pub struct CameraState {
    /// True while joined to the room.
    pub joined: AtomicBool,
    /// When the camera was last out of its room (start, lost connection, refusal), Unix ms.
    pub out_of_room_since_ms: AtomicU64,
    /// Times the signaling connection was (re)established.
    pub signal_connects: AtomicU64,
    /// Viewers refused at the limit.
    pub viewers_refused: AtomicU64,
    /// Live viewers and their counters.
    pub viewers: Mutex<HashMap<PeerId, Arc<PeerStats>>>,
    /// TURN-over-TCP bridge counters.
    pub turn_tcp: Arc<turn_tcp::BridgeStats>,
    /// TURN checks that failed (credentials rejected, no answer) since start.
    pub turn_check_failures: AtomicU64,
    /// A TURN server gave no answer over UDP.
    pub turn_udp_silent: AtomicBool,
    /// A TURN server answered over TCP.
    pub turn_tcp_ok: AtomicBool,
    /// Both: this network blocks UDP, so new viewers get relay-only connections (webrtc-rs
    /// 0.21.1 fails to complete DTLS over the relay when its unusable host pairs stay in play).
    pub relay_auto: AtomicBool,
}

impl CameraState {
    /// Record one TURN check verdict; switches to relay-only once UDP is silent and TCP works.
    fn turn_verdict(&self, tcp: bool, answered: bool) {
        match (tcp, answered) {
            (false, false) => self.turn_udp_silent.store(true, Ordering::Relaxed),
            (true, true) => self.turn_tcp_ok.store(true, Ordering::Relaxed),
            _ => {}
        }
        if self.turn_udp_silent.load(Ordering::Relaxed)
            && self.turn_tcp_ok.load(Ordering::Relaxed)
            && !self.relay_auto.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "UDP gets no answer from the TURN server but TCP does: this network blocks UDP, so new viewers use the TURN relay only (over TCP)"
            );
        }
    }
}

impl CameraState {
    /// Number of live viewer connections.
    pub fn viewer_count(&self) -> usize {
        self.viewers.lock().map(|v| v.len()).unwrap_or(0)
    }
}

/// How long an offer waits for a passed-through source's first SPS.
const PASSTHROUGH_SPS_WAIT: Duration = Duration::from_secs(3);

/// Backoff for attempt `n` (0-based): 0.5 s doubling, capped at [`MAX_BACKOFF`], ±25 % jitter.
pub fn backoff(n: u32) -> Duration {
    let base = Duration::from_millis(500)
        .saturating_mul(1 << n.min(5))
        .min(MAX_BACKOFF);
    let jitter = 0.75 + rand::random::<f64>() * 0.5;
    base.mul_f64(jitter).min(MAX_BACKOFF)
}

/// Backoff for attempt `n` when the last working connection was lost `since_loss` ago:
/// at most [`FAST_BACKOFF`] during the first [`FAST_RETRY_FOR`], [`backoff`] after.
pub fn reconnect_backoff(n: u32, since_loss: Option<Duration>) -> Duration {
    match since_loss {
        Some(d) if d < FAST_RETRY_FOR => backoff(n).min(FAST_BACKOFF),
        _ => backoff(n),
    }
}

/// Why the signaling server could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not a usable `ws://`/`wss://` URL.
    #[error("bad signaling URL: {0}")]
    Url(String),
    /// Name resolution or TCP failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No TCP connection within [`TCP_CONNECT_TIMEOUT`].
    #[error("no TCP connection within {0:?}")]
    TcpTimeout(Duration),
    /// TLS or WebSocket handshake failed.
    #[error("{0}")]
    Handshake(#[from] tokio_tungstenite::tungstenite::Error),
    /// Handshake took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("TLS/WebSocket handshake took longer than {0:?}")]
    HandshakeTimeout(Duration),
    /// The extra CA file could not be used.
    #[error("signal CA {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

/// A rustls client config trusting the system's roots plus the certificates in `ca`.
fn tls_connector(
    ca: Option<&std::path::Path>,
) -> Result<tokio_tungstenite::Connector, ConnectError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|e| ConnectError::Ca {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let mut added = 0;
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| ConnectError::Ca {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            roots.add(cert).map_err(|e| ConnectError::Ca {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(ConnectError::Ca {
                path: shown,
                reason: "no PEM certificate in the file".into(),
            });
        }
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_tungstenite::Connector::Rustls(Arc::new(config)))
}

/// Opens the WebSocket to the signaling server: TCP within [`TCP_CONNECT_TIMEOUT`], then TLS
/// (for `wss://`) and the WebSocket handshake within [`HANDSHAKE_TIMEOUT`]. The TLS client
/// config (system roots plus `ca`) is built on first use and kept for every reconnection.
pub struct SignalConnector {
    ca: Option<std::path::PathBuf>,
    tls: Option<tokio_tungstenite::Connector>,
}

impl SignalConnector {
    /// A connector trusting the system's roots plus the certificates in `ca`.
    pub fn new(ca: Option<std::path::PathBuf>) -> Self {
        Self { ca, tls: None }
    }

    /// Connect to `url` (`ws://` or `wss://`).
    pub async fn connect(&mut self, url: &str) -> Result<Ws, ConnectError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let bad_url = || ConnectError::Url(url.to_owned());
        let request = url.into_client_request().map_err(|_| bad_url())?;
        let uri = request.uri();
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(bad_url()),
        };
        let host = uri.host().ok_or_else(bad_url)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = tokio::time::timeout(
            TCP_CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| ConnectError::TcpTimeout(TCP_CONNECT_TIMEOUT))??;
        let _ = tcp.set_nodelay(true);
        let connector = if tls {
            if self.tls.is_none() {
                self.tls = Some(tls_connector(self.ca.as_deref())?);
            }
            self.tls.clone()
        } else {
            Some(tokio_tungstenite::Connector::Plain)
        };
        let (ws, _) = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_tungstenite::client_async_tls_with_config(request, tcp, None, connector),
        )
        .await
        .map_err(|_| ConnectError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;
        Ok(ws)
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Camera {
    settings: CameraSettings,
    media: Arc<MediaPipeline>,
    state: Arc<CameraState>,
    peers: HashMap<PeerId, Peer>,
    /// Viewers in the room that have not called yet: capture starts for them already, so the
    /// camera warms up while their offer, ICE and DTLS are under way.
    arriving: std::collections::HashSet<PeerId>,
    /// Viewers whose connection has come up at least once.
    connected: std::collections::HashSet<PeerId>,
    /// Each unconnected viewer's latest call: a connect deadline for an older one is ignored.
    calls: HashMap<PeerId, u64>,
    /// Numbers calls.
    call_serial: u64,
    /// The signaling session (counted from 1 at each `created`) each viewer called in.
    peer_session: HashMap<PeerId, u64>,
    session: u64,
    server_ice: Vec<IceServer>,
    events_tx: mpsc::Sender<PeerEvent>,
    tasks: TaskTracker,
    /// TURN-over-TCP bridges by `host:port`.
    bridges: HashMap<String, turn_tcp::Bridge>,
    /// `turns:` URLs already reported as skipped.
    skipped: std::collections::HashSet<String>,
    /// When fresh ICE servers were last asked for (TURN credentials near their expiry).
    ice_asked: Option<tokio::time::Instant>,
    /// Viewers that called other than through the room (WHEP): nothing of theirs goes to it.
    outside: std::collections::HashSet<PeerId>,
    /// Warnings about viewers' calls refused or failed: anyone with a viewer token causes them.
    refusals: WarnGate,
    /// Warnings about the server's errors (a flood gets the camera rate-limited).
    server_errors: WarnGate,
    shutdown: CancellationToken,
}

/// Run the camera until `shutdown`. `ready` turns true once joined to the room.
pub async fn run(
    settings: CameraSettings,
    media: Arc<MediaPipeline>,
    state: Arc<CameraState>,
    ready: watch::Sender<bool>,
    mut calls: mpsc::Receiver<CallCommand>,
    shutdown: CancellationToken,
) {
    let (events_tx, mut events_rx) = mpsc::channel::<PeerEvent>(1024);
    let mut cam = Camera {
        settings,
        media,
        state,
        peers: HashMap::new(),
        arriving: Default::default(),
        connected: Default::default(),
        calls: HashMap::new(),
        call_serial: 0,
        peer_session: HashMap::new(),
        session: 0,
        server_ice: vec![],
        events_tx,
        tasks: TaskTracker::new(),
        bridges: HashMap::new(),
        skipped: Default::default(),
        ice_asked: None,
        outside: Default::default(),
        refusals: WarnGate::new(WARN_EVERY),
        server_errors: WarnGate::new(WARN_EVERY),
        shutdown: shutdown.clone(),
    };
    cam.state
        .out_of_room_since_ms
        .store(unix_ms(), Ordering::Relaxed);
    let instance = format!("{:016x}", rand::random::<u64>());
    let mut connector = SignalConnector::new(cam.settings.signal_ca.clone());
    let mut attempt = 0u32;
    let mut lost_at: Option<std::time::Instant> = None;
    'outer: loop {
        let url = cam.settings.signal_url.clone();
        let connect = connector.connect(&url);
        let ws = tokio::select! {
            r = connect => r,
            _ = shutdown.cancelled() => break 'outer,
        };
        let mut ws = match ws {
            Ok(ws) => ws,
            Err(e) => {
                let wait = reconnect_backoff(attempt, lost_at.map(|t| t.elapsed()));
                tracing::warn!(url = %url, error = %e, retry_in = ?wait, "cannot reach the signaling server");
                attempt += 1;
                tokio::select! { _ = tokio::time::sleep(wait) => continue, _ = shutdown.cancelled() => break 'outer }
            }
        };
        cam.state.signal_connects.fetch_add(1, Ordering::Relaxed);
        let token = match &cam.settings.auth {
            CameraAuth::None => None,
            CameraAuth::Token(t) => Some(t.clone()),
            CameraAuth::Mint(key) => Some(key.sign(
                &cam.settings.room,
                Role::Camera,
                Duration::from_secs(24 * 3600),
                SystemTime::now(),
            )),
        };
        let join = ClientMessage::Join {
            room: cam.settings.room.clone(),
            role: Role::Camera,
            token,
            name: Some(cam.settings.name.clone()),
            instance: Some(instance.clone()),
        };
        if send(&mut ws, &join).await.is_err() {
            continue;
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut last_heard = tokio::time::Instant::now();
        let mut refused = false;
        let lost_reason: String = loop {
            tokio::select! {
                m = ws.next() => { last_heard = tokio::time::Instant::now(); match m {
                    Some(Ok(Message::Text(text))) => {
                        let msg: ServerMessage = match serde_json::from_str(text.as_str()) {
                            Ok(m) => m,
                            Err(e) => { tracing::warn!(error = %e, "unreadable message from the signaling server"); continue }
                        };
                        if let ServerMessage::Created { .. } = &msg {
                            attempt = 0;
                            lost_at = None;
                            let _ = ready.send(true);
                        }
                        if let Some(why) = refusal(&msg, cam.state.joined.load(Ordering::Relaxed)) {
                            // Out of the room on this connection: close it and join again
                            // with backoff (the room may empty, a token be renewed).
                            let _ = ws.close(None).await;
                            refused = true;
                            break why;
                        }
                        if let Err(e) = cam.on_signal(&mut ws, msg).await {
                            break format!("send failed: {e}");
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break "closed by the server".into(),
                    Some(Err(e)) => break e.to_string(),
                    Some(Ok(_)) => {}
                }},
                Some(ev) = events_rx.recv() => {
                    if let Err(e) = cam.on_peer_event(&mut ws, ev).await {
                        break format!("send failed: {e}");
                    }
                }
                Some(cmd) = calls.recv() => cam.on_call_command(cmd).await,
                _ = ping.tick() => {
                    if last_heard.elapsed() > SILENCE_LIMIT {
                        break format!("no answer from the server for {} s", SILENCE_LIMIT.as_secs());
                    }
                    // A send into a dead link blocks once the socket buffer is full: bound it.
                    match tokio::time::timeout(PING_EVERY, ws.send(Message::Ping(Default::default()))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break "ping failed".into(),
                        Err(_) => break "ping could not be sent for 5 s".into(),
                    }
                    if cam.wants_fresh_ice(SystemTime::now()) {
                        if let Err(e) = send(&mut ws, &ClientMessage::Ice {}).await {
                            break format!("send failed: {e}");
                        }
                    }
                }
                _ = shutdown.cancelled() => {
                    let _ = send(&mut ws, &ClientMessage::Exit {}).await;
                    let _ = ws.close(None).await;
                    break 'outer;
                }
            }
        };
        // Who was about to call is learnt again from the next `created`.
        cam.arriving.clear();
        cam.publish_count();
        if cam.state.joined.swap(false, Ordering::Relaxed) {
            cam.state
                .out_of_room_since_ms
                .store(unix_ms(), Ordering::Relaxed);
        }
        if shutdown.is_cancelled() {
            // The embedded server closed first on the way down: not a lost connection.
            break 'outer;
        }
        let wait = if refused {
            // A refusal rarely clears within a second (a full room, a token to renew): the
            // plain backoff, up to 10 s, without the fast retries of a lost link.
            let wait = backoff(attempt);
            tracing::warn!(url = %url, reason = %lost_reason, retry_in = ?wait, "the camera is not in its room; asking again");
            wait
        } else {
            let lost = *lost_at.get_or_insert_with(std::time::Instant::now);
            let wait = reconnect_backoff(attempt, Some(lost.elapsed()));
            tracing::warn!(url = %url, reason = %lost_reason, retry_in = ?wait, viewers = cam.peers.len(), "signaling connection lost; viewers keep streaming, reconnecting");
            wait
        };
        attempt += 1;
        // Drain peer events while disconnected so state changes (failures) are still handled.
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                Some(ev) = events_rx.recv() => cam.on_peer_event_offline(ev),
                Some(cmd) = calls.recv() => cam.on_call_command(cmd).await,
                _ = shutdown.cancelled() => break 'outer,
            }
        }
    }
    // Shutdown: close every viewer, bounded.
    let peers: Vec<(PeerId, Peer)> = cam.peers.drain().collect();
    for (id, p) in peers {
        cam.forget(&id);
        cam.tasks.spawn(p.close());
    }
    cam.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), cam.tasks.wait()).await;
}

/// Calls that reach the camera other than through its room (WHEP), sent to the task that owns
/// the viewers. Each carries the channel its answer goes back on.
#[derive(Debug)]
pub enum CallCommand {
    /// Answer `offer` with a new viewer connection.
    Open {
        /// The client's SDP offer.
        offer: String,
        /// The session's id and its answer, or why not.
        reply: oneshot::Sender<Result<OpenedCall, Refusal>>,
    },
    /// Remote candidates for `session` (trickled by the client).
    Candidates {
        /// The session.
        session: PeerId,
        /// Its candidates, in order.
        candidates: Vec<IceCandidate>,
        /// `false` when there is no such session.
        reply: oneshot::Sender<bool>,
    },
    /// End `session` now.
    End {
        /// The session.
        session: PeerId,
        /// `false` when there was no such session.
        reply: oneshot::Sender<bool>,
    },
}

/// A call taken through [`CallCommand::Open`].
pub struct OpenedCall {
    /// Its id among the camera's viewers (`/metrics` names it).
    pub session: PeerId,
    /// Its answer, complete once its candidates are gathered.
    pub answer: peer::AnswerSource,
}

impl std::fmt::Debug for OpenedCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedCall")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// Why a call was not taken: a protocol error code and a message for the viewer.
#[derive(Debug)]
pub struct Refusal {
    /// `max-viewers`, `no-h264` or `answer-failed`.
    pub code: &'static str,
    /// What the viewer's page or player shows.
    pub message: String,
}

/// Refuse or end `to`'s call with `code` and a message the viewer's page shows.
async fn reject(
    ws: &mut Ws,
    to: PeerId,
    code: &str,
    message: String,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    send(
        ws,
        &ClientMessage::Reject {
            to,
            code: code.into(),
            message,
        },
    )
    .await
}

async fn send(
    ws: &mut Ws,
    msg: &ClientMessage,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    // ClientMessage holds only strings and options; serialization cannot fail.
    let text = serde_json::to_string(msg).unwrap_or_default();
    ws.send(Message::Text(text.into())).await
}

impl Camera {
    /// The camera's ICE servers (config first, then the server's `created`), each once.
    fn ice_servers(&self) -> Vec<IceServer> {
        let mut ice = self.settings.ice.for_peer("camera", SystemTime::now());
        // The embedded server hands back the same static entries: keep each once.
        for s in &self.server_ice {
            if !ice
                .iter()
                .any(|c| c.urls == s.urls && c.username == s.username)
            {
                ice.push(s.clone());
            }
        }
        ice
    }

    /// Whether to ask the server for fresh ICE servers: the TURN credentials it gave expire
    /// within [`ICE_REFRESH_BEFORE`] (or have), and none were asked for in the last minute.
    fn wants_fresh_ice(&mut self, now: SystemTime) -> bool {
        let Some(expiry) = earliest_turn_expiry(&self.server_ice) else {
            return false;
        };
        let now_s = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if expiry > now_s + ICE_REFRESH_BEFORE.as_secs() {
            return false;
        }
        let t = tokio::time::Instant::now();
        if self
            .ice_asked
            .is_some_and(|asked| t.duration_since(asked) < Duration::from_secs(60))
        {
            return false;
        }
        self.ice_asked = Some(t);
        true
    }

    /// The UDP address webrtc-rs should use for the TURN server behind `url`: the server itself
    /// for UDP, the local TURN-over-TCP bridge for `?transport=tcp`; `None` for `turns:`.
    async fn turn_udp_target(&mut self, parsed: &turn_tcp::TurnUrl, url: &str) -> Option<String> {
        if parsed.secure {
            if self.skipped.insert(url.to_owned()) {
                tracing::warn!(url = %url, "TURN over TLS (turns:) is not supported by the camera yet; this URL is skipped (viewers still use it). Add a turn:…?transport=tcp URL for networks that block UDP");
            }
            return None;
        }
        if !parsed.tcp {
            return Some(parsed.server.clone());
        }
        if let Some(b) = self.bridges.get(&parsed.server) {
            return Some(b.local_addr().to_string());
        }
        match turn_tcp::start(
            parsed.server.clone(),
            self.state.turn_tcp.clone(),
            &self.shutdown,
        )
        .await
        {
            Ok(b) => {
                let local = b.local_addr().to_string();
                tracing::info!(server = %parsed.server, bridge = %local, "TURN over TCP: bridging for the WebRTC stack (webrtc-rs allocates over UDP only)");
                self.bridges.insert(parsed.server.clone(), b);
                Some(local)
            }
            Err(e) => {
                tracing::warn!(server = %parsed.server, error = %e, "cannot start the TURN-over-TCP bridge");
                None
            }
        }
    }

    /// The ICE servers in webrtc-rs's terms, TCP TURN URLs pointed at their bridges.
    async fn webrtc_ice_servers(&mut self) -> Vec<RTCIceServer> {
        let mut out = vec![];
        for s in self.ice_servers() {
            let mut urls = vec![];
            for url in &s.urls {
                match turn_tcp::parse_turn_url(url) {
                    None => urls.push(url.clone()),
                    Some(parsed) => {
                        if let Some(target) = self.turn_udp_target(&parsed, url).await {
                            urls.push(format!("turn:{target}?transport=udp"));
                        }
                    }
                }
            }
            urls.dedup();
            if !urls.is_empty() {
                out.push(RTCIceServer {
                    urls,
                    username: s.username.clone().unwrap_or_default(),
                    credential: s.credential.clone().unwrap_or_default(),
                    ..Default::default()
                });
            }
        }
        out
    }

    /// Check every TURN URL with a real allocation, in the background; one log line each.
    async fn check_turn_servers(&mut self) {
        for s in self.ice_servers() {
            for url in &s.urls {
                let Some(parsed) = turn_tcp::parse_turn_url(url) else {
                    continue;
                };
                let Some(target) = self.turn_udp_target(&parsed, url).await else {
                    continue;
                };
                let url = url.clone();
                let over = if parsed.tcp { "TCP" } else { "UDP" };
                let tcp = parsed.tcp;
                let user = s.username.clone().unwrap_or_default();
                let pass = s.credential.clone().unwrap_or_default();
                let state = self.state.clone();
                self.tasks.spawn(async move {
                    let addr = match tokio::net::lookup_host(&target).await.map(|mut a| a.next()) {
                        Ok(Some(a)) => a,
                        Ok(None) | Err(_) => {
                            state.turn_check_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(url = %url, "TURN server: cannot resolve its host name");
                            return;
                        }
                    };
                    match turn_check::check(addr, &user, &pass).await {
                        turn_check::TurnCheck::Reachable(relay) => {
                            tracing::info!(url = %url, relay = %relay, "TURN server reachable; allocation works");
                            state.turn_verdict(tcp, true);
                        }
                        turn_check::TurnCheck::Rejected(e) if e.contains("401") => {
                            state.turn_check_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(url = %url, user = %user, response = %e, "TURN server rejected the credentials (401 Unauthorized): check [ice] username/credential, or that [ice.turn-rest] secret equals coturn's static-auth-secret and the clocks agree");
                        }
                        turn_check::TurnCheck::Rejected(e) => {
                            state.turn_check_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(url = %url, response = %e, "TURN server refused the allocation");
                        }
                        turn_check::TurnCheck::NoAnswer => {
                            state.turn_check_failures.fetch_add(1, Ordering::Relaxed);
                            state.turn_verdict(tcp, false);
                            tracing::warn!(url = %url, "TURN server: no answer over {over} within 6 s (unreachable, or {over} blocked on this network); other candidates are still tried");
                        }
                        turn_check::TurnCheck::Failed(e) => {
                            tracing::warn!(url = %url, error = %e, "TURN server check could not run");
                        }
                    }
                });
            }
        }
    }

    fn forget(&self, id: &PeerId) {
        if let Ok(mut v) = self.state.viewers.lock() {
            v.remove(id);
        }
        self.publish_count();
    }

    fn publish_count(&self) {
        if let Some(demand) = &self.settings.viewer_demand {
            let arriving = self
                .arriving
                .iter()
                .filter(|id| !self.peers.contains_key(*id))
                .count();
            demand.set(self.peers.len() + arriving);
        }
    }

    /// Drop `id`'s call unless it connects within `camera.connect-timeout` (or is closed first,
    /// `cancel`): offers that never connect do not hold the camera's places.
    fn arm_connect_deadline(&mut self, id: &PeerId, cancel: CancellationToken) {
        self.call_serial += 1;
        let serial = self.call_serial;
        self.calls.insert(id.clone(), serial);
        let (events, id, wait) = (
            self.events_tx.clone(),
            id.clone(),
            self.settings.connect_timeout,
        );
        self.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    let _ = events.send(PeerEvent::ConnectDeadline(id, serial)).await;
                }
                _ = cancel.cancelled() => {}
            }
        });
    }

    /// Count `id`, in the room, toward capture demand until it calls, leaves, or
    /// `camera.connect-timeout` passes.
    fn expect_call(&mut self, id: PeerId) {
        if self.arriving.len() >= self.settings.max_viewers || !self.arriving.insert(id.clone()) {
            return;
        }
        let (events, wait, stop) = (
            self.events_tx.clone(),
            self.settings.connect_timeout,
            self.shutdown.clone(),
        );
        self.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    let _ = events.send(PeerEvent::ArrivalDeadline(id)).await;
                }
                _ = stop.cancelled() => {}
            }
        });
    }

    /// Whether `conn` is the connection `id` has now (not one dropped before it called again).
    fn is_current(&self, id: &PeerId, conn: u64) -> bool {
        self.peers.get(id).is_some_and(|p| p.conn == conn)
    }

    fn drop_peer(&mut self, id: &PeerId, why: &str) {
        self.peer_session.remove(id);
        self.outside.remove(id);
        self.connected.remove(id);
        self.calls.remove(id);
        if let Some(mut p) = self.peers.remove(id) {
            tracing::info!(viewer = %id, reason = why, viewers = self.peers.len(), "viewer gone");
            // Its second encode stops now (if it was the last watching), not after the close.
            drop(p.rendition.take());
            self.forget(id);
            self.tasks.spawn(p.close());
        }
    }

    /// Answer `from`'s first offer with a new viewer connection fed from the encode, or say
    /// why not (its viewer limit, no codec both sides have, an offer it cannot take).
    async fn new_call(&mut self, from: PeerId, sdp: String) -> Result<String, Refusal> {
        if self.peers.len() >= self.settings.max_viewers {
            self.state.viewers_refused.fetch_add(1, Ordering::Relaxed);
            warn_gated!(self.refusals, viewer = %from, max = self.settings.max_viewers, "viewer refused: camera at its viewer limit");
            let message = format!(
                "this camera serves at most {} viewers at once; try again later",
                self.settings.max_viewers
            );
            return Err(Refusal {
                code: "max-viewers",
                message,
            });
        }
        let ice = self.webrtc_ice_servers().await;
        let has_turn = ice
            .iter()
            .any(|s| s.urls.iter().any(|u| u.starts_with("turn")));
        if self.media.encoder == crate::media::encoder::EncoderKind::Passthrough
            && self.media.sent_sps().is_none()
            && self.media.stats.started_unix_ms.load(Ordering::Relaxed) != 0
        {
            // A passed-through source picks its own profile: answer with what it
            // really sends, once its first keyframe is out (bounded; before any start,
            // as for the first viewer of an on-demand camera, the guess is used).
            let deadline = tokio::time::Instant::now() + PASSTHROUGH_SPS_WAIT;
            while self.media.sent_sps().is_none() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let h264 = self.media.h264_profile();
        let Some(codec) = peer::choose_codec(&sdp, &h264, self.media.vp8.is_some()) else {
            let codecs = offered_codecs(&sdp);
            let message = if crate::media::h264::offered_h264(&sdp).is_empty() {
                warn_gated!(self.refusals, viewer = %from, offered = %codecs, "viewer cannot decode H.264 and the VP8 fallback is off (video.fallback); refused");
                "this browser cannot decode H.264 video; try Chrome, Safari, or Firefox with the OpenH264 plugin".to_owned()
            } else {
                warn_gated!(self.refusals, viewer = %from, offered = %codecs, stream = %h264, "viewer's offer has no H.264 of the stream's profile and there is no VP8 fallback; refused");
                format!(
                    "this camera sends H.264 {h264}, which this browser does not offer to decode"
                )
            };
            return Err(Refusal {
                code: "no-h264",
                message,
            });
        };
        let (video, keyframes) = match (codec, &self.media.vp8) {
            (peer::VideoCodec::Vp8, Some(vp8)) => (vp8.video.subscribe(), vp8.keyframes.clone()),
            _ => (self.media.video.subscribe(), self.media.keyframes.clone()),
        };
        let setup = PeerSetup {
            viewer: from.clone(),
            ice_servers: ice,
            relay_only: self.settings.relay_only
                || self.state.relay_auto.load(Ordering::Relaxed)
                || (self.settings.relay_when_turn && has_turn),
            udp_addrs: self.settings.udp_addrs.clone(),
            mdns: self.settings.mdns,
            playout_delay_zero: self.settings.playout_delay_zero,
            events: self.events_tx.clone(),
            video,
            audio: self.media.has_audio.then(|| self.media.audio.subscribe()),
            keyframes,
            codec,
            h264,
            video_tx: self.media.video.clone(),
            lower: self.media.renditions.clone(),
            video_kbps: self.media.video_kbps(),
            audio_kbps: if self.media.has_audio {
                self.media.audio_kbps
            } else {
                0
            },
        };
        match peer::answer(setup, sdp).await {
            Ok((mut p, answer)) => {
                if codec == peer::VideoCodec::Vp8 {
                    p.rendition = self.media.vp8.as_ref().map(|r| r.acquire());
                }
                let _ = p.stats.codec.set(codec);
                if let Ok(mut v) = self.state.viewers.lock() {
                    v.insert(from.clone(), p.stats.clone());
                }
                self.arm_connect_deadline(&from, p.cancel.clone());
                self.peers.insert(from.clone(), p);
                self.peer_session.insert(from.clone(), self.session);
                self.publish_count();
                tracing::info!(viewer = %from, viewers = self.peers.len(), %codec, "viewer connecting");
                Ok(answer)
            }
            Err(e) => {
                warn_gated!(self.refusals, viewer = %from, error = %e, "cannot answer viewer's offer");
                let message = format!("the camera could not answer: {e}");
                Err(Refusal {
                    code: "answer-failed",
                    message,
                })
            }
        }
    }

    /// A call from outside the room (see [`CallCommand`]).
    async fn on_call_command(&mut self, cmd: CallCommand) {
        match cmd {
            CallCommand::Open { offer, reply } => {
                let session = format!("whep-{:016x}", rand::random::<u64>());
                let result = self.new_call(session.clone(), offer).await;
                let opened = match result {
                    Ok(_) => match self.peers.get(&session) {
                        Some(p) => {
                            self.outside.insert(session.clone());
                            Ok(OpenedCall {
                                answer: p.answer_source(),
                                session,
                            })
                        }
                        None => Err(Refusal {
                            code: "answer-failed",
                            message: "the call ended before it was answered".into(),
                        }),
                    },
                    Err(r) => Err(r),
                };
                if let Err(Ok(call)) = reply.send(opened) {
                    // The client went away while it was being answered.
                    self.drop_peer(&call.session, "its client left before the answer");
                }
            }
            CallCommand::Candidates {
                session,
                candidates,
                reply,
            } => {
                let known = match self.peers.get(&session) {
                    Some(p) if self.outside.contains(&session) => {
                        for c in candidates {
                            if let Err(e) = peer::add_candidate(p, c).await {
                                tracing::debug!(viewer = %session, error = %e, "remote candidate refused");
                            }
                        }
                        true
                    }
                    _ => false,
                };
                let _ = reply.send(known);
            }
            CallCommand::End { session, reply } => {
                let known = self.outside.contains(&session);
                if known {
                    self.drop_peer(&session, "its client ended the session");
                }
                let _ = reply.send(known);
            }
        }
    }

    async fn on_signal(
        &mut self,
        ws: &mut Ws,
        msg: ServerMessage,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        match msg {
            ServerMessage::Created {
                id,
                room,
                peers,
                ice_servers,
                ..
            } => {
                self.state.joined.store(true, Ordering::Relaxed);
                self.session += 1;
                self.server_ice = ice_servers;
                // Viewers already in the room will call: capture starts for them now.
                self.arriving.clear();
                for p in peers.iter().filter(|p| p.role == Role::Viewer) {
                    self.expect_call(p.id.clone());
                }
                self.publish_count();
                let viewers = self.arriving.len();
                tracing::info!(camera = %id, room = %room, viewers_waiting = viewers, "joined room as camera");
                self.check_turn_servers().await;
            }
            ServerMessage::Ice { ice_servers } => {
                tracing::info!(
                    valid_until = ?earliest_turn_expiry(&ice_servers),
                    "fresh TURN credentials from the server"
                );
                self.server_ice = ice_servers;
            }
            ServerMessage::Joined { id, role, name, .. } => {
                tracing::debug!(peer = %id, %role, name = %name, "peer joined the room");
                if role == Role::Viewer {
                    self.expect_call(id);
                    self.publish_count();
                }
            }
            ServerMessage::Offer { from, sdp } => {
                // It has called: from here on it counts as a peer, or not at all if refused.
                if self.arriving.remove(&from) {
                    self.publish_count();
                }
                if self.peers.contains_key(&from)
                    && self.peer_session.get(&from) != Some(&self.session)
                {
                    // The viewer knew this camera by its previous connection's id: this offer
                    // starts a new call, not a renegotiation of the old one.
                    self.drop_peer(&from, "called again after the camera rejoined");
                }
                if let Some(existing) = self.peers.get(&from) {
                    match peer::reoffer(existing, sdp).await {
                        Ok(answer) => {
                            if !self.connected.contains(&from) {
                                // A new try (the page calls again when no picture came): a
                                // whole connect-timeout for it.
                                let cancel = existing.cancel.clone();
                                self.arm_connect_deadline(&from, cancel);
                            }
                            send(
                                ws,
                                &ClientMessage::Answer {
                                    to: from,
                                    sdp: answer,
                                },
                            )
                            .await?
                        }
                        Err(e) => {
                            // Left as it is, the call would hang half-renegotiated: end it and
                            // say so, and the viewer may call again.
                            warn_gated!(self.refusals, viewer = %from, error = %e, "renegotiation failed; the viewer's call is ended");
                            self.drop_peer(&from, "renegotiation failed");
                            let message = format!("the camera could not renegotiate: {e}");
                            reject(ws, from, "answer-failed", message).await?
                        }
                    }
                    return Ok(());
                }
                match self.new_call(from.clone(), sdp).await {
                    Ok(answer) => {
                        send(
                            ws,
                            &ClientMessage::Answer {
                                to: from,
                                sdp: answer,
                            },
                        )
                        .await?
                    }
                    Err(r) => reject(ws, from, r.code, r.message).await?,
                }
            }
            ServerMessage::Candidate { from, candidate } => {
                if let (Some(p), Some(c)) = (self.peers.get(&from), candidate) {
                    if let Err(e) = peer::add_candidate(p, c).await {
                        tracing::debug!(viewer = %from, error = %e, "remote candidate refused");
                    }
                }
            }
            ServerMessage::Exit { from, .. } => {
                if self.arriving.remove(&from) {
                    self.publish_count();
                }
                self.drop_peer(&from, "left the room")
            }
            ServerMessage::Answer { from, .. } => {
                tracing::debug!(peer = %from, "unexpected answer (the camera never offers); ignored");
            }
            ServerMessage::Error {
                code,
                message,
                from,
            } => {
                // A viewer's word is its own business (and anyone with a viewer token could
                // fill the log with errors); the server's is worth a warning.
                match &from {
                    Some(viewer) => {
                        tracing::debug!(%code, %message, %viewer, "viewer reported an error")
                    }
                    // An answer or refusal that crossed the viewer's exit: nothing to say.
                    None if code == ErrorCode::UnknownPeer.as_str() => {
                        tracing::debug!(%code, %message, "signaling: that viewer has left")
                    }
                    None => {
                        warn_gated!(self.server_errors, %code, %message, room = %self.settings.room, "signaling error")
                    }
                }
            }
        }
        Ok(())
    }

    async fn on_peer_event(
        &mut self,
        ws: &mut Ws,
        ev: PeerEvent,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        match ev {
            PeerEvent::Candidate(viewer, conn, candidate) => {
                // A WHEP client gets its candidates in the answer.
                if self.is_current(&viewer, conn) && !self.outside.contains(&viewer) {
                    send(
                        ws,
                        &ClientMessage::Candidate {
                            to: viewer,
                            candidate,
                        },
                    )
                    .await?;
                }
            }
            other => self.on_peer_event_offline(other),
        }
        Ok(())
    }

    fn on_peer_event_offline(&mut self, ev: PeerEvent) {
        match ev {
            PeerEvent::Candidate(..) => {}
            PeerEvent::ArrivalDeadline(viewer) => {
                // Joined but never called: it no longer keeps capture running.
                if self.arriving.remove(&viewer) {
                    tracing::debug!(viewer = %viewer, "viewer in the room has not called; capture no longer waits for it");
                    self.publish_count();
                }
            }
            PeerEvent::ConnectDeadline(viewer, serial) => {
                if self.calls.get(&viewer) == Some(&serial)
                    && self.peers.contains_key(&viewer)
                    && !self.connected.contains(&viewer)
                {
                    let why = format!(
                        "not connected {:.0} s after its answer",
                        self.settings.connect_timeout.as_secs_f64()
                    );
                    self.drop_peer(&viewer, &why);
                }
            }
            PeerEvent::State(viewer, conn, state) => {
                tracing::debug!(viewer = %viewer, conn, %state, "viewer connection state");
                if !self.is_current(&viewer, conn) {
                    // A connection already dropped (closing in the background) that the same
                    // viewer has since replaced by calling again: not about the new call.
                    if self.peers.contains_key(&viewer) {
                        tracing::debug!(viewer = %viewer, conn, %state, "state of the viewer's previous connection, not its current one: ignored");
                    }
                    return;
                }
                match state {
                    RTCPeerConnectionState::Connected => {
                        if self.peers.contains_key(&viewer) {
                            self.connected.insert(viewer.clone());
                        }
                        tracing::info!(viewer = %viewer, "viewer connected")
                    }
                    RTCPeerConnectionState::Failed => self.drop_peer(&viewer, "connection failed"),
                    RTCPeerConnectionState::Closed => self.drop_peer(&viewer, "connection closed"),
                    _ => {}
                }
            }
        }
    }
}

/// Why the server's `msg` leaves the camera out of its room on this connection, if it does:
/// a refused join (room full, too many rooms, token problems) or being replaced.
fn refusal(msg: &ServerMessage, joined: bool) -> Option<String> {
    let ServerMessage::Error {
        code,
        message,
        from: None,
    } = msg
    else {
        return None;
    };
    let out_of_room = match code.as_str() {
        "replaced" => true,
        "room-full" | "too-many-rooms" | "token-required" | "bad-token" | "token-expired"
        | "bad-room" => !joined,
        _ => false,
    };
    out_of_room.then(|| format!("the server refused the camera ({code}): {message}"))
}

/// Milliseconds since the Unix epoch (0 before it).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl CameraState {
    /// How long the camera has been out of its room; `None` while it is joined (or before it
    /// first tried).
    pub fn out_of_room_for(&self) -> Option<Duration> {
        if self.joined.load(Ordering::Relaxed) {
            return None;
        }
        match self.out_of_room_since_ms.load(Ordering::Relaxed) {
            0 => None, // not started yet
            since => Some(Duration::from_millis(unix_ms().saturating_sub(since))),
        }
    }
}

/// The codec names in an SDP offer, for log lines.
pub fn offered_codecs(sdp: &str) -> String {
    let mut names: Vec<String> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|c| c.split('/').next())
        .filter(|c| {
            !matches!(
                c.to_ascii_lowercase().as_str(),
                "rtx" | "red" | "ulpfec" | "flexfec-03" | "cn" | "telephone-event"
            )
        })
        .map(str::to_owned)
        .collect();
    names.dedup();
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        for n in 0..20 {
            let b = backoff(n);
            assert!(b <= MAX_BACKOFF, "{n}: {b:?}");
            assert!(b >= Duration::from_millis(375), "{n}: {b:?}");
        }
        assert!(backoff(10) >= Duration::from_millis(7500));
    }

    #[test]
    fn join_refusals_end_the_connection() {
        let error = |code: &str, from: Option<&str>| ServerMessage::Error {
            code: code.into(),
            message: "m".into(),
            from: from.map(Into::into),
        };
        for code in ["room-full", "too-many-rooms", "token-expired", "bad-token"] {
            assert!(refusal(&error(code, None), false).is_some(), "{code}");
            // Once joined these cannot be about this camera's own join.
            assert!(refusal(&error(code, None), true).is_none(), "{code}");
        }
        assert!(refusal(&error("replaced", None), true).is_some());
        // A viewer's reject, or a rate-limit notice, leaves the camera in its room.
        assert!(refusal(&error("room-full", Some("v1")), false).is_none());
        assert!(refusal(&error("rate-limited", None), true).is_none());
    }

    #[test]
    fn codec_list() {
        let sdp = "a=rtpmap:120 VP8/90000\r\na=rtpmap:124 rtx/90000\r\na=rtpmap:98 VP9/90000\r\na=rtpmap:109 opus/48000/2\r\n";
        assert_eq!(offered_codecs(sdp), "VP8, VP9, opus");
    }
}
