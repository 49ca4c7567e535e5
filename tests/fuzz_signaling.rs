//! Fuzzing that runs with every test run (stable Rust, a generator of our own, seeded): no input
//! from the network, a camera or a config file makes campeer panic, and the room router keeps
//! its invariants after every message.
//!
//! - the room router, driven by 16 peers with generated messages (every type and field, valid
//!   and forged tokens, unknown recipients, disconnects): ≥ 1,000,000 inputs; after each one no
//!   peer is in two rooms, the rooms' and members' counts agree, no room holds more than its
//!   limit, and every relay goes between the two roles of one room;
//! - the message parser on mutated messages (bytes flipped, cut, duplicated; deep nesting, huge
//!   numbers, unicode, wrong types): ≥ 200,000 inputs;
//! - the SDP functions the camera runs on a viewer's offer, on mutated Chromium and Firefox
//!   offers, and the SPS reader on mutated SPS bytes;
//! - the same mutated messages, ≥ 100,000 of them with binary frames and pings among them,
//!   through the sockets of a real `campeer serve` while a camera and a viewer are in a room:
//!   the server stays up and the room still relays;
//! - configuration files and `CAMPEER__` variables, mutated, through `Config::load`.
//!
//! `CAMPEER_FUZZ_SEED` replays a run (every test prints its seed); `CAMPEER_FUZZ_SCALE`
//! multiplies the counts for a longer run:
//! `CAMPEER_FUZZ_SCALE=100 cargo test --release --test fuzz_signaling -- --nocapture`.

mod common;

use campeer::camera::peer::{candidate_refusal, choose_codec};
use campeer::config::Config;
use campeer::media::h264::{SpsProfile, answer_profile_level_id, offered_h264};
use campeer::signal::ice::IceProvider;
use campeer::signal::protocol::{ClientMessage, IceCandidate, Role, ServerMessage, parse_client};
use campeer::signal::router::{Access, Limits, Router};
use campeer::signal::token::TokenKey;
use common::fuzz::{mutate, pick, rng, scaled};
use common::serve_with;
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};
use tokio_tungstenite::tungstenite::Message;

const PEERS: usize = 16;
const ROOMS: &[&str] = &["open", "closed", "other", "x y", "", "third"];

fn peer(i: usize) -> String {
    format!("p{i}")
}

/// A generated message of any type, with fields from valid to absurd.
fn message(rng: &mut StdRng, tokens: &[Option<String>], members: &[String]) -> ClientMessage {
    let to = |rng: &mut StdRng| {
        if !members.is_empty() && rng.random_bool(0.6) {
            pick(rng, members).clone()
        } else if rng.random_bool(0.9) {
            peer(rng.random_range(0..PEERS))
        } else {
            pick(rng, &["", "nobody", "p999", "\u{0}"]).to_string()
        }
    };
    let text = |rng: &mut StdRng| -> String {
        match rng.random_range(0..4) {
            0 => String::new(),
            1 => "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n".into(),
            2 => "é\u{1F4A9}".repeat(rng.random_range(0..50)),
            _ => "x".repeat(rng.random_range(0..5000)),
        }
    };
    match rng.random_range(0..9) {
        0..=2 => ClientMessage::Join {
            room: pick(rng, ROOMS).to_string(),
            role: if rng.random_bool(0.3) {
                Role::Camera
            } else {
                Role::Viewer
            },
            token: pick(rng, tokens).clone(),
            name: rng.random_bool(0.7).then(|| text(rng)),
            instance: rng
                .random_bool(0.5)
                .then(|| pick(rng, &["a", "b", "", "\u{7f}", "inst"]).to_string()),
        },
        3 => ClientMessage::Offer {
            to: to(rng),
            sdp: text(rng),
        },
        4 => ClientMessage::Answer {
            to: to(rng),
            sdp: text(rng),
        },
        5 => ClientMessage::Candidate {
            to: to(rng),
            candidate: rng.random_bool(0.8).then(|| IceCandidate {
                candidate: text(rng),
                sdp_mid: rng.random_bool(0.5).then(|| "0".into()),
                sdp_m_line_index: rng.random_bool(0.5).then(|| rng.random()),
                username_fragment: None,
            }),
        },
        6 => ClientMessage::Reject {
            to: to(rng),
            code: text(rng),
            message: text(rng),
        },
        7 => ClientMessage::Exit {},
        _ => ClientMessage::Ice {},
    }
}

/// Where every peer is, from the router's public view; checks the room invariants.
fn membership(router: &Router, step: usize) -> HashMap<String, (String, Role)> {
    let mut at: HashMap<String, (String, Role)> = HashMap::new();
    let mut rooms = 0;
    for room in ROOMS {
        let peers = router.peers_in(room);
        if !peers.is_empty() {
            rooms += 1;
        }
        assert!(
            peers.len() <= 4,
            "step {step}: room {room:?} over its limit"
        );
        for p in peers {
            let before = at.insert(p.id.clone(), (room.to_string(), p.role));
            assert!(before.is_none(), "step {step}: {} is in two rooms", p.id);
            assert_eq!(router.role_of(&p.id), Some(p.role), "step {step}");
        }
    }
    assert_eq!(router.room_count(), rooms, "step {step}: room count");
    assert!(rooms <= 3, "step {step}: over the room limit");
    assert_eq!(router.member_count(), at.len(), "step {step}: member count");
    for i in 0..PEERS {
        let id = peer(i);
        assert_eq!(
            router.role_of(&id).is_some(),
            at.contains_key(&id),
            "step {step}: {id} has a role but no room, or a room but no role"
        );
    }
    at
}

#[test]
fn the_router_keeps_its_invariants_under_a_million_generated_messages() {
    let mut rng = rng("router");
    let key = TokenKey::new(b"fuzz-secret".to_vec());
    let now = SystemTime::now();
    let ttl = Duration::from_secs(3600);
    let tokens = vec![
        None,
        Some(String::new()),
        Some(key.sign("closed", Role::Viewer, ttl, now)),
        Some(key.sign("closed", Role::Camera, ttl, now)),
        Some(key.sign("other", Role::Viewer, ttl, now)),
        Some(key.sign("*", Role::Viewer, ttl, now)),
        Some(key.sign("closed", Role::Viewer, ttl, now - Duration::from_secs(7200))),
        Some(TokenKey::new(b"another".to_vec()).sign("closed", Role::Viewer, ttl, now)),
        Some("v1.garbage.more".into()),
        Some("\u{0}".repeat(300)),
    ];
    let mut router = Router::new(
        Access {
            key,
            open_rooms: ["open".to_string(), "other".to_string()].into(),
        },
        Limits {
            max_peers_per_room: 4,
            max_rooms: 3,
        },
        IceProvider::default(),
    );
    let steps = scaled(1_000_000);
    let mut before = HashMap::new();
    let (mut relays, mut errors) = (0u64, 0u64);
    for step in 0..steps {
        let from = peer(rng.random_range(0..PEERS));
        let out = if rng.random_range(0..20) == 0 {
            router.disconnect(&from)
        } else {
            let members: Vec<String> = before.keys().cloned().collect();
            let msg = message(&mut rng, &tokens, &members);
            let via = rng.random_bool(0.1).then_some("evil.example");
            router.handle_via(&from, via, msg, now)
        };
        let after = membership(&router, step);
        for (to, msg) in &out {
            assert!(
                to == &from || before.contains_key(to) || after.contains_key(to),
                "step {step}: {msg:?} sent to {to}, who is in no room"
            );
            let relayed_from = match msg {
                ServerMessage::Offer { from, .. }
                | ServerMessage::Answer { from, .. }
                | ServerMessage::Candidate { from, .. } => Some(from),
                ServerMessage::Error { from: Some(f), .. } => Some(f),
                ServerMessage::Error { .. } => {
                    errors += 1;
                    None
                }
                _ => None,
            };
            if let Some(sender) = relayed_from {
                relays += 1;
                assert_eq!(sender, &from, "step {step}: a relay names another sender");
                let (Some((r1, role1)), Some((r2, role2))) = (after.get(sender), after.get(to))
                else {
                    panic!("step {step}: a relay between peers not both in rooms: {msg:?}");
                };
                assert_eq!(r1, r2, "step {step}: a relay across rooms");
                assert_ne!(role1, role2, "step {step}: a relay between two {role1}s");
            }
        }
        before = after;
    }
    eprintln!("router: {steps} inputs, {relays} relays, {errors} errors, invariants held");
}

/// Valid messages of every type, as clients send them.
const SAMPLES: &[&str] = &[
    r#"{"type":"join","room":"garden","role":"viewer","token":"v1.abc.def","name":"Ann","instance":"x1"}"#,
    r#"{"type":"join","room":"garden","role":"camera"}"#,
    r#"{"type":"offer","to":"3f9a0c1e7b2d4a58","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}"#,
    r#"{"type":"answer","to":"3f9a0c1e7b2d4a58","sdp":"v=0\r\n"}"#,
    r#"{"type":"candidate","to":"3f9a0c1e7b2d4a58","candidate":{"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
    r#"{"type":"candidate","to":"3f9a0c1e7b2d4a58","candidate":null}"#,
    r#"{"type":"reject","to":"3f9a0c1e7b2d4a58","code":"max-viewers","message":"full"}"#,
    r#"{"type":"exit"}"#,
    r#"{"type":"ice"}"#,
];

#[test]
fn the_parser_answers_every_mutated_message_without_a_panic() {
    let mut rng = rng("parser");
    let n = scaled(200_000);
    let (mut ok, mut refused) = (0u64, 0u64);
    for _ in 0..n {
        let sample = *pick(&mut rng, SAMPLES);
        let text = mutate(&mut rng, sample);
        match parse_client(&text) {
            Ok(_) => ok += 1,
            Err(ServerMessage::Error { code, .. }) => {
                assert!(
                    ["bad-json", "unknown-type", "bad-message"].contains(&code.as_str()),
                    "{code} for {text:?}"
                );
                refused += 1;
            }
            Err(other) => panic!("parse_client answered {other:?} for {text:?}"),
        }
    }
    eprintln!("parser: {n} inputs, {ok} parsed, {refused} refused with a code");
}

/// Offers of the browsers in the tests (trimmed to what the camera reads).
const OFFERS: &[&str] = &[
    // Chromium
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
     m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 108 109 127 125\r\n\
     c=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack pli\r\n\
     a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\na=rtpmap:102 H264/90000\r\n\
     a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
     a=rtpmap:104 H264/90000\r\na=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
     a=rtpmap:106 H264/90000\r\na=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
     a=rtpmap:108 H264/90000\r\na=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f\r\n\
     a=rtpmap:127 H264/90000\r\na=fmtp:127 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640034\r\n\
     m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=rtpmap:111 opus/48000/2\r\n\
     a=candidate:1387637174 1 udp 2122260223 127.0.0.1 61764 typ host generation 0\r\n",
    // Firefox ESR (no H.264 here)
    "v=0\r\no=mozilla...THIS_IS_SDPARTA-115.0 1 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
     a=group:BUNDLE 0 1\r\nm=video 9 UDP/TLS/RTP/SAVPF 120 124 121 125\r\nc=IN IP4 0.0.0.0\r\n\
     a=mid:0\r\na=recvonly\r\na=rtpmap:120 VP8/90000\r\na=fmtp:120 max-fs=12288;max-fr=60\r\n\
     a=rtpmap:124 rtx/90000\r\na=fmtp:124 apt=120\r\na=rtpmap:121 VP9/90000\r\n\
     m=audio 9 UDP/TLS/RTP/SAVPF 109\r\na=mid:1\r\na=rtpmap:109 opus/48000/2\r\n",
];

#[test]
fn the_cameras_offer_checks_take_mutated_offers_and_sps_without_a_panic() {
    let mut rng = rng("sdp");
    let stream = SpsProfile {
        profile_idc: 66,
        constraints: 0xc0,
        level_idc: 31,
    };
    let n = scaled(50_000);
    let mut answered = 0u64;
    for _ in 0..n {
        let sample = *pick(&mut rng, OFFERS);
        let offer = mutate(&mut rng, sample);
        let _ = offered_h264(&offer);
        if choose_codec(&offer, &stream, rng.random_bool(0.5)).is_some() {
            answered += 1;
        }
        let _ = answer_profile_level_id(&offer, &stream);
        for line in offer.lines().filter(|l| l.contains("candidate")) {
            let _ = candidate_refusal(line.trim_start_matches("a="));
        }
    }
    // SPS NAL units as encoders write them, mutated (a camera's own H.264 is passed through).
    let sps: &[&[u8]] = &[
        &[
            0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xec, 0x04, 0x40,
        ],
        &[
            0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5,
        ],
    ];
    for _ in 0..n {
        let mut bytes = pick(&mut rng, sps).to_vec();
        for _ in 0..rng.random_range(0..4) {
            let i = rng.random_range(0..bytes.len());
            bytes[i] = rng.random();
        }
        bytes.truncate(rng.random_range(0..=bytes.len()));
        let _ = SpsProfile::parse(&bytes);
    }
    eprintln!("sdp: {n} mutated offers ({answered} would be answered), {n} mutated SPS");
}

#[test]
fn mutated_configuration_is_refused_with_an_error_not_a_panic() {
    let mut rng = rng("config");
    let dir = std::env::temp_dir().join(format!("campeer-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("campeer.toml");
    let base = include_str!("../config/campeer.toml");
    let keys = [
        "CAMPEER__VIDEO__WIDTH",
        "CAMPEER__SERVER__OPEN_ROOMS",
        "CAMPEER__CAMERA__IDLE_STOP",
        "CAMPEER__VIDEO__LOWER_RUNGS",
        "CAMPEER__ICE__SERVERS",
        "CAMPEER__SERVER__HOST_NAMES",
        "CAMPEER__",
        "CAMPEER__X",
    ];
    let values = [
        "1",
        "-1",
        "\"x\"",
        "[1,",
        "{}",
        "99999999999999999999",
        "\"1h\"",
        "[\"*\"]",
        "",
    ];
    let n = scaled(5_000);
    let mut loaded = 0u64;
    for i in 0..n {
        let text = mutate(&mut rng, base);
        std::fs::write(&file, &text).expect("write config");
        let env = (i % 4 == 0).then(|| {
            (
                pick(&mut rng, &keys).to_string(),
                pick(&mut rng, &values).to_string(),
            )
        });
        if Config::load(Some(&file), env).is_ok() {
            loaded += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("config: {n} mutated files, {loaded} still valid, the rest refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_frames_through_real_sockets_leave_the_server_up_and_the_room_working() {
    let mut seed_rng = rng("sockets");
    let (mut server, base) = serve_with(
        "127.0.0.1:0",
        &[
            ("CAMPEER__SERVER__OPEN_ROOMS", "[\"*\"]"),
            // Past the rate limit every connection would be closed at once: let them through.
            ("CAMPEER__SERVER__MESSAGES_PER_SECOND", "1000000"),
        ],
    );
    let ws_url = format!("{}/ws", base.replace("http://", "ws://"));
    let per_client = scaled(25_000);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = ws_url.clone();
        let mut rng = StdRng::seed_from_u64(seed_rng.random());
        tasks.push(tokio::spawn(async move {
            let (mut sent, mut reconnects) = (0usize, 0usize);
            'conn: while sent < per_client {
                let Ok((ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
                    reconnects += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (mut tx, mut rx) = ws.split();
                // Replies are read (and dropped) so the server never sees a stalled reader.
                let drain = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
                while sent < per_client {
                    let frame = match rng.random_range(0..50) {
                        0 => Message::binary(vec![rng.random::<u8>(); rng.random_range(0..100)]),
                        1 => Message::Ping(vec![1, 2, 3].into()),
                        _ => {
                            let sample = *pick(&mut rng, SAMPLES);
                            Message::text(mutate(&mut rng, sample))
                        }
                    };
                    sent += 1;
                    if tx.send(frame).await.is_err() {
                        reconnects += 1;
                        drain.abort();
                        continue 'conn;
                    }
                }
                let _ = tx.close().await;
                drain.abort();
            }
            (sent, reconnects)
        }));
    }
    let (mut sent, mut reconnects) = (0, 0);
    for t in tasks {
        let (s, r) = t.await.expect("a fuzzing client");
        sent += s;
        reconnects += r;
    }
    // Still up, and a room still works end to end.
    let (mut cam, created) = common::ws_join(&ws_url, "after", "camera", None).await;
    assert_eq!(created["type"], "created", "{created}");
    let (mut viewer, created) = common::ws_join(&ws_url, "after", "viewer", None).await;
    assert_eq!(created["type"], "created", "{created}");
    let cam_id = created["peers"][0]["id"]
        .as_str()
        .expect("the camera's id")
        .to_owned();
    viewer
        .send(Message::text(
            serde_json::json!({"type": "offer", "to": cam_id, "sdp": "v=0\r\n"}).to_string(),
        ))
        .await
        .expect("send offer");
    let relayed = loop {
        let m = common::ws_recv(&mut cam, Duration::from_secs(5))
            .await
            .expect("the offer reaches the camera");
        if m["type"] == "offer" {
            break m;
        }
    };
    assert_eq!(relayed["sdp"], "v=0\r\n");
    let logs = server.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    server.wait_log("signaling server listening", Duration::from_secs(1));
    eprintln!(
        "sockets: {sent} frames over {} connections; the server stayed up",
        reconnects + 4
    );
}
