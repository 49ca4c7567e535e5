//! TURN over TCP for the camera's WebRTC connections.
//!
//! webrtc-rs 0.21.1 allocates TURN relays over UDP only: its relay gatherer logs "Skipping
//! unsupported non-UDP TURN url" for `?transport=tcp` (and `turns:`) URLs
//! (`webrtc/src/peer_connection/transport/turn_relayer.rs`). A camera on a network that drops
//! UDP would then have no candidate at all. This module owns a small bridge per TCP TURN server:
//! a UDP socket on 127.0.0.1 that webrtc-rs is pointed at instead (`turn:127.0.0.1:<port>`), and
//! for each UDP client address one TCP connection to the real server (RFC 8656 §3.1: over TCP
//! the 5-tuple is the connection). STUN messages and ChannelData cross unchanged, with the
//! stream framing TURN over TCP needs: ChannelData is padded to a multiple of four bytes on the
//! way up, and the stream is split back into messages with `rtc-shared`'s `TurnStreamDecoder`
//! on the way down. Credentials, nonces and MESSAGE-INTEGRITY are end to end.
//!
//! The bridge holds no session state of its own: a TCP connection closes when the server
//! closes it, on an error, or after [`IDLE_CLOSE`] without a datagram from its client (an
//! allocation that is in use is refreshed long before that).

use rtc::shared::turn_framing::TurnStreamDecoder;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A TCP connection with no datagram from its client for this long is closed.
pub const IDLE_CLOSE: Duration = Duration::from_secs(15 * 60);
/// Time allowed to connect to the TURN server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most TCP connections one bridge keeps (one per allocation).
pub const MAX_CONNECTIONS: usize = 256;
/// Datagrams queued per connection before new ones are dropped (UDP semantics).
const QUEUE: usize = 256;

/// Counters shared by every bridge, for `/metrics`.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// TCP connections opened to TURN servers.
    pub connections: AtomicU64,
    /// Connection attempts that failed.
    pub failures: AtomicU64,
}

/// One bridge: webrtc-rs sends to [`Bridge::local_addr`], the bridge speaks TCP to `server`.
#[derive(Debug)]
pub struct Bridge {
    local: SocketAddr,
    stop: CancellationToken,
}

impl Bridge {
    /// The UDP address webrtc-rs should use as the TURN server.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A parsed `turn:`/`turns:` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnUrl {
    /// `turns:` (TLS).
    pub secure: bool,
    /// `host:port` (port 3478, or 5349 for `turns:`, when the URL has none).
    pub server: String,
    /// `?transport=tcp` (or `turns:`, which is always TCP).
    pub tcp: bool,
}

/// Parse a `turn:`/`turns:` URL (RFC 7065); `None` for `stun:` and anything else.
pub fn parse_turn_url(url: &str) -> Option<TurnUrl> {
    let (secure, rest) = if let Some(r) = url.strip_prefix("turns:") {
        (true, r)
    } else {
        (false, url.strip_prefix("turn:")?)
    };
    let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
    let tcp = secure
        || query
            .split('&')
            .any(|kv| kv.eq_ignore_ascii_case("transport=tcp"));
    if hostport.is_empty() {
        return None;
    }
    let has_port = if let Some(v6) = hostport.strip_prefix('[') {
        v6.contains("]:")
    } else {
        hostport.contains(':')
    };
    let server = if has_port {
        hostport.to_owned()
    } else {
        format!("{hostport}:{}", if secure { 5349 } else { 3478 })
    };
    Some(TurnUrl {
        secure,
        server,
        tcp,
    })
}

/// Start a bridge to the TURN server `server` (`host:port`).
pub async fn start(
    server: String,
    stats: Arc<BridgeStats>,
    shutdown: &CancellationToken,
) -> std::io::Result<Bridge> {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let local = socket.local_addr()?;
    let stop = shutdown.child_token();
    tokio::spawn(run(socket, server, stats, stop.clone()));
    Ok(Bridge { local, stop })
}

async fn run(
    socket: Arc<UdpSocket>,
    server: String,
    stats: Arc<BridgeStats>,
    stop: CancellationToken,
) {
    let mut conns: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; keep serving.
                    tracing::debug!(error = %e, "TURN/TCP bridge: UDP receive error");
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let datagram = buf[..n].to_vec();
        conns.retain(|_, tx| !tx.is_closed());
        let tx = match conns.get(&from) {
            Some(tx) => tx.clone(),
            None => {
                if conns.len() >= MAX_CONNECTIONS {
                    tracing::warn!(server = %server, "TURN/TCP bridge: too many connections; datagram dropped");
                    continue;
                }
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(connection(
                    socket.clone(),
                    from,
                    server.clone(),
                    rx,
                    stats.clone(),
                    stop.clone(),
                ));
                conns.insert(from, tx.clone());
                tx
            }
        };
        // A full queue means the TCP side is stuck: drop, as UDP would.
        let _ = tx.try_send(datagram);
    }
}

async fn connection(
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    server: String,
    mut rx: mpsc::Receiver<Vec<u8>>,
    stats: Arc<BridgeStats>,
    stop: CancellationToken,
) {
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&server)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(server = %server, error = %e, "cannot reach TURN server over TCP");
            return;
        }
        Err(_) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(server = %server, "TURN server over TCP: no connection within 5 s");
            return;
        }
    };
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let _ = tcp.set_nodelay(true);
    tracing::debug!(server = %server, %client, "TURN over TCP connected");
    let (mut rd, mut wr) = tcp.into_split();
    let down = {
        let socket = socket.clone();
        async move {
            let mut decoder = TurnStreamDecoder::new();
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                let n = rd.read(&mut chunk).await?;
                if n == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                decoder.extend_from_slice(&chunk[..n]);
                while let Some(msg) = decoder.next_message().map_err(std::io::Error::other)? {
                    let _ = socket.send_to(&msg[..payload_len(&msg)], client).await;
                }
            }
        }
    };
    let up = async move {
        loop {
            let mut datagram = tokio::select! {
                d = rx.recv() => match d { Some(d) => d, None => return Ok::<(), std::io::Error>(()) },
                _ = tokio::time::sleep(IDLE_CLOSE) => return Ok(()),
            };
            datagram.resize(datagram.len() + padding(&datagram), 0);
            wr.write_all(&datagram).await?;
        }
    };
    let result = tokio::select! {
        r = down => r,
        r = up => r,
        _ = stop.cancelled() => Ok(()),
    };
    match result {
        Ok(()) => tracing::debug!(server = %server, %client, "TURN over TCP closed"),
        Err(e) => tracing::debug!(server = %server, %client, error = %e, "TURN over TCP ended"),
    }
}

/// The message without TCP padding (what a UDP datagram carries).
fn payload_len(msg: &[u8]) -> usize {
    if msg.len() >= 4 && msg[0] >> 6 == 1 {
        (4 + u16::from_be_bytes([msg[2], msg[3]]) as usize).min(msg.len())
    } else {
        msg.len()
    }
}

/// Bytes of padding a datagram needs on a TCP stream (ChannelData only).
fn padding(datagram: &[u8]) -> usize {
    if datagram.len() >= 4 && datagram[0] >> 6 == 1 {
        (4 - datagram.len() % 4) % 4
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_urls() {
        let u = parse_turn_url("turn:203.0.113.1:3478?transport=tcp").unwrap();
        assert_eq!(
            (u.secure, u.server.as_str(), u.tcp),
            (false, "203.0.113.1:3478", true)
        );
        let u = parse_turn_url("turn:turn.example.com").unwrap();
        assert_eq!((u.server.as_str(), u.tcp), ("turn.example.com:3478", false));
        let u = parse_turn_url("turns:turn.example.com").unwrap();
        assert_eq!(
            (u.secure, u.server.as_str(), u.tcp),
            (true, "turn.example.com:5349", true)
        );
        let u = parse_turn_url("turn:[2001:db8::1]:3478?transport=udp").unwrap();
        assert_eq!((u.server.as_str(), u.tcp), ("[2001:db8::1]:3478", false));
        assert_eq!(parse_turn_url("stun:stun.example.com:3478"), None);
        assert_eq!(parse_turn_url("turn:"), None);
    }

    #[test]
    fn framing() {
        let stun = [0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
        // ChannelData 0x4001 with 5 bytes of data: 9 bytes, padded to 12 on TCP.
        let cd = [0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
        assert_eq!(padding(&cd), 3);
        let mut padded = cd.to_vec();
        padded.extend([0, 0, 0]);
        assert_eq!(payload_len(&padded), 9);
        assert_eq!(padding(&stun), 0);
    }

    /// A TCP "server" that echoes each framed message back, through the bridge.
    #[tokio::test]
    async fn datagrams_cross_as_framed_messages() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let mut decoder = TurnStreamDecoder::new();
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                decoder.extend_from_slice(&buf[..n]);
                while let Some(m) = decoder.next_message().unwrap() {
                    // Padded ChannelData arrives padded: the bridge must have added it.
                    assert_eq!(m.len() % 4, 0, "{m:?}");
                    s.write_all(&m).await.unwrap();
                }
            }
        });
        let stop = CancellationToken::new();
        let stats = Arc::new(BridgeStats::default());
        let bridge = start(server, stats.clone(), &stop).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut stun = vec![0x00, 0x01, 0x00, 0x04, 0x21, 0x12, 0xa4, 0x42];
        stun.extend([7u8; 12]); // transaction id
        stun.extend([9u8; 4]); // 4 bytes of attributes
        let cd = vec![0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
        client.send_to(&stun, bridge.local_addr()).await.unwrap();
        client.send_to(&cd, bridge.local_addr()).await.unwrap();
        let mut buf = [0u8; 128];
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], &stun[..]);
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], &cd[..], "padding stripped");
        assert_eq!(stats.connections.load(Ordering::Relaxed), 1);
    }
}
