//! Offers that never connect cannot hold the camera's viewer places: a viewer whose connection
//! is not up `camera.connect-timeout` after its answer is dropped, and the next viewer gets in.

mod common;
use common::rtc_viewer::RtcViewer;
use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A browser-like offer (H.264 video, Opus audio, bundled) with credentials and a fingerprint
/// nobody holds, and no candidates: the camera answers it, and its connection never comes up.
const OFFER_THAT_NEVER_CONNECTS: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=msid-semantic: WMS\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 102\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Xq3b\r\n\
a=ice-pwd:8m4rR0l8tXhVYbKq0pWcJmD2\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 3A:1F:6C:0E:94:C2:7B:55:10:AF:8D:42:E3:99:06:B7:5C:21:D8:4E:7A:90:3B:FF:12:C6:58:0D:A4:E1:77:29\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtpmap:102 H264/90000\r\n\
a=rtcp-fb:102 nack pli\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Xq3b\r\n\
a=ice-pwd:8m4rR0l8tXhVYbKq0pWcJmD2\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 3A:1F:6C:0E:94:C2:7B:55:10:AF:8D:42:E3:99:06:B7:5C:21:D8:4E:7A:90:3B:FF:12:C6:58:0D:A4:E1:77:29\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=recvonly\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n";

fn camera_id(created: &Value) -> String {
    created["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["role"] == "camera"))
        .and_then(|p| p["id"].as_str())
        .expect("the camera is in the room")
        .to_owned()
}

/// Join as a viewer and offer what never connects; return the socket and the camera's reply.
async fn offer_and_stay(ws_url: &str, token: Option<&str>) -> (SignalWs, Value) {
    let (mut ws, created) = ws_join(ws_url, "camera", "viewer", token).await;
    let camera = camera_id(&created);
    ws.send(Message::text(
        json!({"type": "offer", "to": camera, "sdp": OFFER_THAT_NEVER_CONNECTS}).to_string(),
    ))
    .await
    .expect("send offer");
    loop {
        let reply = ws_recv(&mut ws, Duration::from_secs(20))
            .await
            .expect("the camera replied to the offer");
        if reply["type"] == "answer" || reply["type"] == "error" {
            return (ws, reply);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_that_never_connect_give_their_places_back() {
    let (mut cam, url) = start_camera(
        &[],
        &[
            ("CAMPEER__CAMERA__MAX_VIEWERS", "2"),
            ("CAMPEER__CAMERA__CONNECT_TIMEOUT", "\"5s\""),
            ("CAMPEER__VIDEO__WIDTH", "320"),
            ("CAMPEER__VIDEO__HEIGHT", "240"),
        ],
    );
    let (ws_url, token) = ws_of(&url);
    let token = token.as_deref();

    // Two viewer-token holders take both places with offers that never connect.
    let t = Instant::now();
    let (_a, reply) = offer_and_stay(&ws_url, token).await;
    assert_eq!(reply["type"], "answer", "{reply}");
    let (_b, reply) = offer_and_stay(&ws_url, token).await;
    assert_eq!(reply["type"], "answer", "{reply}");
    // The places are really taken: a third caller is refused for now.
    let (_c, reply) = offer_and_stay(&ws_url, token).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or("")
            .contains("at most 2"),
        "{reply}"
    );

    // connect-timeout later both are dropped, though their sockets stay in the room, and a
    // real viewer gets pictures (without the deadline, webrtc-rs gave up on them after 25-30 s).
    cam.wait_log(
        "not connected 5 s after its answer",
        Duration::from_secs(15),
    );
    let viewer = RtcViewer::connect(&url).await;
    viewer.wait_frames(10, Duration::from_secs(30)).await;
    eprintln!(
        "a real viewer had pictures {:?} after the places were taken",
        t.elapsed()
    );
    viewer.close().await;
}
