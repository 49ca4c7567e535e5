//! The signaling server over real WebSockets on 127.0.0.1:0: rooms, relays, disconnects, every
//! bad input's documented error while the room keeps working, and slow clients.

use campeer::signal::admission::Admission;
use campeer::signal::ice::IceProvider;
use campeer::signal::protocol::Role;
use campeer::signal::router::{Access, Limits, Router};
use campeer::signal::server::{ConnLimits, NoObserver, SignalServer};
use campeer::signal::token::TokenKey;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const SECRET: &[u8] = b"integration-test-secret";

struct Server {
    url: String,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn server(open: &[&str], limits: ConnLimits) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = Router::new(
        Access {
            key: TokenKey::new(SECRET.to_vec()),
            open_rooms: open.iter().map(|s| s.to_string()).collect(),
        },
        Limits {
            max_peers_per_room: 8,
            max_rooms: 16,
        },
        IceProvider::default(),
    );
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let s = SignalServer::start(
        listener,
        None,
        router,
        limits,
        Admission::new(1000, 1000),
        Arc::new(NoObserver),
        shutdown.clone(),
        &tasks,
    )
    .unwrap();
    Server {
        url: format!("ws://{}/ws", s.local_addr),
        shutdown,
        tasks,
    }
}

fn limits() -> ConnLimits {
    ConnLimits {
        max_message_bytes: 16 * 1024,
        messages_per_second: 200,
        idle_timeout: Duration::from_secs(30),
        join_timeout: Duration::from_secs(30),
        header_timeout: Duration::from_secs(10),
        allowed_origins: Arc::from(Vec::new()),
        host_names: Arc::from(Vec::new()),
        metrics_token: None,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Client {
    ws: Ws,
    id: String,
}

impl Client {
    async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        Client {
            ws,
            id: String::new(),
        }
    }

    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("timed out waiting for a message")
                .expect("socket closed")
                .expect("socket error");
            if let Message::Text(t) = m {
                return serde_json::from_str(t.as_str()).expect("server sent JSON");
            }
        }
    }

    /// Expect nothing for a short while.
    async fn quiet(&mut self) {
        if let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(200), self.ws.next()).await
        {
            panic!("unexpected message: {t}");
        }
    }

    async fn join(url: &str, room: &str, role: &str, token: Option<String>) -> (Client, Value) {
        let mut c = Client::connect(url).await;
        c.send(json!({"type": "join", "room": room, "role": role, "token": token, "name": format!("{role}-x")})).await;
        let created = c.recv().await;
        assert_eq!(created["type"], "created", "{created}");
        c.id = created["id"].as_str().unwrap().to_owned();
        (c, created)
    }
}

fn token(room: &str, role: Role, ttl_secs: i64) -> String {
    let key = TokenKey::new(SECRET.to_vec());
    if ttl_secs >= 0 {
        key.sign(
            room,
            role,
            Duration::from_secs(ttl_secs as u64),
            SystemTime::now(),
        )
    } else {
        key.sign(
            room,
            role,
            Duration::ZERO,
            SystemTime::now() - Duration::from_secs((-ttl_secs) as u64),
        )
    }
}

#[tokio::test]
async fn camera_and_two_viewers_relay() {
    let s = server(&[], limits()).await;
    let (mut cam, created) = Client::join(
        &s.url,
        "yard",
        "camera",
        Some(token("yard", Role::Camera, 60)),
    )
    .await;
    assert_eq!(created["protocol"], 1);
    assert_eq!(created["peers"], json!([]));
    let (mut v1, created) = Client::join(
        &s.url,
        "yard",
        "viewer",
        Some(token("yard", Role::Viewer, 60)),
    )
    .await;
    assert_eq!(created["peers"][0]["id"], cam.id.as_str());
    assert_eq!(created["peers"][0]["role"], "camera");
    let joined = cam.recv().await;
    assert_eq!(
        joined,
        json!({"type": "joined", "id": v1.id, "room": "yard", "role": "viewer", "name": "viewer-x"})
    );
    let (mut v2, created) = Client::join(
        &s.url,
        "yard",
        "viewer",
        Some(token("yard", Role::Viewer, 60)),
    )
    .await;
    assert_eq!(created["peers"].as_array().unwrap().len(), 2);
    assert_eq!(cam.recv().await["id"], v2.id.as_str());
    assert_eq!(v1.recv().await["id"], v2.id.as_str());

    for v in [&mut v1, &mut v2] {
        v.send(json!({"type": "offer", "to": cam.id, "sdp": format!("offer-from-{}", v.id)}))
            .await;
        let offer = cam.recv().await;
        assert_eq!(
            offer,
            json!({"type": "offer", "from": v.id, "sdp": format!("offer-from-{}", v.id)})
        );
        cam.send(json!({"type": "answer", "to": v.id, "sdp": "answer"}))
            .await;
        assert_eq!(
            v.recv().await,
            json!({"type": "answer", "from": cam.id, "sdp": "answer"})
        );
        let cand = json!({"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
        cam.send(json!({"type": "candidate", "to": v.id, "candidate": cand}))
            .await;
        assert_eq!(
            v.recv().await,
            json!({"type": "candidate", "from": cam.id, "candidate": cand})
        );
        v.send(json!({"type": "candidate", "to": cam.id, "candidate": null}))
            .await;
        assert_eq!(
            cam.recv().await,
            json!({"type": "candidate", "from": v.id, "candidate": null})
        );
    }
    // Viewers never see each other's relays.
    v1.quiet().await;
    v2.quiet().await;

    // A clean exit reaches the others.
    v1.send(json!({"type": "exit"})).await;
    assert_eq!(
        cam.recv().await,
        json!({"type": "exit", "from": v1.id, "room": "yard"})
    );
    assert_eq!(
        v2.recv().await,
        json!({"type": "exit", "from": v1.id, "room": "yard"})
    );
    drop(s.tasks.clone());
}

#[tokio::test]
async fn abrupt_disconnect_sends_exit() {
    let s = server(&["r"], limits()).await;
    let (mut cam, _) = Client::join(&s.url, "r", "camera", None).await;
    let (v, _) = Client::join(&s.url, "r", "viewer", None).await;
    assert_eq!(cam.recv().await["type"], "joined");
    let vid = v.id.clone();
    // Drop the TCP connection without a close frame.
    drop(v.ws.into_inner());
    assert_eq!(
        cam.recv().await,
        json!({"type": "exit", "from": vid, "room": "r"})
    );
}

#[tokio::test]
async fn every_bad_input_gets_its_error_and_the_room_keeps_working() {
    let s = server(&[], limits()).await;
    let (mut cam, _) = Client::join(
        &s.url,
        "lab",
        "camera",
        Some(token("lab", Role::Camera, 60)),
    )
    .await;
    let (mut good, _) = Client::join(
        &s.url,
        "lab",
        "viewer",
        Some(token("lab", Role::Viewer, 60)),
    )
    .await;
    assert_eq!(cam.recv().await["type"], "joined");
    let (mut bad, _) = Client::join(
        &s.url,
        "lab",
        "viewer",
        Some(token("lab", Role::Viewer, 60)),
    )
    .await;
    assert_eq!(cam.recv().await["type"], "joined");
    assert_eq!(good.recv().await["type"], "joined");

    let expect_code = |v: &Value, code: &str| {
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["code"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    };
    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("{oops".into()), "bad-json"),
        (Message::Text("[]".into()), "bad-json"),
        (Message::Binary(vec![1, 2, 3].into()), "bad-json"),
        (
            Message::Text(json!({"type": "teleport"}).to_string().into()),
            "unknown-type",
        ),
        (
            Message::Text(json!({"type": "offer", "to": cam.id}).to_string().into()),
            "bad-message",
        ),
        (
            Message::Text(
                json!({"type": "offer", "to": cam.id, "sdp": "x", "from": "someone-else"})
                    .to_string()
                    .into(),
            ),
            "bad-message",
        ),
        (
            Message::Text(
                json!({"type": "offer", "to": "nobody", "sdp": "x"})
                    .to_string()
                    .into(),
            ),
            "unknown-peer",
        ),
        (
            Message::Text(
                json!({"type": "offer", "to": good.id, "sdp": "x"})
                    .to_string()
                    .into(),
            ),
            "not-allowed",
        ),
        (
            Message::Text(
                json!({"type": "join", "room": "lab", "role": "viewer"})
                    .to_string()
                    .into(),
            ),
            "already-joined",
        ),
        (
            Message::Text(
                json!({"type": "offer", "to": cam.id, "sdp": "x".repeat(20 * 1024)})
                    .to_string()
                    .into(),
            ),
            "too-large",
        ),
    ];
    for (msg, code) in cases {
        bad.send_raw(msg).await;
        expect_code(&bad.recv().await, code);
        // Meanwhile the good viewer's relays still flow both ways.
        good.send(json!({"type": "offer", "to": cam.id, "sdp": code}))
            .await;
        assert_eq!(
            cam.recv().await,
            json!({"type": "offer", "from": good.id, "sdp": code})
        );
        cam.send(json!({"type": "answer", "to": good.id, "sdp": code}))
            .await;
        assert_eq!(good.recv().await["sdp"], code);
    }

    // Token errors, on fresh connections.
    for (tok, role, code) in [
        (None, "viewer", "token-required"),
        (Some("v1.garbage.sig".to_owned()), "viewer", "bad-token"),
        (Some(token("lab", Role::Viewer, 60)), "camera", "bad-token"),
        (
            Some(token("other", Role::Viewer, 60)),
            "viewer",
            "bad-token",
        ),
        (
            Some(token("lab", Role::Viewer, -10)),
            "viewer",
            "token-expired",
        ),
    ] {
        let mut c = Client::connect(&s.url).await;
        c.send(json!({"type": "join", "room": "lab", "role": role, "token": tok}))
            .await;
        expect_code(&c.recv().await, code);
        // Not admitted: relays are refused.
        c.send(json!({"type": "offer", "to": cam.id, "sdp": "x"}))
            .await;
        expect_code(&c.recv().await, "not-joined");
    }
    let mut c = Client::connect(&s.url).await;
    c.send(json!({"type": "join", "room": "no/slashes", "role": "viewer"}))
        .await;
    expect_code(&c.recv().await, "bad-room");
    cam.quiet().await;
}

#[tokio::test]
async fn flooding_is_rate_limited_without_hurting_others() {
    let s = server(
        &["r"],
        ConnLimits {
            messages_per_second: 20,
            ..limits()
        },
    )
    .await;
    let (mut cam, _) = Client::join(&s.url, "r", "camera", None).await;
    let (mut flood, _) = Client::join(&s.url, "r", "viewer", None).await;
    assert_eq!(cam.recv().await["type"], "joined");
    for i in 0..100 {
        flood.send(json!({"type": "candidate", "to": cam.id, "candidate": {"candidate": format!("c{i}")}})).await;
    }
    let mut relayed = 0;
    let mut limited = 0;
    // The burst (2x the rate, less the token the join used) passes, plus what refills while
    // sending; the rest is dropped, and the flooder told so once (at most one notice a second,
    // so a flood cannot fill its own queue with them).
    loop {
        match tokio::time::timeout(Duration::from_millis(300), cam.ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => relayed += 1,
            _ => break,
        }
    }
    while let Ok(Some(Ok(Message::Text(t)))) =
        tokio::time::timeout(Duration::from_millis(300), flood.ws.next()).await
    {
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["code"], "rate-limited", "{v}");
        limited += 1;
    }
    assert!((39..=60).contains(&relayed), "relayed {relayed}");
    assert_eq!(limited, 1, "relayed {relayed} limited {limited}");
    // Another peer is unaffected.
    let (mut other, _) = Client::join(&s.url, "r", "viewer", None).await;
    assert_eq!(cam.recv().await["type"], "joined");
    other
        .send(json!({"type": "offer", "to": cam.id, "sdp": "hi"}))
        .await;
    assert_eq!(cam.recv().await["sdp"], "hi");
}

#[tokio::test]
async fn a_slow_client_is_dropped_and_never_stalls_the_room() {
    let s = server(
        &["r"],
        ConnLimits {
            messages_per_second: 100_000,
            max_message_bytes: 64 * 1024,
            ..limits()
        },
    )
    .await;
    let (mut cam, _) = Client::join(&s.url, "r", "camera", None).await;
    let (slow, _) = Client::join(&s.url, "r", "viewer", None).await;
    assert_eq!(cam.recv().await["type"], "joined");
    let (mut fast, _) = Client::join(&s.url, "r", "viewer", None).await;
    assert_eq!(cam.recv().await["type"], "joined");
    // The slow viewer never reads; the camera floods it with large candidates (MBs in total).
    let big = "x".repeat(60 * 1024);
    let slow_id = slow.id.clone();
    let started = std::time::Instant::now();
    let mut exit_seen = false;
    for i in 0..400 {
        cam.send(json!({"type": "candidate", "to": slow_id, "candidate": {"candidate": big}}))
            .await;
        if i % 20 == 0 {
            // The fast viewer's relays keep flowing promptly throughout.
            fast.send(json!({"type": "offer", "to": cam.id, "sdp": format!("ping{i}")}))
                .await;
            loop {
                let m = cam.recv().await;
                if m["type"] == "exit" && m["from"] == slow_id.as_str() {
                    exit_seen = true;
                    continue;
                }
                if m["type"] == "error" && m["code"] == "unknown-peer" {
                    continue; // candidates sent after the slow viewer was dropped
                }
                assert_eq!(m["sdp"], format!("ping{i}"), "{m}");
                break;
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    while !exit_seen {
        let m = cam.recv().await;
        if m["type"] == "error" && m["code"] == "unknown-peer" {
            continue;
        }
        assert_eq!(
            m,
            json!({"type": "exit", "from": slow_id, "room": "r"}),
            "the slow viewer is disconnected"
        );
        exit_seen = true;
    }
    drop(slow);
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_its_peer_leaves() {
    let s = server(
        &["r"],
        ConnLimits {
            idle_timeout: Duration::from_secs(1),
            ..limits()
        },
    )
    .await;
    let (mut cam, _) = Client::join(&s.url, "r", "camera", None).await;
    let (idle, _) = Client::join(&s.url, "r", "viewer", None).await;
    assert_eq!(cam.recv().await["type"], "joined");
    // The viewer stops reading (so never answers pings); the camera keeps reading and stays.
    let started = std::time::Instant::now();
    let m = cam.recv().await;
    assert_eq!(m, json!({"type": "exit", "from": idle.id, "room": "r"}));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    drop(idle);
}

#[tokio::test]
async fn binary_and_ping_floods_are_rate_limited_and_closed() {
    let s = server(
        &["r"],
        ConnLimits {
            messages_per_second: 20,
            ..limits()
        },
    )
    .await;
    for frame in [
        Message::Binary(vec![1, 2, 3].into()),
        Message::Ping(vec![1].into()),
    ] {
        let (mut c, _) = Client::join(&s.url, "r", "viewer", None).await;
        for _ in 0..1000 {
            if c.ws.send(frame.clone()).await.is_err() {
                break;
            }
        }
        // (A flood the server closes on may lose the last replies to the reset: only their
        // number is bounded here.)
        let (mut bad_json, mut closed) = (0, false);
        loop {
            match tokio::time::timeout(Duration::from_secs(3), c.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("the server sends JSON");
                    match v["code"].as_str() {
                        Some("bad-json") => bad_json += 1,
                        Some("rate-limited") => {}
                        _ => panic!("unexpected {v}"),
                    }
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                    closed = true;
                    break;
                }
                Ok(Some(Ok(_))) => continue, // pongs
                Err(_) => break,
            }
        }
        // The burst passes (2x the rate), the rest is dropped, and a flood that goes on is closed.
        assert!(closed, "{frame:?} flood: connection still open");
        assert!(
            bad_json <= 45,
            "{frame:?} flood: {bad_json} bad-json replies"
        );
    }
}
