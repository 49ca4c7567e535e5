//! A real TURN allocation against each TURN server the camera was given, so that an operator
//! reads one plain line per server in the log: reachable (with the relay address), credentials
//! rejected, or no answer. webrtc-rs reports the same failures only as per-connection
//! `TURN allocation failed from <ip:port> to <ip:port>` lines without the URL, and browsers only
//! through `icecandidateerror`.
//!
//! The check uses the TURN client of the `rtc` crate that webrtc-rs itself uses (sans-I/O),
//! driven over one UDP socket; TCP servers are checked through their [`super::turn_tcp`] bridge.
//! A successful allocation is released at once.

use bytes::BytesMut;
use rtc::sansio::Protocol;
use rtc::shared::{TransportContext, TransportMessage, TransportProtocol};
use rtc::turn::client::{Client, ClientConfig, Event};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// How long a check waits for the server.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(6);

/// What a TURN server said to a real allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnCheck {
    /// An allocation succeeded; the relay address it got.
    Reachable(SocketAddr),
    /// The server refused the credentials (401) or the allocation (other error responses).
    Rejected(String),
    /// No answer within [`CHECK_TIMEOUT`].
    NoAnswer,
    /// The check could not run (bad address, socket error).
    Failed(String),
}

/// Allocate on the TURN server at `server` (UDP) with long-term credentials, then release it.
pub async fn check(server: SocketAddr, username: &str, password: &str) -> TurnCheck {
    check_within(server, username, password, CHECK_TIMEOUT).await
}

/// [`check`] with another timeout.
pub async fn check_within(
    server: SocketAddr,
    username: &str,
    password: &str,
    timeout: Duration,
) -> TurnCheck {
    match run(server, username, password, timeout).await {
        Ok(r) => r,
        Err(e) => TurnCheck::Failed(e),
    }
}

async fn run(
    server: SocketAddr,
    username: &str,
    password: &str,
    timeout: Duration,
) -> Result<TurnCheck, String> {
    let bind: SocketAddr = if server.ip().is_loopback() {
        SocketAddr::new(server.ip(), 0)
    } else if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    let local_addr = socket.local_addr().map_err(|e| e.to_string())?;
    let crypto = rtc::crypto::default_provider().map_err(|e| e.to_string())?;
    let mut client = Client::new(
        ClientConfig {
            stun_serv_addr: String::new(),
            turn_serv_addr: server.to_string(),
            local_addr,
            transport_protocol: TransportProtocol::UDP,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: String::new(),
            software: "campeer".to_owned(),
            rto_in_ms: 0,
            allocation_refresh_interval_cap: None,
        },
        crypto,
    )
    .map_err(|e| e.to_string())?;
    client.allocate(Instant::now()).map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 2048];
    loop {
        while let Some(tx) = client.poll_write() {
            let _ = socket.send_to(&tx.message, tx.transport.peer_addr).await;
        }
        while let Some(event) = client.poll_event() {
            match event {
                Event::AllocateResponse(_, relay) => {
                    release(&mut client, &socket, relay).await;
                    return Ok(TurnCheck::Reachable(relay));
                }
                Event::AllocateError(_, e) => return Ok(TurnCheck::Rejected(e.to_string())),
                Event::TransactionTimeout(_) => return Ok(TurnCheck::NoAnswer),
                _ => {}
            }
        }
        let wake = client
            .poll_timeout()
            .map(|t| tokio::time::Instant::from_std(t).min(deadline))
            .unwrap_or(deadline);
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                // ICMP port unreachable and the like: keep waiting for the deadline.
                let Ok((n, from)) = r else { continue };
                let msg = TransportMessage {
                    now: Instant::now(),
                    transport: TransportContext {
                        local_addr,
                        peer_addr: from,
                        transport_protocol: TransportProtocol::UDP,
                        ecn: None,
                    },
                    message: BytesMut::from(&buf[..n]),
                };
                let _ = client.handle_read(msg);
            }
            _ = tokio::time::sleep_until(wake) => {
                if tokio::time::Instant::now() >= deadline {
                    return Ok(TurnCheck::NoAnswer);
                }
                let _ = client.handle_timeout(Instant::now());
            }
        }
    }
}

/// Best effort: a Refresh with lifetime 0 frees the allocation on the server.
async fn release(client: &mut Client, socket: &UdpSocket, relay: SocketAddr) {
    if let Ok(mut r) = client.relay(relay) {
        let _ = r.close(Instant::now());
    }
    while let Some(tx) = client.poll_write() {
        let _ = socket.send_to(&tx.message, tx.transport.peer_addr).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn silent_server_is_no_answer() {
        // A bound socket that never answers.
        let quiet = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let r = check_within(
            quiet.local_addr().unwrap(),
            "u",
            "p",
            Duration::from_millis(800),
        )
        .await;
        assert_eq!(r, TurnCheck::NoAnswer);
    }
}
