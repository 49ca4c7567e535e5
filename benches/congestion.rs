//! Congestion benchmark (a command, not a test): `cargo bench --bench congestion`.
//!
//! Link profiles on the camera→viewer direction of a veth link into a network namespace (`tbf`,
//! 32 KB bucket, 50 ms queue; `tests/common/shaped.rs`), each run for two senders in the same
//! run, one headless Chromium viewer in the namespace:
//! - campeer: `campeer run --video test --audio test`, 1280x720@30 at 2,500 kbit/s;
//! - libwebrtc: a headless Chromium on the host sending a hard-to-compress 1280x720@30 clip (the
//!   moving test pattern under a fifth of fresh noise, generated with GStreamer) as its fake
//!   camera (`--use-file-for-fake-video-capture`), H.264 preferred, to a plain
//!   `RTCPeerConnection` page (SDP exchanged over DevTools, no trickle).
//!
//! Profiles: a steady 1 Mbit/s link (60 s measured after 5 s); a step 4 → 1 → 4 Mbit/s (the freeze
//! at the step down, and how long until the picture is back to its size before the step); and
//! 2 Mbit/s shared with a bulk TCP download through the same link (30 s). Printed per profile and
//! sender: fps, freezes (gaps over 0.5 s) and their total, what the viewer received against the
//! link, the decoded size, and the TCP download's share. Needs root (network namespaces) and
//! Chromium. `CAMPEER_BENCH_ONLY=campeer` or `=libwebrtc` runs one sender.

#[path = "../tests/common/mod.rs"]
mod common;

use common::playback::{CAMPEER_PAGE, FREEZE_MS, Watched, size, watch_long as watch};
use common::shaped::{HOST_IP, ShapedNs, camera_on_link};
use common::{Browser, Campeer, Page, TempDir, netns};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The receiving page of the libwebrtc sender.
const RX: (&str, &str) = ("window.rx.pc", "window.rx.video");

#[derive(Clone, Copy, PartialEq)]
enum Sender {
    Campeer,
    Libwebrtc,
}

impl Sender {
    fn name(self) -> &'static str {
        match self {
            Sender::Campeer => "campeer",
            Sender::Libwebrtc => "libwebrtc",
        }
    }
}

/// One sender streaming to one viewer page in the namespace.
struct Session {
    _camera: Option<Campeer>,
    _tx: Option<(Browser, Page)>,
    _rx: Browser,
    page: Page,
    target: (&'static str, &'static str),
}

/// The fake camera's clip: 10 s of the moving test pattern under a fifth of fresh noise.
fn make_clip(dir: &TempDir) -> String {
    let path = dir.path().join("clip.y4m").display().to_string();
    let status = std::process::Command::new("gst-launch-1.0")
        .args(["-q"])
        .args(
            format!(
                "compositor name=c sink_1::alpha=0.2 ! video/x-raw,format=I420,width=1280,height=720,framerate=30/1 \
                 ! y4menc ! filesink location={path} \
                 videotestsrc pattern=smpte horizontal-speed=4 num-buffers=300 ! video/x-raw,width=1280,height=720,framerate=30/1 ! c. \
                 videotestsrc pattern=snow num-buffers=300 ! video/x-raw,width=1280,height=720,framerate=30/1 ! c."
            )
            .split_whitespace(),
        )
        .status()
        .expect("gst-launch-1.0");
    assert!(status.success(), "could not make the clip");
    path
}

const SENDER_JS: &str = r#"(async () => {
  const s = await navigator.mediaDevices.getUserMedia({
    video: { width: 1280, height: 720, frameRate: 30 }, audio: true });
  const pc = new RTCPeerConnection();
  s.getTracks().forEach((t) => pc.addTrack(t, s));
  const tr = pc.getTransceivers().find((t) => t.sender.track && t.sender.track.kind === 'video');
  const codecs = RTCRtpSender.getCapabilities('video').codecs;
  tr.setCodecPreferences([...codecs.filter((c) => c.mimeType === 'video/H264'),
    ...codecs.filter((c) => c.mimeType !== 'video/H264')]);
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((r) => {
    if (pc.iceGatheringState === 'complete') return r();
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') r(); };
    setTimeout(r, 3000);
  });
  window.tx = { pc };
  return pc.localDescription.sdp;
})()"#;

const RECEIVER_JS: &str = r#"(async (offer) => {
  const pc = new RTCPeerConnection();
  const video = document.createElement('video');
  video.muted = true; video.autoplay = true; video.playsInline = true;
  document.body.appendChild(video);
  pc.ontrack = (e) => {
    if (e.track.kind === 'video') { video.srcObject = new MediaStream([e.track]); video.play(); }
  };
  await pc.setRemoteDescription({ type: 'offer', sdp: offer });
  await pc.setLocalDescription(await pc.createAnswer());
  await new Promise((r) => {
    if (pc.iceGatheringState === 'complete') return r();
    pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') r(); };
    setTimeout(r, 3000);
  });
  window.rx = { pc, video };
  return pc.localDescription.sdp;
})(OFFER)"#;

async fn start(sender: Sender, link: &ShapedNs, clip: &str) -> Session {
    match sender {
        Sender::Campeer => {
            let (cam, url) = camera_on_link(&[("CAMPEER__LOG__LEVEL", "warn")]);
            let rx = Browser::launch_in(Some(&link.ns));
            let mut page = rx.open(&url).await;
            page.wait_frames(1, Duration::from_secs(30)).await;
            Session {
                _camera: Some(cam),
                _tx: None,
                _rx: rx,
                page,
                target: CAMPEER_PAGE,
            }
        }
        Sender::Libwebrtc => {
            // A page on localhost (a secure context, so getUserMedia works) to send from.
            let (server, base) = common::start_server_on("127.0.0.1:0", "[]");
            let tx = Browser::launch_with(
                None,
                &[
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    &format!("--use-file-for-fake-video-capture={clip}"),
                ],
            );
            let mut tx_page = tx.open(&format!("{base}/")).await;
            let offer = tx_page.eval(SENDER_JS).await;
            let offer = offer.as_str().expect("an offer").to_owned();
            let rx = Browser::launch_in(Some(&link.ns));
            let mut page = rx.open("about:blank").await;
            let answer = page
                .eval(&RECEIVER_JS.replace("OFFER", &serde_json::to_string(&offer).expect("JSON")))
                .await;
            let answer = answer.as_str().expect("an answer").to_owned();
            tx_page
                .eval(&format!(
                    "window.tx.pc.setRemoteDescription({{ type: 'answer', sdp: {} }}).then(() => 'ok')",
                    serde_json::to_string(&answer).expect("JSON")
                ))
                .await;
            let deadline = Instant::now() + Duration::from_secs(30);
            while size(&mut page, RX).await.0 == 0 {
                assert!(Instant::now() < deadline, "libwebrtc: no frame in 30 s");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Session {
                _camera: Some(server),
                _tx: Some((tx, tx_page)),
                _rx: rx,
                page,
                target: RX,
            }
        }
    }
}

fn line(sender: Sender, profile: &str, w: &Watched, link_kbps: f64, extra: &str) {
    println!(
        "{:<9} {profile:<26} {:>5.1} fps  {:>2} freezes {:>6.0} ms  received {:>5.0} kbit/s = {:>3.0} % of the link  {}x{}{extra}",
        sender.name(),
        w.fps,
        w.freezes,
        w.frozen_ms,
        w.kbps,
        100.0 * w.kbps / link_kbps,
        w.width,
        w.height,
    );
}

async fn steady(sender: Sender, clip: &str) {
    let link = ShapedNs::new("cpbs1", Some(1000));
    let mut s = start(sender, &link, clip).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let w = watch(&mut s.page, 60, s.target).await;
    line(sender, "1 Mbit/s, 60 s after 5 s", &w, 1000.0, "");
}

async fn step(sender: Sender, clip: &str) {
    let link = ShapedNs::new("cpbs2", Some(4000));
    let mut s = start(sender, &link, clip).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = size(&mut s.page, s.target).await;
    link.set_rate(1000);
    let down = watch(&mut s.page, 20, s.target).await;
    line(
        sender,
        "4 → 1 Mbit/s: 20 s",
        &down,
        1000.0,
        &format!("  (longest freeze {:.0} ms)", down.longest_gap_ms),
    );
    link.set_rate(4000);
    let t0 = Instant::now();
    let mut back = None;
    while t0.elapsed() < Duration::from_secs(90) {
        if size(&mut s.page, s.target).await == before {
            back = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let up = watch(&mut s.page, 10, s.target).await;
    line(
        sender,
        "1 → 4 Mbit/s: 10 s after",
        &up,
        4000.0,
        &match back {
            Some(t) => format!(
                "  (back to {}x{} {:.1} s after the step up)",
                before.0,
                before.1,
                t.as_secs_f64()
            ),
            None => format!("  (not back to {}x{} within 90 s)", before.0, before.1),
        },
    );
}

/// A bulk TCP download from the host into the namespace, as fast as the link lets it.
struct Download {
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
}

impl Download {
    fn start(ns: &str) -> Download {
        let listener = std::net::TcpListener::bind(format!("{HOST_IP}:0")).expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let s = stop.clone();
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = listener.accept() {
                let chunk = vec![0u8; 64 * 1024];
                while !s.load(Ordering::Relaxed) && c.write_all(&chunk).is_ok() {}
            }
        });
        let mut conn = netns::connect_in(ns, &addr).expect("connect from the namespace");
        let (s, b) = (stop.clone(), bytes.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !s.load(Ordering::Relaxed) {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        b.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        });
        Download { stop, bytes }
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn with_download(sender: Sender, clip: &str) {
    let link = ShapedNs::new("cpbs3", Some(2000));
    let mut s = start(sender, &link, clip).await;
    let download = Download::start(&link.ns);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let b0 = download.bytes.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let w = watch(&mut s.page, 30, s.target).await;
    let tcp_kbps = (download.bytes.load(Ordering::Relaxed) - b0) as f64 * 8.0
        / t0.elapsed().as_secs_f64()
        / 1000.0;
    line(
        sender,
        "2 Mbit/s + TCP download",
        &w,
        2000.0,
        &format!(
            "  (the download got {tcp_kbps:.0} kbit/s = {:.0} % of the link)",
            tcp_kbps / 20.0
        ),
    );
}

fn main() {
    if !netns::available() {
        println!("congestion benchmark: needs root for network namespaces");
        return;
    }
    let only = std::env::var("CAMPEER_BENCH_ONLY").unwrap_or_default();
    let senders: Vec<Sender> = [Sender::Campeer, Sender::Libwebrtc]
        .into_iter()
        .filter(|s| only.is_empty() || only == s.name())
        .collect();
    println!(
        "campeer congestion benchmark: tbf on the camera→viewer direction (32 KB bucket, 50 ms queue); \
         campeer: test pattern 1280x720@30 at 2,500 kbit/s; libwebrtc: Chromium sending a noisy 1280x720@30 clip; \
         freezes are gaps over {FREEZE_MS} ms"
    );
    let dir = TempDir::new("congestion-bench");
    let clip = if senders.contains(&Sender::Libwebrtc) {
        make_clip(&dir)
    } else {
        String::new()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        for &sender in &senders {
            steady(sender, &clip).await;
            step(sender, &clip).await;
            with_download(sender, &clip).await;
        }
    });
}
