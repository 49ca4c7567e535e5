//! Camera-format benchmark (a command, not a test): what campeer costs for each way a V4L2
//! camera can send video. Needs the v4l2loopback camera, so run it in the device-test VM:
//!
//! ```text
//! bash tests/vm/setup
//! CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$PWD/tests/vm/run cargo bench --bench camera
//! ```
//!
//! For a camera sending its own H.264 (passed through, and with `video.camera-h264 =
//! "re-encode"`), MJPEG and raw YUYV, all 320x240 at 15 fps (SMPTE bars, written into the
//! loopback by this process): CPU (% of one core, utime+stime of the `campeer run` process over
//! 15 s after a 5 s warm-up, always-on, no viewer) and its RSS. The VM emulates its CPU (TCG),
//! so the figures compare the paths with each other; they are not a board's.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/procstat.rs"]
mod procstat;

use common::Campeer;
use common::loopback::{EncodedWriter, LOOPBACK, X264_CONSTRAINED_BASELINE as H264};
use procstat::{cpu_percent, cpu_ticks, status_kb};
use std::time::{Duration, Instant};

fn one(label: &str, fourcc: &'static [u8; 4], encode: &str, camera_h264: &str) {
    let _camera = EncodedWriter::start(fourcc, encode);
    let mut cam = Campeer::start(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--video",
            &format!("v4l2:{LOOPBACK}"),
            "--audio",
            "none",
        ],
        &[
            ("CAMPEER__VIDEO__WIDTH", "320"),
            ("CAMPEER__VIDEO__HEIGHT", "240"),
            ("CAMPEER__VIDEO__FRAMERATE", "15"),
            ("CAMPEER__VIDEO__BITRATE_KBPS", "300"),
            ("CAMPEER__VIDEO__ENCODER", "x264enc"),
            ("CAMPEER__VIDEO__FALLBACK", "none"),
            ("CAMPEER__VIDEO__CAMERA_H264", camera_h264),
            ("CAMPEER__CAMERA__ALWAYS_ON", "true"),
        ],
    );
    let chosen = cam.wait_log("camera format chosen", Duration::from_secs(60));
    let pid = cam.pid();
    std::thread::sleep(Duration::from_secs(5));
    let (t0, c0) = (Instant::now(), cpu_ticks(Some(pid)));
    std::thread::sleep(Duration::from_secs(15));
    let cpu = cpu_percent(cpu_ticks(Some(pid)) - c0, t0.elapsed().as_secs_f64());
    let format = chosen
        .split_whitespace()
        .find_map(|w| w.strip_prefix("format="))
        .unwrap_or("?")
        .to_owned();
    println!(
        "{label:<28} (camera format {format:<4})  campeer {cpu:>6.1} % of a core  RSS {:>6.1} MB",
        status_kb(Some(pid), "VmRSS:") as f64 / 1024.0
    );
}

fn main() {
    if !std::path::Path::new(LOOPBACK).exists() {
        eprintln!(
            "camera bench: no {LOOPBACK}; run it through tests/vm/run (see the top of benches/camera.rs)"
        );
        return;
    }
    println!(
        "campeer run on v4l2:{LOOPBACK}, 320x240 @15, x264enc where it encodes (emulated CPU)"
    );
    one("own H.264, passed through", b"H264", H264, "pass-through");
    one("own H.264, re-encoded", b"H264", H264, "re-encode");
    one(
        "MJPEG, decoded and encoded",
        b"MJPG",
        "jpegenc quality=85",
        "auto",
    );
    one(
        "YUYV, encoded",
        b"YUYV",
        "videoconvert ! video/x-raw,format=YUY2",
        "auto",
    );
}
