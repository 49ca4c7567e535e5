//! A live stream (HLS, RTMP) pulled and decoded by GStreamer, as a player would: H.264 through
//! openh264dec and AAC through faad, counted.

use gstreamer as gst;
use gstreamer::prelude::*;
use std::time::{Duration, Instant};

/// What a pull decoded.
#[derive(Debug, Default)]
pub struct Pulled {
    /// Video frames decoded.
    pub frames: u64,
    /// Audio buffers decoded.
    pub audio: u64,
    /// The decoded picture's size.
    pub size: Option<(i32, i32)>,
}

/// Decode from `source` (a launch fragment ending in a demuxer named `d`), its video from the
/// demuxer pad `video_pad` and its audio from `audio_pad` (`d.` for the first that fits), until
/// `want` video frames and audio buffers or `timeout`.
pub fn pull(
    source: &str,
    (video_pad, audio_pad): (&str, &str),
    want: (u64, u64),
    timeout: Duration,
) -> Pulled {
    gst::init().expect("gstreamer init");
    let pipeline = gst::parse::launch(&format!(
        "{source} name=d  {video_pad} ! queue ! h264parse ! openh264dec ! \
         appsink name=v sync=false async=false  \
         {audio_pad} ! queue ! aacparse ! faad ! appsink name=a sync=false async=false"
    ))
    .expect("pull pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let sink = |n: &str| {
        pipeline
            .by_name(n)
            .and_then(|e| e.downcast::<gstreamer_app::AppSink>().ok())
            .expect("appsink")
    };
    let (v, a) = (sink("v"), sink("a"));
    pipeline
        .set_state(gst::State::Playing)
        .expect("the pull starts");
    let deadline = Instant::now() + timeout;
    let mut got = Pulled::default();
    while Instant::now() < deadline && (got.frames < want.0 || got.audio < want.1) {
        if let Some(s) = v.try_pull_sample(gst::ClockTime::from_mseconds(20)) {
            got.frames += 1;
            if let Some(st) = s.caps().and_then(|c| c.structure(0)) {
                got.size = st
                    .get::<i32>("width")
                    .ok()
                    .zip(st.get::<i32>("height").ok());
            }
        }
        if a.try_pull_sample(gst::ClockTime::from_mseconds(5))
            .is_some()
        {
            got.audio += 1;
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    got
}
