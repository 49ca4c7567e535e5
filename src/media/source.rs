//! Where video and audio come from: parsing `video.source` / `audio.source` and turning a source
//! into the head of a gst-launch description that ends in raw video (I420 at the configured size
//! and rate) or raw audio.

use std::path::{Path, PathBuf};

/// A video source, as written in config or `--video`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoSource {
    /// The first capture-capable V4L2 camera, else the test pattern.
    Auto,
    /// A moving test pattern with a clock.
    Test,
    /// A V4L2 capture device (USB/UVC cameras).
    V4l2(PathBuf),
    /// A CSI camera through the system's libcamera; `None` picks the first.
    Libcamera(Option<String>),
    /// Any GStreamer source description ending in raw video.
    Pipeline(String),
}

impl VideoSource {
    /// Parse `auto`, `test`, `v4l2:/dev/videoN`, `libcamera[:name]`, `pipeline:<desc>`.
    pub fn parse(s: &str) -> Result<VideoSource, String> {
        match s {
            "auto" => return Ok(VideoSource::Auto),
            "test" => return Ok(VideoSource::Test),
            "libcamera" => return Ok(VideoSource::Libcamera(None)),
            _ => {}
        }
        if let Some(dev) = s.strip_prefix("v4l2:") {
            if !dev.starts_with("/dev/") {
                return Err(format!("{s:?}: expected v4l2:/dev/videoN"));
            }
            return Ok(VideoSource::V4l2(PathBuf::from(dev)));
        }
        if let Some(name) = s.strip_prefix("libcamera:") {
            return Ok(VideoSource::Libcamera(
                Some(name.to_owned()).filter(|n| !n.is_empty()),
            ));
        }
        if let Some(desc) = s.strip_prefix("pipeline:") {
            if desc.trim().is_empty() {
                return Err("pipeline: needs a GStreamer description".into());
            }
            return Ok(VideoSource::Pipeline(desc.to_owned()));
        }
        Err(format!(
            "{s:?}: expected auto, test, v4l2:/dev/videoN, libcamera[:name] or pipeline:<description>"
        ))
    }
}

impl std::fmt::Display for VideoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VideoSource::Auto => f.write_str("auto"),
            VideoSource::Test => f.write_str("test"),
            VideoSource::V4l2(p) => write!(f, "v4l2:{}", p.display()),
            VideoSource::Libcamera(None) => f.write_str("libcamera"),
            VideoSource::Libcamera(Some(n)) => write!(f, "libcamera:{n}"),
            VideoSource::Pipeline(d) => write!(f, "pipeline:{d}"),
        }
    }
}

/// An audio source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSource {
    /// No audio track.
    None,
    /// A quiet 440 Hz tone.
    Test,
    /// An ALSA capture device (`hw:1,0`, `default`, `plughw:CARD=Device`).
    Alsa(String),
    /// Any GStreamer source description ending in raw audio.
    Pipeline(String),
}

impl AudioSource {
    /// Parse `none`, `test`, `alsa:<device>`, `pipeline:<desc>`.
    pub fn parse(s: &str) -> Result<AudioSource, String> {
        match s {
            "none" => return Ok(AudioSource::None),
            "test" => return Ok(AudioSource::Test),
            _ => {}
        }
        if let Some(dev) = s.strip_prefix("alsa:") {
            let ok = !dev.is_empty()
                && dev
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ",:=_-.".contains(c));
            if !ok {
                return Err(format!(
                    "{s:?}: expected alsa:<device> such as alsa:hw:1,0 or alsa:default"
                ));
            }
            return Ok(AudioSource::Alsa(dev.to_owned()));
        }
        if let Some(desc) = s.strip_prefix("pipeline:") {
            if desc.trim().is_empty() {
                return Err("pipeline: needs a GStreamer description".into());
            }
            return Ok(AudioSource::Pipeline(desc.to_owned()));
        }
        Err(format!(
            "{s:?}: expected none, test, alsa:<device> or pipeline:<description>"
        ))
    }
}

/// Every `/dev/videoN` node, in number order.
pub fn v4l2_device_nodes() -> Vec<PathBuf> {
    let mut devs: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e
                        .file_name()
                        .to_str()?
                        .strip_prefix("video")?
                        .parse::<u32>()
                        .ok()?;
                    Some((n, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    devs.sort();
    devs.into_iter().map(|(_, p)| p).collect()
}

/// The V4L2 devices that can capture video, in number order (`/dev/video0` first).
pub fn v4l2_capture_devices() -> Vec<PathBuf> {
    v4l2_device_nodes()
        .into_iter()
        .filter(|p| is_capture_device(p))
        .collect()
}

/// True when the device can capture video (not an encoder, decoder or metadata node).
pub fn is_capture_device(path: &Path) -> bool {
    let Ok(dev) = v4l::Device::with_path(path) else {
        return false;
    };
    let Ok(caps) = dev.query_caps() else {
        return false;
    };
    let c = caps.capabilities;
    c.contains(v4l::capability::Flags::VIDEO_CAPTURE)
        && !c.contains(v4l::capability::Flags::VIDEO_M2M)
}

/// Resolve `auto` to what is there now, saying why in the log.
pub fn resolve_auto(src: VideoSource) -> VideoSource {
    if src != VideoSource::Auto {
        return src;
    }
    match v4l2_capture_devices().into_iter().next() {
        Some(dev) => {
            tracing::info!(device = %dev.display(), "video source auto: using the first V4L2 camera");
            VideoSource::V4l2(dev)
        }
        None => {
            tracing::info!("video source auto: no V4L2 camera found, using the test pattern");
            VideoSource::Test
        }
    }
}

/// The capture format picked for a V4L2 camera (see [`choose_v4l2_format`]).
#[derive(Debug, Clone, PartialEq)]
pub struct V4l2Choice {
    /// FourCC as the driver reports it (`YUYV`, `MJPG`, `NV12`, ...).
    pub fourcc: String,
    /// Capture width.
    pub width: u32,
    /// Capture height.
    pub height: u32,
    /// Capture rate, frames per second.
    pub fps: f64,
    /// The GStreamer caps for it, without size and rate (`video/x-raw,format=YUY2`,
    /// `image/jpeg`).
    media: &'static str,
}

impl V4l2Choice {
    /// Caps for `v4l2src`'s output.
    pub fn caps(&self) -> String {
        // A narrow range around the driver's rate: its exact fraction (30000/1001, 15/2, ...)
        // is inside it, and no other rate the driver lists is.
        let lo = ((self.fps - 0.01) * 1000.0).round().max(1.0) as u64;
        let hi = ((self.fps + 0.01) * 1000.0).round() as u64;
        format!(
            "{},width={},height={},framerate=(fraction)[{lo}/1000,{hi}/1000]",
            self.media, self.width, self.height
        )
    }

    /// True when this is the camera's own H.264.
    pub fn is_h264(&self) -> bool {
        self.media == H264_MEDIA
    }
}

/// What to do with a V4L2 camera's own H.264 (`video.camera-h264`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CameraH264 {
    /// Passed through when it fits as well as the camera's other formats and the camera's
    /// encoder can be asked for constrained baseline (it has the V4L2 H.264 profile control),
    /// which every browser decodes; else decoded and encoded again.
    Auto,
    /// Passed through whenever it fits as well as the camera's other formats, whatever profile
    /// the camera sends (answers announce it; browsers that do not offer it are refused).
    PassThrough,
    /// Decoded and encoded by campeer, like MJPEG; chosen only where the camera's other
    /// formats fit worse.
    ReEncode,
}

/// V4L2_CID_MPEG_VIDEO_H264_PROFILE.
const V4L2_CID_H264_PROFILE: u32 = 0x0099_0900 + 363;

/// True when the camera's H.264 encoder can be asked for a profile (constrained baseline, in
/// [`camera_h264_controls`]): SoC camera drivers such as the Pi's bcm2835-v4l2 can; UVC
/// webcams with their own encoder usually cannot, and send High.
pub fn camera_h264_profile_settable(dev: &Path) -> bool {
    v4l::Device::with_path(dev)
        .and_then(|d| d.query_controls())
        .is_ok_and(|cs| cs.iter().any(|c| c.id == V4L2_CID_H264_PROFILE))
}

/// Which of a camera's formats the pipeline can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatUse {
    /// Raw and MJPEG, decoded and encoded by campeer; a camera's own H.264 only when it has
    /// nothing else at the size and rate (decoded too).
    Decode,
    /// The camera's own H.264, passed through as it is.
    H264,
    /// Every format, the camera's H.264 first: what decides, at start-up, whether a camera's
    /// H.264 is passed through (see [`prefers_own_h264`]).
    PreferH264,
}

/// True when a camera listing `formats` sends H.264 itself at a size as close to the
/// configured one as any of its other formats, at (at least 80 % of) the rate where they reach
/// it: its stream can then be passed through as it is (no decode, no encode: a board's encoder
/// stays free, the CPU idle). A camera that gives H.264 only at a worse-fitting size, or too
/// slowly, is decoded and encoded instead.
pub fn prefers_own_h264(
    formats: &[crate::devices::Format],
    width: u32,
    height: u32,
    fps: u32,
) -> bool {
    choose_v4l2_format(formats, width, height, fps, FormatUse::PreferH264)
        .is_some_and(|c| c.is_h264())
}

/// The GStreamer caps of a V4L2 FourCC campeer can capture.
fn v4l2_media(fourcc: &str) -> Option<&'static str> {
    Some(match fourcc {
        "YUYV" => "video/x-raw,format=YUY2",
        "UYVY" => "video/x-raw,format=UYVY",
        "NV12" => "video/x-raw,format=NV12",
        "NV21" => "video/x-raw,format=NV21",
        "YU12" => "video/x-raw,format=I420",
        "YV12" => "video/x-raw,format=YV12",
        "RGB3" => "video/x-raw,format=RGB",
        "BGR3" => "video/x-raw,format=BGR",
        "GREY" => "video/x-raw,format=GRAY8",
        "MJPG" | "JPEG" => "image/jpeg",
        "H264" => H264_MEDIA,
        _ => return None,
    })
}

const H264_MEDIA: &str = "video/x-h264,stream-format=byte-stream";

/// How much a format is wanted at equal size and rate; `None`: not at all.
fn format_rank(media: &str, using: FormatUse) -> Option<u8> {
    // Colour raw needs no decode; MJPEG a cheap one; greyscale loses the colour; the camera's
    // H.264 costs a decode and an encode, unless it is passed through.
    let decoded = match media {
        H264_MEDIA => 0,
        "video/x-raw,format=GRAY8" => 1,
        "image/jpeg" => 2,
        _ => 3,
    };
    match (using, media == H264_MEDIA) {
        (FormatUse::H264, true) => Some(0),
        (FormatUse::H264, false) => None,
        (FormatUse::Decode, _) => Some(decoded),
        (FormatUse::PreferH264, true) => Some(4),
        (FormatUse::PreferH264, false) => Some(decoded),
    }
}

/// Pick a camera's capture format for the configured size and rate, among what it lists:
/// 1. a size at least as large as configured (the smallest such), else the largest;
/// 2. at that, a format that reaches the rate (80 % of it counts: 25 fps for 30 is fine),
///    since USB cameras often give raw frames at full size only at a few fps, and MJPEG at 30;
/// 3. then by format ([`FormatUse`]): for decoding, colour raw (no decode), MJPEG, greyscale,
///    the camera's H.264, in that order, then the driver's order. MJPEG and H.264 are decoded
///    by decodebin3's highest-ranked decoder (a hardware one where the board registers it).
///
/// A camera that lists only formats campeer cannot capture gets `None` (GStreamer's own
/// negotiation then).
pub fn choose_v4l2_format(
    formats: &[crate::devices::Format],
    width: u32,
    height: u32,
    fps: u32,
    using: FormatUse,
) -> Option<V4l2Choice> {
    let want_area = u64::from(width) * u64::from(height);
    let want_fps = f64::from(fps);
    let mut best: Option<((bool, bool, i64, u8), V4l2Choice)> = None;
    for f in formats {
        let Some(media) = v4l2_media(&f.fourcc) else {
            continue;
        };
        let Some(rank) = format_rank(media, using) else {
            continue;
        };
        for s in &f.sizes {
            // The slowest listed rate at or above the configured one, else the fastest.
            let rate = s
                .fps
                .iter()
                .copied()
                .filter(|r| *r >= want_fps - 0.01)
                .min_by(|a, b| a.total_cmp(b))
                .or_else(|| s.fps.iter().copied().max_by(|a, b| a.total_cmp(b)));
            let Some(rate) = rate else { continue };
            let area = u64::from(s.width) * u64::from(s.height);
            let covers = s.width >= width && s.height >= height;
            // Larger is better: among covering sizes the smallest, among the others the largest.
            let closeness = if covers {
                -(area.saturating_sub(want_area) as i64)
            } else {
                area as i64
            };
            let key = (covers, rate >= 0.8 * want_fps, closeness, rank);
            if best.as_ref().is_none_or(|(k, _)| key > *k) {
                let choice = V4l2Choice {
                    fourcc: f.fourcc.clone(),
                    width: s.width,
                    height: s.height,
                    fps: rate,
                    media,
                };
                best = Some((key, choice));
            }
        }
    }
    best.map(|(_, c)| c)
}

/// The head of a pipeline passing a V4L2 camera's own H.264 through, up to its caps filter
/// (`camcaps`); both are set at every start: the caps, and the camera's controls
/// ([`camera_h264_controls`]) as v4l2src's `extra-controls`.
pub fn v4l2_h264_launch(dev: &Path) -> String {
    format!(
        "v4l2src name=camsrc device=\"{}\" io-mode=mmap ! capsfilter name=camcaps",
        dev.display()
    )
}

/// The `extra-controls` structure for a camera's own H.264 encoder (names as v4l2src derives
/// them from the driver's control names, the same ones as the Pi's v4l2h264enc): the
/// configured bitrate and keyframe interval, SPS/PPS before every IDR, and constrained baseline
/// at the level for the size and rate, as campeer's own encoders give. v4l2src skips the
/// controls a camera lacks; whatever it then sends, answers announce its SPS.
pub fn camera_h264_controls(s: &super::encoder::EncodeSettings) -> String {
    let level = super::encoder::level_for(s.width, s.height, s.framerate);
    format!(
        "controls,video_bitrate={},h264_i_frame_period={},repeat_sequence_header=1,h264_profile=1,h264_level={}",
        u64::from(s.bitrate_kbps) * 1000,
        s.gop.max(1),
        super::encoder::v4l2_level(level)
    )
}

/// The head of the video pipeline: `source ! ... ! video/x-raw,format=I420,width,height,framerate`.
pub fn video_launch(src: &VideoSource, width: u32, height: u32, fps: u32) -> String {
    let raw = format!("video/x-raw,width={width},height={height},framerate={fps}/1");
    // Real sources keep their own rate up to the configured one: frames are dropped above it,
    // never duplicated below it.
    let fit = format!(
        "videorate drop-only=true max-rate={fps} ! videoscale ! videoconvert ! video/x-raw,width={width},height={height}"
    );
    let head = match src {
        // `auto` is resolved before building; the test pattern is its fallback.
        VideoSource::Auto | VideoSource::Test => {
            // The clock (pango's clockoverlay, Debian package gstreamer1.0-x) shows that the
            // picture is live; a minimal install without it still gets the moving pattern.
            let clock = if gstreamer::ElementFactory::find("clockoverlay").is_some() {
                " ! clockoverlay time-format=\"%H:%M:%S\" halignment=right valignment=bottom \
                 font-desc=\"Sans 24\" shaded-background=true"
            } else {
                tracing::info!("test pattern without its clock: no clockoverlay (gstreamer1.0-x)");
                ""
            };
            format!("videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! {raw}{clock}")
        }
        // The capture format is chosen from the device's own list at every start
        // (MediaPipeline::start sets `camcaps`): a camera plugged in later, or replaced by
        // another model, gets its own. decodebin3 passes raw video through and decodes MJPEG.
        //
        // decodebin3's source pad is new at every start, and gst-launch links such a pad only
        // once: it is left unlinked here (two chains) and MediaPipeline links it on each
        // pad-added, or a restarted camera would stop with "not-linked" forever.
        VideoSource::V4l2(dev) => format!(
            "v4l2src device=\"{}\" io-mode=mmap ! capsfilter name=camcaps ! decodebin3 name=camdec  \
             {}",
            dev.display(),
            fit.replacen("videorate ", "videorate name=camfit ", 1)
        ),
        VideoSource::Libcamera(name) => {
            let cam = name
                .as_ref()
                .map(|n| format!(" camera-name=\"{n}\""))
                .unwrap_or_default();
            format!("libcamerasrc{cam} ! {raw}")
        }
        VideoSource::Pipeline(desc) => format!("{desc} ! {fit}"),
    };
    format!("{head} ! videoconvert ! video/x-raw,format=I420")
}

/// The head of the audio pipeline, ending in raw audio; `None` for no audio.
pub fn audio_launch(src: &AudioSource) -> Option<String> {
    let head = match src {
        AudioSource::None => return None,
        AudioSource::Test => "audiotestsrc is-live=true wave=sine freq=440 volume=0.1".to_owned(),
        AudioSource::Alsa(dev) => {
            format!("alsasrc device=\"{dev}\" buffer-time=40000 latency-time=10000")
        }
        AudioSource::Pipeline(desc) => desc.clone(),
    };
    Some(format!(
        "{head} ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=2"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_video() {
        assert_eq!(VideoSource::parse("auto"), Ok(VideoSource::Auto));
        assert_eq!(
            VideoSource::parse("v4l2:/dev/video2"),
            Ok(VideoSource::V4l2("/dev/video2".into()))
        );
        assert_eq!(
            VideoSource::parse("libcamera"),
            Ok(VideoSource::Libcamera(None))
        );
        assert_eq!(
            VideoSource::parse("libcamera:imx708"),
            Ok(VideoSource::Libcamera(Some("imx708".into())))
        );
        assert!(matches!(
            VideoSource::parse("pipeline:videotestsrc"),
            Ok(VideoSource::Pipeline(_))
        ));
        assert!(VideoSource::parse("v4l2:video0").is_err());
        assert!(VideoSource::parse("pipeline: ").is_err());
        assert!(VideoSource::parse("webcam").is_err());
    }

    #[test]
    fn parse_audio() {
        assert_eq!(
            AudioSource::parse("alsa:hw:1,0"),
            Ok(AudioSource::Alsa("hw:1,0".into()))
        );
        assert_eq!(AudioSource::parse("none"), Ok(AudioSource::None));
        assert!(
            AudioSource::parse("alsa:hw:1\" ! fakesrc").is_err(),
            "quotes cannot break out of the element"
        );
        assert!(AudioSource::parse("mic").is_err());
    }

    fn fmt(fourcc: &str, sizes: &[(u32, u32, &[f64])]) -> crate::devices::Format {
        crate::devices::Format {
            fourcc: fourcc.into(),
            description: String::new(),
            sizes: sizes
                .iter()
                .map(|(width, height, fps)| crate::devices::Size {
                    width: *width,
                    height: *height,
                    fps: fps.to_vec(),
                })
                .collect(),
        }
    }

    /// A typical UVC webcam: raw YUYV is full-rate only at small sizes, MJPEG at every size.
    fn uvc() -> Vec<crate::devices::Format> {
        vec![
            fmt(
                "YUYV",
                &[
                    (640, 480, &[30.0, 15.0]),
                    (1280, 720, &[10.0, 5.0]),
                    (1920, 1080, &[5.0]),
                ],
            ),
            fmt(
                "MJPG",
                &[
                    (640, 480, &[30.0]),
                    (1280, 720, &[30.0]),
                    (1920, 1080, &[30.0]),
                ],
            ),
            fmt("H264", &[(1920, 1080, &[30.0])]),
        ]
    }

    #[test]
    fn uvc_camera_gets_raw_when_it_keeps_the_rate_else_mjpeg() {
        let c = choose_v4l2_format(&uvc(), 640, 480, 30, FormatUse::Decode).unwrap(); // listed above
        assert_eq!(
            (c.fourcc.as_str(), c.width, c.height, c.fps),
            ("YUYV", 640, 480, 30.0)
        );
        let c = choose_v4l2_format(&uvc(), 1280, 720, 30, FormatUse::Decode).unwrap(); // listed above
        assert_eq!(
            (c.fourcc.as_str(), c.width, c.height, c.fps),
            ("MJPG", 1280, 720, 30.0)
        );
        assert_eq!(
            c.caps(),
            "image/jpeg,width=1280,height=720,framerate=(fraction)[29990/1000,30010/1000]"
        );
        // 15 fps asked: raw 640x480 has exactly 15; 720p raw (10 fps) is too slow.
        let c = choose_v4l2_format(&uvc(), 640, 480, 15, FormatUse::Decode).unwrap(); // listed above
        assert_eq!((c.fourcc.as_str(), c.fps), ("YUYV", 15.0));
    }

    #[test]
    fn smallest_size_covering_the_configured_one_else_the_largest() {
        // vivid: 640x480 only up to 25 fps; 25 for 30 is close enough, no 4K capture.
        let vivid = vec![fmt(
            "YUYV",
            &[
                (320, 180, &[50.0, 30.0]),
                (640, 480, &[25.0]),
                (1280, 720, &[30.0]),
                (3840, 2160, &[30.0]),
            ],
        )];
        let c = choose_v4l2_format(&vivid, 640, 480, 30, FormatUse::Decode).unwrap(); // listed above
        assert_eq!((c.width, c.height, c.fps), (640, 480, 25.0));
        assert_eq!(
            c.caps(),
            "video/x-raw,format=YUY2,width=640,height=480,framerate=(fraction)[24990/1000,25010/1000]"
        );
        let c = choose_v4l2_format(&vivid, 1920, 1080, 30, FormatUse::Decode).unwrap(); // listed above
        assert_eq!((c.width, c.height), (3840, 2160));
        let c = choose_v4l2_format(&vivid, 7680, 4320, 30, FormatUse::Decode).unwrap(); // larger than any
        assert_eq!((c.width, c.height), (3840, 2160));
        // NTSC-style rates keep their exact fraction inside the range.
        let ntsc = vec![fmt("NV12", &[(1280, 720, &[29.97])])];
        let c = choose_v4l2_format(&ntsc, 1280, 720, 30, FormatUse::Decode).unwrap(); // listed above
        assert!(c.caps().contains("[29960/1000,29980/1000]"));
    }

    #[test]
    fn greyscale_only_when_nothing_in_colour_fits() {
        let ir = vec![
            fmt("GREY", &[(640, 480, &[30.0])]),
            fmt("MJPG", &[(640, 480, &[30.0])]),
        ];
        let c = choose_v4l2_format(&ir, 640, 480, 30, FormatUse::Decode).unwrap(); // listed
        assert_eq!(c.fourcc, "MJPG");
        let c = choose_v4l2_format(&ir[..1], 640, 480, 30, FormatUse::Decode).unwrap(); // listed
        assert_eq!(c.fourcc, "GREY");
    }

    #[test]
    fn nothing_capturable_gives_none() {
        assert_eq!(
            choose_v4l2_format(&[], 640, 480, 30, FormatUse::Decode),
            None
        );
        let mjpeg_only = vec![fmt("MJPG", &[(1920, 1080, &[30.0])])];
        assert_eq!(
            choose_v4l2_format(&mjpeg_only, 1920, 1080, 30, FormatUse::H264),
            None
        );
        let h264_only = vec![fmt("H264", &[(1920, 1080, &[30.0])])];
        assert!(choose_v4l2_format(&h264_only, 1920, 1080, 30, FormatUse::Decode).is_some());
        let no_rates = vec![fmt("YUYV", &[(640, 480, &[])])];
        assert_eq!(
            choose_v4l2_format(&no_rates, 640, 480, 30, FormatUse::Decode),
            None
        );
    }

    #[test]
    fn own_h264_is_passed_through_only_where_it_is_as_good_a_fit() {
        let pick = |w, h, using| {
            let c = choose_v4l2_format(&uvc(), w, h, 30, using).unwrap(); // uvc() lists these
            (c.fourcc, c.width, c.height)
        };
        // 1080p30: the camera's H.264 matches as well as MJPEG does, and needs no encode.
        assert_eq!(
            pick(1920, 1080, FormatUse::PreferH264),
            ("H264".into(), 1920, 1080)
        );
        // 720p30: its H.264 comes only at 1080p, a worse fit than MJPEG at 720p.
        assert_eq!(
            pick(1280, 720, FormatUse::PreferH264),
            ("MJPG".into(), 1280, 720)
        );
        // Decoding, the camera's H.264 comes last; passing through, nothing else counts.
        assert_eq!(
            pick(1920, 1080, FormatUse::Decode),
            ("MJPG".into(), 1920, 1080)
        );
        assert_eq!(pick(640, 480, FormatUse::H264), ("H264".into(), 1920, 1080));
        let c = choose_v4l2_format(&uvc(), 1920, 1080, 30, FormatUse::H264).unwrap(); // listed
        assert!(c.is_h264());
        assert_eq!(
            c.caps(),
            "video/x-h264,stream-format=byte-stream,width=1920,height=1080,framerate=(fraction)[29990/1000,30010/1000]"
        );
    }

    #[test]
    fn camera_encoder_controls_follow_the_settings() {
        let s = crate::media::encoder::EncodeSettings {
            width: 1280,
            height: 720,
            framerate: 30,
            bitrate_kbps: 2000,
            gop: 60,
        };
        assert_eq!(
            camera_h264_controls(&s),
            "controls,video_bitrate=2000000,h264_i_frame_period=60,repeat_sequence_header=1,h264_profile=1,h264_level=9"
        );
    }
}
