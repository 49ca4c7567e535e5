//! The camera's connection to its signaling server: opening the WebSocket (TCP, TLS with the
//! system's roots plus an optional CA, the handshake, each bounded in time), the backoff between
//! attempts, sending messages, and telling a refusal that leaves the camera out of its room from
//! an error about a viewer.

use crate::signal::protocol::{ClientMessage, PeerId, ServerMessage};
use futures_util::SinkExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

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

pub(super) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Refuse or end `to`'s call with `code` and a message the viewer's page shows.
pub(super) async fn reject(
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

pub(super) async fn send(
    ws: &mut Ws,
    msg: &ClientMessage,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    // ClientMessage holds only strings and options; serialization cannot fail.
    let text = serde_json::to_string(msg).unwrap_or_default();
    ws.send(Message::Text(text.into())).await
}

/// Why the server's `msg` leaves the camera out of its room on this connection, if it does:
/// a refused join (room full, too many rooms, token problems) or being replaced.
pub(super) fn refusal(msg: &ServerMessage, joined: bool) -> Option<String> {
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
}
