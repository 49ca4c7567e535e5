//! Warnings that anyone can cause (a viewer-token holder offering what the camera must refuse
//! hundreds of times a second, a server rate-limiting the camera under a flood) pass at most
//! once per interval; the rest go to debug, and the next warning says how many were held back.
//! Otherwise journald's own rate limit would hide the real errors among them.

use std::time::{Duration, Instant};

/// Lets one warning through per interval.
#[derive(Debug)]
pub struct WarnGate {
    every: Duration,
    next: Option<Instant>,
    held: u64,
}

impl WarnGate {
    /// At most one warning per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            next: None,
            held: 0,
        }
    }

    /// `Some(n)` when a warning may be logged at `now` (`n` were held back since the last one),
    /// `None` when it goes to debug instead.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.next {
            Some(next) if now < next => {
                self.held += 1;
                None
            }
            _ => {
                self.next = Some(now + self.every);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

/// `warn!` through a [`WarnGate`]: at debug level when the gate holds it back, with
/// `held_back = n` when others were.
macro_rules! warn_gated {
    ($gate:expr, $($arg:tt)+) => {
        match $gate.admit(std::time::Instant::now()) {
            Some(0) => tracing::warn!($($arg)+),
            Some(held_back) => tracing::warn!(held_back, $($arg)+),
            None => tracing::debug!($($arg)+),
        }
    };
}
pub(crate) use warn_gated;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_interval_and_the_count_held_back() {
        let mut g = WarnGate::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(g.admit(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(g.admit(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(g.admit(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(g.admit(t0 + Duration::from_secs(11)), None);
        assert_eq!(g.admit(t0 + Duration::from_secs(30)), Some(1));
    }
}
