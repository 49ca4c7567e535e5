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
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack as Nack;
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
/// webrtc-rs's NACK responder and the wire, and answers only for packets recent enough to help.
///
/// webrtc-rs resends every packet a viewer NACKs, as often as it is asked and unpaced, from a
/// history of 1,024 packets (about 13 s of the lower rung); behind a 1 Mbit/s link, one burst of
/// loss set off retransmissions that caused more loss (1,650 resends in 20 s, 26,000 packets
/// dropped by the link, 4 fps). Over budget a resend is not sent: the browser asks for a keyframe
/// instead.
///
/// Chromium goes on NACKing packets lost in a congested start (on the main rung, before its
/// viewer moved down) for the rest of the call: 40-odd times each, a few hundred packets in every
/// NACK, 8,700 resends in 30 s. Answering them drained the budget, so a packet lost later, whose
/// frame was on screen next, found the budget spent and the picture froze until the next
/// periodic keyframe (1.5–3.3 s). Packets sent over [`MAX_RESEND_AGE`] ago are no longer resent
/// and cost the budget nothing, as libwebrtc's send history forgets them.
pub struct RetransmissionBudget {
    /// The viewer's video pacing rate, bit/s (0: not known yet: no cap).
    pacing_bps: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Resends not sent: over the budget.
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Resends not sent: their packet is too old to help.
    pub stale: std::sync::Arc<std::sync::atomic::AtomicU64>,
    bucket: Option<(f64, rtc::interceptor::Pacer)>,
    /// Each RTX (RFC 4588) SSRC's media SSRC.
    rtx_media: std::collections::HashMap<u32, u32>,
    /// When each media SSRC's recent packets first went out.
    sent: std::collections::HashMap<u32, SendTimes>,
    inbound: VecDeque<TaggedPacket>,
    outbound: VecDeque<TaggedPacket>,
}

/// The share of the pacing rate retransmissions may take (an eighth of what the rung sends).
const RETRANSMISSION_SHARE: f64 = 0.05;

/// The oldest packet worth resending: by then the viewer has played past it or waits for a
/// keyframe. libwebrtc's send history keeps packets about this long (1 s, or 3 RTTs if longer).
const MAX_RESEND_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// Send times of one SSRC's last [`SEND_TIMES`] sequence numbers (at 8 Mbit/s, 2 s of packets).
const SEND_TIMES: usize = 2048;
// Slots line up across the sequence numbers' wrap only if it divides 65,536.
const _: () = assert!(65_536 % SEND_TIMES == 0);

/// When one SSRC's recent packets first went out, by sequence number.
struct SendTimes {
    start: Instant,
    /// At `seq % SEND_TIMES`: that `seq` and its send time in ms after `start`, wrapping (ages
    /// are differences; they stay right however long the call). A slot not yet written holds a
    /// sequence number that does not belong there.
    slots: Box<[(u16, u32)]>,
}

impl SendTimes {
    fn new(start: Instant) -> Self {
        Self {
            start,
            slots: (0..SEND_TIMES)
                .map(|i| ((i as u16).wrapping_add(1), 0))
                .collect(),
        }
    }

    /// Milliseconds from `start` to `now`, wrapping.
    fn ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.start).as_millis() as u32
    }

    fn record(&mut self, seq: u16, now: Instant) {
        let ms = self.ms(now);
        self.slots[seq as usize % SEND_TIMES] = (seq, ms);
    }

    /// How long ago `seq` first went out, if it is still recorded.
    fn age(&self, seq: u16, now: Instant) -> Option<std::time::Duration> {
        let (s, at) = self.slots[seq as usize % SEND_TIMES];
        (s == seq)
            .then(|| std::time::Duration::from_millis(u64::from(self.ms(now).wrapping_sub(at))))
    }
}

impl RetransmissionBudget {
    /// A budget following `pacing_bps`; resends over it are counted in `dropped`, those of
    /// packets too old to help in `stale`.
    pub fn new(
        pacing_bps: std::sync::Arc<std::sync::atomic::AtomicU64>,
        dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
        stale: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        Self {
            pacing_bps,
            dropped,
            stale,
            bucket: None,
            rtx_media: Default::default(),
            sent: Default::default(),
            inbound: VecDeque::new(),
            outbound: VecDeque::new(),
        }
    }

    /// The media SSRC and sequence number a resend repeats.
    fn original(&self, p: &rtc::rtp::Packet) -> Option<(u32, u16)> {
        match self.rtx_media.get(&p.header.ssrc) {
            // An RTX payload starts with the original sequence number (RFC 4588).
            Some(media) => p
                .payload
                .get(..2)
                .map(|b| (*media, u16::from_be_bytes([b[0], b[1]]))),
            None => Some((p.header.ssrc, p.header.sequence_number)),
        }
    }

    /// Whether the packet `p` repeats went out recently enough for a resend to help.
    fn recent(&self, p: &rtc::rtp::Packet, now: Instant) -> bool {
        self.original(p)
            .and_then(|(ssrc, seq)| self.sent.get(&ssrc)?.age(seq, now))
            .is_some_and(|age| age <= MAX_RESEND_AGE)
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
        // What the viewer asks for again, for a trace of lost packets and their resends.
        if let (true, Packet::Rtcp(packets)) = (
            tracing::enabled!(tracing::Level::TRACE),
            &msg.message.packet,
        ) {
            for nack in packets
                .iter()
                .filter_map(|p| p.as_any().downcast_ref::<Nack>())
            {
                let seqs: Vec<u16> = nack.nacks.iter().flat_map(|n| n.packet_list()).collect();
                tracing::trace!(ssrc = nack.media_ssrc, ?seqs, "NACK");
            }
        }
        self.inbound.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.inbound.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        if let Packet::Rtp(p) = &msg.message.packet {
            if !msg.message.has(&Attribute::Retransmission) {
                let start = msg.now;
                self.sent
                    .entry(p.header.ssrc)
                    .or_insert_with(|| SendTimes::new(start))
                    .record(p.header.sequence_number, msg.now);
            } else if !self.recent(p, msg.now) {
                tracing::trace!(ssrc = p.header.ssrc, original = ?self.original(p), "resend of a packet too old to help: not sent");
                self.stale
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            } else {
                let sent = self.afford(p.payload.len() + 50, msg.now);
                tracing::trace!(ssrc = p.header.ssrc, original = ?self.original(p), sent, "resend");
                if !sent {
                    self.dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(());
                }
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
            self.rtx_media.insert(rtx, info.ssrc);
        }
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        if let Some(rtx) = info.ssrc_rtx {
            self.rtx_media.remove(&rtx);
        }
        self.sent.remove(&info.ssrc);
    }
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::AttributedPacket;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    const MEDIA: u32 = 1111;
    const RTX: u32 = 2222;

    fn packet(ssrc: u32, seq: u16, payload: Vec<u8>) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                ssrc,
                sequence_number: seq,
                ..Default::default()
            },
            payload: payload.into(),
        }
    }

    fn tagged(p: rtc::rtp::Packet, now: Instant, resend: bool) -> TaggedPacket {
        let mut message = AttributedPacket::new(Packet::Rtp(p));
        if resend {
            message.add(Attribute::Retransmission);
        }
        TaggedPacket {
            now,
            transport: Default::default(),
            message,
        }
    }

    /// An RTX resend of `seq` (RFC 4588: the original sequence number leads the payload).
    fn rtx(seq: u16, rtx_seq: u16) -> rtc::rtp::Packet {
        let mut payload = seq.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0u8; 1000]);
        packet(RTX, rtx_seq, payload)
    }

    struct Budget {
        b: RetransmissionBudget,
        dropped: Arc<AtomicU64>,
        stale: Arc<AtomicU64>,
    }

    /// A budget for a video stream (with RTX) paced at `pacing_bps`.
    fn budget(pacing_bps: u64) -> Budget {
        let (dropped, stale) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut b = RetransmissionBudget::new(
            Arc::new(AtomicU64::new(pacing_bps)),
            dropped.clone(),
            stale.clone(),
        );
        b.bind_local_stream(&StreamInfo {
            ssrc: MEDIA,
            ssrc_rtx: Some(RTX),
            ..Default::default()
        });
        Budget { b, dropped, stale }
    }

    /// Write `msg`; whether it went on towards the wire.
    fn passes(b: &mut RetransmissionBudget, msg: TaggedPacket) -> bool {
        b.handle_write(msg).expect("the budget never fails a write");
        b.poll_write().is_some()
    }

    #[test]
    fn new_packets_always_pass() {
        let mut t = budget(100_000);
        let now = Instant::now();
        for seq in 0..5_000u16 {
            let p = packet(MEDIA, seq.wrapping_add(65_000), vec![0; 1_200]);
            assert!(passes(&mut t.b, tagged(p, now, false)), "{seq}");
        }
        assert_eq!(t.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_recent_packet_is_resent_an_old_one_is_not_and_costs_nothing() {
        // 2 Mbit/s pacing: 100 kbit/s of resends, 10 kbit (one packet) at once.
        let mut t = budget(2_000_000);
        let start = Instant::now();
        for seq in 0..100u16 {
            let at = start + Duration::from_millis(u64::from(seq) * 20);
            assert!(passes(
                &mut t.b,
                tagged(packet(MEDIA, seq, vec![0; 1_000]), at, false)
            ));
        }
        let now = start + Duration::from_millis(2_000);
        // Sent 2 s ago (seq 0) and 1.4 s ago (seq 30): asked for again and again, never resent,
        // and the budget stays whole for what still matters.
        for round in 0..50u16 {
            assert!(!passes(&mut t.b, tagged(rtx(0, round * 2), now, true)));
            assert!(!passes(&mut t.b, tagged(rtx(30, round * 2 + 1), now, true)));
        }
        assert_eq!(t.stale.load(Ordering::Relaxed), 100);
        assert_eq!(t.dropped.load(Ordering::Relaxed), 0);
        // Sent 20 ms ago (seq 99): resent.
        assert!(passes(&mut t.b, tagged(rtx(99, 100), now, true)));
        // A resend without RTX repeats the packet itself.
        assert!(!passes(
            &mut t.b,
            tagged(packet(MEDIA, 1, vec![0; 1_000]), now, true)
        ));
        assert_eq!(t.stale.load(Ordering::Relaxed), 101);
    }

    #[test]
    fn recent_resends_beyond_the_budget_are_dropped() {
        let mut t = budget(2_000_000);
        let start = Instant::now();
        for seq in 0..10u16 {
            assert!(passes(
                &mut t.b,
                tagged(packet(MEDIA, seq, vec![0; 1_000]), start, false)
            ));
        }
        let now = start + Duration::from_millis(100);
        let sent = (0..10u16)
            .filter(|&seq| passes(&mut t.b, tagged(rtx(seq, seq), now, true)))
            .count();
        // A tenth of a second of 100 kbit/s: one 1,050-byte packet.
        assert_eq!(sent, 1);
        assert_eq!(t.dropped.load(Ordering::Relaxed), 9);
        assert_eq!(t.stale.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn packets_the_history_no_longer_holds_are_old() {
        let mut t = budget(2_000_000);
        let now = Instant::now();
        for seq in 0..(SEND_TIMES as u16 + 10) {
            passes(
                &mut t.b,
                tagged(packet(MEDIA, seq, vec![0; 100]), now, false),
            );
        }
        // Seq 5's slot now holds seq 5 + SEND_TIMES.
        assert!(!passes(&mut t.b, tagged(rtx(5, 0), now, true)));
        assert_eq!(t.stale.load(Ordering::Relaxed), 1);
        // Never sent at all.
        assert!(!passes(&mut t.b, tagged(rtx(40_000, 1), now, true)));
        assert_eq!(t.stale.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn ages_stay_right_past_the_millisecond_clock_wrapping() {
        let start = Instant::now();
        let mut times = SendTimes::new(start);
        // 50 days in: past u32 milliseconds.
        let late = start + Duration::from_secs(50 * 86_400);
        times.record(7, late);
        assert_eq!(
            times.age(7, late + Duration::from_millis(300)),
            Some(Duration::from_millis(300))
        );
        assert_eq!(times.age(8, late), None);
    }
}
