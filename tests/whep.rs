//! WHEP: a player that is not campeer's page posts an SDP offer to `/whep/<room>` and plays the
//! camera's one encode. Here the player is headless Chromium's own RTCPeerConnection that never
//! trickles (its offer carries all its candidates; the answer must carry the camera's), and
//! every refusal a player can meet comes with the status WHEP clients expect.

mod common;
use common::whep::{DECODED_JS, play_js, request, room_parts};
use common::*;
use serde_json::Value;
use std::time::Duration;

fn viewers_in_metrics(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| l.starts_with("campeer_viewer_frames_sent_total{"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_trickle_player_decodes_and_delete_ends_its_session() {
    let (mut cam, url) = start_camera(&[], &[]);
    let (base, room, token) = room_parts(&url);

    let browser = Browser::launch();
    // A page of the server's own origin that does not join the room itself.
    let mut page = browser.open(&format!("{base}/healthz")).await;
    let reply = page.eval(&play_js(&format!("/whep/{room}"), &token)).await;
    let reply: Value = serde_json::from_str(reply.as_str().unwrap_or("{}")).expect("JSON");
    assert_eq!(reply["status"], 201, "{reply}");
    assert_eq!(reply["contentType"], "application/sdp", "{reply}");
    let location = reply["location"].as_str().unwrap_or_default().to_owned();
    assert!(
        location.starts_with(&format!("/whep/{room}/whep-")),
        "{reply}"
    );
    assert!(reply["etag"].as_str().is_some(), "{reply}");
    assert!(
        reply["candidates"].as_u64().unwrap_or(0) >= 1,
        "the answer carries the camera's candidates: {reply}"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let s = page.eval(DECODED_JS).await;
        let s: Value = serde_json::from_str(s.as_str().unwrap_or("{}")).expect("JSON");
        if s["frames"].as_u64().unwrap_or(0) >= 60 && s["audio"].as_u64().unwrap_or(0) > 20 {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the WHEP player decoded too little in 30 s: {s}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("WHEP player: {stats}");
    cam.wait_log("viewer connected", Duration::from_secs(5));
    // An ordinary viewer of the encode: /metrics lists it.
    let metrics = http_get(&base, "/metrics").await.1;
    assert_eq!(viewers_in_metrics(&metrics), 1, "{metrics}");
    let session = location.rsplit('/').next().unwrap_or_default();
    assert!(metrics.contains(session), "{metrics}");

    // A late candidate trickled by PATCH is taken (If-Match: the session's ETag).
    let etag = reply["etag"].as_str().unwrap_or_default();
    let (status, text) = request(
        &base,
        &format!("PATCH {location} HTTP/1.0\r\nContent-Type: application/trickle-ice-sdpfrag\r\nIf-Match: {etag}"),
        "a=ice-ufrag:x\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=candidate:1 1 udp 2122260223 127.0.0.1 9 typ host\r\n",
    )
    .await;
    assert_eq!(status, 204, "{text}");

    // DELETE ends it at once; a second DELETE finds nothing.
    let (status, text) = request(&base, &format!("DELETE {location} HTTP/1.0"), "").await;
    assert_eq!(status, 200, "{text}");
    cam.wait_log("its client ended the session", Duration::from_secs(5));
    let metrics = http_get(&base, "/metrics").await.1;
    assert_eq!(viewers_in_metrics(&metrics), 0, "{metrics}");
    let (status, _) = request(&base, &format!("DELETE {location} HTTP/1.0"), "").await;
    assert_eq!(status, 404);
}

/// medooze's WHEPClient (npm `whip-whep` 1.2.0), fetched once with `npm pack` and checked
/// against its digest: the source of its `whep.js`.
fn medooze_whep_js() -> String {
    let package = npm_package(
        "whip-whep",
        "1.2.0",
        "f032b2b2015da76268d3f4a0450af2cf24ae984c6bf7cc5bfd494763cefaf786",
    );
    std::fs::read_to_string(package.join("whep.js")).expect("whep.js in the package")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn medoozes_whep_client_trickles_by_patch_and_decodes() {
    let client = medooze_whep_js();
    let (_cam, url) = start_camera(&[], &[]);
    let (base, room, token) = room_parts(&url);

    let browser = Browser::launch();
    let mut page = browser.open(&format!("{base}/healthz")).await;
    // The module's class, as a page's <script type=module> would import it.
    let load = format!(
        "{}\n; window.WHEPClient = WHEPClient; 'loaded'",
        client.replace("export class WHEPClient", "class WHEPClient")
    );
    assert_eq!(page.eval(&load).await, "loaded");
    let started = page
        .eval(&format!(
            r#"(async () => {{
  window.patches = [];
  const fetch0 = window.fetch;
  window.fetch = async (url, opts) => {{
    const res = await fetch0(url, opts);
    if (opts && opts.method === 'PATCH') window.patches.push(res.status);
    return res;
  }};
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', {{ direction: 'recvonly' }});
  pc.addTransceiver('audio', {{ direction: 'recvonly' }});
  window.whepPc = pc;
  window.whepClient = new WHEPClient();
  await window.whepClient.view(pc, location.origin + '/whep/{room}', {token:?});
  return 'viewing';
}})()"#
        ))
        .await;
    assert_eq!(started, "viewing");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = page.eval(DECODED_JS).await;
        let s: Value = serde_json::from_str(s.as_str().unwrap_or("{}")).expect("JSON");
        if s["frames"].as_u64().unwrap_or(0) >= 60 {
            eprintln!("medooze WHEPClient: {s}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "medooze's WHEPClient decoded too little in 30 s: {s}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let patches = page.eval("JSON.stringify(window.patches)").await;
    let patches: Vec<u16> = serde_json::from_str(patches.as_str().unwrap_or("[]")).expect("JSON");
    assert!(!patches.is_empty(), "the client trickled nothing");
    assert!(
        patches.iter().all(|s| *s == 204),
        "PATCH statuses: {patches:?}"
    );

    // stop() sends DELETE: the camera lets the viewer go.
    page.eval("window.whepClient.stop().then(() => 'stopped')")
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while viewers_in_metrics(&http_get(&base, "/metrics").await.1) != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session outlived the client's DELETE"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A minimal offer with no codec campeer sends (VP9 only).
const VP9_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 98\r\nc=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=fingerprint:sha-256 00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00\r\n\
a=setup:actpass\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\na=rtpmap:98 VP9/90000\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_the_status_players_expect() {
    let (_cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__VIDEO__FALLBACK", "\"none\""),
            ("CAMPEER__CAMERA__MAX_VIEWERS", "1"),
            ("CAMPEER__VIDEO__WIDTH", "320"),
            ("CAMPEER__VIDEO__HEIGHT", "240"),
        ],
    );
    let (base, room, token) = room_parts(&url);
    let post = |path: String, extra: String, ctype: &'static str, body: &'static str| {
        let base = base.clone();
        async move {
            request(
                &base,
                &format!("POST {path} HTTP/1.0\r\nContent-Type: {ctype}{extra}"),
                body,
            )
            .await
        }
    };
    let auth = format!("\r\nAuthorization: Bearer {token}");
    let whep = format!("/whep/{room}");

    let (s, t) = post(whep.clone(), String::new(), "application/sdp", VP9_OFFER).await;
    assert_eq!(s, 401, "no token: {t}");
    assert!(
        t.to_ascii_lowercase().contains("www-authenticate: bearer"),
        "{t}"
    );
    let (s, t) = post(
        whep.clone(),
        "\r\nAuthorization: Bearer v1.garbage".into(),
        "application/sdp",
        VP9_OFFER,
    )
    .await;
    assert_eq!(s, 401, "a garbled token: {t}");
    let (s, t) = post(
        "/whep/elsewhere".into(),
        auth.clone(),
        "application/sdp",
        VP9_OFFER,
    )
    .await;
    assert_eq!(s, 404, "another room: {t}");
    let (s, t) = post(whep.clone(), auth.clone(), "text/plain", VP9_OFFER).await;
    assert_eq!(s, 415, "not an SDP: {t}");
    let (s, t) = post(whep.clone(), auth.clone(), "application/sdp", "hello").await;
    assert_eq!(s, 400, "not an offer: {t}");
    let (s, t) = post(whep.clone(), auth.clone(), "application/sdp", VP9_OFFER).await;
    assert_eq!(s, 406, "no codec campeer sends: {t}");
    assert!(t.contains("H.264"), "the body says why: {t}");

    // A page of another site is kept out; the server's own passes the preflight.
    let (s, t) = post(
        whep.clone(),
        format!("{auth}\r\nOrigin: http://evil.example"),
        "application/sdp",
        VP9_OFFER,
    )
    .await;
    assert_eq!(s, 403, "another site's page: {t}");
    let (s, t) = request(
        &base,
        &format!(
            "OPTIONS {whep} HTTP/1.0\r\nOrigin: {base}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type"
        ),
        "",
    )
    .await;
    assert_eq!(s, 204, "{t}");
    let lower = t.to_ascii_lowercase();
    assert!(
        lower.contains("access-control-allow-headers: authorization, content-type, if-match"),
        "{t}"
    );
    assert!(
        lower.contains(&format!("access-control-allow-origin: {base}")),
        "{t}"
    );

    // At the viewer limit (1 here): 503, with when to try again.
    let browser = Browser::launch();
    let mut page = browser.open(&format!("{base}/healthz")).await;
    let first = page.eval(&play_js(&whep, &token)).await;
    assert!(
        first
            .as_str()
            .unwrap_or_default()
            .contains("\"status\":201"),
        "{first}"
    );
    let second = page.eval(&play_js(&whep, &token)).await;
    let second: Value = serde_json::from_str(second.as_str().unwrap_or("{}")).expect("JSON");
    assert_eq!(second["status"], 503, "{second}");
    assert!(
        second["body"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 1 viewers"),
        "{second}"
    );

    // Trickle on an unknown session, and with a stale ETag.
    let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\nm=video 9 UDP/TLS/RTP/SAVPF 98\r\na=mid:0\r\na=candidate:1 1 udp 2122260223 127.0.0.1 61764 typ host\r\n";
    let (s, t) = request(
        &base,
        &format!("PATCH {whep}/whep-0123456789abcdef HTTP/1.0\r\nContent-Type: application/trickle-ice-sdpfrag"),
        frag,
    )
    .await;
    assert_eq!(s, 404, "{t}");
    let (s, t) = request(
        &base,
        &format!("PATCH {whep}/whep-0123456789abcdef HTTP/1.0\r\nContent-Type: application/trickle-ice-sdpfrag\r\nIf-Match: \"stale\""),
        frag,
    )
    .await;
    assert_eq!(s, 412, "{t}");
}
