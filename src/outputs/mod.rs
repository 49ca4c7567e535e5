//! Ways out of the one encode besides the room's WebRTC viewers (which live in [`crate::camera`]):
//! each takes its frames from the media bus ([`crate::media::bus`]) and holds a share of capture
//! demand while it works.

pub mod access;
pub mod feed;
pub mod hls;
pub mod mjpeg;
pub mod record;
pub mod rtmp;
pub mod rtsp;
pub mod snapshot;
pub mod whep;
