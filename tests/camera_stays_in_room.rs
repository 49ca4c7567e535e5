//! Nobody holding a viewer token, and nothing a server refuses, keeps a camera out of its room:
//! viewer floods cannot push the camera off the server, a refused join is retried until it
//! succeeds, and viewers cannot take the place a camera needs.

mod common;
use common::rtc_viewer::RtcViewer;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// An offer the camera has to refuse (VP9 only, and no VP8 fallback configured).
const VP9_ONLY_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 98\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtpmap:98 VP9/90000\r\n";

async fn metric(base: &str, name: &str) -> Option<f64> {
    let m = http_get(base, "/metrics").await.1;
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_token_floods_cannot_push_the_camera_out() {
    let (mut cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__VIDEO__WIDTH", "320"),
            ("CAMPEER__VIDEO__HEIGHT", "240"),
            ("CAMPEER__VIDEO__FALLBACK", "\"none\""),
        ],
    );
    let (ws_url, token) = ws_of(&url);
    let base = base_of(&url);
    // Six sockets with the one viewer token offer the camera what it must refuse, as fast as
    // their sockets take it, for three seconds (reading and discarding every answer).
    let mut floods = vec![];
    for _ in 0..6 {
        let (ws, created) = ws_join(&ws_url, "camera", "viewer", token.as_deref()).await;
        assert!(has_camera(&created), "{created}");
        let camera = created["peers"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["role"] == "camera"))
            .map(|p| p["id"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        floods.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let reader = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
            let offer = json!({"type": "offer", "to": camera, "sdp": VP9_ONLY_OFFER}).to_string();
            let until = Instant::now() + Duration::from_secs(3);
            let mut sent = 0u32;
            while Instant::now() < until {
                if tx.send(Message::text(offer.clone())).await.is_err() {
                    break;
                }
                sent += 1;
            }
            reader.abort();
            sent
        }));
    }
    let mut sent = 0;
    for f in floods {
        sent += f.await.expect("flood task");
    }
    eprintln!("offers sent by the floods: {sent}");
    // The camera is still in its room: a new viewer finds it there, and the camera believes
    // it is joined.
    let (_ws, created) = ws_join(&ws_url, "camera", "viewer", token.as_deref()).await;
    assert!(
        has_camera(&created),
        "after the flood the room has no camera: {created}\n{}",
        cam.logs()
    );
    assert_eq!(metric(&base, "campeer_signaling_joined").await, Some(1.0));
    // And a real viewer calls it and sees pictures.
    let viewer = RtcViewer::connect(&url).await;
    viewer.wait_frames(10, Duration::from_secs(30)).await;
    viewer.close().await;
    drop(cam.wait_log("viewer connected", Duration::from_secs(5)));
}

/// A remote camera (`campeer run --signal-url`) on `server_base`, room `room`, open rooms.
fn remote_camera(server_base: &str, room: &str) -> Campeer {
    let ws = format!("{}/ws", server_base.replace("http://", "ws://"));
    Campeer::start(
        &[
            "run",
            "--video",
            "test",
            "--signal-url",
            &ws,
            "--room",
            room,
        ],
        &[
            ("CAMPEER__VIDEO__WIDTH", "320"),
            ("CAMPEER__VIDEO__HEIGHT", "240"),
            ("CAMPEER__SERVER__OPEN_ROOMS", "[\"*\"]"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_camera_joins_once_the_server_has_room() {
    // The server holds one room, and a viewer is in it (another room than the camera's).
    let (_server, base) = serve_with(
        "127.0.0.1:0",
        &[
            ("CAMPEER__SERVER__OPEN_ROOMS", "[\"*\"]"),
            ("CAMPEER__SERVER__MAX_ROOMS", "1"),
        ],
    );
    let ws_url = format!("{}/ws", base.replace("http://", "ws://"));
    let (squatter, created) = ws_join(&ws_url, "other", "viewer", None).await;
    assert_eq!(created["type"], "created", "{created}");
    let mut cam = remote_camera(&base, "garden");
    cam.wait_log("too-many-rooms", Duration::from_secs(30));
    // The room frees up: the camera is back within its retry backoff (at most 10 s).
    drop(squatter);
    let freed = Instant::now();
    loop {
        let (_ws, created) = ws_join(&ws_url, "garden", "viewer", None).await;
        if has_camera(&created) {
            break;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(15),
            "the camera never joined after the room freed up:\n{}",
            cam.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "camera joined {:?} after the server had room",
        freed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_cannot_take_the_cameras_place() {
    let (_server, base) = serve_with(
        "127.0.0.1:0",
        &[
            ("CAMPEER__SERVER__OPEN_ROOMS", "[\"*\"]"),
            ("CAMPEER__SERVER__MAX_PEERS_PER_ROOM", "3"),
        ],
    );
    let ws_url = format!("{}/ws", base.replace("http://", "ws://"));
    // Viewers take every place they can before the camera starts.
    let mut viewers = vec![];
    let refused = loop {
        let (ws, created) = ws_join(&ws_url, "garden", "viewer", None).await;
        if created["type"] == "error" {
            break created;
        }
        viewers.push(ws);
        assert!(viewers.len() <= 3, "more viewers than places");
    };
    assert_eq!(refused["code"], "room-full", "{refused}");
    assert_eq!(viewers.len(), 2, "viewers get all places but one");
    let mut cam = remote_camera(&base, "garden");
    cam.wait_log("joined room as camera", Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_when_the_camera_is_out_of_its_room() {
    // A camera with a token the server refuses keeps retrying, and /healthz says why it is of
    // no use to viewers once that has lasted a stall-timeout.
    let mut cam = Campeer::start(
        &["run", "--video", "test", "--listen", "127.0.0.1:0"],
        &[
            ("CAMPEER__VIDEO__WIDTH", "320"),
            ("CAMPEER__VIDEO__HEIGHT", "240"),
            ("CAMPEER__CAMERA__TOKEN", "v1.not-a-token"),
            ("CAMPEER__CAMERA__STALL_TIMEOUT", "\"2s\""),
        ],
    );
    let line = cam.wait_log("signaling server listening", Duration::from_secs(30));
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("local_addr="))
        .expect("the listening address in the log")
        .to_owned();
    let base = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = http_get(&base, "/healthz").await;
        if code == 503 {
            assert!(body.contains("not been in its room"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still healthy outside its room: {code} {body}\n{}",
            cam.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // It keeps asking to join.
    let refusals = cam
        .logs()
        .matches("the server refused the camera (bad-token)")
        .count();
    assert!(
        refusals >= 2,
        "joins tried {refusals} times\n{}",
        cam.logs()
    );
}
