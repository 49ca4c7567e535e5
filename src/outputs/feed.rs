//! An output's own GStreamer pipeline fed from the media bus: `appsrc`s take the encoded
//! H.264 (and the Opus audio) as the viewers get it, and the output's description does the rest
//! (mux to a file, segment for HLS). A pipeline of its own keeps the output's failures (a full
//! disk) away from the live one, and nothing is encoded twice. The frames' bus times are
//! shifted so the output starts at 0.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::time::Duration;

use crate::media::pipeline::{EncodedFrame, MediaPipeline};

/// How far an output may fall behind the bus (a stalled disk, an RTMP server or uplink that
/// does not take the stream): its queues hold this much, and once as much again waits in its
/// appsrc the feed fails, instead of holding ever more of the stream in memory.
pub const MAX_BACKLOG: Duration = Duration::from_secs(10);

/// A launch fragment: a queue that holds up to [`MAX_BACKLOG`] of stream and then blocks.
fn backlog_queue(name: &str) -> String {
    format!(
        "queue name={name} max-size-buffers=0 max-size-bytes=0 max-size-time={}",
        MAX_BACKLOG.as_nanos()
    )
}

/// The caps of the bus's H.264 as its appsink took them (byte-stream H.264 in access units
/// when it has not negotiated yet).
pub fn video_caps(media: &MediaPipeline) -> gst::Caps {
    media.sink_caps("video").unwrap_or_else(|| {
        gst::Caps::builder("video/x-h264")
            .field("stream-format", "byte-stream")
            .field("alignment", "au")
            .field("framerate", gst::Fraction::new(media.framerate() as i32, 1))
            .build()
    })
}

/// The caps of the bus's Opus, for an output that re-encodes it as AAC: `None` without audio,
/// or without an AAC encoder (said once per call, naming `what` loses its sound).
pub fn aac_source_caps(media: &MediaPipeline, what: &str) -> Option<gst::Caps> {
    if !media.has_audio {
        return None;
    }
    if gst::ElementFactory::find("voaacenc").is_none() {
        tracing::warn!("no voaacenc (gstreamer1.0-plugins-bad): {what} has no sound");
        return None;
    }
    media.sink_caps("audio")
}

/// A launch fragment: appsrc `<prefix>v` with the H.264, parsed, queued, into `into`.
pub fn video_branch(prefix: &str, into: &str) -> String {
    format!(
        "appsrc name={prefix}v format=time max-bytes=0 ! h264parse ! {} ! {into}",
        backlog_queue(&format!("{prefix}vq"))
    )
}

/// A launch fragment: appsrc `<prefix>a` with the Opus, queued, decoded and encoded as AAC into
/// `into`.
pub fn aac_branch(prefix: &str, into: &str) -> String {
    format!(
        "{} ! opusdec ! audioconvert ! audioresample ! voaacenc ! aacparse ! {into}",
        audio_branch(prefix)
    )
}

/// A launch fragment: appsrc `<prefix>a` with the Opus, queued, to be linked on.
pub fn audio_branch(prefix: &str) -> String {
    format!(
        "appsrc name={prefix}a format=time max-bytes=0 ! {}",
        backlog_queue(&format!("{prefix}aq"))
    )
}

/// How long closing a feed may take before it is torn down as it is.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a feed could not be made or fed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedError {
    /// The pipeline could not be made.
    #[error("cannot build the {0} pipeline: {1}")]
    Build(&'static str, String),
    /// GStreamer reported an error (a write that failed: disk full, unwritable path).
    #[error("{0}")]
    Write(String),
}

/// An output pipeline being fed.
pub struct Feed {
    what: &'static str,
    pipeline: gst::Pipeline,
    video: gst_app::AppSrc,
    audio: Option<gst_app::AppSrc>,
    /// The bus PTS that is 0 in the output.
    base: Duration,
    /// Video frames pushed.
    pub frames: u64,
    /// The PTS (output time) of the last video frame.
    pub last: Duration,
}

/// What [`Feed::open`] builds.
pub struct FeedSpec<'a> {
    /// What the output is, for messages (`recording`, `HLS`).
    pub what: &'static str,
    /// The launch description, with the appsrcs `sources` names (the audio one only when
    /// there is audio).
    pub desc: &'a str,
    /// The names of its video and audio appsrcs.
    pub sources: (&'a str, &'a str),
    /// Caps of the video (byte-stream H.264 in access units).
    pub video_caps: &'a gst::Caps,
    /// Caps of the audio, when the description has an audio appsrc.
    pub audio_caps: Option<&'a gst::Caps>,
}

impl Feed {
    /// Build `spec`'s pipeline, let `configure` set what the description cannot (a file
    /// name), and start it; its time 0 is `base` on the bus.
    pub fn open(
        spec: FeedSpec<'_>,
        base: Duration,
        configure: impl FnOnce(&gst::Pipeline) -> Result<(), FeedError>,
    ) -> Result<Feed, FeedError> {
        let what = spec.what;
        let pipeline = gst::parse::launch(spec.desc)
            .map_err(|e| FeedError::Build(what, e.to_string()))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| FeedError::Build(what, "not a pipeline".into()))?;
        let src = |name: &str| -> Result<gst_app::AppSrc, FeedError> {
            pipeline
                .by_name(name)
                .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
                .ok_or_else(|| FeedError::Build(what, format!("appsrc {name} missing")))
        };
        let video = src(spec.sources.0)?;
        video.set_caps(Some(spec.video_caps));
        let audio = match spec.audio_caps {
            Some(caps) => {
                let a = src(spec.sources.1)?;
                a.set_caps(Some(caps));
                Some(a)
            }
            None => None,
        };
        configure(&pipeline)?;
        if let Err(e) = pipeline.set_state(gst::State::Playing) {
            let why = take_error(&pipeline).unwrap_or_else(|| e.to_string());
            let _ = pipeline.set_state(gst::State::Null);
            return Err(FeedError::Write(why));
        }
        Ok(Feed {
            what,
            pipeline,
            video,
            audio,
            base,
            frames: 0,
            last: Duration::ZERO,
        })
    }

    /// How much video went in.
    pub fn duration(&self) -> Duration {
        self.last
    }

    /// The bus time the output starts at.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// Append a video frame (skipped when it is from before the segment's start).
    pub fn push_video(&mut self, f: &EncodedFrame) -> Result<(), FeedError> {
        let Some(pts) = f.pts.checked_sub(self.base) else {
            return Ok(());
        };
        let mut buf = gst::Buffer::from_slice(f.data.clone());
        {
            // A buffer just made has one owner: get_mut cannot fail.
            let b = buf.get_mut().expect("a new buffer is writable");
            let t = gst::ClockTime::from_nseconds(pts.as_nanos() as u64);
            b.set_pts(t);
            // campeer's H.264 has no B-frames: decode order is presentation order.
            b.set_dts(t);
            if let Some(d) = f.duration {
                b.set_duration(gst::ClockTime::from_nseconds(d.as_nanos() as u64));
            }
            if !f.keyframe {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        self.video
            .push_buffer(buf)
            .map_err(|e| FeedError::Write(self.error_or(e)))?;
        self.frames += 1;
        self.last = self.last.max(pts);
        self.check()?;
        self.check_backlog(&self.video)
    }

    /// `Err` once more than [`MAX_BACKLOG`] waits in `src` (its queue downstream is full too).
    fn check_backlog(&self, src: &gst_app::AppSrc) -> Result<(), FeedError> {
        let waiting = Duration::from_nanos(src.property::<u64>("current-level-time"));
        if waiting > MAX_BACKLOG {
            return Err(FeedError::Write(format!(
                "the {} output falls behind: over {} s of stream waiting (a disk or connection \
                 that does not keep up)",
                self.what,
                (MAX_BACKLOG * 2).as_secs()
            )));
        }
        Ok(())
    }

    /// Append an audio packet (skipped when it is from before the segment's start, or when the
    /// segment has no audio track).
    pub fn push_audio(&mut self, f: &EncodedFrame) -> Result<(), FeedError> {
        let (Some(audio), Some(pts)) = (&self.audio, f.pts.checked_sub(self.base)) else {
            return Ok(());
        };
        let mut buf = gst::Buffer::from_slice(f.data.clone());
        {
            // A buffer just made has one owner: get_mut cannot fail.
            let b = buf.get_mut().expect("a new buffer is writable");
            b.set_pts(gst::ClockTime::from_nseconds(pts.as_nanos() as u64));
            if let Some(d) = f.duration {
                b.set_duration(gst::ClockTime::from_nseconds(d.as_nanos() as u64));
            }
        }
        audio
            .push_buffer(buf)
            .map_err(|e| FeedError::Write(self.error_or(e)))?;
        self.check_backlog(audio)
    }

    /// The first error the pipeline reported, if any (a write that failed).
    pub fn check(&self) -> Result<(), FeedError> {
        match take_error(&self.pipeline) {
            Some(why) => Err(FeedError::Write(why)),
            None => Ok(()),
        }
    }

    fn error_or(&self, flow: gst::FlowError) -> String {
        take_error(&self.pipeline)
            .unwrap_or_else(|| format!("the recording pipeline stopped ({flow:?})"))
    }

    /// End the streams and wait for the output to finish (a file's last fragment and index).
    /// Blocks up to a few seconds; call it off the async runtime.
    pub fn close(self) -> Result<(), FeedError> {
        let _ = self.video.end_of_stream();
        if let Some(a) = &self.audio {
            let _ = a.end_of_stream();
        }
        let result = match self.pipeline.bus() {
            Some(bus) => match bus.timed_pop_filtered(
                gst::ClockTime::from_nseconds(CLOSE_TIMEOUT.as_nanos() as u64),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            ) {
                Some(msg) => match msg.view() {
                    gst::MessageView::Error(e) => Err(FeedError::Write(e.error().to_string())),
                    _ => Ok(()),
                },
                None => Err(FeedError::Write(format!(
                    "closing the {} pipeline took over {} s",
                    self.what,
                    CLOSE_TIMEOUT.as_secs()
                ))),
            },
            None => Ok(()),
        };
        let _ = self.pipeline.set_state(gst::State::Null);
        result
    }

    /// Stop at once, without finishing (after a write error); see the `Drop` impl.
    pub fn abort(self) {}
}

impl Drop for Feed {
    /// Stopping waits for the pipeline's streaming threads, which a stalled disk or connection
    /// can hold: on the async runtime it is done on a blocking thread, so a stuck output never
    /// holds up one of the runtime's workers.
    fn drop(&mut self) {
        let pipeline = self.pipeline.clone();
        let stop = move || {
            let _ = pipeline.set_state(gst::State::Null);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(stop);
            }
            Err(_) => stop(),
        }
    }
}

/// The first error message waiting on `pipeline`'s bus, with the element's detail when it
/// helps (filesink's names the file and the system's reason).
fn take_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    let msg = bus.pop_filtered(&[gst::MessageType::Error])?;
    match msg.view() {
        gst::MessageView::Error(e) => {
            let debug = e.debug().map(|d| d.to_string()).unwrap_or_default();
            // The debug string's last line is the system's reason ("No space left on device").
            let detail = debug.lines().last().unwrap_or("").trim();
            let detail = detail.rsplit(": ").next().unwrap_or(detail);
            Some(
                if detail.is_empty() || e.error().to_string().contains(detail) {
                    e.error().to_string()
                } else {
                    format!("{} ({detail})", e.error())
                },
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Instant;

    #[test]
    fn an_output_that_stops_taking_the_stream_fails_instead_of_filling_memory() {
        gst::init().unwrap();
        // A sink that takes 10 buffers a second of a 30 fps stream: ever further behind.
        let desc = format!(
            "appsrc name=tv format=time max-bytes=0 ! {} ! identity sleep-time=100000 ! \
             fakesink sync=false async=false",
            backlog_queue("tvq")
        );
        let caps = gst::Caps::builder("video/x-h264").build();
        let spec = FeedSpec {
            what: "test",
            desc: &desc,
            sources: ("tv", "ta"),
            video_caps: &caps,
            audio_caps: None,
        };
        let mut feed = Feed::open(spec, Duration::ZERO, |_| Ok(())).unwrap();
        let mut failed_at = None;
        for n in 0..3000u64 {
            let f = EncodedFrame {
                data: Bytes::from_static(&[0, 0, 0, 1, 0x65, 0x88]),
                pts: Duration::from_millis(n * 33),
                duration: Some(Duration::from_millis(33)),
                keyframe: true,
                at: Instant::now(),
            };
            if let Err(e) = feed.push_video(&f) {
                assert!(e.to_string().contains("falls behind"), "{e}");
                failed_at = Some(n);
                break;
            }
            // Time for the appsrc's thread to hand frames on to the queue, as at 30 fps.
            std::thread::sleep(Duration::from_millis(1));
        }
        let n = failed_at.expect("the feed failed before 100 s of stream were waiting");
        // 10 s in the queue and 10 s in the appsrc, less the little the sink took: ~600 frames.
        assert!((550..=800).contains(&n), "failed after {n} frames");
        feed.abort();
    }
}
