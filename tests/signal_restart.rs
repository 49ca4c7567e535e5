//! A standalone `campeer serve`, a camera using it as its remote server, a browser viewer: the
//! server is killed and restarted under them, and the page shows video again without a reload.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn token(secret_env: &str, role: &str) -> String {
    let out = std::process::Command::new(bin())
        .args(["token", "--room", "yard", "--role", role, "--ttl", "1h"])
        .env("CAMPEER__SERVER__SECRET_FILE", secret_env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_recovers_when_the_signaling_server_restarts() {
    let dir = TempDir::new("restart");
    let secret = format!("\"{}\"", dir.path().join("secret").display());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let serve_env = [("CAMPEER__SERVER__SECRET_FILE", secret.as_str())];
    let mut server = Campeer::start(&["serve", "--listen", &listen], &serve_env);
    server.wait_stdout("signaling server on", Duration::from_secs(20));

    let cam_token = token(&secret, "camera");
    let signal_url = format!("ws://{listen}/ws");
    let mut cam = Campeer::start(
        &[
            "run",
            "--video",
            "test",
            "--signal-url",
            &signal_url,
            "--room",
            "yard",
        ],
        &[
            ("CAMPEER__CAMERA__TOKEN", cam_token.as_str()),
            ("CAMPEER__VIDEO__WIDTH", "640"),
            ("CAMPEER__VIDEO__HEIGHT", "480"),
        ],
    );
    cam.wait_stdout("streaming to room", Duration::from_secs(30));

    let url = format!(
        "http://{listen}/room/yard?token={}",
        token(&secret, "viewer")
    );
    let browser = Browser::launch();
    let mut page = browser.open(&url).await;
    let first = page.wait_frames(30, Duration::from_secs(30)).await;
    page.eval("window.__no_reload_marker = 42").await;

    // Kill the server outright, then bring it back on the same port.
    drop(server);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut server = Campeer::start(&["serve", "--listen", &listen], &serve_env);
    server.wait_stdout("signaling server on", Duration::from_secs(20));
    let restarted = Instant::now();

    // The camera rejoins by itself, the page reconnects and calls it again: a new tile decodes.
    let deadline = Instant::now() + Duration::from_secs(40);
    let recovered = loop {
        let tiles = page.tiles().await;
        if let Some(t) = tiles
            .iter()
            .find(|t| t.id != first.id && t.frames_decoded >= 30)
        {
            break t.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no video after the restart: {tiles:?}\n{}\n{}",
            cam.logs(),
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "video again {:?} after the server came back",
        restarted.elapsed()
    );
    assert_eq!(recovered.frame_width, 640);
    assert_eq!(
        page.eval("window.__no_reload_marker").await,
        42,
        "the page was not reloaded"
    );
    assert!(
        cam.logs().contains("signaling connection lost"),
        "{}",
        cam.logs()
    );
    // The stale tile from before the restart is gone once the new call plays.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tiles = page.tiles().await;
        if tiles.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "stale tiles remain: {tiles:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_page_reaches_the_room_on_a_standalone_server() {
    let (_server, base) = start_server("[\"lobby\"]");
    let browser = Browser::launch();
    let mut page = browser.open(&format!("{base}/room/lobby")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = page.text().await;
        if text.contains("in room") && text.contains("Waiting for a camera") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "page never reached the room: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let id = page.eval("window.campeer.myId").await;
    assert!(id.as_str().is_some_and(|s| s.len() == 16), "{id}");
    // A protected room shows the server's error on the page.
    let mut page = browser.open(&format!("{base}/room/private")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = page.text().await;
        if text.contains("token-required") {
            break;
        }
        assert!(Instant::now() < deadline, "no error shown: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
