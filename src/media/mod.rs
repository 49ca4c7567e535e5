//! Capture and encode: sources, encoder choice, the GStreamer pipeline and its lower
//! renditions, the bus its consumers take frames from (demand and subscriptions), and the H.264
//! bitstream checks.

pub mod bus;
pub mod encoder;
pub mod h264;
pub mod pipeline;
pub mod rendition;
pub mod source;
