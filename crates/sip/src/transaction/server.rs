//! Non-INVITE server transactions (RFC 3261 §17.2.2), as a bounded table: a
//! retransmitted request is absorbed while it is being handled and answered with the
//! last response once there is one; entries linger for Timer J (64*T1 = 32 s) on
//! unreliable transports. Only requests with an RFC 3261 branch (`z9hG4bK`) are matched.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::branch::MAGIC_COOKIE;

/// Timer J for UDP.
pub const TIMER_J: Duration = Duration::from_secs(32);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TxKey {
    branch: String,
    sent_by: String,
    method: String,
}

impl TxKey {
    /// The key of a request (§17.2.3), or `None` for pre-RFC 3261 branches.
    pub fn new(
        branch: &str,
        sent_by_host: &str,
        sent_by_port: Option<u16>,
        method: &str,
    ) -> Option<Self> {
        if !branch.starts_with(MAGIC_COOKIE) {
            return None;
        }
        // ACK matches the INVITE's transaction; it never creates a non-INVITE one.
        let method = if method == "ACK" { "INVITE" } else { method };
        Some(Self {
            branch: branch.to_owned(),
            sent_by: format!(
                "{}:{}",
                sent_by_host.to_ascii_lowercase(),
                sent_by_port.unwrap_or(5060)
            ),
            method: method.to_owned(),
        })
    }
}

/// What to do with an incoming request.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen<'a> {
    /// A new request: handle it, then record the response with [`ServerTransactions::respond`].
    New,
    /// A retransmission of a request still being handled: drop it.
    Absorb,
    /// A retransmission of an answered request: send this response again.
    Resend(&'a [u8]),
}

#[derive(Debug)]
struct Entry {
    response: Option<Vec<u8>>,
    expires: Instant,
}

#[derive(Debug)]
pub struct ServerTransactions {
    entries: HashMap<TxKey, Entry>,
    order: VecDeque<(Instant, TxKey)>,
    capacity: usize,
    linger: Duration,
}

impl ServerTransactions {
    pub fn new(capacity: usize, linger: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            linger,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((t, _)) = self.order.front() {
            if *t > now && self.entries.len() < self.capacity {
                break;
            }
            if let Some((_, key)) = self.order.pop_front()
                && self
                    .entries
                    .get(&key)
                    .is_some_and(|e| e.expires <= now || self.entries.len() >= self.capacity)
            {
                self.entries.remove(&key);
            }
        }
    }

    pub fn on_request(&mut self, key: &TxKey, now: Instant) -> Seen<'_> {
        self.expire(now);
        if self.entries.contains_key(key) {
            return match self.entries.get(key).and_then(|e| e.response.as_deref()) {
                Some(r) => Seen::Resend(r),
                None => Seen::Absorb,
            };
        }
        let expires = now + self.linger;
        self.entries.insert(
            key.clone(),
            Entry {
                response: None,
                expires,
            },
        );
        self.order.push_back((expires, key.clone()));
        Seen::New
    }

    /// Records the (final) response sent for a request.
    pub fn respond(&mut self, key: &TxKey, response: &[u8], now: Instant) {
        if let Some(e) = self.entries.get_mut(key) {
            e.response = Some(response.to_vec());
            e.expires = now + self.linger;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: &str) -> TxKey {
        TxKey::new(b, "Host.Example", None, "REGISTER").expect("rfc3261 branch")
    }

    #[test]
    fn retransmissions_are_absorbed_then_answered() {
        let t0 = Instant::now();
        let mut t = ServerTransactions::new(10, TIMER_J);
        let k = key("z9hG4bK1");
        assert_eq!(t.on_request(&k, t0), Seen::New);
        assert_eq!(t.on_request(&k, t0), Seen::Absorb);
        t.respond(&k, b"SIP/2.0 200 OK", t0);
        assert_eq!(
            t.on_request(&k, t0 + Duration::from_secs(1)),
            Seen::Resend(b"SIP/2.0 200 OK")
        );
        assert_eq!(
            t.on_request(&k, t0 + Duration::from_secs(40)),
            Seen::New,
            "expired after Timer J"
        );
        assert_eq!(TxKey::new("old-style", "h", None, "REGISTER"), None);
        assert_ne!(
            key("z9hG4bK1"),
            TxKey::new("z9hG4bK1", "host.example", Some(5070), "REGISTER").expect("k")
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut t = ServerTransactions::new(100, TIMER_J);
        for i in 0..10_000 {
            t.on_request(&key(&format!("z9hG4bK{i}")), t0);
        }
        assert!(t.len() <= 100, "{}", t.len());
    }
}
