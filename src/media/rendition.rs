//! Lower renditions ("rungs") of the one capture: the same picture scaled down and encoded once
//! more at a lower bitrate, for every viewer whose link cannot carry the main encode. A rung's
//! encoder runs only while some viewer holds it ([`Rendition::acquire`]): behind a closed
//! `valve`, it costs nothing.

use super::pipeline::{EncodedFrame, KeyframeRequester, MediaStats};
use gstreamer::prelude::*;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// What a rung is: its picture size and bitrate (its frame rate is the main one's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RungSpec {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Target bitrate, kbit/s.
    pub bitrate_kbps: u32,
}

impl std::fmt::Display for RungSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}@{}", self.width, self.height, self.bitrate_kbps)
    }
}

/// Why a `video.lower-rung` value is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "video.lower-rung {0:?} is not \"auto\", \"none\" or WIDTHxHEIGHT@KBPS (e.g. \"640x360@600\", even sizes from 64x64, 50-100000 kbit/s)"
)]
pub struct RungSpecError(pub String);

impl RungSpec {
    /// Parse `WIDTHxHEIGHT@KBPS`.
    pub fn parse(s: &str) -> Result<RungSpec, RungSpecError> {
        let err = || RungSpecError(s.to_owned());
        let (size, kbps) = s.trim().split_once('@').ok_or_else(err)?;
        let (w, h) = size.split_once('x').ok_or_else(err)?;
        let num = |t: &str| t.trim().parse::<u32>().map_err(|_| err());
        let spec = RungSpec {
            width: num(w)?,
            height: num(h)?,
            bitrate_kbps: num(kbps)?,
        };
        let even = |v: u32| v.is_multiple_of(2) && (64..=8192).contains(&v);
        if !even(spec.width) || !even(spec.height) || !(50..=100_000).contains(&spec.bitrate_kbps) {
            return Err(err());
        }
        Ok(spec)
    }

    /// The `auto` rung under a main encode of `width`x`height` at `kbps`: half the size, 29 %
    /// of the bitrate (at least 250 kbit/s): 725 kbit/s under 2,500, which a 1 Mbit/s link
    /// carries with the audio and headers; none when the main picture is already small or its
    /// bitrate low.
    pub fn auto_for(width: u32, height: u32, kbps: u32) -> Option<RungSpec> {
        let even = |v: u32| (v / 2) & !1;
        let spec = RungSpec {
            width: even(width),
            height: even(height),
            bitrate_kbps: (kbps * 29 / 100).max(250),
        };
        (width >= 640 && height >= 360 && kbps >= 2 * spec.bitrate_kbps).then_some(spec)
    }
}

/// A lower rendition in the pipeline: its frames, its keyframe requests, its counters, and the
/// valve that runs its encoder only while someone watches it.
pub struct Rendition {
    /// Which rung.
    pub spec: RungSpec,
    /// Encoded H.264 access units.
    pub video: broadcast::Sender<Arc<EncodedFrame>>,
    /// Asks this rung's encoder for keyframes.
    pub keyframes: KeyframeRequester,
    /// This rung's counters.
    pub stats: Arc<MediaStats>,
    valve: gstreamer::Element,
    users: Mutex<usize>,
}

impl Rendition {
    pub(crate) fn new(
        spec: RungSpec,
        video: broadcast::Sender<Arc<EncodedFrame>>,
        keyframes: KeyframeRequester,
        stats: Arc<MediaStats>,
        valve: gstreamer::Element,
    ) -> Self {
        Self {
            spec,
            video,
            keyframes,
            stats,
            valve,
            users: Mutex::new(0),
        }
    }

    /// Run this rung for as long as the returned guard lives (the first user opens the valve;
    /// the encoder starts with a keyframe).
    pub fn acquire(self: &Arc<Self>) -> RenditionUse {
        if let Ok(mut n) = self.users.lock() {
            *n += 1;
            if *n == 1 {
                self.valve.set_property("drop", false);
                tracing::info!(rung = %self.spec, "lower rendition started");
            }
        }
        RenditionUse(self.clone())
    }

    /// Viewers on this rung now.
    pub fn users(&self) -> usize {
        self.users.lock().map(|n| *n).unwrap_or(0)
    }

    fn release(&self) {
        if let Ok(mut n) = self.users.lock() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.valve.set_property("drop", true);
                tracing::info!(rung = %self.spec, "lower rendition stopped: nobody watches it");
            }
        }
    }
}

/// One user's hold on a [`Rendition`].
pub struct RenditionUse(Arc<Rendition>);

impl RenditionUse {
    /// The rendition held.
    pub fn rendition(&self) -> &Arc<Rendition> {
        &self.0
    }
}

impl Drop for RenditionUse {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_refuse() {
        assert_eq!(
            RungSpec::parse("640x360@600"),
            Ok(RungSpec {
                width: 640,
                height: 360,
                bitrate_kbps: 600
            })
        );
        for bad in [
            "",
            "640x360",
            "640x361@600",
            "640x360@10",
            "x@1",
            "0x0@600",
            "640×360@600",
        ] {
            assert!(RungSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_halves_the_picture_and_lowers_the_rate() {
        assert_eq!(
            RungSpec::auto_for(1280, 720, 2500),
            Some(RungSpec {
                width: 640,
                height: 360,
                bitrate_kbps: 725
            })
        );
        assert_eq!(
            RungSpec::auto_for(1920, 1080, 4000)
                .map(|s| s.to_string())
                .as_deref(),
            Some("960x540@1160")
        );
        assert_eq!(
            RungSpec::auto_for(640, 480, 400),
            None,
            "too little bitrate to split"
        );
        assert_eq!(
            RungSpec::auto_for(320, 240, 2500),
            None,
            "too small to halve"
        );
    }
}
