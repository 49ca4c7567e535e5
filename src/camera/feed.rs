//! One viewer's media out: the tasks that take frames from the bus, packetize them into its
//! RTP stream, pace them to its link, move it between rungs, and turn its PLI/FIR into
//! keyframe requests. [`super::peer`] negotiates the connection and starts these tasks.

use super::congestion::{MAX_SEND_DELAY, RungPolicy, VideoPacer};
use super::peer::{PeerStats, RTP_MTU, VideoCodec};
use crate::media::bus::{Delivery, KeyframeSource, Subscription};
use crate::media::pipeline::{EncodedFrame, KeyframeRequester};
use crate::media::rendition::{Rendition, RenditionUse};
use crate::signal::protocol::PeerId;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::codec::h264::H264Payloader;
use rtc::rtp::codec::opus::OpusPayloader;
use rtc::rtp::codec::vp8::Vp8Payloader;
use rtc::rtp::packetizer::Payloader;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{RTCIceConnectionState, RTCPeerConnectionState};

/// One track's feed: where its packets go and what they carry.
pub(super) struct Feed {
    pub(super) viewer: PeerId,
    pub(super) track: Arc<TrackLocalStaticRTP>,
    pub(super) pt: u8,
    /// Negotiated playout-delay extension id and its payload (min=max=0).
    pub(super) playout_delay: Option<(u8, bytes::Bytes)>,
    pub(super) ssrc: u32,
    pub(super) clock_rate: u32,
    /// The video codec; `None` for audio.
    pub(super) video: Option<VideoCodec>,
    pub(super) stats: Arc<PeerStats>,
    pub(super) keyframes: Option<KeyframeRequester>,
    /// Video: the rungs it may watch.
    pub(super) rungs: Option<Rungs>,
}

/// The renditions a video feed can move between: rung 0 the main encode, then the lower ones.
#[derive(Clone)]
pub(super) struct Rungs {
    pub(super) main: broadcast::Sender<Arc<EncodedFrame>>,
    pub(super) lower: Vec<Arc<Rendition>>,
    /// Each rung's keyframe requests (index = rung).
    pub(super) keyframes: Vec<Arc<dyn KeyframeSource>>,
    /// What each rung needs, bit/s.
    pub(super) needs: Vec<f64>,
}

/// A move to another rung, waiting for that rung's keyframe.
struct Pending {
    to: usize,
    sub: Subscription,
    hold: Option<RenditionUse>,
}

/// The next delivery of a pending move, or never when there is none.
async fn next_pending(p: &mut Option<Pending>) -> Option<Delivery> {
    match p {
        Some(p) => p.sub.next().await,
        None => std::future::pending().await,
    }
}

/// One viewer's RTP stream state: packetizer, sequence numbers, timestamp offset.
struct RtpOut {
    payloader: Box<dyn Payloader>,
    seq: u16,
    ts_offset: u32,
    logged_error: bool,
    /// Video only: packets leave at a multiple of what the viewer's rung sends.
    pacer: Option<VideoPacer>,
}

impl RtpOut {
    fn new(video: Option<VideoCodec>) -> Self {
        let payloader: Box<dyn Payloader> = match video {
            Some(VideoCodec::H264) => Box::new(H264Payloader::default()),
            // The picture id lets the browser tell a lost packet from a lost frame.
            Some(VideoCodec::Vp8) => {
                let mut vp8 = Vp8Payloader::default();
                vp8.enable_picture_id = true;
                Box::new(vp8)
            }
            None => Box::new(OpusPayloader),
        };
        Self {
            payloader,
            seq: rand::random(),
            ts_offset: rand::random(),
            logged_error: false,
            pacer: None,
        }
    }

    /// Packetize one frame and write its packets; RTP time follows the frame's capture time.
    async fn send(&mut self, f: &Feed, frame: &EncodedFrame) {
        let ticks = (frame.pts.as_nanos() * f.clock_rate as u128 / 1_000_000_000) as u32;
        let timestamp = self.ts_offset.wrapping_add(ticks);
        let payloads = match self.payloader.payload(RTP_MTU, &frame.data) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(viewer = %f.viewer, error = %e, "cannot packetize frame");
                return;
            }
        };
        let n = payloads.len();
        for (i, payload) in payloads.into_iter().enumerate() {
            let mut packet = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    marker: f.video.is_some() && i + 1 == n,
                    payload_type: f.pt,
                    sequence_number: self.seq,
                    timestamp,
                    ssrc: f.ssrc,
                    ..Default::default()
                },
                payload,
            };
            self.seq = self.seq.wrapping_add(1);
            if let Some((id, value)) = &f.playout_delay {
                // A one-byte-header id (1..=14) and a 3-byte value: cannot fail.
                let _ = packet.header.set_extension(*id, value.clone());
            }
            if let Some(pacer) = &mut self.pacer {
                // Headers, SRTP tag and UDP/IP on top of the payload.
                let bytes = packet.payload.len() + 50;
                loop {
                    let wait = pacer.wait_for(bytes, std::time::Instant::now());
                    if wait.is_zero() {
                        break;
                    }
                    tokio::time::sleep(wait).await;
                }
            }
            if let Err(e) = f.track.write_rtp(packet).await {
                f.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                if !self.logged_error {
                    tracing::warn!(viewer = %f.viewer, error = %e, "RTP send failed");
                    self.logged_error = true;
                }
            }
        }
        if f.video.is_some() {
            f.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
            f.stats
                .send_delay_us
                .store(frame.at.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
    }
}

/// Most frames kept while DTLS finishes (from the keyframe requested when ICE connected).
const EARLY_FRAMES: usize = 30;

/// Wait for the connection, then send frames until cancelled or the connection ends.
///
/// Video asks for its keyframe as soon as ICE connects, while DTLS is still shaking hands, and
/// keeps that keyframe and what follows it; once DTLS is up they go out at once, so the first
/// frame does not wait a frame interval plus encode time after the connection is ready.
pub(super) async fn feed(
    f: Feed,
    mut rx: broadcast::Receiver<Arc<EncodedFrame>>,
    mut state: watch::Receiver<RTCPeerConnectionState>,
    mut ice: watch::Receiver<RTCIceConnectionState>,
    cancel: CancellationToken,
) {
    let mut early: Vec<Arc<EncodedFrame>> = Vec::new();
    let mut requested = false;
    let mut ice_open = true;
    loop {
        match *state.borrow_and_update() {
            RTCPeerConnectionState::Connected => break,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => return,
            _ => {}
        }
        let ice_up = matches!(
            *ice.borrow_and_update(),
            RTCIceConnectionState::Connected | RTCIceConnectionState::Completed
        );
        if ice_up && !requested {
            if let Some(k) = &f.keyframes {
                rx = rx.resubscribe();
                k.request_for_new_viewer();
                requested = true;
            }
        }
        tokio::select! {
            r = state.changed() => if r.is_err() { return },
            r = ice.changed(), if ice_open => if r.is_err() { ice_open = false },
            r = rx.recv(), if requested => match r {
                Ok(frame) if frame.keyframe => {
                    early.clear();
                    early.push(frame);
                }
                Ok(frame) => {
                    if early.len() >= EARLY_FRAMES {
                        // DTLS is slow: start over from a newer keyframe rather than send stale video.
                        early.clear();
                        if let Some(k) = &f.keyframes {
                            k.request_for_new_viewer();
                        }
                    } else if !early.is_empty() {
                        early.push(frame);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => early.clear(),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = cancel.cancelled() => return,
        }
    }
    if !requested {
        // Start from a fresh keyframe (with SPS/PPS); skip what is queued before it.
        rx = rx.resubscribe();
        if let Some(k) = &f.keyframes {
            k.request_for_new_viewer();
        }
    }
    let mut out = RtpOut::new(f.video);
    if f.video.is_some() {
        let start = f.rungs.as_ref().map_or(1_000_000.0, |r| r.needs[0]);
        let pacer = VideoPacer::new(start * super::congestion::PACING_FACTOR);
        f.stats
            .pacing_shared
            .store(pacer.rate() as u64, Ordering::Relaxed);
        out.pacer = Some(pacer);
    }
    let waiting_for_key = f.video.is_some() && early.is_empty();
    for frame in early.drain(..) {
        out.send(&f, &frame).await;
    }
    let keyframes = f
        .keyframes
        .clone()
        .map(|k| Arc::new(k) as Arc<dyn crate::media::bus::KeyframeSource>);
    let mut sub = Subscription::resume(rx, keyframes, waiting_for_key);
    // Rung changes (video with lower renditions only).
    let rungs = f.rungs.clone().filter(|r| !r.lower.is_empty());
    let mut policy = rungs.as_ref().map(|r| RungPolicy::new(r.needs.clone()));
    let mut rung = 0usize;
    let mut _hold: Option<RenditionUse> = None;
    let mut pending: Option<Pending> = None;
    let (mut sent_bytes, mut sent_bps, mut sent_since) =
        (0usize, 0.0f64, std::time::Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let delivery = tokio::select! {
            d = sub.next() => d,
            d = next_pending(&mut pending) => {
                match d {
                    Some(Delivery::Frame(frame)) => {
                        // The new rung's keyframe: switch to it from here on.
                        let Some(p) = pending.take() else { continue };
                        tracing::debug!(viewer = %f.viewer, from = rung, to = p.to, "viewer changes rung");
                        sub = p.sub;
                        _hold = p.hold;
                        if let Some(policy) = policy.as_mut() {
                            policy.switched(std::time::Instant::now(), p.to, rung);
                        }
                        // What was sent is measured anew for the new rung.
                        (sent_bytes, sent_bps, sent_since) = (0, 0.0, std::time::Instant::now());
                        rung = p.to;
                        f.stats.rung.store(rung as u64, Ordering::Relaxed);
                        f.stats.rung_changes.fetch_add(1, Ordering::Relaxed);
                        Some(Delivery::Frame(frame))
                    }
                    Some(_) => continue,
                    None => { pending = None; continue }
                }
            }
            _ = tick.tick(), if f.video.is_some() => {
                let estimate = f.stats.estimate.get();
                // What this viewer was really sent over the last 2 s or so: a passed-through
                // source sends whatever it sends, whatever video.bitrate-kbps says.
                let since = sent_since.elapsed().as_secs_f64();
                if since >= 2.0 {
                    sent_bps = sent_bytes as f64 * 8.0 / since;
                    sent_bytes = 0;
                    sent_since = std::time::Instant::now();
                }
                if let Some(pacer) = out.pacer.as_mut() {
                    // Paced to what the rung sends, not to the estimate: GCC's estimate swings
                    // (from a fifth of the link to five times it, measured behind a 1 Mbit/s
                    // tbf) and pacing at its dips held frames back for no gain. Bursts still
                    // leave spread over 2.5 times their length.
                    let need = f.rungs.as_ref().and_then(|r| r.needs.get(rung).copied());
                    if let Some(n) = need.or(estimate) {
                        pacer.follow(n.max(sent_bps * 1.1));
                        f.stats
                            .pacing_shared
                            .store(pacer.rate() as u64, Ordering::Relaxed);
                    }
                }
                if let (Some(r), Some(policy)) = (&rungs, policy.as_mut()) {
                    // A move under way counts as made: the policy judges the rung the viewer
                    // is moving to (else it would call the move off a tick later, before the
                    // new rung's keyframe could come).
                    let basis = pending.as_ref().map_or(rung, |p| p.to);
                    policy.observe_loss(
                        f.stats.estimate.loss_ppm.load(Ordering::Relaxed) as f64 / 1e6,
                    );
                    let target = policy.decide(std::time::Instant::now(), basis, estimate);
                    if target == rung {
                        pending = None;
                    } else if pending.as_ref().is_none_or(|p| p.to != target) {
                        let (tx, held) = match target {
                            0 => (&r.main, None),
                            n => (&r.lower[n - 1].video, Some(r.lower[n - 1].acquire())),
                        };
                        tracing::debug!(viewer = %f.viewer, from = rung, to = target, estimate, "viewer moves rung at its next keyframe");
                        pending = Some(Pending {
                            to: target,
                            sub: Subscription::new(tx, Some(r.keyframes[target].clone()), None),
                            hold: held,
                        });
                    }
                }
                continue;
            }
            _ = cancel.cancelled() => return,
        };
        match delivery {
            None => return,
            Some(Delivery::Frame(frame)) => {
                if f.video.is_some() && frame.at.elapsed() > MAX_SEND_DELAY {
                    // The link cannot keep up: skip to a fresh keyframe rather than queue.
                    tracing::debug!(viewer = %f.viewer, late_ms = frame.at.elapsed().as_millis() as u64, rung, "frame too late for the viewer's link: dropped, waiting for a keyframe");
                    f.stats.late_drops.fetch_add(1, Ordering::Relaxed);
                    f.stats.frames_skipped.fetch_add(1, Ordering::Relaxed);
                    sub.restart();
                    continue;
                }
                sent_bytes += frame.data.len();
                out.send(&f, &frame).await
            }
            Some(Delivery::Skipped) => {
                f.stats.frames_skipped.fetch_add(1, Ordering::Relaxed);
            }
            Some(Delivery::Lagged { skipped }) => {
                f.stats.lagged.fetch_add(1, Ordering::Relaxed);
                f.stats.frames_skipped.fetch_add(skipped, Ordering::Relaxed);
                tracing::debug!(viewer = %f.viewer, skipped, "viewer lagging; skipping to the next keyframe");
            }
        }
    }
}

/// Turn the viewer's PLI/FIR into (throttled) keyframe requests.
pub(super) async fn rtcp_loop(
    track: Arc<TrackLocalStaticRTP>,
    keyframes: Vec<Arc<dyn KeyframeSource>>,
    stats: Arc<PeerStats>,
    cancel: CancellationToken,
) {
    loop {
        let ev = tokio::select! {
            ev = track.poll() => ev,
            _ = cancel.cancelled() => return,
        };
        match ev {
            Some(TrackLocalEvent::OnRtcpPacket(packets)) => {
                let wants_key = packets.iter().any(|p| {
                    let any = p.as_any();
                    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
                });
                if wants_key {
                    stats.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                    // The encoder of the rung the viewer watches.
                    let rung = stats.rung.load(Ordering::Relaxed) as usize;
                    if let Some(k) = keyframes.get(rung).or(keyframes.first()) {
                        k.request_keyframe();
                    }
                }
            }
            Some(_) => {}
            None => {
                // Unbound (closed or not yet bound): poll again shortly unless cancelled.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    }
}
