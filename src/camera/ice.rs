//! The ICE servers a viewer's connection gets: the camera's configured ones and those its server
//! hands out (TURN credentials asked for afresh before they expire), TURN over TCP bridged for
//! webrtc-rs, and a real allocation on each TURN server to say in the log whether it works (and
//! to switch new viewers to relay-only when this network blocks UDP).

use super::{Camera, CameraState, turn_check, turn_tcp};
use crate::signal::protocol::IceServer;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use webrtc::peer_connection::RTCIceServer;

/// A camera asks its server for fresh TURN credentials this long before those it has expire.
const ICE_REFRESH_BEFORE: Duration = Duration::from_secs(600);

/// The earliest expiry (Unix seconds) of the TURN REST credentials among `servers`: their
/// user names are `<expiry>:<peer>`.
pub(super) fn earliest_turn_expiry(servers: &[IceServer]) -> Option<u64> {
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

impl Camera {
    /// The camera's ICE servers (config first, then the server's `created`), each once.
    pub(super) fn ice_servers(&self) -> Vec<IceServer> {
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
    pub(super) fn wants_fresh_ice(&mut self, now: SystemTime) -> bool {
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
    pub(super) async fn webrtc_ice_servers(&mut self) -> Vec<RTCIceServer> {
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
    pub(super) async fn check_turn_servers(&mut self) {
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
}
