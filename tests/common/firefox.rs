//! Debian's headless Firefox ESR, driven over WebDriver BiDi (its built-in remote protocol, the
//! one puppeteer speaks to Firefox): a browser whose WebRTC offers VP8, VP9 and AV1 but no H.264
//! (no OpenH264 plugin offline), as many real Firefox installs are.

use super::{Cdp, STATS_JS, TempDir, TileStats, kill_group, own_group_dying_with_parent};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of Debian's Firefox ESR.
pub const FIREFOX: &str = "/usr/bin/firefox-esr";

/// Preferences for a test profile: WebRTC over loopback with real addresses, no OpenH264
/// download (the point is a Firefox without H.264), muted autoplay allowed, nothing phoning home.
const PREFS: &str = r#"
user_pref("media.peerconnection.ice.loopback", true);
user_pref("media.peerconnection.ice.obfuscate_host_addresses", false);
user_pref("media.gmp-gmpopenh264.enabled", false);
user_pref("media.gmp-manager.updateEnabled", false);
user_pref("media.autoplay.default", 0);
user_pref("app.update.enabled", false);
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("toolkit.telemetry.enabled", false);
user_pref("remote.active-protocols", 1);
"#;

/// A headless Firefox with one tab; killed on drop.
pub struct Firefox {
    child: Child,
    bidi: Cdp,
    context: String,
    _profile: TempDir,
}

impl Firefox {
    pub async fn launch() -> Firefox {
        let profile = TempDir::new("firefox");
        std::fs::write(profile.path().join("user.js"), PREFS).expect("write user.js");
        let mut cmd = Command::new(FIREFOX);
        cmd.args([
            "--headless",
            "--no-remote",
            "--remote-debugging-port=0",
            "--profile",
        ])
        .arg(profile.path())
        .arg("about:blank")
        .env("MOZ_CRASHREPORTER_DISABLE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        own_group_dying_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .expect("spawn firefox-esr (apt-get install firefox-esr)");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("WebDriver BiDi listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(url.trim().to_owned());
                    }
                }
                // Keep draining so Firefox never blocks on a full pipe.
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("firefox announced its WebDriver BiDi address");
        let mut bidi = Cdp::connect(&format!("{url}/session")).await;
        bidi.call("session.new", json!({ "capabilities": {} }))
            .await;
        let tree = bidi.call("browsingContext.getTree", json!({})).await;
        let context = tree["contexts"][0]["context"]
            .as_str()
            .expect("a browsing context")
            .to_owned();
        Firefox {
            child,
            bidi,
            context,
            _profile: profile,
        }
    }

    /// Load `url` in the tab.
    pub async fn goto(&mut self, url: &str) {
        self.bidi
            .call(
                "browsingContext.navigate",
                json!({ "context": self.context, "url": url, "wait": "complete" }),
            )
            .await;
    }

    /// Evaluate an expression (promises awaited) that yields a string.
    pub async fn eval_string(&mut self, expr: &str) -> String {
        let r = self
            .bidi
            .call(
                "script.evaluate",
                json!({
                    "expression": expr,
                    "target": { "context": self.context },
                    "awaitPromise": true,
                }),
            )
            .await;
        if r["type"] != "success" {
            panic!("page script failed: {r}");
        }
        r["result"]["value"].as_str().unwrap_or_default().to_owned()
    }

    /// Stats of every camera tile on the page (the same script as for Chromium).
    pub async fn tiles(&mut self) -> Vec<TileStats> {
        let v = self.eval_string(STATS_JS).await;
        serde_json::from_str(&v).unwrap_or_default()
    }

    /// The page's visible text.
    pub async fn text(&mut self) -> String {
        self.eval_string("document.body ? document.body.innerText : ''")
            .await
    }

    /// Wait until some tile has decoded `frames` frames; returns its stats.
    pub async fn wait_frames(&mut self, frames: u64, timeout: Duration) -> TileStats {
        let deadline = Instant::now() + timeout;
        loop {
            let tiles = self.tiles().await;
            if let Some(t) = tiles.iter().find(|t| t.frames_decoded >= frames) {
                return t.clone();
            }
            if Instant::now() > deadline {
                let text = self.text().await;
                panic!(
                    "firefox decoded no {frames} frames in {timeout:?}; tiles {tiles:?}; page: {text}"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The offer this Firefox makes for receiving video: the codecs it lists.
    pub async fn video_codecs_offered(&mut self) -> Value {
        let v = self
            .eval_string(
                "(async () => { const pc = new RTCPeerConnection(); \
                 pc.addTransceiver('video', { direction: 'recvonly' }); \
                 const o = await pc.createOffer(); pc.close(); \
                 return JSON.stringify(o.sdp.split('\\r\\n').filter(l => l.startsWith('a=rtpmap:')) \
                   .map(l => l.split(' ')[1])); })()",
            )
            .await;
        serde_json::from_str(&v).unwrap_or(Value::Null)
    }
}

impl Drop for Firefox {
    fn drop(&mut self) {
        kill_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}
