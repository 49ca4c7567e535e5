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
//!
//! This file holds that task: its run loop, who is in the room and each viewer's call. Beside
//! it: [`signal_client`] (the WebSocket to the server), [`calls`] (taking a call: limit, codec,
//! answer; WHEP's [`CallCommand`]), [`ice`] (each call's ICE servers and the TURN checks),
//! [`peer`] and [`feed`] (one viewer's connection and what it is sent), [`rtcp`] (its RTCP),
//! [`congestion`] (its estimate and rung).

mod calls;
pub mod congestion;
mod feed;
mod ice;
pub mod peer;
pub mod rtcp;
mod signal_client;
pub mod turn_check;
pub mod turn_tcp;
pub(crate) mod warn_gate;

pub use calls::{CallCommand, OpenedCall, Refusal, offered_codecs};
use ice::earliest_turn_expiry;
pub use signal_client::{
    ConnectError, FAST_BACKOFF, FAST_RETRY_FOR, HANDSHAKE_TIMEOUT, MAX_BACKOFF, PING_EVERY,
    SILENCE_LIMIT, SignalConnector, TCP_CONNECT_TIMEOUT, backoff, reconnect_backoff,
};
use signal_client::{Ws, refusal, reject, send};

use crate::media::pipeline::MediaPipeline;
use crate::signal::protocol::{ClientMessage, ErrorCode, IceServer, PeerId, Role, ServerMessage};
use crate::signal::token::TokenKey;
use futures_util::{SinkExt, StreamExt};
use peer::{Peer, PeerEvent, PeerStats};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warn_gate::{WarnGate, warn_gated};
use webrtc::peer_connection::RTCPeerConnectionState;

/// Warnings anyone can cause pass at most once per this interval (see [`warn_gate`]).
const WARN_EVERY: Duration = Duration::from_secs(10);

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
    /// Number of live viewer connections.
    pub fn viewer_count(&self) -> usize {
        self.viewers.lock().map(|v| v.len()).unwrap_or(0)
    }
}

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
        // Calls from outside the room (WHEP) are taken while the server is out of reach too.
        let connect = connector.connect(&url);
        tokio::pin!(connect);
        let ws = loop {
            tokio::select! {
                r = &mut connect => break r,
                Some(ev) = events_rx.recv() => cam.on_peer_event_offline(ev),
                Some(cmd) = calls.recv() => cam.on_call_command(cmd).await,
                _ = shutdown.cancelled() => break 'outer,
            }
        };
        let mut ws = match ws {
            Ok(ws) => ws,
            Err(e) => {
                let wait = reconnect_backoff(attempt, lost_at.map(|t| t.elapsed()));
                tracing::warn!(url = %url, error = %e, retry_in = ?wait, "cannot reach the signaling server");
                attempt += 1;
                if cam.serve_offline(wait, &mut events_rx, &mut calls).await {
                    continue;
                }
                break 'outer;
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
        if !cam.serve_offline(wait, &mut events_rx, &mut calls).await {
            break 'outer;
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

impl Camera {
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

    /// Wait `wait` out of the room: viewers' connection events are still handled (failures end
    /// calls) and calls from outside the room still taken. `false` if shut down meanwhile.
    async fn serve_offline(
        &mut self,
        wait: Duration,
        events: &mut mpsc::Receiver<PeerEvent>,
        calls: &mut mpsc::Receiver<CallCommand>,
    ) -> bool {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        let shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                Some(ev) = events.recv() => self.on_peer_event_offline(ev),
                Some(cmd) = calls.recv() => self.on_call_command(cmd).await,
                _ = shutdown.cancelled() => return false,
            }
        }
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
