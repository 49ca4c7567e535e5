//! The camera side of `campeer run`: joins its room on the signaling server (embedded or remote)
//! as `camera`, answers every viewer's offer with a WebRTC connection fed from the one encode,
//! trickles ICE both ways, and cleans viewers up when they leave, close or fail.
//!
//! One task owns the signaling connection and every viewer's [`peer::Peer`]; webrtc-rs callbacks
//! reach it only through a channel. A lost signaling connection is retried with exponential
//! backoff and jitter (capped at 10 s); viewers keep streaming meanwhile and call again.

pub mod peer;
pub mod rtcp;

use crate::media::pipeline::MediaPipeline;
use crate::signal::protocol::{ClientMessage, IceServer, PeerId, Role, ServerMessage};
use crate::signal::token::TokenKey;
use futures_util::{SinkExt, StreamExt};
use peer::{Peer, PeerEvent, PeerSetup, PeerStats};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webrtc::peer_connection::{RTCIceServer, RTCPeerConnectionState};

/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

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
    /// ICE servers from config (the server's `created` adds more).
    pub ice_servers: Vec<IceServer>,
    /// ICE relay-only policy.
    pub relay_only: bool,
    /// Local UDP addresses for WebRTC.
    pub udp_addrs: Vec<String>,
    /// Resolve viewers' mDNS candidates.
    pub mdns: bool,
    /// Latency mode `lowest`: playout-delay min=max=0 on every video packet.
    pub playout_delay_zero: bool,
    /// Told the number of live viewers whenever it changes (on-demand capture).
    pub viewer_count: Option<watch::Sender<usize>>,
}

/// Shared, read-mostly state for `/metrics`, `/healthz` and readiness.
#[derive(Debug, Default)]
pub struct CameraState {
    /// True while joined to the room.
    pub joined: AtomicBool,
    /// Times the signaling connection was (re)established.
    pub signal_connects: AtomicU64,
    /// Viewers refused at the limit.
    pub viewers_refused: AtomicU64,
    /// Live viewers and their counters.
    pub viewers: Mutex<HashMap<PeerId, Arc<PeerStats>>>,
}

impl CameraState {
    /// Number of live viewer connections.
    pub fn viewer_count(&self) -> usize {
        self.viewers.lock().map(|v| v.len()).unwrap_or(0)
    }
}

fn to_rtc(servers: &[IceServer]) -> Vec<RTCIceServer> {
    servers
        .iter()
        .map(|s| RTCIceServer {
            urls: s.urls.clone(),
            username: s.username.clone().unwrap_or_default(),
            credential: s.credential.clone().unwrap_or_default(),
            ..Default::default()
        })
        .collect()
}

/// Backoff for attempt `n` (0-based): 0.5 s doubling, capped at [`MAX_BACKOFF`], ±25 % jitter.
pub fn backoff(n: u32) -> Duration {
    let base = Duration::from_millis(500)
        .saturating_mul(1 << n.min(5))
        .min(MAX_BACKOFF);
    let jitter = 0.75 + rand::random::<f64>() * 0.5;
    base.mul_f64(jitter).min(MAX_BACKOFF)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Camera {
    settings: CameraSettings,
    media: Arc<MediaPipeline>,
    state: Arc<CameraState>,
    peers: HashMap<PeerId, Peer>,
    server_ice: Vec<IceServer>,
    events_tx: mpsc::Sender<PeerEvent>,
    tasks: TaskTracker,
}

/// Run the camera until `shutdown`. `ready` turns true once joined to the room.
pub async fn run(
    settings: CameraSettings,
    media: Arc<MediaPipeline>,
    state: Arc<CameraState>,
    ready: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let (events_tx, mut events_rx) = mpsc::channel::<PeerEvent>(1024);
    let mut cam = Camera {
        settings,
        media,
        state,
        peers: HashMap::new(),
        server_ice: vec![],
        events_tx,
        tasks: TaskTracker::new(),
    };
    let mut attempt = 0u32;
    'outer: loop {
        let url = cam.settings.signal_url.clone();
        let connect = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async_with_config(url.as_str(), None, true),
        );
        let ws = tokio::select! {
            r = connect => r,
            _ = shutdown.cancelled() => break 'outer,
        };
        let mut ws = match ws {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                let wait = backoff(attempt);
                tracing::warn!(url = %url, error = %e, retry_in = ?wait, "cannot reach the signaling server");
                attempt += 1;
                tokio::select! { _ = tokio::time::sleep(wait) => continue, _ = shutdown.cancelled() => break 'outer }
            }
            Err(_) => {
                let wait = backoff(attempt);
                tracing::warn!(url = %url, retry_in = ?wait, "signaling server connect timed out");
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
        };
        if send(&mut ws, &join).await.is_err() {
            continue;
        }
        let mut ping = tokio::time::interval(Duration::from_secs(20));
        ping.tick().await;
        let lost_reason: String = loop {
            tokio::select! {
                m = ws.next() => match m {
                    Some(Ok(Message::Text(text))) => {
                        let msg: ServerMessage = match serde_json::from_str(text.as_str()) {
                            Ok(m) => m,
                            Err(e) => { tracing::warn!(error = %e, "unreadable message from the signaling server"); continue }
                        };
                        if let ServerMessage::Created { .. } = &msg {
                            attempt = 0;
                            let _ = ready.send(true);
                        }
                        if let Err(e) = cam.on_signal(&mut ws, msg).await {
                            break format!("send failed: {e}");
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break "closed by the server".into(),
                    Some(Err(e)) => break e.to_string(),
                    Some(Ok(_)) => {}
                },
                Some(ev) = events_rx.recv() => {
                    if let Err(e) = cam.on_peer_event(&mut ws, ev).await {
                        break format!("send failed: {e}");
                    }
                }
                _ = ping.tick() => {
                    if ws.send(Message::Ping(Default::default())).await.is_err() {
                        break "ping failed".into();
                    }
                }
                _ = shutdown.cancelled() => {
                    let _ = send(&mut ws, &ClientMessage::Exit {}).await;
                    let _ = ws.close(None).await;
                    break 'outer;
                }
            }
        };
        cam.state.joined.store(false, Ordering::Relaxed);
        let wait = backoff(attempt);
        attempt += 1;
        tracing::warn!(url = %url, reason = %lost_reason, retry_in = ?wait, viewers = cam.peers.len(), "signaling connection lost; viewers keep streaming, reconnecting");
        // Drain peer events while disconnected so state changes (failures) are still handled.
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                Some(ev) = events_rx.recv() => cam.on_peer_event_offline(ev),
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

async fn send(
    ws: &mut Ws,
    msg: &ClientMessage,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    // ClientMessage holds only strings and options; serialization cannot fail.
    let text = serde_json::to_string(msg).unwrap_or_default();
    ws.send(Message::Text(text.into())).await
}

impl Camera {
    fn forget(&self, id: &PeerId) {
        if let Ok(mut v) = self.state.viewers.lock() {
            v.remove(id);
        }
        self.publish_count();
    }

    fn publish_count(&self) {
        if let Some(tx) = &self.settings.viewer_count {
            tx.send_replace(self.peers.len());
        }
    }

    fn drop_peer(&mut self, id: &PeerId, why: &str) {
        if let Some(p) = self.peers.remove(id) {
            tracing::info!(viewer = %id, reason = why, viewers = self.peers.len(), "viewer gone");
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
                self.server_ice = ice_servers;
                let viewers = peers.iter().filter(|p| p.role == Role::Viewer).count();
                tracing::info!(camera = %id, room = %room, viewers_waiting = viewers, "joined room as camera");
            }
            ServerMessage::Joined { id, role, name, .. } => {
                tracing::debug!(peer = %id, %role, name = %name, "peer joined the room");
            }
            ServerMessage::Offer { from, sdp } => {
                if let Some(existing) = self.peers.get(&from) {
                    match peer::reoffer(existing, sdp).await {
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
                        Err(e) => {
                            tracing::warn!(viewer = %from, error = %e, "renegotiation failed")
                        }
                    }
                    return Ok(());
                }
                if self.peers.len() >= self.settings.max_viewers {
                    self.state.viewers_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(viewer = %from, max = self.settings.max_viewers, "viewer refused: camera at its viewer limit");
                    let message = format!(
                        "this camera serves at most {} viewers at once; try again later",
                        self.settings.max_viewers
                    );
                    return send(
                        ws,
                        &ClientMessage::Reject {
                            to: from,
                            code: "max-viewers".into(),
                            message,
                        },
                    )
                    .await;
                }
                let mut ice = self.settings.ice_servers.clone();
                // The embedded server hands back the same static entries: keep each once.
                for s in &self.server_ice {
                    if !ice
                        .iter()
                        .any(|c| c.urls == s.urls && c.username == s.username)
                    {
                        ice.push(s.clone());
                    }
                }
                let setup = PeerSetup {
                    viewer: from.clone(),
                    ice_servers: to_rtc(&ice),
                    relay_only: self.settings.relay_only,
                    udp_addrs: self.settings.udp_addrs.clone(),
                    mdns: self.settings.mdns,
                    playout_delay_zero: self.settings.playout_delay_zero,
                    events: self.events_tx.clone(),
                    video: self.media.video.subscribe(),
                    audio: self.media.has_audio.then(|| self.media.audio.subscribe()),
                    keyframes: self.media.keyframes.clone(),
                };
                match peer::answer(setup, sdp.clone()).await {
                    Ok((p, answer)) => {
                        if let Ok(mut v) = self.state.viewers.lock() {
                            v.insert(from.clone(), p.stats.clone());
                        }
                        self.peers.insert(from.clone(), p);
                        self.publish_count();
                        tracing::info!(viewer = %from, viewers = self.peers.len(), "viewer connecting");
                        send(
                            ws,
                            &ClientMessage::Answer {
                                to: from,
                                sdp: answer,
                            },
                        )
                        .await?;
                    }
                    Err(peer::PeerError::NoH264) => {
                        let codecs = offered_codecs(&sdp);
                        tracing::warn!(viewer = %from, offered = %codecs, "viewer cannot decode H.264; refused");
                        let message = "this browser cannot decode H.264 video; try Chrome, Safari, or Firefox with the OpenH264 plugin".to_owned();
                        send(
                            ws,
                            &ClientMessage::Reject {
                                to: from,
                                code: "no-h264".into(),
                                message,
                            },
                        )
                        .await?;
                    }
                    Err(e) => {
                        tracing::warn!(viewer = %from, error = %e, "cannot answer viewer's offer");
                        let message = format!("the camera could not answer: {e}");
                        send(
                            ws,
                            &ClientMessage::Reject {
                                to: from,
                                code: "answer-failed".into(),
                                message,
                            },
                        )
                        .await?;
                    }
                }
            }
            ServerMessage::Candidate { from, candidate } => {
                if let (Some(p), Some(c)) = (self.peers.get(&from), candidate) {
                    if let Err(e) = peer::add_candidate(p, c).await {
                        tracing::debug!(viewer = %from, error = %e, "remote candidate refused");
                    }
                }
            }
            ServerMessage::Exit { from, .. } => self.drop_peer(&from, "left the room"),
            ServerMessage::Answer { from, .. } => {
                tracing::debug!(peer = %from, "unexpected answer (the camera never offers); ignored");
            }
            ServerMessage::Error {
                code,
                message,
                from,
            } => {
                tracing::error!(%code, %message, from = from.as_deref().unwrap_or("server"), room = %self.settings.room, "signaling error");
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
            PeerEvent::Candidate(viewer, candidate) => {
                if self.peers.contains_key(&viewer) {
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
            PeerEvent::State(viewer, state) => {
                tracing::debug!(viewer = %viewer, %state, "viewer connection state");
                match state {
                    RTCPeerConnectionState::Connected => {
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
    fn codec_list() {
        let sdp = "a=rtpmap:120 VP8/90000\r\na=rtpmap:124 rtx/90000\r\na=rtpmap:98 VP9/90000\r\na=rtpmap:109 opus/48000/2\r\n";
        assert_eq!(offered_codecs(sdp), "VP8, VP9, opus");
    }
}
