//! Recording, as the owner of a camera meets it: segments on disk that play (picture and
//! sound) in GStreamer and in Chromium from the room page, what a `kill -9` leaves behind,
//! retention, a full disk, and who may start and stop it.

mod common;

use common::mp4::decode;
use common::rtc_viewer::assert_smpte_bars;
use common::whep::request;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Still bars (the built-in test pattern scrolls), so every frame can be checked.
const STILL_BARS: &str = "pipeline:videotestsrc is-live=true pattern=smpte ! video/x-raw,width=320,height=240,framerate=30/1";

/// `campeer run` on the test pattern and tone at 320x240 (little CPU), recording into `dir`
/// with `extra` settings.
fn recording_camera(dir: &Path, extra: &[(&str, &str)]) -> (Campeer, String) {
    let path = format!("\"{}\"", dir.display());
    let mut env: Vec<(&str, &str)> = vec![
        ("CAMPEER__VIDEO__WIDTH", "320"),
        ("CAMPEER__VIDEO__HEIGHT", "240"),
        ("CAMPEER__VIDEO__BITRATE_KBPS", "500"),
        ("CAMPEER__VIDEO__KEYFRAME_INTERVAL", "\"1s\""),
        ("CAMPEER__VIDEO__LOWER_RUNGS", "\"none\""),
        ("CAMPEER__RECORD__ENABLED", "true"),
        ("CAMPEER__RECORD__PATH", &path),
        ("CAMPEER__RECORD__MIN_FREE_MB", "1"),
    ];
    env.extend_from_slice(extra);
    let args = [
        "run",
        "--video",
        STILL_BARS,
        "--audio",
        "test",
        "--listen",
        "127.0.0.1:0",
    ];
    let mut cam = Campeer::start(&args, &env);
    let url = cam.room_url();
    (cam, url)
}

/// The segment files in `dir`, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "mp4"));
    v.sort();
    v
}

fn closed_count(cam: &Campeer) -> usize {
    cam.logs()
        .lines()
        .filter(|l| l.contains("recording segment closed"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_seconds_make_three_ten_second_segments_that_play_with_picture_and_sound() {
    let dir = TempDir::new("rec-segments");
    let (cam, url) = recording_camera(dir.path(), &[("CAMPEER__RECORD__SEGMENT", "\"10s\"")]);
    let base = base_of(&url);
    let (_, token) = ws_of(&url);
    let token = token.expect("the room needs a token");
    // The next segment's file is created on the keyframe after a segment is closed (the log
    // line comes first), so wait for both: three closed, and a fourth begun.
    let deadline = Instant::now() + Duration::from_secs(60);
    while closed_count(&cam) < 3 || segments(dir.path()).len() < 4 {
        assert!(
            Instant::now() < deadline,
            "three segments not closed and a fourth begun in 60 s: {:?}\n{}",
            segments(dir.path()),
            cam.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let files = segments(dir.path());
    for f in &files[..3] {
        let d = decode(f);
        assert_eq!(d.error, None, "{} decodes", f.display());
        let video = d.video.span().as_secs_f64() + 1.0 / 30.0;
        assert!(
            (video - 10.0).abs() <= 1.0,
            "{}: {video:.2} s of video, expected 10 ± 1 ({} frames)",
            f.display(),
            d.video.count
        );
        let audio = d.audio.span().as_secs_f64();
        eprintln!(
            "{}: {video:.2} s of video, {audio:.2} s of audio",
            f.display()
        );
        assert!(
            (audio - video).abs() <= 0.5,
            "{}: {audio:.2} s of audio beside {video:.2} s of video",
            f.display()
        );
        assert_smpte_bars(d.picture.as_ref().expect("a decoded picture"));
    }

    // The listing: newest first, the one being written marked, and only with the token.
    let (status, _) = http_get(&base, "/recordings").await;
    assert_eq!(status, 401, "a closed room's recordings need its token");
    // Between closing a segment and opening the next (a moment every 10 s) nothing is open:
    // a listing taken then is asked again.
    let deadline = Instant::now() + Duration::from_secs(5);
    let json = loop {
        let (status, body) = http_get(&base, &format!("/recordings?token={token}")).await;
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value =
            serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap_or(""))
                .expect("JSON listing");
        if json["segments"][0]["open"] == true || Instant::now() > deadline {
            break json;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let listed = json["segments"].as_array().expect("segments");
    assert!(listed.len() >= 4, "{json}");
    assert_eq!(
        listed[0]["open"], true,
        "the newest is being written: {json}"
    );
    assert_eq!(json["recording"], true);
    let first = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        listed.last().unwrap()["name"].as_str(),
        Some(first.as_str()),
        "oldest last: {json}"
    );

    // Byte ranges, as <video> asks for them when seeking.
    let len = std::fs::metadata(&files[0]).unwrap().len();
    let (status, reply) = http_get_with(
        &base,
        &format!("/recordings/{first}?token={token}"),
        &["Range: bytes=100-199"],
    )
    .await;
    assert_eq!(status, 206, "{}", &reply[..reply.len().min(300)]);
    assert!(
        reply
            .to_ascii_lowercase()
            .contains(&format!("content-range: bytes 100-199/{len}")),
        "{}",
        &reply[..reply.len().min(300)]
    );
    let (status, _) = http_get(&base, "/recordings/..%2Fsecret").await;
    assert!(status == 404 || status == 401, "{status}");
    let (status, _) = http_get(&base, &format!("/recordings/..%2Fsecret?token={token}")).await;
    assert_eq!(status, 404, "only segment names are served");

    // The room page lists them and Chromium plays one.
    let browser = Browser::launch();
    let mut page = browser.open(&url).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = page
            .eval("document.querySelectorAll('#rec-list .rec-play').length")
            .await;
        if n.as_u64().unwrap_or(0) >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "the page lists no recordings");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The oldest (last in the list) is closed.
    page.eval("(() => { const b = document.querySelectorAll('#rec-list .rec-play'); b[b.length - 1].click(); })()")
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut t = 0.0;
    while t < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the recording does not play in Chromium: currentTime {t}, error {}",
            page.eval("String(document.getElementById('rec-player').error && document.getElementById('rec-player').error.message)").await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        t = page
            .eval("document.getElementById('rec-player').currentTime")
            .await
            .as_f64()
            .unwrap_or(0.0);
    }
    let size = page
        .eval("[document.getElementById('rec-player').videoWidth, document.getElementById('rec-player').videoHeight]")
        .await;
    assert_eq!(size, serde_json::json!([320, 240]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_segment_loses_at_most_a_second() {
    let dir = TempDir::new("rec-kill");
    let (cam, _url) = recording_camera(dir.path(), &[("CAMPEER__RECORD__SEGMENT", "\"60s\"")]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let file = loop {
        if let Some(f) = segments(dir.path()).into_iter().next() {
            break f;
        }
        assert!(Instant::now() < deadline, "no segment:\n{}", cam.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The file exists from the segment's first frame on: time from here on was recorded.
    let since = Instant::now();
    tokio::time::sleep(Duration::from_millis(6500)).await;
    cam.signal(libc::SIGKILL);
    let recorded = since.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = decode(&file);
    assert_eq!(d.error, None, "the segment open at the kill decodes");
    let video = d.video.span().as_secs_f64();
    eprintln!(
        "kill -9 after {recorded:.2} s of recording: {video:.2} s of video and {:.2} s of audio decode",
        d.audio.span().as_secs_f64()
    );
    assert!(
        video >= recorded - 1.0,
        "{video:.2} s of video left of {recorded:.2} s recorded before kill -9"
    );
    assert!(
        d.audio.span().as_secs_f64() >= recorded - 1.0,
        "{:?}",
        d.audio
    );
    assert_smpte_bars(d.picture.as_ref().expect("a decoded picture"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_the_oldest_segments_and_nothing_else() {
    let dir = TempDir::new("rec-retention");
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"not a recording").unwrap();
    let (mut cam, url) = recording_camera(
        dir.path(),
        &[
            ("CAMPEER__RECORD__SEGMENT", "\"2s\""),
            ("CAMPEER__RECORD__KEEP", "\"5s\""),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(f) = segments(dir.path()).into_iter().next() {
            break f;
        }
        assert!(Instant::now() < deadline, "no segment:\n{}", cam.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while first.exists() {
        assert!(
            Instant::now() < deadline,
            "the oldest segment outlived keep = 5s by 25 s: {:?}",
            segments(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = segments(dir.path());
    assert!(!left.is_empty(), "newer segments stay");
    for f in &left {
        let age = std::fs::metadata(f)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| m.elapsed().ok())
            .unwrap_or_default();
        assert!(
            age < Duration::from_secs(9),
            "{} is {age:?} old",
            f.display()
        );
    }
    assert!(
        dir.path().join("notes.txt").exists(),
        "other files are left alone"
    );
    // The file goes first, then the counter and the log line (which reaches the test through
    // a pipe): wait for the line, then read the counter.
    cam.wait_log("recording deleted by retention", Duration::from_secs(5));
    let (_, metrics) = http_get(&base_of(&url), "/metrics").await;
    assert!(
        metric_value(&metrics, "campeer_recording_deleted_total").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
}

/// A small tmpfs mounted for one test, unmounted on drop.
struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    fn mount(tag: &str, size: &str) -> SmallDisk {
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(dir.path()).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "mounting a tmpfs needs root (the test command runs as root)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fill the file system of `path` with a file there until it is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler file");
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.flush();
}

async fn health(base: &str) -> (u16, String) {
    http_get(base, "/healthz").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_live_view_goes_on_and_recording_resumes() {
    let disk = SmallDisk::mount("rec-full", "6m");
    let (cam, url) = recording_camera(disk.path(), &[("CAMPEER__RECORD__SEGMENT", "\"2s\"")]);
    let base = base_of(&url);
    let deadline = Instant::now() + Duration::from_secs(20);
    while segments(disk.path()).is_empty() {
        assert!(Instant::now() < deadline, "no segment:\n{}", cam.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let filler = disk.path().join("filler.bin");
    fill(&filler);
    // Recording deletes its own oldest segments to make room (min-free-mb) until none is left
    // but the filler: then it cannot write, and says so.
    let deadline = Instant::now() + Duration::from_secs(40);
    let why = loop {
        let (status, body) = health(&base).await;
        if status == 503 && body.contains("recording cannot write") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "a full disk is not reported: /healthz {status} {body}\n{}",
            cam.logs()
        );
        fill(&disk.path().join("filler2.bin"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        why.contains("No space left") || why.contains("disk full"),
        "the reason names the full disk: {why}"
    );
    let (_, m1) = http_get(&base, "/metrics").await;
    assert_eq!(
        metric_value(&m1, "campeer_recording_failing"),
        Some(1.0),
        "{m1}"
    );
    assert!(metric_value(&m1, "campeer_recording_errors_total").unwrap_or(0.0) >= 1.0);
    // Live video goes on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, m2) = http_get(&base, "/metrics").await;
    let frames = |m: &str| metric_value(m, "campeer_frames_encoded_total").unwrap_or(0.0);
    assert!(
        frames(&m2) >= frames(&m1) + 30.0,
        "the camera keeps encoding: {} then {}",
        frames(&m1),
        frames(&m2)
    );
    assert!(
        cam.logs()
            .contains("recording cannot write; live viewing goes on")
    );

    // Space again: recording resumes by itself.
    let _ = std::fs::remove_file(&filler);
    let _ = std::fs::remove_file(disk.path().join("filler2.bin"));
    let before = segments(disk.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = health(&base).await;
        let (_, m) = http_get(&base, "/metrics").await;
        if status == 200 && metric_value(&m, "campeer_recording_failing") == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "recording did not resume: /healthz {status} {body}\n{}",
            cam.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = segments(disk.path());
    let new: Vec<_> = after.iter().filter(|f| !before.contains(f)).collect();
    assert!(
        !new.is_empty(),
        "new segments after the disk had room: {after:?}"
    );
    assert!(cam.logs().contains("recording writes again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_rooms_camera_token_starts_and_stops_recording() {
    let dir = TempDir::new("rec-control");
    let (cam, url) = recording_camera(
        dir.path(),
        &[
            ("CAMPEER__RECORD__ENABLED", "false"),
            ("CAMPEER__RECORD__SEGMENT", "\"60s\""),
        ],
    );
    let base = base_of(&url);
    let viewer = cam.token("camera", "viewer");
    let camera = cam.token("camera", "camera");
    let post = |path: &str, token: Option<&str>| {
        let head = match token {
            Some(t) => format!("POST {path} HTTP/1.0\r\nAuthorization: Bearer {t}"),
            None => format!("POST {path} HTTP/1.0"),
        };
        let base = base.clone();
        async move { request(&base, &head, "").await }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        segments(dir.path()).is_empty(),
        "recording is off until started"
    );
    assert_eq!(post("/recordings/start", None).await.0, 401);
    assert_eq!(
        post("/recordings/start", Some(&viewer)).await.0,
        403,
        "a viewer cannot"
    );
    assert_eq!(post("/recordings/start", Some("v1.forged.x")).await.0, 401);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        segments(dir.path()).is_empty(),
        "refused requests changed nothing"
    );

    let (status, body) = post("/recordings/start", Some(&camera)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"recording\":true"), "{body}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while segments(dir.path()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "recording did not start:\n{}",
            cam.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(post("/recordings/stop", Some(&viewer)).await.0, 403);
    let (status, body) = post("/recordings/stop", Some(&camera)).await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while closed_count(&cam) < 1 {
        assert!(
            Instant::now() < deadline,
            "the segment was not closed:\n{}",
            cam.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let files = segments(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let size = std::fs::metadata(&files[0]).unwrap().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().len(),
        size,
        "nothing is written after stop"
    );
    let d = decode(&files[0]);
    assert_eq!(d.error, None);
    assert!(d.video.span() >= Duration::from_secs(2), "{:?}", d.video);
    let (_, m) = http_get(&base, "/metrics").await;
    assert_eq!(metric_value(&m, "campeer_recording"), Some(0.0), "{m}");
}
