//! The one clock every crate reads time through. Only the binary implements it with the
//! operating system's clocks; tests use a [`ManualClock`] and move it forward, so ban
//! windows, nonce expiry, grace windows and timers are exercised without sleeping.
//!
//! This module reads no clock itself: [`ManualClock`] is given its starting points.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where time comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Wall-clock time, seconds since the Unix epoch: what records, expiries and
    /// windows are stamped with.
    fn now(&self) -> i64;

    /// Monotonic time for timers that must not jump when the wall clock is set
    /// (retransmissions, transaction and call timeouts).
    fn instant(&self) -> Instant;
}

/// A clock that stands still until a test moves it; both readings move together.
#[derive(Debug)]
pub struct ManualClock {
    state: Mutex<(i64, Instant)>,
}

impl ManualClock {
    /// A clock reading `now` (Unix seconds) and `instant`; a test passes
    /// `Instant::now()` as the monotonic starting point.
    pub fn new(now: i64, instant: Instant) -> Self {
        Self {
            state: Mutex::new((now, instant)),
        }
    }

    /// Moves both readings forward by `by` (whole seconds for the wall clock,
    /// truncated; the monotonic reading moves by exactly `by`).
    pub fn advance(&self, by: Duration) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let secs = i64::try_from(by.as_secs()).unwrap_or(i64::MAX);
        s.0 = s.0.saturating_add(secs);
        s.1 = s.1.checked_add(by).unwrap_or(s.1);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    fn instant(&self) -> Instant {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_both_readings_together() {
        let start = Instant::now();
        let c = ManualClock::new(1_700_000_000, start);
        assert_eq!(c.now(), 1_700_000_000);
        assert_eq!(c.instant(), start);
        c.advance(Duration::from_millis(1_500));
        assert_eq!(c.now(), 1_700_000_001, "wall seconds truncate");
        assert_eq!(c.instant(), start + Duration::from_millis(1_500));
    }

    #[test]
    fn it_can_stand_behind_the_trait() {
        let c: std::sync::Arc<dyn Clock> = std::sync::Arc::new(ManualClock::new(5, Instant::now()));
        assert_eq!(c.now(), 5);
    }
}
