//! Capture and encode: sources, encoder choice, the GStreamer pipeline and its fan-out, and the
//! H.264 bitstream checks.

pub mod encoder;
pub mod h264;
pub mod pipeline;
pub mod source;
