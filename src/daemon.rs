//! The two long-running modes and their lifecycle: `run` (capture + encode + camera, with the
//! embedded signaling server unless a remote one is configured) and `serve` (signaling server
//! only). Owns start-up order, readiness (`READY=1`), the watchdog, recovery of the media
//! pipeline after device faults, and shutdown: on SIGTERM or Ctrl-C every task is cancelled and
//! waited for, viewers get `exit`, the pipeline goes to NULL.

use crate::camera::{self, CameraAuth, CameraSettings, CameraState};
use crate::config::{Config, TransportPolicy};
use crate::media::bus::Demand;
use crate::media::encoder::EncodeSettings;
use crate::media::pipeline::{MediaPipeline, MediaSettings, PipelineError};
use crate::media::source::{AudioSource, VideoSource};
use crate::notify;
use crate::observe::{CameraObserver, frame_age};
use crate::outputs::access::ViewerAccess;
use crate::outputs::hls::Hls;
use crate::outputs::mjpeg::Mjpeg;
use crate::outputs::record::{self, Recorder, http::Recordings};
use crate::outputs::rtmp::{self, RtmpPush};
use crate::outputs::rtsp::{RtspError, RtspServer, RtspSettings, RtspStats};
use crate::outputs::snapshot::Snapshots;
use crate::outputs::whep::Whep;
use crate::signal::admission::Admission;
use crate::signal::ice::IceProvider;
use crate::signal::protocol::Role;
use crate::signal::router::{Access, Limits, Router};
use crate::signal::server::{ConnLimits, HubProbe, NoObserver, SignalServer};
use crate::signal::token::TokenKey;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Media pipeline.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Listening socket.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Token secret.
    #[error(transparent)]
    Secret(#[from] crate::signal::SecretError),
    /// The RTSP server.
    #[error(transparent)]
    Rtsp(#[from] RtspError),
    /// Signals.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// TLS certificate or key.
    #[error("cannot load TLS certificate {cert} / key {key}: {source}")]
    Tls {
        /// Certificate file.
        cert: String,
        /// Key file.
        key: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Re-reads the configuration (file, environment, flags) on SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<Config, crate::config::ConfigError> + Send + Sync>;

async fn tls_for(
    config: &Config,
) -> Result<Option<axum_server::tls_rustls::RustlsConfig>, DaemonError> {
    let (Some(cert), Some(key)) = (&config.server.tls_cert, &config.server.tls_key) else {
        return Ok(None);
    };
    crate::signal::server::load_tls(cert, key)
        .await
        .map(Some)
        .map_err(|source| DaemonError::Tls {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            source,
        })
}

/// Longest wait for viewers, the camera and the server to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

fn router_for(config: &Config, key: TokenKey) -> Router {
    let open = config.server.open_rooms.iter().cloned().collect();
    Router::new(
        Access {
            key,
            open_rooms: open,
        },
        Limits {
            max_peers_per_room: config.server.max_peers_per_room,
            max_rooms: config.server.max_rooms,
        },
        IceProvider::from_config(&config.ice),
    )
}

fn conn_limits(config: &Config) -> ConnLimits {
    ConnLimits {
        max_message_bytes: config.server.max_message_bytes,
        messages_per_second: config.server.messages_per_second,
        idle_timeout: config.server.idle_timeout,
        join_timeout: config.server.join_timeout,
        header_timeout: config.server.header_timeout,
        allowed_origins: config.server.allowed_origins.clone().into(),
        host_names: config.server.host_names.clone().into(),
        metrics_token: (!config.server.metrics_token.trim().is_empty())
            .then(|| config.server.metrics_token.trim().into()),
    }
}

/// The connection caps of `[server]`.
fn admission(config: &Config) -> Admission {
    // Raise the soft file-descriptor limit to the hard one before counting on it.
    let nofile = crate::signal::admission::nofile_limit();
    tracing::debug!(nofile, "file-descriptor limit");
    let total = match config.server.max_connections {
        0 => crate::signal::admission::default_max_connections(),
        n => n,
    };
    Admission::new(total, config.server.max_connections_per_address)
}

fn announce_open_rooms(config: &Config) {
    if config.server.open_rooms.is_empty() {
        tracing::info!("every room needs a token (server.open-rooms is empty)");
    } else if config.server.open_rooms.iter().any(|r| r == "*") {
        tracing::warn!(
            "ALL rooms are open: anyone who can reach this server can watch and publish"
        );
    } else {
        tracing::warn!(rooms = ?config.server.open_rooms, "these rooms are open to anyone without a token");
    }
    if !config.server.open_rooms.is_empty()
        && IceProvider::from_config(&config.ice).withholds_from_open_rooms()
    {
        tracing::info!(
            "peers of open rooms get no TURN credentials ([ice.turn-rest] for-open-rooms = false)"
        );
    }
}

/// Say so when tokens cross the network in clear: plain http on an address other machines
/// reach. A warning for `serve` (a public host); for `run`, whose page is meant for the LAN,
/// information.
fn warn_if_clear(listener: &tokio::net::TcpListener, tls: bool, public: bool) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    if tls || addr.ip().is_loopback() {
        return;
    }
    let why = "plain http: tokens and signaling cross the network in clear; set server.tls-cert and server.tls-key for https/wss";
    if public {
        tracing::warn!(%addr, "{why}");
    } else {
        tracing::info!(%addr, "{why}");
    }
}

async fn bind(addr: &str) -> Result<tokio::net::TcpListener, DaemonError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: addr.to_owned(),
            source,
        })
}

/// Catch SIGTERM and SIGINT from now on (one arriving during start-up is kept, not fatal); the
/// future resolves when one has arrived.
fn terminate_signal() -> Result<impl std::future::Future<Output = ()>, DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("interrupted: shutting down"),
        }
    })
}

async fn wait_tasks(tasks: TaskTracker) {
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not finish within {SHUTDOWN_GRACE:?}; exiting anyway");
    }
}

/// `campeer serve`: the standalone signaling server.
pub async fn serve(config: Config, reload: Reload) -> Result<(), DaemonError> {
    let signal = terminate_signal()?;
    let key = TokenKey::new(crate::signal::load_secret(&config)?);
    announce_open_rooms(&config);
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let tls = tls_for(&config).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = bind(&config.server.listen).await?;
    warn_if_clear(&listener, tls.is_some(), true);
    let server = SignalServer::start(
        listener,
        tls.clone(),
        router_for(&config, key),
        conn_limits(&config),
        admission(&config),
        Arc::new(NoObserver),
        shutdown.clone(),
        &tasks,
    )
    .map_err(|source| DaemonError::Listen {
        addr: config.server.listen.clone(),
        source,
    })?;
    println!(
        "campeer signaling server on {scheme}://{}/ (WebSocket /ws)",
        server.local_addr
    );
    notify::notify("READY=1\nSTATUS=serving");
    spawn_watchdog(&tasks, shutdown.clone(), Some(server.probe()));
    spawn_reload(&tasks, shutdown.clone(), reload, tls, None);
    signal.await;
    notify::notify("STOPPING=1");
    shutdown.cancel();
    wait_tasks(tasks).await;
    Ok(())
}

/// Keep-alives for systemd's watchdog, sent only while the signaling hub (when this process
/// runs one) answers: a hub that is stuck or gone stops them, and systemd restarts campeer.
fn spawn_watchdog(tasks: &TaskTracker, shutdown: CancellationToken, hub: Option<HubProbe>) {
    let Some(every) = notify::watchdog_interval() else {
        return;
    };
    let alive = move || {
        let hub = hub.clone();
        async move {
            match hub {
                Some(h) => h.answers().await,
                None => true,
            }
        }
    };
    tasks.spawn(keepalives(
        every,
        alive,
        || {
            notify::notify("WATCHDOG=1");
        },
        shutdown,
    ));
}

/// Every `every`: `send` a keep-alive if `alive` says yes within that time, else withhold it
/// (saying so once per outage).
async fn keepalives<A, F>(
    every: Duration,
    alive: A,
    mut send: impl FnMut(),
    shutdown: CancellationToken,
) where
    A: Fn() -> F,
    F: std::future::Future<Output = bool>,
{
    let mut tick = tokio::time::interval(every);
    let mut withheld = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        // Answered within half the interval, so keep-alives stay an interval apart at most.
        if tokio::time::timeout(every / 2, alive())
            .await
            .unwrap_or(false)
        {
            send();
            if withheld {
                tracing::info!("the signaling hub answers again: watchdog keep-alives resumed");
            }
            withheld = false;
        } else if !withheld {
            tracing::error!(
                "the signaling hub does not answer: watchdog keep-alives withheld (systemd restarts campeer when its WatchdogSec passes)"
            );
            withheld = true;
        }
    }
}

/// How often a camera that is gone is looked for.
const ABSENT_POLL: Duration = Duration::from_millis(200);

/// How long a snapshot request waits for a picture (an idle camera starts first).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

fn media_settings(config: &Config) -> Result<MediaSettings, PipelineError> {
    // Both parsed by Config::validate already; a failure here is a bug reported as a build error.
    let video = VideoSource::parse(&config.video.source).map_err(|m| PipelineError::Build {
        what: "video",
        message: m,
    })?;
    let audio = AudioSource::parse(&config.audio.source).map_err(|m| PipelineError::Build {
        what: "audio",
        message: m,
    })?;
    let fps = config.video.framerate;
    let gop = ((config.video.keyframe_interval.as_secs_f64() * fps as f64).round() as u32).max(1);
    Ok(MediaSettings {
        video,
        audio,
        encoder: config.video.encoder.clone(),
        encode: EncodeSettings {
            width: config.video.width,
            height: config.video.height,
            framerate: fps,
            bitrate_kbps: config.video.bitrate_kbps,
            gop,
        },
        audio_bitrate_kbps: config.audio.bitrate_kbps,
        vp8_fallback: config.video.fallback == crate::config::Fallback::Vp8,
        camera_h264: config.video.camera_h264,
        // Checked by Config::validate; an invalid value here means no lower rung.
        lower_rungs: config.video.lower_rungs().unwrap_or_default(),
    })
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "campeer".into())
}

/// What a bus message says went wrong, if anything.
fn pipeline_problem(msg: &gstreamer::Message) -> Option<String> {
    use gstreamer::MessageView;
    use gstreamer::prelude::GstObjectExt;
    match msg.view() {
        MessageView::Error(e) => {
            let src = msg.src().map(|s| s.name().to_string()).unwrap_or_default();
            let debug = e.debug().map(|d| d.to_string()).unwrap_or_default();
            Some(format!("{src}: {} ({debug})", e.error()))
        }
        MessageView::Eos(_) => Some("end of stream from the source".to_owned()),
        MessageView::Application(a)
            if a.structure()
                .is_some_and(|s| s.name() == crate::media::pipeline::VIDEO_EOS) =>
        {
            Some("end of stream from the source".to_owned())
        }
        _ => None,
    }
}

/// Keep the pipeline playing while capture is wanted (`demand`: always-on, or viewers present)
/// and stopped while it is not. On an error on its bus (device unplugged, busy, I/O error),
/// end-of-stream, or no video frame for `stall` (a camera or loopback writer that went quiet
/// without an error), log it with the element that failed and restart the pipeline with
/// backoff (at most 1 s apart for the first minute of an outage) until it plays again. The
/// daemon never exits for a device fault, and viewers stay connected through it.
fn spawn_media_supervisor(
    media: Arc<MediaPipeline>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
    mut playing: bool,
    mut demand: watch::Receiver<bool>,
    stall: Duration,
) {
    let Some(bus) = media.bus() else { return };
    tasks.spawn(async move {
        use futures_util::{FutureExt, StreamExt};
        let mut messages = bus.stream();
        let mut attempt = 0u32;
        // The last start failed (or the pipeline broke): wait a backoff before the next try.
        let mut failing = !playing && *demand.borrow();
        let mut failing_since = failing.then(tokio::time::Instant::now);
        // The camera was found missing: said once, until it is back.
        let mut waiting_for_device = false;
        let mut stall_check = tokio::time::interval(Duration::from_secs(1));
        stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wanted = *demand.borrow_and_update();
            if playing && !wanted {
                media.stop();
                playing = false;
                failing = false;
                attempt = 0;
                tracing::info!(source = %media.source, "no viewers: capture stopped");
                continue;
            }
            if playing {
                let problem = tokio::select! {
                    m = messages.next() => match m {
                        Some(m) => pipeline_problem(&m),
                        None => break,
                    },
                    _ = stall_check.tick() => {
                        let age = frame_age(&media);
                        (age > stall).then(|| format!(
                            "no video frame for {:.1} s (camera unplugged or stalled)",
                            age.as_secs_f64()
                        ))
                    }
                    r = demand.changed() => { if r.is_err() { break } continue }
                    _ = shutdown.cancelled() => break,
                };
                if let Some(problem) = problem {
                    tracing::error!(source = %media.source, %problem, "media pipeline failed; restarting it");
                    media.stop();
                    playing = false;
                    failing = true;
                    failing_since = Some(tokio::time::Instant::now());
                }
                continue;
            }
            if !wanted {
                tokio::select! {
                    r = demand.changed() => if r.is_err() { break },
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            if failing {
                // A camera that is gone is waited for with a cheap check every ABSENT_POLL, not
                // with starts that must fail, and is started as soon as it is back.
                let m = media.clone();
                let absent = tokio::task::spawn_blocking(move || m.source_absent())
                    .await
                    .unwrap_or_default();
                if let Some(why) = absent {
                    if !waiting_for_device {
                        tracing::warn!(source = %media.source, %why, "camera not there; waiting for it");
                        waiting_for_device = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(ABSENT_POLL) => {}
                        r = demand.changed() => { if r.is_err() { break } }
                        _ = shutdown.cancelled() => break,
                    }
                    continue;
                }
                if waiting_for_device {
                    tracing::info!(source = %media.source, "camera is back; starting it");
                    waiting_for_device = false;
                } else {
                    let wait =
                        camera::reconnect_backoff(attempt, failing_since.map(|t| t.elapsed()));
                    attempt = (attempt + 1).min(8);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        r = demand.changed() => { if r.is_err() { break } continue }
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
            // What the previous run left on the bus.
            while let Some(Some(msg)) = messages.next().now_or_never() {
                if let Some(problem) = pipeline_problem(&msg) {
                    tracing::debug!(%problem, "earlier pipeline message");
                }
            }
            media.stop();
            let m = media.clone();
            match tokio::task::spawn_blocking(move || m.start(Duration::from_secs(5))).await {
                Ok(Ok(())) => {
                    if failing {
                        tracing::info!(source = %media.source, "media pipeline playing again");
                    } else {
                        tracing::info!(source = %media.source, "a viewer arrived: capture started");
                    }
                    attempt = 0;
                    failing = false;
                    failing_since = None;
                    playing = true;
                }
                Ok(Err(e)) => {
                    failing = true;
                    failing_since.get_or_insert_with(tokio::time::Instant::now);
                    tracing::warn!(source = %media.source, error = %e, "media pipeline still failing")
                }
                Err(e) => {
                    failing = true;
                    tracing::warn!(error = %e, "pipeline restart task failed")
                }
            }
        }
    });
}

/// Capture demand from the consumer count (viewers, snapshots): on with the first consumer, off
/// `idle_stop` after the last one leaves.
fn spawn_demand(
    tasks: &TaskTracker,
    shutdown: CancellationToken,
    mut consumers: watch::Receiver<usize>,
    demand: watch::Sender<bool>,
    idle_stop: Duration,
) {
    tasks.spawn(async move {
        loop {
            let n = *consumers.borrow_and_update();
            if n > 0 {
                demand.send_replace(true);
            } else if *demand.borrow() {
                tokio::select! {
                    _ = tokio::time::sleep(idle_stop) => {
                        if *consumers.borrow() == 0 {
                            demand.send_replace(false);
                        }
                        continue;
                    }
                    r = consumers.changed() => { if r.is_err() { break } continue }
                    _ = shutdown.cancelled() => break,
                }
            }
            tokio::select! {
                r = consumers.changed() => if r.is_err() { break },
                _ = shutdown.cancelled() => break,
            }
        }
    });
}

/// `addr` as this machine reaches it: loopback for an unspecified (all-interfaces) address.
fn loopback_for(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

/// `/healthz`, `/metrics` and the HTTP routes of every output (snapshots, WHEP, MJPEG, HLS,
/// recordings) of a camera whose viewer tokens `key` checks.
#[allow(clippy::too_many_arguments)]
fn camera_observer(
    config: &Config,
    key: &TokenKey,
    media: &Arc<MediaPipeline>,
    consumers: &Demand,
    camera: &Arc<CameraState>,
    demand: &watch::Receiver<bool>,
    recorder: &Arc<Recorder>,
    pushes: &[Arc<RtmpPush>],
    rtsp: Option<Arc<RtspStats>>,
    calls: &mpsc::Sender<camera::CallCommand>,
) -> Arc<CameraObserver> {
    let viewer_access = ViewerAccess::new(
        Access {
            key: key.clone(),
            open_rooms: config.server.open_rooms.iter().cloned().collect(),
        },
        config.camera.room.clone(),
        config.server.host_names.clone().into(),
    );
    let snapshots = Arc::new(Snapshots::new(
        media.clone(),
        consumers.clone(),
        viewer_access.clone(),
        config.video.framerate,
        SNAPSHOT_TIMEOUT,
    ));
    let hls = config.hls.enabled.then(|| {
        Arc::new(Hls::new(
            media.clone(),
            consumers.clone(),
            viewer_access.clone(),
            config.video.keyframe_interval,
            config.hls.idle_stop,
            config.server.allowed_origins.clone().into(),
        ))
    });
    Arc::new(CameraObserver {
        media: media.clone(),
        camera: camera.clone(),
        stall: config.camera.stall_timeout,
        demand: demand.clone(),
        mjpeg: (config.camera.mjpeg_fps > 0)
            .then(|| Arc::new(Mjpeg::new(snapshots.clone(), config.camera.mjpeg_fps))),
        snapshots,
        rtmp: pushes.to_vec(),
        rtsp,
        hls,
        recordings: Arc::new(Recordings {
            recorder: recorder.clone(),
            access: viewer_access.clone(),
        }),
        whep: Arc::new(Whep::new(
            viewer_access,
            calls.clone(),
            IceProvider::from_config(&config.ice),
            config.server.allowed_origins.clone().into(),
        )),
    })
}

/// The RTSP server on `rtsp.listen`, fed from `media`'s bus.
fn start_rtsp(
    config: &Config,
    media: &Arc<MediaPipeline>,
    consumers: &Demand,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<RtspServer, DaemonError> {
    let listen = config
        .rtsp
        .listen
        .parse::<SocketAddr>()
        .map_err(|e| RtspError::Listen {
            addr: config.rtsp.listen.clone(),
            why: e.to_string(),
        })?;
    let settings = RtspSettings {
        listen,
        room: config.camera.room.clone(),
        credentials: (!config.rtsp.open)
            .then(|| (config.rtsp.user.clone(), config.rtsp.password.clone())),
    };
    if config.rtsp.open {
        tracing::warn!(listen = %listen, "RTSP is open: anyone who reaches the port watches the camera");
    }
    Ok(RtspServer::start(
        &settings,
        media.clone(),
        consumers.clone(),
        tokio::runtime::Handle::current(),
        tasks.clone(),
        shutdown.clone(),
    )?)
}

/// The endpoints of a camera joined to a remote server, on `server.listen` (TLS when
/// configured): its address and TLS configuration.
async fn serve_endpoints(
    config: &Config,
    observer: Arc<CameraObserver>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<(SocketAddr, Option<axum_server::tls_rustls::RustlsConfig>), DaemonError> {
    let tls = tls_for(config).await?;
    let listener = bind(&config.server.listen).await?;
    warn_if_clear(&listener, tls.is_some(), false);
    let server = SignalServer::start_endpoints(
        listener,
        tls.clone(),
        conn_limits(config),
        admission(config),
        observer,
        shutdown,
        tasks,
    )
    .map_err(|source| DaemonError::Listen {
        addr: config.server.listen.clone(),
        source,
    })?;
    Ok((server.local_addr, tls))
}

/// `campeer run`: the camera daemon.
pub async fn run(config: Config, reload: Reload) -> Result<(), DaemonError> {
    let signal = terminate_signal()?;
    let settings = media_settings(&config)?;
    let media = {
        let s = settings.clone();
        tokio::task::spawn_blocking(move || MediaPipeline::build(&s))
            .await
            .map_err(|e| PipelineError::Init(e.to_string()))??
    };
    let media = Arc::new(media);
    tracing::info!(
        source = %media.source,
        encoder = %media.encoder,
        hardware = media.encoder.is_hardware(),
        width = settings.encode.width,
        height = settings.encode.height,
        fps = settings.encode.framerate,
        kbps = settings.encode.bitrate_kbps,
        audio = %config.audio.source,
        "media pipeline built"
    );
    let always_on = config.camera.always_on;
    let playing = always_on
        && {
            let m = media.clone();
            match tokio::task::spawn_blocking(move || m.start(Duration::from_secs(10)))
                .await
                .map_err(|e| PipelineError::Init(e.to_string()))?
            {
                Ok(()) => true,
                Err(e) => {
                    // A camera that is missing or busy now may come back: keep serving the room
                    // (and /healthz, which reports the fault) and retry with backoff.
                    tracing::error!(source = %media.source, error = %e, "cannot start capture; retrying");
                    false
                }
            }
        };
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (demand_tx, demand_rx) = watch::channel(always_on);
    // Every consumer's share: the room's viewers, snapshots being taken.
    let consumers = Demand::new();
    spawn_media_supervisor(
        media.clone(),
        &tasks,
        shutdown.clone(),
        playing,
        demand_rx.clone(),
        config.camera.stall_timeout,
    );
    if !always_on {
        tracing::info!(idle_stop = ?config.camera.idle_stop, "capture starts with the first viewer");
        spawn_demand(
            &tasks,
            shutdown.clone(),
            consumers.watch(),
            demand_tx,
            config.camera.idle_stop,
        );
    }

    let pushes: Vec<Arc<RtmpPush>> = config
        .rtmp
        .iter()
        .map(|t| Arc::new(RtmpPush::new(t.url.clone())))
        .collect();
    for p in &pushes {
        tracing::info!(target_url = %p.shown, "pushing the stream over RTMP");
        tasks.spawn(rtmp::run(
            p.clone(),
            media.clone(),
            consumers.clone(),
            shutdown.clone(),
        ));
    }
    let recorder = Arc::new(Recorder::new(&config.record));
    tasks.spawn(record::run(
        recorder.clone(),
        media.clone(),
        consumers.clone(),
        shutdown.clone(),
    ));

    let rtsp = match config.rtsp.enabled {
        true => Some(start_rtsp(&config, &media, &consumers, &tasks, &shutdown)?),
        false => None,
    };

    let camera_state = Arc::new(CameraState::default());
    let embedded = config.camera.signal_url.is_empty();
    // Calls from outside the room (WHEP) reach the camera task through this.
    let (calls_tx, calls_rx) = mpsc::channel(64);
    let mut server_tls = None;
    let mut hub = None;
    // Viewer tokens for the camera's rooms and its own endpoints are checked with this key. A
    // camera joined to a remote server needs it only for its endpoints, and streams on without.
    let key = match crate::signal::load_secret(&config) {
        Ok(secret) => Some(TokenKey::new(secret)),
        Err(e) if embedded => return Err(e.into()),
        Err(e) => {
            tracing::error!(error = %e, "no secret for viewer tokens: the camera's own endpoints (/healthz, /metrics, /snapshot.jpg, /whep) are off");
            None
        }
    };
    let observer = key.as_ref().map(|k| {
        camera_observer(
            &config,
            k,
            &media,
            &consumers,
            &camera_state,
            &demand_rx,
            &recorder,
            &pushes,
            rtsp.as_ref().map(|r| r.stats.clone()),
            &calls_tx,
        )
    });
    // HLS segments live in a temporary directory, removed at exit.
    let hls_output = observer.as_ref().and_then(|o| o.hls.clone());
    let mut endpoints = None;
    let (signal_url, page_base) = match (&key, observer) {
        (Some(k), Some(observer)) if embedded => {
            announce_open_rooms(&config);
            let tls = tls_for(&config).await?;
            let listener = bind(&config.server.listen).await?;
            warn_if_clear(&listener, tls.is_some(), false);
            let server = SignalServer::start(
                listener,
                tls.clone(),
                router_for(&config, k.clone()),
                conn_limits(&config),
                admission(&config),
                observer,
                shutdown.clone(),
                &tasks,
            )
            .map_err(|source| DaemonError::Listen {
                addr: config.server.listen.clone(),
                source,
            })?;
            hub = Some(server.probe());
            let addr = server.local_addr;
            let local = loopback_for(addr);
            let camera_url = if tls.is_some() {
                // The camera reaches its own server over a plain loopback port, so it needs no
                // trust in the (often self-signed) certificate browsers see.
                let side = bind("127.0.0.1:0").await?;
                let side_addr = side.local_addr().map_err(|source| DaemonError::Listen {
                    addr: "127.0.0.1:0".into(),
                    source,
                })?;
                server
                    .listen_plain(side)
                    .map_err(|source| DaemonError::Listen {
                        addr: "127.0.0.1:0".into(),
                        source,
                    })?;
                format!("ws://{side_addr}/ws")
            } else {
                format!("ws://{local}/ws")
            };
            server_tls = tls;
            (camera_url, Some((addr, local)))
        }
        // A remote server (an embedded one always has its key and observer, or returned above).
        (_, observer) => {
            // Its own endpoints are a side door: the camera streams to its room without them.
            if let Some(observer) = observer {
                match serve_endpoints(&config, observer, shutdown.clone(), &tasks).await {
                    Ok((addr, tls)) => {
                        endpoints = Some(addr);
                        server_tls = tls;
                    }
                    Err(e) => tracing::error!(
                        error = %e,
                        "the camera's own endpoints (/healthz, /metrics, /snapshot.jpg, /whep) are off"
                    ),
                }
            }
            (config.camera.signal_url.clone(), None)
        }
    };

    // Only with the embedded server does the camera mint its own camera token.
    let mint_key = key.as_ref().filter(|_| embedded);
    let auth = match (mint_key, config.camera.token.is_empty()) {
        (_, false) => CameraAuth::Token(config.camera.token.clone()),
        (Some(k), true)
            if !config
                .server
                .open_rooms
                .iter()
                .any(|r| r == "*" || *r == config.camera.room) =>
        {
            CameraAuth::Mint(k.clone())
        }
        _ => CameraAuth::None,
    };
    let name = if config.camera.name.is_empty() {
        host_name()
    } else {
        config.camera.name.clone()
    };
    let cam_settings = CameraSettings {
        signal_url: signal_url.clone(),
        room: config.camera.room.clone(),
        name,
        auth,
        max_viewers: config.camera.max_viewers,
        ice: IceProvider::from_config(&config.ice),
        relay_only: config.ice.transport_policy == TransportPolicy::Relay,
        relay_when_turn: config.ice.transport_policy == TransportPolicy::Auto && !embedded,
        udp_addrs: config.camera.rtc_bind.clone(),
        mdns: config.camera.mdns,
        playout_delay_zero: config.camera.latency == crate::config::LatencyMode::Lowest,
        connect_timeout: config.camera.connect_timeout,
        viewer_demand: Some(Arc::new(consumers.counter())),
        signal_ca: config.camera.signal_ca.clone(),
    };
    // Keep-alives start now: waiting for an unreachable remote server is not a hang.
    spawn_watchdog(&tasks, shutdown.clone(), hub);
    let (ready_tx, mut ready_rx) = watch::channel(false);
    tasks.spawn(camera::run(
        cam_settings,
        media.clone(),
        camera_state.clone(),
        ready_tx,
        calls_rx,
        shutdown.clone(),
    ));

    // READY=1 once the pipeline plays (above) and the camera has joined its room.
    let ready = async {
        while !*ready_rx.borrow_and_update() {
            if ready_rx.changed().await.is_err() {
                break;
            }
        }
    };
    tokio::pin!(signal);
    // A signal before readiness (a camera that never reaches its room) ends the daemon the same
    // way as one after it: one shutdown path.
    let early = tokio::select! {
        _ = ready => false,
        _ = &mut signal => true,
    };
    if !early {
        notify::notify("READY=1\nSTATUS=streaming");
        print_ready(&config, mint_key, page_base, &signal_url, endpoints);
        if let Some(r) = &rtsp
            && let Ok(listen) = config.rtsp.listen.parse::<SocketAddr>()
        {
            let room = &config.camera.room;
            let bound = SocketAddr::new(listen.ip(), r.port);
            println!("  RTSP: rtsp://{}/{room}", loopback_for(bound));
            // On every interface: the address other machines (NVRs, VLC) use.
            if listen.ip().is_unspecified() {
                println!("  RTSP: rtsp://{}:{}/{room}", host_name(), r.port);
            }
        }
        spawn_reload(
            &tasks,
            shutdown.clone(),
            reload,
            server_tls,
            Some((media.clone(), config.video.bitrate_kbps)),
        );
        signal.await;
    }
    notify::notify("STOPPING=1");
    shutdown.cancel();
    if let Some(r) = rtsp {
        // Closes its clients' connections and ends its loop's thread.
        let _ = tokio::task::spawn_blocking(move || r.stop()).await;
    }
    wait_tasks(tasks).await;
    if let Some(h) = hls_output {
        h.remove_files();
    }
    media.stop();
    Ok(())
}

/// SIGHUP: re-read the configuration and apply what is safe while running: the TLS
/// certificate and key (renewed certificates), and the video bitrate. Everything else needs a
/// restart, and the log says so.
fn spawn_reload(
    tasks: &TaskTracker,
    shutdown: CancellationToken,
    reload: Reload,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    media: Option<(Arc<MediaPipeline>, u32)>,
) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP; reload disabled");
        return;
    };
    tasks.spawn(async move {
        let mut bitrate = media.as_ref().map(|(_, b)| *b);
        loop {
            tokio::select! {
                _ = hup.recv() => {}
                _ = shutdown.cancelled() => break,
            }
            let config = match reload() {
                Ok(c) => c,
                Err(e) => {
                    // One log line: toml's messages span several lines.
                    let error = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
                    tracing::error!(%error, "SIGHUP: configuration not reloaded (keeping the running one)");
                    continue;
                }
            };
            if let (Some(tls), Some(cert), Some(key)) = (&tls, &config.server.tls_cert, &config.server.tls_key) {
                match tls.reload_from_pem_file(cert, key).await {
                    Ok(()) => tracing::info!(cert = %cert.display(), "SIGHUP: TLS certificate reloaded"),
                    Err(e) => tracing::error!(cert = %cert.display(), error = %e, "SIGHUP: TLS certificate not reloaded"),
                }
            }
            if let (Some((m, _)), Some(old)) = (&media, bitrate) {
                if config.video.bitrate_kbps != old {
                    m.set_bitrate(config.video.bitrate_kbps);
                    bitrate = Some(config.video.bitrate_kbps);
                }
            }
            tracing::info!("SIGHUP: configuration reloaded (bitrate and TLS apply now; other changes need a restart)");
        }
    });
}

fn print_ready(
    config: &Config,
    key: Option<&TokenKey>,
    page_base: Option<(SocketAddr, SocketAddr)>,
    signal_url: &str,
    endpoints: Option<SocketAddr>,
) {
    let room = &config.camera.room;
    let open = config
        .server
        .open_rooms
        .iter()
        .any(|r| r == "*" || r == room);
    let scheme = if config.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let Some((bound, local)) = page_base else {
        println!("campeer is streaming to room {room:?} on {signal_url}");
        if let Some(addr) = endpoints {
            let base = format!("{scheme}://{}", loopback_for(addr));
            println!(
                "  this camera's own endpoints: {base}/healthz {base}/metrics {base}/snapshot.jpg {base}/whep/{room}"
            );
        }
        return;
    };
    // Under systemd, stdout is the journal: a token printed there at every start stays readable
    // for as long as the journal keeps it (and the token for 30 days). The address goes there
    // without one.
    let to_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let query = match (open, key) {
        (false, Some(_)) if to_journal => String::new(),
        (false, Some(k)) => format!(
            "?token={}",
            k.sign(
                room,
                Role::Viewer,
                Duration::from_secs(30 * 24 * 3600),
                SystemTime::now()
            )
        ),
        _ => String::new(),
    };
    println!("campeer is streaming. Open the room in a browser:");
    println!("  {scheme}://{local}/room/{room}{query}");
    if bound.ip().is_unspecified() {
        println!(
            "  {scheme}://{}:{}/room/{room}{query}",
            host_name(),
            bound.port()
        );
    }
    if !open && to_journal {
        println!(
            "(viewers need a token: `campeer token --room {room}` prints one; add it to the address as ?token=…)"
        );
    } else if !open {
        println!(
            "(the token in the address admits viewers to room {room:?} for 30 days; `campeer token` makes more)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Keep-alives go out while the hub answers, stop while it does not (or hangs), and resume.
    #[tokio::test(start_paused = true)]
    async fn keepalives_follow_the_hub() {
        let every = Duration::from_secs(10);
        let answers = Arc::new(AtomicBool::new(true));
        let hangs = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let (a, h, s) = (answers.clone(), hangs.clone(), sent.clone());
        let task = tokio::spawn(keepalives(
            every,
            move || {
                let (a, h) = (a.clone(), h.clone());
                async move {
                    if h.load(Ordering::Relaxed) {
                        std::future::pending::<()>().await;
                    }
                    a.load(Ordering::Relaxed)
                }
            },
            move || {
                s.fetch_add(1, Ordering::Relaxed);
            },
            shutdown.clone(),
        ));
        let at = |secs| {
            tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(secs))
        };
        at(25).await; // ticks at 0, 10, 20
        assert_eq!(sent.load(Ordering::Relaxed), 3);
        answers.store(false, Ordering::Relaxed);
        at(20).await; // 30, 40: refused
        assert_eq!(
            sent.load(Ordering::Relaxed),
            3,
            "a hub that says no gets no keep-alive"
        );
        answers.store(true, Ordering::Relaxed);
        hangs.store(true, Ordering::Relaxed);
        at(30).await; // 50, 60 (+10 s waits each): hangs
        assert_eq!(
            sent.load(Ordering::Relaxed),
            3,
            "a hub that hangs gets no keep-alive"
        );
        hangs.store(false, Ordering::Relaxed);
        at(30).await;
        assert!(sent.load(Ordering::Relaxed) >= 5, "keep-alives resume");
        shutdown.cancel();
        task.await.expect("the loop ends on shutdown");
    }
}
