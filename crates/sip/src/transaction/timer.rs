//! The timer values transactions run on (RFC 3261 §17.1.1.1 and Table 4, RFC 6026
//! Timer M), and whether a transport retransmits for us. Every derived timer is
//! computed here once, so the four users of client transactions cannot disagree.

use std::time::Duration;

/// Whether the transport delivers reliably (TCP, TLS) or not (UDP). Reliable
/// transports need no retransmission (no Timers A and E) and no lingering to absorb
/// retransmitted answers (Timers D and K are zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reliability {
    Unreliable,
    Reliable,
}

/// Why timer values were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimersError {
    #[error("T1 must be between 1 ms and 60 s")]
    T1OutOfRange,
    #[error("T2 must be at least T1 and at most 10 minutes")]
    T2OutOfRange,
    #[error("T4 must be at most 10 minutes")]
    T4OutOfRange,
}

/// T1 (RTT estimate), T2 (longest retransmission interval of non-INVITE requests) and
/// T4 (longest time a message stays in the network). Bounded so that no retransmission
/// storm (T1 = 0) and no arithmetic overflow is possible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    t1: Duration,
    t2: Duration,
    t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self::RFC3261
    }
}

impl Timers {
    /// The defaults of RFC 3261: T1 = 500 ms, T2 = 4 s, T4 = 5 s.
    pub const RFC3261: Timers = Timers {
        t1: Duration::from_millis(500),
        t2: Duration::from_secs(4),
        t4: Duration::from_secs(5),
    };

    /// Other values (a network with a longer round trip may raise T1).
    pub fn new(t1: Duration, t2: Duration, t4: Duration) -> Result<Self, TimersError> {
        if t1 < Duration::from_millis(1) || t1 > Duration::from_secs(60) {
            return Err(TimersError::T1OutOfRange);
        }
        if t2 < t1 || t2 > Duration::from_secs(600) {
            return Err(TimersError::T2OutOfRange);
        }
        if t4 > Duration::from_secs(600) {
            return Err(TimersError::T4OutOfRange);
        }
        Ok(Self { t1, t2, t4 })
    }

    pub fn t1(&self) -> Duration {
        self.t1
    }

    pub fn t2(&self) -> Duration {
        self.t2
    }

    pub fn t4(&self) -> Duration {
        self.t4
    }

    /// 64·T1: Timer B (INVITE without any answer), Timer F (non-INVITE without a final
    /// answer), Timer M (Accepted, RFC 6026), and the wait for a final answer after a
    /// CANCEL (§9.1).
    pub fn timeout(&self) -> Duration {
        self.t1 * 64
    }

    /// Timer D: how long a Completed INVITE transaction absorbs retransmitted final
    /// answers (at least 32 s on unreliable transports, 0 on reliable ones).
    pub fn timer_d(&self, reliability: Reliability) -> Duration {
        match reliability {
            Reliability::Unreliable => self.timeout().max(Duration::from_secs(32)),
            Reliability::Reliable => Duration::ZERO,
        }
    }

    /// Timer K: how long a Completed non-INVITE transaction absorbs retransmitted
    /// answers (T4 on unreliable transports, 0 on reliable ones).
    pub fn timer_k(&self, reliability: Reliability) -> Duration {
        match reliability {
            Reliability::Unreliable => self.t4,
            Reliability::Reliable => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_values_and_their_derivations() {
        let t = Timers::default();
        assert_eq!(t.timeout(), Duration::from_secs(32));
        assert_eq!(t.timer_d(Reliability::Unreliable), Duration::from_secs(32));
        assert_eq!(t.timer_d(Reliability::Reliable), Duration::ZERO);
        assert_eq!(t.timer_k(Reliability::Unreliable), Duration::from_secs(5));
        assert_eq!(t.timer_k(Reliability::Reliable), Duration::ZERO);
        let slow = Timers::new(
            Duration::from_secs(1),
            Duration::from_secs(4),
            Duration::from_secs(5),
        )
        .expect("valid");
        assert_eq!(
            slow.timer_d(Reliability::Unreliable),
            Duration::from_secs(64)
        );
    }

    #[test]
    fn values_that_would_storm_or_overflow_are_refused() {
        let s = Duration::from_secs;
        assert_eq!(
            Timers::new(Duration::ZERO, s(4), s(5)),
            Err(TimersError::T1OutOfRange)
        );
        assert_eq!(
            Timers::new(s(61), s(100), s(5)),
            Err(TimersError::T1OutOfRange)
        );
        assert_eq!(
            Timers::new(s(2), s(1), s(5)),
            Err(TimersError::T2OutOfRange)
        );
        assert_eq!(
            Timers::new(s(1), s(4), s(601)),
            Err(TimersError::T4OutOfRange)
        );
    }
}
