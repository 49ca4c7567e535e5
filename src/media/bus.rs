//! The media bus: how consumers (WebRTC viewers, snapshots, later recordings and WHEP) take
//! frames from the one encode.
//!
//! Two things live here:
//! - [`Demand`]: every consumer holds a share of it (a [`DemandGuard`], or a [`DemandCounter`]
//!   for a group such as the room's viewers); capture runs while the total is above zero (plus
//!   `always-on`), so an idle board has its camera off.
//! - [`Subscription`]: a consumer's view of one rendition's broadcast channel. It starts at a
//!   keyframe, and a consumer that falls behind skips to the next keyframe and asks the encoder
//!   for one, instead of being dropped or decoding garbage.

use super::pipeline::EncodedFrame;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{broadcast, watch};

/// How many consumers want capture now.
#[derive(Clone, Debug)]
pub struct Demand {
    total: Arc<watch::Sender<usize>>,
}

impl Default for Demand {
    fn default() -> Self {
        Self::new()
    }
}

impl Demand {
    /// No consumer yet.
    pub fn new() -> Self {
        Self {
            total: Arc::new(watch::channel(0).0),
        }
    }

    /// Consumers now.
    pub fn count(&self) -> usize {
        *self.total.borrow()
    }

    /// Follow the count (capture's supervisor does).
    pub fn watch(&self) -> watch::Receiver<usize> {
        self.total.subscribe()
    }

    /// One consumer for as long as the guard lives.
    pub fn guard(&self) -> DemandGuard {
        self.total.send_modify(|n| *n += 1);
        DemandGuard {
            total: self.total.clone(),
        }
    }

    /// A group of consumers whose size is set as a whole (the room's viewers).
    pub fn counter(&self) -> DemandCounter {
        DemandCounter {
            total: self.total.clone(),
            mine: AtomicUsize::new(0),
        }
    }
}

/// One consumer's share of [`Demand`]; dropping it gives the share back.
#[derive(Debug)]
pub struct DemandGuard {
    total: Arc<watch::Sender<usize>>,
}

impl Drop for DemandGuard {
    fn drop(&mut self) {
        self.total.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A group's share of [`Demand`], set with [`DemandCounter::set`]; given back when dropped.
#[derive(Debug)]
pub struct DemandCounter {
    total: Arc<watch::Sender<usize>>,
    mine: AtomicUsize,
}

impl DemandCounter {
    /// The group has `n` consumers now.
    pub fn set(&self, n: usize) {
        // send_modify runs under the channel's lock, so the swap and the update are one step
        // for every other counter and guard.
        self.total.send_modify(|total| {
            let old = self.mine.swap(n, Ordering::Relaxed);
            *total = total.saturating_sub(old) + n;
        });
    }
}

impl Drop for DemandCounter {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Something that can ask a rendition's encoder for a keyframe (throttled on its side).
pub trait KeyframeSource: Send + Sync {
    /// Ask for a keyframe with its parameter sets.
    fn request_keyframe(&self);
}

/// What [`Subscription::next`] hands out.
#[derive(Debug)]
pub enum Delivery {
    /// The next frame to send.
    Frame(Arc<EncodedFrame>),
    /// The consumer fell behind: `skipped` frames were lost to it, a keyframe was asked for,
    /// and nothing more comes until it.
    Lagged {
        /// Frames the channel dropped for this consumer.
        skipped: u64,
    },
    /// A frame dropped because the consumer waits for a keyframe.
    Skipped,
}

/// A consumer's place on one rendition: frames from a keyframe on, lag turned into "skip to the
/// next keyframe and ask for one", and a share of capture demand while it lives.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<EncodedFrame>>,
    keyframes: Option<Arc<dyn KeyframeSource>>,
    waiting_for_key: bool,
    _demand: Option<DemandGuard>,
}

impl Subscription {
    /// Subscribe to `tx` now. With `keyframes`, the encoder is asked for a keyframe at once (a
    /// new consumer should not wait a whole GOP); frames before the first keyframe are skipped.
    pub fn new(
        tx: &broadcast::Sender<Arc<EncodedFrame>>,
        keyframes: Option<Arc<dyn KeyframeSource>>,
        demand: Option<DemandGuard>,
    ) -> Self {
        let rx = tx.subscribe();
        if let Some(k) = &keyframes {
            k.request_keyframe();
        }
        Self {
            rx,
            keyframes,
            waiting_for_key: true,
            _demand: demand,
        }
    }

    /// Take over a receiver already subscribed (a viewer that gathered its first frames
    /// while its connection came up); `from_keyframe` skips everything up to the next keyframe.
    pub fn resume(
        rx: broadcast::Receiver<Arc<EncodedFrame>>,
        keyframes: Option<Arc<dyn KeyframeSource>>,
        from_keyframe: bool,
    ) -> Self {
        Self {
            rx,
            keyframes,
            waiting_for_key: from_keyframe,
            _demand: None,
        }
    }

    /// Start over from what the channel gets from now on, waiting for a keyframe again (and
    /// asking for one).
    pub fn restart(&mut self) {
        self.rx = self.rx.resubscribe();
        self.waiting_for_key = true;
        if let Some(k) = &self.keyframes {
            k.request_keyframe();
        }
    }

    /// The next delivery; `None` once the rendition is gone.
    pub async fn next(&mut self) -> Option<Delivery> {
        match self.rx.recv().await {
            Ok(frame) => {
                if self.waiting_for_key {
                    if !frame.keyframe {
                        return Some(Delivery::Skipped);
                    }
                    self.waiting_for_key = false;
                }
                Some(Delivery::Frame(frame))
            }
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                self.waiting_for_key = true;
                if let Some(k) = &self.keyframes {
                    k.request_keyframe();
                }
                Some(Delivery::Lagged { skipped })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// Skip straight to the next frame to send (see [`Subscription::next`]); `None` once the
    /// rendition is gone.
    pub async fn next_frame(&mut self) -> Option<Arc<EncodedFrame>> {
        loop {
            if let Delivery::Frame(f) = self.next().await? {
                return Some(f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::{Duration, Instant};

    #[derive(Default)]
    struct Counting(AtomicUsize);
    impl KeyframeSource for Counting {
        fn request_keyframe(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn frame(n: u8, keyframe: bool) -> Arc<EncodedFrame> {
        Arc::new(EncodedFrame {
            data: Bytes::from(vec![n]),
            pts: Duration::from_millis(n as u64 * 33),
            duration: None,
            keyframe,
            at: Instant::now(),
        })
    }

    fn data(d: Option<Delivery>) -> Option<u8> {
        match d {
            Some(Delivery::Frame(f)) => Some(f.data[0]),
            _ => None,
        }
    }

    #[tokio::test]
    async fn starts_at_a_keyframe_and_asks_for_one() {
        let (tx, _) = broadcast::channel(8);
        let k = Arc::new(Counting::default());
        let mut sub = Subscription::new(&tx, Some(k.clone()), None);
        assert_eq!(
            k.0.load(Ordering::Relaxed),
            1,
            "a new consumer asks at once"
        );
        tx.send(frame(1, false)).unwrap();
        tx.send(frame(2, false)).unwrap();
        tx.send(frame(3, true)).unwrap();
        tx.send(frame(4, false)).unwrap();
        assert!(matches!(sub.next().await, Some(Delivery::Skipped)));
        assert!(matches!(sub.next().await, Some(Delivery::Skipped)));
        assert_eq!(data(sub.next().await), Some(3));
        assert_eq!(data(sub.next().await), Some(4));
    }

    #[tokio::test]
    async fn a_lagging_consumer_skips_to_the_next_keyframe_and_asks_for_it() {
        let (tx, _) = broadcast::channel(4);
        let k = Arc::new(Counting::default());
        let mut sub = Subscription::new(&tx, Some(k.clone()), None);
        tx.send(frame(0, true)).unwrap();
        assert_eq!(data(sub.next().await), Some(0));
        // Ten frames while the consumer is away: the channel keeps four.
        for n in 1..=10 {
            tx.send(frame(n, false)).unwrap();
        }
        match sub.next().await {
            Some(Delivery::Lagged { skipped }) => assert_eq!(skipped, 6),
            other => panic!("expected lag, got {other:?}"),
        }
        assert_eq!(k.0.load(Ordering::Relaxed), 2, "lag asks for a keyframe");
        // The deltas still queued are of no use without their reference: skipped.
        for _ in 7..=10 {
            assert!(matches!(sub.next().await, Some(Delivery::Skipped)));
        }
        tx.send(frame(11, true)).unwrap();
        tx.send(frame(12, false)).unwrap();
        assert_eq!(data(sub.next().await), Some(11));
        assert_eq!(data(sub.next().await), Some(12));
    }

    #[tokio::test]
    async fn restart_drops_the_backlog_and_waits_for_a_new_keyframe() {
        let (tx, _) = broadcast::channel(8);
        let k = Arc::new(Counting::default());
        let mut sub = Subscription::new(&tx, Some(k.clone()), None);
        tx.send(frame(1, true)).unwrap();
        tx.send(frame(2, false)).unwrap();
        sub.restart();
        assert_eq!(k.0.load(Ordering::Relaxed), 2);
        tx.send(frame(3, false)).unwrap();
        tx.send(frame(4, true)).unwrap();
        assert_eq!(sub.next_frame().await.map(|f| f.data[0]), Some(4));
    }

    #[tokio::test]
    async fn ends_when_the_rendition_is_gone() {
        let (tx, _) = broadcast::channel(8);
        let mut sub = Subscription::new(&tx, None, None);
        drop(tx);
        assert!(sub.next().await.is_none());
    }

    #[test]
    fn demand_counts_every_consumer_and_each_gives_its_share_back() {
        let demand = Demand::new();
        let mut watch = demand.watch();
        let viewers = demand.counter();
        viewers.set(3);
        assert_eq!(demand.count(), 3);
        let snapshot = demand.guard();
        assert_eq!(demand.count(), 4);
        viewers.set(1);
        assert_eq!(demand.count(), 2);
        assert!(watch.has_changed().unwrap_or(false));
        drop(snapshot);
        assert_eq!(demand.count(), 1);
        drop(viewers);
        assert_eq!(demand.count(), 0, "a dropped group gives back all it held");
        assert_eq!(*watch.borrow_and_update(), 0);
    }

    #[tokio::test]
    async fn a_subscription_holds_demand_while_it_lives() {
        let demand = Demand::new();
        let (tx, _) = broadcast::channel::<Arc<EncodedFrame>>(8);
        let sub = Subscription::new(&tx, None, Some(demand.guard()));
        assert_eq!(demand.count(), 1);
        drop(sub);
        assert_eq!(demand.count(), 0);
    }
}
