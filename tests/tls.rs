//! https/wss: the embedded server serves the page and `/ws` over TLS from PEM files, the
//! camera still joins (over its loopback side door), and Chromium watches over https.

mod common;
use common::*;
use std::time::Duration;

/// A self-signed certificate for 127.0.0.1 in `dir`: its (cert, key) paths as TOML strings.
fn self_signed(dir: &TempDir) -> (String, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("self-signed cert");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    (
        format!("\"{}\"", cert_path.display()),
        format!("\"{}\"", key_path.display()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_watches_over_https_and_wss() {
    let dir = TempDir::new("tls");
    let (c, k) = self_signed(&dir);
    let (mut cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__SERVER__TLS_CERT", &c),
            ("CAMPEER__SERVER__TLS_KEY", &k),
        ],
    );
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let browser = Browser::launch();
    let mut page = browser.open(&url).await;
    let tile = page.wait_frames(30, Duration::from_secs(30)).await;
    assert_eq!(tile.frame_width, 1280, "{tile:?}");
    let scheme = page
        .eval("location.protocol + ' ' + window.campeer.ws.url")
        .await;
    let scheme = scheme.as_str().unwrap_or_default();
    assert!(scheme.starts_with("https: wss://127.0.0.1:"), "{scheme}");
    drop(cam.wait_log("viewer connected", Duration::from_secs(2)));
}

#[test]
fn a_missing_certificate_is_a_clear_start_up_error() {
    let mut cam = Campeer::start(
        &["run", "--video", "test", "--listen", "127.0.0.1:0"],
        &[
            ("CAMPEER__SERVER__TLS_CERT", "\"/nonexistent/cert.pem\""),
            ("CAMPEER__SERVER__TLS_KEY", "\"/nonexistent/key.pem\""),
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = cam.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running\n{}",
            cam.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    // The process has exited; its last lines may still be on their way through the reader thread.
    cam.wait_log("/nonexistent/cert.pem", Duration::from_secs(5));
}

/// A camera behind NAT joins a public `campeer serve` over wss://: trusted through
/// `camera.signal-ca` when the certificate is self-signed, refused (and retried) without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_joins_a_remote_server_over_wss() {
    let dir = TempDir::new("wss");
    let (c, k) = self_signed(&dir);
    let mut server = Campeer::start(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("CAMPEER__SERVER__OPEN_ROOMS", "[\"yard\"]"),
            ("CAMPEER__SERVER__TLS_CERT", &c),
            ("CAMPEER__SERVER__TLS_KEY", &k),
        ],
    );
    let line = server.wait_stdout("signaling server on", Duration::from_secs(20));
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no https address in {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    let wss = format!("{}/ws", base.replacen("https://", "wss://", 1));
    let run = |ca: Option<&str>| {
        let mut env = vec![
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "480"),
        ];
        if let Some(ca) = ca {
            env.push(("CAMPEER__CAMERA__SIGNAL_CA", ca));
        }
        Campeer::start(
            &[
                "run",
                "--video",
                "test",
                "--audio",
                "none",
                "--room",
                "yard",
                "--signal-url",
                &wss,
            ],
            &env,
        )
    };
    // Not trusted: a clear, retried error; the daemon keeps running.
    let mut untrusted = run(None);
    let e = untrusted.wait_log("cannot reach the signaling server", Duration::from_secs(20));
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    assert!(untrusted.child.try_wait().unwrap().is_none());
    drop(untrusted);
    // Trusted through signal-ca: it joins, and a browser watches it over https.
    let mut cam = run(Some(&c));
    cam.wait_log("joined room as camera", Duration::from_secs(20));
    let browser = Browser::launch();
    let mut page = browser.open(&format!("{base}/room/yard")).await;
    let tile = page.wait_frames(30, Duration::from_secs(30)).await;
    assert_eq!(tile.frame_width, 640, "{tile:?}");
}

#[test]
fn plain_http_on_a_public_address_is_warned_about() {
    // On every address (other machines reach it), without TLS: tokens would cross in clear.
    let (mut public, _) = serve_with("0.0.0.0:0", &[]);
    let line = public.wait_log(
        "tokens and signaling cross the network in clear",
        Duration::from_secs(10),
    );
    assert!(line.contains("WARN"), "{line}");
    // On loopback only, nothing to say.
    let (local, _) = serve_with("127.0.0.1:0", &[]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!local.logs().contains("in clear"), "{}", local.logs());
}
