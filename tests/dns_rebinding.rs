//! A web page of another site that points its own DNS name at the camera (DNS rebinding) is
//! same-origin with it, so the Origin check lets it in; it still cannot watch an open room or
//! take its snapshots without a token. The same page by the camera's address, a LAN name or a
//! name the operator listed (`server.host-names`) needs none, as open rooms promise.

mod common;
use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Open `ws_url` as a page at `http://<name>:<port>` would (Host and Origin both name it) and
/// join `room` as a viewer without a token: the server's answer.
async fn page_joins(ws_url: &str, name: &str, room: &str) -> Value {
    let port = ws_url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .expect("a port in the URL");
    let authority = format!("{name}:{port}");
    let mut req = ws_url.into_client_request().expect("request");
    req.headers_mut()
        .insert("host", authority.parse().expect("header value"));
    req.headers_mut().insert(
        "origin",
        format!("http://{authority}").parse().expect("header value"),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the page's own origin opens the WebSocket");
    assert_eq!(resp.status().as_u16(), 101);
    let join = json!({"type": "join", "room": room, "role": "viewer", "name": "page"});
    ws.send(Message::text(join.to_string()))
        .await
        .expect("send join");
    ws_recv(&mut ws, Duration::from_secs(10))
        .await
        .expect("an answer to join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_page_cannot_join_an_open_room_without_a_token() {
    let (_server, base) = serve_with(
        "127.0.0.1:0",
        &[
            ("CAMPEER__SERVER__OPEN_ROOMS", "[\"*\"]"),
            ("CAMPEER__SERVER__HOST_NAMES", "[\"cam.example.com\"]"),
        ],
    );
    let ws = format!("{}/ws", base.replace("http://", "ws://"));

    let refused = page_joins(&ws, "evil.example", "yard").await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "token-required", "{refused}");
    let why = refused["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("evil.example") && why.contains("server.host-names"),
        "the refusal says what to do: {why}"
    );

    // By address, by LAN names and by the listed name, the room is open as configured.
    for name in [
        "127.0.0.1",
        "localhost",
        "raspberrypi",
        "cam.local",
        "cam.example.com",
    ] {
        let joined = page_joins(&ws, name, "yard").await;
        assert_eq!(joined["type"], "created", "{name}: {joined}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_request_gets_no_snapshot_of_an_open_room() {
    let (_cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__SERVER__OPEN_ROOMS", "[\"*\"]"),
            ("CAMPEER__VIDEO__WIDTH", "320"),
            ("CAMPEER__VIDEO__HEIGHT", "240"),
        ],
    );
    let base = base_of(&url);
    let port = base.rsplit_once(':').map(|(_, p)| p).expect("a port");

    let (status, reply) = http_get_with(
        &base,
        "/snapshot.jpg",
        &[&format!("Host: evil.example:{port}")],
    )
    .await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply.contains("server.host-names"), "{reply}");

    let (status, reply) = http_get(&base, "/snapshot.jpg").await;
    assert_eq!(
        status,
        200,
        "by address: {}",
        &reply[..reply.len().min(300)]
    );
    assert!(reply.contains("image/jpeg"));
}
