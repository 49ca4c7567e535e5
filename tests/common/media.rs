//! Media settings for tests that build campeer's pipeline in-process.

use campeer::media::encoder::EncodeSettings;
use campeer::media::pipeline::MediaSettings;
use campeer::media::source::{AudioSource, CameraH264, VideoSource};

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
