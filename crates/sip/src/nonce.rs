//! Stateless digest nonces: `hex(issued_at) || hex(salt) || hex(HMAC-SHA256(key,
//! issued_at, salt, source IP, realm)[..16])`. A nonce is checked without per-request
//! state; it is bound to the address it was issued to and expires (RFC 7616 §3.3
//! `stale=true` when only its age is wrong). The salt makes every nonce unique, even for
//! many clients behind one address in the same second (each then counts `nc` from 1 on
//! its own nonce): it is the nonce's *serial* (a per-process counter) under a keyed
//! permutation, so only the server can read the order nonces were issued in. Replayed
//! `nc` values are refused by [`NcTracker`], which is bounded and fails closed: it
//! remembers up to which serial it has forgotten.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
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
    /// HMAC-SHA256 keyed once; cloned for each use (saves the key schedule per nonce).
    keyed: HmacSha256,
    /// SHA-256 that has absorbed one secret 64-byte block: the Feistel round function
    /// (a keyed prefix over fixed-length input, one compression per round).
    rounds: Sha256,
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
        /// The salt as issued; [`NonceKey::serial`] reads the serial out of it.
        salt: u64,
    },
    /// Ours, but older than the maximum age: re-challenge with `stale=true`.
    Stale,
    /// Not ours, altered, issued to another address or realm, or from the future.
    Invalid,
}

/// Rounds of the Feistel permutation that turns serials into salts (three rounds of a
/// pseudo-random function make a pseudo-random permutation: Luby and Rackoff).
const FEISTEL_ROUNDS: u8 = 3;

impl NonceKey {
    pub fn new(key: [u8; 32]) -> Self {
        // new_from_slice only fails for invalid key lengths; HMAC accepts any length.
        let keyed =
            <HmacSha256 as KeyInit>::new_from_slice(&key).unwrap_or_else(|_| unreachable_hmac());
        // The round key: derived from the nonce key, filling a whole block.
        let mut block = [0u8; 64];
        for (i, half) in block.chunks_mut(32).enumerate() {
            let mut m = keyed.clone();
            m.update(b"feistel round key");
            m.update(&[i as u8]);
            half.copy_from_slice(&m.finalize().into_bytes());
        }
        let mut rounds = Sha256::new();
        Digest::update(&mut rounds, block);
        Self {
            keyed,
            rounds,
            issued: AtomicU64::new(0),
        }
    }

    fn hmac(&self) -> HmacSha256 {
        self.keyed.clone()
    }

    /// The Feistel round function: 32 pseudo-random bits of round `i` and half `x`.
    fn round(&self, i: u8, x: u32) -> u32 {
        let mut m = self.rounds.clone();
        let x = x.to_be_bytes();
        Digest::update(&mut m, [i, x[0], x[1], x[2], x[3]]);
        let out = m.finalize();
        u32::from_be_bytes([out[0], out[1], out[2], out[3]])
    }

    /// A unique, unpredictable salt: the next serial under a keyed permutation (the
    /// serial itself would reveal how many challenges were sent).
    fn next_salt(&self) -> u64 {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let (mut l, mut r) = ((n >> 32) as u32, n as u32);
        for i in 0..FEISTEL_ROUNDS {
            (l, r) = (r, l ^ self.round(i, r));
        }
        (u64::from(l) << 32) | u64::from(r)
    }

    /// The serial a salt was made from: nonces issued later have higher serials. Call it
    /// only on a salt from a [`NonceCheck::Valid`] nonce (the MAC vouches for it).
    pub fn serial(&self, salt: u64) -> u64 {
        let (mut l, mut r) = ((salt >> 32) as u32, salt as u32);
        for i in (0..FEISTEL_ROUNDS).rev() {
            (l, r) = (r ^ self.round(i, l), l);
        }
        (u64::from(l) << 32) | u64::from(r)
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
        NonceCheck::Valid { issued_at, salt }
    }
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    panic!("HMAC-SHA256 accepts keys of any length")
}

/// What [`NcTracker::accept`] makes of a request's `nc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NcCheck {
    /// Higher than any accepted before for this nonce (or the nonce's first use).
    Fresh,
    /// Not higher than one accepted before: a replay.
    Replayed,
    /// The nonce's record was pushed out of the bounded table: whether this `nc` was
    /// seen cannot be told, so the answer is a new challenge (`stale=true`), never
    /// "fresh". Fails closed.
    Forgotten,
}

/// Remembers the highest `nc` seen per nonce (by its serial, [`NonceKey::serial`]) so
/// a captured request cannot be replayed. Bounded: the entries first used longest ago go
/// once `capacity` is reached. Forgetting must not open a replay: a nonce whose serial
/// is at or below the highest one ever pushed out (the *floor*) and that is not in the
/// table is [`NcCheck::Forgotten`]. An attacker who fills the table (one credential from
/// 65,000 addresses) therefore gains nothing, and a client only loses nonces it got
/// before the push and had not used yet (one more challenge); a challenge issued after
/// it is always fresh.
#[derive(Debug)]
pub struct NcTracker {
    /// Serial -> highest nc.
    highest: HashMap<u64, u32>,
    /// First-use time and serial, oldest first.
    order: VecDeque<(u64, u64)>,
    capacity: usize,
    max_age_secs: u64,
    /// The highest serial pushed out for room.
    floor: Option<u64>,
}

impl NcTracker {
    pub fn new(capacity: usize, max_age_secs: u64) -> Self {
        Self {
            highest: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            max_age_secs,
            floor: None,
        }
    }

    /// Judges `nc` for the nonce with this serial.
    pub fn accept(&mut self, serial: u64, nc: u32, now_secs: u64) -> NcCheck {
        self.expire(now_secs);
        match self.highest.get_mut(&serial) {
            Some(last) if nc <= *last => NcCheck::Replayed,
            Some(last) => {
                *last = nc;
                NcCheck::Fresh
            }
            None if self.floor.is_some_and(|f| serial <= f) => NcCheck::Forgotten,
            None => {
                if self.highest.len() >= self.capacity
                    && let Some((_, old)) = self.order.pop_front()
                {
                    self.highest.remove(&old);
                    self.floor = Some(self.floor.map_or(old, |f| f.max(old)));
                }
                self.highest.insert(serial, nc);
                self.order.push_back((now_secs, serial));
                NcCheck::Fresh
            }
        }
    }

    /// Entries first used more than a nonce lifetime ago go: their nonces are older than
    /// that and answered `stale` by [`NonceKey::check`] before the tracker is asked.
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
        assert!(matches!(
            k.check(&n, 1000, A, "r", 300),
            NonceCheck::Valid {
                issued_at: 1000,
                ..
            }
        ));
        assert!(matches!(
            k.check(&n, 1300, A, "r", 300),
            NonceCheck::Valid {
                issued_at: 1000,
                ..
            }
        ));
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
    fn serials_come_back_out_of_salts_in_issue_order() {
        let k = NonceKey::new([7; 32]);
        let salts: Vec<u64> = (0..1000).map(|_| k.next_salt()).collect();
        for (i, s) in salts.iter().enumerate() {
            assert_eq!(k.serial(*s), i as u64);
        }
        let mut sorted = salts.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 1000, "unique");
        assert_ne!(
            salts,
            (0..1000).collect::<Vec<u64>>(),
            "not the counter itself"
        );
        assert_ne!(
            NonceKey::new([8; 32]).serial(salts[5]),
            5,
            "another key reads another serial"
        );
        let n = k.issue(1000, A, "r");
        match k.check(&n, 1000, A, "r", 300) {
            NonceCheck::Valid { issued_at, salt } => {
                assert_eq!(issued_at, 1000);
                assert_eq!(k.serial(salt), 1000);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nc_replay_is_refused_and_the_table_is_bounded() {
        use NcCheck::*;
        let mut t = NcTracker::new(3, 300);
        assert_eq!(t.accept(1, 1, 0), Fresh);
        assert_eq!(t.accept(1, 1, 0), Replayed);
        assert_eq!(t.accept(1, 2, 0), Fresh);
        assert_eq!(t.accept(1, 1, 0), Replayed, "older");
        for (i, n) in [2, 3, 4].iter().enumerate() {
            assert_eq!(t.accept(*n, 1, i as u64), Fresh);
        }
        assert_eq!(t.len(), 3, "bounded");
        assert_eq!(
            t.accept(1, 3, 2),
            Forgotten,
            "1 was pushed out: its next nc is neither fresh nor a replay"
        );
        assert_eq!(t.accept(1, 1, 2), Forgotten, "nor is its first one again");
        assert_eq!(
            t.accept(0, 1, 2),
            Forgotten,
            "an older nonce never used is not known to be fresh either"
        );
        assert_eq!(
            t.accept(5, 1, 3),
            Fresh,
            "a nonce issued after everything pushed out is new"
        );
        assert_eq!(t.accept(9, 1, 1000), Fresh);
        assert_eq!(t.len(), 1, "entries expire with the nonce lifetime");
    }

    #[test]
    fn flushing_the_table_never_lets_a_captured_request_through_again() {
        // One credential answering 65,600 challenges from as many addresses fills the
        // tracker; a phone's captured REGISTER (its nonce issued before the flood) is
        // then replayed byte for byte. New challenges keep working all along.
        let mut t = NcTracker::new(65_536, 300);
        assert_eq!(t.accept(0, 1, 1000), NcCheck::Fresh);
        for serial in 1..=65_600u64 {
            assert_eq!(t.accept(serial, 1, 1001), NcCheck::Fresh, "{serial}");
        }
        assert!(t.len() <= 65_536);
        assert_eq!(
            t.accept(0, 1, 1004),
            NcCheck::Forgotten,
            "not accepted as fresh"
        );
        assert_eq!(t.accept(0, 2, 1004), NcCheck::Forgotten);
        assert_eq!(
            t.accept(65_601, 1, 1005),
            NcCheck::Fresh,
            "a new challenge works"
        );
    }
}
