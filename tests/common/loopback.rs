//! The v4l2loopback camera (`/dev/video10` in the device-test VM) sending what a camera with
//! its own encoder sends: for tests/devices.rs and benches/camera.rs.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The loopback device (tests/vm/run loads v4l2loopback with video_nr=10).
pub const LOOPBACK: &str = "/dev/video10";

/// A camera's H.264 encoder, for [`EncodedWriter::start`]: constrained baseline (the test
/// viewer decodes with openh264, which decodes nothing else), an IDR every second.
pub const X264_CONSTRAINED_BASELINE: &str = "x264enc speed-preset=ultrafast tune=zerolatency \
     key-int-max=15 bframes=0 bitrate=300 \
     ! video/x-h264,profile=constrained-baseline,stream-format=byte-stream,alignment=au";

/// The loopback camera sending a compressed format, one encoded frame per V4L2 buffer, as a
/// camera with its own encoder does: SMPTE bars at 320x240 and 15 fps, encoded by `encode` (a
/// gst-launch fragment), under the FourCC `fourcc`.
///
/// GStreamer's v4l2sink cannot set v4l2loopback 0.12 up for compressed formats, so this thread
/// writes the frames itself. With `write()`, not mmap: v4l2loopback 0.12's output DQBUF hands
/// back the buffer just queued, so an mmap writer overwrites the frame the reader is reading
/// (invisible with raw video, fatal to H.264). STREAMON first makes this handle the writer, so
/// that closing it turns the device back into an output device for the next writer.
pub struct EncodedWriter {
    /// The first H.264 SPS NAL unit written, if the format is H.264.
    pub sps: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EncodedWriter {
    pub fn start(fourcc: &'static [u8; 4], encode: &str) -> EncodedWriter {
        use v4l::video::Output;
        gst::init().expect("gstreamer init");
        let pipeline = gst::parse::launch(&format!(
            "videotestsrc is-live=true pattern=smpte ! \
             video/x-raw,format=I420,width=320,height=240,framerate=15/1 ! {encode} ! \
             appsink name=out sync=false max-buffers=30"
        ))
        .expect("writer pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
        let sink = pipeline
            .by_name("out")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .expect("appsink out");
        let dev = v4l::Device::with_path(LOOPBACK).expect("open the loopback device");
        let format = v4l::Format::new(320, 240, v4l::FourCC::new(fourcc));
        let set = Output::set_format(&dev, &format).expect("set the output format");
        assert_eq!(&set.fourcc.repr, fourcc, "the loopback took {set:?}");
        Output::set_params(&dev, &v4l::video::output::Parameters::with_fps(15))
            .expect("set the output rate");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let sps = Arc::new(std::sync::Mutex::new(None));
        let first_sps = sps.clone();
        pipeline
            .set_state(gst::State::Playing)
            .expect("writer plays");
        let fd = dev.handle().fd();
        let mut output = v4l::buffer::Type::VideoOutput as std::os::raw::c_int;
        // SAFETY: VIDIOC_STREAMON takes a pointer to the buffer type, which lives across the call.
        unsafe {
            v4l::v4l2::ioctl(
                fd,
                v4l::v4l2::vidioc::VIDIOC_STREAMON,
                &mut output as *mut _ as *mut std::os::raw::c_void,
            )
        }
        .expect("start the output stream");
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Some(sample) = sink.try_pull_sample(gst::ClockTime::from_mseconds(200)) else {
                    continue;
                };
                let Some(map) = sample.buffer().and_then(|b| b.map_readable().ok()) else {
                    continue;
                };
                if fourcc == b"H264" {
                    let nals = campeer::media::h264::nal_units(&map);
                    let found = nals.into_iter().find(|n| {
                        campeer::media::h264::nal_type(n) == campeer::media::h264::NAL_SPS
                    });
                    if let (Some(nal), Ok(mut kept)) = (found, first_sps.lock()) {
                        kept.get_or_insert_with(|| nal.to_vec());
                    }
                }
                // SAFETY: writes from a mapped buffer of map.len() bytes; `dev` (the fd's owner)
                // lives in this thread until the loop ends.
                let n = unsafe { libc::write(fd, map.as_ptr().cast(), map.len()) };
                assert_eq!(n, map.len() as isize, "one whole frame per write");
            }
            drop(dev);
            let _ = pipeline.set_state(gst::State::Null);
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while campeer::devices::describe_camera(Path::new(LOOPBACK)).is_none() {
            assert!(
                Instant::now() < deadline,
                "{LOOPBACK} did not become a capture device"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        EncodedWriter {
            sps,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EncodedWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // A failed write is the test's failure, said plainly (not as missing frames later).
            if let Err(panic) = t.join()
                && !std::thread::panicking()
            {
                std::panic::resume_unwind(panic);
            }
        }
    }
}
