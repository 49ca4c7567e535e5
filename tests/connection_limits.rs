//! Idle and half-open connections cannot exhaust the server: HTTP headers have a deadline, a
//! WebSocket that never joins is closed, and one address cannot take every connection, while a
//! legitimate client from elsewhere still gets in.

mod common;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

fn serve(env: &[(&str, &str)]) -> (Campeer, String) {
    let mut all = vec![("CAMPEER__SERVER__OPEN_ROOMS", "[\"*\"]")];
    all.extend_from_slice(env);
    serve_with("127.0.0.1:0", &all)
}

fn addr_of(base: &str) -> SocketAddr {
    base.trim_start_matches("http://")
        .parse()
        .expect("host:port")
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.0/8 is all local).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(format!("{from}:0").parse().expect("source address"))
        .expect("bind source");
    s.connect(to).await.expect("connect")
}

/// How long until the server closes `s` (reads EOF or a reset), up to `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(start + limit),
            s.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_dripped_slowly_are_cut_off() {
    let (_server, base) = serve(&[("CAMPEER__SERVER__HEADER_TIMEOUT", "\"2s\"")]);
    let mut s = TcpStream::connect(addr_of(&base)).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("request line");
    // One header line every half second, never the blank line that ends them.
    let start = Instant::now();
    let closed = loop {
        if s.write_all(b"X-Drip: 1\r\n").await.is_err() {
            break start.elapsed();
        }
        if closed_within(&mut s, Duration::from_millis(500))
            .await
            .is_some()
        {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a slow-header connection is still open after 10 s"
        );
    };
    assert!(
        closed >= Duration::from_millis(1500),
        "closed before the 2 s header timeout: {closed:?}"
    );
    eprintln!("slow-header connection closed after {closed:?}");
    // A connection that sends nothing at all is closed on the same deadline.
    let mut silent = TcpStream::connect(addr_of(&base)).await.expect("connect");
    let closed = closed_within(&mut silent, Duration::from_secs(10)).await;
    assert!(
        closed.is_some_and(|c| c >= Duration::from_millis(1500)),
        "a silent connection: closed after {closed:?} (header timeout 2 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_that_never_joins_is_closed() {
    let (_server, base) = serve(&[
        ("CAMPEER__SERVER__JOIN_TIMEOUT", "\"2s\""),
        ("CAMPEER__SERVER__IDLE_TIMEOUT", "\"60s\""),
    ]);
    let ws_url = format!("{}/ws", base.replace("http://", "ws://"));
    let (mut idle, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("websocket");
    let (mut joined, created) = ws_join(&ws_url, "garden", "viewer", None).await;
    assert_eq!(created["type"], "created", "{created}");
    let start = Instant::now();
    assert!(ws_recv(&mut idle, Duration::from_secs(8)).await.is_none());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(6),
        "the unjoined socket closed after {took:?} (join-timeout 2 s)"
    );
    // The joined one stays: it is still answered after the deadline.
    use futures_util::SinkExt;
    joined
        .send(tokio_tungstenite::tungstenite::Message::text(
            r#"{"type":"offer","to":"nobody","sdp":"x"}"#,
        ))
        .await
        .expect("the joined socket is still open");
    let reply = ws_recv(&mut joined, Duration::from_secs(5))
        .await
        .expect("the joined socket is answered");
    assert_eq!(reply["code"], "unknown-peer", "{reply}");
    let m = http_get(&base, "/metrics").await.1;
    assert!(m.contains("campeer_signal_join_timeouts_total 1"), "{m}");
}

/// Of `conns`, how many the server closes within two seconds (each is watched; the rest must
/// still be open after that).
async fn count_closed(conns: &mut Vec<TcpStream>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut closed = vec![false; conns.len()];
    while Instant::now() < deadline {
        for (i, c) in conns.iter_mut().enumerate() {
            if !closed[i] && closed_within(c, Duration::from_millis(10)).await.is_some() {
                closed[i] = true;
            }
        }
    }
    let mut i = 0;
    conns.retain(|_| {
        i += 1;
        !closed[i - 1]
    });
    closed.iter().filter(|c| **c).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let (_server, base) = serve(&[
        ("CAMPEER__SERVER__MAX_CONNECTIONS", "20"),
        ("CAMPEER__SERVER__MAX_CONNECTIONS_PER_ADDRESS", "8"),
    ]);
    let to = addr_of(&base);
    // 127.0.0.2 opens nine connections and sends nothing: one of them (the server takes them
    // in parallel, so any one) is closed at once, eight stay.
    let mut held = vec![];
    for _ in 0..9 {
        held.push(connect_from("127.0.0.2", to).await);
    }
    assert_eq!(count_closed(&mut held).await, 1, "nine from one address");
    assert_eq!(held.len(), 8);
    // Another address still gets in and joins.
    let ws_url = format!("{}/ws", base.replace("http://", "ws://"));
    let (ws, created) = ws_join(&ws_url, "garden", "viewer", None).await;
    assert_eq!(created["type"], "created", "{created}");
    // Up to the total cap (20: eight, the viewer's and eleven more), then a newcomer takes
    // the place of the oldest silent connection of the address holding the most (127.0.0.2):
    // twelve more from three other addresses all stay, one of the eight closes, and the viewer
    // that joined is never the one to go.
    let mut more = vec![];
    for (src, n) in [("127.0.0.3", 6), ("127.0.0.4", 5), ("127.0.0.5", 1)] {
        for _ in 0..n {
            more.push(connect_from(src, to).await);
        }
    }
    assert_eq!(count_closed(&mut more).await, 0, "newcomers at the cap");
    assert_eq!(
        count_closed(&mut held).await,
        1,
        "the busiest address lost one"
    );
    let mut ws = ws;
    ws.send(Message::Ping(b"still there?".to_vec().into()))
        .await
        .expect("the joined viewer's socket is open");
    let pong = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Pong(_)) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(pong, Ok(true), "the joined viewer kept its connection");
    drop(held);
    drop(more);
    // Places are freed as connections close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, m) = http_get(&base, "/metrics").await;
    assert_eq!(code, 200, "{m}");
    assert!(
        m.contains("campeer_signal_refused_connections_total 1")
            && m.contains("campeer_signal_evicted_connections_total 1"),
        "{m}"
    );
}
