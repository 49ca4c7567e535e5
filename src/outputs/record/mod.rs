//! Recording: the one encode written to disk as fragmented MP4 segments, with retention, run-
//! time start/stop and playback over HTTP.
//!
//! Owns the recorder task ([`run`]): while recording is wanted it holds a share of capture
//! demand (recording keeps the camera on), takes the main H.264 rendition and the Opus audio
//! from the media bus, and writes them into a segment ([`segment::SegmentWriter`], a
//! [`crate::outputs::feed::Feed`]) that is
//! closed at the first keyframe after `record.segment`. Capture restarting (its clock starts
//! again) closes the segment too. A write error (full disk, unwritable path) ends the segment,
//! is logged once, shows in `/healthz` and `/metrics`, and recording tries again every few
//! seconds until it can write; live viewing never depends on it. Retention ([`store`]) runs
//! after each segment and every minute. The HTTP side is [`http`].

pub mod http;
pub mod segment;
pub mod store;

use crate::config::RecordConfig;
use crate::media::bus::{Delivery, Demand, Subscription};
use crate::media::pipeline::{EncodedFrame, MediaPipeline};
use segment::SegmentWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// How long recording waits after a write error before it tries again.
pub const RETRY_AFTER: Duration = Duration::from_secs(3);
/// How often retention runs besides after each segment.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// A bus time gap this long between two frames is a capture restart: a new segment starts.
const GAP: Duration = Duration::from_secs(3);
/// A segment that wrote this long without an error means recording works again.
const HEALTHY_AFTER: Duration = Duration::from_secs(2);

/// The recorder of one camera: what it is told and what it reports.
pub struct Recorder {
    dir: PathBuf,
    segment: Duration,
    retention: store::Retention,
    wanted: watch::Sender<bool>,
    state: Mutex<State>,
    /// Segments started.
    pub segments: AtomicU64,
    /// Video bytes written.
    pub bytes: AtomicU64,
    /// Segments deleted by retention.
    pub deleted: AtomicU64,
    /// Write errors.
    pub errors: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The segment being written.
    current: Option<String>,
    /// Why recording cannot write now.
    failing: Option<String>,
}

impl Recorder {
    /// A recorder under `config` (recording from the start when `config.enabled`).
    pub fn new(config: &RecordConfig) -> Self {
        Self {
            dir: config.path.clone(),
            segment: config.segment,
            retention: store::Retention {
                keep: (!config.keep.is_zero()).then_some(config.keep),
                max_bytes: (config.max_disk_mb > 0)
                    .then(|| config.max_disk_mb.saturating_mul(1024 * 1024)),
                min_free: config.min_free_mb.saturating_mul(1024 * 1024),
            },
            wanted: watch::channel(config.enabled).0,
            state: Mutex::new(State::default()),
            segments: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// The recordings directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Start (`true`) or stop recording.
    pub fn set_wanted(&self, on: bool) {
        self.wanted
            .send_if_modified(|w| std::mem::replace(w, on) != on);
    }

    /// Whether recording is switched on.
    pub fn wanted(&self) -> bool {
        *self.wanted.borrow()
    }

    /// The segment being written now.
    pub fn current(&self) -> Option<String> {
        self.state.lock().ok().and_then(|s| s.current.clone())
    }

    /// Why recording cannot write, while it cannot.
    pub fn failing(&self) -> Option<String> {
        self.state.lock().ok().and_then(|s| s.failing.clone())
    }

    fn set_current(&self, name: Option<String>) {
        if let Ok(mut s) = self.state.lock() {
            s.current = name;
        }
    }

    /// Note a write error; logged when it is new.
    fn fail(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.state.lock() {
            if s.failing.as_deref() != Some(why.as_str()) {
                tracing::error!(
                    dir = %self.dir.display(),
                    error = %why,
                    "recording cannot write; live viewing goes on, recording retries every {} s",
                    RETRY_AFTER.as_secs()
                );
            }
            s.failing = Some(why);
            s.current = None;
        }
    }

    fn recovered(&self) {
        if let Ok(mut s) = self.state.lock()
            && s.failing.take().is_some()
        {
            tracing::info!(dir = %self.dir.display(), "recording writes again");
        }
    }

    /// Delete what retention says (never the segment being written); errors are logged.
    pub fn apply_retention(&self) {
        let segments = match store::list(&self.dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list recordings");
                return;
            }
        };
        let free = store::free_bytes(&self.dir).unwrap_or(u64::MAX);
        let current = self.current();
        for name in store::to_delete(
            &segments,
            current.as_deref(),
            &self.retention,
            SystemTime::now(),
            free,
        ) {
            match std::fs::remove_file(self.dir.join(&name)) {
                Ok(()) => {
                    self.deleted.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(segment = %name, "recording deleted by retention");
                }
                Err(e) => tracing::warn!(segment = %name, error = %e, "cannot delete recording"),
            }
        }
    }

    /// Why a new segment cannot start now, if it cannot: no directory, or no room even
    /// after retention.
    fn room_to_write(&self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        self.apply_retention();
        match store::free_bytes(&self.dir) {
            Ok(free) if free < self.retention.min_free => Err(format!(
                "disk full: {} MB free on {}, under record.min-free-mb = {}",
                free / (1024 * 1024),
                self.dir.display(),
                self.retention.min_free / (1024 * 1024)
            )),
            _ => Ok(()),
        }
    }
}

/// What a segment needs from the media pipeline when it opens.
struct Tracks {
    video: gstreamer::Caps,
    audio: Option<gstreamer::Caps>,
}

fn tracks(media: &MediaPipeline) -> Tracks {
    Tracks {
        video: crate::outputs::feed::video_caps(media),
        audio: if media.has_audio {
            media.sink_caps("audio")
        } else {
            None
        },
    }
}

/// Run the recorder of `media` until `shutdown`.
pub async fn run(
    recorder: Arc<Recorder>,
    media: Arc<MediaPipeline>,
    demand: Demand,
    shutdown: CancellationToken,
) {
    let mut wanted = recorder.wanted.subscribe();
    loop {
        if !*wanted.borrow_and_update() {
            tokio::select! {
                r = wanted.changed() => if r.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        tracing::info!(dir = %recorder.dir.display(), segment = ?recorder.segment, "recording");
        let outcome = record(&recorder, &media, &demand, &mut wanted, &shutdown).await;
        recorder.set_current(None);
        recorder.apply_retention();
        match outcome {
            Stop::Shutdown => return,
            Stop::Off => tracing::info!("recording stopped"),
        }
    }
}

enum Stop {
    Shutdown,
    Off,
}

/// Record while wanted: segment after segment, retrying after write errors.
async fn record(
    recorder: &Arc<Recorder>,
    media: &Arc<MediaPipeline>,
    demand: &Demand,
    wanted: &mut watch::Receiver<bool>,
    shutdown: &CancellationToken,
) -> Stop {
    let keyframes: Arc<dyn crate::media::bus::KeyframeSource> = Arc::new(media.keyframes.clone());
    let mut video = Subscription::new(&media.video, Some(keyframes), Some(demand.guard()));
    let mut audio: broadcast::Receiver<Arc<EncodedFrame>> = media.audio.subscribe();
    let mut seg: Option<Open> = None;
    let mut retention = tokio::time::interval(RETENTION_EVERY);
    retention.reset();
    let mut last_pts: Option<Duration> = None;
    let stop = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Stop::Shutdown,
            r = wanted.changed() => {
                if r.is_err() { break Stop::Shutdown }
                if !*wanted.borrow_and_update() { break Stop::Off }
            }
            _ = retention.tick() => {
                let r = recorder.clone();
                let _ = tokio::task::spawn_blocking(move || r.apply_retention()).await;
            }
            d = video.next() => {
                let f = match d {
                    Some(Delivery::Frame(f)) => f,
                    Some(Delivery::Lagged { .. } | Delivery::Skipped) => continue,
                    None => break Stop::Shutdown,
                };
                // Capture restarted (its clock begins again) or paused: a new segment.
                let jumped = last_pts.is_some_and(|p| f.pts < p || f.pts > p + GAP);
                last_pts = Some(f.pts);
                let due = seg.as_ref().is_some_and(|s| {
                    f.keyframe && f.pts.saturating_sub(s.writer.feed.base()) >= recorder.segment
                });
                if jumped || due {
                    close(recorder, seg.take()).await;
                    if jumped && !f.keyframe {
                        video.restart();
                        continue;
                    }
                }
                let failed: Option<String> = 'frame: {
                    if seg.is_none() {
                        if !f.keyframe {
                            break 'frame None;
                        }
                        match open(recorder, media, f.pts).await {
                            Ok(s) => seg = Some(s),
                            Err(why) => break 'frame Some(why),
                        }
                    }
                    let Some(s) = seg.as_mut() else { break 'frame None };
                    match s.writer.feed.push_video(&f) {
                        Ok(()) => {
                            recorder.bytes.fetch_add(f.data.len() as u64, Ordering::Relaxed);
                            if s.opened.elapsed() > HEALTHY_AFTER {
                                recorder.recovered();
                            }
                            None
                        }
                        Err(e) => {
                            if let Some(s) = seg.take() {
                                s.writer.feed.abort();
                            }
                            Some(e.to_string())
                        }
                    }
                };
                if let Some(why) = failed {
                    recorder.fail(why);
                    if wait_retry(wanted, shutdown).await.is_err() {
                        break Stop::Shutdown;
                    }
                    if !*wanted.borrow() { break Stop::Off }
                    video.restart();
                    audio = audio.resubscribe();
                    last_pts = None;
                }
            }
            a = audio.recv(), if media.has_audio => {
                match a {
                    Ok(p) => {
                        if let Some(s) = seg.as_mut()
                            && let Err(e) = s.writer.feed.push_audio(&p)
                        {
                            tracing::debug!(error = %e, "audio not recorded");
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break Stop::Shutdown,
                }
            }
        }
    };
    close(recorder, seg.take()).await;
    stop
}

/// A segment being written, and since when.
struct Open {
    writer: SegmentWriter,
    opened: std::time::Instant,
}

/// Open a new segment starting at bus time `base`.
async fn open(
    recorder: &Arc<Recorder>,
    media: &Arc<MediaPipeline>,
    base: Duration,
) -> Result<Open, String> {
    let r = recorder.clone();
    let m = media.clone();
    let opened = tokio::task::spawn_blocking(move || -> Result<SegmentWriter, String> {
        r.room_to_write()?;
        let t = tracks(&m);
        let path = store::new_path(&r.dir, SystemTime::now());
        let w = SegmentWriter::open(&path, base, &t.video, t.audio.as_ref())
            .map_err(|e| e.to_string())?;
        Ok(w)
    })
    .await
    .map_err(|e| format!("recording task failed: {e}"))??;
    let name = opened
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    tracing::debug!(segment = ?name, "recording segment started");
    recorder.segments.fetch_add(1, Ordering::Relaxed);
    recorder.set_current(name);
    Ok(Open {
        writer: opened,
        opened: std::time::Instant::now(),
    })
}

/// How long finishing a segment may take before the disk counts as not answering.
const CLOSE_LIMIT: Duration = Duration::from_secs(15);

/// Finish `seg` off the runtime. A disk that does not answer (a hung
/// network mount) is reported as a failure instead of stopping the recorder for good; the
/// blocked thread is left to finish when it can.
async fn close(recorder: &Arc<Recorder>, seg: Option<Open>) {
    let Some(seg) = seg else { return };
    let r = recorder.clone();
    let closing = tokio::task::spawn_blocking(move || {
        let path = seg.writer.path().to_owned();
        let frames = seg.writer.feed.frames;
        let duration = seg.writer.feed.duration();
        match seg.writer.feed.close() {
            Ok(()) => {
                tracing::info!(
                    segment = %path.display(),
                    frames,
                    seconds = format!("{:.1}", duration.as_secs_f64()),
                    "recording segment closed"
                );
                r.recovered();
            }
            Err(e) => r.fail(e.to_string()),
        }
        // Retention runs where the next segment opens (`room_to_write`) or recording stops
        // (`run`), not here as well.
        r.set_current(None);
    });
    if tokio::time::timeout(CLOSE_LIMIT, closing).await.is_err() {
        recorder.fail(format!(
            "finishing a segment took over {} s: the disk does not answer",
            CLOSE_LIMIT.as_secs()
        ));
    }
}

/// Wait before the next try after a write error; `Err` on shutdown. Ends early when
/// recording is switched off.
async fn wait_retry(
    wanted: &mut watch::Receiver<bool>,
    shutdown: &CancellationToken,
) -> Result<(), ()> {
    tokio::select! {
        _ = tokio::time::sleep(RETRY_AFTER) => Ok(()),
        _ = wanted.changed() => Ok(()),
        _ = shutdown.cancelled() => Err(()),
    }
}
