//! Mutated real offers through the camera's whole answer path: headless Chromium's own offer
//! (every line a browser sends: ICE credentials, fingerprint, extensions, candidates), mutated
//! by the fuzz generator, is posted to a running camera's WHEP endpoint, where webrtc-rs parses
//! it, the camera chooses a codec and answers. Each one is answered (and its session deleted)
//! or refused with a 4xx that says why: never a 5xx, a hang or a session left behind, and a
//! real viewer still plays afterwards. `CAMPEER_FUZZ_SEED` replays a run, `CAMPEER_FUZZ_SCALE`
//! lengthens it (see tests/common/fuzz.rs).

mod common;
use common::fuzz::{mutate, rng, scaled};
use common::whep::{request, room_parts};
use common::*;
use rand::Rng;
use std::collections::BTreeMap;
use std::time::Duration;

/// Chromium's offer for a receive-only video and audio player, every candidate gathered.
const OFFER_JS: &str = r#"(async () => {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(done => {
    if (pc.iceGatheringState === 'complete') return done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && done();
    setTimeout(done, 3000);
  });
  const sdp = pc.localDescription.sdp;
  pc.close();
  return sdp;
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_browser_offers_are_answered_or_refused_never_stuck() {
    let (cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__VIDEO__WIDTH", "320"),
            ("CAMPEER__VIDEO__HEIGHT", "240"),
            ("CAMPEER__CAMERA__MAX_VIEWERS", "4"),
        ],
    );
    let (base, room, token) = room_parts(&url);
    let browser = Browser::launch();
    let mut page = browser.open(&format!("{base}/healthz")).await;
    let offer = page.eval(OFFER_JS).await;
    let offer = offer.as_str().expect("an SDP offer").to_owned();
    assert!(
        offer.contains("a=fingerprint:") && offer.contains("H264"),
        "{offer}"
    );

    let mut rng = rng("offers");
    let n = scaled(1000);
    let mut outcomes: BTreeMap<u16, usize> = BTreeMap::new();
    let whep = format!("/whep/{room}");
    for i in 0..n {
        // One in ten as the browser sent it: the camera must still answer those.
        let body = if rng.random_ratio(1, 10) {
            offer.clone()
        } else {
            mutate(&mut rng, &offer)
        };
        let head = format!(
            "POST {whep} HTTP/1.0\r\nContent-Type: application/sdp\r\nAuthorization: Bearer {token}"
        );
        let Ok((status, reply)) =
            tokio::time::timeout(Duration::from_secs(15), request(&base, &head, &body)).await
        else {
            panic!("offer {i}: no answer within 15 s:\n{body}\n{}", cam.logs());
        };
        *outcomes.entry(status).or_default() += 1;
        match status {
            201 => {
                let location = reply
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("location: ")
                            .or_else(|| l.strip_prefix("Location: "))
                    })
                    .map(str::trim)
                    .unwrap_or_else(|| panic!("offer {i}: 201 without a Location:\n{reply}"))
                    .to_owned();
                let (s, t) = request(
                    &base,
                    &format!("DELETE {location} HTTP/1.0\r\nAuthorization: Bearer {token}"),
                    "",
                )
                .await;
                assert!(
                    s == 200 || s == 204,
                    "offer {i}: DELETE {location} got {s}:\n{t}"
                );
            }
            400 | 406 => {
                let text = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
                assert!(
                    !text.trim().is_empty(),
                    "offer {i}: a {status} must say why:\n{reply}"
                );
            }
            _ => panic!(
                "offer {i}: status {status} (want 201, 400 or 406):\n{reply}\n--- offer:\n{body}\n{}",
                cam.logs()
            ),
        }
    }
    eprintln!("offers: {n} posted, statuses {outcomes:?}");
    assert!(
        outcomes.get(&201).copied().unwrap_or(0) >= n / 20,
        "the camera should still answer offers as browsers send them: {outcomes:?}"
    );

    // Nothing left behind: every session ended, and the daemon still serves a real viewer.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, m) = http_get(&base, "/metrics").await;
        if m.contains("campeer_viewers 0\n") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions left behind after the mutated offers:\n{}",
            m.lines()
                .filter(|l| l.starts_with("campeer_viewer"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut viewer = browser.open(&url).await;
    viewer.wait_frames(10, Duration::from_secs(30)).await;
    assert_eq!(http_get(&base, "/healthz").await.0, 200);
}
