//! The signaling server's network side: the HTTP listener, the `/ws` WebSocket endpoint, the
//! viewer pages, `/healthz` and `/metrics`.
//!
//! One hub task owns the [`Router`] and every connection's outgoing queue. Each WebSocket has a
//! read loop (size and rate limits, parsing, idle timeout) and a write task draining a bounded
//! queue. The hub never waits on a socket: a viewer whose queue is full is disconnected (its
//! socket really closed), so one slow client never stalls the others. A camera is never
//! disconnected for what viewers send it: messages relayed to a camera whose queue is nearly full
//! are dropped and their sender told so, leaving room for the server's own notices, and what
//! still does not fit is dropped rather than the camera. Before any of that,
//! [`admission`](super::admission) caps open connections in total and per address (a full
//! server makes room by closing the oldest connection that has not joined a room, from the
//! address holding the most), HTTP request headers must arrive within `header_timeout`, and a
//! WebSocket that has not joined a room within `join_timeout` is closed.
//!
//! Without rooms ([`SignalServer::start_endpoints`]) the same listener serves the own endpoints
//! of a camera joined to a remote server: `/healthz`, `/metrics` and the outputs' routes.

use super::admission::{Admission, AdmissionAcceptor, Admitted, Settle};
use super::host::ReachedAs;
use super::protocol::{ClientMessage, ErrorCode, PeerId, Role, ServerMessage, parse_client};
use super::router::Router;
use super::web;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Outgoing messages queued per connection before the peer counts as too slow and is dropped.
pub const OUTGOING_QUEUE: usize = 256;
/// Places in a camera's queue kept for the server's own notices (joins, exits): messages relayed
/// from viewers are dropped, their sender told, once fewer places than this are free.
pub const CAMERA_RESERVE: usize = 64;
/// A joined camera may send this many times the per-connection message rate: it answers every
/// viewer (an answer and its candidates each), and a room of viewers may call at once.
pub const CAMERA_RATE_SCALE: u32 = 16;
/// Listeners for the embedded camera alone (loopback) admit at most this many connections.
const SIDE_LISTENER_CONNECTIONS: usize = 16;
/// Frames larger than this close the connection outright (larger than any configurable limit).
const HARD_FRAME_LIMIT: usize = 1024 * 1024;
/// Bytes queued per connection before it counts as too slow (a message larger than this still
/// goes out alone into an empty queue).
pub const OUTGOING_BYTES: usize = 1024 * 1024;

/// A connection's outgoing queue, bounded in messages ([`OUTGOING_QUEUE`]) and in bytes
/// ([`OUTGOING_BYTES`]); the writer task gives the bytes back as it sends them.
#[derive(Clone)]
struct Outgoing {
    tx: mpsc::Sender<String>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Outgoing {
    /// Queue `text`, or give it back when either bound would be passed.
    fn try_send(&self, text: String) -> Result<(), String> {
        let queued = self.queued.load(Ordering::Relaxed);
        if queued > 0 && queued + text.len() > OUTGOING_BYTES {
            return Err(text);
        }
        let len = text.len();
        match self.tx.try_send(text) {
            Ok(()) => {
                self.queued.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(t) | mpsc::error::TrySendError::Closed(t)) => {
                Err(t)
            }
        }
    }

    /// True when less than a quarter of either bound is free.
    fn nearly_full(&self) -> bool {
        self.tx.capacity() <= CAMERA_RESERVE
            || self.queued.load(Ordering::Relaxed) > OUTGOING_BYTES / 4 * 3
    }
}

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Largest message answered with anything but `too-large`.
    pub max_message_bytes: usize,
    /// Sustained messages per second; bursts up to twice that.
    pub messages_per_second: u32,
    /// Close after this long without any frame from the client.
    pub idle_timeout: Duration,
    /// Close a WebSocket that has not joined a room this long after it opened (or left one).
    pub join_timeout: Duration,
    /// Close an HTTP connection whose request headers have not all arrived within this.
    pub header_timeout: Duration,
    /// Origins (`https://host[:port]`) whose pages may open `/ws` besides the server's own;
    /// `*` allows every origin.
    pub allowed_origins: Arc<[String]>,
    /// Names (besides addresses and LAN-only names) a page may reach this server by and still
    /// join an open room without a token; `*` trusts every name (see [`super::host`]).
    pub host_names: Arc<[String]>,
    /// A bearer token that opens `/metrics` to requests from anywhere; without it only this
    /// machine reads them (see [`metrics_access`]).
    pub metrics_token: Option<Arc<str>>,
}

/// The service each connection gets: the app, with the client's address (`ConnectInfo`).
type AppService =
    axum::middleware::AddExtension<axum::Router, axum::extract::ConnectInfo<std::net::SocketAddr>>;

/// Why `/metrics` was not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsRefusal {
    /// Not from this machine, and no (or a wrong) bearer token.
    #[error(
        "metrics are for this machine (loopback) or for a client with server.metrics-token as a bearer token"
    )]
    NeedsToken,
    /// From this machine, but the Host named is neither an address nor `localhost`: a web page
    /// whose name was pointed at this machine (DNS rebinding).
    #[error("Host {0:?} is not an address of this machine: use 127.0.0.1 or localhost")]
    ForeignHost(String),
}

/// Whether a `/metrics` request may be answered. They name every viewer with its round-trip
/// time and loss, and say whether the camera is in its room: answered to a client holding
/// `token` (`Authorization: Bearer`), else only to this machine (a loopback peer, not relayed by a
/// proxy on it, asking for a literal address or `localhost`).
pub fn metrics_access(
    peer: std::net::IpAddr,
    host: Option<&str>,
    authorization: Option<&str>,
    forwarded: bool,
    token: Option<&str>,
) -> Result<(), MetricsRefusal> {
    if let (Some(token), Some(auth)) = (token, authorization) {
        let given = auth.strip_prefix("Bearer ").unwrap_or("").trim();
        // Compared as digests: the time taken says nothing about the token.
        use sha2::Digest;
        if sha2::Sha256::digest(given.as_bytes()) == sha2::Sha256::digest(token.as_bytes()) {
            return Ok(());
        }
        return Err(MetricsRefusal::NeedsToken);
    }
    if !peer.to_canonical().is_loopback() || forwarded {
        return Err(MetricsRefusal::NeedsToken);
    }
    let host = host.unwrap_or("");
    if super::host::host_is_local_literal(host) {
        Ok(())
    } else {
        Err(MetricsRefusal::ForeignHost(
            host.chars().take(100).collect(),
        ))
    }
}

/// Whether a WebSocket opened by a page at `origin` may connect to a server reached as `host`
/// (or, behind a proxy, `forwarded_host`): requests without an Origin come from no web page
/// (the camera, command-line tools) and pass; a page passes when it is the server's own or its
/// origin is allowed. Keeps other sites' pages, opened by a user on the LAN, out of the rooms.
pub fn origin_allowed(
    origin: Option<&str>,
    host: Option<&str>,
    forwarded_host: Option<&str>,
    allowed: &[String],
) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some((_, authority)) = origin.split_once("://") else {
        return false; // "null" (sandboxed pages, files) or garbage
    };
    [host, forwarded_host]
        .into_iter()
        .flatten()
        .any(|h| h.eq_ignore_ascii_case(authority))
}

/// What the daemon around the server adds to `/healthz` and `/metrics`.
pub trait Observer: Send + Sync + 'static {
    /// `Err(reason)` makes `/healthz` answer 503.
    fn health(&self) -> Result<(), String>;
    /// Extra Prometheus text appended to `/metrics`.
    fn metrics(&self) -> String;
    /// HTTP routes the daemon serves beside the rooms (`/snapshot.jpg`), under the same
    /// listeners, limits and security headers.
    fn routes(&self) -> Option<axum::Router> {
        None
    }
}

/// A server with nothing to add: always healthy.
pub struct NoObserver;
impl Observer for NoObserver {
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    fn metrics(&self) -> String {
        String::new()
    }
}

#[derive(Debug, Default)]
struct Counters {
    connections_total: AtomicU64,
    messages_in: AtomicU64,
    errors_sent: AtomicU64,
    slow_dropped: AtomicU64,
    join_timeouts: AtomicU64,
    busy_dropped: AtomicU64,
}

/// The hub's handle on one connection.
struct Conn {
    tx: Outgoing,
    /// Cancelled to close the connection (both its tasks watch it).
    kick: CancellationToken,
    /// Set once it joined as a camera: its rate limit scales by [`CAMERA_RATE_SCALE`].
    camera: Arc<AtomicBool>,
    /// Since when it has been connected without being in a room.
    unjoined_since: Option<tokio::time::Instant>,
    /// Settles its admission place when it joins (a full server then never evicts it).
    settle: Option<Settle>,
    /// The name a web page reached the server by, when another site's DNS could have pointed
    /// it here: open rooms need a token from it.
    foreign_name: Option<String>,
}

enum HubEvent {
    Connect {
        id: PeerId,
        tx: Outgoing,
        kick: CancellationToken,
        camera: Arc<AtomicBool>,
        settle: Option<Settle>,
        foreign_name: Option<String>,
    },
    Message {
        id: PeerId,
        msg: ClientMessage,
    },
    Disconnect {
        id: PeerId,
    },
    Stats {
        reply: oneshot::Sender<HubStats>,
    },
}

/// A snapshot of the hub's state.
#[derive(Debug, Clone, Copy)]
pub struct HubStats {
    /// Open WebSocket connections.
    pub connections: usize,
    /// Rooms with at least one peer.
    pub rooms: usize,
    /// Peers in rooms.
    pub members: usize,
}

#[derive(Clone)]
struct AppState {
    hub: mpsc::Sender<HubEvent>,
    limits: ConnLimits,
    observer: Arc<dyn Observer>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    admission: Admission,
    /// Whether this listener serves rooms (`/ws`, the pages) and so reports the hub.
    rooms: bool,
}

/// A running signaling server.
pub struct SignalServer {
    /// The address of the main listener.
    pub local_addr: std::net::SocketAddr,
    hub: mpsc::Sender<HubEvent>,
    app: axum::Router,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    header_timeout: Duration,
}

/// Load a PEM certificate chain and key for https/wss (rustls on the ring provider).
pub async fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<axum_server::tls_rustls::RustlsConfig> {
    // Installing twice is harmless; the first provider stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await
}

impl SignalServer {
    /// Serve on `listener` (TLS when `tls` is given) until `shutdown` is cancelled, taking
    /// connections within `admission`'s caps. Every task it starts is tracked by `tasks`, so
    /// the caller can wait for all of them after cancelling.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        listener: tokio::net::TcpListener,
        tls: Option<axum_server::tls_rustls::RustlsConfig>,
        router: Router,
        limits: ConnLimits,
        admission: Admission,
        observer: Arc<dyn Observer>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> std::io::Result<SignalServer> {
        Self::launch(
            listener,
            tls,
            Some(router),
            limits,
            admission,
            observer,
            shutdown,
            tasks,
        )
    }

    /// The camera's own HTTP endpoints without any room, for a camera joined to a remote
    /// server: `/healthz`, `/metrics` (the observer's part) and the observer's routes
    /// (snapshots, WHEP, MJPEG, HLS, recordings), under the same admission caps, header timeout
    /// and security headers as a room server. `/ws` and the viewer pages are not served.
    #[allow(clippy::too_many_arguments)]
    pub fn start_endpoints(
        listener: tokio::net::TcpListener,
        tls: Option<axum_server::tls_rustls::RustlsConfig>,
        limits: ConnLimits,
        admission: Admission,
        observer: Arc<dyn Observer>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> std::io::Result<SignalServer> {
        Self::launch(
            listener, tls, None, limits, admission, observer, shutdown, tasks,
        )
    }

    /// [`SignalServer::start`] with rooms (`router`) or [`SignalServer::start_endpoints`]
    /// without (`None`: no hub runs, and its requests find it closed).
    #[allow(clippy::too_many_arguments)]
    fn launch(
        listener: tokio::net::TcpListener,
        tls: Option<axum_server::tls_rustls::RustlsConfig>,
        router: Option<Router>,
        limits: ConnLimits,
        admission: Admission,
        observer: Arc<dyn Observer>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> std::io::Result<SignalServer> {
        let local_addr = listener.local_addr()?;
        let header_timeout = limits.header_timeout;
        let (hub_tx, hub_rx) = mpsc::channel(1024);
        let counters = Arc::new(Counters::default());
        let observer_routes = observer.routes();
        let rooms = router.is_some();
        if let Some(router) = router {
            tasks.spawn(hub_loop(
                router,
                hub_rx,
                counters.clone(),
                limits.join_timeout,
                shutdown.clone(),
            ));
        }
        let state = AppState {
            hub: hub_tx.clone(),
            limits,
            observer,
            counters,
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
            admission: admission.clone(),
            rooms,
        };
        let pages = axum::Router::new()
            .route("/", get(|| async { Html(web::INDEX_HTML) }))
            .route("/room/{name}", get(room_page))
            .route(
                "/viewer.js",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                        web::VIEWER_JS,
                    )
                }),
            )
            .route(
                "/index.js",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                        web::INDEX_JS,
                    )
                }),
            )
            .route(
                "/style.css",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
                        web::STYLE_CSS,
                    )
                }),
            )
            .route("/ws", get(ws_upgrade));
        let app = axum::Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics));
        let app = if rooms { app.merge(pages) } else { app }.with_state(state);
        let app = match observer_routes {
            Some(extra) => app.merge(extra),
            None => app,
        }
        .layer(axum::middleware::map_response(security_headers));
        let server = SignalServer {
            local_addr,
            hub: hub_tx,
            app,
            shutdown,
            tasks: tasks.clone(),
            header_timeout,
        };
        let (max_total, max_per_addr) = admission.caps();
        if rooms {
            tracing::info!(%local_addr, tls = tls.is_some(), max_connections = max_total, max_per_address = max_per_addr, "signaling server listening");
        } else {
            tracing::info!(%local_addr, tls = tls.is_some(), max_connections = max_total, max_per_address = max_per_addr, "camera endpoints listening (no rooms here)");
        }
        match tls {
            None => server.serve_plain(listener, admission)?,
            Some(tls) => server.listen_tls(listener, tls, admission)?,
        }
        Ok(server)
    }

    /// Serve the same rooms on another plain listener (the embedded camera's loopback port when
    /// the public one is TLS), with a small connection cap of its own.
    pub fn listen_plain(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let admission = Admission::new(SIDE_LISTENER_CONNECTIONS, SIDE_LISTENER_CONNECTIONS);
        self.serve_plain(listener, admission)
    }

    /// An `axum_server` on `listener` with the admission caps and the header-read timeout.
    fn server_on<Acc>(
        &self,
        listener: tokio::net::TcpListener,
        acceptor: Acc,
    ) -> std::io::Result<axum_server::Server<std::net::SocketAddr, Acc>> {
        let mut server = axum_server::from_tcp(listener.into_std()?)?.acceptor(acceptor);
        server
            .http_builder()
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        Ok(server)
    }

    fn serve_plain(
        &self,
        listener: tokio::net::TcpListener,
        admission: Admission,
    ) -> std::io::Result<()> {
        let acceptor = AdmissionAcceptor::new(admission, self.header_timeout);
        let server = self.server_on(listener, acceptor)?;
        self.spawn_server(server, "signaling server stopped");
        Ok(())
    }

    fn listen_tls(
        &self,
        listener: tokio::net::TcpListener,
        tls: axum_server::tls_rustls::RustlsConfig,
        admission: Admission,
    ) -> std::io::Result<()> {
        let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
            .handshake_timeout(self.header_timeout)
            .acceptor(AdmissionAcceptor::new(admission, self.header_timeout).under_tls());
        let server = self.server_on(listener, acceptor)?;
        self.spawn_server(server, "TLS signaling server stopped");
        Ok(())
    }

    /// Run `server` until shutdown.
    fn spawn_server<Acc>(
        &self,
        server: axum_server::Server<std::net::SocketAddr, Acc>,
        what: &'static str,
    ) where
        Acc: axum_server::accept::Accept<tokio::net::TcpStream, AppService>
            + Clone
            + Send
            + Sync
            + 'static,
        Acc::Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
        Acc::Service:
            axum_server::service::SendService<axum::http::Request<hyper::body::Incoming>> + Send,
        Acc::Future: Send,
    {
        let app = self.app.clone();
        let shutdown = self.shutdown.clone();
        let handle = axum_server::Handle::new();
        let server = server.handle(handle.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                r = server.serve(app.into_make_service_with_connect_info::<std::net::SocketAddr>()) => if let Err(e) = r {
                    tracing::error!(error = %e, "{what}");
                },
                _ = shutdown.cancelled() => handle.shutdown(),
            }
        });
    }

    /// Counts of connections, rooms and members.
    pub async fn stats(&self) -> Option<HubStats> {
        stats(&self.hub).await
    }

    /// A handle that asks the hub task whether it still answers (for the watchdog).
    pub fn probe(&self) -> HubProbe {
        HubProbe {
            hub: self.hub.clone(),
        }
    }
}

/// Asks the hub task, through its own channel, whether it still answers: a hub that is stuck or
/// gone does not, whatever the process's other tasks do.
#[derive(Clone)]
pub struct HubProbe {
    hub: mpsc::Sender<HubEvent>,
}

impl HubProbe {
    /// True when the hub answered (callers bound the wait).
    pub async fn answers(&self) -> bool {
        stats(&self.hub).await.is_some()
    }
}

async fn stats(hub: &mpsc::Sender<HubEvent>) -> Option<HubStats> {
    let (reply, rx) = oneshot::channel();
    hub.send(HubEvent::Stats { reply }).await.ok()?;
    rx.await.ok()
}

/// Headers every response carries: the CSP, no framing, no MIME sniffing, and no Referer
/// (room addresses may carry a token).
async fn security_headers(mut res: Response) -> Response {
    use axum::http::HeaderValue;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(web::CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

async fn room_page(Path(name): Path<String>) -> Response {
    if super::router::valid_room(&name) {
        Html(web::ROOM_HTML).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            "no such room name: 1-64 characters of A-Z a-z 0-9 _ - .",
        )
            .into_response()
    }
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.observer.health() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    // Whatever a proxy on this machine may add when it relays another machine's request.
    let forwarded = ["x-forwarded-for", "x-real-ip", "forwarded", "via"]
        .iter()
        .any(|h| headers.contains_key(*h));
    // HTTP/2 (over TLS) names the host in the request target, not in a Host header.
    let authority = uri.authority().map(|a| a.as_str());
    if let Err(refusal) = metrics_access(
        peer.ip(),
        text(header::HOST).or(authority),
        text(header::AUTHORIZATION),
        forwarded,
        state.limits.metrics_token.as_deref(),
    ) {
        let status = match refusal {
            MetricsRefusal::NeedsToken => StatusCode::UNAUTHORIZED,
            MetricsRefusal::ForeignHost(_) => StatusCode::FORBIDDEN,
        };
        return (
            status,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"campeer metrics\"")],
            format!("{refusal}\n"),
        )
            .into_response();
    }
    let mut out = String::new();
    if !state.rooms {
        // The camera's own listener: no hub, no rooms to report.
        out.push_str(&state.observer.metrics());
        return ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response();
    }
    if let Some(s) = stats(&state.hub).await {
        out.push_str(&format!(
            "# TYPE campeer_signal_connections gauge\ncampeer_signal_connections {}\n\
             # TYPE campeer_signal_rooms gauge\ncampeer_signal_rooms {}\n\
             # TYPE campeer_signal_peers gauge\ncampeer_signal_peers {}\n",
            s.connections, s.rooms, s.members
        ));
    }
    let c = &state.counters;
    out.push_str(&format!(
        "# TYPE campeer_signal_connections_total counter\ncampeer_signal_connections_total {}\n\
         # TYPE campeer_signal_messages_total counter\ncampeer_signal_messages_total {}\n\
         # TYPE campeer_signal_errors_total counter\ncampeer_signal_errors_total {}\n\
         # TYPE campeer_signal_slow_dropped_total counter\ncampeer_signal_slow_dropped_total {}\n\
         # TYPE campeer_signal_join_timeouts_total counter\ncampeer_signal_join_timeouts_total {}\n\
         # TYPE campeer_signal_camera_busy_dropped_total counter\ncampeer_signal_camera_busy_dropped_total {}\n\
         # TYPE campeer_signal_open_connections gauge\ncampeer_signal_open_connections {}\n\
         # TYPE campeer_signal_refused_connections_total counter\ncampeer_signal_refused_connections_total {}\n\
         # TYPE campeer_signal_evicted_connections_total counter\ncampeer_signal_evicted_connections_total {}\n",
        c.connections_total.load(Ordering::Relaxed),
        c.messages_in.load(Ordering::Relaxed),
        c.errors_sent.load(Ordering::Relaxed),
        c.slow_dropped.load(Ordering::Relaxed),
        c.join_timeouts.load(Ordering::Relaxed),
        c.busy_dropped.load(Ordering::Relaxed),
        state.admission.open(),
        state.admission.refused(),
        state.admission.evicted(),
    ));
    out.push_str(&state.observer.metrics());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The peer a relayed message came from (`None` for the server's own messages).
fn relayed_from(msg: &ServerMessage) -> Option<&PeerId> {
    match msg {
        ServerMessage::Offer { from, .. }
        | ServerMessage::Answer { from, .. }
        | ServerMessage::Candidate { from, .. } => Some(from),
        ServerMessage::Error { from, .. } => from.as_ref(),
        _ => None,
    }
}

async fn hub_loop(
    mut router: Router,
    mut rx: mpsc::Receiver<HubEvent>,
    counters: Arc<Counters>,
    join_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut conns: HashMap<PeerId, Conn> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_millis(500).min(join_timeout));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            e = rx.recv() => match e { Some(e) => e, None => break },
            _ = sweep.tick() => {
                close_unjoined(&mut conns, &router, join_timeout, &counters);
                continue;
            }
            _ = shutdown.cancelled() => break,
        };
        let outbox = match event {
            HubEvent::Connect {
                id,
                tx,
                kick,
                camera,
                settle,
                foreign_name,
            } => {
                let unjoined_since = Some(tokio::time::Instant::now());
                conns.insert(
                    id,
                    Conn {
                        tx,
                        kick,
                        camera,
                        unjoined_since,
                        settle,
                        foreign_name,
                    },
                );
                continue;
            }
            HubEvent::Message { id, msg } => {
                let Some(c) = conns.get(&id) else {
                    continue; // dropped as slow while this message was in flight
                };
                let out = router.handle_via(&id, c.foreign_name.as_deref(), msg, SystemTime::now());
                if let Some(c) = conns.get_mut(&id) {
                    match router.role_of(&id) {
                        Some(role) => {
                            c.unjoined_since = None;
                            if let Some(settle) = c.settle.take() {
                                settle.settle();
                            }
                            c.camera.store(role == Role::Camera, Ordering::Relaxed);
                        }
                        None => {
                            c.camera.store(false, Ordering::Relaxed);
                            c.unjoined_since
                                .get_or_insert_with(tokio::time::Instant::now);
                        }
                    }
                }
                out
            }
            HubEvent::Disconnect { id } => {
                conns.remove(&id);
                router.disconnect(&id)
            }
            HubEvent::Stats { reply } => {
                let _ = reply.send(HubStats {
                    connections: conns.len(),
                    rooms: router.room_count(),
                    members: router.member_count(),
                });
                continue;
            }
        };
        deliver(outbox, &mut conns, &mut router, &counters);
    }
    // Shutting down: every connection closes.
    for c in conns.values() {
        c.kick.cancel();
    }
}

/// Deliver in order. A viewer whose queue is full is disconnected, which may produce more
/// messages (its `exit`), delivered after the current batch. Relays to a camera whose queue is
/// nearly full are dropped instead and their sender told, and whatever does not fit a camera's
/// full queue is dropped: viewers cannot push a camera out.
fn deliver(
    outbox: super::router::Outbox,
    conns: &mut HashMap<PeerId, Conn>,
    router: &mut Router,
    counters: &Counters,
) {
    let mut queue: std::collections::VecDeque<_> = outbox.into();
    while let Some((to, msg)) = queue.pop_front() {
        let Some(c) = conns.get(&to) else { continue };
        if let Some(from) = relayed_from(&msg)
            && c.camera.load(Ordering::Relaxed)
            && c.tx.nearly_full()
        {
            counters.busy_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(camera = %to, from = %from, "camera busy: relayed message dropped");
            queue.push_back((
                from.clone(),
                ErrorCode::RateLimited.message(
                    "the camera is busy with other viewers; message dropped, try again shortly",
                ),
            ));
            continue;
        }
        if matches!(msg, ServerMessage::Error { .. }) {
            counters.errors_sent.fetch_add(1, Ordering::Relaxed);
        }
        if c.tx.try_send(msg.to_json()).is_err() {
            if c.camera.load(Ordering::Relaxed) {
                // A camera is never pushed out of its room: what does not fit its queue now
                // (notices and errors a flood of viewers caused) is dropped. A camera whose link
                // is really dead stops answering pings and is closed by its idle timeout.
                counters.busy_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(camera = %to, "camera's queue full: message dropped");
                continue;
            }
            tracing::warn!(peer = %to, "signaling peer too slow: outgoing queue full, disconnecting it");
            counters.slow_dropped.fetch_add(1, Ordering::Relaxed);
            c.kick.cancel();
            conns.remove(&to);
            queue.extend(router.disconnect(&to));
        }
    }
}

/// Close connections that have stayed out of every room for `join_timeout`.
fn close_unjoined(
    conns: &mut HashMap<PeerId, Conn>,
    router: &Router,
    join_timeout: Duration,
    counters: &Counters,
) {
    let now = tokio::time::Instant::now();
    conns.retain(|id, c| {
        let late = c
            .unjoined_since
            .is_some_and(|t| now.duration_since(t) >= join_timeout)
            && router.role_of(id).is_none();
        if late {
            tracing::debug!(peer = %id, "no room joined in time, closing");
            counters.join_timeouts.fetch_add(1, Ordering::Relaxed);
            c.kick.cancel();
        }
        !late
    });
}

async fn ws_upgrade(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    admitted: Option<axum::Extension<Admitted>>,
    ws: WebSocketUpgrade,
) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let origin = get("origin");
    if !origin_allowed(
        origin,
        get("host"),
        get("x-forwarded-host"),
        &state.limits.allowed_origins,
    ) {
        tracing::debug!(origin = ?origin, "WebSocket from another site's page refused");
        return (
            StatusCode::FORBIDDEN,
            "pages of this origin may not use this server (server.allowed-origins)",
        )
            .into_response();
    }
    let (settle, tls) = match admitted {
        Some(axum::Extension(a)) => (Some(a.settle), a.tls),
        None => (None, false),
    };
    // Only a web page can have been sent here by its own DNS name; other clients say Host as
    // they please.
    let foreign_name = match origin {
        Some(_) => ReachedAs::judge(get("host"), tls, &state.limits.host_names).0,
        None => None,
    };
    let tasks = state.tasks.clone();
    // Buffers start small (signaling messages are a few kB) and grow only for larger frames:
    // tungstenite's 128 KiB defaults would cost ~256 KiB per idle connection.
    // A message may be at most twice the configured limit (larger ones close the connection;
    // up to that they get `too-large`): fragments of a larger one are never buffered.
    let max = (state.limits.max_message_bytes.saturating_mul(2)).clamp(64 * 1024, HARD_FRAME_LIMIT);
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| {
            let fut = connection(socket, state, settle, foreign_name);
            async move {
                // Track the connection so shutdown waits for it to close.
                let _ = tasks.spawn(fut).await;
            }
        })
}

/// A new random peer id.
fn new_peer_id() -> PeerId {
    format!("{:016x}", rand::random::<u64>())
}

/// Token bucket for the per-connection message rate.
struct RateLimit {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_second: u32) -> Self {
        let rate = per_second as f64;
        Self {
            tokens: rate * 2.0,
            rate,
            burst: rate * 2.0,
            last: Instant::now(),
        }
    }
    /// Take one token; `scale` multiplies the rate and the burst (a camera's connection).
    fn allow(&mut self, now: Instant, scale: u32) -> bool {
        let scale = f64::from(scale.max(1));
        self.tokens = (self.tokens
            + now.duration_since(self.last).as_secs_f64() * self.rate * scale)
            .min(self.burst * scale);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn connection(
    socket: WebSocket,
    state: AppState,
    settle: Option<Settle>,
    foreign_name: Option<String>,
) {
    let id = new_peer_id();
    state
        .counters
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<String>(OUTGOING_QUEUE);
    let tx = Outgoing {
        tx,
        queued: Default::default(),
    };
    // Cancelled by the hub (too slow, never joined): closes both tasks.
    let kick = CancellationToken::new();
    let camera = Arc::new(AtomicBool::new(false));
    if state
        .hub
        .send(HubEvent::Connect {
            id: id.clone(),
            tx: tx.clone(),
            kick: kick.clone(),
            camera: camera.clone(),
            settle,
            foreign_name,
        })
        .await
        .is_err()
    {
        return;
    }
    let (mut sink, mut stream) = socket.split();
    let ping_every = state.limits.idle_timeout / 3;
    // Stops the writer: the reader's own timeout after it ends, or the hub's kick.
    let writer_stop = kick.child_token();
    let writer = {
        let stop = writer_stop.clone();
        let queued = tx.queued.clone();
        tokio::spawn(async move {
            let mut ping = tokio::time::interval(ping_every);
            ping.tick().await;
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(text) => {
                            let len = text.len();
                            let sent = sink.send(Message::Text(text.into())).await;
                            queued.fetch_sub(len, Ordering::Relaxed);
                            if sent.is_err() { break }
                        }
                        None => break, // the hub dropped us (slow) and the reader is gone
                    },
                    _ = ping.tick() => if sink.send(Message::Ping(Default::default())).await.is_err() { break },
                    _ = stop.cancelled() => break,
                }
            }
            let _ = sink.send(Message::Close(None)).await;
        })
    };
    let mut rate = RateLimit::new(state.limits.messages_per_second);
    let mut refused_in_a_row = 0u32;
    // At most one `rate-limited` notice per second: a flood must not fill its own queue.
    let mut last_notice: Option<Instant> = None;
    let send_own = |msg: ServerMessage| {
        state.counters.errors_sent.fetch_add(1, Ordering::Relaxed);
        // Only the reader adds these, within the rate limit; a queue full of the hub's
        // messages is the hub's to handle.
        let _ = tx.try_send(msg.to_json());
    };
    loop {
        let frame = tokio::select! {
            f = tokio::time::timeout(state.limits.idle_timeout, stream.next()) => f,
            _ = state.shutdown.cancelled() => break,
            _ = kick.cancelled() => break, // dropped by the hub: too slow, or never joined
        };
        let frame = match frame {
            Err(_) => {
                tracing::debug!(peer = %id, "signaling connection idle, closing");
                break;
            }
            Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(f))) => f,
        };
        if let Message::Close(_) = frame {
            break;
        }
        state.counters.messages_in.fetch_add(1, Ordering::Relaxed);
        // Every frame counts against the rate, pings and binary ones too: none of them is free
        // to send in a flood.
        let scale = if camera.load(Ordering::Relaxed) {
            CAMERA_RATE_SCALE
        } else {
            1
        };
        let now = Instant::now();
        if !rate.allow(now, scale) {
            refused_in_a_row += 1;
            if refused_in_a_row > state.limits.messages_per_second.saturating_mul(10) {
                tracing::warn!(peer = %id, "signaling peer keeps flooding, closing it");
                break;
            }
            if last_notice.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                last_notice = Some(now);
                send_own(ErrorCode::RateLimited.message(format!(
                    "more than {} messages per second; messages dropped",
                    state.limits.messages_per_second.saturating_mul(scale)
                )));
            }
            continue;
        }
        refused_in_a_row = 0;
        let text = match frame {
            Message::Text(t) => t,
            Message::Binary(_) => {
                send_own(
                    ErrorCode::BadJson
                        .message("binary frames are not part of the protocol; send JSON text"),
                );
                continue;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => continue,
        };
        if text.len() > state.limits.max_message_bytes {
            send_own(ErrorCode::TooLarge.message(format!(
                "message of {} bytes exceeds the limit of {} bytes",
                text.len(),
                state.limits.max_message_bytes
            )));
            continue;
        }
        match parse_client(text.as_str()) {
            Ok(msg) => {
                if state
                    .hub
                    .send(HubEvent::Message {
                        id: id.clone(),
                        msg,
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Err(e) => send_own(e),
        }
    }
    let _ = state.hub.send(HubEvent::Disconnect { id }).await;
    drop(tx);
    // The writer ends by itself once the hub has dropped its sender too and the queue is
    // flushed; give it a moment, then stop it.
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(1), &mut writer)
        .await
        .is_err()
    {
        writer_stop.cancel();
        let _ = writer.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose queue holds `cap` messages, and the receiving end (kept, unread).
    fn conn(cap: usize, camera: bool) -> (Conn, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(cap);
        let c = Conn {
            tx: Outgoing {
                tx,
                queued: Default::default(),
            },
            kick: CancellationToken::new(),
            camera: Arc::new(AtomicBool::new(camera)),
            unjoined_since: None,
            settle: None,
            foreign_name: None,
        };
        (c, rx)
    }

    #[test]
    fn a_camera_with_a_full_queue_loses_messages_not_its_place() {
        use super::super::router::{Access, Limits};
        let mut router = Router::new(
            Access {
                key: super::super::token::TokenKey::new(b"test".to_vec()),
                open_rooms: ["*".to_string()].into(),
            },
            Limits {
                max_peers_per_room: 8,
                max_rooms: 2,
            },
            Default::default(),
        );
        let join = |role| ClientMessage::Join {
            room: "r".into(),
            role,
            token: None,
            name: None,
            instance: None,
        };
        let now = SystemTime::now();
        router.handle(&"cam".to_string(), join(Role::Camera), now);
        router.handle(&"v1".to_string(), join(Role::Viewer), now);
        let mut conns = HashMap::new();
        let (cam, _cam_rx) = conn(1, true);
        let (v1, _v1_rx) = conn(1, false);
        let (cam_kick, v1_kick) = (cam.kick.clone(), v1.kick.clone());
        conns.insert("cam".to_string(), cam);
        conns.insert("v1".to_string(), v1);
        let counters = Counters::default();
        // More notices for each than their one place holds.
        let notice = |n: u32| ServerMessage::Exit {
            from: format!("gone{n}"),
            room: "r".into(),
        };
        let outbox = (0..3)
            .flat_map(|n| {
                [
                    ("cam".to_string(), notice(n)),
                    ("v1".to_string(), notice(n)),
                ]
            })
            .collect();
        deliver(outbox, &mut conns, &mut router, &counters);
        assert!(conns.contains_key("cam") && !cam_kick.is_cancelled());
        // Two of the three notices, and then the exit of the viewer dropped below.
        assert_eq!(counters.busy_dropped.load(Ordering::Relaxed), 3);
        // A viewer that falls behind is disconnected, as ever.
        assert!(!conns.contains_key("v1") && v1_kick.is_cancelled());
        assert_eq!(router.role_of(&"cam".to_string()), Some(Role::Camera));
    }

    #[test]
    fn metrics_go_to_this_machine_or_the_token_holder() {
        use std::net::IpAddr;
        let lo: IpAddr = "127.0.0.1".parse().unwrap(); // literal: cannot fail
        let lo6: IpAddr = "::1".parse().unwrap(); // literal: cannot fail
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap(); // literal: cannot fail
        let lan: IpAddr = "192.168.1.20".parse().unwrap(); // literal: cannot fail
        let ok = |peer, host| metrics_access(peer, Some(host), None, false, None);
        assert_eq!(ok(lo, "127.0.0.1:8080"), Ok(()));
        assert_eq!(ok(lo, "localhost:8080"), Ok(()));
        assert_eq!(ok(lo, "LOCALHOST"), Ok(()));
        assert_eq!(ok(lo6, "[::1]:8080"), Ok(()));
        assert_eq!(ok(mapped, "127.0.0.1"), Ok(()));
        // A page at evil.example whose name now points here (DNS rebinding).
        assert_eq!(
            ok(lo, "evil.example:8080"),
            Err(MetricsRefusal::ForeignHost("evil.example:8080".into()))
        );
        assert!(ok(lo, "[::1]x").is_err());
        assert_eq!(
            metrics_access(lo, None, None, false, None),
            Err(MetricsRefusal::ForeignHost(String::new()))
        );
        // From the LAN, or relayed by a proxy on this machine: only with the token.
        assert_eq!(ok(lan, "192.168.1.2:8080"), Err(MetricsRefusal::NeedsToken));
        assert_eq!(
            metrics_access(lo, Some("127.0.0.1"), None, true, None),
            Err(MetricsRefusal::NeedsToken)
        );
        let with = |peer, auth| metrics_access(peer, Some("cam.lan"), auth, false, Some("s3cret"));
        assert_eq!(with(lan, Some("Bearer s3cret")), Ok(()));
        assert_eq!(
            with(lan, Some("Bearer s3cre")),
            Err(MetricsRefusal::NeedsToken)
        );
        assert_eq!(
            with(lan, Some("Basic s3cret")),
            Err(MetricsRefusal::NeedsToken)
        );
        assert_eq!(with(lan, None), Err(MetricsRefusal::NeedsToken));
        // A wrong token is refused even from this machine (it was meant to be used).
        assert_eq!(
            metrics_access(
                lo,
                Some("127.0.0.1"),
                Some("Bearer nope"),
                false,
                Some("s3cret")
            ),
            Err(MetricsRefusal::NeedsToken)
        );
    }

    #[test]
    fn the_outgoing_queue_is_bounded_in_bytes_too() {
        let (tx, _rx) = mpsc::channel(OUTGOING_QUEUE);
        let out = Outgoing {
            tx,
            queued: Default::default(),
        };
        let big = "x".repeat(60 * 1024);
        let taken = (0..OUTGOING_QUEUE)
            .take_while(|_| out.try_send(big.clone()).is_ok())
            .count();
        assert_eq!(
            taken,
            OUTGOING_BYTES / big.len(),
            "60 KiB messages in 1 MiB"
        );
        assert!(out.nearly_full());
        // One message larger than the bound still goes out alone.
        let (tx, _rx) = mpsc::channel(OUTGOING_QUEUE);
        let out = Outgoing {
            tx,
            queued: Default::default(),
        };
        assert!(out.try_send("y".repeat(2 * OUTGOING_BYTES)).is_ok());
        assert!(out.try_send("z".into()).is_err());
    }

    #[test]
    fn only_the_servers_own_pages_and_allowed_origins_open_websockets() {
        let none: &[String] = &[];
        // No Origin: not a web page.
        assert!(origin_allowed(None, Some("cam.lan:8080"), None, none));
        // The server's own page, by IP or name, default port or not.
        assert!(origin_allowed(
            Some("http://192.0.2.5:8080"),
            Some("192.0.2.5:8080"),
            None,
            none
        ));
        assert!(origin_allowed(
            Some("https://Cam.Example.com"),
            Some("cam.example.com"),
            None,
            none
        ));
        // Another site's page, a port mismatch, sandboxed pages.
        assert!(!origin_allowed(
            Some("http://evil.example"),
            Some("192.0.2.5:8080"),
            None,
            none
        ));
        assert!(!origin_allowed(
            Some("http://192.0.2.5:9090"),
            Some("192.0.2.5:8080"),
            None,
            none
        ));
        assert!(!origin_allowed(
            Some("null"),
            Some("192.0.2.5:8080"),
            None,
            none
        ));
        assert!(!origin_allowed(
            Some("http://evil.example"),
            None,
            None,
            none
        ));
        // Behind a proxy that rewrites Host, its X-Forwarded-Host names the public host.
        assert!(origin_allowed(
            Some("https://cam.example.com"),
            Some("127.0.0.1:8080"),
            Some("cam.example.com"),
            none
        ));
        // Configured origins, and "*".
        let allowed = ["https://dash.example.com/".to_owned()];
        assert!(origin_allowed(
            Some("https://dash.example.com"),
            Some("192.0.2.5:8080"),
            None,
            &allowed
        ));
        assert!(origin_allowed(
            Some("http://any.example"),
            Some("x"),
            None,
            &["*".to_owned()]
        ));
    }
}
