//! One segment file being written: a small GStreamer pipeline of its own, `appsrc` (the encoded
//! H.264 from the media bus, and the Opus audio) → `mp4mux` in fragmented mode → `filesink`.
//! A fragment goes to disk every half second, unbuffered and with `O_SYNC`, so a crash loses at
//! most the fragment being gathered. Its own pipeline keeps a write error (a full disk) away
//! from the live one. Its elements' names start with `rec`, and so do its streaming threads'
//! names (`recv:src`, `recvq:src`, …): `top -H` and the recording benchmark tell its cost
//! apart.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::media::pipeline::EncodedFrame;

/// How long `mp4mux` gathers a fragment.
pub const FRAGMENT: Duration = Duration::from_millis(500);
/// How long closing a segment may take before it is torn down as it is.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a segment could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// The writing pipeline could not be made.
    #[error("cannot build the recording pipeline: {0}")]
    Build(String),
    /// GStreamer reported an error (a write that failed: disk full, unwritable path).
    #[error("{0}")]
    Write(String),
}

/// A segment being written.
pub struct SegmentWriter {
    pipeline: gst::Pipeline,
    video: gst_app::AppSrc,
    audio: Option<gst_app::AppSrc>,
    path: PathBuf,
    /// The bus PTS that is 0 in this file.
    base: Duration,
    /// Video frames written.
    pub frames: u64,
    /// The PTS (file time) of the last video frame.
    pub last: Duration,
}

impl SegmentWriter {
    /// Start writing `path`, whose time 0 is `base` on the bus, for video of `video_caps`
    /// (byte-stream H.264 in access units) and audio of `audio_caps` when there is audio.
    pub fn open(
        path: &Path,
        base: Duration,
        video_caps: &gst::Caps,
        audio_caps: Option<&gst::Caps>,
    ) -> Result<SegmentWriter, SegmentError> {
        let build = |e: &dyn std::fmt::Display| SegmentError::Build(e.to_string());
        let mut desc = format!(
            "appsrc name=recv format=time max-bytes=0 ! h264parse ! queue name=recvq \
             max-size-buffers=0 max-size-bytes=0 max-size-time=0 ! recmux.video_0 \
             mp4mux name=recmux fragment-duration={} ! \
             filesink name=file buffer-mode=unbuffered o-sync=true async=false",
            FRAGMENT.as_millis()
        );
        if audio_caps.is_some() {
            desc.push_str(
                "  appsrc name=reca format=time max-bytes=0 ! queue name=recaq \
                 max-size-buffers=0 max-size-bytes=0 max-size-time=0 ! recmux.audio_0",
            );
        }
        let pipeline = gst::parse::launch(&desc)
            .map_err(|e| build(&e))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| SegmentError::Build("not a pipeline".into()))?;
        let src = |name: &str| -> Result<gst_app::AppSrc, SegmentError> {
            pipeline
                .by_name(name)
                .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
                .ok_or_else(|| SegmentError::Build(format!("appsrc {name} missing")))
        };
        let video = src("recv")?;
        video.set_caps(Some(video_caps));
        let audio = match audio_caps {
            Some(caps) => {
                let a = src("reca")?;
                a.set_caps(Some(caps));
                Some(a)
            }
            None => None,
        };
        let file = pipeline
            .by_name("file")
            .ok_or_else(|| SegmentError::Build("filesink missing".into()))?;
        file.set_property("location", path.to_string_lossy().as_ref());
        if let Err(e) = pipeline.set_state(gst::State::Playing) {
            let why = take_error(&pipeline).unwrap_or_else(|| e.to_string());
            let _ = pipeline.set_state(gst::State::Null);
            return Err(SegmentError::Write(why));
        }
        Ok(SegmentWriter {
            pipeline,
            video,
            audio,
            path: path.to_owned(),
            base,
            frames: 0,
            last: Duration::ZERO,
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How much video the file holds.
    pub fn duration(&self) -> Duration {
        self.last
    }

    /// The bus time this file starts at.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// Append a video frame (skipped when it is from before the segment's start).
    pub fn push_video(&mut self, f: &EncodedFrame) -> Result<(), SegmentError> {
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
            .map_err(|e| SegmentError::Write(self.error_or(e)))?;
        self.frames += 1;
        self.last = self.last.max(pts);
        self.check()
    }

    /// Append an audio packet (skipped when it is from before the segment's start, or when the
    /// segment has no audio track).
    pub fn push_audio(&mut self, f: &EncodedFrame) -> Result<(), SegmentError> {
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
            .map_err(|e| SegmentError::Write(self.error_or(e)))?;
        Ok(())
    }

    /// The first error the pipeline reported, if any (a write that failed).
    pub fn check(&self) -> Result<(), SegmentError> {
        match take_error(&self.pipeline) {
            Some(why) => Err(SegmentError::Write(why)),
            None => Ok(()),
        }
    }

    fn error_or(&self, flow: gst::FlowError) -> String {
        take_error(&self.pipeline)
            .unwrap_or_else(|| format!("the recording pipeline stopped ({flow:?})"))
    }

    /// Finish the file: the last fragment and the index are written. Blocks up to a few
    /// seconds; call it off the async runtime.
    pub fn close(self) -> Result<(), SegmentError> {
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
                    gst::MessageView::Error(e) => Err(SegmentError::Write(e.error().to_string())),
                    _ => Ok(()),
                },
                None => Err(SegmentError::Write(format!(
                    "closing {} took over {} s",
                    self.path.display(),
                    CLOSE_TIMEOUT.as_secs()
                ))),
            },
            None => Ok(()),
        };
        let _ = self.pipeline.set_state(gst::State::Null);
        result
    }

    /// Stop at once, without finishing the file (after a write error): what was written
    /// plays up to its last whole fragment.
    pub fn abort(self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
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
