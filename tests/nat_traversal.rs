//! Crossing NATs with a real coturn: the camera behind NAT A, a real headless Chromium behind a
//! symmetric NAT B, `campeer serve` and coturn (TURN REST credentials) on a "public" network,
//! all in this test's own network namespaces (needs root). No direct path exists between the
//! camera and the viewer, so every picture the page shows crossed the TURN relay.

mod common;

use common::netns::{self, Net, Proc};
use common::{Browser, Campeer, Page, TempDir};
use std::time::{Duration, Instant};

const SECRET: &str = "nat-test-secret";
const SIGNAL: &str = "203.0.113.1:8089";

struct World {
    net: Net,
    turn: Proc,
    server: Campeer,
    camera: Campeer,
    _dir: TempDir,
}

#[derive(Default)]
struct Opts {
    /// Relay-only for the camera and (through `created`) the page.
    relay: bool,
    /// The secret the signaling server mints TURN credentials with (coturn has [`SECRET`]).
    server_secret: Option<&'static str>,
    /// Drop the camera's UDP at NAT A.
    block_udp: bool,
}

fn world(opts: Opts) -> World {
    assert!(
        netns::available(),
        "these tests build network namespaces: run them as root (the README's test command does)"
    );
    let dir = TempDir::new("nat");
    let net = Net::two_nats();
    if opts.block_udp {
        net.block_camera_udp();
    }
    let turn = netns::coturn(&net, SECRET, dir.path());
    let policy = if opts.relay { "relay" } else { "auto" };
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
open-rooms = ["nat"]
[ice]
transport-policy = "{policy}"
[ice.turn-rest]
urls = ["turn:203.0.113.1:3478?transport=udp", "turn:203.0.113.1:3478?transport=tcp"]
secret = "{}"
ttl = "1h"
for-open-rooms = true
"#,
            opts.server_secret.unwrap_or(SECRET)
        ),
    )
    .expect("write server config");
    let config = config.display().to_string();
    let mut server = Campeer::start_in(
        Some(&net.ns("pub")),
        &["serve", "--config", &config, "--listen", SIGNAL],
        &[],
    );
    server.wait_stdout("signaling server on", Duration::from_secs(20));
    let policy_env = format!("\"{policy}\"");
    let mut camera = Campeer::start_in(
        Some(&net.ns("cam")),
        &[
            "run",
            "--video",
            "test",
            "--audio",
            "test",
            "--room",
            "nat",
            "--signal-url",
            &format!("ws://{SIGNAL}/ws"),
        ],
        &[
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "480"),
            ("CAMPEER__VIDEO__FRAMERATE", "30"),
            ("CAMPEER__CAMERA__RTC_BIND", "[\"198.51.100.2:0\"]"),
            ("CAMPEER__ICE__TRANSPORT_POLICY", &policy_env),
        ],
    );
    camera.wait_log("joined room as camera", Duration::from_secs(30));
    World {
        net,
        turn,
        server,
        camera,
        _dir: dir,
    }
}

/// The viewer page in Chromium behind NAT B.
async fn viewer(w: &World) -> (Browser, Page) {
    let browser = Browser::launch_in(Some(&w.net.ns("view")));
    let page = browser.open(&format!("http://{SIGNAL}/room/nat")).await;
    (browser, page)
}

/// The selected candidate pair of the first tile, from the page's getStats().
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pair {
    local: String,
    remote: String,
}

async fn selected_pair(page: &mut Page) -> Option<Pair> {
    let v = page
        .eval(
            r#"(async () => {
  if (!window.campeer) return null;
  const cam = [...window.campeer.cams.values()].find((c) => c.pc.connectionState === 'connected');
  if (!cam) return null;
  const r = await cam.pc.getStats();
  let t = null; const all = new Map();
  r.forEach((s) => { all.set(s.id, s); if (s.type === 'transport') t = s; });
  const p = t && all.get(t.selectedCandidatePairId);
  if (!p) return null;
  const l = all.get(p.localCandidateId), rm = all.get(p.remoteCandidateId);
  return JSON.stringify({ local: l.candidateType, remote: rm.candidateType });
})()"#,
        )
        .await;
    v.as_str().and_then(|s| serde_json::from_str(s).ok())
}

fn logs(w: &World) -> String {
    format!(
        "--- camera ---\n{}\n--- server ---\n{}\n--- coturn (tail) ---\n{}",
        w.camera.logs(),
        w.server.logs(),
        {
            let l = w.turn.lines.lock().unwrap();
            l[l.len().saturating_sub(40)..].join("\n")
        }
    )
}

#[tokio::test]
async fn relay_only_on_both_sides_decodes_through_turn() {
    let w = world(Opts {
        relay: true,
        ..Default::default()
    });
    let (_b, mut page) = viewer(&w).await;
    let t = page.wait_frames(60, Duration::from_secs(40)).await;
    assert_eq!((t.frame_width, t.frame_height), (640, 480), "{t:?}");
    let pair = selected_pair(&mut page).await.expect("a selected pair");
    assert_eq!(
        (pair.local.as_str(), pair.remote.as_str()),
        ("relay", "relay"),
        "{pair:?}\n{}",
        logs(&w)
    );
    // The camera checked the TURN server with its own allocation and said so.
    assert!(
        w.camera
            .err
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("TURN server reachable")),
        "{}",
        logs(&w)
    );
}

#[tokio::test]
async fn two_nats_one_symmetric_connect_through_turn() {
    let w = world(Opts::default());
    let (_b, mut page) = viewer(&w).await;
    // Default policy ("auto"): the camera, joined to a remote server with TURN, uses its relay;
    // the page gathers everything, and its checks cross its symmetric NAT to that relay.
    page.wait_frames(60, Duration::from_secs(60)).await;
    let pair = selected_pair(&mut page).await.expect("a selected pair");
    // Host and server-reflexive paths cannot cross a symmetric NAT: one side is a relay.
    assert!(
        pair.local == "relay" || pair.remote == "relay",
        "{pair:?}\n{}",
        logs(&w)
    );
}

#[tokio::test]
async fn camera_without_udp_uses_turn_over_tcp() {
    let mut w = world(Opts {
        block_udp: true,
        ..Default::default()
    });
    // The camera finds out from its TURN checks (UDP silent, TCP answers) and says so.
    w.camera
        .wait_log("this network blocks UDP", Duration::from_secs(20));
    let (_b, mut page) = viewer(&w).await;
    page.wait_frames(60, Duration::from_secs(40)).await;
    let pair = selected_pair(&mut page).await.expect("a selected pair");
    // The camera's only candidate is its relay, reached over TCP.
    assert_eq!(pair.remote, "relay", "{pair:?}\n{}", logs(&w));
    let err = w.camera.err.lock().unwrap().join("\n");
    assert!(err.contains("TURN over TCP: bridging"), "{}", logs(&w));
    // And the camera told the operator, in plain words, that UDP does not get through.
    assert!(err.contains("no answer over UDP"), "{}", logs(&w));
}

#[tokio::test]
async fn video_resumes_after_a_30_s_link_cut_without_reload() {
    // Relay-only: with policy "all" through a symmetric NAT, webrtc-rs 0.21.1 sometimes
    // completes ICE and then sends DTLS on another relay pair than the nominated one (the
    // page places such a call again after 10 s); this test measures the cut, not that.
    let w = world(Opts {
        relay: true,
        ..Default::default()
    });
    let (_b, mut page) = viewer(&w).await;
    page.wait_frames(60, Duration::from_secs(40)).await;
    page.eval("window.__sameDocument = 'yes'").await;

    w.net.cut_camera_link();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let frozen = total_frames(&mut page).await;
    w.net.restore_camera_link();
    let restored = Instant::now();

    let mut last = frozen;
    let resumed = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = total_frames(&mut page).await;
        // New frames on any tile: the old call recovered, or the new one plays.
        if now
            .iter()
            .any(|(id, n)| *n > last.get(id).copied().unwrap_or(0))
        {
            break restored.elapsed();
        }
        last = now;
        assert!(
            restored.elapsed() < Duration::from_secs(30),
            "no video 30 s after the link came back\n{}",
            logs(&w)
        );
    };
    println!(
        "video resumed {:.2} s after the link came back",
        resumed.as_secs_f64()
    );
    assert!(
        resumed <= Duration::from_secs(3),
        "video resumed only after {resumed:?}\n{}",
        logs(&w)
    );
    // It keeps playing, in the same document (no reload).
    page.wait_frames(30, Duration::from_secs(10)).await;
    assert_eq!(page.eval("window.__sameDocument").await, "yes");
}

async fn total_frames(page: &mut Page) -> std::collections::HashMap<String, u64> {
    page.tiles()
        .await
        .into_iter()
        .map(|t| (t.id, t.frames_decoded))
        .collect()
}

#[tokio::test]
async fn wrong_turn_credentials_are_logged_and_the_camera_keeps_running() {
    let mut w = world(Opts {
        server_secret: Some("not-the-coturn-secret"),
        ..Default::default()
    });
    let line = w
        .camera
        .wait_log("rejected the credentials", Duration::from_secs(20));
    assert!(line.contains("turn:203.0.113.1:3478"), "{line}");
    assert!(line.contains("401"), "{line}");
    // coturn saw the same thing from its side.
    w.turn.wait_for("401", Duration::from_secs(5));
    // A viewer still reaches the camera through signaling (the call itself has no path).
    let (_b, mut page) = viewer(&w).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while page.tiles().await.is_empty() {
        assert!(Instant::now() < deadline, "no tile\n{}", logs(&w));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        w.camera.child.try_wait().expect("wait").is_none(),
        "campeer exited\n{}",
        logs(&w)
    );
    assert!(!w.camera.logs().contains("panicked"), "{}", logs(&w));
}
