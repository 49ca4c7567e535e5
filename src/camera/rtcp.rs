//! campeer's own interceptors in webrtc-rs's chain: [`KeyframeRequestForwarder`], placed last,
//! hands a viewer's keyframe requests (PLI and FIR) to campeer; [`RetransmissionBudget`], next to
//! the wire, caps resends.
//!
//! The forwarder: By default webrtc-rs consumes all inbound RTCP inside its own
//! interceptors and the application never learns that a browser asked for a keyframe
//! (without it Chromium waits for the periodic IDR: seconds of black). Other RTCP (receiver reports,
//! NACK, TWCC) stays with the interceptors that act on it.

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use std::collections::VecDeque;
use std::time::Instant;

/// Marks inbound PLI/FIR for delivery to the application; drops other inbound RTCP at this
/// (final) stage; passes everything else through untouched.
#[derive(Default)]
pub struct KeyframeRequestForwarder {
    inbound: VecDeque<TaggedPacket>,
    outbound: VecDeque<TaggedPacket>,
}

fn wants_keyframe(p: &dyn rtc::rtcp::Packet) -> bool {
    let any = p.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let keep: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| wants_keyframe(p.as_ref()))
                .cloned()
                .collect();
            if keep.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(keep);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.inbound.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.inbound.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.outbound.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.outbound.pop_front()
    }
}

impl Interceptor for KeyframeRequestForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Caps one viewer's retransmissions (NACK answers) at a share of its pacing rate, between
/// webrtc-rs's NACK responder and the wire. webrtc-rs resends every packet a viewer NACKs, as
/// often as it is asked and unpaced; behind a 1 Mbit/s link, one burst of loss set off
/// retransmissions that caused more loss (1,650 resends in 20 s, 26,000 packets dropped by the
/// link, 4 fps). Over budget a resend is not sent: the browser asks for a keyframe instead.
pub struct RetransmissionBudget {
    /// The viewer's video pacing rate, bit/s (0: not known yet: no cap).
    pacing_bps: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Resends not sent.
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    bucket: Option<(f64, rtc::interceptor::Pacer)>,
    /// SSRCs that carry only retransmissions (RTX).
    rtx_ssrcs: std::collections::HashSet<u32>,
    /// Media SSRCs and the newest sequence number sent on each (a resend on the media SSRC
    /// repeats an older one).
    newest: std::collections::HashMap<u32, u16>,
    inbound: VecDeque<TaggedPacket>,
    outbound: VecDeque<TaggedPacket>,
}

/// The share of the pacing rate retransmissions may take (an eighth of what the rung sends).
const RETRANSMISSION_SHARE: f64 = 0.05;

impl RetransmissionBudget {
    /// A budget following `pacing_bps`; resends over it are counted in `dropped`.
    pub fn new(
        pacing_bps: std::sync::Arc<std::sync::atomic::AtomicU64>,
        dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        Self {
            pacing_bps,
            dropped,
            bucket: None,
            rtx_ssrcs: Default::default(),
            newest: Default::default(),
            inbound: VecDeque::new(),
            outbound: VecDeque::new(),
        }
    }

    /// Whether `p` repeats a packet already sent.
    fn is_resend(&mut self, p: &rtc::rtp::Packet) -> bool {
        let ssrc = p.header.ssrc;
        if self.rtx_ssrcs.contains(&ssrc) {
            return true;
        }
        let seq = p.header.sequence_number;
        match self.newest.get_mut(&ssrc) {
            // Newer in sequence-number order (half the space ahead, with wrap-around).
            Some(newest) if seq.wrapping_sub(*newest) < 0x8000 && seq != *newest => {
                *newest = seq;
                false
            }
            Some(_) => true,
            None => {
                self.newest.insert(ssrc, seq);
                false
            }
        }
    }

    /// Whether a resend of `bytes` fits the budget now (and if so, spend it).
    fn afford(&mut self, bytes: usize, now: Instant) -> bool {
        let pacing = self.pacing_bps.load(std::sync::atomic::Ordering::Relaxed) as f64;
        if pacing <= 0.0 {
            return true;
        }
        let rate = pacing * RETRANSMISSION_SHARE;
        let rebuild = self
            .bucket
            .as_ref()
            .is_none_or(|(r, _)| (r - rate).abs() > r * 0.05);
        if rebuild {
            // A tenth of a second's worth at once.
            self.bucket = Some((
                rate,
                rtc::interceptor::Pacer::new(rate).with_burst_bits(rate / 10.0),
            ));
        }
        let Some((_, bucket)) = self.bucket.as_mut() else {
            return true;
        };
        let bits = bytes as f64 * 8.0;
        bucket.refill(now);
        if bucket.can_afford(bits) {
            bucket.consume(bits);
            true
        } else {
            false
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RetransmissionBudget {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.inbound.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.inbound.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtp(p) = &msg.message.packet {
            let bytes = p.payload.len() + 50;
            if self.is_resend(p) && !self.afford(bytes, msg.now) {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
        }
        self.outbound.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.outbound.pop_front()
    }
}

impl Interceptor for RetransmissionBudget {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        if let Some(rtx) = info.ssrc_rtx {
            self.rtx_ssrcs.insert(rtx);
        }
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        if let Some(rtx) = info.ssrc_rtx {
            self.rtx_ssrcs.remove(&rtx);
        }
        self.newest.remove(&info.ssrc);
    }
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
