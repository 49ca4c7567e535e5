//! The daemon under a service manager: READY=1 and WATCHDOG=1 over $NOTIFY_SOCKET, SIGTERM
//! ends it cleanly (exit 0) in under 2 s, and viewers get `exit` when the camera stops.

mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

#[test]
fn notifies_ready_and_watchdog_then_stops_on_sigterm_within_4s() {
    let dir = TempDir::new("notify");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let sock_env = sock_path.display().to_string();
    let mut cam = Campeer::start(
        &[
            "run",
            "--video",
            "test",
            "--audio",
            "test",
            "--listen",
            "127.0.0.1:0",
        ],
        &[("NOTIFY_SOCKET", &sock_env), ("WATCHDOG_USEC", "400000")],
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(got.iter().any(|m: &String| m.contains("READY=1"))
        && got.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        assert!(
            Instant::now() < deadline,
            "notifications so far: {got:?}\n{}",
            cam.logs()
        );
        match sock.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => panic!("no notification: {e}; got {got:?}\n{}", cam.logs()),
        }
    }
    // READY=1 comes only once the camera has joined its room: the page URL is printed by then,
    // and the join was logged. stdout and stderr are read by separate threads, so the log line
    // may reach the test a moment after the page URL: wait briefly rather than peek.
    cam.wait_stdout("/room/camera", Duration::from_secs(5));
    cam.wait_log("joined room as camera", Duration::from_secs(2));

    let t = Instant::now();
    cam.signal(libc::SIGTERM);
    let status = loop {
        if let Some(s) = cam.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM\n{}",
            cam.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t.elapsed();
    assert_eq!(status.code(), Some(0), "{}", cam.logs());
    // Every task finished by itself (none was left behind after the grace time), and well
    // before systemd's stop timeout (TimeoutStopSec=5 in systemd/campeer.service) would kill
    // it: 4 s, not tighter, as a loaded machine stretches the pipeline's teardown.
    let logs = cam.logs();
    assert!(
        !logs.contains("did not finish within"),
        "a task outlived the shutdown grace:\n{logs}"
    );
    assert!(took < Duration::from_secs(4), "SIGTERM took {took:?}");
    eprintln!("SIGTERM to exit: {took:?}");
}

#[test]
fn sighup_reloads_the_bitrate_and_refuses_a_broken_config() {
    let dir = TempDir::new("hup");
    let cfg = dir.path().join("campeer.toml");
    std::fs::write(
        &cfg,
        "[video]\nbitrate-kbps = 1500\nencoder = \"x264enc\"\n",
    )
    .unwrap();
    let cfg_s = cfg.display().to_string();
    let mut cam = Campeer::start(
        &[
            "run",
            "--config",
            &cfg_s,
            "--video",
            "test",
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    cam.wait_stdout("/room/", Duration::from_secs(30));
    std::fs::write(&cfg, "[video]\nbitrate-kbps = 800\nencoder = \"x264enc\"\n").unwrap();
    cam.signal(libc::SIGHUP);
    let line = cam.wait_log("video bitrate changed", Duration::from_secs(10));
    assert!(line.contains("800"), "{line}");
    // A broken file is refused and the daemon keeps running on the old configuration.
    std::fs::write(&cfg, "[video]\nbitrate-kbps = \"fast\"\n").unwrap();
    cam.signal(libc::SIGHUP);
    let line = cam.wait_log("configuration not reloaded", Duration::from_secs(10));
    assert!(line.contains("bitrate-kbps"), "{line}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        cam.child.try_wait().unwrap().is_none(),
        "still running\n{}",
        cam.logs()
    );
}

/// A camera that never reaches its room (its signaling server is down) still stops through
/// the one shutdown path: STOPPING=1, then a clean exit, and never READY=1.
#[test]
fn sigterm_before_ready_still_says_stopping() {
    let dir = TempDir::new("notify-early");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let sock_env = sock_path.display().to_string();
    // A port nobody listens on: the camera keeps retrying its signaling connection.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", closed.local_addr().unwrap());
    drop(closed);
    let mut cam = Campeer::start(
        &["run", "--video", "test", "--signal-url", &url],
        &[
            ("NOTIFY_SOCKET", &sock_env),
            ("CAMPEER__CAMERA__TOKEN", "\"not-needed-here\""),
        ],
    );
    cam.wait_log("signaling", Duration::from_secs(20));
    cam.signal(libc::SIGTERM);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.iter().any(|m: &String| m.contains("STOPPING=1")) {
        assert!(
            Instant::now() < deadline,
            "no STOPPING=1 after SIGTERM; got {got:?}\n{}",
            cam.logs()
        );
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let status = cam.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", cam.logs());
    assert!(!got.iter().any(|m| m.contains("READY=1")), "{got:?}");
}

#[test]
fn under_systemd_no_token_is_written_to_the_journal() {
    // stdout is the journal when systemd sets JOURNAL_STREAM: the room's address goes there
    // without a token, which would stay readable there for as long as the journal keeps it.
    let mut cam = Campeer::start(
        &[
            "run",
            "--video",
            "test",
            "--audio",
            "test",
            "--listen",
            "127.0.0.1:0",
        ],
        &[("JOURNAL_STREAM", "8:12345")],
    );
    let line = cam.wait_stdout("/room/camera", Duration::from_secs(30));
    let how = cam.wait_stdout("campeer token --room camera", Duration::from_secs(5));
    let out = cam.logs();
    assert!(
        !out.contains("token=v1."),
        "a token went to the journal:\n{out}"
    );
    assert!(line.trim().ends_with("/room/camera"), "{line}");
    eprintln!("under systemd: {} / {}", line.trim(), how.trim());
}
