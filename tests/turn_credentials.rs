//! TURN credentials go only to whom they should and never run out on a long-joined camera: an
//! open room's tokenless peers get none unless the operator allows it, and a camera whose
//! credentials near their expiry asks its server for fresh ones (`ice`) instead of losing its
//! relay after `ttl` of uptime.

mod common;
use common::*;
use std::time::Duration;

/// `campeer serve` with room "lobby" open and TURN REST credentials valid for `ttl`.
fn server(ttl: &str, for_open_rooms: bool) -> (Campeer, String, TempDir) {
    let dir = TempDir::new("turn-creds");
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
open-rooms = ["lobby"]
[ice.turn-rest]
urls = ["turn:127.0.0.1:9?transport=udp"]
secret = "s3cret"
ttl = "{ttl}"
for-open-rooms = {for_open_rooms}
"#
        ),
    )
    .expect("write the server's config");
    let config = config.display().to_string();
    let (s, base) = serve_args(
        &["serve", "--config", &config, "--listen", "127.0.0.1:0"],
        &[],
    );
    (s, base, dir)
}

fn turn_users(created: &serde_json::Value) -> Vec<String> {
    created["iceServers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["username"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_rooms_get_turn_credentials_only_when_the_operator_says_so() {
    let (_s, base, _d) = server("1h", false);
    let ws = format!("{}/ws", base.replace("http://", "ws://"));
    let (_ws, created) = ws_join(&ws, "lobby", "viewer", None).await;
    assert_eq!(created["type"], "created", "{created}");
    assert!(
        turn_users(&created).is_empty(),
        "anyone joining an open room got a relay: {created}"
    );

    let (_s, base, _d) = server("1h", true);
    let ws = format!("{}/ws", base.replace("http://", "ws://"));
    let (_ws, created) = ws_join(&ws, "lobby", "viewer", None).await;
    let users = turn_users(&created);
    assert_eq!(users.len(), 1, "{created}");
    assert!(
        users[0].ends_with(created["id"].as_str().unwrap_or("?")),
        "{users:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_asks_for_fresh_turn_credentials_before_they_expire() {
    // Credentials for 5 minutes: already within the camera's 10-minute margin.
    let (_s, base, _d) = server("5m", true);
    let ws = format!("{}/ws", base.replace("http://", "ws://"));
    let mut camera = Campeer::start(
        &[
            "run",
            "--video",
            "test",
            "--audio",
            "test",
            "--room",
            "lobby",
            "--signal-url",
            &ws,
        ],
        &[
            ("CAMPEER__VIDEO__WIDTH", "320"),
            ("CAMPEER__VIDEO__HEIGHT", "240"),
        ],
    );
    camera.wait_log("joined room as camera", Duration::from_secs(30));
    let fresh = camera.wait_log(
        "fresh TURN credentials from the server",
        Duration::from_secs(30),
    );
    assert!(fresh.contains("valid_until=Some("), "{fresh}");
}
