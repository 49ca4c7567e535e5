//! Media settings for tests that build campeer's pipeline in-process, and a JPEG decoder for
//! the pictures campeer serves.

use super::rtc_viewer::Picture;
use campeer::media::encoder::EncodeSettings;
use campeer::media::pipeline::MediaSettings;
use campeer::media::source::{AudioSource, CameraH264, VideoSource};
use gstreamer as gst;
use gstreamer::prelude::*;

/// Still SMPTE bars as a `pipeline:` video source (campeer's own test pattern scrolls).
pub const STILL_BARS: &str = "pipeline:videotestsrc is-live=true pattern=smpte";

/// `video` and `audio` encoded at 640x480@30, 1,000 kbit/s, a keyframe every 2 s, by the best
/// encoder found; no VP8 fallback, no lower rungs.
pub fn settings(video: VideoSource, audio: AudioSource) -> MediaSettings {
    MediaSettings {
        video,
        audio,
        encoder: "auto".into(),
        encode: EncodeSettings {
            width: 640,
            height: 480,
            framerate: 30,
            bitrate_kbps: 1000,
            gop: 60,
        },
        audio_bitrate_kbps: 64,
        vp8_fallback: false,
        camera_h264: CameraH264::Auto,
        lower_rungs: Vec::new(),
    }
}

/// Decode a JPEG with GStreamer's jpegdec into RGB.
pub fn decode_jpeg(jpeg: &[u8]) -> Picture {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(
        "appsrc name=src ! jpegdec ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gstreamer_app::AppSrc>()
        .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gstreamer_app::AppSink>()
        .unwrap();
    src.set_caps(Some(&gst::Caps::builder("image/jpeg").build()));
    pipeline.set_state(gst::State::Playing).unwrap();
    src.push_buffer(gst::Buffer::from_slice(jpeg.to_vec()))
        .unwrap();
    src.end_of_stream().unwrap();
    let sample = sink
        .try_pull_sample(gst::ClockTime::from_seconds(10))
        .expect("the JPEG decodes");
    let picture = picture_of(&sample);
    pipeline.set_state(gst::State::Null).unwrap();
    picture
}

/// The picture in an RGB `video/x-raw` sample.
pub fn picture_of(sample: &gst::Sample) -> Picture {
    let s = sample.caps().unwrap().structure(0).unwrap();
    let (width, height) = (
        s.get::<i32>("width").unwrap() as u32,
        s.get::<i32>("height").unwrap() as u32,
    );
    let map = sample.buffer().unwrap().map_readable().unwrap();
    // RGB rows are padded to 4 bytes.
    let stride = (width as usize * 3).div_ceil(4) * 4;
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for row in map.as_slice().chunks(stride).take(height as usize) {
        rgb.extend_from_slice(&row[..width as usize * 3]);
    }
    Picture { width, height, rgb }
}
