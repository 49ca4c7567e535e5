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
        VideoSource::V4l2(dev) => format!(
            "v4l2src device=\"{}\" io-mode=mmap ! decodebin3 ! {fit}",
            dev.display()
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
}
