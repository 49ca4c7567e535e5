//! `GET /snapshot.jpg`: a JPEG of the current picture at the configured size, behind the room's
//! own access rule, shared by concurrent requests, and waking an idle on-demand camera.

mod common;
use common::media::decode_jpeg;
use common::rtc_viewer::assert_smpte_bars;
use common::*;
use common::{http_get_reply as get, read_reply};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_token_gets_the_current_picture_and_others_a_clear_refusal() {
    let (cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "480"),
            // A picture is reused for a frame interval: 200 ms, so a busy host that spreads the
            // burst's requests out still makes one JPEG for them.
            ("CAMPEER__VIDEO__FRAMERATE", "5"),
        ],
    );
    let base = base_of(&url);
    let (_, token) = ws_of(&url);
    let token = token.expect("the room URL carries a viewer token");

    // The token in the query, as a browser or Home Assistant's generic camera sends it.
    let reply = get(&base, &format!("/snapshot.jpg?token={token}"), "").await;
    assert_eq!(reply.status, 200, "{}", reply.headers);
    assert!(reply.headers.contains("content-type: image/jpeg"));
    assert!(reply.headers.contains("cache-control: no-store"));
    let picture = decode_jpeg(&reply.body);
    assert_eq!((picture.width, picture.height), (640, 480));
    assert_smpte_bars(&picture);

    // As a bearer token, as scripts send it.
    let reply = get(
        &base,
        "/snapshot.jpg",
        &format!("Authorization: Bearer {token}\r\n"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(decode_jpeg(&reply.body).width, 640);

    // No token, a garbled one, and the camera's own (the wrong role): refused with a reason.
    let reply = get(&base, "/snapshot.jpg", "").await;
    assert_eq!(reply.status, 401);
    assert!(reply.headers.contains("www-authenticate: bearer"));
    assert!(
        String::from_utf8_lossy(&reply.body).contains("needs a viewer token"),
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let reply = get(&base, "/snapshot.jpg?token=v1.garbage.sig", "").await;
    assert_eq!(reply.status, 401);
    assert!(String::from_utf8_lossy(&reply.body).contains("signature"));
    let reply = get(
        &base,
        &format!("/snapshot.jpg?token={}", cam.token("camera", "camera")),
        "",
    )
    .await;
    assert_eq!(reply.status, 403);
    assert!(String::from_utf8_lossy(&reply.body).contains("role camera"));

    // Twenty requests at once: every one gets a picture, and one JPEG was made for them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = http_get(&base, "/metrics").await.1;
    let before = counter(&metrics, "campeer_snapshot_conversions_total");
    let host = base.trim_start_matches("http://").to_owned();
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(tokio::net::TcpStream::connect(&host).await.unwrap());
    }
    let req = http_request(&base, &format!("/snapshot.jpg?token={token}"), "");
    let replies = futures_util::future::join_all(conns.into_iter().map(|mut s| {
        let req = req.clone();
        async move {
            s.write_all(req.as_bytes()).await.unwrap();
            read_reply(s).await
        }
    }))
    .await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.headers);
        assert_eq!(&r.body[..2], &[0xff, 0xd8], "a JPEG");
    }
    let metrics = http_get(&base, "/metrics").await.1;
    let after = counter(&metrics, "campeer_snapshot_conversions_total");
    assert_eq!(after - before, 1, "conversions for 20 concurrent requests");
    assert!(counter(&metrics, "campeer_snapshot_requests_total") >= 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_on_demand_camera_wakes_for_a_snapshot_and_sleeps_again() {
    let (mut cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__CAMERA__ALWAYS_ON", "false"),
            ("CAMPEER__CAMERA__IDLE_STOP", "\"1s\""),
            ("CAMPEER__VIDEO__WIDTH", "320"),
            ("CAMPEER__VIDEO__HEIGHT", "240"),
        ],
    );
    let base = base_of(&url);
    let (_, token) = ws_of(&url);
    let token = token.expect("the room URL carries a viewer token");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = http_get(&base, "/metrics").await.1;
    assert_eq!(
        counter(&metrics, "campeer_frames_encoded_total"),
        0,
        "capturing while idle"
    );

    let t = Instant::now();
    let reply = get(&base, &format!("/snapshot.jpg?token={token}"), "").await;
    let took = t.elapsed();
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let picture = decode_jpeg(&reply.body);
    assert_eq!((picture.width, picture.height), (320, 240));
    assert_smpte_bars(&picture);
    eprintln!("snapshot of an idle camera: {took:?}");
    // It includes starting the pipeline and its first frame: a few seconds on a loaded
    // machine, and under the daemon's own 5 s snapshot timeout.
    assert!(took < Duration::from_secs(4), "took {took:?}");

    // Nobody else wants capture: it stops idle-stop later.
    cam.wait_log("capture stopped", Duration::from_secs(10));
}
