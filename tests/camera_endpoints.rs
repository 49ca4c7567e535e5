//! A camera joined to a remote signaling server serves its own endpoints on a listener of its
//! own: `/healthz` (which says when the camera is out of its room), `/metrics`, `/snapshot.jpg`
//! and `/whep/<room>`, behind the board's own viewer tokens, and no rooms. A player on the LAN
//! keeps watching through WHEP while the remote server is down.

mod common;
use common::media::{STILL_BARS, decode_jpeg};
use common::rtc_viewer::{RtcViewer, assert_smpte_bars};
use common::whep::request;
use common::*;
use std::time::Duration;

/// `campeer run` on still SMPTE bars joined to the server at `base`, room `garden`; returns it
/// with the base address of its own endpoints.
fn remote_camera(base: &str) -> (Campeer, String) {
    let ws = format!("{}/ws", base.replace("http://", "ws://"));
    let mut cam = Campeer::start(
        &[
            "run",
            "--video",
            STILL_BARS,
            "--audio",
            "test",
            "--signal-url",
            &ws,
            "--room",
            "garden",
        ],
        &[
            ("CAMPEER__VIDEO__WIDTH", "320"),
            ("CAMPEER__VIDEO__HEIGHT", "240"),
            ("CAMPEER__VIDEO__FRAMERATE", "15"),
            ("CAMPEER__CAMERA__STALL_TIMEOUT", "\"3s\""),
        ],
    );
    let line = cam.wait_stdout("this camera's own endpoints", Duration::from_secs(60));
    let healthz = line
        .split_whitespace()
        .find(|w| w.starts_with("http://") && w.ends_with("/healthz"))
        .unwrap_or_else(|| panic!("no /healthz address in {line:?}"))
        .to_owned();
    let own = healthz.trim_end_matches("/healthz").to_owned();
    (cam, own)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_camera_answers_on_its_own_listener_even_with_its_server_down() {
    let (server, base) = start_server("[\"*\"]");
    let (cam, own) = remote_camera(&base);
    assert_ne!(own, base, "the camera listens apart from its server");

    // Healthy and in its room, as its own metrics say; it serves no rooms itself.
    let (status, text) = http_get(&own, "/healthz").await;
    assert_eq!(status, 200, "{text}");
    let (status, metrics) = http_get(&own, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(
        metric_value(&metrics, "campeer_signaling_joined"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, "campeer_frames_encoded_total").unwrap_or(0.0) > 0.0,
        "{metrics}"
    );
    assert!(
        !metrics.contains("campeer_signal_rooms"),
        "a camera's own listener has no rooms to count: {metrics}"
    );
    for path in ["/room/garden", "/ws", "/"] {
        let (status, text) = http_get(&own, path).await;
        assert_eq!(status, 404, "{path} on the camera's own listener: {text}");
    }

    // A snapshot needs a viewer token from the board's own secret.
    let (status, text) = http_get(&own, "/snapshot.jpg").await;
    assert_eq!(status, 401, "{text}");
    let token = cam.token("garden", "viewer");
    let reply = http_get_reply(&own, &format!("/snapshot.jpg?token={token}"), "").await;
    assert_eq!(reply.status, 200, "{}", reply.headers);
    let picture = decode_jpeg(&reply.body);
    assert_eq!((picture.width, picture.height), (320, 240));
    assert_smpte_bars(&picture);

    // The server goes away: /healthz says so once the camera has been out of its room for
    // longer than the stall timeout (3 s), and keeps answering.
    drop(server);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (status, text) = http_get(&own, "/healthz").await;
        if status == 503 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz still {status} 20 s after the server went away: {text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(text.contains("not been in its room"), "{text}");

    // And a WHEP player on the LAN still gets the picture.
    let (viewer, offer) = RtcViewer::offering(&["42e01f"]).await;
    let (status, text) = request(
        &own,
        &format!(
            "POST /whep/garden HTTP/1.0\r\nContent-Type: application/sdp\r\nAuthorization: Bearer {token}"
        ),
        &offer,
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let answer = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default();
    viewer.accept(answer).await;
    let picture = viewer.wait_frames(20, Duration::from_secs(20)).await;
    assert_eq!((picture.width, picture.height), (320, 240));
    assert_smpte_bars(&picture);
    viewer.close().await;
}
