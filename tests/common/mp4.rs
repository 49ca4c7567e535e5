//! Reading back what campeer recorded, with GStreamer as any player would: an MP4 file's
//! video decoded (qtdemux ! h264parse ! openh264dec) and its audio decoded (opusdec).

use super::rtc_viewer::Picture;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::path::Path;
use std::time::Duration;

/// What one track of a file decoded to.
#[derive(Debug, Default)]
pub struct Track {
    /// Decoded frames (video) or buffers (audio).
    pub count: u64,
    /// The first decoded timestamp.
    pub first: Option<Duration>,
    /// The last decoded timestamp.
    pub last: Option<Duration>,
}

impl Track {
    /// From the first decoded timestamp to the last.
    pub fn span(&self) -> Duration {
        match (self.first, self.last) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => Duration::ZERO,
        }
    }
}

/// What a recorded file decodes to.
#[derive(Debug)]
pub struct Decoded {
    pub video: Track,
    pub audio: Track,
    /// A picture from about a second in (the first frame when shorter).
    pub picture: Option<Picture>,
    /// GStreamer's error, when decoding stopped on one.
    pub error: Option<String>,
}

fn run(desc: &str, on_sample: &mut dyn FnMut(&gst::Sample, u64)) -> Option<String> {
    gst::init().expect("gstreamer init");
    let pipeline = gst::parse::launch(desc)
        .expect("decode pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
        .expect("appsink");
    if pipeline.set_state(gst::State::Playing).is_err() {
        let _ = pipeline.set_state(gst::State::Null);
        return Some("the file does not start decoding".into());
    }
    let mut n = 0;
    while let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_seconds(10)) {
        on_sample(&sample, n);
        n += 1;
    }
    let error = pipeline.bus().and_then(|bus| {
        bus.pop_filtered(&[gst::MessageType::Error])
            .and_then(|m| match m.view() {
                gst::MessageView::Error(e) => Some(e.error().to_string()),
                _ => None,
            })
    });
    let _ = pipeline.set_state(gst::State::Null);
    error
}

fn note(track: &mut Track, sample: &gst::Sample) {
    track.count += 1;
    if let Some(pts) = sample.buffer().and_then(|b| b.pts()) {
        let t = Duration::from_nanos(pts.nseconds());
        track.first.get_or_insert(t);
        track.last = Some(t);
    }
}

/// Decode `path`'s video and audio tracks.
pub fn decode(path: &Path) -> Decoded {
    let file = path.display();
    let mut video = Track::default();
    let mut picture = None;
    let error = run(
        &format!(
            "filesrc location=\"{file}\" ! qtdemux name=d d.video_0 ! h264parse ! openh264dec ! \
             videoconvert ! video/x-raw,format=RGB ! appsink name=sink sync=false"
        ),
        &mut |s, n| {
            note(&mut video, s);
            if n == 0 || n == 30 {
                picture = to_picture(s);
            }
        },
    );
    let mut audio = Track::default();
    let audio_error = run(
        &format!(
            "filesrc location=\"{file}\" ! qtdemux name=d d.audio_0 ! opusdec ! \
             appsink name=sink sync=false"
        ),
        &mut |s, _| note(&mut audio, s),
    );
    Decoded {
        video,
        audio,
        picture,
        error: error.or(audio_error),
    }
}

fn to_picture(sample: &gst::Sample) -> Option<Picture> {
    let s = sample.caps()?.structure(0)?;
    let (width, height) = (
        s.get::<i32>("width").ok()? as u32,
        s.get::<i32>("height").ok()? as u32,
    );
    let map = sample.buffer()?.map_readable().ok()?;
    // RGB rows are padded to 4 bytes.
    let stride = (width as usize * 3).div_ceil(4) * 4;
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for row in map.as_slice().chunks(stride).take(height as usize) {
        rgb.extend_from_slice(&row[..width as usize * 3]);
    }
    Some(Picture { width, height, rgb })
}
