//! Stateless digest nonces: `hex(issued_at) || hex(salt) || hex(HMAC-SHA256(key,
//! issued_at, salt, source IP, realm)[..16])`. A nonce is checked without per-request
//! state; it is bound to the address it was issued to and expires (RFC 7616 §3.3
//! `stale=true` when only its age is wrong). The salt makes every nonce unique, even for
//! many clients behind one address in the same second (each then counts `nc` from 1 on
//! its own nonce). Replayed `nc` values are refused by [`NcTracker`], which is bounded.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

const TS_HEX: usize = 16;
const SALT_HEX: usize = 16;
const MAC_BYTES: usize = 16;
/// Length of every nonce sipward issues.
pub const NONCE_LEN: usize = TS_HEX + SALT_HEX + 2 * MAC_BYTES;

/// The server's nonce secret (random per process; a restart only means clients get a
/// fresh challenge).
pub struct NonceKey {
    key: [u8; 32],
    issued: AtomicU64,
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey([redacted])")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCheck {
    Valid {
        issued_at: u64,
    },
    /// Ours, but older than the maximum age: re-challenge with `stale=true`.
    Stale,
    /// Not ours, altered, issued to another address or realm, or from the future.
    Invalid,
}

impl NonceKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            key,
            issued: AtomicU64::new(0),
        }
    }

    fn hmac(&self) -> HmacSha256 {
        // new_from_slice only fails for invalid key lengths; HMAC accepts any length.
        <HmacSha256 as KeyInit>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable_hmac())
    }

    /// A unique, unpredictable salt: a keyed hash of a per-process counter (the counter
    /// itself would reveal how many challenges were sent).
    fn next_salt(&self) -> u64 {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let mut m = self.hmac();
        m.update(b"salt");
        m.update(&n.to_be_bytes());
        let out = m.finalize().into_bytes();
        u64::from_be_bytes([
            out[0], out[1], out[2], out[3], out[4], out[5], out[6], out[7],
        ])
    }

    fn mac(&self, issued_at: u64, salt: u64, source: IpAddr, realm: &str) -> [u8; 32] {
        let mut m = self.hmac();
        m.update(&issued_at.to_be_bytes());
        m.update(&salt.to_be_bytes());
        match source {
            IpAddr::V4(a) => m.update(&a.octets()),
            IpAddr::V6(a) => m.update(&a.octets()),
        }
        m.update(realm.as_bytes());
        m.finalize().into_bytes().into()
    }

    pub fn issue(&self, now_secs: u64, source: IpAddr, realm: &str) -> String {
        let salt = self.next_salt();
        let mac = self.mac(now_secs, salt, source, realm);
        let mut s = format!("{now_secs:016x}{salt:016x}");
        s.push_str(&hex::encode(&mac[..MAC_BYTES]));
        s
    }

    /// An opaque value derived from the key (constant for the process).
    pub fn opaque(&self) -> String {
        hex::encode(&self.mac(0, 0, IpAddr::from([0, 0, 0, 0]), "opaque")[..8])
    }

    pub fn check(
        &self,
        nonce: &str,
        now_secs: u64,
        source: IpAddr,
        realm: &str,
        max_age_secs: u64,
    ) -> NonceCheck {
        if nonce.len() != NONCE_LEN || !nonce.is_ascii() {
            return NonceCheck::Invalid;
        }
        let (ts, rest) = nonce.split_at(TS_HEX);
        let (salt, mac) = rest.split_at(SALT_HEX);
        let (Ok(issued_at), Ok(salt), Ok(given)) = (
            u64::from_str_radix(ts, 16),
            u64::from_str_radix(salt, 16),
            hex::decode(mac),
        ) else {
            return NonceCheck::Invalid;
        };
        let expected = self.mac(issued_at, salt, source, realm);
        if !bool::from(given.ct_eq(&expected[..MAC_BYTES])) {
            return NonceCheck::Invalid;
        }
        if issued_at > now_secs.saturating_add(5) {
            return NonceCheck::Invalid;
        }
        if now_secs.saturating_sub(issued_at) > max_age_secs {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid { issued_at }
    }
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    panic!("HMAC-SHA256 accepts keys of any length")
}

/// Remembers the highest `nc` seen per nonce so a captured request cannot be replayed.
/// Bounded: the oldest entries go first once `capacity` is reached (an evicted nonce is
/// near the end of its life anyway, since entries are kept in first-use order).
#[derive(Debug)]
pub struct NcTracker {
    highest: HashMap<String, u32>,
    order: VecDeque<(u64, String)>,
    capacity: usize,
    max_age_secs: u64,
}

impl NcTracker {
    pub fn new(capacity: usize, max_age_secs: u64) -> Self {
        Self {
            highest: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            max_age_secs,
        }
    }

    /// Accepts `nc` for `nonce` if it is higher than any accepted before.
    pub fn accept(&mut self, nonce: &str, nc: u32, now_secs: u64) -> bool {
        self.expire(now_secs);
        match self.highest.get_mut(nonce) {
            Some(last) if nc <= *last => false,
            Some(last) => {
                *last = nc;
                true
            }
            None => {
                if self.highest.len() >= self.capacity
                    && let Some((_, old)) = self.order.pop_front()
                {
                    self.highest.remove(&old);
                }
                self.highest.insert(nonce.to_owned(), nc);
                self.order.push_back((now_secs, nonce.to_owned()));
                true
            }
        }
    }

    fn expire(&mut self, now_secs: u64) {
        while let Some((t, _)) = self.order.front() {
            if now_secs.saturating_sub(*t) <= self.max_age_secs {
                break;
            }
            if let Some((_, n)) = self.order.pop_front() {
                self.highest.remove(&n);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.highest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.highest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn nonces_are_bound_and_expire() {
        let k = NonceKey::new([1; 32]);
        let n = k.issue(1000, A, "r");
        assert_eq!(n.len(), NONCE_LEN);
        assert_ne!(
            n,
            k.issue(1000, A, "r"),
            "unique even in the same second for the same source"
        );
        let mut other_salt = n.clone().into_bytes();
        other_salt[TS_HEX] = if other_salt[TS_HEX] == b'0' {
            b'1'
        } else {
            b'0'
        };
        let other_salt = String::from_utf8(other_salt).expect("ascii");
        assert_eq!(
            k.check(&other_salt, 1000, A, "r", 300),
            NonceCheck::Invalid,
            "the salt is covered by the MAC"
        );
        assert_eq!(
            k.check(&n, 1000, A, "r", 300),
            NonceCheck::Valid { issued_at: 1000 }
        );
        assert_eq!(
            k.check(&n, 1300, A, "r", 300),
            NonceCheck::Valid { issued_at: 1000 }
        );
        assert_eq!(k.check(&n, 1301, A, "r", 300), NonceCheck::Stale);
        assert_eq!(
            k.check(&n, 1000, B, "r", 300),
            NonceCheck::Invalid,
            "another source"
        );
        assert_eq!(
            k.check(&n, 1000, A, "other", 300),
            NonceCheck::Invalid,
            "another realm"
        );
        assert_eq!(
            NonceKey::new([2; 32]).check(&n, 1000, A, "r", 300),
            NonceCheck::Invalid,
            "another key"
        );
        assert_eq!(
            k.check(&n, 900, A, "r", 300),
            NonceCheck::Invalid,
            "from the future"
        );
        let mut forged = n.clone().into_bytes();
        forged[3] = if forged[3] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            k.check(
                std::str::from_utf8(&forged).expect("ascii"),
                1000,
                A,
                "r",
                300
            ),
            NonceCheck::Invalid
        );
        for junk in ["", "zz", &"0".repeat(NONCE_LEN), &"é".repeat(24)] {
            assert_eq!(
                k.check(junk, 1000, A, "r", 300),
                NonceCheck::Invalid,
                "{junk}"
            );
        }
    }

    #[test]
    fn nc_replay_is_refused_and_the_table_is_bounded() {
        let mut t = NcTracker::new(3, 300);
        assert!(t.accept("n1", 1, 0));
        assert!(!t.accept("n1", 1, 0), "replay");
        assert!(t.accept("n1", 2, 0));
        assert!(!t.accept("n1", 1, 0), "older");
        for (i, n) in ["n2", "n3", "n4"].iter().enumerate() {
            assert!(t.accept(n, 1, i as u64));
        }
        assert_eq!(t.len(), 3, "bounded");
        assert!(t.accept("n1", 1, 2), "n1 was evicted first");
        assert!(t.accept("n9", 1, 1000));
        assert_eq!(t.len(), 1, "entries expire with the nonce lifetime");
    }
}
