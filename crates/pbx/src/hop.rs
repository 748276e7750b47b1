//! The internal hop's authentication (issue 21): how a node proves to another that an
//! INVITE it forwards for one of that node's phones comes from a node of this install,
//! now, once. Sans-IO: the server hands in the request's fields, the header's text and
//! the time; nothing here reads a socket or a clock.
//!
//! Threat model. A hop names only an extension; the node taking it looks that extension
//! up in its own bindings and sends the call on the phone's flow, never to a trunk, a
//! gateway, another hop or a voicemail. Still, a hop anyone could send would let a
//! stranger ring any phone past authentication, admission and the fraud limits (which
//! the sending node applied). So a hop is taken only when (1) it arrives from a live
//! node's published internal address (`nodes.hop`; a UDP source can be forged, so this
//! alone proves nothing), (2) it carries [`HEADER`] with an HMAC-SHA256 over the
//! request's identifying fields (method, extension, Call-ID, CSeq, From tag, sending
//! node) and a timestamp, under a key derived from the install's secrets key with a
//! label of its own (every node has the key, nobody else: a stolen database alone
//! cannot make one), checked in constant time, (3) the timestamp is within
//! [`FRESH_SECS`] of the taker's clock (the nodes run NTP already, for the leases), and
//! (4) its Call-ID and CSeq were not seen within that window ([`Replays`], bounded,
//! failing closed when full). What is not covered: a node's own compromise (it holds the
//! secrets key and could sign anything, as it could also read every password), and an
//! on-path attacker reading the internal network (it sees the call as any SIP on the
//! wire; put the internal addresses on a private network).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header that carries a hop's proof; stripped before anything reaches a phone.
pub const HEADER: &str = "X-Sipward-Hop";

/// How far a hop's timestamp may be from the taker's clock, either way.
pub const FRESH_SECS: i64 = 30;

/// How many hops' Call-ID and CSeq are remembered (each for twice the window).
pub const REPLAY_CAPACITY: usize = 65_536;

/// The hop key: derived from the secrets key with a label of its own (so it can open
/// nothing the vault sealed), the same on every node of the install.
#[derive(Clone)]
pub struct HopKey([u8; 32]);

impl std::fmt::Debug for HopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HopKey([redacted])")
    }
}

impl HopKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn mac(&self) -> Hmac<Sha256> {
        match <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable_hmac(),
        }
    }
}

#[cold]
fn unreachable_hmac() -> Hmac<Sha256> {
    panic!("HMAC-SHA256 accepts keys of any length")
}

/// The most extensions [`Targets`] holds (what other nodes hold beyond it is not hopped
/// to: those calls get the 480 they had before hops).
pub const MAX_TARGETS: usize = 200_000;

/// Where a call for an extension may hop: the internal addresses of the other live
/// nodes that hold a live binding of it (`store::bindings::hops_to`), replaced whole by
/// the server's reload. The egress rule's table for [`crate::egress::Purpose::Hop`]:
/// a hop goes nowhere else.
/// Also the live nodes' internal addresses: the only sources a hop is read from.
#[derive(Debug, Default)]
pub struct Targets {
    by_number: RwLock<HashMap<String, Vec<SocketAddr>>>,
    /// The live nodes' internal addresses, with each node's name (what its hops' MACs
    /// name).
    nodes: RwLock<HashMap<SocketAddr, String>>,
}

/// The most nodes whose internal addresses [`Targets`] holds.
pub const MAX_NODES: usize = 1_024;

impl Targets {
    /// Puts `targets` in force, at most [`MAX_TARGETS`] extensions of it.
    pub fn replace(&self, targets: impl IntoIterator<Item = (String, Vec<SocketAddr>)>) {
        let map: HashMap<String, Vec<SocketAddr>> = targets
            .into_iter()
            .filter(|(_, addrs)| !addrs.is_empty())
            .take(MAX_TARGETS)
            .collect();
        match self.by_number.write() {
            Ok(mut m) => *m = map,
            Err(poisoned) => *poisoned.into_inner() = map,
        }
    }

    /// Puts the other live nodes' internal addresses and names in force (at most
    /// [`MAX_NODES`]).
    pub fn replace_nodes(&self, nodes: impl IntoIterator<Item = (SocketAddr, String)>) {
        let set: HashMap<SocketAddr, String> = nodes.into_iter().take(MAX_NODES).collect();
        match self.nodes.write() {
            Ok(mut m) => *m = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    /// Whether `source` is a live node's published internal address (a hop from
    /// anything else is dropped unread).
    pub fn is_node(&self, source: SocketAddr) -> bool {
        let m = match self.nodes.read() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        m.contains_key(&source)
    }

    /// The name of the live node whose published internal address is `source`.
    pub fn node_at(&self, source: SocketAddr) -> Option<String> {
        let m = match self.nodes.read() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        m.get(&source).cloned()
    }

    /// Fills the table from `store::bindings::all_hops` rows (`(number, address)`, by
    /// number): rows whose address does not parse are left out.
    pub fn replace_from_rows(&self, rows: &[(String, String)]) {
        let mut map: HashMap<String, Vec<SocketAddr>> = HashMap::new();
        for (number, hop) in rows {
            if let Ok(addr) = hop.parse::<SocketAddr>() {
                map.entry(number.clone()).or_default().push(addr);
            }
        }
        self.replace(map);
    }

    /// How many extensions and how many live nodes the tables hold (for `/metrics`).
    pub fn sizes(&self) -> (usize, usize) {
        let targets = match self.by_number.read() {
            Ok(m) => m.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        };
        let nodes = match self.nodes.read() {
            Ok(m) => m.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        };
        (targets, nodes)
    }

    /// The internal addresses a call for `number` may hop to.
    pub fn of(&self, number: &str) -> Vec<SocketAddr> {
        let m = match self.by_number.read() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        m.get(number).cloned().unwrap_or_default()
    }

    /// Whether `to` is where a call for `number` may hop.
    pub fn allows(&self, number: &str, to: SocketAddr) -> bool {
        self.of(number).contains(&to)
    }
}

/// What a hop's MAC covers.
#[derive(Clone, Copy, Debug)]
pub struct HopFields<'a> {
    pub method: &'a str,
    /// The extension the hop names (the Request-URI's user): nothing else is dialled.
    pub extension: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    pub from_tag: &'a str,
    /// The sending node's name.
    pub node: &'a str,
}

fn digest(key: &HopKey, f: &HopFields<'_>, at: i64) -> Hmac<Sha256> {
    let mut m = key.mac();
    m.update(b"sipward hop v1");
    // Each field length-prefixed, so no two field lists print the same bytes.
    for part in [f.method, f.extension, f.call_id, f.from_tag, f.node] {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part.as_bytes());
    }
    m.update(&f.cseq.to_be_bytes());
    m.update(&at.to_be_bytes());
    m
}

/// The header value a sending node puts on a hop at `now`.
pub fn stamp(key: &HopKey, f: &HopFields<'_>, now: i64) -> String {
    let mac = digest(key, f, now).finalize().into_bytes();
    format!("t={now};mac={}", hex::encode(mac))
}

/// Why a hop was refused (a fixed set: the metric's label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no hop header, or one that does not parse")]
    Malformed,
    #[error("the hop's time is outside the window")]
    Stale,
    #[error("the hop's MAC does not verify")]
    BadMac,
    #[error("the hop's Call-ID and CSeq were seen already")]
    Replayed,
    #[error("the replay table is full")]
    Full,
}

impl Refused {
    /// Its place in [`crate::metrics::HOPS_REFUSED`] (after `not_a_node`).
    pub fn index(self) -> usize {
        match self {
            Refused::Malformed => 1,
            Refused::Stale => 2,
            Refused::BadMac => 3,
            Refused::Replayed => 4,
            Refused::Full => 5,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::Stale => "stale",
            Refused::BadMac => "bad_mac",
            Refused::Replayed => "replayed",
            Refused::Full => "full",
        }
    }
}

/// Parses `t=SECS;mac=HEX` (64 hex digits), nothing else.
fn parse(value: &str) -> Option<(i64, [u8; 32])> {
    let rest = value.trim().strip_prefix("t=")?;
    let (t, mac) = rest.split_once(";mac=")?;
    if t.is_empty() || t.len() > 19 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let at = t.parse().ok()?;
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(mac, &mut bytes).ok()?;
    Some((at, bytes))
}

/// The Call-IDs and CSeqs of hops taken lately, each until it could no longer be fresh.
#[derive(Debug, Default)]
pub struct Replays {
    seen: HashMap<(String, u32), i64>,
}

impl Replays {
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn prune(&mut self, now: i64) {
        self.seen.retain(|_, until| *until > now);
    }
}

/// Checks a hop's header: parsed, fresh, its MAC verified in constant time, and not
/// seen before (then remembered). The source check (a live node's internal address) is
/// the caller's, before this.
pub fn check(
    key: &HopKey,
    f: &HopFields<'_>,
    header: Option<&str>,
    now: i64,
    replays: &mut Replays,
) -> Result<(), Refused> {
    let (at, mac) = header.and_then(parse).ok_or(Refused::Malformed)?;
    if at.abs_diff(now) > FRESH_SECS.unsigned_abs() {
        return Err(Refused::Stale);
    }
    digest(key, f, at)
        .verify_slice(&mac)
        .map_err(|_| Refused::BadMac)?;
    let id = (f.call_id.to_owned(), f.cseq);
    if replays.seen.contains_key(&id) {
        return Err(Refused::Replayed);
    }
    if replays.seen.len() >= REPLAY_CAPACITY {
        replays.prune(now);
        if replays.seen.len() >= REPLAY_CAPACITY {
            return Err(Refused::Full);
        }
    }
    replays.seen.insert(id, now + 2 * FRESH_SECS);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> HopFields<'static> {
        HopFields {
            method: "INVITE",
            extension: "1001",
            call_id: "abc@b",
            cseq: 1,
            from_tag: "t1",
            node: "b",
        }
    }

    #[test]
    fn a_stamp_checks_once_and_only_with_its_own_fields_key_and_time() {
        let key = HopKey::new([7; 32]);
        let mut replays = Replays::default();
        let value = stamp(&key, &fields(), 1000);
        // Control: the node's own hop is taken.
        assert_eq!(
            check(&key, &fields(), Some(&value), 1010, &mut replays),
            Ok(())
        );
        assert_eq!(
            check(&key, &fields(), Some(&value), 1010, &mut replays),
            Err(Refused::Replayed)
        );
        let mut fresh = Replays::default();
        let other = HopKey::new([8; 32]);
        assert_eq!(
            check(&other, &fields(), Some(&value), 1010, &mut fresh),
            Err(Refused::BadMac),
            "another install's key"
        );
        for changed in [
            HopFields {
                extension: "1002",
                ..fields()
            },
            HopFields {
                method: "BYE",
                ..fields()
            },
            HopFields {
                call_id: "abd@b",
                ..fields()
            },
            HopFields {
                cseq: 2,
                ..fields()
            },
            HopFields {
                from_tag: "t2",
                ..fields()
            },
            HopFields {
                node: "c",
                ..fields()
            },
        ] {
            assert_eq!(
                check(&key, &changed, Some(&value), 1010, &mut fresh),
                Err(Refused::BadMac),
                "{changed:?}"
            );
        }
        assert_eq!(
            check(&key, &fields(), Some(&value), 1031, &mut fresh),
            Err(Refused::Stale)
        );
        assert_eq!(
            check(&key, &fields(), Some(&value), 969, &mut fresh),
            Err(Refused::Stale)
        );
        // The time is under the MAC: a fresh time on an old MAC does not verify.
        let moved = value.replacen("t=1000", "t=1020", 1);
        assert_eq!(
            check(&key, &fields(), Some(&moved), 1020, &mut fresh),
            Err(Refused::BadMac)
        );
        for bad in [
            "",
            "t=;mac=00",
            "t=1000",
            "t=-5;mac=00",
            "mac=00;t=1000",
            "t=1000;mac=zz",
        ] {
            assert_eq!(
                check(&key, &fields(), Some(bad), 1000, &mut fresh),
                Err(Refused::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            check(&key, &fields(), None, 1000, &mut fresh),
            Err(Refused::Malformed)
        );
        assert!(fresh.is_empty(), "nothing refused is remembered");
    }

    #[test]
    fn each_refusal_has_its_metric_label_after_the_source_check() {
        let all = [
            Refused::Malformed,
            Refused::Stale,
            Refused::BadMac,
            Refused::Replayed,
            Refused::Full,
        ];
        assert_eq!(crate::metrics::HOPS_REFUSED.len(), all.len() + 1);
        assert_eq!(crate::metrics::HOPS_REFUSED[0], "not_a_node");
        for (i, r) in all.into_iter().enumerate() {
            assert_eq!(crate::metrics::HOPS_REFUSED[i + 1], r.label());
            assert_eq!(r.index(), i + 1);
        }
    }

    #[test]
    fn the_tables_come_from_the_stores_rows_and_name_only_live_nodes() {
        let t = Targets::default();
        t.replace_from_rows(&[
            ("1001".to_owned(), "10.0.0.1:5070".to_owned()),
            ("1001".to_owned(), "10.0.0.2:5070".to_owned()),
            ("1002".to_owned(), "not an address".to_owned()),
        ]);
        assert_eq!(t.of("1001").len(), 2);
        assert!(t.allows("1001", "10.0.0.2:5070".parse().expect("addr")));
        assert!(t.of("1002").is_empty(), "an address that does not parse");
        t.replace_nodes([("10.0.0.1:5070".parse().expect("addr"), "a".to_owned())]);
        assert!(t.is_node("10.0.0.1:5070".parse().expect("addr")));
        assert_eq!(
            t.node_at("10.0.0.1:5070".parse().expect("addr")).as_deref(),
            Some("a")
        );
        assert!(!t.is_node("10.0.0.1:5071".parse().expect("addr")));
        t.replace_nodes([]);
        assert!(!t.is_node("10.0.0.1:5070".parse().expect("addr")));
    }

    #[test]
    fn the_replay_table_is_bounded_and_fails_closed() {
        let key = HopKey::new([7; 32]);
        let mut replays = Replays::default();
        for i in 0..REPLAY_CAPACITY {
            let call_id = format!("c{i}");
            let f = HopFields {
                call_id: &call_id,
                ..fields()
            };
            let value = stamp(&key, &f, 1000);
            assert_eq!(check(&key, &f, Some(&value), 1000, &mut replays), Ok(()));
        }
        let f = HopFields {
            call_id: "one-more",
            ..fields()
        };
        let value = stamp(&key, &f, 1000);
        assert_eq!(
            check(&key, &f, Some(&value), 1000, &mut replays),
            Err(Refused::Full)
        );
        // Once the remembered ones can no longer be fresh, they make room.
        let value = stamp(&key, &f, 1060);
        assert_eq!(check(&key, &f, Some(&value), 1060, &mut replays), Ok(()));
        assert_eq!(replays.len(), 1);
    }
}
