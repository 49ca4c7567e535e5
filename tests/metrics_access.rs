//! `/metrics` names every viewer with its round-trip time and loss, and says whether the camera
//! is in its room (security review finding 14): another machine gets it only with
//! `server.metrics-token` as a bearer token, this machine without one, and a web page whose name
//! was pointed at this machine (DNS rebinding, finding 8) not at all.

mod common;
use common::shaped::{HOST_IP, NS_IP, ShapedNs};
use common::*;
use std::io::{Read, Write};

/// `GET /metrics` from inside namespace `ns` with these extra headers: (status, response).
fn get_from(ns: &str, addr: &str, headers: &[&str]) -> (u16, String) {
    let mut s = netns::connect_in(ns, addr).expect("connect from the namespace");
    let mut req = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n");
    for h in headers {
        req.push_str(&format!("{h}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    (status_of(&text), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_machine_needs_the_metrics_token() {
    if !netns::available() {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    let lan = ShapedNs::new("cpmt1", None);
    let listen = format!("{HOST_IP}:0");

    // Secure by default: no token configured, so the LAN gets nothing.
    let (_closed, base) = serve_with(&listen, &[]);
    let addr = base.trim_start_matches("http://");
    let (code, r) = get_from(&lan.ns, addr, &[]);
    assert_eq!(code, 401, "from {NS_IP} without a token: {r}");
    assert!(r.contains("server.metrics-token"), "{r}");
    assert!(!r.contains("campeer_signal"), "{r}");

    let (_open, base) = serve_with(
        &listen,
        &[("CAMPEER__SERVER__METRICS_TOKEN", "s3cret-token")],
    );
    let addr = base.trim_start_matches("http://");
    let (code, r) = get_from(&lan.ns, addr, &[]);
    assert_eq!(code, 401, "{r}");
    assert!(
        r.to_ascii_lowercase().contains("www-authenticate: bearer"),
        "{r}"
    );
    let (code, r) = get_from(&lan.ns, addr, &["Authorization: Bearer s3cret-toke"]);
    assert_eq!(code, 401, "a wrong token: {r}");
    let (code, r) = get_from(&lan.ns, addr, &["Authorization: Bearer s3cret-token"]);
    assert_eq!(code, 200, "{r}");
    assert!(r.contains("campeer_signal_connections "), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_machine_reads_them_but_not_a_rebound_page_or_a_proxy() {
    let (_server, base) = start_server("[]");
    let (code, r) = http_get(&base, "/metrics").await;
    assert_eq!(code, 200, "{r}");
    assert!(r.contains("campeer_signal_connections "), "{r}");
    let port = base.rsplit(':').next().expect("a port");
    let (code, r) = http_get_with(&base, "/metrics", &[&format!("Host: localhost:{port}")]).await;
    assert_eq!(code, 200, "{r}");

    // A page at evil.example whose name now resolves to 127.0.0.1 asks with its own Host.
    let (code, r) =
        http_get_with(&base, "/metrics", &[&format!("Host: evil.example:{port}")]).await;
    assert_eq!(code, 403, "{r}");
    assert!(!r.contains("campeer_signal"), "{r}");

    // A reverse proxy on this machine relays other machines' requests.
    for relayed in [
        "X-Forwarded-For: 203.0.113.9",
        "X-Real-IP: 203.0.113.9",
        "Via: 1.1 proxy",
    ] {
        let (code, r) = http_get_with(&base, "/metrics", &[relayed]).await;
        assert_eq!(code, 401, "{relayed}: {r}");
    }

    // /healthz stays open: it says only whether all is well.
    let (code, _) = http_get_with(&base, "/healthz", &["Host: evil.example"]).await;
    assert_eq!(code, 200);
}
