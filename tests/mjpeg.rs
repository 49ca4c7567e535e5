//! `GET /mjpeg`: a `multipart/x-mixed-replace` stream an `<img>` tag plays, under the room's
//! token rule, shared by every client, and harmless when a client stops reading.

mod common;
use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Draws the page's `<img>` into a canvas: its size and a digest of its pixels.
const IMG_JS: &str = r#"(() => {
  const img = document.getElementById('cam');
  if (!img || !img.naturalWidth) return JSON.stringify({ w: 0, h: 0, sum: 0 });
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d');
  g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let sum = 0;
  for (let i = 0; i < d.length; i += 97) sum = (sum * 31 + d[i]) % 1000000007;
  return JSON.stringify({ w: c.width, h: c.height, sum });
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_img_tag_plays_the_stream_and_a_stalled_client_costs_nothing() {
    let (cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "480"),
        ],
    );
    let base = base_of(&url);
    let token = ws_of(&url).1.expect("the room URL carries a viewer token");

    let (status, reply) = http_get(&base, "/mjpeg").await;
    assert_eq!(status, 401, "no token: {reply}");

    // A stalled client: it asks, reads the headers and then nothing for 10 s.
    let host = base.trim_start_matches("http://").to_owned();
    let mut stalled = tokio::net::TcpStream::connect(&host)
        .await
        .expect("connect");
    stalled
        .write_all(format!("GET /mjpeg?token={token} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut head = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut head))
        .await
        .expect("headers within 10 s")
        .expect("read headers");
    let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: multipart/x-mixed-replace; boundary=campeerframe"),
        "{head}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = rss_kb(cam.pid());

    // Meanwhile a browser's <img> plays it: the picture is the camera's and it moves.
    let browser = Browser::launch();
    let mut page = browser.open(&format!("{base}/healthz")).await;
    page.eval(&format!(
        "document.body.innerHTML = '<img id=cam src=\"/mjpeg?token={token}\">'; 'ok'"
    ))
    .await;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 5 {
        let v = page.eval(IMG_JS).await;
        let v: serde_json::Value = serde_json::from_str(v.as_str().unwrap_or("{}")).expect("JSON");
        if v["w"] == 640 {
            assert_eq!(v["h"], 480, "{v}");
            seen.push(v["sum"].as_u64().unwrap_or(0));
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the <img> showed {} pictures in 20 s",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    seen.dedup();
    assert!(seen.len() >= 3, "the picture did not move: {seen:?}");

    // 10 s after the stalled client stopped reading, campeer holds no backlog for it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let rss_after = rss_kb(cam.pid());
    let metrics = http_get(&base, "/metrics").await.1;
    let frames = metric(&metrics, "campeer_mjpeg_frames_total");
    eprintln!(
        "mjpeg: {frames} pictures made; RSS {rss_before} → {rss_after} kB while a client stalled"
    );
    assert!(frames >= 50, "{frames} pictures in ~10 s at 10 a second");
    assert_eq!(metric(&metrics, "campeer_mjpeg_clients"), 2, "{metrics}");
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS grew from {rss_before} to {rss_after} kB while a client stalled"
    );

    // Gone clients stop the pictures.
    drop(stalled);
    drop(page);
    drop(browser);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = http_get(&base, "/metrics").await.1;
        if metric(&metrics, "campeer_mjpeg_clients") == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "clients still counted 10 s after they left:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
