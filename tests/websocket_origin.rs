//! A page of another site, opened by a user on the LAN, cannot open the signaling WebSocket
//! (cross-site WebSocket hijacking): only the server's own pages, configured origins and clients
//! that are no web page (no Origin header) get in.

mod common;
use common::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The HTTP status of a WebSocket handshake to `ws_url` sent with `origin`.
async fn handshake(ws_url: &str, origin: Option<&str>) -> u16 {
    let mut req = ws_url.into_client_request().expect("request");
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", o.parse().expect("header value"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

fn serve(env: &[(&str, &str)]) -> (Campeer, String) {
    let mut all = vec![("CAMPEER__SERVER__OPEN_ROOMS", "[\"*\"]")];
    all.extend_from_slice(env);
    serve_with("127.0.0.1:0", &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sites_pages_cannot_open_the_websocket() {
    let (_server, base) = serve(&[]);
    let ws = format!("{}/ws", base.replace("http://", "ws://"));
    assert_eq!(handshake(&ws, Some("http://evil.example")).await, 403);
    assert_eq!(handshake(&ws, Some("null")).await, 403);
    // The server's own page and non-browser clients get in.
    assert_eq!(handshake(&ws, Some(&base)).await, 101);
    assert_eq!(handshake(&ws, None).await, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_origins_may_open_it() {
    let (_server, base) = serve(&[(
        "CAMPEER__SERVER__ALLOWED_ORIGINS",
        "[\"https://dash.example.com\"]",
    )]);
    let ws = format!("{}/ws", base.replace("http://", "ws://"));
    assert_eq!(handshake(&ws, Some("https://dash.example.com")).await, 101);
    assert_eq!(handshake(&ws, Some("https://other.example.com")).await, 403);
}
