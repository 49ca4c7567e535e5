//! The RTSP server (`[rtsp]`): `rtsp://host:port/<room>` for NVRs and players that pull RTSP
//! (Frigate, Home Assistant's stream, Blue Iris, ZoneMinder, VLC, ffmpeg), on GStreamer's RTSP
//! server library (`libgstrtspserver-1.0`).
//!
//! Owns the server, the GLib main loop it runs on (a thread of its own), its credentials and the
//! feed. Every client of the room's path shares one media: when the first client asks for it,
//! the library builds its small pipeline (appsrc → h264parse → rtph264pay, appsrc →
//! rtpopuspay) and, once it is prepared, a task feeds it from the media bus (from a keyframe,
//! holding a share of capture demand) until the library lets the media go after the last
//! client. Nothing is encoded again: clients get the viewers' H.264 with SPS/PPS before every
//! keyframe, and each PLAY asks the encoder for a keyframe (throttled), so a client joining a
//! running feed does not wait a whole GOP. Frames keep the encoder's timestamps, moved onto the
//! media's clock ([`Timeline`]). A wrong user or password is refused (401), counted,
//! and logged with the client's address.

use crate::camera::warn_gate::{WarnGate, warn_gated};
use crate::media::bus::{Delivery, Demand, DemandGuard, KeyframeSource, Subscription};
use crate::media::pipeline::{EncodedFrame, MediaPipeline};
use glib::subclass::prelude::*;
use glib::translate::ToGlibPtr;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server as rtsp;
use rtsp::prelude::*;
use rtsp::subclass::prelude::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bytes an appsrc of the RTSP feed holds before it drops what comes next (a media whose
/// pipeline stopped taking data); about 10 s of a 3 Mbit/s stream.
const APPSRC_MAX_BYTES: u64 = 4_000_000;
/// Refused credentials are logged at most this often (a client guessing passwords would
/// otherwise flood the journal); the rest go to debug.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the RTSP server reports in `/metrics`.
#[derive(Debug, Default)]
pub struct RtspStats {
    /// Clients connected now.
    pub clients: AtomicU64,
    /// Clients that ever connected.
    pub clients_total: AtomicU64,
    /// Requests refused for a wrong user or password.
    pub refused: AtomicU64,
    /// Feeds from the bus running now (one while any client plays: the media is shared).
    pub feeds: AtomicU64,
    /// Video frames handed to RTSP feeds.
    pub frames: AtomicU64,
}

/// Why the RTSP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum RtspError {
    /// The listener could not be opened.
    #[error("cannot serve RTSP on {addr}: {why}")]
    Listen {
        /// The configured address.
        addr: String,
        /// Why.
        why: String,
    },
}

/// What the RTSP server serves and to whom.
#[derive(Debug, Clone)]
pub struct RtspSettings {
    /// The listener.
    pub listen: SocketAddr,
    /// The room: the path is `/<room>`.
    pub room: String,
    /// User and password clients must give; `None` serves anyone (`rtsp.open`).
    pub credentials: Option<(String, String)>,
}

/// A running RTSP server. Dropping it leaves it running; [`RtspServer::stop`] ends it.
pub struct RtspServer {
    /// The port it listens on (the configured one, or the one the system chose for port 0).
    pub port: u16,
    /// Its figures.
    pub stats: Arc<RtspStats>,
    server: rtsp::RTSPServer,
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The media's launch description: the library wraps it in a bin, and its payloaders named
/// `pay0`, `pay1` become the streams.
fn launch(audio: bool) -> String {
    let src = |name: &str| {
        format!(
            "appsrc name={name} is-live=true format=time do-timestamp=true max-bytes={APPSRC_MAX_BYTES} leaky-type=downstream"
        )
    };
    let mut desc = format!(
        "( {} ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 config-interval=-1",
        src("rtspv")
    );
    if audio {
        desc.push_str(&format!(" {} ! rtpopuspay name=pay1 pt=97", src("rtspa")));
    }
    desc.push_str(" )");
    desc
}

impl RtspServer {
    /// Serve `media` as `settings` say. Feeds hold shares of `demand`; their tasks run on
    /// `runtime`, tracked by `tasks`, and end with `shutdown`.
    pub fn start(
        settings: &RtspSettings,
        media: Arc<MediaPipeline>,
        demand: Demand,
        runtime: tokio::runtime::Handle,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<RtspServer, RtspError> {
        let listen_err = |why: String| RtspError::Listen {
            addr: settings.listen.to_string(),
            why,
        };
        let stats = Arc::new(RtspStats::default());
        let server = rtsp::RTSPServer::new();
        server.set_address(&settings.listen.ip().to_string());
        server.set_service(&settings.listen.port().to_string());

        let factory = rtsp::RTSPMediaFactory::new();
        // The Opus caps as the encode has them now: the media has a sound track only when they
        // are known (an on-demand camera not capturing yet has none to give).
        let audio_caps = media.has_audio.then(|| media.sink_caps("audio")).flatten();
        factory.set_launch(&launch(audio_caps.is_some()));
        // One media for every client: one feed from the one encode.
        factory.set_shared(true);
        factory.set_protocols(
            rtsp::gst_rtsp::RTSPLowerTrans::UDP | rtsp::gst_rtsp::RTSPLowerTrans::TCP,
        );
        {
            let media = media.clone();
            let stats = stats.clone();
            let runtime = runtime.clone();
            factory.connect_media_configure(move |_, m| {
                configure(
                    m,
                    media.clone(),
                    audio_caps.clone(),
                    demand.clone(),
                    runtime.clone(),
                    tasks.clone(),
                    shutdown.clone(),
                    stats.clone(),
                );
            });
        }
        if let Some((user, password)) = &settings.credentials {
            let auth: LoggingAuth = glib::Object::new();
            // Set once, right after construction: the auth only reads it.
            let _ = auth.imp().stats.set(stats.clone());
            let token = rtsp::RTSPToken::builder()
                .field(rtsp::RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
                .build();
            auth.add_basic(&rtsp::RTSPAuth::make_basic(user, password), &token);
            auth.add_digest(user, password, &token);
            // SAFETY: `auth` is a live GstRTSPAuth; BASIC | DIGEST is a valid method set (the
            // binding's enum cannot hold both).
            unsafe {
                rtsp::ffi::gst_rtsp_auth_set_supported_methods(
                    auth.upcast_ref::<rtsp::RTSPAuth>().to_glib_none().0,
                    rtsp::gst_rtsp::ffi::GST_RTSP_AUTH_BASIC
                        | rtsp::gst_rtsp::ffi::GST_RTSP_AUTH_DIGEST,
                );
            }
            server.set_auth(Some(&auth));
            factory.add_role_from_structure(
                &gst::Structure::builder("viewer")
                    .field(rtsp::RTSP_PERM_MEDIA_FACTORY_ACCESS.as_str(), true)
                    .field(rtsp::RTSP_PERM_MEDIA_FACTORY_CONSTRUCT.as_str(), true)
                    .build(),
            );
        }
        let mounts = server
            .mount_points()
            .ok_or_else(|| listen_err("the server has no mount points".into()))?;
        mounts.add_factory(&format!("/{}", settings.room), factory);
        {
            let stats = stats.clone();
            let keyframes = media.keyframes.clone();
            let runtime = runtime.clone();
            server.connect_client_connected(move |_, client| {
                stats.clients.fetch_add(1, Ordering::Relaxed);
                stats.clients_total.fetch_add(1, Ordering::Relaxed);
                let gone = stats.clone();
                client.connect_closed(move |_| {
                    gone.clients.fetch_sub(1, Ordering::Relaxed);
                });
                // A client joining a running feed starts at the next keyframe: ask for one now.
                // (The request may schedule a task: it runs on the daemon's runtime, entered
                // here from the server's own thread.)
                let k = keyframes.clone();
                let runtime = runtime.clone();
                client.connect_play_request(move |_, _| {
                    let _entered = runtime.enter();
                    k.request_for_new_viewer();
                });
            });
        }

        let context = glib::MainContext::new();
        server
            .attach(Some(&context))
            .map_err(|e| listen_err(format!("{e} (is the port in use?)")))?;
        let port = u16::try_from(server.bound_port())
            .map_err(|_| listen_err("the listener has no port".into()))?;
        let main_loop = glib::MainLoop::new(Some(&context), false);
        let thread = {
            let main_loop = main_loop.clone();
            std::thread::Builder::new()
                .name("rtsp".into())
                .spawn(move || {
                    if context.with_thread_default(|| main_loop.run()).is_err() {
                        tracing::error!("the RTSP server's main context is taken; RTSP stops");
                    }
                })
                .map_err(|e| listen_err(e.to_string()))?
        };
        tracing::info!(
            listen = %settings.listen,
            port,
            path = %format!("/{}", settings.room),
            open = settings.credentials.is_none(),
            "RTSP server listening"
        );
        Ok(RtspServer {
            port,
            stats,
            server,
            main_loop,
            thread: Some(thread),
        })
    }

    /// Close every client's connection and stop the server's loop. Blocks until its thread
    /// ends; call it off the async runtime.
    pub fn stop(mut self) {
        self.server
            .client_filter(Some(&mut |_, _| rtsp::RTSPFilterResult::Remove));
        self.main_loop.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A new media (the first client's DESCRIBE): set its sources' caps and feed it at once (the
/// library prepares a live media only once data flows: its SDP needs the stream's caps); stop
/// when it lets it go.
#[allow(clippy::too_many_arguments)]
fn configure(
    m: &rtsp::RTSPMedia,
    media: Arc<MediaPipeline>,
    audio_caps: Option<gst::Caps>,
    demand: Demand,
    runtime: tokio::runtime::Handle,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    stats: Arc<RtspStats>,
) {
    let Ok(bin) = m.element().downcast::<gst::Bin>() else {
        tracing::error!("the RTSP media is not a bin; no feed");
        return;
    };
    let appsrc = |name: &str| {
        bin.by_name(name)
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
    };
    let Some(video) = appsrc("rtspv") else {
        tracing::error!("the RTSP media has no video source; no feed");
        return;
    };
    video.set_caps(Some(&super::feed::video_caps(&media)));
    let audio = appsrc("rtspa").and_then(|a| {
        // The caps now, or those known at start (capture restarting has none for a moment).
        let caps = media.sink_caps("audio").or(audio_caps)?;
        a.set_caps(Some(&caps));
        Some(a)
    });
    let stop = shutdown.child_token();
    {
        let stop = stop.clone();
        m.connect_unprepared(move |_| stop.cancel());
    }
    // Called on the server's own thread, outside the runtime: spawned onto it by handle.
    tasks.spawn_on(
        feed(media, video, audio, demand.guard(), stop, stats),
        &runtime,
    );
}

/// Feed one media from the bus until `stop`: video from a keyframe on, audio once video runs.
async fn feed(
    media: Arc<MediaPipeline>,
    video_src: gst_app::AppSrc,
    audio_src: Option<gst_app::AppSrc>,
    demand: DemandGuard,
    stop: CancellationToken,
    stats: Arc<RtspStats>,
) {
    stats.feeds.fetch_add(1, Ordering::Relaxed);
    tracing::info!("RTSP feed started");
    let keyframes: Arc<dyn KeyframeSource> = Arc::new(media.keyframes.clone());
    let mut video = Subscription::new(&media.video, Some(keyframes), Some(demand));
    let mut audio = media.audio.subscribe();
    let mut started = false;
    let mut timeline = Timeline::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            d = video.next() => match d {
                Some(Delivery::Frame(f)) => match push(&video_src, &f, timeline.video(f.pts, || video_src.current_running_time())) {
                    Pushed::Taken => {
                        started = true;
                        stats.frames.fetch_add(1, Ordering::Relaxed);
                    }
                    // Not started yet (or between states): start again from a keyframe, so
                    // the first frame the media gets carries SPS/PPS.
                    Pushed::NotNow => {
                        started = false;
                        video.restart();
                    }
                    Pushed::Ended => break,
                },
                Some(_) => {}
                None => break,
            },
            a = audio.recv(), if audio_src.is_some() => match a {
                Ok(p) if started => {
                    if let Some(src) = &audio_src
                        && matches!(push(src, &p, timeline.audio(p.pts)), Pushed::Ended)
                    {
                        break;
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    stats.feeds.fetch_sub(1, Ordering::Relaxed);
    tracing::info!("RTSP feed stopped");
}

/// What became of a frame handed to a media.
enum Pushed {
    /// Queued.
    Taken,
    /// Dropped: the media's pipeline is not running yet (or is changing state).
    NotNow,
    /// The media's pipeline has ended for good.
    Ended,
}

/// A bus time this far after the last video frame's, or any before it, is a capture restart
/// (campeer's H.264 has no B-frames: its times only grow).
const JUMP: Duration = Duration::from_secs(3);

/// Maps the bus's times to the media's running time, so the clients get the encoder's own
/// spacing and audio/video sync (not the jitter of their delivery): fixed at the first video
/// frame a media takes, and again after a jump in the bus's times.
#[derive(Debug, Default)]
struct Timeline {
    /// (bus time, running time) of the frame the mapping started at.
    base: Option<(Duration, gst::ClockTime)>,
    /// The last video frame's bus time.
    last: Option<Duration>,
}

impl Timeline {
    /// The running time of a video frame at bus time `pts`, starting the mapping at `now` (the
    /// media's running time) when there is none; `None` while the media has no running time
    /// (not playing yet).
    fn video(
        &mut self,
        pts: Duration,
        now: impl FnOnce() -> Option<gst::ClockTime>,
    ) -> Option<gst::ClockTime> {
        if self.last.is_some_and(|l| pts < l || pts > l + JUMP) {
            self.base = None;
        }
        self.last = Some(pts);
        if self.base.is_none() {
            self.base = Some((pts, now()?));
        }
        self.audio(pts)
    }

    /// The running time of bus time `pts` (`None` before the mapping's start).
    fn audio(&self, pts: Duration) -> Option<gst::ClockTime> {
        let (bus, running) = self.base?;
        let since = pts.checked_sub(bus)?;
        Some(running + gst::ClockTime::from_nseconds(since.as_nanos() as u64))
    }
}

/// Hand `f` to `src` at running time `pts`; without one (the media is not playing yet, or the
/// frame is from before the mapping's start) the appsrc stamps it as it goes out
/// (`do-timestamp`), so data flows while the media prerolls.
fn push(src: &gst_app::AppSrc, f: &EncodedFrame, pts: Option<gst::ClockTime>) -> Pushed {
    let mut buf = gst::Buffer::from_slice(f.data.clone());
    {
        // A buffer just made has one owner: get_mut cannot fail.
        let b = buf.get_mut().expect("a new buffer is writable");
        if let Some(pts) = pts {
            b.set_pts(pts);
            // campeer's H.264 has no B-frames: decode order is presentation order.
            b.set_dts(pts);
        }
        if let Some(d) = f.duration {
            b.set_duration(gst::ClockTime::from_nseconds(d.as_nanos() as u64));
        }
        if !f.keyframe {
            b.set_flags(gst::BufferFlags::DELTA_UNIT);
        }
    }
    match src.push_buffer(buf) {
        Ok(_) => Pushed::Taken,
        Err(gst::FlowError::Flushing) => Pushed::NotNow,
        Err(_) => Pushed::Ended,
    }
}

/// The address of the client a request came from.
fn client_ip(client: &rtsp::RTSPClient) -> Option<String> {
    // SAFETY: gst_rtsp_client_get_connection returns the live client's connection (transfer
    // none, valid while `client` is); gst_rtsp_connection_get_ip returns a string the
    // connection owns, copied before returning.
    unsafe {
        let conn = rtsp::ffi::gst_rtsp_client_get_connection(client.to_glib_none().0);
        if conn.is_null() {
            return None;
        }
        let ip = rtsp::gst_rtsp::ffi::gst_rtsp_connection_get_ip(conn);
        if ip.is_null() {
            return None;
        }
        Some(std::ffi::CStr::from_ptr(ip).to_string_lossy().into_owned())
    }
}

glib::wrapper! {
    /// The library's credential check, counting and logging the refusals of credentials given
    /// but wrong (a client's first request, without any, is the usual challenge and is not).
    pub struct LoggingAuth(ObjectSubclass<imp::LoggingAuth>) @extends rtsp::RTSPAuth;
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct LoggingAuth {
        pub stats: OnceLock<Arc<RtspStats>>,
        pub gate: Mutex<Option<WarnGate>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for LoggingAuth {
        const NAME: &'static str = "CampeerRtspAuth";
        type Type = super::LoggingAuth;
        type ParentType = rtsp::RTSPAuth;
    }

    impl ObjectImpl for LoggingAuth {}

    impl RTSPAuthImpl for LoggingAuth {
        fn check(&self, ctx: &rtsp::RTSPContext, check: &glib::GString) -> bool {
            let allowed = self.parent_check(ctx, check);
            // Access to the room's path is the check a wrong password fails, once a request.
            if !allowed
                && check.as_str() == rtsp::RTSP_AUTH_CHECK_MEDIA_FACTORY_ACCESS.as_str()
                && ctx
                    .request()
                    .is_some_and(|r| !r.parse_auth_credentials().is_empty())
            {
                if let Some(stats) = self.stats.get() {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                let client = ctx
                    .client()
                    .and_then(client_ip)
                    .unwrap_or_else(|| "?".into());
                if let Ok(mut gate) = self.gate.lock() {
                    let gate = gate.get_or_insert_with(|| WarnGate::new(REFUSAL_LOG_EVERY));
                    warn_gated!(gate, %client, "RTSP client refused: wrong user or password");
                }
            }
            allowed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_the_encoders_spacing_on_the_medias_clock() {
        let ms = Duration::from_millis;
        let at = |t: u64| gst::ClockTime::from_mseconds(t);
        let mut t = Timeline::default();
        // Not playing yet: nothing is stamped, and audio waits for video.
        assert_eq!(t.video(ms(1000), || None), None);
        assert_eq!(t.audio(ms(1000)), None);
        // The first frame taken is "now" on the media's clock; later ones keep their spacing,
        // however late they are delivered.
        assert_eq!(t.video(ms(1033), || Some(at(50_000))), Some(at(50_000)));
        assert_eq!(t.video(ms(1066), || Some(at(99_999))), Some(at(50_033)));
        assert_eq!(t.audio(ms(1070)), Some(at(50_037)));
        // Audio from before the first frame has no place.
        assert_eq!(t.audio(ms(1020)), None);
        // A capture restart (bus time jumps back) starts the mapping again.
        assert_eq!(t.video(ms(10), || Some(at(60_000))), Some(at(60_000)));
        assert_eq!(t.video(ms(43), || None), Some(at(60_033)));
    }

    #[test]
    fn the_media_streams_the_encode_as_it_is() {
        let with_audio = launch(true);
        assert!(with_audio.contains("rtph264pay name=pay0"), "{with_audio}");
        assert!(with_audio.contains("rtpopuspay name=pay1"), "{with_audio}");
        // No encoder: the bus's H.264 goes out as it is.
        assert!(!with_audio.contains("enc"), "{with_audio}");
        assert!(!launch(false).contains("pay1"));
        // The library's launch syntax: the media is one bin.
        gst::init().unwrap();
        let inner = with_audio.trim_start_matches("( ").trim_end_matches(" )");
        assert!(gst::parse::bin_from_description(inner, false).is_ok());
    }
}
