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

/// Why a `video.lower-rungs` value is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "video.lower-rungs {0:?} is not \"auto\", \"none\" or up to 3 comma-separated WIDTHxHEIGHT@KBPS, falling in bitrate (e.g. \"640x360@725,320x180@250\"; even sizes from 64x64, 50-100000 kbit/s)"
)]
pub struct RungSpecError(pub String);

/// Most lower renditions.
pub const MAX_LOWER_RUNGS: usize = 3;

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

    /// Parse `video.lower-rungs` for a main encode of `width`x`height` at `kbps`: `auto`
    /// ([`RungSpec::auto_for`]), `none`, or a comma-separated list falling in bitrate.
    pub fn parse_list(
        s: &str,
        width: u32,
        height: u32,
        kbps: u32,
    ) -> Result<Vec<RungSpec>, RungSpecError> {
        match s.trim() {
            "auto" => return Ok(RungSpec::auto_for(width, height, kbps)),
            "none" => return Ok(Vec::new()),
            _ => {}
        }
        let err = || RungSpecError(s.to_owned());
        let list = s
            .split(',')
            .map(RungSpec::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| err())?;
        let falling = list
            .windows(2)
            .all(|w| w[1].bitrate_kbps < w[0].bitrate_kbps);
        let under_main = list.first().is_none_or(|r| r.bitrate_kbps < kbps);
        if list.is_empty() || list.len() > MAX_LOWER_RUNGS || !falling || !under_main {
            return Err(err());
        }
        Ok(list)
    }

    /// The `auto` rungs under a main encode of `width`x`height` at `kbps`: half the size at 29 %
    /// of the bitrate (640x360 at 725 kbit/s under 1280x720 at 2,500, which a 1 Mbit/s link
    /// carries with the audio and headers), and a quarter of the size at 10 % (at least 150
    /// kbit/s; 320x180 at 250) for links shared with a download or worse. A rung is left out when
    /// its picture would be under 160x90 or the main bitrate is under twice its own.
    pub fn auto_for(width: u32, height: u32, kbps: u32) -> Vec<RungSpec> {
        let scaled = |div: u32, percent: u32, floor: u32| RungSpec {
            width: (width / div) & !1,
            height: (height / div) & !1,
            bitrate_kbps: (kbps * percent / 100).max(floor),
        };
        [scaled(2, 29, 250), scaled(4, 10, 150)]
            .into_iter()
            .filter(|r| r.width >= 160 && r.height >= 90 && kbps >= 2 * r.bitrate_kbps)
            .collect()
    }
}

/// What a [`Rendition`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenditionKind {
    /// A lower H.264 rung, for viewers on slow links.
    Lower,
    /// VP8 at the main size, for viewers that cannot decode H.264 (`video.fallback = "vp8"`).
    Vp8,
}

/// A second encode of the one capture: its frames, its keyframe requests, its counters, and
/// the valve that runs its encoder only while someone watches it (the encoder starts with a
/// keyframe when the valve opens).
pub struct Rendition {
    /// Its size and bitrate.
    pub spec: RungSpec,
    /// A lower rung or the VP8 fallback.
    pub kind: RenditionKind,
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
        kind: RenditionKind,
        video: broadcast::Sender<Arc<EncodedFrame>>,
        keyframes: KeyframeRequester,
        stats: Arc<MediaStats>,
        valve: gstreamer::Element,
    ) -> Self {
        Self {
            spec,
            kind,
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
                match self.kind {
                    RenditionKind::Lower => {
                        tracing::info!(rung = %self.spec, "lower rendition started")
                    }
                    RenditionKind::Vp8 => tracing::info!(
                        size = %self.spec,
                        "VP8 encoder started for viewers without H.264"
                    ),
                }
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
                match self.kind {
                    RenditionKind::Lower => {
                        tracing::info!(rung = %self.spec, "lower rendition stopped: nobody watches it")
                    }
                    RenditionKind::Vp8 => tracing::info!("VP8 encoder stopped: no viewer needs it"),
                }
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
    fn auto_halves_and_quarters_the_picture() {
        let names = |v: Vec<RungSpec>| v.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(RungSpec::auto_for(1280, 720, 2500)),
            ["640x360@725", "320x180@250"]
        );
        assert_eq!(
            names(RungSpec::auto_for(1920, 1080, 4000)),
            ["960x540@1160", "480x270@400"]
        );
        assert_eq!(
            names(RungSpec::auto_for(640, 480, 2500)),
            ["320x240@725", "160x120@250"]
        );
        assert_eq!(
            names(RungSpec::auto_for(640, 480, 400)),
            ["160x120@150"],
            "too little bitrate for the half-size rung"
        );
        assert_eq!(
            names(RungSpec::auto_for(320, 240, 2500)),
            ["160x120@725"],
            "too small to quarter"
        );
    }

    #[test]
    fn lists_parse_and_refuse() {
        let list = |s| RungSpec::parse_list(s, 1280, 720, 2500).map(|v| v.len());
        assert_eq!(list("auto"), Ok(2));
        assert_eq!(list("none"), Ok(0));
        assert_eq!(list("640x360@725"), Ok(1));
        assert_eq!(list("640x360@725, 320x180@250"), Ok(2));
        for bad in [
            "",
            "640x360@725,320x180@900",
            "640x360@3000",
            "a@b",
            "640x360@700,480x270@500,320x180@300,160x90@100",
        ] {
            assert!(list(bad).is_err(), "{bad}");
        }
    }
}
