//! campeer on real V4L2 and ALSA devices: v4l2loopback (`/dev/video10`, fed raw video by a
//! GStreamer writer, or MJPEG/H.264 the way a camera with its own encoder sends them), vivid (a webcam-like capture device), snd-aloop (`hw:Loopback`) and snd-dummy.
//!
//! These need the kernel modules loaded. `scripts/test` runs this file through `tests/vm/run`,
//! which boots Debian's kernel in qemu with the host's files and loads them when the host cannot
//! (this CI machine has no module support); on a board or laptop with the modules loaded
//! (`modprobe v4l2loopback devices=1 video_nr=10 exclusive_caps=1 card_label="campeer
//! loopback"; modprobe vivid n_devs=1; modprobe snd-aloop; modprobe snd-dummy`), `cargo test
//! --test devices` runs them directly. They are not part of a plain `cargo test` (Cargo.toml:
//! `test = false`), because without the devices there is nothing to test.
//!
//! The viewer is a real WebRTC receiver (webrtc-rs + GStreamer decoders, `common::rtc_viewer`)
//! in this process, talking to campeer over loopback ICE/DTLS/SRTP; it decodes what it receives.

mod common;

use common::Campeer;
use common::loopback::EncodedWriter;
use common::rtc_viewer::{RtcViewer, assert_smpte_bars};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::loopback::LOOPBACK;

fn require_devices() {
    assert!(
        Path::new(LOOPBACK).exists() && Path::new("/proc/asound/Loopback").exists(),
        "no {LOOPBACK} or snd-aloop here: run these through tests/vm/run (see the module docs)"
    );
}

/// The vivid capture node (`/dev/videoN` whose driver is vivid and that can capture).
fn vivid() -> String {
    for n in 0..10 {
        let path = format!("/dev/video{n}");
        if let Some(cam) = campeer::devices::describe_camera(Path::new(&path)) {
            if cam.driver == "vivid" {
                return path;
            }
        }
    }
    panic!("no vivid capture device among /dev/video0-9");
}

/// A `gst-launch-1.0` process, killed on drop.
struct Gst(Child);

impl Gst {
    fn start(desc: &str) -> Gst {
        let args: Vec<&str> = desc.split_whitespace().collect();
        let child = Command::new("gst-launch-1.0")
            .arg("-q")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start gst-launch-1.0");
        Gst(child)
    }
}

impl Drop for Gst {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Feed the SMPTE bars into the loopback camera (YUYV 320x240 at 15 fps) and wait until it is a
/// capture device: with exclusive_caps=1 it only becomes one once a writer streams.
fn loopback_writer() -> Gst {
    let writer = Gst::start(&format!(
        "videotestsrc is-live=true pattern=smpte ! \
         video/x-raw,format=YUY2,width=320,height=240,framerate=15/1 ! v4l2sink device={LOOPBACK}"
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while campeer::devices::describe_camera(Path::new(LOOPBACK)).is_none() {
        assert!(
            Instant::now() < deadline,
            "{LOOPBACK} did not become a capture device"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    writer
}

/// Play a 1 kHz tone into the sound loopback's playback side (campeer records `hw:Loopback,1`).
fn tone_writer() -> Gst {
    Gst::start(
        "audiotestsrc is-live=true wave=sine freq=1000 volume=0.3 ! \
         audio/x-raw,format=S16LE,rate=48000,channels=2 ! alsasink device=hw:Loopback,0",
    )
}

fn camera(video: &str, audio: &str, size: (&str, &str, &str)) -> (Campeer, String) {
    camera_with(video, audio, size, &[])
}

fn camera_with(
    video: &str,
    audio: &str,
    size: (&str, &str, &str),
    env: &[(&str, &str)],
) -> (Campeer, String) {
    let mut all = vec![
        ("CAMPEER__VIDEO__WIDTH", size.0),
        ("CAMPEER__VIDEO__HEIGHT", size.1),
        ("CAMPEER__VIDEO__FRAMERATE", size.2),
        // The VM emulates its CPU: the software encoder at its cheapest.
        ("CAMPEER__VIDEO__BITRATE_KBPS", "800"),
    ];
    all.extend_from_slice(env);
    let mut c = Campeer::start(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--video",
            video,
            "--audio",
            audio,
        ],
        &all,
    );
    let url = c.room_url();
    (c, url)
}

#[test]
fn devices_lists_the_virtual_cameras_and_sound_cards() {
    require_devices();
    let _writer = loopback_writer();
    let vivid = vivid();
    let out = Command::new(common::bin())
        .args(["devices", "--json"])
        .output()
        .expect("campeer devices --json");
    assert!(out.status.success(), "campeer devices --json failed");
    let inv: Value = serde_json::from_slice(&out.stdout).expect("JSON inventory");
    let cams = inv["cameras"].as_array().expect("cameras");
    let cam = |path: &str| {
        cams.iter()
            .find(|c| c["path"] == path)
            .unwrap_or_else(|| panic!("{path} not listed: {cams:?}"))
    };
    // A size with its rates; `fps` one of them (any rate when None).
    let has = |cam: &Value, fourcc: &str, w: u64, h: u64, fps: Option<f64>| {
        cam["formats"].as_array().into_iter().flatten().any(|f| {
            f["fourcc"] == fourcc
                && f["sizes"].as_array().into_iter().flatten().any(|s| {
                    s["width"] == w
                        && s["height"] == h
                        && s["fps"].as_array().into_iter().flatten().any(|r| {
                            fps.is_none_or(|f| (r.as_f64().unwrap_or(0.0) - f).abs() < 0.01)
                        })
                })
        })
    };
    let lo = cam(LOOPBACK);
    assert_eq!(lo["name"], "campeer loopback");
    assert_eq!(lo["driver"], "v4l2 loopback");
    // The writer's format; v4l2loopback lists its own default rate, not the writer's.
    assert!(has(lo, "YUYV", 320, 240, None), "loopback formats: {lo}");
    let vi = cam(&vivid);
    assert_eq!(vi["driver"], "vivid");
    assert!(has(vi, "YUYV", 640, 480, Some(25.0)), "vivid formats: {vi}");
    let audio: Vec<String> = inv["audio"]
        .as_array()
        .expect("audio")
        .iter()
        .map(|a| a["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    for card in ["Loopback", "Dummy"] {
        assert!(
            audio.iter().any(|a| a.contains(card)),
            "no {card} capture device in {audio:?}"
        );
    }
    let encoders = inv["encoders"].as_array().expect("encoders");
    assert_eq!(
        encoders.iter().filter(|e| e["selected"] == true).count(),
        1,
        "exactly one encoder marked: {encoders:?}"
    );

    let text = Command::new(common::bin())
        .arg("devices")
        .output()
        .expect("campeer devices");
    let text = String::from_utf8_lossy(&text.stdout);
    for needle in [
        LOOPBACK,
        "campeer loopback",
        vivid.as_str(),
        "Loopback",
        "Dummy",
    ] {
        assert!(
            text.contains(needle),
            "`campeer devices` lacks {needle}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_picture_and_tone_reach_the_viewer() {
    require_devices();
    let _video = loopback_writer();
    let _audio = tone_writer();
    let (mut cam, url) = camera(
        &format!("v4l2:{LOOPBACK}"),
        "alsa:hw:Loopback,1",
        ("320", "240", "15"),
    );
    let line = cam.wait_log("camera format chosen", Duration::from_secs(30));
    assert!(line.contains("YUYV") && line.contains("320"), "{line}");
    let viewer = RtcViewer::connect(&url).await;
    let picture = viewer.wait_frames(20, Duration::from_secs(90)).await;
    assert_eq!((picture.width, picture.height), (320, 240));
    assert_smpte_bars(&picture);
    // The first second decoded can hold the silence before the tone reached the loopback (a
    // slow VM once heard "501 Hz": half a second of it): the viewer must hear a whole second of
    // the 1 kHz tone within 30 s. A wrong rate or channel layout never measures 1000 Hz.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut heard = None;
    let hz = loop {
        heard = viewer.tone_hz(1.0).or(heard);
        if let Some(hz) = heard.filter(|hz| (hz - 1000.0).abs() < 20.0) {
            break hz;
        }
        assert!(
            Instant::now() < deadline,
            "the viewer hears {heard:?} Hz after 30 s, the loopback plays 1000 Hz"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("devices: loopback bars at 320x240 and a {hz:.1} Hz tone reached the viewer");
    viewer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vivid_640x480_at_25_reaches_the_viewer() {
    require_devices();
    let vivid = vivid();
    let (mut cam, url) = camera(&format!("v4l2:{vivid}"), "none", ("640", "480", "25"));
    let line = cam.wait_log("camera format chosen", Duration::from_secs(30));
    for part in ["640", "480", "fps=25"] {
        assert!(line.contains(part), "chose {line}");
    }
    let viewer = RtcViewer::connect(&url).await;
    let picture = viewer.wait_frames(25, Duration::from_secs(90)).await;
    assert_eq!((picture.width, picture.height), (640, 480));
    eprintln!("devices: vivid streamed 640x480 to the viewer");
    viewer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplugged_camera_comes_back_to_the_same_viewer() {
    require_devices();
    let writer = loopback_writer();
    let (mut cam, url) = camera(&format!("v4l2:{LOOPBACK}"), "none", ("320", "240", "15"));
    let viewer = RtcViewer::connect(&url).await;
    viewer.wait_frames(10, Duration::from_secs(90)).await;

    // The writer goes away for 10 s: the loopback device stops being a camera.
    drop(writer);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let lost = cam.wait_log("media pipeline failed", Duration::from_secs(5));
    assert!(lost.contains(LOOPBACK), "the loss names the device: {lost}");
    let before = viewer.frames();

    // The camera is back once the device is a capture device again (the writer's own start,
    // a gst-launch in the VM, is not campeer's to answer for).
    let _writer = loopback_writer();
    let back = Instant::now();
    while viewer.frames() < before + 3 {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "no video 30 s after the camera returned; campeer's log:\n{}",
            cam.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resumed = back.elapsed();
    let picture = viewer
        .received
        .lock()
        .expect("received lock")
        .picture
        .clone();
    assert_smpte_bars(&picture);
    assert_eq!(
        viewer.connection_state(),
        "connected",
        "the viewer kept its connection"
    );
    eprintln!(
        "devices: video resumed {:.2} s after the camera returned ({before} frames before)",
        resumed.as_secs_f64()
    );
    assert!(
        resumed < Duration::from_secs(3),
        "video resumed {resumed:?} after the camera returned; campeer's log:\n{}",
        cam.logs()
    );
    viewer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_camera_is_named_and_retried() {
    require_devices();
    let vivid = vivid();
    // Another program streams from the camera first: it holds it once its frames arrive (an
    // emulated VM on a busy host can take seconds to get there).
    let frames = std::env::temp_dir().join(format!("busy-{}.raw", std::process::id()));
    let other = Gst::start(&format!(
        "v4l2src device={vivid} ! video/x-raw,width=640,height=480,framerate=25/1 ! \
         videorate max-rate=1 ! videoscale ! video/x-raw,width=16,height=12 ! \
         filesink buffer-mode=unbuffered location={}",
        frames.display()
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&frames).map_or(0, |m| m.len()) == 0 {
        assert!(
            Instant::now() < deadline,
            "the other program never streamed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mut cam, url) = camera(&format!("v4l2:{vivid}"), "none", ("640", "480", "25"));
    // Each failed start is logged, naming the device, and the log says it is busy. (Under a
    // busy host the element's "busy" error can reach the bus after the start has already failed
    // as "did not reach PLAYING": it is then logged with the next attempt.)
    let err = cam.wait_log("cannot start capture", Duration::from_secs(60));
    assert!(
        err.contains(&vivid),
        "the start error names the device: {err}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let err = loop {
        let logs = cam.logs();
        if let Some(l) = logs
            .lines()
            .find(|l| l.contains(&vivid) && l.to_lowercase().contains("busy"))
        {
            break l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no start error says the device is busy:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Retried: once the other program lets go, the viewer gets video.
    cam.wait_log("media pipeline still failing", Duration::from_secs(10));
    drop(other);
    let _ = std::fs::remove_file(&frames);
    let viewer = RtcViewer::connect(&url).await;
    let picture = viewer.wait_frames(10, Duration::from_secs(60)).await;
    assert_eq!((picture.width, picture.height), (640, 480));
    eprintln!("devices: busy {vivid} ({err}) was retried and streamed once free");
    viewer.close().await;
}

/// A camera with its own H.264 encoder, with `video.camera-h264 = "pass-through"` (the loopback
/// has no H.264 profile control, which `auto` wants): campeer sends its stream as it is (no
/// decode, no encode), and the viewer is told the camera's own profile and level. The SPS the
/// viewer gets is byte for byte the one the camera wrote (x264's here; the VM's campeer would
/// encode with openh264, whose SPS differs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_h264_reaches_the_viewer_as_the_camera_encoded_it() {
    require_devices();
    let camera_h264 = EncodedWriter::start(b"H264", common::loopback::X264_CONSTRAINED_BASELINE);
    let (mut cam, url) = camera_with(
        &format!("v4l2:{LOOPBACK}"),
        "none",
        ("320", "240", "15"),
        &[("CAMPEER__VIDEO__CAMERA_H264", "pass-through")],
    );
    let built = cam.wait_log("media pipeline built", Duration::from_secs(30));
    assert!(built.contains("encoder=passthrough"), "{built}");
    let viewer = RtcViewer::connect(&url).await;
    let chosen = cam.wait_log("camera format chosen", Duration::from_secs(30));
    assert!(
        chosen.contains("H264") && chosen.contains("320"),
        "{chosen}"
    );
    let (said, sps) = viewer.wait_answer_and_sps().await;
    eprintln!(
        "devices: camera H.264 SPS {}, answer {}",
        sps.profile_level_id(),
        said.profile_level_id()
    );
    assert_eq!(
        (said.profile(), said.level_idc),
        (sps.profile(), sps.level_idc)
    );
    let written = camera_h264.sps.lock().expect("sps lock").clone();
    let received = viewer.received.lock().expect("received lock").sps.clone();
    assert!(written.is_some(), "the camera wrote no SPS");
    assert_eq!(received, written, "the viewer's SPS is the camera's own");
    let picture = viewer.wait_frames(20, Duration::from_secs(90)).await;
    assert_eq!((picture.width, picture.height), (320, 240));
    assert_smpte_bars(&picture);
    // The viewer's keyframe request reached the camera's side of the pipeline; the loopback has
    // no force-key-frame control, so campeer says the viewer waits for the camera's own.
    cam.wait_log("cannot be asked for a keyframe", Duration::from_secs(10));
    eprintln!("devices: the camera's own H.264 reached the viewer unchanged");
    viewer.close().await;
}

/// By default (`auto`), a camera's H.264 is passed through only if the camera can be asked for
/// constrained baseline; the loopback cannot, so its H.264 is decoded and encoded again: the
/// viewer gets campeer's own stream (a different SPS from the camera's), and is told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_h264_without_a_profile_control_is_encoded_again() {
    require_devices();
    let camera_h264 = EncodedWriter::start(b"H264", common::loopback::X264_CONSTRAINED_BASELINE);
    let (mut cam, url) = camera(&format!("v4l2:{LOOPBACK}"), "none", ("320", "240", "15"));
    let why = cam.wait_log(
        "cannot be asked for constrained baseline",
        Duration::from_secs(30),
    );
    assert!(why.contains(LOOPBACK), "{why}");
    let built = cam.wait_log("media pipeline built", Duration::from_secs(30));
    assert!(!built.contains("encoder=passthrough"), "{built}");
    let viewer = RtcViewer::connect(&url).await;
    let chosen = cam.wait_log("camera format chosen", Duration::from_secs(30));
    assert!(
        chosen.contains("H264"),
        "the camera has nothing else: {chosen}"
    );
    let (_, sps) = viewer.wait_answer_and_sps().await;
    assert_eq!(
        sps.profile(),
        Some(campeer::media::h264::Profile::ConstrainedBaseline),
        "{sps}"
    );
    let written = camera_h264.sps.lock().expect("sps lock").clone();
    let received = viewer.received.lock().expect("received lock").sps.clone();
    assert_ne!(
        received, written,
        "campeer's own encode, not the camera's stream"
    );
    let picture = viewer.wait_frames(20, Duration::from_secs(90)).await;
    assert_eq!((picture.width, picture.height), (320, 240));
    assert_smpte_bars(&picture);
    eprintln!("devices: a camera's H.264 without a profile control was decoded and encoded again");
    viewer.close().await;
}

/// A camera that sends only MJPEG: campeer decodes it and encodes H.264 (constrained baseline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mjpeg_camera_is_decoded_and_encoded_for_the_viewer() {
    require_devices();
    let _camera = EncodedWriter::start(b"MJPG", "jpegenc quality=85");
    let (mut cam, url) = camera(&format!("v4l2:{LOOPBACK}"), "none", ("320", "240", "15"));
    let viewer = RtcViewer::connect(&url).await;
    let chosen = cam.wait_log("camera format chosen", Duration::from_secs(30));
    assert!(
        chosen.contains("MJPG") && chosen.contains("320"),
        "{chosen}"
    );
    let (_, sps) = viewer.wait_answer_and_sps().await;
    assert_eq!(
        sps.profile(),
        Some(campeer::media::h264::Profile::ConstrainedBaseline),
        "campeer's own constrained-baseline encode: {sps}"
    );
    let picture = viewer.wait_frames(20, Duration::from_secs(90)).await;
    assert_eq!((picture.width, picture.height), (320, 240));
    assert_smpte_bars(&picture);
    eprintln!("devices: an MJPEG camera was decoded and streamed to the viewer");
    viewer.close().await;
}
