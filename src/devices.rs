//! `campeer devices`: the cameras (V4L2, through the v4l crate), the audio capture devices (ALSA,
//! through the alsa crate) and the H.264 encoders this machine has, marking the one `auto` uses.

use crate::media::encoder::{self, ElementRegistry, GstRegistry};
use serde::Serialize;
use std::path::Path;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::video::Capture;

/// One V4L2 capture device.
#[derive(Debug, Serialize)]
pub struct Camera {
    /// `/dev/videoN`.
    pub path: String,
    /// The card name.
    pub name: String,
    /// Kernel driver.
    pub driver: String,
    /// Bus info (e.g. `usb-0000:01:00.0-1.2`, `platform:vivid-000`).
    pub bus: String,
    /// Pixel formats.
    pub formats: Vec<Format>,
}

/// One pixel format with its sizes.
#[derive(Debug, Serialize)]
pub struct Format {
    /// FourCC (`YUYV`, `MJPG`, `H264`, ...).
    pub fourcc: String,
    /// The driver's description.
    pub description: String,
    /// Frame sizes with their rates.
    pub sizes: Vec<Size>,
}

/// One frame size and its frame rates.
#[derive(Debug, Serialize)]
pub struct Size {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Frame rates in frames per second (rounded to 2 decimals).
    pub fps: Vec<f64>,
}

/// One ALSA capture PCM.
#[derive(Debug, Serialize)]
pub struct AudioDevice {
    /// The ALSA name to put after `alsa:` (e.g. `hw:CARD=Loopback,DEV=1`).
    pub name: String,
    /// Its description.
    pub description: String,
}

/// One encoder element.
#[derive(Debug, Serialize)]
pub struct Encoder {
    /// Element name.
    pub element: String,
    /// Hardware or software.
    pub hardware: bool,
    /// Present on this machine.
    pub available: bool,
    /// The one `video.encoder = "auto"` picks.
    pub selected: bool,
}

/// Everything `campeer devices` reports.
#[derive(Debug, Serialize)]
pub struct Inventory {
    /// Video capture devices.
    pub cameras: Vec<Camera>,
    /// Audio capture devices.
    pub audio: Vec<AudioDevice>,
    /// H.264 encoders.
    pub encoders: Vec<Encoder>,
}

fn fps_of(f: v4l::Fraction) -> Option<f64> {
    (f.numerator > 0).then(|| ((f.denominator as f64 / f.numerator as f64) * 100.0).round() / 100.0)
}

/// Describe one V4L2 device; `None` when it is not a capture device or cannot be opened.
pub fn describe_camera(path: &Path) -> Option<Camera> {
    describe_camera_for(path, None)
}

/// The size in a stepwise range nearest `want` from above (the range's largest when `want` is
/// larger), on the range's step grid.
fn fit_in_range(want: u32, min: u32, max: u32, step: u32) -> u32 {
    let step = step.max(1);
    let w = want.clamp(min, max);
    let up = min + (w - min).div_ceil(step) * step;
    up.min(max)
}

/// Whether `path` is a video capture device right now; if not, why. A cheap check (an open and
/// one ioctl) that tells a camera that is gone (unplugged, a loopback nobody writes to) from one
/// whose start fails, so that campeer can wait for the first without trying to start it.
pub fn capture_device_absent(path: &Path) -> Option<String> {
    let dev = match v4l::Device::with_path(path) {
        Ok(d) => d,
        Err(e) => return Some(format!("{}: {e}", path.display())),
    };
    match dev.query_caps() {
        Err(e) => Some(format!("{}: cannot query it: {e}", path.display())),
        Ok(caps)
            if !caps.capabilities.intersects(
                v4l::capability::Flags::VIDEO_CAPTURE
                    | v4l::capability::Flags::VIDEO_CAPTURE_MPLANE,
            ) =>
        {
            Some(format!(
                "{} is not a capture device now (unplugged, or a loopback nobody writes to)",
                path.display()
            ))
        }
        Ok(_) => None,
    }
}

/// [`describe_camera`], with the size a camera is wanted at: a format whose sizes are a
/// stepwise range (the Pi's legacy camera, vivid, the loopback) lists, besides the range's
/// extremes, the size in the range nearest `want` (from above), so that a capture format can
/// be chosen at that size rather than the sensor's full one.
pub fn describe_camera_for(path: &Path, want: Option<(u32, u32)>) -> Option<Camera> {
    let dev = v4l::Device::with_path(path).ok()?;
    let caps = dev.query_caps().ok()?;
    if !caps
        .capabilities
        .contains(v4l::capability::Flags::VIDEO_CAPTURE)
        || caps
            .capabilities
            .contains(v4l::capability::Flags::VIDEO_M2M)
    {
        return None;
    }
    let mut formats = Vec::new();
    for desc in Capture::enum_formats(&dev).unwrap_or_default() {
        let mut sizes = Vec::new();
        for fs in Capture::enum_framesizes(&dev, desc.fourcc).unwrap_or_default() {
            let discrete: Vec<(u32, u32)> = match fs.size {
                FrameSizeEnum::Discrete(d) => vec![(d.width, d.height)],
                // Stepwise ranges (vivid, loopback): report the extremes, and the wanted size.
                FrameSizeEnum::Stepwise(s) => {
                    let mut sizes = vec![(s.min_width, s.min_height), (s.max_width, s.max_height)];
                    if let Some((w, h)) = want {
                        let fit = (
                            fit_in_range(w, s.min_width, s.max_width, s.step_width),
                            fit_in_range(h, s.min_height, s.max_height, s.step_height),
                        );
                        if !sizes.contains(&fit) {
                            sizes.insert(1, fit);
                        }
                    }
                    sizes
                }
            };
            for (w, h) in discrete {
                let mut fps: Vec<f64> = Capture::enum_frameintervals(&dev, desc.fourcc, w, h)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|fi| match fi.interval {
                        FrameIntervalEnum::Discrete(f) => fps_of(f),
                        FrameIntervalEnum::Stepwise(s) => fps_of(s.min),
                    })
                    .collect();
                fps.sort_by(|a, b| b.total_cmp(a));
                fps.dedup();
                sizes.push(Size {
                    width: w,
                    height: h,
                    fps,
                });
            }
        }
        formats.push(Format {
            fourcc: desc.fourcc.to_string(),
            description: desc.description.clone(),
            sizes,
        });
    }
    Some(Camera {
        path: path.display().to_string(),
        name: caps.card,
        driver: caps.driver,
        bus: caps.bus,
        formats,
    })
}

/// ALSA PCMs that can capture.
pub fn audio_devices() -> Vec<AudioDevice> {
    let Ok(hints) = alsa::device_name::HintIter::new_str(None, "pcm") else {
        return vec![];
    };
    hints
        .filter(|h| h.direction.is_none_or(|d| d == alsa::Direction::Capture))
        .filter_map(|h| {
            let name = h.name?;
            // Only hardware devices and the default: the plugin zoo (surround51, dmix...) is noise.
            if !(name.starts_with("hw:") || name == "default" || name.starts_with("sysdefault:")) {
                return None;
            }
            Some(AudioDevice {
                name,
                description: h.desc.unwrap_or_default().replace('\n', " — "),
            })
        })
        .collect()
}

/// The whole inventory.
pub fn inventory() -> Inventory {
    let cameras = crate::media::source::v4l2_device_nodes()
        .iter()
        .filter_map(|p| describe_camera(p))
        .collect();
    let have_gst = crate::media::pipeline::init().is_ok();
    let selected = if have_gst {
        encoder::choose("auto", &GstRegistry).ok()
    } else {
        None
    };
    let encoders = encoder::PRIORITY
        .iter()
        .map(|k| Encoder {
            element: k.element().to_owned(),
            hardware: k.is_hardware(),
            available: have_gst && GstRegistry.has(k.element()),
            selected: selected == Some(*k),
        })
        .collect();
    Inventory {
        cameras,
        audio: audio_devices(),
        encoders,
    }
}

/// Human-readable report.
pub fn render(inv: &Inventory) -> String {
    let mut out = String::from("Cameras (V4L2):\n");
    if inv.cameras.is_empty() {
        out.push_str("  none found (the test pattern will be used)\n");
    }
    for c in &inv.cameras {
        out.push_str(&format!(
            "  {}  {}  [driver {}, bus {}]\n",
            c.path, c.name, c.driver, c.bus
        ));
        for f in &c.formats {
            let sizes: Vec<String> = f
                .sizes
                .iter()
                .map(|s| {
                    let fps: Vec<String> = s.fps.iter().map(|r| format!("{r}")).collect();
                    format!(
                        "{}x{}@{}",
                        s.width,
                        s.height,
                        if fps.is_empty() {
                            "?".into()
                        } else {
                            fps.join("/")
                        }
                    )
                })
                .collect();
            out.push_str(&format!(
                "    {} ({}): {}\n",
                f.fourcc,
                f.description,
                sizes.join(", ")
            ));
        }
    }
    out.push_str("Audio capture (ALSA):\n");
    if inv.audio.is_empty() {
        out.push_str("  none found\n");
    }
    for a in &inv.audio {
        out.push_str(&format!("  alsa:{}  {}\n", a.name, a.description));
    }
    out.push_str("H.264 encoders (in the order auto tries them):\n");
    for e in &inv.encoders {
        out.push_str(&format!(
            "  {} {:<14} {:<8} {}\n",
            if e.selected { "*" } else { " " },
            e.element,
            if e.hardware { "hardware" } else { "software" },
            if e.available {
                "available"
            } else {
                "not found"
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn wanted_size_fits_a_stepwise_range() {
        // The Pi's bcm2835 legacy camera: 32..2592 x 32..1944, step 2.
        assert_eq!(super::fit_in_range(1280, 32, 2592, 2), 1280);
        assert_eq!(super::fit_in_range(1281, 32, 2592, 2), 1282);
        assert_eq!(super::fit_in_range(4000, 32, 2592, 2), 2592);
        assert_eq!(super::fit_in_range(16, 32, 2592, 16), 32);
        assert_eq!(super::fit_in_range(100, 32, 2592, 0), 100);
    }
}
