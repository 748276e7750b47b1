//! Overload of the UDP receive path (RFC 6357's "server overload"): when the socket's
//! queue has not once been empty for [`STANDING_FOR`] and retransmissions show that
//! answers are late, new REGISTERs are answered `503` with `Retry-After` instead of
//! being challenged, so that the work already begun (the REGISTERs that carry
//! credentials, and the retransmissions the transaction table absorbs) is finished in
//! time.
//!
//! A standing queue alone proves only that the loop is busy: two phones that each wait
//! for their answer before sending the next request keep it busy with answers in a
//! millisecond. A retransmission of a request the table already holds proves a late
//! (or lost) answer: a client's timer (T1, 500 ms) ran out. Both together are the
//! overload.
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

/// How long a retransmission counts as the proof that answers are late.
pub const LATE_FOR: Duration = Duration::from_secs(1);

/// The seconds a refused phone is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: &str = "1";

/// Whether the receive queue is standing: one per receive loop.
#[derive(Clone, Copy, Debug, Default)]
pub struct Backlog {
    /// Since when every read found the next datagram already waiting.
    busy_since: Option<Instant>,
    /// The endpoint's count of retransmissions at the last read, and when it last
    /// moved.
    retransmissions: u64,
    late_at: Option<Instant>,
}

impl Backlog {
    /// A read had to wait for its datagram: the queue was empty. `retransmissions` is
    /// the endpoint's running count (those counted while the queue was empty prove
    /// nothing about a later busy period). Returns false (no shedding).
    pub fn drained(&mut self, retransmissions: u64) -> bool {
        self.busy_since = None;
        self.retransmissions = retransmissions;
        false
    }

    /// A read at `now` found a datagram already waiting; `retransmissions` is the
    /// endpoint's running count of retransmitted requests. Returns whether new work is
    /// to be shed: the queue has not been empty since [`STANDING_FOR`] ago, and a
    /// retransmission arrived within [`LATE_FOR`].
    pub fn waiting(&mut self, now: Instant, retransmissions: u64) -> bool {
        if retransmissions != self.retransmissions {
            self.retransmissions = retransmissions;
            self.late_at = Some(now);
        }
        let since = *self.busy_since.get_or_insert(now);
        let late = self
            .late_at
            .is_some_and(|at| now.saturating_duration_since(at) < LATE_FOR);
        late && now.saturating_duration_since(since) >= STANDING_FOR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_queue_that_empties_now_and_then_is_never_shed() {
        let mut b = Backlog::default();
        let t0 = Instant::now();
        for i in 0..1000u64 {
            // Ninety reads out of a hundred find work waiting, every tenth waits; a
            // retransmission on every read.
            let shed = if i % 10 == 9 {
                b.drained(i)
            } else {
                b.waiting(t0 + ms(i), i)
            };
            assert!(!shed, "shed at {i} ms");
        }
    }

    #[test]
    fn retransmissions_counted_while_the_queue_was_empty_prove_nothing() {
        let mut b = Backlog::default();
        let t0 = Instant::now();
        b.drained(40);
        for i in 0..500u64 {
            assert!(!b.waiting(t0 + ms(i), 40), "shed at {i} ms");
        }
    }

    #[test]
    fn a_busy_queue_with_answers_in_time_is_never_shed() {
        // Closed-loop clients keep the loop busy for ten seconds, nobody retransmits.
        let mut b = Backlog::default();
        let t0 = Instant::now();
        for i in 0..10_000u64 {
            assert!(!b.waiting(t0 + ms(i), 0), "shed at {i} ms");
        }
    }

    #[test]
    fn a_queue_that_stands_while_answers_are_late_is_shed_until_it_drains() {
        let mut b = Backlog::default();
        let t0 = Instant::now();
        assert!(!b.waiting(t0, 0));
        // Standing, but no proof of lateness yet.
        assert!(!b.waiting(t0 + STANDING_FOR, 0));
        // A retransmission: late answers.
        assert!(b.waiting(t0 + STANDING_FOR + ms(1), 1));
        assert!(b.waiting(t0 + 3 * STANDING_FOR, 1));
        // No retransmission for LATE_FOR: the answers are in time again.
        let quiet = t0 + STANDING_FOR + ms(1) + LATE_FOR;
        assert!(!b.waiting(quiet, 1));
        assert!(b.waiting(quiet + ms(1), 2));
        assert!(!b.drained(2));
        // A new busy period counts from its own start.
        let again = quiet + ms(10);
        assert!(!b.waiting(again, 3));
        assert!(!b.waiting(again + STANDING_FOR - ms(1), 4));
        assert!(b.waiting(again + STANDING_FOR, 5));
    }
}
