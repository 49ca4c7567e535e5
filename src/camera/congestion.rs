//! Per-viewer congestion control: what each viewer's link can carry, how fast its packets
//! leave, and which rendition (rung) it watches.
//!
//! - The estimate is webrtc-rs's own: transport-wide sequence numbers on every packet
//!   (`TwccSender`), the browser's transport-cc feedback resolved against the send history
//!   (`CongestionControl`), and its delay- and loss-based estimator ([`Gcc`]). [`Estimate`] is the
//!   number published from inside that interceptor chain to the viewer's feed and to `/metrics`.
//! - webrtc-rs's own pacer is not used: it queues audio and video in one line (a keyframe
//!   would hold the audio back) and paces at the estimate itself, so a stream above the estimate
//!   queues for seconds. Instead the video feed paces its own packets ([`VideoPacer`], a
//!   multiple of what its rung sends, over webrtc-rs's leaky bucket) and drops frames up to the next
//!   keyframe when they are late ([`MAX_SEND_DELAY`]); audio is written as it comes.
//! - [`RungPolicy`] turns the estimate into the rung to watch: one rung down when the estimate
//!   has been below what the rung needs for half a second, up only after the estimate has had room for the higher
//!   rung for a while, and after a failed step up it waits twice as long before trying again.

use rtc::interceptor::{BandwidthEstimator, EstimatorStats, Gcc, Pacer, PacketReport};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Pacing rate as a multiple of the estimate: bursts (a keyframe) leave faster than the
/// average, but spread over tens of milliseconds instead of at once (libwebrtc uses 2.5).
pub const PACING_FACTOR: f64 = 2.5;
/// The pacer's bucket: this much time's worth of packets may leave at once.
const PACING_BURST: Duration = Duration::from_millis(10);
/// A video frame still unsent this long after it left the encoder is not sent: the viewer skips
/// to the next keyframe (and one is asked for) instead of falling further behind.
pub const MAX_SEND_DELAY: Duration = Duration::from_millis(400);
/// A rung is left when the estimate has stayed below its need times this ...
const DOWN_MARGIN: f64 = 1.0;
/// ... for this long (one low sample of GCC's estimate is noise more often than not).
const DOWN_HOLD: Duration = Duration::from_millis(500);
/// After a step down, the next one waits this long unless the viewer reports real loss
/// ([`SETTLE_LOSS`]): GCC's estimate recovers slowly after the loss that caused the first step
/// (about 60 kbit/s a second), and acting on it took viewers behind 1 Mbit/s on down to 320x180
/// where 640x360 plays without loss.
const DOWN_SETTLE: Duration = Duration::from_secs(10);
/// Loss that shows the rung really does not fit ...
const SETTLE_LOSS: f64 = 0.05;
/// ... counted from this long after the step down (before, the loss reported is the previous
/// rung's: GCC smooths it over a couple of seconds, and the move waits for a keyframe).
const LOSS_GRACE: Duration = Duration::from_secs(3);
/// A higher rung is tried when the estimate has been above its need times this ...
const UP_MARGIN: f64 = 1.25;
/// ... for this long.
const UP_HOLD: Duration = Duration::from_secs(3);
/// After a step down, a step up waits at least this long; after a step up that had to be undone
/// within [`UP_PROBATION`], twice as long as the last wait, up to [`MAX_UP_BACKOFF`]. (A step up
/// is how a viewer learns whether its link carries the higher rung: webrtc-rs cannot send the
/// padding-only packets other senders probe with, so it is tried, and tried less often each
/// time it fails.)
const MIN_UP_BACKOFF: Duration = Duration::from_secs(30);
const MAX_UP_BACKOFF: Duration = Duration::from_secs(240);
const UP_PROBATION: Duration = Duration::from_secs(8);

/// The latest estimate for one viewer, written by its interceptor chain, read by its feed and
/// `/metrics`. Zero until the first feedback.
#[derive(Debug, Default)]
pub struct Estimate {
    /// Target bitrate, bit/s.
    pub bps: AtomicU64,
    /// The delay-based half, bit/s.
    pub delay_bps: AtomicU64,
    /// The loss-based half, bit/s.
    pub loss_bps: AtomicU64,
    /// Loss the feedback reports (smoothed), per million.
    pub loss_ppm: AtomicU64,
    /// Feedback reports resolved so far (0: the viewer sends no transport-cc feedback).
    pub feedback: AtomicU64,
}

impl Estimate {
    /// The target in bit/s, `None` before any feedback.
    pub fn get(&self) -> Option<f64> {
        (self.feedback.load(Ordering::Relaxed) > 0).then(|| self.bps.load(Ordering::Relaxed) as f64)
    }
}

/// [`Gcc`] that publishes every new estimate to an [`Estimate`] (the interceptor owns the
/// estimator; this is how its number gets out).
pub struct PublishedGcc {
    gcc: Gcc,
    out: std::sync::Arc<Estimate>,
}

impl PublishedGcc {
    /// GCC starting at `initial` bit/s, kept within `min..=max`.
    pub fn new(initial: f64, min: f64, max: f64, out: std::sync::Arc<Estimate>) -> Self {
        Self {
            gcc: Gcc::new(initial, min, max),
            out,
        }
    }
}

impl BandwidthEstimator for PublishedGcc {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        if reports.is_empty() {
            return;
        }
        self.gcc.on_reports(now, reports);
        let stats = self.gcc.stats();
        let o = &self.out;
        o.bps
            .store(self.gcc.target_bitrate() as u64, Ordering::Relaxed);
        o.delay_bps
            .store(self.gcc.delay_based_bitrate() as u64, Ordering::Relaxed);
        o.loss_bps
            .store(self.gcc.loss_based_bitrate() as u64, Ordering::Relaxed);
        if let Some(loss) = stats.packet_loss {
            o.loss_ppm
                .store((loss.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
        }
        o.feedback.fetch_add(1, Ordering::Relaxed);
    }

    fn target_bitrate(&self) -> f64 {
        self.gcc.target_bitrate()
    }

    fn stats(&self) -> EstimatorStats {
        self.gcc.stats()
    }
}

/// Paces one viewer's video packets at [`PACING_FACTOR`] times a rate (what its rung sends).
pub struct VideoPacer {
    bucket: Pacer,
    rate: f64,
}

impl VideoPacer {
    /// A pacer at `bps`.
    pub fn new(bps: f64) -> Self {
        Self {
            bucket: Self::bucket(bps),
            rate: bps,
        }
    }

    fn bucket(bps: f64) -> Pacer {
        Pacer::new(bps).with_burst_bits(bps * PACING_BURST.as_secs_f64())
    }

    /// Pace at [`PACING_FACTOR`] times `bps` (changes under 5 % are ignored: the bucket is
    /// rebuilt).
    pub fn follow(&mut self, bps: f64) {
        let bps = (bps * PACING_FACTOR).max(100_000.0);
        if (bps - self.rate).abs() > self.rate * 0.05 {
            self.bucket = Self::bucket(bps);
            self.rate = bps;
        }
    }

    /// The pacing rate, bit/s.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How long to wait before a packet of `bytes` may leave (and, when zero, count it as sent).
    pub fn wait_for(&mut self, bytes: usize, now: Instant) -> Duration {
        let bits = bytes as f64 * 8.0;
        self.bucket.refill(now);
        match self.bucket.time_until_affordable(bits) {
            Some(wait) if !wait.is_zero() => wait,
            _ => {
                self.bucket.consume(bits);
                Duration::ZERO
            }
        }
    }
}

/// Chooses a viewer's rung from its estimate. Rung 0 is the main encode; higher indexes are
/// lower renditions, in falling bitrate.
#[derive(Debug)]
pub struct RungPolicy {
    /// What each rung needs, bit/s (video plus audio).
    needs: Vec<f64>,
    /// Since when the estimate has been below what the current rung needs.
    short_since: Option<Instant>,
    /// When the last step down happened.
    last_down: Option<Instant>,
    /// Loss the viewer's feedback reports now (0..1).
    loss: f64,
    /// Since when the estimate has had room for the rung above.
    room_since: Option<Instant>,
    /// When the last step up happened.
    last_up: Option<Instant>,
    /// The wait before a step up after the last failed one.
    backoff: Duration,
    /// No step up before this.
    not_before: Option<Instant>,
}

impl RungPolicy {
    /// A policy over rungs needing `needs` bit/s each (rung 0 first, highest).
    pub fn new(needs: Vec<f64>) -> Self {
        Self {
            needs,
            short_since: None,
            last_down: None,
            loss: 0.0,
            room_since: None,
            last_up: None,
            backoff: MIN_UP_BACKOFF,
            not_before: None,
        }
    }

    /// The viewer now watches rung `to` (its keyframe came): a step down's waits count from
    /// here, not from the decision.
    pub fn switched(&mut self, now: Instant, to: usize, from: usize) {
        if to > from {
            self.last_down = Some(now);
        }
    }

    /// Loss (0..1) the viewer's feedback reports now: after a step down, a further one comes
    /// at once only with real loss.
    pub fn observe_loss(&mut self, loss: f64) {
        self.loss = loss;
    }

    /// The rung to watch now, given the current one and the estimate (`None`: no feedback yet,
    /// stay).
    pub fn decide(&mut self, now: Instant, current: usize, estimate: Option<f64>) -> usize {
        let Some(estimate) = estimate else {
            return current;
        };
        let last = self.needs.len().saturating_sub(1);
        let current = current.min(last);
        if estimate >= self.needs[current] * DOWN_MARGIN || current == last {
            self.short_since = None;
        } else if now.duration_since(*self.short_since.get_or_insert(now)) >= DOWN_HOLD
            && self.last_down.is_none_or(|t| {
                let since = now.duration_since(t);
                since >= DOWN_SETTLE || (since >= LOSS_GRACE && self.loss >= SETTLE_LOSS)
            })
        {
            // One rung down; still short there after it settled, one further. Right after a
            // loss GCC's estimate undershoots: jumping to the rung that estimate fits left
            // viewers at 320x180 where 640x360 plays.
            let to = current + 1;
            self.room_since = None;
            self.short_since = None;
            self.last_down = Some(now);
            if self
                .last_up
                .is_some_and(|t| now.duration_since(t) < UP_PROBATION)
            {
                // The last step up did not hold: wait longer before the next one.
                self.backoff = (self.backoff * 2).min(MAX_UP_BACKOFF);
            } else {
                self.backoff = MIN_UP_BACKOFF;
            }
            self.last_up = None;
            self.not_before = Some(now + self.backoff);
            return to;
        }
        if current == 0 {
            return 0;
        }
        let up = current - 1;
        if estimate >= self.needs[up] * UP_MARGIN {
            let since = *self.room_since.get_or_insert(now);
            let allowed = self.not_before.is_none_or(|t| now >= t);
            if allowed && now.duration_since(since) >= UP_HOLD {
                self.room_since = None;
                self.last_up = Some(now);
                return up;
            }
        } else {
            self.room_since = None;
        }
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: f64 = 2_600_000.0;
    const LOW: f64 = 700_000.0;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn no_feedback_keeps_the_rung() {
        let mut p = RungPolicy::new(vec![MAIN, LOW]);
        let t0 = Instant::now();
        assert_eq!(p.decide(t0, 0, None), 0);
        assert_eq!(p.decide(t0, 1, None), 1);
    }

    /// Down: the estimate below the rung's need for half a second.
    fn fall(p: &mut RungPolicy, t0: Instant, ms: u64, current: usize, estimate: f64) -> usize {
        assert_eq!(
            p.decide(at(t0, ms), current, Some(estimate)),
            current,
            "one sample is not enough"
        );
        p.decide(at(t0, ms + 500), current, Some(estimate))
    }

    #[test]
    fn down_after_half_a_second_up_after_holding_room() {
        let mut p = RungPolicy::new(vec![MAIN, LOW]);
        let t0 = Instant::now();
        assert_eq!(p.decide(t0, 0, Some(3_000_000.0)), 0);
        // A dip shorter than half a second is not acted on.
        assert_eq!(p.decide(at(t0, 100), 0, Some(900_000.0)), 0);
        assert_eq!(p.decide(at(t0, 350), 0, Some(3_000_000.0)), 0);
        assert_eq!(p.decide(at(t0, 700), 0, Some(900_000.0)), 0);
        assert_eq!(fall(&mut p, t0, 1_000, 0, 900_000.0), 1, "down");
        // Room for the main rung, but not yet long enough (and inside the 30 s wait).
        assert_eq!(p.decide(at(t0, 2_000), 1, Some(4_000_000.0)), 1);
        assert_eq!(p.decide(at(t0, 5_000), 1, Some(4_000_000.0)), 1);
        assert_eq!(p.decide(at(t0, 31_400), 1, Some(4_000_000.0)), 1);
        assert_eq!(
            p.decide(at(t0, 31_600), 1, Some(4_000_000.0)),
            0,
            "up after 3 s of room and the 30 s wait"
        );
    }

    #[test]
    fn a_dip_restarts_the_hold() {
        let mut p = RungPolicy::new(vec![MAIN, LOW]);
        let t0 = Instant::now();
        assert_eq!(fall(&mut p, t0, 0, 0, 500_000.0), 1);
        assert_eq!(p.decide(at(t0, 29_000), 1, Some(4_000_000.0)), 1);
        assert_eq!(
            p.decide(at(t0, 31_000), 1, Some(2_000_000.0)),
            1,
            "no room: hold restarts"
        );
        assert_eq!(p.decide(at(t0, 31_500), 1, Some(4_000_000.0)), 1);
        assert_eq!(p.decide(at(t0, 34_000), 1, Some(4_000_000.0)), 1);
        assert_eq!(p.decide(at(t0, 34_600), 1, Some(4_000_000.0)), 0);
    }

    #[test]
    fn a_failed_step_up_doubles_the_wait() {
        let mut p = RungPolicy::new(vec![MAIN, LOW]);
        let t0 = Instant::now();
        assert_eq!(fall(&mut p, t0, 0, 0, 500_000.0), 1);
        assert_eq!(p.decide(at(t0, 1_000), 1, Some(4_000_000.0)), 1);
        assert_eq!(p.decide(at(t0, 30_400), 1, Some(4_000_000.0)), 1);
        assert_eq!(
            p.decide(at(t0, 30_500), 1, Some(4_000_000.0)),
            0,
            "first try after 30 s"
        );
        // It did not hold: down again 2 s later; the next try waits 60 s.
        assert_eq!(fall(&mut p, t0, 32_000, 0, 800_000.0), 1);
        assert_eq!(p.decide(at(t0, 33_000), 1, Some(4_000_000.0)), 1);
        assert_eq!(
            p.decide(at(t0, 92_400), 1, Some(4_000_000.0)),
            1,
            "inside the 60 s wait"
        );
        assert_eq!(p.decide(at(t0, 92_600), 1, Some(4_000_000.0)), 0);
        // This one holds past probation: a later fall resets the wait to 30 s.
        assert_eq!(fall(&mut p, t0, 150_000, 0, 800_000.0), 1);
        assert_eq!(p.decide(at(t0, 151_000), 1, Some(4_000_000.0)), 1);
        assert_eq!(p.decide(at(t0, 180_400), 1, Some(4_000_000.0)), 1);
        assert_eq!(p.decide(at(t0, 180_600), 1, Some(4_000_000.0)), 0);
    }

    #[test]
    fn down_goes_one_rung_at_a_time() {
        let t0 = Instant::now();
        let mut p = RungPolicy::new(vec![MAIN, 1_200_000.0, 400_000.0]);
        assert_eq!(fall(&mut p, t0, 0, 0, 600_000.0), 1, "one rung down");
        assert_eq!(p.decide(at(t0, 1_000), 1, Some(600_000.0)), 1);
        p.observe_loss(0.12);
        assert_eq!(
            p.decide(at(t0, 2_000), 1, Some(600_000.0)),
            1,
            "loss right after the step is the previous rung's"
        );
        p.observe_loss(0.0);
        assert_eq!(
            p.decide(at(t0, 5_000), 1, Some(600_000.0)),
            1,
            "the estimate settles for 10 s after a step down"
        );
        p.observe_loss(0.12);
        assert_eq!(
            p.decide(at(t0, 5_500), 1, Some(600_000.0)),
            2,
            "short with real loss: one more at once"
        );
        let mut p = RungPolicy::new(vec![MAIN, 1_200_000.0, 400_000.0]);
        assert_eq!(fall(&mut p, t0, 0, 0, 600_000.0), 1);
        assert_eq!(p.decide(at(t0, 9_000), 1, Some(600_000.0)), 1);
        assert_eq!(
            p.decide(at(t0, 10_600), 1, Some(600_000.0)),
            2,
            "still short once settled: one more"
        );
        assert_eq!(
            p.decide(at(t0, 3_000), 2, Some(100_000.0)),
            2,
            "nothing lower: stay on the lowest"
        );
        let mut p = RungPolicy::new(vec![MAIN, 1_200_000.0, 400_000.0]);
        assert_eq!(fall(&mut p, t0, 0, 0, 600_000.0), 1);
        assert_eq!(
            p.decide(at(t0, 1_000), 1, Some(1_300_000.0)),
            1,
            "the estimate recovered above this rung's need: stay"
        );
    }

    #[test]
    fn the_pacer_spreads_a_keyframe() {
        // 1 Mbit/s estimate: paced at 2.5 Mbit/s, so a 40 KB keyframe (34 packets of 1,200 B)
        // takes ~130 ms instead of leaving at once.
        let mut pacer = VideoPacer::new(1.0);
        pacer.follow(1_000_000.0);
        assert_eq!(pacer.rate(), 2_500_000.0);
        let t0 = Instant::now();
        let mut now = t0;
        for _ in 0..34 {
            loop {
                let wait = pacer.wait_for(1200, now);
                if wait.is_zero() {
                    break;
                }
                now += wait;
            }
        }
        let took = now.duration_since(t0);
        assert!(
            took >= Duration::from_millis(110) && took <= Duration::from_millis(140),
            "{took:?}"
        );
    }
}
