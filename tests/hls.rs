//! HLS for players without WebRTC: hls.js in headless Chromium and GStreamer's hlsdemux both
//! play the camera's stream, with sound; a player without the room's token gets 401; the
//! segmenter stops after its last player.

mod common;

use common::pull::pull;
use common::whep::room_parts;
use common::*;
use std::time::{Duration, Instant};

/// A dashboard's own web server: any request gets an empty HTML page (no CSP), so its
/// origin is `http://127.0.0.1:<port>`, not the camera's.
async fn dashboard() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = "<!doctype html><title>dashboard</title>";
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    origin
}

fn camera(dashboard: &str) -> (Campeer, String) {
    let origins = format!("[\"{dashboard}\"]");
    start_camera(
        &[],
        &[
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "360"),
            ("CAMPEER__VIDEO__BITRATE_KBPS", "800"),
            ("CAMPEER__VIDEO__KEYFRAME_INTERVAL", "\"1s\""),
            ("CAMPEER__VIDEO__LOWER_RUNGS", "\"none\""),
            ("CAMPEER__HLS__IDLE_STOP", "\"3s\""),
            // hls.js runs in a page of another origin, as on a dashboard.
            ("CAMPEER__SERVER__ALLOWED_ORIGINS", &origins),
        ],
    )
}

/// hls.js 1.5.20 from npm (checked against its digest).
fn hls_js() -> String {
    let package = npm_package(
        "hls.js",
        "1.5.20",
        "3791f532701590ec10ecb4a2abf6ea63c65ae9ce91de4cc6f6553ba4629605ce",
    );
    std::fs::read_to_string(package.join("dist/hls.min.js")).expect("hls.min.js in the package")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_js_and_gstreamer_play_the_camera_and_it_stops_after_them() {
    let hls = hls_js();
    let dashboard = dashboard().await;
    let (mut cam, url) = camera(&dashboard);
    let (base, room, token) = room_parts(&url);
    let playlist = format!("/hls/{room}/index.m3u8");

    let (status, _) = http_get(&base, &playlist).await;
    assert_eq!(status, 401, "a closed room's HLS needs its token");
    let (status, _) = http_get(&base, &format!("/hls/{room}/segment00000.ts")).await;
    assert_eq!(status, 401);
    let (status, _) = http_get(&base, &format!("/hls/other/index.m3u8?token={token}")).await;
    assert_eq!(status, 404, "another room has no stream here");

    // Pages of other origins may not read it.
    let (_, reply) = http_get_with(
        &base,
        &format!("{playlist}?token={token}"),
        &["Origin: http://elsewhere.example"],
    )
    .await;
    assert!(
        !reply
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{reply}"
    );

    // Chromium and hls.js are made ready first: the segmenter stops 3 s after its last
    // request, and the one start counted below holds only if hls.js asks within that time
    // after GStreamer's last fetch (a cold Chromium start under load could take longer).
    let browser = Browser::launch();
    let mut page = browser.open(&dashboard).await;
    let loaded = page
        .eval(&format!(
            "{hls}\n; typeof Hls === 'function' && Hls.isSupported()"
        ))
        .await;
    assert_eq!(loaded, true, "hls.js loads and has MSE");

    // GStreamer's HLS client, as VLC or a set-top box would fetch it.
    let full = format!("{base}{playlist}?token={token}");
    let started = Instant::now();
    let got = tokio::task::spawn_blocking(move || {
        pull(
            &format!("souphttpsrc location=\"{full}\" ! hlsdemux ! tsdemux"),
            ("d.", "d."),
            (60, 30),
            Duration::from_secs(40),
        )
    })
    .await
    .unwrap();
    let (frames, audio, size) = (got.frames, got.audio, got.size);
    eprintln!(
        "hlsdemux: {frames} frames, {audio} audio buffers, {size:?}, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(frames >= 60, "hlsdemux decoded {frames} frames");
    assert!(audio >= 30, "hlsdemux decoded {audio} AAC buffers");
    assert_eq!(size, Some((640, 360)));

    // hls.js in Chromium, as a web dashboard would play it.
    page.eval(&format!(
        r#"(() => {{
  const v = document.createElement('video');
  v.muted = true;
  document.body.appendChild(v);
  const hls = new Hls({{ lowLatencyMode: false }});
  window.hlsErrors = [];
  hls.on(Hls.Events.ERROR, (_, d) => window.hlsErrors.push(d.details + (d.fatal ? ' (fatal)' : '')));
  window.hlsEvents = {{}};
  for (const e of [Hls.Events.MANIFEST_PARSED, Hls.Events.FRAG_LOADING, Hls.Events.FRAG_LOADED, Hls.Events.FRAG_BUFFERED, Hls.Events.LEVEL_LOADED, Hls.Events.MEDIA_ATTACHED, Hls.Events.BUFFER_CREATED]) {{
    hls.on(e, () => {{ window.hlsEvents[e] = (window.hlsEvents[e] || 0) + 1; }});
  }}
  hls.loadSource({src:?});
  hls.attachMedia(v);
  v.play().catch(() => {{}});
  window.player = {{ v, hls }};
  return true;
}})()"#,
        src = format!("{base}{playlist}?token={token}")
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let state = loop {
        let s = page
            .eval(
                "JSON.stringify({ t: player.v.currentTime, w: player.v.videoWidth, \
                 h: player.v.videoHeight, latency: player.hls.latency, \
                 ready: player.v.readyState, events: window.hlsEvents, errors: window.hlsErrors, frags: player.hls.levels.map(l => l.details && l.details.fragments.length), live: player.hls.levels.map(l => l.details && l.details.live) })",
            )
            .await;
        let s: serde_json::Value = serde_json::from_str(s.as_str().unwrap_or("{}")).unwrap();
        if s["t"].as_f64().unwrap_or(0.0) > 4.0 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "hls.js does not play: {s}\n{}",
            cam.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("hls.js: {state}");
    assert_eq!(state["w"], 640);
    assert_eq!(state["h"], 360);
    let latency = state["latency"].as_f64().unwrap_or(f64::MAX);
    assert!(
        latency < 10.0,
        "hls.js plays {latency:.1} s behind the live edge"
    );

    // The last player leaves: the segmenter stops (idle-stop 3 s) and its camera share goes.
    drop(page);
    drop(browser);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, m) = http_get(&base, "/metrics").await;
        if metric_value(&m, "campeer_hls_running") == Some(0.0) {
            assert_eq!(
                metric_value(&m, "campeer_hls_starts_total"),
                Some(1.0),
                "{m}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HLS still runs 15 s after its last player: {m}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The metric goes to 0 just before the line is logged.
    cam.wait_log(
        "HLS stopped: no player asked for the playlist",
        Duration::from_secs(5),
    );
}
