//! The one encode: a GStreamer pipeline from the source through the H.264 encoder (and Opus) to
//! appsinks, fanned out to every viewer through broadcast channels.
//!
//! The appsink callbacks never block: they copy the encoded frame into a [`bytes::Bytes`] and
//! `send` it on a `tokio::sync::broadcast` channel, which never waits. A viewer that falls behind
//! sees `Lagged` and skips to the next keyframe (see `camera::peer`). Keyframes are requested with
//! an upstream force-key-unit event (all headers), throttled by [`KeyframeRequester`].

use super::encoder::{self, EncodeSettings, EncoderKind, GstRegistry};
use super::h264::{self, SpsProfile};
use super::rendition::{Rendition, RenditionKind, RungSpec};
use super::source::{self, AudioSource, VideoSource};
use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Frames buffered per viewer before it counts as lagging (4 s of video at 30 fps).
pub const VIDEO_QUEUE: usize = 120;
/// Audio packets buffered per viewer (5 s of 20 ms Opus packets).
pub const AUDIO_QUEUE: usize = 250;
/// Keyframe requests from viewers' PLI/FIR closer together than this are merged into one
/// (browsers, Firefox especially, send them in bursts).
pub const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(1000);
/// A new viewer's keyframe request is merged only with one this recent: time to first frame
/// matters more, and joins do not come in floods.
pub const JOIN_KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(200);

/// One encoded access unit (H.264) or packet (Opus).
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// The bytes: Annex-B H.264 with SPS/PPS before IDRs, or one Opus packet.
    pub data: Bytes,
    /// Presentation time on the pipeline's running-time clock.
    pub pts: Duration,
    /// Duration, when the element set one.
    pub duration: Option<Duration>,
    /// True for an IDR frame (always true for audio).
    pub keyframe: bool,
    /// When the frame left the encoder.
    pub at: Instant,
}

/// Why the pipeline could not be built or started.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// GStreamer could not initialise.
    #[error("GStreamer init failed: {0}")]
    Init(String),
    /// No usable encoder.
    #[error(transparent)]
    Encoder(#[from] encoder::EncoderError),
    /// The description did not parse or an element is missing.
    #[error("cannot build the {what} pipeline: {message}")]
    Build {
        /// `video` or `audio`.
        what: &'static str,
        /// GStreamer's message.
        message: String,
    },
    /// The pipeline refused to play (device busy or missing, bad caps).
    #[error("cannot start the pipeline: {0}")]
    Start(String),
}

/// What to build.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    /// Video source (already resolved from `auto`, or resolved on build).
    pub video: VideoSource,
    /// Audio source.
    pub audio: AudioSource,
    /// `auto` or an encoder element name.
    pub encoder: String,
    /// Size, rate, bitrate, GOP.
    pub encode: EncodeSettings,
    /// Opus bitrate, kbit/s.
    pub audio_bitrate_kbps: u32,
    /// A second, VP8 encode for viewers that cannot decode H.264 (started on demand).
    pub vp8_fallback: bool,
    /// What to do with a V4L2 camera's own H.264 (see [`source::CameraH264`]).
    pub camera_h264: source::CameraH264,
    /// Lower renditions for viewers on slow links (each started on demand), highest first.
    pub lower_rungs: Vec<RungSpec>,
}

/// Counters read by `/metrics` and `/healthz`.
#[derive(Debug, Default)]
pub struct MediaStats {
    /// Video frames out of the encoder.
    pub frames: AtomicU64,
    /// Keyframes out of the encoder.
    pub keyframes: AtomicU64,
    /// Encoded video bytes.
    pub video_bytes: AtomicU64,
    /// Opus packets.
    pub audio_packets: AtomicU64,
    /// Keyframe requests sent to the encoder (after throttling).
    pub keyframe_requests: AtomicU64,
    /// Milliseconds since the Unix epoch of the last video frame (0: none yet).
    pub last_frame_unix_ms: AtomicU64,
    /// Milliseconds since the Unix epoch when capture was last started.
    pub started_unix_ms: AtomicU64,
}

/// Asks the encoder for a keyframe with SPS/PPS, at most once per [`KEYFRAME_MIN_INTERVAL`]
/// for PLI/FIR and [`JOIN_KEYFRAME_MIN_INTERVAL`] for new viewers; requests inside the window
/// are merged into one sent when the window ends.
#[derive(Clone)]
pub struct KeyframeRequester {
    inner: Arc<Mutex<KeyframeState>>,
    stats: Arc<MediaStats>,
}

struct KeyframeState {
    pad: Option<gst::Pad>,
    last: Option<Instant>,
    scheduled: bool,
}

impl super::bus::KeyframeSource for KeyframeRequester {
    fn request_keyframe(&self) {
        self.request();
    }
}

impl KeyframeRequester {
    fn new(stats: Arc<MediaStats>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(KeyframeState {
                pad: None,
                last: None,
                scheduled: false,
            })),
            stats,
        }
    }

    fn set_pad(&self, pad: Option<gst::Pad>) {
        if let Ok(mut s) = self.inner.lock() {
            s.pad = pad;
        }
    }

    /// Request a keyframe for a viewer's PLI/FIR. Never blocks; must be called inside a tokio
    /// runtime.
    pub fn request(&self) {
        self.request_within(KEYFRAME_MIN_INTERVAL);
    }

    /// Request a keyframe for a viewer that just connected.
    pub fn request_for_new_viewer(&self) {
        self.request_within(JOIN_KEYFRAME_MIN_INTERVAL);
    }

    fn request_within(&self, window: Duration) {
        let Ok(mut s) = self.inner.lock() else { return };
        let now = Instant::now();
        match s.last {
            Some(last) if now.duration_since(last) < window => {
                if !s.scheduled {
                    s.scheduled = true;
                    let wait = window - now.duration_since(last);
                    let me = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        if let Ok(mut s) = me.inner.lock() {
                            s.scheduled = false;
                            me.send(&mut s);
                        }
                    });
                }
            }
            _ => self.send(&mut s),
        }
    }

    fn send(&self, s: &mut KeyframeState) {
        s.last = Some(Instant::now());
        if let Some(pad) = &s.pad {
            let ev = gstreamer_video::UpstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build();
            pad.push_event(ev);
            self.stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The running capture + encode.
pub struct MediaPipeline {
    pipeline: gst::Pipeline,
    /// Encoded H.264 access units.
    pub video: broadcast::Sender<Arc<EncodedFrame>>,
    /// Encoded Opus packets (no receivers when audio is off).
    pub audio: broadcast::Sender<Arc<EncodedFrame>>,
    /// Whether an audio branch exists.
    pub has_audio: bool,
    /// The Opus bitrate, kbit/s.
    pub audio_kbps: u32,
    /// The encoder in use.
    pub encoder: EncoderKind,
    /// The resolved video source.
    pub source: VideoSource,
    /// Configured size, rate, bitrate and GOP (the size and rate are what a V4L2 camera's
    /// format is chosen for).
    encode: EncodeSettings,
    /// `video.bitrate-kbps` as last set by [`MediaPipeline::set_bitrate`]: what the encoder
    /// targets, and what a camera passing its own H.264 through is asked for at the next start.
    camera_kbps: std::sync::atomic::AtomicU32,
    /// The VP8 rendition, when the fallback is on.
    pub vp8: Option<Arc<Rendition>>,
    /// Lower H.264 renditions, highest first (empty when the source's H.264 is passed through).
    pub renditions: Vec<Arc<Rendition>>,
    /// The JPEG branch for snapshots (none when the source's H.264 is passed through: there is
    /// no raw picture to convert).
    pub snapshots: Option<SnapshotBranch>,
    /// Keyframe requests.
    pub keyframes: KeyframeRequester,
    /// Counters.
    pub stats: Arc<MediaStats>,
    /// The H.264 stream's latest SPS (profile and level), once one has gone out.
    sps: Arc<Mutex<Option<SpsProfile>>>,
    /// What the SPS is expected to say before the first one has gone out.
    predicted_sps: SpsProfile,
}

/// Initialise GStreamer once.
pub fn init() -> Result<(), PipelineError> {
    gst::init().map_err(|e| PipelineError::Init(e.to_string()))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The name of the application message posted when the H.264 branch sees end-of-stream. The
/// pipeline posts EOS only once every sink has it, which never happens while the VP8 valve is
/// closed (its sink gets no EOS) or a live audio source keeps going, and an ending `pipeline:`
/// source must be seen as ending, not as a stall. (When both arrive, the first one restarts the
/// pipeline and the second is drained with the old run's messages.)
pub const VIDEO_EOS: &str = "campeer-video-eos";

/// The whole gst-launch description for these settings.
///
/// With the VP8 fallback, the raw video is split (`tee`) before the encoders: the H.264 branch
/// as always, and a VP8 branch behind a closed `valve` that the first
/// [`Rendition::acquire`] opens for the first viewer that cannot decode H.264 (a closed valve drops frames before
/// the encoder, so the branch costs nothing while no such viewer watches). Each branch has its
/// own leaky queue: a slow VP8 encode never holds the H.264 one back. The closed valve drops
/// events too, caps included, so vp8enc sets up its encoder (~25 MB at 720p) only when the
/// valve first opens (the valve then pushes the caps again); the end of the stream is taken
/// from the H.264 branch instead ([`VIDEO_EOS`]). The VP8 sink does not take part in state
/// changes (`async=false`): it gets no frame while the valve is closed, and the pipeline must
/// still reach PLAYING.
pub fn describe(settings: &MediaSettings, kind: EncoderKind) -> (String, Option<String>) {
    let s = &settings.encode;
    let queue = "queue max-size-buffers=2 max-size-time=0 max-size-bytes=0 leaky=downstream";
    let sink = "appsink name=video sync=false max-buffers=8 drop=true";
    if kind == EncoderKind::Passthrough {
        // Already H.264: no leaky queue (a dropped access unit breaks every frame up to the
        // next keyframe; the sink drops whole frames when nobody takes them) and no VP8.
        let head = match &settings.video {
            VideoSource::V4l2(dev) => source::v4l2_h264_launch(dev),
            VideoSource::Pipeline(desc) => desc.clone(),
            // Only those two sources are passed through (MediaPipeline::build).
            other => source::video_launch(other, s.width, s.height, s.framerate),
        };
        let video = format!("{head} ! {} ! {sink}", encoder::launch_fragment(kind, s));
        return (video, audio_desc(settings));
    }
    let h264 = format!("{queue} ! {} ! {sink}", encoder::launch_fragment(kind, s));
    let source = source::video_launch(&settings.video, s.width, s.height, s.framerate);
    // Snapshots: one raw picture at a time is let through the gate on `jpegq`'s input (see
    // SnapshotBranch); the rest are dropped before they are queued, so the branch holds no
    // capture buffer and costs nothing between snapshots.
    let mut video = format!(
        "{source} ! tee name=rawtee allow-not-linked=true  rawtee. ! {h264}  \
         rawtee. ! queue name=jpegq max-size-buffers=1 max-size-time=0 max-size-bytes=0 \
         leaky=downstream ! videoconvert ! jpegenc quality={SNAPSHOT_QUALITY} ! \
         appsink name=jpeg sync=false async=false max-buffers=1 drop=true"
    );
    if settings.vp8_fallback {
        video.push_str(&format!(
            "  rawtee. ! valve name=vp8valve drop=true ! {queue} ! {} ! \
             appsink name=vp8 sync=false async=false max-buffers=8 drop=true",
            encoder::vp8_fragment(s)
        ));
    }
    // Lower renditions: scaled and encoded once more each, behind valves like VP8's.
    for (i, rung) in settings.lower_rungs.iter().enumerate() {
        let n = i + 1;
        let rs = EncodeSettings {
            width: rung.width,
            height: rung.height,
            bitrate_kbps: rung.bitrate_kbps,
            ..*s
        };
        video.push_str(&format!(
            "  rawtee. ! valve name=rung{n}valve drop=true ! {queue} ! videoscale ! \
             video/x-raw,width={},height={} ! {} ! \
             appsink name=rung{n} sync=false async=false max-buffers=8 drop=true",
            rung.width,
            rung.height,
            encoder::launch_fragment_named(kind, &rs, &format!("rung{n}enc"))
        ));
    }
    (video, audio_desc(settings))
}

/// The audio pipeline: the source, Opus at 48 kHz, the sink.
fn audio_desc(settings: &MediaSettings) -> Option<String> {
    source::audio_launch(&settings.audio).map(|head| {
        format!(
            "{head} ! queue max-size-time=100000000 leaky=downstream ! opusenc bitrate={} frame-size=20 ! appsink name=audio sync=false max-buffers=16 drop=true",
            settings.audio_bitrate_kbps * 1000
        )
    })
}

/// True when a `pipeline:` description ends in H.264 (an IP camera's RTSP stream, a UVC
/// camera's own encoder, an encoder in the description): its output pad can only carry
/// `video/x-h264`. A description whose end is not known before it plays (a `decodebin`, a
/// demuxer) counts as raw video, as before.
pub fn ends_in_h264(desc: &str) -> bool {
    if init().is_err() {
        return false;
    }
    // A trailing caps filter needs an element after it to parse; identity passes the caps
    // query through.
    let Ok(bin) = gst::parse::bin_from_description(&format!("{desc} ! identity"), true) else {
        return false;
    };
    let h264 = bin.static_pad("src").is_some_and(|pad| {
        let caps = pad.query_caps(None);
        !caps.is_any() && !caps.is_empty() && caps.iter().all(|s| s.name() == "video/x-h264")
    });
    let _ = bin.set_state(gst::State::Null);
    h264
}

/// JPEG quality of snapshots (jpegenc's 0-100 scale).
const SNAPSHOT_QUALITY: u32 = 85;

/// Pictures for snapshots: a gate on the raw video that lets one frame through each time it is
/// armed, into jpegenc, and the JPEGs that come out. Arming it while a picture is on its way
/// does not cost a second conversion.
pub struct SnapshotBranch {
    /// JPEGs, one per armed gate.
    pub jpeg: broadcast::Sender<Arc<EncodedFrame>>,
    /// Conversions done (`frames`) and their bytes.
    pub stats: Arc<MediaStats>,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl SnapshotBranch {
    /// Let the next raw picture through to the JPEG encoder.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }

    /// Nobody waits any more: let no picture through.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
    }
}

/// Link the V4L2 decoder's source pad (`camdec`) to the rest of the chain (`camfit`) each time
/// it appears: at every start, not only the first (see `source::video_launch`).
fn link_camera_decoder(pipeline: &gst::Pipeline) {
    let (Some(dec), Some(fit)) = (pipeline.by_name("camdec"), pipeline.by_name("camfit")) else {
        return;
    };
    // Weak: the decoder's handler must not keep the next element alive after the pipeline.
    let fit = fit.downgrade();
    dec.connect_pad_added(move |_, pad| {
        let Some(sink) = fit.upgrade().and_then(|f| f.static_pad("sink")) else {
            return;
        };
        if sink.is_linked() {
            return;
        }
        if let Err(e) = pad.link(&sink) {
            tracing::warn!(error = ?e, "cannot link the camera's decoder");
        }
    });
}

/// V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME: a button asking a camera's encoder for an IDR now.
const V4L2_CID_FORCE_KEY_FRAME: u32 = 0x0099_0900 + 229;
/// Linux errno values (the same on every architecture campeer builds for).
const EINVAL: i32 = 22;
const ENOTTY: i32 = 25;
/// V4L2_CID_MPEG_VIDEO_BITRATE, bit/s.
const V4L2_CID_BITRATE: u32 = 0x0099_0900 + 207;

/// Set one of a camera's codec controls through a second handle on the device (controls are
/// the device's, whichever handle sets them; v4l2src keeps its own for streaming).
fn set_camera_control(
    dev: &std::path::Path,
    id: u32,
    value: v4l::control::Value,
) -> std::io::Result<()> {
    v4l::Device::with_path(dev)?.set_control(v4l::control::Control { id, value })
}

/// Keyframe requests reach a camera whose H.264 is passed through: v4l2src ignores the
/// upstream force-key-unit event, so the probe on its source pad presses the camera's
/// force-key-frame control instead, on a thread of its own (a control can take a round trip to
/// the camera's firmware; the event's sender, a tokio worker, must not wait for it). A camera
/// without the control sends its periodic keyframes only (the interval asked through
/// `extra-controls`, or its own); that is logged once. Other failures (a camera unplugged just
/// then) are logged and the next request tries again.
fn camera_keyframes_on_request(pipeline: &gst::Pipeline, dev: &std::path::Path) {
    let Some(pad) = pipeline.by_name("camsrc").and_then(|s| s.static_pad("src")) else {
        return;
    };
    let dev = dev.to_owned();
    let unsupported = Arc::new(std::sync::atomic::AtomicBool::new(false));
    pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
        let Some(gst::PadProbeData::Event(ev)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        if gstreamer_video::UpstreamForceKeyUnitEvent::parse(ev).is_err()
            || unsupported.load(Ordering::Relaxed)
        {
            return gst::PadProbeReturn::Ok;
        }
        // At most about once a second (KeyframeRequester throttles).
        let (dev, unsupported) = (dev.clone(), unsupported.clone());
        let asked = std::thread::Builder::new()
            .name("camera-keyframe".into())
            .spawn(move || {
                match set_camera_control(&dev, V4L2_CID_FORCE_KEY_FRAME, v4l::control::Value::None)
                {
                    Ok(()) => tracing::debug!(device = %dev.display(), "camera asked for a keyframe"),
                    // No such control (EINVAL), or no controls at all (ENOTTY).
                    Err(e) if matches!(e.raw_os_error(), Some(EINVAL | ENOTTY)) => {
                        unsupported.store(true, Ordering::Relaxed);
                        tracing::info!(
                            device = %dev.display(),
                            error = %e,
                            "the camera cannot be asked for a keyframe: new viewers wait for its next periodic one"
                        );
                    }
                    Err(e) => tracing::warn!(
                        device = %dev.display(),
                        error = %e,
                        "cannot ask the camera for a keyframe now"
                    ),
                }
            });
        if let Err(e) = asked {
            tracing::warn!(error = %e, "cannot start a thread to ask the camera for a keyframe");
        }
        gst::PadProbeReturn::Ok
    });
}

impl MediaPipeline {
    /// Build the pipeline (not yet playing).
    pub fn build(settings: &MediaSettings) -> Result<MediaPipeline, PipelineError> {
        init()?;
        let mut settings = settings.clone();
        settings.video = source::resolve_auto(settings.video);
        let (width, height, fps) = (
            settings.encode.width,
            settings.encode.height,
            settings.encode.framerate,
        );
        let passthrough = match &settings.video {
            VideoSource::Pipeline(d) => ends_in_h264(d),
            // Decided once, from what the camera lists now: a camera that is missing or busy
            // at start-up is decoded (its H.264 too, should it turn out to have it).
            VideoSource::V4l2(dev) if settings.camera_h264 != source::CameraH264::ReEncode => {
                let cam = crate::devices::describe_camera_for(dev, Some((width, height)));
                if cam.is_none() {
                    tracing::info!(
                        device = %dev.display(),
                        "camera not readable at start-up: whatever it sends will be decoded and encoded (its own H.264 is passed through only when it is there when campeer starts)"
                    );
                }
                let own =
                    cam.is_some_and(|c| source::prefers_own_h264(&c.formats, width, height, fps));
                let pass = own
                    && (settings.camera_h264 == source::CameraH264::PassThrough
                        || source::camera_h264_profile_settable(dev));
                if pass {
                    tracing::info!(
                        device = %dev.display(),
                        "the camera sends H.264 itself: passed through as it is, not encoded again"
                    );
                } else if own {
                    tracing::info!(
                        device = %dev.display(),
                        "the camera sends H.264 itself but cannot be asked for constrained baseline (no H.264 profile control): it is decoded and encoded again, for every browser (video.camera-h264 = \"pass-through\" sends it as it is)"
                    );
                }
                pass
            }
            _ => false,
        };
        let kind = if passthrough {
            if settings.vp8_fallback {
                tracing::info!(
                    source = %settings.video,
                    "the source sends H.264 itself: passed through as it is, no VP8 fallback (browsers need its profile)"
                );
                settings.vp8_fallback = false;
            }
            EncoderKind::Passthrough
        } else {
            encoder::choose(&settings.encoder, &GstRegistry)?
        };
        if settings.vp8_fallback && gst::ElementFactory::find("vp8enc").is_none() {
            // Debian: gstreamer1.0-plugins-good. Without it, H.264 viewers still get video.
            tracing::warn!(
                "no vp8enc (gstreamer1.0-plugins-good): browsers without H.264 will be refused"
            );
            settings.vp8_fallback = false;
        }
        let (video_desc, audio_desc) = describe(&settings, kind);
        tracing::debug!(pipeline = %video_desc, "video pipeline");
        let desc = match &audio_desc {
            Some(a) => format!("{video_desc}  {a}"),
            None => video_desc,
        };
        let pipeline = gst::parse::launch(&desc)
            .map_err(|e| PipelineError::Build {
                what: "media",
                message: e.to_string(),
            })?
            .downcast::<gst::Pipeline>()
            .map_err(|_| PipelineError::Build {
                what: "media",
                message: "not a pipeline".into(),
            })?;
        link_camera_decoder(&pipeline);
        if let (EncoderKind::Passthrough, VideoSource::V4l2(dev)) = (kind, &settings.video) {
            camera_keyframes_on_request(&pipeline, dev);
        }
        let stats = Arc::new(MediaStats::default());
        let (video_tx, _) = broadcast::channel(VIDEO_QUEUE);
        let (audio_tx, _) = broadcast::channel(AUDIO_QUEUE);
        let keyframes = KeyframeRequester::new(stats.clone());

        let video_sink = appsink(&pipeline, "video")?;
        keyframes.set_pad(video_sink.static_pad("sink"));
        let sps = Arc::new(Mutex::new(None));
        install_sink(
            &video_sink,
            video_tx.clone(),
            stats.clone(),
            Kind::H264(sps.clone()),
        );
        let has_audio = audio_desc.is_some();
        if has_audio {
            let audio_sink = appsink(&pipeline, "audio")?;
            install_sink(&audio_sink, audio_tx.clone(), stats.clone(), Kind::Audio);
        }
        if let Some(pad) = video_sink.static_pad("sink") {
            let sink = video_sink.clone();
            pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
                if let Some(gst::PadProbeData::Event(ev)) = &info.data {
                    if ev.type_() == gst::EventType::Eos {
                        let msg = gst::message::Application::builder(gst::Structure::new_empty(
                            VIDEO_EOS,
                        ))
                        .src(&sink)
                        .build();
                        let _ = sink.post_message(msg);
                    }
                }
                gst::PadProbeReturn::Ok
            });
        }
        let snapshots = if kind == EncoderKind::Passthrough {
            None
        } else {
            let sink = appsink(&pipeline, "jpeg")?;
            let gate = pipeline
                .by_name("jpegq")
                .and_then(|q| q.static_pad("sink"))
                .ok_or(PipelineError::Build {
                    what: "snapshot",
                    message: "queue jpegq missing".into(),
                })?;
            let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let open = armed.clone();
            gate.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if open.swap(false, Ordering::Relaxed) {
                    gst::PadProbeReturn::Ok
                } else {
                    // Consumed here. With `Drop`, GStreamer 1.22 unrefs the buffer that
                    // gstreamer-rs has already taken out of the probe info: a NULL, and a
                    // CRITICAL on stderr for every frame.
                    drop(info.take_buffer());
                    gst::PadProbeReturn::Handled
                }
            });
            let stats = Arc::new(MediaStats::default());
            let (tx, _) = broadcast::channel(2);
            install_sink(&sink, tx.clone(), stats.clone(), Kind::Jpeg);
            Some(SnapshotBranch {
                jpeg: tx,
                stats,
                armed,
            })
        };
        let vp8 = if settings.vp8_fallback {
            let sink = appsink(&pipeline, "vp8")?;
            let valve = pipeline.by_name("vp8valve").ok_or(PipelineError::Build {
                what: "vp8",
                message: "valve vp8valve missing".into(),
            })?;
            let stats = Arc::new(MediaStats::default());
            let (tx, _) = broadcast::channel(VIDEO_QUEUE);
            let keyframes = KeyframeRequester::new(stats.clone());
            keyframes.set_pad(sink.static_pad("sink"));
            install_sink(&sink, tx.clone(), stats.clone(), Kind::Vp8);
            let spec = RungSpec {
                width: settings.encode.width,
                height: settings.encode.height,
                bitrate_kbps: settings.encode.bitrate_kbps,
            };
            Some(Arc::new(Rendition::new(
                spec,
                RenditionKind::Vp8,
                tx,
                keyframes,
                stats,
                valve,
            )))
        } else {
            None
        };
        if kind == EncoderKind::Passthrough && !settings.lower_rungs.is_empty() {
            tracing::info!(
                "no lower renditions: the source's own H.264 is passed through (a board that can afford it could decode and encode it again; not done)"
            );
        }
        let mut renditions = Vec::new();
        if kind != EncoderKind::Passthrough {
            for (i, spec) in settings.lower_rungs.iter().enumerate() {
                let n = i + 1;
                let sink = appsink_as(&pipeline, &format!("rung{n}"), "rendition")?;
                let valve =
                    pipeline
                        .by_name(&format!("rung{n}valve"))
                        .ok_or(PipelineError::Build {
                            what: "rendition",
                            message: format!("valve rung{n}valve missing"),
                        })?;
                let stats = Arc::new(MediaStats::default());
                let (tx, _) = broadcast::channel(VIDEO_QUEUE);
                let keyframes = KeyframeRequester::new(stats.clone());
                keyframes.set_pad(sink.static_pad("sink"));
                install_sink(&sink, tx.clone(), stats.clone(), Kind::Rung);
                renditions.push(Arc::new(Rendition::new(
                    *spec,
                    RenditionKind::Lower,
                    tx,
                    keyframes,
                    stats,
                    valve,
                )));
            }
        }
        Ok(MediaPipeline {
            vp8,
            renditions,
            snapshots,
            pipeline,
            video: video_tx,
            audio: audio_tx,
            has_audio,
            audio_kbps: settings.audio_bitrate_kbps,
            encoder: kind,
            encode: settings.encode,
            camera_kbps: std::sync::atomic::AtomicU32::new(settings.encode.bitrate_kbps),
            source: settings.video,
            keyframes,
            stats,
            sps,
            predicted_sps: SpsProfile {
                profile_idc: 66,
                constraints: 0xc0,
                level_idc: encoder::level_for(
                    settings.encode.width,
                    settings.encode.height,
                    settings.encode.framerate,
                ),
            },
        })
    }

    /// The H.264 stream's profile and level as its SPS says (what answers announce); before
    /// the first SPS has gone out since the last start, what the encoder settings make it say.
    /// campeer's own encoders are held to constrained baseline by their output caps, so an SPS
    /// of theirs without constraint_set1 (plain baseline bytes, some hardware encoders) still
    /// counts as constrained baseline: viewers offering only that profile keep getting H.264.
    pub fn h264_profile(&self) -> SpsProfile {
        let sps = self.sent_sps().unwrap_or(self.predicted_sps);
        if self.encoder != EncoderKind::Passthrough && sps.profile_idc == 66 {
            SpsProfile {
                constraints: sps.constraints | 0x40,
                ..sps
            }
        } else {
            sps
        }
    }

    /// The caps the appsink called `name` (`video`, `audio`) takes now: what an output that
    /// muxes the encoded stream (a recording) declares for it. `None` before it has
    /// negotiated, or when there is no such sink.
    pub fn sink_caps(&self, name: &str) -> Option<gst::Caps> {
        self.pipeline
            .by_name(name)?
            .static_pad("sink")?
            .current_caps()
    }

    /// Configured frame rate.
    pub fn framerate(&self) -> u32 {
        self.encode.framerate
    }

    /// The SPS that went out since the last start, if one has.
    pub fn sent_sps(&self) -> Option<SpsProfile> {
        self.sps.lock().ok().and_then(|s| *s)
    }

    /// A V4L2 camera's capture format, read from the device now (see
    /// [`source::choose_v4l2_format`]); GStreamer's own negotiation when it cannot be read. A
    /// camera whose H.264 is passed through must still list H.264: if it was replaced by one
    /// that does not, starting fails with a message saying so (and is retried, in case the
    /// first camera comes back).
    fn choose_camera_format(&self, dev: &std::path::Path) -> Result<(), PipelineError> {
        let Some(filter) = self.pipeline.by_name("camcaps") else {
            return Ok(());
        };
        let (width, height, fps) = (self.encode.width, self.encode.height, self.encode.framerate);
        let own_h264 = self.encoder == EncoderKind::Passthrough;
        let using = if own_h264 {
            source::FormatUse::H264
        } else {
            source::FormatUse::Decode
        };
        let cam = crate::devices::describe_camera_for(dev, Some((width, height)));
        let choice = cam
            .as_ref()
            .and_then(|c| source::choose_v4l2_format(&c.formats, width, height, fps, using));
        let caps = match choice {
            Some(c) => match c.caps().parse::<gst::Caps>() {
                Ok(caps) => {
                    tracing::info!(
                        device = %dev.display(),
                        format = %c.fourcc,
                        width = c.width,
                        height = c.height,
                        fps = c.fps,
                        "camera format chosen"
                    );
                    caps
                }
                Err(e) => {
                    tracing::warn!(caps = %c.caps(), error = %e, "camera format not usable as caps");
                    gst::Caps::new_any()
                }
            },
            None if own_h264 && cam.is_some() => {
                return Err(PipelineError::Start(format!(
                    "{} no longer offers H.264 (another camera was plugged in there?); \
                     restart campeer to encode what it offers",
                    dev.display()
                )));
            }
            None => {
                tracing::debug!(device = %dev.display(), "camera formats not readable now");
                gst::Caps::new_any()
            }
        };
        filter.set_property("caps", &caps);
        Ok(())
    }

    /// Why the capture device is not there now (a V4L2 camera unplugged, or a loopback nobody
    /// writes to), or `None` when it is, or when the source is not a V4L2 device.
    pub fn source_absent(&self) -> Option<String> {
        match &self.source {
            VideoSource::V4l2(dev) => crate::devices::capture_device_absent(dev),
            _ => None,
        }
    }

    /// Set the pipeline playing; waits (up to `timeout`) for the state change and reports a
    /// failed one (device missing or busy, caps refused).
    pub fn start(&self, timeout: Duration) -> Result<(), PipelineError> {
        if let Some(why) = self.source_absent() {
            return Err(PipelineError::Start(why));
        }
        // A camera may come back with another format (and level): answers wait for its SPS.
        if let Ok(mut sps) = self.sps.lock() {
            *sps = None;
        }
        if let VideoSource::V4l2(dev) = &self.source {
            self.choose_camera_format(dev)?;
        }
        if let Some(src) = self.pipeline.by_name("camsrc") {
            // v4l2src applies these when it opens the camera, which it does now.
            let settings = EncodeSettings {
                bitrate_kbps: self.camera_kbps.load(Ordering::Relaxed),
                ..self.encode
            };
            match source::camera_h264_controls(&settings).parse::<gst::Structure>() {
                Ok(controls) => src.set_property("extra-controls", &controls),
                Err(e) => tracing::warn!(error = %e, "camera controls not usable"),
            }
        }
        self.pipeline
            .set_state(gst::State::Playing)
            .map_err(|_| PipelineError::Start(self.bus_error()))?;
        // A live source may take a while to deliver its first frame (the state change then
        // stays ASYNC): that is not a failure. Only a failed state change is.
        let (res, _, _) = self
            .pipeline
            .state(gst::ClockTime::from_nseconds(timeout.as_nanos() as u64));
        if res.is_err() {
            let why = self.bus_error();
            let _ = self.pipeline.set_state(gst::State::Null);
            return Err(PipelineError::Start(why));
        }
        // Frames are due from now on: a failed attempt does not count (a camera that keeps
        // failing to start stays unhealthy however often it is retried).
        self.stats
            .started_unix_ms
            .store(unix_ms(), Ordering::Relaxed);
        Ok(())
    }

    /// The first error message waiting on the bus, or a generic text.
    fn bus_error(&self) -> String {
        let Some(bus) = self.pipeline.bus() else {
            return "no bus".into();
        };
        while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
            if let gst::MessageView::Error(e) = msg.view() {
                let src = msg
                    .src()
                    .map(|s| s.path_string().to_string())
                    .unwrap_or_default();
                return format!(
                    "{src}: {} ({})",
                    e.error(),
                    e.debug().map(|d| d.to_string()).unwrap_or_default()
                );
            }
        }
        "the pipeline did not reach PLAYING in time".into()
    }

    /// The pipeline's bus, for the supervisor to watch errors and end-of-stream.
    pub fn bus(&self) -> Option<gst::Bus> {
        self.pipeline.bus()
    }

    /// The video bitrate asked for now (`video.bitrate-kbps`, as last changed), kbit/s.
    pub fn video_kbps(&self) -> u32 {
        self.camera_kbps.load(Ordering::Relaxed)
    }

    /// Change the video bitrate while running.
    pub fn set_bitrate(&self, kbps: u32) {
        self.camera_kbps.store(kbps, Ordering::Relaxed);
        if self.encoder == EncoderKind::Passthrough {
            let VideoSource::V4l2(dev) = &self.source else {
                tracing::warn!(
                    kbps,
                    "video.bitrate-kbps does not apply: the pipeline: source sends H.264 itself"
                );
                return;
            };
            // Every later start asks for it (start() sets extra-controls); a running camera is
            // asked now, for the bitrate alone (profile and level stay as they are mid-stream).
            let bps = i64::from(kbps) * 1000;
            match set_camera_control(dev, V4L2_CID_BITRATE, v4l::control::Value::Integer(bps)) {
                Ok(()) => {
                    tracing::info!(kbps, device = %dev.display(), "camera's video bitrate changed")
                }
                Err(e) => tracing::warn!(
                    kbps,
                    device = %dev.display(),
                    error = %e,
                    "the camera's H.264 bitrate cannot be changed (it has no bitrate control)"
                ),
            }
            return;
        }
        if let Some(vp8) = self.pipeline.by_name("vp8enc") {
            vp8.set_property_from_str("target-bitrate", &(u64::from(kbps) * 1000).to_string());
        }
        if let Some(enc) = self.pipeline.by_name("encoder") {
            let value = if self.encoder.bitrate_in_kbps() {
                kbps
            } else {
                kbps.saturating_mul(1000)
            };
            if enc.find_property("bitrate").is_some() {
                enc.set_property_from_str("bitrate", &value.to_string());
                tracing::info!(kbps, encoder = %self.encoder, "video bitrate changed");
            }
        }
    }

    /// Stop: the pipeline goes to NULL (device closed, encoder freed). It can start again.
    pub fn stop(&self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

impl Drop for MediaPipeline {
    fn drop(&mut self) {
        self.stop();
    }
}

fn appsink(
    pipeline: &gst::Pipeline,
    name: &'static str,
) -> Result<gst_app::AppSink, PipelineError> {
    appsink_as(pipeline, name, name)
}

/// The appsink called `name`; a missing one is a build error of `what`.
fn appsink_as(
    pipeline: &gst::Pipeline,
    name: &str,
    what: &'static str,
) -> Result<gst_app::AppSink, PipelineError> {
    pipeline
        .by_name(name)
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .ok_or(PipelineError::Build {
            what,
            message: format!("appsink {name} missing"),
        })
}

/// What an appsink carries.
enum Kind {
    /// H.264 access units; the latest SPS is kept here.
    H264(Arc<Mutex<Option<SpsProfile>>>),
    /// VP8 frames.
    Vp8,
    /// A lower rendition's H.264 (its SPS is not the stream's that answers announce).
    Rung,
    /// JPEG pictures.
    Jpeg,
    /// Opus packets.
    Audio,
}

/// Keep the SPS of a keyframe `au` in `slot` when it differs from the one there, and say so.
fn note_sps(au: &[u8], slot: &Mutex<Option<SpsProfile>>) {
    let Some(sps) = h264::sps_of(au) else {
        return;
    };
    let Ok(mut slot) = slot.lock() else { return };
    if *slot != Some(sps) {
        match *slot {
            None => {
                tracing::info!(stream = %sps, profile_level_id = %sps.profile_level_id(), "H.264 stream")
            }
            Some(old) => tracing::warn!(
                from = %old,
                to = %sps,
                "the H.264 stream's profile or level changed; viewers already watching negotiated the old one"
            ),
        }
        *slot = Some(sps);
    }
}

fn install_sink(
    sink: &gst_app::AppSink,
    tx: broadcast::Sender<Arc<EncodedFrame>>,
    stats: Arc<MediaStats>,
    kind: Kind,
) {
    let video = !matches!(kind, Kind::Audio);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let Ok(map) = buffer.map_readable() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let keyframe = !video || !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                // Running time, so audio and video compare (encoders such as x264enc shift
                // their timestamps and segment by 1000 hours; the running time is the same).
                let running = buffer.pts().map(|pts| {
                    sample
                        .segment()
                        .and_then(|seg| seg.downcast_ref::<gst::ClockTime>())
                        .and_then(|seg| seg.to_running_time(pts))
                        .unwrap_or(pts)
                });
                let frame = EncodedFrame {
                    data: Bytes::copy_from_slice(map.as_slice()),
                    pts: running
                        .map(|t| Duration::from_nanos(t.nseconds()))
                        .unwrap_or_default(),
                    duration: buffer
                        .duration()
                        .map(|t| Duration::from_nanos(t.nseconds())),
                    keyframe,
                    at: Instant::now(),
                };
                if let (Kind::H264(slot), true) = (&kind, keyframe) {
                    note_sps(&frame.data, slot);
                }
                if video {
                    stats.frames.fetch_add(1, Ordering::Relaxed);
                    stats
                        .video_bytes
                        .fetch_add(frame.data.len() as u64, Ordering::Relaxed);
                    if keyframe {
                        stats.keyframes.fetch_add(1, Ordering::Relaxed);
                    }
                    stats.last_frame_unix_ms.store(unix_ms(), Ordering::Relaxed);
                } else {
                    stats.audio_packets.fetch_add(1, Ordering::Relaxed);
                }
                // Never blocks; with no viewer there is no receiver and the frame is dropped.
                let _ = tx.send(Arc::new(frame));
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}
