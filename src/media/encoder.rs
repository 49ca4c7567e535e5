//! Choosing the H.264 encoder: the board's hardware encoder first, software after, and the exact
//! element settings that make every browser decode the result (constrained baseline, no B-frames,
//! SPS/PPS before every IDR, fixed keyframe interval, target bitrate).
//!
//! The choice is made against an [`ElementRegistry`], so it is testable with registries that have
//! any mix of encoders (hardware encoders only register where their device exists).

use std::fmt;

/// The H.264 encoders campeer knows, in the order `auto` tries them. Of the two software
/// encoders x264 comes first: it keeps its target rate (2,544 kbit/s for 2,500 on the moving
/// 1280x720 test pattern, where openh264 sends 3,963 kbit/s unless it may skip frames, and then
/// shows 19 fps), and a rate that holds is what congestion control steers.
pub const PRIORITY: &[EncoderKind] = &[
    EncoderKind::V4l2,
    EncoderKind::Va,
    EncoderKind::Vaapi,
    EncoderKind::Nvidia,
    EncoderKind::X264,
    EncoderKind::OpenH264,
];

/// One H.264 encoder element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderKind {
    /// Raspberry Pi 0–4 hardware encoder (bcm2835-codec, `/dev/video11`).
    V4l2,
    /// VA-API, GStreamer ≥ 1.22's `va` plugin (Intel/AMD).
    Va,
    /// VA-API, the older `vaapi` plugin.
    Vaapi,
    /// NVIDIA Jetson.
    Nvidia,
    /// Cisco's OpenH264 (software).
    OpenH264,
    /// x264 (software).
    X264,
    /// No encoder: a `pipeline:` source that already ends in H.264 is passed through.
    Passthrough,
}

impl EncoderKind {
    /// The GStreamer element name.
    pub fn element(self) -> &'static str {
        match self {
            EncoderKind::V4l2 => "v4l2h264enc",
            EncoderKind::Va => "vah264enc",
            EncoderKind::Vaapi => "vaapih264enc",
            EncoderKind::Nvidia => "nvv4l2h264enc",
            EncoderKind::OpenH264 => "openh264enc",
            EncoderKind::X264 => "x264enc",
            EncoderKind::Passthrough => "passthrough",
        }
    }

    /// The Debian package that provides the element.
    pub fn package(self) -> &'static str {
        match self {
            EncoderKind::V4l2 => "gstreamer1.0-plugins-good (and the board's V4L2 encoder device)",
            EncoderKind::Va => "gstreamer1.0-plugins-bad (and a VA-API driver)",
            EncoderKind::Vaapi => "gstreamer1.0-vaapi",
            EncoderKind::Nvidia => "NVIDIA's L4T GStreamer packages (nvidia-l4t-gstreamer)",
            EncoderKind::OpenH264 => "gstreamer1.0-plugins-bad",
            EncoderKind::X264 => "gstreamer1.0-plugins-ugly",
            EncoderKind::Passthrough => "nothing (the source encodes)",
        }
    }

    /// True for hardware encoders.
    pub fn is_hardware(self) -> bool {
        !matches!(
            self,
            EncoderKind::OpenH264 | EncoderKind::X264 | EncoderKind::Passthrough
        )
    }

    /// Look up by element name.
    pub fn from_element(name: &str) -> Option<EncoderKind> {
        PRIORITY.iter().copied().find(|k| k.element() == name)
    }

    /// Whether this element's `bitrate` property is in kbit/s (else bit/s).
    pub fn bitrate_in_kbps(self) -> bool {
        matches!(
            self,
            EncoderKind::X264 | EncoderKind::Va | EncoderKind::Vaapi
        )
    }
}

impl fmt::Display for EncoderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.element())
    }
}

/// Which GStreamer elements exist.
pub trait ElementRegistry {
    /// True when an element factory of this name is registered.
    fn has(&self, element: &str) -> bool;
}

/// The process's real GStreamer registry (GStreamer must be initialised).
pub struct GstRegistry;

impl ElementRegistry for GstRegistry {
    fn has(&self, element: &str) -> bool {
        gstreamer::ElementFactory::find(element).is_some()
    }
}

impl ElementRegistry for [&str] {
    fn has(&self, element: &str) -> bool {
        self.contains(&element)
    }
}

/// Why no encoder could be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncoderError {
    /// `video.encoder` names an element campeer does not know.
    #[error(
        "unknown encoder {0:?}; known: v4l2h264enc, vah264enc, vaapih264enc, nvv4l2h264enc, openh264enc, x264enc, or auto"
    )]
    Unknown(String),
    /// The pinned encoder is not installed or its device is absent.
    #[error("encoder {element} is not available; install {package}")]
    Missing {
        /// Element name.
        element: &'static str,
        /// Debian package.
        package: &'static str,
    },
    /// `auto` found nothing.
    #[error(
        "no H.264 encoder found; install gstreamer1.0-plugins-ugly (x264enc) or gstreamer1.0-plugins-bad (openh264enc)"
    )]
    None,
}

/// Pick the encoder for `wanted` (`auto` or an element name).
pub fn choose(
    wanted: &str,
    registry: &(impl ElementRegistry + ?Sized),
) -> Result<EncoderKind, EncoderError> {
    if wanted == "auto" {
        return PRIORITY
            .iter()
            .copied()
            .find(|k| registry.has(k.element()))
            .ok_or(EncoderError::None);
    }
    let kind = EncoderKind::from_element(wanted)
        .ok_or_else(|| EncoderError::Unknown(wanted.to_owned()))?;
    if registry.has(kind.element()) {
        Ok(kind)
    } else {
        Err(EncoderError::Missing {
            element: kind.element(),
            package: kind.package(),
        })
    }
}

/// What the encoder is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeSettings {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second.
    pub framerate: u32,
    /// Target bitrate, kbit/s.
    pub bitrate_kbps: u32,
    /// Frames between keyframes.
    pub gop: u32,
}

/// The VP8 encoder of the second branch (viewers without H.264): libvpx in real-time mode, no
/// look-ahead, constant bitrate at the H.264 target, the same keyframe interval, and a
/// resilient bitstream (a lost partition does not take the frame with it).
pub fn vp8_fragment(s: &EncodeSettings) -> String {
    format!(
        "vp8enc name=vp8enc deadline=1 cpu-used=16 lag-in-frames=0 end-usage=cbr target-bitrate={} \
         keyframe-max-dist={} error-resilient=partitions threads=2 buffer-size=1000 \
         buffer-initial-size=500 buffer-optimal-size=600 undershoot=95",
        u64::from(s.bitrate_kbps) * 1000,
        s.gop.max(1)
    )
}

/// The smallest H.264 level (as `level_idc`, e.g. 31 for 3.1) whose macroblock rate and frame
/// size hold `width`x`height` at `fps` (H.264 Table A-1).
pub fn level_for(width: u32, height: u32, fps: u32) -> u8 {
    let mbs = width.div_ceil(16) * height.div_ceil(16);
    let rate = mbs * fps;
    // (level_idc, max macroblocks per second, max frame size in macroblocks)
    const LEVELS: &[(u8, u32, u32)] = &[
        (10, 1485, 99),
        (11, 3000, 396),
        (12, 6000, 396),
        (13, 11880, 396),
        (20, 11880, 396),
        (21, 19800, 792),
        (22, 20250, 1620),
        (30, 40500, 1620),
        (31, 108000, 3600),
        (32, 216000, 5120),
        (40, 245760, 8192),
        (41, 245760, 8192),
        (42, 522240, 8704),
        (50, 589824, 22080),
        (51, 983040, 36864),
        (52, 2073600, 36864),
    ];
    LEVELS
        .iter()
        .find(|(_, r, f)| rate <= *r && mbs <= *f)
        .map(|(l, _, _)| *l)
        .unwrap_or(52)
}

/// The level as v4l2h264enc's `h264_level` control value (V4L2_MPEG_VIDEO_H264_LEVEL_*).
pub fn v4l2_level(level_idc: u8) -> u8 {
    match level_idc {
        10 => 0,
        11 => 2,
        12 => 3,
        13 => 4,
        20 => 5,
        21 => 6,
        22 => 7,
        30 => 8,
        31 => 9,
        32 => 10,
        40 => 11,
        41 => 12,
        42 => 13,
        50 => 14,
        _ => 15,
    }
}

/// The gst-launch fragment for the encoder, ending in constrained-baseline byte-stream H.264.
pub fn launch_fragment(kind: EncoderKind, s: &EncodeSettings) -> String {
    launch_fragment_named(kind, s, "encoder")
}

/// [`launch_fragment`] with the encoder element called `name` (a lower rendition's own).
pub fn launch_fragment_named(kind: EncoderKind, s: &EncodeSettings, name: &str) -> String {
    let kbps = s.bitrate_kbps;
    let bps = kbps as u64 * 1000;
    let gop = s.gop.max(1);
    let enc = match kind {
        EncoderKind::X264 => format!(
            "x264enc name={name} tune=zerolatency speed-preset=ultrafast bitrate={kbps} vbv-buf-capacity=500 key-int-max={gop} bframes=0 b-adapt=false byte-stream=true aud=false"
        ),
        EncoderKind::OpenH264 => format!(
            "openh264enc name={name} bitrate={bps} max-bitrate={} gop-size={gop} usage-type=camera rate-control=bitrate complexity=low enable-frame-skip=false multi-thread=2",
            bps * 3 / 2
        ),
        EncoderKind::V4l2 => {
            let level = level_for(s.width, s.height, s.framerate);
            format!(
                "v4l2h264enc name={name} extra-controls=\"controls,repeat_sequence_header=1,video_bitrate={bps},h264_i_frame_period={gop},h264_level={},h264_profile=1\" ! video/x-h264,level=(string){}",
                v4l2_level(level),
                crate::media::h264::level_name(level)
            )
        }
        EncoderKind::Va => format!(
            "vah264enc name={name} bitrate={kbps} key-int-max={gop} b-frames=0 rate-control=cbr"
        ),
        EncoderKind::Vaapi => format!(
            "vaapih264enc name={name} bitrate={kbps} keyframe-period={gop} max-bframes=0 rate-control=cbr"
        ),
        EncoderKind::Nvidia => format!(
            "nvvidconv ! video/x-raw(memory:NVMM) ! nvv4l2h264enc name={name} bitrate={bps} iframeinterval={gop} insert-sps-pps=true profile=0 maxperf-enable=true"
        ),
        // The source's own profile: whatever it is, the viewers' offers are matched against it.
        EncoderKind::Passthrough => {
            return "h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au"
                .to_owned();
        }
    };
    format!(
        "{enc} ! video/x-h264,profile=constrained-baseline,stream-format=byte-stream ! h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PI4: &[&str] = &["v4l2h264enc", "openh264enc", "x264enc"];
    const X264_ONLY: &[&str] = &["x264enc"];
    const OPENH264_ONLY: &[&str] = &["openh264enc"];
    const NONE: &[&str] = &[];
    const INTEL: &[&str] = &["vah264enc", "vaapih264enc", "x264enc"];

    #[test]
    fn auto_prefers_hardware() {
        assert_eq!(choose("auto", PI4), Ok(EncoderKind::V4l2));
        assert_eq!(choose("auto", INTEL), Ok(EncoderKind::Va));
        assert_eq!(choose("auto", X264_ONLY), Ok(EncoderKind::X264));
        assert_eq!(choose("auto", OPENH264_ONLY), Ok(EncoderKind::OpenH264));
        assert_eq!(
            choose("auto", &["openh264enc", "x264enc"][..]),
            Ok(EncoderKind::X264),
            "x264 keeps its rate; openh264 overshoots by half"
        );
        assert_eq!(choose("auto", NONE), Err(EncoderError::None));
    }

    #[test]
    fn pinned_encoder() {
        assert_eq!(choose("x264enc", PI4), Ok(EncoderKind::X264));
        let e = choose("x264enc", OPENH264_ONLY).unwrap_err();
        assert!(e.to_string().contains("gstreamer1.0-plugins-ugly"), "{e}");
        let e = choose("v4l2h264enc", X264_ONLY).unwrap_err();
        assert!(e.to_string().contains("v4l2h264enc"), "{e}");
        assert!(matches!(
            choose("ffmpeg", PI4),
            Err(EncoderError::Unknown(_))
        ));
    }

    #[test]
    fn levels_follow_table_a1() {
        assert_eq!(level_for(640, 480, 30), 30);
        assert_eq!(level_for(1280, 720, 30), 31);
        assert_eq!(level_for(1280, 720, 60), 32);
        assert_eq!(level_for(1920, 1080, 30), 40);
        assert_eq!(level_for(1280, 720, 120), 42);
        assert_eq!(crate::media::h264::level_name(40), "4");
        assert_eq!(crate::media::h264::level_name(31), "3.1");
    }

    #[test]
    fn fragments_carry_the_settings() {
        let s = EncodeSettings {
            width: 1920,
            height: 1080,
            framerate: 30,
            bitrate_kbps: 4000,
            gop: 60,
        };
        let v = launch_fragment(EncoderKind::V4l2, &s);
        assert!(v.contains("repeat_sequence_header=1"), "{v}");
        assert!(v.contains("video_bitrate=4000000"), "{v}");
        assert!(v.contains("h264_i_frame_period=60"), "{v}");
        assert!(
            v.contains("h264_level=11") && v.contains("level=(string)4"),
            "{v}"
        );
        let x = launch_fragment(EncoderKind::X264, &s);
        assert!(
            x.contains("bitrate=4000 ") && x.contains("key-int-max=60") && x.contains("bframes=0"),
            "{x}"
        );
        for k in PRIORITY {
            let f = launch_fragment(*k, &s);
            assert!(
                f.contains("profile=constrained-baseline") && f.contains("config-interval=-1"),
                "{f}"
            );
        }
    }
}
