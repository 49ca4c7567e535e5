//! One recording segment being written: a [`Feed`] whose pipeline muxes the H.264 and Opus
//! into fragmented MP4 (`mp4mux`) and writes it with `filesink`. A fragment goes to disk every
//! half second, unbuffered and with `O_SYNC`, so a crash loses at most the fragment being
//! gathered. Its elements' names start with `rec`, and so do its streaming threads' names
//! (`recv:src`, `recvq:src`, …): `top -H` and the recording benchmark tell its cost apart.

use crate::outputs::feed::{Feed, FeedError, FeedSpec, audio_branch, video_branch};
use gstreamer as gst;
use gstreamer::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long `mp4mux` gathers a fragment.
pub const FRAGMENT: Duration = Duration::from_millis(500);

/// A segment being written.
pub struct SegmentWriter {
    /// Its pipeline.
    pub feed: Feed,
    path: PathBuf,
}

impl SegmentWriter {
    /// Start writing `path`, whose time 0 is `base` on the bus, for video of `video_caps`
    /// (byte-stream H.264 in access units) and audio of `audio_caps` when there is audio.
    pub fn open(
        path: &Path,
        base: Duration,
        video_caps: &gst::Caps,
        audio_caps: Option<&gst::Caps>,
    ) -> Result<SegmentWriter, FeedError> {
        let mut desc = format!(
            "{}  mp4mux name=recmux fragment-duration={} ! \
             filesink name=file buffer-mode=unbuffered o-sync=true async=false",
            video_branch("rec", "recmux.video_0"),
            FRAGMENT.as_millis()
        );
        if audio_caps.is_some() {
            desc.push_str("  ");
            desc.push_str(&audio_branch("rec"));
            desc.push_str(" ! recmux.audio_0");
        }
        let spec = FeedSpec {
            what: "recording",
            desc: &desc,
            sources: ("recv", "reca"),
            video_caps,
            audio_caps,
        };
        let feed = Feed::open(spec, base, |pipeline| {
            let file = pipeline
                .by_name("file")
                .ok_or_else(|| FeedError::Build("recording", "filesink missing".into()))?;
            file.set_property("location", path.to_string_lossy().as_ref());
            Ok(())
        })?;
        Ok(SegmentWriter {
            feed,
            path: path.to_owned(),
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
