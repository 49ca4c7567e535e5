//! campeer: a headless camera daemon that captures V4L2/libcamera video and ALSA audio, encodes
//! it once (hardware H.264 where the board has it) and publishes it over WebRTC to every browser
//! in its room, with its own signaling server and viewer page.
//!
//! Modules: [`config`] (TOML + env + flags), [`signal`] (rooms, protocol, tokens, server, pages),
//! [`media`] (sources, encoder choice, the pipeline, the bus its consumers share), [`camera`]
//! (the WebRTC side: one connection per viewer, its feed, congestion control), [`outputs`]
//! (snapshots, MJPEG, WHEP, recording, HLS, RTMP, RTSP), [`observe`] (`/healthz` and `/metrics`),
//! [`daemon`] (lifecycle of `run` and `serve`), [`devices`], [`notify`] (systemd).

pub mod camera;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod devices;
pub mod media;
pub mod notify;
pub mod observe;
pub mod outputs;
pub mod signal;
