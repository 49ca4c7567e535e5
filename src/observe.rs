//! What the daemon shows of itself: `/healthz` (is the camera delivering, in its room, its
//! outputs writing) and `/metrics` (Prometheus text: capture, encoders, renditions, every viewer,
//! every output), both from [`CameraObserver`], and the HTTP routes of the camera's outputs it
//! hands the signaling server.

use crate::camera::CameraState;
use crate::camera::peer::{PeerStats, VideoCodec};
use crate::media::pipeline::MediaPipeline;
use crate::media::rendition::Rendition;
use crate::outputs::hls::{self, Hls};
use crate::outputs::mjpeg::{self, Mjpeg};
use crate::outputs::record::{self, http::Recordings};
use crate::outputs::rtmp::RtmpPush;
use crate::outputs::rtsp::RtspStats;
use crate::outputs::snapshot::{self, Snapshots};
use crate::outputs::whep::{self, Whep};
use crate::signal::server::Observer;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How long the pipeline has gone without a video frame, counted from whichever is later: the
/// last frame or the last start.
pub fn frame_age(media: &MediaPipeline) -> Duration {
    let stats = &media.stats;
    let last = stats
        .last_frame_unix_ms
        .load(Ordering::Relaxed)
        .max(stats.started_unix_ms.load(Ordering::Relaxed));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Duration::from_millis(now.saturating_sub(last))
}

/// What `/healthz` and `/metrics` report for a running camera.
pub struct CameraObserver {
    /// The capture and encode.
    pub media: Arc<MediaPipeline>,
    /// The camera's room connection and its viewers.
    pub camera: Arc<CameraState>,
    /// No frame for this long is a stall (`camera.stall-timeout`).
    pub stall: Duration,
    /// Whether capture is wanted now (always-on, or viewers present).
    pub demand: watch::Receiver<bool>,
    /// `/snapshot.jpg`.
    pub snapshots: Arc<Snapshots>,
    /// `/whep/<room>`.
    pub whep: Arc<Whep>,
    /// `/mjpeg`, unless `camera.mjpeg-fps = 0`.
    pub mjpeg: Option<Arc<Mjpeg>>,
    /// `/recordings`.
    pub recordings: Arc<Recordings>,
    /// `/hls/<room>/`, unless `hls.enabled = false`.
    pub hls: Option<Arc<Hls>>,
    /// `[[rtmp]]` targets.
    pub rtmp: Vec<Arc<RtmpPush>>,
    /// The RTSP server, when `rtsp.enabled`.
    pub rtsp: Option<Arc<RtspStats>>,
}

impl Observer for CameraObserver {
    fn health(&self) -> Result<(), String> {
        // Out of its room (reconnecting, refused) as long as a stall: viewers cannot call it.
        if let Some(out) = self.camera.out_of_room_for()
            && out > self.stall
        {
            return Err(format!(
                "the camera has not been in its room for {:.0} s: new viewers cannot call it",
                out.as_secs_f64()
            ));
        }
        let recorder = &self.recordings.recorder;
        if recorder.wanted()
            && let Some(why) = recorder.failing()
        {
            return Err(format!("recording cannot write: {why}"));
        }
        if !*self.demand.borrow() {
            return Ok(()); // capture is off on purpose: no viewers
        }
        let age = frame_age(&self.media);
        if age > self.stall {
            return Err(format!(
                "no frame from the camera for {:.1} s",
                age.as_secs_f64()
            ));
        }
        Ok(())
    }

    fn metrics(&self) -> String {
        let s = &self.media.stats;
        let mut out = format!(
            "# TYPE campeer_viewers gauge\ncampeer_viewers {}\n\
             # TYPE campeer_frames_encoded_total counter\ncampeer_frames_encoded_total {}\n\
             # TYPE campeer_keyframes_total counter\ncampeer_keyframes_total {}\n\
             # TYPE campeer_video_bytes_total counter\ncampeer_video_bytes_total {}\n\
             # TYPE campeer_audio_packets_total counter\ncampeer_audio_packets_total {}\n\
             # TYPE campeer_keyframe_requests_total counter\ncampeer_keyframe_requests_total {}\n\
             # TYPE campeer_signaling_joined gauge\ncampeer_signaling_joined {}\n\
             # TYPE campeer_signaling_connects_total counter\ncampeer_signaling_connects_total {}\n\
             # TYPE campeer_viewers_refused_total counter\ncampeer_viewers_refused_total {}\n\
             # TYPE campeer_turn_tcp_connections_total counter\ncampeer_turn_tcp_connections_total {}\n\
             # TYPE campeer_turn_tcp_failures_total counter\ncampeer_turn_tcp_failures_total {}\n\
             # TYPE campeer_turn_check_failures_total counter\ncampeer_turn_check_failures_total {}\n",
            self.camera.viewer_count(),
            s.frames.load(Ordering::Relaxed),
            s.keyframes.load(Ordering::Relaxed),
            s.video_bytes.load(Ordering::Relaxed),
            s.audio_packets.load(Ordering::Relaxed),
            s.keyframe_requests.load(Ordering::Relaxed),
            self.camera.joined.load(Ordering::Relaxed) as u8,
            self.camera.signal_connects.load(Ordering::Relaxed),
            self.camera.viewers_refused.load(Ordering::Relaxed),
            self.camera.turn_tcp.connections.load(Ordering::Relaxed),
            self.camera.turn_tcp.failures.load(Ordering::Relaxed),
            self.camera.turn_check_failures.load(Ordering::Relaxed),
        );
        if let Ok(viewers) = self.camera.viewers.lock() {
            type Metric = (&'static str, &'static str, fn(&PeerStats) -> f64);
            const PER_VIEWER: &[Metric] = &[
                ("campeer_viewer_frames_sent_total", "counter", |v| {
                    v.frames_sent.load(Ordering::Relaxed) as f64
                }),
                ("campeer_viewer_frames_skipped_total", "counter", |v| {
                    v.frames_skipped.load(Ordering::Relaxed) as f64
                }),
                ("campeer_viewer_pli_total", "counter", |v| {
                    v.keyframe_requests.load(Ordering::Relaxed) as f64
                }),
                ("campeer_viewer_rtt_seconds", "gauge", |v| {
                    v.rtt_us.load(Ordering::Relaxed) as f64 / 1e6
                }),
                ("campeer_viewer_video_loss_ratio", "gauge", |v| {
                    v.loss_ppm.load(Ordering::Relaxed) as f64 / 1e6
                }),
                ("campeer_viewer_estimate_bps", "gauge", |v| {
                    v.estimate.get().unwrap_or(0.0)
                }),
                ("campeer_viewer_feedback_total", "counter", |v| {
                    v.estimate.feedback.load(Ordering::Relaxed) as f64
                }),
                ("campeer_viewer_rung", "gauge", |v| {
                    v.rung.load(Ordering::Relaxed) as f64
                }),
                ("campeer_viewer_rung_changes_total", "counter", |v| {
                    v.rung_changes.load(Ordering::Relaxed) as f64
                }),
                ("campeer_viewer_late_drops_total", "counter", |v| {
                    v.late_drops.load(Ordering::Relaxed) as f64
                }),
                ("campeer_viewer_pacing_bps", "gauge", |v| {
                    v.pacing_shared.load(Ordering::Relaxed) as f64
                }),
                ("campeer_viewer_resends_dropped_total", "counter", |v| {
                    v.resends_dropped.load(Ordering::Relaxed) as f64
                }),
                ("campeer_viewer_resends_stale_total", "counter", |v| {
                    v.resends_stale.load(Ordering::Relaxed) as f64
                }),
                ("campeer_viewer_send_errors_total", "counter", |v| {
                    v.send_errors.load(Ordering::Relaxed) as f64
                }),
                ("campeer_viewer_send_delay_seconds", "gauge", |v| {
                    v.send_delay_us.load(Ordering::Relaxed) as f64 / 1e6
                }),
            ];
            for (name, kind, value) in PER_VIEWER {
                out.push_str(&format!("# TYPE {name} {kind}\n"));
                for (id, v) in viewers.iter() {
                    out.push_str(&format!("{name}{{viewer=\"{id}\"}} {}\n", value(v)));
                }
            }
            out.push_str("# TYPE campeer_viewers_by_codec gauge\n");
            for codec in [VideoCodec::H264, VideoCodec::Vp8] {
                let n = viewers
                    .values()
                    .filter(|v| v.codec.get() == Some(&codec))
                    .count();
                out.push_str(&format!(
                    "campeer_viewers_by_codec{{codec=\"{codec}\"}} {n}\n"
                ));
            }
        }
        out.push_str(&format!(
            "# TYPE campeer_snapshot_requests_total counter\ncampeer_snapshot_requests_total {}\n\
             # TYPE campeer_snapshot_conversions_total counter\ncampeer_snapshot_conversions_total {}\n",
            self.snapshots.requests.load(Ordering::Relaxed),
            self.snapshots.conversions(),
        ));
        if let Some(m) = &self.mjpeg {
            out.push_str(&format!(
                "# TYPE campeer_mjpeg_clients gauge\ncampeer_mjpeg_clients {}\n\
                 # TYPE campeer_mjpeg_frames_total counter\ncampeer_mjpeg_frames_total {}\n",
                m.clients(),
                m.frames.load(Ordering::Relaxed),
            ));
        }
        if let Some(h) = &self.hls {
            out.push_str(&format!(
                "# TYPE campeer_hls_running gauge\ncampeer_hls_running {}\n\
                 # TYPE campeer_hls_starts_total counter\ncampeer_hls_starts_total {}\n\
                 # TYPE campeer_hls_requests_total counter\ncampeer_hls_requests_total {}\n",
                u8::from(h.running()),
                h.starts.load(Ordering::Relaxed),
                h.requests.load(Ordering::Relaxed),
            ));
        }
        if let Some(r) = &self.rtsp {
            out.push_str(&format!(
                "# TYPE campeer_rtsp_clients gauge\ncampeer_rtsp_clients {}\n\
                 # TYPE campeer_rtsp_clients_total counter\ncampeer_rtsp_clients_total {}\n\
                 # TYPE campeer_rtsp_refused_total counter\ncampeer_rtsp_refused_total {}\n\
                 # TYPE campeer_rtsp_feeds gauge\ncampeer_rtsp_feeds {}\n\
                 # TYPE campeer_rtsp_frames_total counter\ncampeer_rtsp_frames_total {}\n",
                r.clients.load(Ordering::Relaxed),
                r.clients_total.load(Ordering::Relaxed),
                r.refused.load(Ordering::Relaxed),
                r.feeds.load(Ordering::Relaxed),
                r.frames.load(Ordering::Relaxed),
            ));
        }
        type PushMetric = (&'static str, &'static str, fn(&RtmpPush) -> u64);
        const PER_PUSH: &[PushMetric] = &[
            ("campeer_rtmp_up", "gauge", |p| {
                u64::from(p.up.load(Ordering::Relaxed))
            }),
            ("campeer_rtmp_connects_total", "counter", |p| {
                p.connects.load(Ordering::Relaxed)
            }),
            ("campeer_rtmp_failures_total", "counter", |p| {
                p.failures.load(Ordering::Relaxed)
            }),
        ];
        if !self.rtmp.is_empty() {
            for (name, kind, value) in PER_PUSH {
                out.push_str(&format!("# TYPE {name} {kind}\n"));
                for p in &self.rtmp {
                    out.push_str(&format!(
                        "{name}{{target=\"{}\"}} {}\n",
                        p.shown.replace(['"', '\\', '\n'], "_"),
                        value(p)
                    ));
                }
            }
        }
        let rec = &self.recordings.recorder;
        out.push_str(&format!(
            "# TYPE campeer_recording gauge\ncampeer_recording {}\n\
             # TYPE campeer_recording_failing gauge\ncampeer_recording_failing {}\n\
             # TYPE campeer_recording_segments_total counter\ncampeer_recording_segments_total {}\n\
             # TYPE campeer_recording_video_bytes_total counter\ncampeer_recording_video_bytes_total {}\n\
             # TYPE campeer_recording_deleted_total counter\ncampeer_recording_deleted_total {}\n\
             # TYPE campeer_recording_errors_total counter\ncampeer_recording_errors_total {}\n",
            u8::from(rec.wanted() && rec.current().is_some()),
            u8::from(rec.wanted() && rec.failing().is_some()),
            rec.segments.load(Ordering::Relaxed),
            rec.bytes.load(Ordering::Relaxed),
            rec.deleted.load(Ordering::Relaxed),
            rec.errors.load(Ordering::Relaxed),
        ));
        if let Some(vp8) = &self.media.vp8 {
            out.push_str(&format!(
                "# TYPE campeer_vp8_frames_encoded_total counter\ncampeer_vp8_frames_encoded_total {}\n\
                 # TYPE campeer_vp8_encoder_running gauge\ncampeer_vp8_encoder_running {}\n",
                vp8.stats.frames.load(Ordering::Relaxed),
                u8::from(vp8.users() > 0),
            ));
        }
        // Encoders running now: the main one while capture runs, each lower rendition and VP8
        // while someone watches them (congestion control's "one encode per rung").
        let capturing = *self.demand.borrow();
        let lower_running = self
            .media
            .renditions
            .iter()
            .filter(|r| r.users() > 0)
            .count();
        let vp8_running = self.media.vp8.as_ref().is_some_and(|v| v.users() > 0);
        out.push_str(&format!(
            "# TYPE campeer_video_encoders_running gauge\ncampeer_video_encoders_running {}\n",
            usize::from(capturing) + lower_running + usize::from(vp8_running)
        ));
        type RungMetric = (&'static str, &'static str, fn(&Rendition) -> u64);
        const PER_RUNG: &[RungMetric] = &[
            ("campeer_rendition_viewers", "gauge", |r| r.users() as u64),
            ("campeer_rendition_frames_encoded_total", "counter", |r| {
                r.stats.frames.load(Ordering::Relaxed)
            }),
            ("campeer_rendition_video_bytes_total", "counter", |r| {
                r.stats.video_bytes.load(Ordering::Relaxed)
            }),
        ];
        for (name, kind, value) in PER_RUNG {
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            for (i, r) in self.media.renditions.iter().enumerate() {
                out.push_str(&format!(
                    "{name}{{rung=\"{}\",size=\"{}x{}\",kbps=\"{}\"}} {}\n",
                    i + 1,
                    r.spec.width,
                    r.spec.height,
                    r.spec.bitrate_kbps,
                    value(r)
                ));
            }
        }
        out
    }

    fn routes(&self) -> Option<axum::Router> {
        let routes = snapshot::routes(self.snapshots.clone())
            .merge(whep::routes(self.whep.clone()))
            .merge(record::http::routes(self.recordings.clone()));
        let routes = match &self.hls {
            Some(h) => routes.merge(hls::routes(h.clone())),
            None => routes,
        };
        Some(match &self.mjpeg {
            Some(m) => routes.merge(mjpeg::routes(m.clone())),
            None => routes,
        })
    }
}
