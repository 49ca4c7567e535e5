//! Shared test harness: the real `campeer` binary as a child process, and a real headless
//! Chromium driven over the DevTools protocol (CDP over a WebSocket, no extra tooling).
#![allow(dead_code)]

pub mod firefox;
pub mod fuzz;
pub mod impair;
pub mod loopback;
pub mod media;
pub mod mp4;
pub mod netns;
pub mod nginx;
pub mod playback;
pub mod pull;
pub mod rtc_viewer;
pub mod shaped;
pub mod whep;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A fresh temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "campeer-test-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Signal a whole process group (the child was started as its leader).
pub fn kill_group(pid: u32, sig: i32) {
    // Never signal group 0 or -1 (the caller's group, every process).
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 1 {
            // SAFETY: kill(2) with a negative pid signals exactly that process group.
            unsafe { libc::kill(-pid, sig) };
        }
    }
}

/// Make the child a process-group leader that dies with the test process.
pub fn own_group_dying_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; it only sets this process's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A running `campeer` process; killed (whole process group) on drop.
pub struct Campeer {
    pub child: Child,
    pub out: Arc<Mutex<Vec<String>>>,
    pub err: Arc<Mutex<Vec<String>>>,
    pub dir: TempDir,
}

/// The path of the built binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_campeer")
}

fn pump(
    stream: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
    echo: &'static str,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if std::env::var_os("CAMPEER_TEST_VERBOSE").is_some() {
                eprintln!("[{echo}] {line}");
            }
            if let Ok(mut v) = into.lock() {
                v.push(line);
            }
        }
    });
}

impl Campeer {
    /// Start `campeer <args>` with a private secret file and WebRTC bound to loopback.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Campeer {
        Self::start_in(None, args, env)
    }

    /// [`Campeer::start`] inside network namespace `ns` (`ip netns exec`).
    pub fn start_in(ns: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Campeer {
        match ns {
            Some(ns) => Self::start_under(&["ip", "netns", "exec", ns], args, env),
            None => Self::start_under(&[], args, env),
        }
    }

    /// [`Campeer::start`] run by the command `prefix` (`ip netns exec ns`, `prlimit …`).
    pub fn start_under(prefix: &[&str], args: &[&str], env: &[(&str, &str)]) -> Campeer {
        let dir = TempDir::new("campeer");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.args(args)
            .env(
                "CAMPEER__SERVER__SECRET_FILE",
                format!("\"{}\"", dir.path().join("secret").display()),
            )
            .env("CAMPEER__CAMERA__RTC_BIND", "[\"127.0.0.1:0\"]")
            // A camera joined to a remote server listens for its own endpoints too: never on a
            // fixed port (tests run several daemons), unless a test says `--listen`.
            .env("CAMPEER__SERVER__LISTEN", "\"127.0.0.1:0\"")
            // Tests send nothing beyond loopback: no multicast DNS queries.
            .env("CAMPEER__CAMERA__MDNS", "false")
            .env("CAMPEER__LOG__LEVEL", "campeer=debug,info")
            .env_remove("CAMPEER_CONFIG")
            // A test run from a systemd unit must not look like the daemon under one.
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        own_group_dying_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("spawn campeer");
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        pump(
            child.stdout.take().expect("stdout piped"),
            out.clone(),
            "out",
        );
        pump(
            child.stderr.take().expect("stderr piped"),
            err.clone(),
            "err",
        );
        Campeer {
            child,
            out,
            err,
            dir,
        }
    }

    /// A token for `room` in `role` from this daemon's secret (`campeer token`), valid 1 h.
    pub fn token(&self, room: &str, role: &str) -> String {
        let out = Command::new(bin())
            .args(["token", "--room", room, "--role", role, "--ttl", "1h"])
            .env(
                "CAMPEER__SERVER__SECRET_FILE",
                format!("\"{}\"", self.dir.path().join("secret").display()),
            )
            .env_remove("CAMPEER_CONFIG")
            .output()
            .expect("run campeer token");
        assert!(
            out.status.success(),
            "campeer token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Wait for a stdout line containing `needle`; panics with the logs after `timeout`.
    pub fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.out.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "campeer exited ({status}) before printing {needle:?}\n{}",
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "campeer did not print {needle:?} within {timeout:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for a stderr (log) line containing `needle`.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.err.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "campeer did not log {needle:?} within {timeout:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The room URL printed by `campeer run` (loopback address).
    pub fn room_url(&mut self) -> String {
        let line = self.wait_stdout("/room/", Duration::from_secs(60));
        line.trim().to_owned()
    }

    /// Everything it printed so far.
    pub fn logs(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.out.lock().unwrap().join("\n"),
            self.err.lock().unwrap().join("\n")
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal to the process itself.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }
}

impl Drop for Campeer {
    fn drop(&mut self) {
        kill_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The base `http://host:port` of a room URL.
pub fn base_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host = rest.split('/').next().unwrap_or(rest);
    format!("http://{host}")
}

/// A headless Chromium with a DevTools endpoint; killed on drop.
pub struct Browser {
    child: Child,
    port: u16,
    ws_path: String,
    ns: Option<String>,
    _profile: TempDir,
}

/// Path of Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

impl Browser {
    pub fn launch() -> Browser {
        Self::launch_in(None)
    }

    /// A Chromium inside network namespace `ns`; its DevTools port is reached from inside too.
    pub fn launch_in(ns: Option<&str>) -> Browser {
        Self::launch_with(ns, &[])
    }

    /// [`Browser::launch_in`] with extra command-line switches (a fake camera, say).
    pub fn launch_with(ns: Option<&str>, extra: &[&str]) -> Browser {
        let profile = TempDir::new("chromium");
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, CHROMIUM]);
                c
            }
            None => Command::new(CHROMIUM),
        };
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--autoplay-policy=no-user-gesture-required",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            // Tests serve https with a self-signed certificate made on the spot.
            "--ignore-certificate-errors",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        own_group_dying_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .expect("spawn chromium (apt-get install chromium)");
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (port, ws_path) = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(p), Some(path)) = (
                    lines.next().and_then(|l| l.trim().parse::<u16>().ok()),
                    lines.next(),
                ) {
                    break (p, path.trim().to_owned());
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Browser {
            child,
            port,
            ws_path,
            ns: ns.map(str::to_owned),
            _profile: profile,
        }
    }

    /// Open a new tab at `url`.
    pub async fn open(&self, url: &str) -> Page {
        self.open_with_script(url, None).await
    }

    /// Open a new tab at `url`, with `script` run in every document before the page's own.
    pub async fn open_with_script(&self, url: &str, script: Option<&str>) -> Page {
        let ns = self.ns.as_deref();
        let mut b =
            Cdp::connect_via(ns, &format!("ws://127.0.0.1:{}{}", self.port, self.ws_path)).await;
        let r = b
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let target = r["targetId"].as_str().expect("targetId").to_owned();
        let mut page = Cdp::connect_via(
            ns,
            &format!("ws://127.0.0.1:{}/devtools/page/{target}", self.port),
        )
        .await;
        page.call("Page.enable", json!({})).await;
        page.call("Runtime.enable", json!({})).await;
        if let Some(source) = script {
            page.call(
                "Page.addScriptToEvaluateOnNewDocument",
                json!({ "source": source }),
            )
            .await;
        }
        page.call("Page.navigate", json!({ "url": url })).await;
        Page { cdp: page }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A minimal Chrome DevTools Protocol client.
pub struct Cdp {
    ws: WsStream,
    next: u64,
    pub events: Vec<Value>,
}

impl Cdp {
    pub async fn connect(url: &str) -> Cdp {
        Self::connect_via(None, url).await
    }

    /// Connect to a DevTools endpoint on 127.0.0.1 inside namespace `ns` (or here).
    pub async fn connect_via(ns: Option<&str>, url: &str) -> Cdp {
        let (ws, _) = match ns {
            None => tokio_tungstenite::connect_async(url)
                .await
                .expect("connect to devtools"),
            Some(ns) => {
                let host = url
                    .trim_start_matches("ws://")
                    .split('/')
                    .next()
                    .unwrap_or_default();
                let std = netns::connect_in(ns, host).expect("connect to devtools in namespace");
                std.set_nonblocking(true).expect("nonblocking");
                let tcp = tokio::net::TcpStream::from_std(std).expect("tokio stream");
                tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
                    .await
                    .expect("devtools handshake")
            }
        };
        Cdp {
            ws,
            next: 1,
            events: Vec::new(),
        }
    }

    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(v) => v,
            Err(e) => panic!("devtools {method} failed: {e}"),
        }
    }

    /// [`Cdp::call`], with the error DevTools answered instead of a panic.
    pub async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next;
        self.next += 1;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws
            .send(Message::Text(msg.into()))
            .await
            .expect("devtools send");
        loop {
            let m = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("devtools call {method} timed out"))
                .expect("devtools closed")
                .expect("devtools read");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).expect("devtools json");
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    return Err(e.clone());
                }
                return Ok(v["result"].clone());
            }
            if self.events.len() < 10_000 {
                self.events.push(v);
            }
        }
    }
}

/// One browser tab.
pub struct Page {
    pub cdp: Cdp,
}

/// What a viewer tile reports from `getStats()`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TileStats {
    pub id: String,
    pub state: String,
    pub frames_decoded: u64,
    pub frame_width: u64,
    pub frame_height: u64,
    pub freeze_count: u64,
    pub audio_packets: u64,
    pub codec: String,
}

pub const STATS_JS: &str = r#"(async () => {
  const out = [];
  if (!window.campeer) return JSON.stringify(out);
  for (const [id, cam] of window.campeer.cams) {
    const r = await cam.pc.getStats();
    let v = {}, a = {};
    const codecs = new Map();
    r.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') v = s;
      if (s.type === 'inbound-rtp' && s.kind === 'audio') a = s;
      if (s.type === 'codec') codecs.set(s.id, s.mimeType);
    });
    out.push({ id, state: cam.pc.connectionState, framesDecoded: v.framesDecoded || 0,
      frameWidth: v.frameWidth || 0, frameHeight: v.frameHeight || 0, freezeCount: v.freezeCount || 0,
      audioPackets: a.packetsReceived || 0, codec: codecs.get(v.codecId) || '' });
  }
  return JSON.stringify(out);
})()"#;

impl Page {
    /// [`Page::eval`] on a page that may be navigating away: `None` when the document it ran
    /// in was replaced before it answered.
    pub async fn eval_across_navigation(&mut self, expr: &str) -> Option<Value> {
        let params = json!({ "expression": expr, "awaitPromise": true, "returnByValue": true });
        match self.cdp.try_call("Runtime.evaluate", params).await {
            Ok(r) => {
                if let Some(ex) = r.get("exceptionDetails") {
                    panic!("page script failed: {ex}");
                }
                Some(r["result"]["value"].clone())
            }
            // Chromium says one of these when the document went while it evaluated (a new
            // renderer, or the same one with a new context).
            Err(e)
                if [
                    "navigated or closed",
                    "Execution context was destroyed",
                    "Cannot find context with specified id",
                ]
                .iter()
                .any(|m| e.to_string().contains(m)) =>
            {
                None
            }
            Err(e) => panic!("devtools Runtime.evaluate failed: {e}"),
        }
    }

    /// Evaluate an expression (promises awaited) and return its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .cdp
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "awaitPromise": true, "returnByValue": true }),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("page script failed: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Stats of every camera tile on the page.
    pub async fn tiles(&mut self) -> Vec<TileStats> {
        let v = self.eval(STATS_JS).await;
        serde_json::from_str(v.as_str().unwrap_or("[]")).unwrap_or_default()
    }

    /// Wait until some tile has decoded `frames` frames; returns its stats.
    pub async fn wait_frames(&mut self, frames: u64, timeout: Duration) -> TileStats {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.tiles().await;
            if let Some(t) = last.iter().find(|t| t.frames_decoded >= frames) {
                return t.clone();
            }
            if Instant::now() > deadline {
                let page_text = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!(
                    "no tile decoded {frames} frames within {timeout:?}; tiles: {last:?}; page: {page_text}"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn reload(&mut self) {
        self.cdp
            .call("Page.reload", json!({ "ignoreCache": true }))
            .await;
    }

    /// The page's visible text.
    pub async fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
            .await
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// Start `campeer serve` on a free loopback port with `open_rooms` (a TOML list) open, and
/// return it with its base URL (`http://127.0.0.1:port`).
pub fn start_server(open_rooms: &str) -> (Campeer, String) {
    start_server_on("127.0.0.1:0", open_rooms)
}

/// [`start_server`] listening on `listen`.
pub fn start_server_on(listen: &str, open_rooms: &str) -> (Campeer, String) {
    serve_with(listen, &[("CAMPEER__SERVER__OPEN_ROOMS", open_rooms)])
}

/// `campeer serve` listening on `listen` with these environment overrides; returns it with its
/// base URL.
pub fn serve_with(listen: &str, env: &[(&str, &str)]) -> (Campeer, String) {
    serve_args(&["serve", "--listen", listen], env)
}

/// `campeer <args>` (a `serve` command line), and its `http://host:port` once it listens.
pub fn serve_args(args: &[&str], env: &[(&str, &str)]) -> (Campeer, String) {
    let mut server = Campeer::start(args, env);
    let line = server.wait_stdout("signaling server on", Duration::from_secs(20));
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    (server, base)
}

/// `GET path` from `base` (`http://host:port`) with a plain HTTP/1.0 request: (status, whole
/// response text).
pub async fn http_get(base: &str, path: &str) -> (u16, String) {
    http_get_with(base, path, &[]).await
}

/// [`http_get`] with extra request headers (`"Name: value"`); a `Host:` among them replaces the
/// one from `base`.
pub async fn http_get_with(base: &str, path: &str, headers: &[&str]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let mut request = format!("GET {path} HTTP/1.0\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        request.push_str(&format!("Host: {host}\r\n"));
    }
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes()).await.expect("send request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read response");
    let text = String::from_utf8_lossy(&buf).into_owned();
    (status_of(&text), text)
}

/// A whole HTTP response: status, headers (lower-case names) and body bytes.
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

/// A `GET path` request to `base` with `extra` header lines (each ending in CRLF).
pub fn http_request(base: &str, path: &str, extra: &str) -> String {
    let host = base.trim_start_matches("http://");
    format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n{extra}\r\n")
}

/// Read a whole response from `s` (the server closes it: HTTP/1.0).
pub async fn read_reply(mut s: tokio::net::TcpStream) -> Reply {
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf)
        .await
        .expect("read response");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: buf[split + 4..].to_vec(),
    }
}

/// `GET path` from `base` with `extra` header lines: the whole response.
pub async fn http_get_reply(base: &str, path: &str, extra: &str) -> Reply {
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut s, http_request(base, path, extra).as_bytes())
        .await
        .expect("send request");
    read_reply(s).await
}

/// The npm package `name@version`, fetched once with `npm pack` into the target's temporary
/// directory, checked against its SHA-256 and unpacked: the path of its `package/` directory.
pub fn npm_package(name: &str, version: &str, sha256: &str) -> PathBuf {
    let spec = format!("{name}@{version}");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{version}"));
    let package = dir.join("package");
    if package.join("package.json").exists() {
        return package;
    }
    std::fs::create_dir_all(&dir).expect("a directory for the package");
    let ok = Command::new("npm")
        .args(["pack", &spec, "--silent", "--pack-destination"])
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .expect("npm runs (scripts/setup-debian.sh test installs it)");
    assert!(ok.success(), "npm could not fetch {spec}");
    let tgz = dir.join(format!("{name}-{version}.tgz"));
    let sum = Command::new("sha256sum")
        .arg(&tgz)
        .output()
        .expect("sha256sum runs");
    let sum = String::from_utf8_lossy(&sum.stdout);
    assert!(
        sum.starts_with(sha256),
        "{spec} is not the package expected: {sum}"
    );
    let ok = Command::new("tar")
        .arg("xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(&dir)
        .status()
        .expect("tar runs");
    assert!(ok.success(), "could not unpack {spec}");
    package
}

/// The value of the unlabelled metric `name` in a `/metrics` text.
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The status code of a whole HTTP response text (0 when there is none).
pub fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Start `campeer run` on the test pattern + test tone at 1280x720@30 with its embedded server
/// on a free loopback port, and return it with the room URL it printed.
pub fn start_camera(extra_args: &[&str], env: &[(&str, &str)]) -> (Campeer, String) {
    let mut args = vec![
        "run",
        "--video",
        "test",
        "--audio",
        "test",
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra_args);
    // Defaults first: a test's own values come later and win.
    let mut all: Vec<(&str, &str)> = vec![
        ("CAMPEER__VIDEO__WIDTH", "1280"),
        ("CAMPEER__VIDEO__HEIGHT", "720"),
        ("CAMPEER__VIDEO__FRAMERATE", "30"),
    ];
    all.extend_from_slice(env);
    let env = all;
    let mut c = Campeer::start(&args, &env);
    let url = c.room_url();
    (c, url)
}

/// A signaling WebSocket opened by a test.
pub type SignalWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The `ws://host:port/ws` endpoint and the token of a room URL
/// (`http://host:port/room/<room>?token=…`).
pub fn ws_of(room_url: &str) -> (String, Option<String>) {
    let host = base_of(room_url).replace("http://", "ws://");
    let token = room_url.split_once("?token=").map(|(_, t)| t.to_owned());
    (format!("{host}/ws"), token)
}

/// Open `ws_url` and join `room` as `role`; returns the socket and the `created` message (or
/// the `error` the server answered instead).
pub async fn ws_join(
    ws_url: &str,
    room: &str,
    role: &str,
    token: Option<&str>,
) -> (SignalWs, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url)
        .await
        .expect("signaling websocket");
    let join = json!({"type": "join", "room": room, "role": role, "token": token, "name": role});
    ws.send(Message::text(join.to_string()))
        .await
        .expect("send join");
    let reply = ws_recv(&mut ws, Duration::from_secs(10))
        .await
        .expect("an answer to join");
    (ws, reply)
}

/// The next JSON message on `ws` within `timeout` (pings are answered on the way); `None` when
/// the socket closed or nothing came.
pub async fn ws_recv(ws: &mut SignalWs, timeout: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match m.ok()? {
            Message::Text(t) => return serde_json::from_str(t.as_str()).ok(),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// True when `created` lists a camera in the room.
pub fn has_camera(created: &Value) -> bool {
    created["peers"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["role"] == "camera"))
}
