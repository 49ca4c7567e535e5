//! Every page and endpoint carries the headers that keep it from being framed, sniffed or
//! leaking its address (which may hold a token) to other sites, and the pages still work under
//! their Content-Security-Policy in a real browser.

mod common;
use common::*;
use std::time::Duration;

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_the_security_headers() {
    let (_server, base) = start_server("[\"*\"]");
    for path in [
        "/",
        "/room/garden",
        "/room/bad name",
        "/viewer.js",
        "/index.js",
        "/style.css",
        "/healthz",
        "/metrics",
    ] {
        let (code, r) = http_get(&base, &path.replace(' ', "%20")).await;
        assert!(code == 200 || code == 404, "{path}: {code}");
        let csp = header(&r, "content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{path}: CSP {csp:?}"
        );
        assert_eq!(header(&r, "x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            header(&r, "x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(header(&r, "referrer-policy"), Some("no-referrer"), "{path}");
    }
    let (_, index) = http_get(&base, "/").await;
    assert!(
        !index.contains("<script>"),
        "no inline script (the CSP would block it)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_picker_works_under_its_policy() {
    let (_server, base) = start_server("[\"*\"]");
    let browser = Browser::launch();
    let mut page = browser.open(&format!("{base}/")).await;
    // Once the page (and its script) has loaded, pick a room as a user would. The form's
    // navigation may replace the page before DevTools answers: that is the point, not a failure.
    page.eval_across_navigation(
        "new Promise((done) => { const go = () => { \
           document.getElementById('room').value = 'garden'; \
           document.getElementById('token').value = 'v1.x'; \
           document.getElementById('pick').requestSubmit(); done('ok'); }; \
         if (document.readyState === 'complete') go(); else addEventListener('load', go); })",
    )
    .await;
    // The room page has the token (kept for this tab) and took it out of the address bar.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Both read in one evaluation: a navigation between them cannot mix two pages.
        let seen = page
            .eval_across_navigation(
                "JSON.stringify([location.href, sessionStorage.getItem('campeer-token:garden')])",
            )
            .await
            .and_then(|v| serde_json::from_str::<Vec<Option<String>>>(v.as_str()?).ok())
            .unwrap_or_default();
        let href = seen.first().cloned().flatten().unwrap_or_default();
        let kept = seen.get(1).cloned().flatten();
        if href.ends_with("/room/garden") && kept.as_deref() == Some("v1.x") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the picker did not go to the room, or the token stayed in the address: {href} (kept {kept:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
