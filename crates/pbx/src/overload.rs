//! Overload of the UDP receive path (RFC 6357's "server overload"): when the socket's
//! queue has not once been empty for [`STANDING_FOR`], new REGISTERs are answered `503`
//! with `Retry-After` instead of being challenged, so that the work already begun (the
//! REGISTERs that carry credentials, and the retransmissions the transaction table
//! absorbs) is finished in time.
//!
//! Without it a server past its ceiling answers late, the phones retransmit after T1
//! (500 ms), every late REGISTER then costs two or three times its work, and the
//! throughput falls to a fraction of the ceiling (bench/README.md: 42 % answered in time
//! at 17,000/s offered). The rule is sans-IO: the receive loop tells it what each read
//! found and when; tests move the time.

use std::time::Duration;

use tokio::time::Instant;

/// How long the receive queue must have stayed non-empty before new work is refused.
/// A queue that never empties for this long holds datagrams that arrived at least
/// this long ago, well inside T1 (500 ms): shedding starts before the retransmissions
/// that would double the load.
pub const STANDING_FOR: Duration = Duration::from_millis(100);

/// The seconds a refused phone is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: &str = "1";

/// Whether the receive queue is standing: one per receive loop.
#[derive(Clone, Copy, Debug, Default)]
pub struct Backlog {
    /// Since when every read found the next datagram already waiting.
    busy_since: Option<Instant>,
}

impl Backlog {
    /// A read had to wait for its datagram: the queue was empty. Returns false (no
    /// shedding).
    pub fn drained(&mut self) -> bool {
        self.busy_since = None;
        false
    }

    /// A read at `now` found a datagram already waiting. Returns whether new work is
    /// to be shed: the queue has not been empty since [`STANDING_FOR`] ago.
    pub fn waiting(&mut self, now: Instant) -> bool {
        let since = *self.busy_since.get_or_insert(now);
        now.saturating_duration_since(since) >= STANDING_FOR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_that_empties_now_and_then_is_never_shed() {
        let mut b = Backlog::default();
        let t0 = Instant::now();
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(i);
            // Ninety reads out of a hundred find work waiting; every tenth waits.
            let shed = if i % 10 == 9 {
                b.drained()
            } else {
                b.waiting(now)
            };
            assert!(!shed, "shed at {i} ms");
        }
    }

    #[test]
    fn a_queue_that_stands_past_the_bound_is_shed_until_it_drains() {
        let mut b = Backlog::default();
        let t0 = Instant::now();
        assert!(!b.waiting(t0));
        assert!(!b.waiting(t0 + STANDING_FOR - Duration::from_millis(1)));
        assert!(b.waiting(t0 + STANDING_FOR));
        assert!(b.waiting(t0 + 3 * STANDING_FOR));
        assert!(!b.drained());
        // A new busy period counts from its own start.
        assert!(!b.waiting(t0 + 4 * STANDING_FOR));
        assert!(!b.waiting(t0 + 5 * STANDING_FOR - Duration::from_millis(1)));
        assert!(b.waiting(t0 + 5 * STANDING_FOR));
    }
}
