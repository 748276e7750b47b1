//! The guard: the first thing every packet meets. A banned source costs one hash lookup
//! (two for an IPv6 source while prefixes are banned) before any parsing or allocation;
//! allow-listed networks and gateway addresses are never banned, and allow-listed
//! networks are not flood-limited; a gateway's address is (its own, higher limit,
//! `guard.gateway_requests`: a UDP source can be forged in a trunk's name). The
//! ban and allow records are loaded from the store and reloaded when they change, so a
//! ban made with the CLI takes effect in the running server within the reload interval.
//!
//! Rules, each with a stable reason id (see [`policy::ban::Reason`]):
//! - `auth.failures`: repeated failed authentication from one source, counted only for
//!   requests that answered a nonce issued to that very source (a spoofed UDP source
//!   never received one), escalating for repeat offenders;
//! - `flood.requests`: too many requests from a source (above a lower rate it is first
//!   silenced);
//! - `scanner.user_agent`: the User-Agent of a known scanner;
//! - `decoy.auth`: authenticating as a decoy user name (answering our nonce);
//! - `provisioning.probe`: asking the provisioning server for files no phone has;
//! - `manual`: banned with the CLI.
//!
//! **Proof before punishment** ([`policy::ban::may_ban`]): a signal that does not prove
//! its source address (a packet rate or a User-Agent in a UDP datagram) never bans a
//! source with standing, one where an account authenticated within the trust window or
//! a registration is live. Such a source is silenced for that signal only (the request
//! dropped, the rate held to its limit) and a `ban_withheld` event says why. Signals
//! with proof (an answer to our nonce, a TCP handshake) ban as before, and so does any
//! signal from a source with no history.
//!
//! Counts and bans are per address and per network prefix (an IPv6 /64 by default,
//! `guard.ipv6_prefix`): a ban record says which it covers (`2001:db8:1:2::/64`).
//!
//! Besides bans, an account under distributed guessing (many failures from sources it
//! never authenticated from) and an account with a weak password can authenticate only
//! from trusted sources; the answer to everyone else stays exactly the same.
//!
//! Every table keyed by a source or a user name is bounded, and none can be flushed by
//! one credential: trusted pairs are capped per account, and a pair whose address holds
//! a live registration is never pushed out.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use accounts::running::ProbeVerdict;
use ipnet::IpNet;
use policy::ban::{
    BanPolicy, FailureWindow, Proof, Reason, Source, Standing, WeakCredentials, may_ban,
    sliding_count,
};
use serde_json::json;
use store::guard::{AllowRow, BanRow};
use tokio::sync::mpsc;

use crate::directory::Account;
use crate::metrics::Metrics;

/// Banned IPv4 sources handed to the kernel's socket filter at most (two classic BPF
/// instructions each, within the kernel's 4,096); the rest are dropped in user space.
pub const KERNEL_DROP_MAX: usize = 2000;

/// Entries per table (sources failing, trusted pairs, accounts failing, sources
/// counted for floods); the oldest is forgotten first, so a flood from millions of
/// addresses cannot exhaust memory.
pub const TABLE_CAPACITY: usize = 65_536;

/// A withheld ban is logged at most this often per source and signal.
const WITHHELD_NOTE_SECS: i64 = 60;

/// What the guard asks of the registrar: whether a registration made from `ip` is live
/// now. Such an address has proved itself (its REGISTER answered our nonce).
pub trait Registrations: Send + Sync + std::fmt::Debug {
    fn live_from(&self, ip: IpAddr) -> bool;
}

/// A security event: one JSON line in the server's log each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A ban made here (to be persisted) or found in the store (made with the CLI).
    Ban { row: BanRow, from_store: bool },
    /// A ban removed from the store before it expired.
    Unban { source: Source },
    /// A ban that ran out.
    Expired { source: Source },
    /// A source over the silence rate: its requests go unanswered for now.
    Silenced { source: Source, requests: u32 },
    /// A signal that bans a stranger came, without proof of its source address, from a
    /// source with standing: not banned, silenced for that signal only.
    Withheld {
        source: Source,
        reason: Reason,
        standing: Standing,
        /// What the signal was, in words.
        signal: String,
    },
    /// An account under distributed guessing: untrusted sources can no longer log in.
    AccountProtected { auth_id: String, failures: u32 },
    /// The right password for a weak account from a source it is not trusted at.
    WeakRefused { auth_id: String, source: IpAddr },
    /// An extension broke a fraud limit: its outbound calling is suspended.
    Suspended {
        number: String,
        breach: policy::dialplan::Breach,
        dialled: String,
        source: IpAddr,
    },
    /// A call's lease on the concurrent limit lapsed (this node stalled past its
    /// expiry) and the limit was full again when the node took it back: the call was
    /// ended, both ways, rather than carried on uncounted.
    LeaseLapsed { number: String, calls_ended: usize },
    /// An extension called an emergency number (always allowed; the administrator is told).
    EmergencyCall { number: String, dialled: String },
    /// Provisioning probes from an address where a phone is registered or logged in:
    /// provisioning is refused from it until `until`, but it is not banned.
    ProvisioningLimited {
        source: IpAddr,
        probes: u32,
        until: i64,
    },
    /// An emergency call was refused: the extension, or the PBX, holds as many at once
    /// as the emergency limits allow.
    EmergencyRefused {
        number: String,
        breach: policy::dialplan::EmergencyBreach,
    },
    /// A gateway's address sent more than its limit within the flood window: what is
    /// over it is dropped unread (the address is never banned: it may be forged).
    GatewayLimited {
        source: Source,
        requests: u32,
        limit: u32,
    },
    /// The SIP TCP accept loop could not accept (out of file descriptors, most likely):
    /// it waits `delay_ms` before trying again instead of spinning.
    AcceptBackoff { error: String, delay_ms: u64 },
}

impl Event {
    /// The log line; `persisted` for bans made here.
    pub fn to_json(&self, persisted: Option<bool>) -> serde_json::Value {
        match self {
            Event::Ban { row, from_store } => json!({
                "event": "ban",
                "source": row.source,
                "reason": row.reason,
                "detail": row.detail,
                "expires_at": row.expires_at,
                "times": row.times,
                "origin": if *from_store { "store" } else { "guard" },
                "persisted": persisted,
            }),
            Event::Unban { source } => json!({"event": "unban", "source": source.to_string()}),
            Event::Expired { source } => {
                json!({"event": "ban_expired", "source": source.to_string()})
            }
            Event::GatewayLimited {
                source,
                requests,
                limit,
            } => json!({
                "event": "gateway_limited",
                "source": source.to_string(),
                "detail": format!("{requests} requests within the flood window from a gateway's address, over its limit of {limit}: the rest is dropped, the address is never banned"),
            }),
            Event::Silenced { source, requests } => json!({
                "event": "silenced",
                "source": source.to_string(),
                "detail": format!("{requests} requests within the flood window from a source nothing authenticated from"),
            }),
            Event::Withheld {
                source,
                reason,
                standing,
                signal,
            } => json!({
                "event": "ban_withheld",
                "source": source.to_string(),
                "reason": reason.as_str(),
                "detail": format!(
                    "{signal}; not banned: this signal does not prove the source address (a forged UDP datagram can carry it) and {}; silenced for this signal only",
                    standing.describe()
                ),
            }),
            Event::AccountProtected { auth_id, failures } => json!({
                "event": "account_protected",
                "auth_id": auth_id,
                "detail": format!("{failures} failed authentications from untrusted sources: only trusted sources may log in until they age out"),
            }),
            Event::WeakRefused { auth_id, source } => json!({
                "event": "weak_credentials_refused",
                "auth_id": auth_id,
                "source": source.to_string(),
                "detail": "the password is weak: this account logs in only from allow-listed or trusted sources; regenerate it",
            }),
            Event::Suspended {
                number,
                breach,
                dialled,
                source,
            } => json!({
                "event": "outbound_suspended",
                "extension": number,
                "reason": breach.id(),
                "detail": breach.describe(),
                "dialled": dialled,
                "source": source.to_string(),
            }),
            Event::EmergencyCall { number, dialled } => json!({
                "event": "emergency_call",
                "extension": number,
                "dialled": dialled,
            }),
            Event::ProvisioningLimited {
                source,
                probes,
                until,
            } => json!({
                "event": "provisioning_limited",
                "source": source.to_string(),
                "reason": Reason::ProvisioningProbe.as_str(),
                "until": until,
                "detail": format!("{probes} failed provisioning requests: refused and counted, but not banned, because a phone is registered or logged in from this address; provisioning is refused from it until the limit runs out, SIP is not"),
            }),
            Event::EmergencyRefused { number, breach } => json!({
                "event": "emergency_refused",
                "extension": number,
                "reason": breach.id(),
                "detail": breach.describe(),
            }),
            Event::LeaseLapsed {
                number,
                calls_ended,
            } => json!({
                "event": "call_ended_lease_lapsed",
                "extension": number,
                "calls_ended": calls_ended,
                "detail": "the call's place on the concurrent-call limit lapsed while this \
                           node stalled, and other calls took it",
            }),
            Event::AcceptBackoff { error, delay_ms } => json!({
                "event": "accept_backoff",
                "transport": "tcp",
                "error": error,
                "delay_ms": delay_ms,
            }),
        }
    }
}

/// What becomes of a packet at the door.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// From a banned source: dropped unread.
    Banned,
    /// Over the silence rate: dropped unread, the source is not banned (yet).
    Silenced,
}

#[derive(Debug, Default)]
struct State {
    /// Banned address or prefix -> expiry (epoch seconds).
    banned: HashMap<Source, i64>,
    /// How many of them are prefixes (the hot path looks up a prefix only then).
    prefixes: usize,
    /// Bans imposed here and not yet seen back from the store.
    pending: HashSet<Source>,
    allow: Vec<IpNet>,
    /// Gateway addresses: never banned, like the allow list.
    gateways: HashSet<IpAddr>,
    /// Source -> (bans within the repeat window, time of the last one), for escalation.
    history: HashMap<Source, (u32, i64)>,
}

impl State {
    fn allowed(&self, ip: IpAddr) -> bool {
        self.gateways.contains(&ip) || self.allow.iter().any(|n| n.contains(&ip))
    }

    fn gateway(&self, ip: IpAddr) -> bool {
        self.gateways.contains(&ip)
    }

    fn count_prefixes(&mut self) {
        self.prefixes = self.banned.keys().filter(|s| s.is_prefix()).count();
    }

    fn unban(&mut self, s: &Source) {
        if self.banned.remove(s).is_some() && s.is_prefix() {
            self.prefixes -= 1;
        }
        self.pending.remove(s);
    }
}

/// Failure windows by key, bounded: the key seen least recently first is forgotten.
#[derive(Debug)]
pub(crate) struct Windows<K> {
    map: HashMap<K, FailureWindow>,
    order: VecDeque<K>,
}

impl<K> Default for Windows<K> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Windows<K> {
    /// Records a failure; returns the count within the window (at most `cap`).
    pub(crate) fn record(&mut self, key: &K, now: i64, window: i64, cap: u32) -> u32 {
        if !self.map.contains_key(key) {
            if self.map.len() >= TABLE_CAPACITY
                && let Some(old) = self.order.pop_front()
            {
                self.map.remove(&old);
            }
            self.order.push_back(key.clone());
        }
        self.map
            .entry(key.clone())
            .or_default()
            .record(now, window, cap)
    }

    fn count(&mut self, key: &K, now: i64, window: i64) -> u32 {
        self.map.get_mut(key).map_or(0, |w| w.count(now, window))
    }

    /// Every key with failures in the window now, and its count.
    fn counted(&mut self, now: i64, window: i64) -> Vec<(K, u32)> {
        self.map
            .iter_mut()
            .filter_map(|(k, w)| {
                let n = w.count(now, window);
                (n > 0).then(|| (k.clone(), n))
            })
            .collect()
    }

    /// Starts counting afresh for `key` (it stays in the table, so the order stays true).
    pub(crate) fn reset(&mut self, key: &K) {
        if let Some(w) = self.map.get_mut(key) {
            w.clear();
        }
    }
}

/// When a trusted pair expires, and which insertion it was (entries in the order
/// queues that name an older insertion are stale).
#[derive(Clone, Copy, Debug)]
struct Pair {
    until: i64,
    seq: u64,
    /// The account's credentials changed since this pair logged in: it grants no
    /// trust (the per-account lockout applies, and a correct login is needed again),
    /// but the address's failures for this account are counted against the account
    /// only, never towards banning the address (an office phone left with the old
    /// password must not get its office banned).
    stale: bool,
}

/// (address, auth ID) pairs that authenticated successfully, with their expiry. Keyed
/// by address first so that a refresh (every successful REGISTER) finds its entry
/// without allocating. Bounded in total ([`TABLE_CAPACITY`]) and per account
/// (`guard.trusted_per_account`); the oldest pair goes first, except one whose address
/// holds a live registration, which never goes.
#[derive(Debug, Default)]
struct TrustTable {
    until: HashMap<IpAddr, HashMap<String, Pair>>,
    pairs: usize,
    seq: u64,
    /// Every insertion, oldest first (stale entries are skipped and compacted).
    order: VecDeque<(IpAddr, String, u64)>,
    /// Each account's insertions, oldest first.
    by_account: HashMap<String, VecDeque<(IpAddr, u64)>>,
    /// Prefix -> the latest expiry of a pair within it (the prefix's standing).
    prefixes: HashMap<Source, i64>,
    prefix_order: VecDeque<Source>,
}

impl TrustTable {
    fn current(&self, ip: IpAddr, auth_id: &str, seq: u64) -> bool {
        self.until
            .get(&ip)
            .and_then(|m| m.get(auth_id))
            .is_some_and(|p| p.seq == seq)
    }

    fn remove(&mut self, ip: IpAddr, auth_id: &str) {
        if let Some(m) = self.until.get_mut(&ip) {
            if m.remove(auth_id).is_some() {
                self.pairs -= 1;
            }
            if m.is_empty() {
                self.until.remove(&ip);
            }
        }
    }

    /// Makes room for one more pair of `auth_id`: its own oldest pair past the
    /// per-account cap, then the table's oldest past the total. Pairs at addresses with
    /// a live registration are kept. False when nothing may go.
    fn make_room(&mut self, auth_id: &str, cap: usize, live: &dyn Fn(IpAddr) -> bool) -> bool {
        let victim = {
            let Self {
                until, by_account, ..
            } = &mut *self;
            let mine = by_account.entry(auth_id.to_owned()).or_default();
            mine.retain(|(ip, seq)| {
                until
                    .get(ip)
                    .and_then(|m| m.get(auth_id))
                    .is_some_and(|p| p.seq == *seq)
            });
            if mine.len() < cap {
                None
            } else {
                let Some(i) = mine.iter().position(|(ip, _)| !live(*ip)) else {
                    return false;
                };
                mine.remove(i).map(|(ip, _)| ip)
            }
        };
        if let Some(ip) = victim {
            self.remove(ip, auth_id);
        }
        let limit = self.order.len();
        let mut looked = 0;
        while self.pairs >= TABLE_CAPACITY {
            if looked >= limit {
                return false;
            }
            looked += 1;
            let Some((ip, id, seq)) = self.order.pop_front() else {
                return false;
            };
            if !self.current(ip, &id, seq) {
                continue;
            }
            if live(ip) {
                self.order.push_back((ip, id, seq));
                continue;
            }
            self.remove(ip, &id);
        }
        true
    }

    fn insert(&mut self, ip: IpAddr, auth_id: &str, until: i64) {
        self.seq += 1;
        let seq = self.seq;
        self.until.entry(ip).or_default().insert(
            auth_id.to_owned(),
            Pair {
                until,
                seq,
                stale: false,
            },
        );
        self.pairs += 1;
        self.order.push_back((ip, auth_id.to_owned(), seq));
        self.by_account
            .entry(auth_id.to_owned())
            .or_default()
            .push_back((ip, seq));
        if self.order.len() > 2 * TABLE_CAPACITY {
            let until = &self.until;
            self.order.retain(|(ip, id, seq)| {
                until
                    .get(ip)
                    .and_then(|m| m.get(id))
                    .is_some_and(|p| p.seq == *seq)
            });
        }
        if self.by_account.len() > TABLE_CAPACITY {
            let until = &self.until;
            self.by_account.retain(|id, q| {
                q.retain(|(ip, seq)| {
                    until
                        .get(ip)
                        .and_then(|m| m.get(id))
                        .is_some_and(|p| p.seq == *seq)
                });
                !q.is_empty()
            });
        }
    }

    fn note_prefix(&mut self, prefix: Source, until: i64) {
        match self.prefixes.get_mut(&prefix) {
            Some(u) => *u = (*u).max(until),
            None => {
                if self.prefixes.len() >= TABLE_CAPACITY
                    && let Some(old) = self.prefix_order.pop_front()
                {
                    self.prefixes.remove(&old);
                }
                self.prefixes.insert(prefix, until);
                self.prefix_order.push_back(prefix);
            }
        }
    }
}

/// How a source is limited, decided when it first crosses the untrusted silence rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Standing(Standing),
    /// Allow-listed: never limited.
    Exempt,
    /// A gateway's address: never banned, held to its own limit per window.
    Gateway(u32),
}

#[derive(Debug, Default)]
struct FloodEntry {
    requests: u32,
    /// Only positive answers are remembered: an untrusted source is asked again, so an
    /// office becomes trusted the moment its first phone logs in.
    class: Option<Class>,
    silenced: bool,
    /// A withheld ban was reported in this window.
    withheld: bool,
    /// For a source with standing over its limit: what the current second still lets
    /// through.
    tokens: u32,
    second: i64,
}

impl FloodEntry {
    /// For a source held to `limit` per window of `window` seconds but never banned:
    /// whether this packet is within the current second's share of the limit (so the
    /// real source keeps that rate however much is forged in its name, and is answered
    /// in full the second the forged packets stop).
    fn within_share(&mut self, limit: u32, window: i64, now: i64) -> bool {
        if self.second != now {
            self.second = now;
            self.tokens = limit
                .div_ceil(u32::try_from(window).unwrap_or(u32::MAX))
                .max(1);
        }
        let within = self.tokens > 0;
        self.tokens = self.tokens.saturating_sub(1);
        within
    }
}

/// Requests per source (address and prefix) in the current and the previous fixed
/// window. When the current window holds [`TABLE_CAPACITY`] sources it is closed early,
/// so memory stays bounded (under a flood from that many addresses windows get
/// shorter, never larger).
#[derive(Debug, Default)]
struct FloodTable {
    start: i64,
    current: HashMap<Source, FloodEntry>,
    previous: HashMap<Source, u32>,
}

impl FloodTable {
    fn roll(&mut self, keys: &[Source], now: i64, window: i64) {
        let full = self.current.len() + keys.len() > TABLE_CAPACITY
            && keys.iter().any(|k| !self.current.contains_key(k));
        if now - self.start >= window || full {
            self.previous = if now - self.start >= 2 * window && !full {
                HashMap::new()
            } else {
                self.current.drain().map(|(k, e)| (k, e.requests)).collect()
            };
            self.current.clear();
            // Windows are aligned, so the sliding estimate weighs the previous one right.
            self.start = now - now.rem_euclid(window);
        }
    }
}

/// What the flood limits make of one packet for one of its sources.
enum Verdict {
    Admit,
    /// From an allow-listed address: admitted, and not counted against its prefix.
    Exempt,
    Silence,
    /// From a gateway's address over its limit: dropped unread, never banned.
    Limited,
    Ban(u32),
}

#[derive(Debug, Default)]
pub struct Guard {
    state: RwLock<State>,
    /// A coarse clock (epoch seconds) refreshed by the reload loop, so the hot path
    /// needs no time call.
    now: AtomicI64,
    /// The `[guard]` settings, replaced whole on a config reload (SIGHUP).
    policy: RwLock<Arc<BanPolicy>>,
    /// `policy.decoys` as a set, replaced with it.
    decoys: RwLock<Arc<HashSet<String>>>,
    failures: Mutex<Windows<Source>>,
    provisioning_probes: Mutex<Windows<Source>>,
    /// Phones' addresses over the provisioning probe limit, and until when provisioning
    /// refuses them (bounded like every table).
    provisioning_limited: Mutex<HashMap<IpAddr, i64>>,
    account_failures: Mutex<Windows<String>>,
    /// Per-account failures shared with the other nodes on one database (PostgreSQL).
    shared: Mutex<SharedFailures>,
    /// Weak accounts refused lately: one event per account and hour, not per attempt.
    weak_noted: Mutex<HashMap<String, i64>>,
    /// Withheld bans reported lately, per source and reason.
    withheld_noted: Mutex<HashMap<(Source, Reason), i64>>,
    trusted: Mutex<TrustTable>,
    flood: Mutex<FloodTable>,
    metrics: Arc<Metrics>,
    /// Where events go to be logged (and bans persisted); set by the server.
    events: OnceLock<mpsc::Sender<Event>>,
    /// The registrar's live registrations; set by the server.
    registrations: OnceLock<Arc<dyn Registrations>>,
    /// Moves whenever the set of banned sources changes.
    generation: AtomicU64,
}

/// This node's side of the per-account failure counts shared between nodes: its new
/// failures not yet written (per auth ID and minute), and the sums the other nodes
/// wrote (read back each second). Off (nothing gathered) on a single node.
#[derive(Debug, Default)]
struct SharedFailures {
    on: bool,
    pending: HashMap<(String, i64), u32>,
    others: HashMap<String, u32>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Guard {
    pub fn new(policy: BanPolicy, metrics: Arc<Metrics>) -> Self {
        Self {
            decoys: RwLock::new(Arc::new(policy.decoys.iter().cloned().collect())),
            policy: RwLock::new(Arc::new(policy)),
            metrics,
            ..Self::default()
        }
    }

    /// The settings in force now.
    pub fn policy(&self) -> Arc<BanPolicy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts new `[guard]` settings in force (a config reload). Counts, bans and trust
    /// already earned stay; each is judged by the new thresholds from the next packet.
    pub fn set_policy(&self, policy: BanPolicy) {
        let decoys = Arc::new(policy.decoys.iter().cloned().collect());
        *self.decoys.write().unwrap_or_else(|p| p.into_inner()) = decoys;
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }

    /// Connects the channel events (and the bans to persist) go through.
    pub fn set_events(&self, tx: mpsc::Sender<Event>) {
        let _ = self.events.set(tx);
    }

    /// Connects the registrar: addresses with a live registration have standing, and
    /// their trusted pairs are never pushed out of the table.
    pub fn set_registrations(&self, r: Arc<dyn Registrations>) {
        let _ = self.registrations.set(r);
    }

    /// Hands a security event made elsewhere (the INVITE path) to the event writer.
    pub fn report(&self, e: Event) {
        self.emit(e);
    }

    fn emit(&self, e: Event) {
        if let Some(tx) = self.events.get()
            && let Err(e) = tx.try_send(e)
        {
            // The queue is full only under an attack far beyond the log's pace; the
            // ban itself is in force in memory already.
            let e = match e {
                mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e) => e,
            };
            accounts::event::emit(&json!({"event": "event_dropped", "dropped": e.to_json(None)}));
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> i64 {
        self.now.load(Ordering::Relaxed)
    }

    fn live_from(&self, ip: IpAddr) -> bool {
        self.registrations.get().is_some_and(|r| r.live_from(ip))
    }

    /// Why `ip` is a legitimate source, if it is one: an account authenticated from it
    /// within the trust window, or a registration made from it is live.
    pub fn standing(&self, ip: IpAddr, now: i64) -> Option<Standing> {
        if self.trusted_anywhere(ip, now) {
            Some(Standing::Authenticated)
        } else if self.live_from(ip) {
            Some(Standing::Registered)
        } else {
            None
        }
    }

    /// The standing of a whole prefix: some account authenticated from an address in it
    /// within the trust window.
    fn prefix_standing(&self, prefix: &Source, now: i64) -> Option<Standing> {
        lock(&self.trusted)
            .prefixes
            .get(prefix)
            .is_some_and(|u| *u > now)
            .then_some(Standing::Authenticated)
    }

    /// Whether `ip` is banned now (as an address, or within a banned prefix): one read
    /// lock and one hash lookup (two for a prefix while any is banned), nothing else.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let st = self.read();
        if st.banned.is_empty() {
            return true;
        }
        let now = self.now();
        let banned = |s: &Source| st.banned.get(s).is_some_and(|e| *e > now);
        let hit = banned(&Source::host(ip))
            || (st.prefixes > 0 && self.policy().prefix_of(ip).is_some_and(|p| banned(&p)));
        !hit || st.allowed(ip)
    }

    /// The door for a datagram: the ban check, then the flood limits. A UDP source
    /// address proves nothing, so a flood from a source with standing is held to its
    /// limit but never banned. Counts what it drops.
    pub fn admit(&self, ip: IpAddr) -> Admission {
        self.admit_with(ip, Proof::Spoofable)
    }

    /// The door for a message on a connection: its source completed a TCP handshake,
    /// so a flood from it bans whatever its standing. (For the stream transports.)
    pub fn admit_on_connection(&self, ip: IpAddr) -> Admission {
        self.admit_with(ip, Proof::Handshake)
    }

    fn admit_with(&self, ip: IpAddr, proof: Proof) -> Admission {
        if !self.admits(ip) {
            Metrics::inc(&self.metrics.dropped_banned);
            return Admission::Banned;
        }
        let policy = self.policy();
        if policy.flood_requests == 0 {
            return Admission::Admit;
        }
        let now = self.now();
        let window = policy.flood_window_secs;
        let host = Source::host(ip);
        let prefix = policy.prefix_of(ip);
        let (source, verdict) = {
            let mut t = lock(&self.flood);
            match prefix {
                Some(p) => t.roll(&[host, p], now, window),
                None => t.roll(&[host], now, window),
            }
            let mut v = (
                host,
                self.flood_verdict(&policy, &mut t, ip, host, proof, now),
            );
            if matches!(v.1, Verdict::Admit)
                && let Some(p) = prefix
            {
                v = (p, self.flood_verdict(&policy, &mut t, ip, p, proof, now));
            }
            v
        };
        match verdict {
            Verdict::Admit | Verdict::Exempt => Admission::Admit,
            Verdict::Limited => {
                Metrics::inc(&self.metrics.gateway_limited);
                Admission::Silenced
            }
            Verdict::Silence => {
                Metrics::inc(&self.metrics.silenced);
                Admission::Silenced
            }
            Verdict::Ban(requests) => {
                self.impose(
                    source,
                    Reason::Flood,
                    now,
                    |_| format!("{requests} requests within {window} s"),
                    Some(policy.flood_ban_secs),
                );
                Metrics::inc(&self.metrics.dropped_banned);
                Admission::Banned
            }
        }
    }

    /// Counts one packet of `ip` against `source` (its address or its prefix).
    fn flood_verdict(
        &self,
        p: &BanPolicy,
        t: &mut FloodTable,
        ip: IpAddr,
        source: Source,
        proof: Proof,
        now: i64,
    ) -> Verdict {
        let window = p.flood_window_secs;
        let previous = t.previous.get(&source).copied().unwrap_or(0);
        let elapsed = now - t.start;
        let e = t.current.entry(source).or_default();
        e.requests = e.requests.saturating_add(1);
        let requests = sliding_count(e.requests, previous, elapsed, window);
        if requests <= p.scaled(p.silence_requests, &source) {
            return Verdict::Admit;
        }
        if source.is_prefix() && self.read().allowed(ip) {
            // An allow-listed address is never limited, but the rest of its prefix is:
            // asked per packet, never remembered for the prefix.
            return Verdict::Admit;
        }
        if e.class.is_none() {
            e.class = if source.is_prefix() {
                self.prefix_standing(&source, now).map(Class::Standing)
            } else if self.read().gateway(ip) {
                // A gateway also on the allow list is still a gateway: its address is
                // the one an attacker forges to reach the trunk's call path.
                Some(Class::Gateway(p.gateway_limit(ip)))
            } else if self.read().allowed(ip) {
                Some(Class::Exempt)
            } else {
                self.standing(ip, now).map(Class::Standing)
            };
        }
        let standing = match e.class {
            Some(Class::Exempt) => return Verdict::Exempt,
            Some(Class::Gateway(limit)) => {
                return self.gateway_verdict(e, source, requests, limit, window, now);
            }
            Some(Class::Standing(s)) => Some(s),
            None => None,
        };
        let (silence, ban) = p.flood_limits(standing.is_some());
        let (silence, ban) = (p.scaled(silence, &source), p.scaled(ban, &source));
        if requests <= silence {
            return Verdict::Admit;
        }
        if let Some(standing) = standing.filter(|_| !may_ban(proof, standing)) {
            // Held to its limit, never banned: over it, each second lets the limit's
            // share through.
            if e.within_share(silence, window, now) {
                return Verdict::Admit;
            }
            let first = !e.withheld;
            e.withheld = true;
            if first {
                self.withhold(
                    source,
                    Reason::Flood,
                    standing,
                    format!(
                        "{requests} requests within {window} s, more than its limit of {silence}"
                    ),
                    now,
                );
            }
            return Verdict::Silence;
        }
        if requests <= ban {
            let first = !e.silenced;
            e.silenced = true;
            if first {
                self.emit(Event::Silenced { source, requests });
            }
            return Verdict::Silence;
        }
        e.requests = 0;
        Verdict::Ban(requests)
    }

    /// A gateway over the silence rate, held to `limit` per window: never banned, and over
    /// the limit each second lets the limit's share through (so the real trunk keeps that
    /// rate however much is forged in its name); the rest is dropped, one event a window.
    fn gateway_verdict(
        &self,
        e: &mut FloodEntry,
        source: Source,
        requests: u32,
        limit: u32,
        window: i64,
        now: i64,
    ) -> Verdict {
        if requests <= limit || e.within_share(limit, window, now) {
            return Verdict::Admit;
        }
        if !e.silenced {
            e.silenced = true;
            self.emit(Event::GatewayLimited {
                source,
                requests,
                limit,
            });
        }
        Verdict::Limited
    }

    /// Reports a ban withheld by the proof rule (at most once a minute per source and
    /// signal) and counts it.
    fn withhold(
        &self,
        source: Source,
        reason: Reason,
        standing: Standing,
        signal: String,
        now: i64,
    ) {
        Metrics::inc(&self.metrics.bans_withheld);
        let mut noted = lock(&self.withheld_noted);
        if noted.len() >= TABLE_CAPACITY {
            noted.retain(|_, t| now - *t < WITHHELD_NOTE_SECS);
            if noted.len() >= TABLE_CAPACITY {
                noted.clear();
            }
        }
        let last = noted.get(&(source, reason)).copied();
        if last.is_some_and(|t| now - t < WITHHELD_NOTE_SECS) {
            return;
        }
        noted.insert((source, reason), now);
        drop(noted);
        self.emit(Event::Withheld {
            source,
            reason,
            standing,
            signal,
        });
    }

    /// Moves the coarse clock and lets bans that ran out go (one event each).
    pub fn tick(&self, now: i64) {
        self.now.store(now, Ordering::Relaxed);
        let expired: Vec<Source> = {
            let st = self.read();
            st.banned
                .iter()
                .filter(|(_, e)| **e <= now)
                .map(|(s, _)| *s)
                .collect()
        };
        if expired.is_empty() {
            return;
        }
        let mut st = self.write();
        for s in &expired {
            st.unban(s);
        }
        drop(st);
        self.generation.fetch_add(1, Ordering::Relaxed);
        for source in expired {
            self.emit(Event::Expired { source });
        }
    }

    /// Replaces the state with the store's records. `bans` may include expired records:
    /// they feed escalation, not the ban set. Rows that do not parse are skipped (the CLI
    /// validates them on the way in). Bans imposed here and not yet written are kept.
    /// With `announce`, bans that appeared or disappeared in the store are logged.
    pub fn replace(
        &self,
        bans: &[BanRow],
        allow: &[AllowRow],
        gateways: &[IpAddr],
        announce: bool,
    ) {
        let now = self.now();
        let parsed = || {
            bans.iter()
                .filter_map(|b| Some((Source::parse(&b.source)?, b)))
        };
        let mut banned: HashMap<Source, i64> = parsed()
            .filter(|(_, b)| b.expires_at > now)
            .map(|(s, b)| (s, b.expires_at))
            .collect();
        let mut history: HashMap<Source, (u32, i64)> = parsed()
            .map(|(s, b)| (s, (u32::try_from(b.times).unwrap_or(1), b.last_seen)))
            .collect();
        let allow = allow
            .iter()
            .filter_map(|a| a.network.parse().ok())
            .collect();
        let mut st = self.write();
        let mut pending = std::mem::take(&mut st.pending);
        pending.retain(|s| !banned.contains_key(s));
        for s in &pending {
            if let Some(e) = st.banned.get(s) {
                banned.insert(*s, *e);
            }
            if let Some(h) = st.history.get(s) {
                history.insert(*s, *h);
            }
        }
        let old = std::mem::take(&mut st.banned);
        self.generation.fetch_add(1, Ordering::Relaxed);
        *st = State {
            banned,
            prefixes: 0,
            pending,
            allow,
            gateways: gateways.iter().copied().collect(),
            history,
        };
        st.count_prefixes();
        let mut events = Vec::new();
        if announce {
            for (s, _) in old.iter().filter(|(_, e)| **e > now) {
                if !st.banned.contains_key(s) {
                    events.push(Event::Unban { source: *s });
                }
            }
            for (s, b) in parsed().filter(|(_, b)| b.expires_at > now) {
                if !old.contains_key(&s) {
                    if let Some(r) = Reason::parse(&b.reason) {
                        Metrics::inc(&self.metrics.bans_by_reason[r as usize]);
                    }
                    events.push(Event::Ban {
                        row: b.clone(),
                        from_store: true,
                    });
                }
            }
        }
        drop(st);
        for e in events {
            self.emit(e);
        }
    }

    /// Changes whenever the set of banned sources does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The banned IPv4 addresses the kernel may drop by itself (not allow-listed, at
    /// most [`KERNEL_DROP_MAX`], those banned longest first). Prefix bans stay in user
    /// space.
    pub fn kernel_drop_list(&self) -> Vec<Ipv4Addr> {
        let now = self.now();
        let st = self.read();
        let mut v: Vec<(i64, Ipv4Addr)> = st
            .banned
            .iter()
            .filter(|(_, e)| **e > now)
            .filter_map(|(s, e)| match s.address() {
                Some(IpAddr::V4(v4)) if !st.allowed(IpAddr::V4(v4)) => Some((*e, v4)),
                _ => None,
            })
            .collect();
        drop(st);
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.truncate(KERNEL_DROP_MAX);
        v.into_iter().map(|(_, ip)| ip).collect()
    }

    /// The sizes of the guard's tables (each bounded by [`TABLE_CAPACITY`] or its own
    /// limit), for `/metrics`. The insertion queues are included: a queue that outgrows
    /// its map is a leak even while the map stays bounded.
    pub fn table_sizes(&self) -> Vec<(&'static str, usize)> {
        let mut v = Vec::with_capacity(16);
        {
            let st = self.read();
            v.push(("guard_ban_records", st.banned.len()));
            v.push(("guard_bans_pending", st.pending.len()));
            v.push(("guard_ban_history", st.history.len()));
        }
        let windows = |name: &'static str, queue: &'static str, w: &Mutex<Windows<Source>>| {
            let w = lock(w);
            [(name, w.map.len()), (queue, w.order.len())]
        };
        v.extend(windows(
            "guard_failures",
            "guard_failures_queue",
            &self.failures,
        ));
        v.extend(windows(
            "guard_provisioning_probes",
            "guard_provisioning_probes_queue",
            &self.provisioning_probes,
        ));
        {
            let w = lock(&self.account_failures);
            v.push(("guard_account_failures", w.map.len()));
            v.push(("guard_account_failures_queue", w.order.len()));
        }
        v.push((
            "guard_provisioning_limited",
            lock(&self.provisioning_limited).len(),
        ));
        v.push(("guard_weak_noted", lock(&self.weak_noted).len()));
        {
            let shared = lock(&self.shared);
            v.push(("guard_shared_failures_pending", shared.pending.len()));
            v.push(("guard_shared_failures_others", shared.others.len()));
        }
        v.push(("guard_withheld_noted", lock(&self.withheld_noted).len()));
        {
            let t = lock(&self.trusted);
            v.push(("guard_trusted_pairs", t.pairs));
            v.push(("guard_trusted_queue", t.order.len()));
            v.push(("guard_trusted_accounts", t.by_account.len()));
            v.push(("guard_trusted_prefixes", t.prefixes.len()));
        }
        {
            let f = lock(&self.flood);
            v.push(("guard_flood_sources", f.current.len() + f.previous.len()));
        }
        v
    }

    /// How many allow-list networks are in force.
    pub fn allowed_count(&self) -> usize {
        self.read().allow.len()
    }

    /// Sources (addresses and prefixes) banned now.
    pub fn banned_count(&self) -> usize {
        let now = self.now();
        self.read().banned.values().filter(|e| **e > now).count()
    }

    /// Whether `ip` is allow-listed or a gateway's address.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.read().allowed(ip)
    }

    /// Records that `auth_id` authenticated from `ip`: the pair is trusted for a while.
    pub fn auth_success(&self, ip: IpAddr, auth_id: &str, now: i64) {
        let until = now.saturating_add(self.policy().trusted_secs);
        let prefix = self.policy().prefix_of(ip);
        let mut t = lock(&self.trusted);
        if let Some(p) = prefix {
            t.note_prefix(p, until);
        }
        if let Some(pair) = t.until.get_mut(&ip).and_then(|m| m.get_mut(auth_id)) {
            pair.until = until;
            pair.stale = false;
            return;
        }
        let cap = usize::try_from(self.policy().trusted_per_account).unwrap_or(usize::MAX);
        let live = |ip: IpAddr| self.live_from(ip);
        if t.make_room(auth_id, cap, &live) {
            t.insert(ip, auth_id, until);
        }
    }

    /// Withdraws the trust every address earned for `auth_id`: its credentials changed
    /// or the account is gone, and standing earned with the old password must not
    /// outlive it (a holder of the stolen password would guess the new one uncounted).
    /// The pairs stay as *stale* (see [`Pair::stale`]) until a correct login renews them.
    pub fn forget_account(&self, auth_id: &str) {
        let mut t = lock(&self.trusted);
        let Some(pairs) = t.by_account.get(auth_id).cloned() else {
            return;
        };
        for (ip, _) in pairs {
            if let Some(p) = t.until.get_mut(&ip).and_then(|m| m.get_mut(auth_id)) {
                p.stale = true;
            }
        }
    }

    fn pair(&self, ip: IpAddr, auth_id: &str, now: i64) -> Option<bool> {
        lock(&self.trusted)
            .until
            .get(&ip)
            .and_then(|m| m.get(auth_id))
            .filter(|p| p.until > now)
            .map(|p| p.stale)
    }

    fn trusted(&self, ip: IpAddr, auth_id: &str, now: i64) -> bool {
        self.pair(ip, auth_id, now) == Some(false)
    }

    fn trusted_anywhere(&self, ip: IpAddr, now: i64) -> bool {
        lock(&self.trusted)
            .until
            .get(&ip)
            .is_some_and(|m| m.values().any(|p| p.until > now))
    }

    /// Whether `account` may log in from `ip` now, its credentials being right. No when
    /// the source is not trusted for it and the account's password is weak (with
    /// `weak_credentials = "trusted-only"`) or the account is under distributed guessing.
    /// Called for wrong credentials too, so both take the same path.
    pub fn may_authenticate(&self, ip: IpAddr, account: &Account, now: i64) -> bool {
        if self.allowed(ip) || self.trusted(ip, &account.auth_id, now) {
            return true;
        }
        if account.weak() && self.policy().weak_credentials == WeakCredentials::TrustedOnly {
            return false;
        }
        self.policy().extension_failures == 0
            || lock(&self.account_failures)
                .count(&account.auth_id, now, self.policy().extension_window_secs)
                .saturating_add(self.others_failures(&account.auth_id))
                < self.policy().extension_failures
    }

    /// The failures of `auth_id` the other nodes counted (0 on a single node).
    fn others_failures(&self, auth_id: &str) -> u32 {
        lock(&self.shared).others.get(auth_id).copied().unwrap_or(0)
    }

    /// Shares the per-account failure counts with other nodes from now on: new failures
    /// are gathered for [`Guard::take_failure_deltas`], and the others' sums count.
    pub fn share_failures(&self) {
        lock(&self.shared).on = true;
    }

    /// The failures counted since the last call, per (auth ID, minute), to be written to
    /// the store.
    pub fn take_failure_deltas(&self) -> Vec<(String, i64, u32)> {
        lock(&self.shared)
            .pending
            .drain()
            .map(|((id, minute), n)| (id, minute, n))
            .collect()
    }

    /// Deltas that could not be written: kept for the next write (bounded like every
    /// table; beyond it they are dropped, which only lowers the count others see).
    pub fn return_failure_deltas(&self, deltas: Vec<(String, i64, u32)>) {
        let mut shared = lock(&self.shared);
        for (id, minute, n) in deltas {
            if shared.pending.len() >= TABLE_CAPACITY {
                break;
            }
            *shared.pending.entry((id, minute)).or_default() += n;
        }
    }

    /// The `limit` accounts with the most failed authentications from strangers within
    /// the account window now (this node's and, on a shared database, the other nodes'),
    /// most first: what the console shows as the accounts under attack. Counts stop at
    /// the lockout threshold, where the account is closed to strangers.
    pub fn targeted_accounts(&self, now: i64, limit: usize) -> Vec<(String, u32)> {
        let window = self.policy().extension_window_secs;
        let mut all: HashMap<String, u32> = lock(&self.account_failures)
            .counted(now, window)
            .into_iter()
            .collect();
        for (id, n) in &lock(&self.shared).others {
            let e = all.entry(id.clone()).or_default();
            *e = e.saturating_add(*n);
        }
        let mut all: Vec<(String, u32)> = all.into_iter().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(limit);
        all
    }

    /// The other nodes' failure sums per auth ID, as the store has them now (replaces
    /// the previous ones; at most [`TABLE_CAPACITY`]). Accounts that cross the limit
    /// by them are reported protected as by local failures.
    pub fn set_others_failures(&self, sums: Vec<(String, u32)>, now: i64) {
        self.others_failures_read(sums, now, true);
    }

    /// Some accounts' sums from the other nodes (a page of a sweep over every account
    /// under attack, and the most-failed ones): they replace those accounts' previous
    /// sums and leave the others' as they were (a new account beyond [`TABLE_CAPACITY`]
    /// is left out). A sweep that ends gives the whole set to
    /// [`Guard::set_others_failures`], which forgets the accounts no longer failing.
    pub fn merge_others_failures(&self, sums: Vec<(String, u32)>, now: i64) {
        self.others_failures_read(sums, now, false);
    }

    fn others_failures_read(&self, sums: Vec<(String, u32)>, now: i64, replace: bool) {
        let p = self.policy();
        let mut crossed = Vec::new();
        {
            let mut local = lock(&self.account_failures);
            let mut shared = lock(&self.shared);
            let mut next = if replace {
                HashMap::with_capacity(sums.len().min(TABLE_CAPACITY))
            } else {
                std::mem::take(&mut shared.others)
            };
            for (id, n) in sums.into_iter().take(TABLE_CAPACITY) {
                if next.len() >= TABLE_CAPACITY && !next.contains_key(&id) {
                    continue;
                }
                let mine = local.count(&id, now, p.extension_window_secs);
                let previous = if replace {
                    shared.others.get(&id)
                } else {
                    next.get(&id)
                };
                let before = mine.saturating_add(previous.copied().unwrap_or(0));
                let after = mine.saturating_add(n);
                if p.extension_failures > 0
                    && before < p.extension_failures
                    && after >= p.extension_failures
                {
                    crossed.push((id.clone(), after));
                }
                next.insert(id, n);
            }
            shared.others = next;
        }
        for (auth_id, failures) in crossed {
            Metrics::inc(&self.metrics.accounts_protected);
            self.emit(Event::AccountProtected { auth_id, failures });
        }
    }

    /// The right password was refused by [`Guard::may_authenticate`]: counted, and
    /// logged once an hour per account when the password is weak.
    pub fn refused(&self, ip: IpAddr, account: &Account, now: i64) {
        Metrics::inc(&self.metrics.refused_credentials);
        if account.weak() && self.policy().weak_credentials == WeakCredentials::TrustedOnly {
            let mut noted = lock(&self.weak_noted);
            if noted.len() >= TABLE_CAPACITY {
                noted.clear();
            }
            let last = noted.insert(account.auth_id.clone(), now);
            drop(noted);
            if last.is_none_or(|t| now - t >= 3600) {
                self.emit(Event::WeakRefused {
                    auth_id: account.auth_id.clone(),
                    source: ip,
                });
            }
        }
    }

    /// Counts a failure of `ip` in `table` against its address and its prefix; the
    /// source to ban (the address when it reached `threshold` alone, else the prefix
    /// when its addresses together reached `threshold × prefix_factor`), with the count.
    fn count_failure(
        &self,
        table: &Mutex<Windows<Source>>,
        ip: IpAddr,
        threshold: u32,
        window: i64,
        now: i64,
    ) -> Option<(Source, u32)> {
        let mut t = lock(table);
        let host = Source::host(ip);
        let keys = std::iter::once(host).chain(self.policy().prefix_of(ip));
        for key in keys {
            let limit = self.policy().scaled(threshold, &key);
            let count = t.record(&key, now, window, limit);
            if count >= limit {
                t.reset(&key);
                return Some((key, count));
            }
        }
        None
    }

    /// Counts a failed authentication for `auth_id` from `ip` (one that answered a nonce
    /// issued to `ip`, so it proves the source; `known` when the auth ID is an account
    /// here). Bans the source when it has failed too often, and protects the account
    /// when it collects too many failures from untrusted sources. Not counted:
    /// allow-listed sources, and an auth ID failing where it has authenticated before (a
    /// phone that still has its old password must not get its office banned nor its
    /// account closed).
    pub fn auth_failure(&self, ip: IpAddr, auth_id: &str, known: bool, now: i64) {
        let pair = self.pair(ip, auth_id, now);
        if self.allowed(ip) || pair == Some(false) {
            return;
        }
        let p = self.policy();
        if known && p.extension_failures > 0 {
            let key = auth_id.to_owned();
            let others = {
                let mut shared = lock(&self.shared);
                if shared.on
                    && (shared.pending.len() < TABLE_CAPACITY
                        || shared.pending.contains_key(&(key.clone(), now / 60)))
                {
                    *shared.pending.entry((key.clone(), now / 60)).or_default() += 1;
                }
                shared.others.get(&key).copied().unwrap_or(0)
            };
            let mut t = lock(&self.account_failures);
            let before = t
                .count(&key, now, p.extension_window_secs)
                .saturating_add(others);
            let after = t
                .record(&key, now, p.extension_window_secs, p.extension_failures)
                .saturating_add(others);
            drop(t);
            if before < p.extension_failures && after >= p.extension_failures {
                Metrics::inc(&self.metrics.accounts_protected);
                self.emit(Event::AccountProtected {
                    auth_id: key,
                    failures: after,
                });
            }
        }
        // Where this account logged in before its credentials changed: most likely its
        // own phone with the old password. The account's lockout bounds the guesses;
        // the address (an office) is not banned for it.
        if pair == Some(true) {
            return;
        }
        let Some((source, count)) =
            self.count_failure(&self.failures, ip, p.auth_failures, p.auth_window_secs, now)
        else {
            return;
        };
        let window_min = p.auth_window_secs / 60;
        let hours = p.repeat_window_secs / 3600;
        let spread = if source.is_prefix() {
            " from addresses of this network"
        } else {
            ""
        };
        self.impose(
            source,
            Reason::AuthFailures,
            now,
            |n| {
                format!(
                    "{count} failed authentications{spread} within {window_min} minutes (ban {n} within {hours} hours)"
                )
            },
            None,
        );
    }

    /// Counts a refused voicemail PIN against `ip`, the source of an authenticated
    /// call (its signalling answered a nonce), like a failed SIP authentication from
    /// it: the same table and ban, so one address guessing many boxes is banned, not
    /// only each box locked. Allow-listed sources (a trunk's shared range among them)
    /// are never counted; the box's own lockout still holds for them.
    pub fn voicemail_pin_failure(&self, ip: IpAddr, now: i64) {
        if self.allowed(ip) {
            return;
        }
        let p = self.policy();
        let Some((source, count)) =
            self.count_failure(&self.failures, ip, p.auth_failures, p.auth_window_secs, now)
        else {
            return;
        };
        let window_min = p.auth_window_secs / 60;
        let hours = p.repeat_window_secs / 3600;
        self.impose(
            source,
            Reason::AuthFailures,
            now,
            |n| {
                format!(
                    "{count} failed authentications (voicemail PINs among them) within {window_min} minutes (ban {n} within {hours} hours)"
                )
            },
            None,
        );
    }

    /// Handles a request whose User-Agent names a known scanner: bans the source at once
    /// (unless allow-listed or scanner bans are off), or, when the User-Agent came in a
    /// datagram (`proof` spoofable) from a source with standing, withholds the ban and
    /// only silences this request. Returns whether the request is to be dropped.
    /// Runs on every request with a User-Agent: matching needs no lock, allocation or
    /// time call; only a match reads the (coarse) clock.
    pub fn scanner(&self, ip: IpAddr, user_agent: &str, proof: Proof) -> bool {
        let Some(tool) = policy::scanner::scanner(user_agent) else {
            return false;
        };
        if !self.policy().ban_scanners || self.allowed(ip) {
            return false;
        }
        let now = self.now();
        let signal = format!("User-Agent of a scanner: {tool}");
        let standing = self.standing(ip, now);
        if let Some(standing) = standing.filter(|_| !may_ban(proof, standing)) {
            self.withhold(Source::host(ip), Reason::Scanner, standing, signal, now);
            return true;
        }
        self.impose(
            Source::host(ip),
            Reason::Scanner,
            now,
            |_| signal,
            Some(self.policy().scanner_ban_secs),
        );
        true
    }

    /// Whether provisioning answers `ip` (it is not over the provisioning probe limit).
    pub fn provisioning_admits(&self, ip: IpAddr, now: i64) -> bool {
        lock(&self.provisioning_limited)
            .get(&ip)
            .is_none_or(|until| *until <= now)
    }

    /// Counts a failed provisioning request (a wrong login, a nonce that is stale or not
    /// ours, a replay). At the threshold, a source where a phone is `registered` (or
    /// where some account logged in lately) is only refused provisioning for a
    /// provisioning window: such a probe proves no source address and must never
    /// silence a phone. Any other source is banned (its address, or its prefix when many
    /// of its addresses probe).
    pub fn provisioning_probe(&self, ip: IpAddr, now: i64, registered: bool) -> ProbeVerdict {
        if self.allowed(ip) {
            return ProbeVerdict::Counted;
        }
        let p = self.policy();
        let Some((source, count)) = self.count_failure(
            &self.provisioning_probes,
            ip,
            p.provisioning_probes,
            p.provisioning_window_secs,
            now,
        ) else {
            return ProbeVerdict::Counted;
        };
        if registered || self.trusted_anywhere(ip, now) {
            let until = now.saturating_add(p.provisioning_window_secs);
            let mut limited = lock(&self.provisioning_limited);
            if limited.len() >= TABLE_CAPACITY {
                limited.retain(|_, u| *u > now);
                if limited.len() >= TABLE_CAPACITY {
                    limited.clear();
                }
            }
            limited.insert(ip, until);
            drop(limited);
            Metrics::inc(&self.metrics.provisioning_limited);
            self.emit(Event::ProvisioningLimited {
                source: ip,
                probes: count,
                until,
            });
            return ProbeVerdict::Limited;
        }
        let minutes = p.provisioning_window_secs / 60;
        self.impose(
            source,
            Reason::ProvisioningProbe,
            now,
            |_| format!("{count} failed provisioning requests (wrong login, stale or foreign nonce, replay) within {minutes} minutes"),
            Some(p.provisioning_ban_secs),
        );
        ProbeVerdict::Banned
    }

    /// Bans `ip` at once when `user` is a decoy (the caller has checked it is no account
    /// here, and that the request answered a nonce issued to `ip`). Returns whether it
    /// did.
    pub fn decoy(&self, ip: IpAddr, user: &str, now: i64) -> bool {
        if !self
            .decoys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(user)
            || self.allowed(ip)
        {
            return false;
        }
        self.impose(
            Source::host(ip),
            Reason::Decoy,
            now,
            |_| format!("authenticated as the decoy user name {user:?}"),
            Some(self.policy().decoy_ban_secs),
        );
        true
    }

    /// Puts a ban in force in memory at once and hands it to the writer. The length is
    /// `fixed`, or else escalates with the source's recent bans.
    fn impose(
        &self,
        source: Source,
        reason: Reason,
        now: i64,
        detail: impl FnOnce(u32) -> String,
        fixed: Option<i64>,
    ) -> BanRow {
        let mut st = self.write();
        let n = self
            .policy()
            .ban_number(st.history.get(&source).copied(), now);
        let expires_at = now.saturating_add(fixed.unwrap_or_else(|| self.policy().ban_length(n)));
        if st.banned.insert(source, expires_at).is_none() && source.is_prefix() {
            st.prefixes += 1;
        }
        st.pending.insert(source);
        st.history.insert(source, (n, now));
        drop(st);
        self.generation.fetch_add(1, Ordering::Relaxed);
        Metrics::inc(&self.metrics.bans_by_reason[reason as usize]);
        let row = BanRow {
            source: source.to_string(),
            reason: reason.as_str().to_owned(),
            detail: detail(n),
            first_seen: now,
            last_seen: now,
            expires_at,
            times: i64::from(n),
        };
        // The ban is in force in memory already; the store write happens off the packet path.
        self.emit(Event::Ban {
            row: row.clone(),
            from_store: false,
        });
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn guard(policy: BanPolicy) -> (Guard, mpsc::Receiver<Event>) {
        let g = Guard::new(policy, Arc::default());
        let (tx, rx) = mpsc::channel(100_000);
        g.set_events(tx);
        (g, rx)
    }

    fn events(rx: &mut mpsc::Receiver<Event>) -> Vec<Event> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    fn bans(rx: &mut mpsc::Receiver<Event>) -> Vec<BanRow> {
        events(rx)
            .into_iter()
            .filter_map(|e| match e {
                Event::Ban { row, .. } => Some(row),
                _ => None,
            })
            .collect()
    }

    fn ban(source: &str, expires_at: i64) -> BanRow {
        BanRow {
            source: source.into(),
            reason: "manual".into(),
            detail: String::new(),
            first_seen: 0,
            last_seen: 0,
            expires_at,
            times: 1,
        }
    }

    fn allow(network: &str) -> AllowRow {
        AllowRow {
            network: network.into(),
            note: String::new(),
            created_at: 0,
        }
    }

    fn account(auth_id: &str, weak: bool) -> Account {
        let row = accounts::credentials::Credential {
            kind: "ext",
            number: "1001".into(),
            auth_id: auth_id.into(),
            sip_id: None,
            ha1s: accounts::credentials::Ha1s::opened(
                policy::Secret::new(""),
                policy::Secret::new(""),
            ),
            password_score: if weak { 0 } else { 4 },
            credential_generation: 1,
        };
        let d = crate::directory::Directory::from_rows(vec![row], "sipward", 3);
        let a = d.account(auth_id).expect("account");
        Account::clone(a)
    }

    #[test]
    fn bans_expire_and_the_allow_list_and_gateways_win() {
        let (g, mut rx) = guard(BanPolicy::default());
        g.tick(100);
        let (a, b, gw) = (ip("192.0.2.7"), ip("198.51.100.1"), ip("203.0.113.50"));
        g.replace(
            &[
                ban("192.0.2.7", 200),
                ban("198.51.100.1", 200),
                ban("203.0.113.50", 200),
            ],
            &[allow("198.51.100.0/24")],
            &[gw],
            false,
        );
        assert!(
            events(&mut rx).is_empty(),
            "loading at start announces nothing"
        );
        assert_eq!(g.admit(a), Admission::Banned);
        assert_eq!(
            g.admit(b),
            Admission::Admit,
            "allow-listed networks are never dropped"
        );
        assert_eq!(g.admit(gw), Admission::Admit, "nor are gateways");
        assert_eq!(g.admit(ip("203.0.113.9")), Admission::Admit);
        assert_eq!(g.banned_count(), 3);
        g.tick(200);
        assert_eq!(g.admit(a), Admission::Admit, "expired");
        assert_eq!(g.banned_count(), 0);
        let expired = events(&mut rx);
        assert_eq!(expired.len(), 3);
        assert!(expired.contains(&Event::Expired {
            source: Source::host(a)
        }));
        g.tick(201);
        assert!(events(&mut rx).is_empty(), "one event per expiry");
    }

    #[test]
    fn the_store_wins_on_reload_but_fresh_bans_wait_for_it_and_changes_are_logged() {
        let (g, mut rx) = guard(BanPolicy::default());
        g.tick(10);
        let (cli, mine) = (ip("192.0.2.1"), ip("192.0.2.2"));
        g.replace(&[ban("192.0.2.1", 1000)], &[], &[], false);
        assert!(g.scanner(mine, "friendly-scanner", Proof::Spoofable));
        assert_eq!(bans(&mut rx)[0].reason, "scanner.user_agent");
        // The CLI removed its ban; the store does not hold the scanner ban yet.
        g.replace(&[], &[], &[], true);
        assert_eq!(g.admit(cli), Admission::Admit);
        assert_eq!(
            g.admit(mine),
            Admission::Banned,
            "kept until the store has it"
        );
        assert_eq!(
            events(&mut rx),
            vec![Event::Unban {
                source: Source::host(cli)
            }]
        );
        // A ban made with the CLI is announced once, and counted by its reason.
        let mut by_hand = ban("192.0.2.3", 1000);
        by_hand.detail = "seen in the CDRs".into();
        g.replace(&[by_hand.clone()], &[], &[], true);
        g.replace(&[by_hand.clone()], &[], &[], true);
        assert_eq!(
            events(&mut rx),
            vec![Event::Ban {
                row: by_hand,
                from_store: true
            }]
        );
        assert_eq!(
            g.metrics.bans_by_reason[Reason::Manual as usize].load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn repeated_failures_ban_and_escalate() {
        let (g, mut rx) = guard(BanPolicy::default());
        let src = ip("203.0.113.5");
        for i in 0..9 {
            g.auth_failure(src, "x", false, i);
        }
        assert!(bans(&mut rx).is_empty());
        g.auth_failure(src, "x", false, 9);
        let first = bans(&mut rx).pop().expect("the tenth failure bans");
        assert_eq!(
            (first.reason.as_str(), first.times, first.expires_at),
            ("auth.failures", 1, 9 + 3600)
        );
        g.tick(10);
        assert!(!g.admits(src));
        // Two more rounds within a day: the third ban lasts a week.
        let mut t = 4000;
        for _ in 0..20 {
            t += 1;
            g.auth_failure(src, "x", false, t);
        }
        let last = bans(&mut rx).pop().expect("banned again");
        assert_eq!(last.times, 3);
        assert_eq!(last.expires_at - t, 604_800);
    }

    #[test]
    fn wrong_voicemail_pins_count_with_failed_logins_but_never_from_the_allow_list() {
        let (g, mut rx) = guard(BanPolicy::default());
        let src = ip("203.0.113.6");
        for i in 0..5 {
            g.auth_failure(src, "x", false, i);
        }
        for i in 5..9 {
            g.voicemail_pin_failure(src, i);
        }
        assert!(bans(&mut rx).is_empty());
        g.voicemail_pin_failure(src, 9);
        let row = bans(&mut rx).pop().expect("the tenth failure bans");
        assert_eq!(row.reason, "auth.failures");
        assert!(row.detail.contains("voicemail"), "{}", row.detail);
        // A trunk's range (allow-listed) shares its address with every outside caller.
        let (g, mut rx) = guard(BanPolicy {
            auth_failures: 1,
            ..Default::default()
        });
        g.replace(&[], &[allow("10.0.0.0/8")], &[], false);
        g.voicemail_pin_failure(ip("10.1.2.3"), 0);
        assert!(events(&mut rx).is_empty());
    }

    #[test]
    fn a_stale_phone_does_not_get_its_office_banned() {
        let (g, mut rx) = guard(BanPolicy {
            auth_failures: 3,
            ..Default::default()
        });
        let office = ip("198.51.100.20");
        g.auth_success(office, "alice1001", 0);
        for t in 1..100 {
            g.auth_failure(office, "alice1001", true, t);
        }
        assert!(
            events(&mut rx).is_empty(),
            "the stale phone's failures do not count"
        );
        // Guessing another extension's password from the same address still counts...
        for t in 100..103 {
            g.auth_failure(office, "bob1002", true, t);
        }
        assert_eq!(bans(&mut rx).len(), 1);
        // ...and the trust expires.
        let (g, mut rx) = guard(BanPolicy {
            auth_failures: 1,
            ..Default::default()
        });
        g.auth_success(office, "alice1001", 0);
        g.auth_failure(office, "alice1001", true, 604_801);
        assert_eq!(bans(&mut rx).len(), 1);
    }

    #[test]
    fn after_a_credential_change_the_old_trust_spares_the_office_but_not_the_account() {
        let (g, mut rx) = guard(BanPolicy {
            auth_failures: 3,
            extension_failures: 5,
            ..Default::default()
        });
        let office = ip("198.51.100.20");
        g.auth_success(office, "alice1001", 0);
        g.forget_account("alice1001");
        for t in 1..=5 {
            g.auth_failure(office, "alice1001", true, t);
        }
        let seen = events(&mut rx);
        assert!(
            !seen.iter().any(|e| matches!(e, Event::Ban { .. })),
            "the office is not banned for its phone's old password: {seen:?}"
        );
        assert!(
            seen.iter()
                .any(|e| matches!(e, Event::AccountProtected { .. })),
            "but the guesses count against the account: {seen:?}"
        );
        assert!(!g.trusted(office, "alice1001", 6), "no trust left");
        // A correct login with the new credentials renews it.
        g.auth_success(office, "alice1001", 7);
        assert!(g.trusted(office, "alice1001", 8));
        // Control: without the change, the same failures count for nothing.
        let (g, mut rx) = guard(BanPolicy {
            auth_failures: 3,
            extension_failures: 5,
            ..Default::default()
        });
        g.auth_success(office, "alice1001", 0);
        for t in 1..=5 {
            g.auth_failure(office, "alice1001", true, t);
        }
        assert!(events(&mut rx).is_empty());
    }

    #[test]
    fn the_trust_table_is_bounded() {
        let (g, _rx) = guard(BanPolicy::default());
        for i in 0..(TABLE_CAPACITY as u32 + 500) {
            let id = format!("a{}", i % 2000);
            g.auth_success(IpAddr::from(i.to_be_bytes()), &id, 0);
            g.auth_success(IpAddr::from(i.to_be_bytes()), &id, 1); // a refresh adds nothing
        }
        let t = g.trusted.lock().expect("lock");
        assert_eq!(t.pairs, TABLE_CAPACITY);
        assert_eq!(
            t.until.values().map(HashMap::len).sum::<usize>(),
            TABLE_CAPACITY
        );
        assert!(t.order.len() <= 2 * TABLE_CAPACITY);
    }

    /// Registrations for the tests: the addresses a live binding was made from.
    #[derive(Debug, Default)]
    struct Live(Mutex<HashSet<IpAddr>>);

    impl Registrations for Live {
        fn live_from(&self, ip: IpAddr) -> bool {
            lock(&self.0).contains(&ip)
        }
    }

    fn with_live(g: &Guard, ips: &[IpAddr]) -> Arc<Live> {
        let live = Arc::new(Live::default());
        lock(&live.0).extend(ips.iter().copied());
        g.set_registrations(live.clone());
        live
    }

    #[test]
    fn one_credential_cannot_flush_the_trust_table() {
        // Issue #17: one account's credentials from 65,600 addresses pushed an office
        // phone's trust out; its weak password then got 401 on its next refresh, and
        // the office lost its flood allowance.
        let (g, mut rx) = guard(BanPolicy::default());
        let office = ip("198.51.100.20");
        let phone = account("weak1001", true);
        g.auth_success(office, "weak1001", 0);
        for i in 0..65_600u32 {
            g.auth_success(
                IpAddr::from((0x0a00_0000 + i).to_be_bytes()),
                "attacker2000",
                1,
            );
        }
        assert!(
            g.may_authenticate(office, &phone, 2),
            "the office's weak phone still logs in"
        );
        assert_eq!(g.standing(office, 2), Some(Standing::Authenticated));
        let t = g.trusted.lock().expect("lock");
        let attackers: usize = t
            .until
            .values()
            .filter(|m| m.contains_key("attacker2000"))
            .count();
        assert_eq!(attackers, 64, "capped per account");
        drop(t);
        assert!(
            g.may_authenticate(
                IpAddr::from((0x0a00_0000u32 + 65_599).to_be_bytes()),
                &account("attacker2000", true),
                2
            ),
            "the newest pairs of the account are the ones kept"
        );
        assert!(events(&mut rx).is_empty());
    }

    #[test]
    fn a_pair_for_a_live_registration_is_never_pushed_out() {
        let (g, _rx) = guard(BanPolicy {
            trusted_per_account: 2,
            ..Default::default()
        });
        let (a, b, c, d) = (
            ip("192.0.2.1"),
            ip("192.0.2.2"),
            ip("192.0.2.3"),
            ip("192.0.2.4"),
        );
        let live = with_live(&g, &[a]);
        let x = account("x", true);
        g.auth_success(a, "x", 0);
        g.auth_success(b, "x", 0);
        g.auth_success(c, "x", 0);
        assert!(g.may_authenticate(a, &x, 1), "registered: kept");
        assert!(
            !g.may_authenticate(b, &x, 1),
            "the oldest unregistered one went"
        );
        assert!(g.may_authenticate(c, &x, 1));
        // Every pair of the account registered: a new address is not trusted, nothing goes.
        lock(&live.0).insert(c);
        g.auth_success(d, "x", 0);
        assert!(g.may_authenticate(a, &x, 1) && g.may_authenticate(c, &x, 1));
        assert!(!g.may_authenticate(d, &x, 1));
        // Across accounts too: with the table full, live pairs stay and others go.
        let (g, _rx) = guard(BanPolicy::default());
        let office = ip("203.0.113.7");
        with_live(&g, &[office]);
        g.auth_success(office, "office", 0);
        for i in 0..(TABLE_CAPACITY as u32 + 100) {
            g.auth_success(
                IpAddr::from((0x0a00_0000 + i).to_be_bytes()),
                &format!("acc{}", i / 60),
                1,
            );
        }
        assert!(g.may_authenticate(office, &account("office", true), 2));
        assert_eq!(lock(&g.trusted).pairs, TABLE_CAPACITY);
    }

    #[test]
    fn a_forged_scanner_user_agent_never_bans_a_source_with_standing() {
        let (g, mut rx) = guard(BanPolicy::default());
        g.tick(100);
        let office = ip("198.51.100.20");
        g.auth_success(office, "alice1001", 50);
        assert!(
            g.scanner(office, "friendly-scanner", Proof::Spoofable),
            "the request is dropped"
        );
        assert!(g.admits(office), "but the office is not banned");
        let withheld = events(&mut rx);
        assert_eq!(
            withheld,
            vec![Event::Withheld {
                source: Source::host(office),
                reason: Reason::Scanner,
                standing: Standing::Authenticated,
                signal: "User-Agent of a scanner: SIPVicious 0.2/0.3 (svmap, svwar, svcrack)"
                    .into(),
            }]
        );
        let line = withheld[0].to_json(None).to_string();
        assert!(
            line.contains(r#""event":"ban_withheld""#) && line.contains("does not prove"),
            "{line}"
        );
        assert!(g.scanner(office, "friendly-scanner", Proof::Spoofable));
        assert!(
            events(&mut rx).is_empty(),
            "one event a minute, not one per packet"
        );
        assert_eq!(g.metrics.bans_withheld.load(Ordering::Relaxed), 2);
        // A live registration is standing too.
        let registered = ip("198.51.100.21");
        with_live(&g, &[registered]);
        assert!(g.scanner(registered, "sipvicious", Proof::Spoofable));
        assert!(g.admits(registered));
        assert!(matches!(
            events(&mut rx).as_slice(),
            [Event::Withheld {
                standing: Standing::Registered,
                ..
            }]
        ));
        // Over TCP the handshake proved the source: banned whatever its standing.
        assert!(g.scanner(office, "friendly-scanner", Proof::Handshake));
        assert!(!g.admits(office));
        assert_eq!(bans(&mut rx)[0].reason, "scanner.user_agent");
        // Control: the same datagram from an address with no history bans as before.
        let stranger = ip("192.0.2.50");
        assert!(g.scanner(stranger, "friendly-scanner", Proof::Spoofable));
        assert!(!g.admits(stranger));
    }

    #[test]
    fn a_forged_flood_from_an_office_is_held_to_its_limit_and_never_banned() {
        // Issue #17: ~5,000 forged datagrams in 10 s banned a trusted office for a day.
        let (g, mut rx) = guard(BanPolicy::default());
        let office = ip("198.51.100.20");
        g.auth_success(office, "alice1001", 990);
        let mut admitted = 0;
        for t in 0..20 {
            g.tick(1000 + t);
            for _ in 0..600 {
                match g.admit(office) {
                    Admission::Admit => admitted += 1,
                    Admission::Silenced => {}
                    Admission::Banned => panic!("banned at {t} s"),
                }
            }
        }
        assert!(g.admits(office));
        // 600 a second against a limit of 3,000 in 10 s: all of the first 5 s, then 300
        // in each second (the limit's share), which the office's own packets compete for.
        assert_eq!(admitted, 3000 + 15 * 300, "admitted of 12,000");
        // The forged packets stop: the next second answers the office again, although
        // the window still counts the flood.
        g.tick(1020);
        assert_eq!(g.admit(office), Admission::Admit);
        let ev = events(&mut rx);
        assert!(
            !ev.is_empty()
                && ev.iter().all(|e| matches!(
                    e,
                    Event::Withheld {
                        reason: Reason::Flood,
                        standing: Standing::Authenticated,
                        ..
                    }
                )),
            "{ev:?}"
        );
        assert!(ev.len() <= 2, "one event a minute: {ev:?}");
        // Control: the same packets from an address with no history ban it.
        let stranger = ip("192.0.2.66");
        let verdicts: Vec<Admission> = (0..600).map(|_| g.admit(stranger)).collect();
        assert_eq!(verdicts.last(), Some(&Admission::Banned));
        assert_eq!(bans(&mut rx)[0].reason, "flood.requests");
        // Over a connection (a TCP handshake) the office's flood bans too.
        let (g, mut rx) = guard(BanPolicy::default());
        g.tick(1000);
        g.auth_success(office, "alice1001", 990);
        let verdicts: Vec<Admission> = (0..5001).map(|_| g.admit_on_connection(office)).collect();
        assert_eq!(verdicts.last(), Some(&Admission::Banned));
        assert_eq!(bans(&mut rx)[0].source, "198.51.100.20");
    }

    #[test]
    fn ipv6_counts_per_address_and_per_prefix_and_bans_say_which() {
        let (g, mut rx) = guard(BanPolicy::default());
        g.tick(1000);
        // One address floods: that address is banned, its /64 neighbours are not.
        let one = ip("2001:db8:1:2::1");
        let verdicts: Vec<Admission> = (0..51).map(|_| g.admit(one)).collect();
        assert_eq!(verdicts.last(), Some(&Admission::Banned));
        assert_eq!(bans(&mut rx)[0].source, "2001:db8:1:2::1");
        assert!(g.admits(ip("2001:db8:1:2::2")));
        // Many addresses of one /64, each under its own limit: the prefix is banned.
        let (g, mut rx) = guard(BanPolicy::default());
        g.tick(1000);
        let mut last = Admission::Admit;
        for i in 0..201u16 {
            let a = IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0x10, i]);
            last = g.admit(a);
        }
        assert_eq!(last, Admission::Banned, "a /64 may send 4 × 50");
        let b = bans(&mut rx).pop().expect("ban");
        assert_eq!(
            (b.source.as_str(), b.reason.as_str()),
            ("2001:db8:1:2::/64", "flood.requests")
        );
        assert!(!g.admits(ip("2001:db8:1:2:ffff::9")), "the whole /64");
        assert!(g.admits(ip("2001:db8:1:3::1")), "not the next one");
        assert_eq!(g.banned_count(), 1);
        // An allow-listed address inside a banned prefix stays in.
        g.replace(
            &[ban("2001:db8:1:2::/64", 5000)],
            &[allow("2001:db8:1:2::77/128")],
            &[],
            false,
        );
        assert!(g.admits(ip("2001:db8:1:2::77")) && !g.admits(ip("2001:db8:1:2::78")));
        assert!(
            g.kernel_drop_list().is_empty(),
            "prefixes stay in user space"
        );
        g.tick(5000);
        assert!(g.admits(ip("2001:db8:1:2::78")), "expired");
        // An allow-listed address over the prefix's limit stays in; the rest of its
        // /64 does not get its exemption.
        let (g, mut rx) = guard(BanPolicy::default());
        g.tick(1000);
        g.replace(&[], &[allow("2001:db8:7:7::1/128")], &[], false);
        for _ in 0..300 {
            assert_eq!(g.admit(ip("2001:db8:7:7::1")), Admission::Admit);
        }
        // Its first 30 count (under its own limit it is not asked), the rest do not.
        let others: Vec<Admission> = (1..=170u16)
            .map(|i| g.admit(IpAddr::from([0x2001, 0xdb8, 7, 7, 0, 0, 1, i])))
            .collect();
        assert!(
            !others.contains(&Admission::Banned),
            "an allow-listed host's traffic does not ban its neighbours"
        );
        let others: Vec<Admission> = (171..=250u16)
            .map(|i| g.admit(IpAddr::from([0x2001, 0xdb8, 7, 7, 0, 0, 1, i])))
            .collect();
        assert!(others.contains(&Admission::Banned), "{others:?}");
        assert_eq!(
            bans(&mut rx).pop().map(|b| b.source).as_deref(),
            Some("2001:db8:7:7::/64")
        );
        assert!(
            g.admits(ip("2001:db8:7:7::1")),
            "the allow list wins over the prefix ban"
        );
        // Failures spread over a /64: 40 (4 × 10) ban the prefix.
        let (g, mut rx) = guard(BanPolicy::default());
        for i in 0..40u16 {
            g.auth_failure(
                IpAddr::from([0x2001, 0xdb8, 9, 9, 0, 0, 0, i]),
                "x",
                false,
                10,
            );
        }
        let b = bans(&mut rx).pop().expect("ban");
        assert_eq!(b.source, "2001:db8:9:9::/64");
        assert!(
            b.detail.contains("from addresses of this network"),
            "{}",
            b.detail
        );
        // ::1 counts as itself (and ::/64).
        let (g, mut rx) = guard(BanPolicy::default());
        for t in 0..10 {
            g.auth_failure(ip("::1"), "x", false, t);
        }
        assert_eq!(bans(&mut rx)[0].source, "::1");
    }

    #[test]
    fn a_gateway_is_held_to_its_own_limit_and_never_banned() {
        let (g, mut rx) = guard(BanPolicy {
            gateway_requests: 200,
            ..Default::default()
        });
        let (gw, office) = (ip("203.0.113.50"), ip("198.51.100.1"));
        // The gateway is allow-listed too: it stays a gateway.
        g.replace(
            &[],
            &[allow("198.51.100.0/24"), allow("203.0.113.0/24")],
            &[gw],
            false,
        );
        g.tick(100);
        let admitted = (0..5000)
            .filter(|_| g.admit(gw) == Admission::Admit)
            .count();
        // Its 200 a window, and then its share of the current second (200 / 10 s).
        assert_eq!(admitted, 200 + 20, "the limit holds");
        assert!(g.admits(gw), "never banned");
        assert_eq!(g.banned_count(), 0);
        assert_eq!(
            g.metrics.gateway_limited.load(Ordering::Relaxed),
            5000 - 220,
            "every drop counted"
        );
        let limited: Vec<_> = events(&mut rx)
            .into_iter()
            .filter(|e| matches!(e, Event::GatewayLimited { .. }))
            .collect();
        assert_eq!(limited.len(), 1, "one event a window: {limited:?}");
        // The next second lets its share through again.
        g.tick(101);
        assert_eq!(
            (0..100).filter(|_| g.admit(gw) == Admission::Admit).count(),
            20
        );
        // An allow-listed address that is no gateway is not limited.
        assert!((0..5000).all(|_| g.admit(office) == Admission::Admit));
        // Per address: another gateway has its own count, and its own exception.
        let mut p = BanPolicy::default();
        p.gateway_limits.insert("203.0.113.51".into(), 1000);
        let (g, _rx) = guard(p);
        g.replace(&[], &[], &[gw, ip("203.0.113.51")], false);
        g.tick(100);
        let count = |ip| {
            (0..20_000)
                .filter(|_| g.admit(ip) == Admission::Admit)
                .count()
        };
        assert_eq!(count(gw), 10_000 + 1000, "the default");
        assert_eq!(count(ip("203.0.113.51")), 1000 + 100, "its exception");
    }

    #[test]
    fn allow_listed_sources_are_not_counted_and_the_tables_are_bounded() {
        let (g, mut rx) = guard(BanPolicy {
            auth_failures: 1,
            ..Default::default()
        });
        g.replace(&[], &[allow("10.0.0.0/8")], &[], false);
        g.auth_failure(ip("10.1.2.3"), "x", true, 0);
        assert!(events(&mut rx).is_empty());
        let (many, _rx) = guard(BanPolicy {
            auth_failures: 2,
            ..Default::default()
        });
        for i in 0..(TABLE_CAPACITY as u32 + 1000) {
            let src = IpAddr::from(i.to_be_bytes());
            many.auth_failure(src, &format!("u{i}"), true, 0);
            many.admit(src);
        }
        let failures = many.failures.lock().expect("lock");
        assert!(failures.map.len() <= TABLE_CAPACITY && failures.order.len() <= TABLE_CAPACITY);
        let accounts = many.account_failures.lock().expect("lock");
        assert!(accounts.map.len() <= TABLE_CAPACITY);
        let flood = many.flood.lock().expect("lock");
        assert!(flood.current.len() <= TABLE_CAPACITY && flood.previous.len() <= TABLE_CAPACITY);
    }

    #[test]
    fn a_flood_from_a_stranger_is_silenced_then_banned_for_a_day() {
        let (g, mut rx) = guard(BanPolicy::default());
        g.tick(1000);
        let src = ip("192.0.2.66");
        for i in 1..=30 {
            assert_eq!(g.admit(src), Admission::Admit, "request {i}");
        }
        for i in 31..=50 {
            assert_eq!(g.admit(src), Admission::Silenced, "request {i}");
        }
        assert_eq!(
            events(&mut rx),
            vec![Event::Silenced {
                source: Source::host(src),
                requests: 31
            }],
            "one event per window, not per packet"
        );
        assert_eq!(
            g.admit(src),
            Admission::Banned,
            "the 51st request within 10 s"
        );
        let b = bans(&mut rx).pop().expect("ban");
        assert_eq!(
            (b.reason.as_str(), b.expires_at),
            ("flood.requests", 1000 + 86_400)
        );
        assert_eq!(g.admit(src), Admission::Banned);
        assert_eq!(g.metrics.silenced.load(Ordering::Relaxed), 20);

        // A steady rate below the silence rate is never limited: 2 per second for a minute.
        let (g, mut rx) = guard(BanPolicy::default());
        for t in 0..60 {
            g.tick(t);
            for _ in 0..2 {
                assert_eq!(g.admit(src), Admission::Admit, "at {t}");
            }
        }
        // Bursting just over the window boundary is still seen (the window slides).
        g.tick(69);
        for _ in 0..25 {
            g.admit(src);
        }
        g.tick(70);
        let after: Vec<Admission> = (0..25).map(|_| g.admit(src)).collect();
        assert!(after.contains(&Admission::Silenced), "{after:?}");
        assert!(bans(&mut rx).is_empty());
    }

    #[test]
    fn trusted_sources_get_far_higher_limits_and_allow_listed_ones_none() {
        let (g, mut rx) = guard(BanPolicy::default());
        g.tick(1000);
        let office = ip("198.51.100.20");
        g.auth_success(office, "alice1001", 990);
        for _ in 0..3000 {
            assert_eq!(g.admit(office), Admission::Admit);
        }
        for _ in 0..300 {
            assert_eq!(g.admit(office), Admission::Admit, "this second's share");
        }
        assert_eq!(g.admit(office), Admission::Silenced);
        let trunk = ip("10.9.9.9");
        g.replace(&[], &[allow("10.0.0.0/8")], &[], false);
        for _ in 0..100_000 {
            assert_eq!(g.admit(trunk), Admission::Admit);
        }
        assert!(bans(&mut rx).is_empty());
        // An office whose first phone logs in during a burst is trusted from then on.
        let (g, _rx) = guard(BanPolicy::default());
        let new_office = ip("198.51.100.21");
        for _ in 0..40 {
            g.admit(new_office);
        }
        assert_eq!(g.admit(new_office), Admission::Silenced);
        g.auth_success(new_office, "bob1002", 0);
        assert_eq!(g.admit(new_office), Admission::Admit);
    }

    #[test]
    fn guesses_spread_over_nodes_meet_the_same_account_limit() {
        // Two nodes share the counts through the store: each writes its deltas and
        // reads the other's sum (here handed over by hand).
        let (a, mut rx_a) = guard(BanPolicy::default());
        let (b, mut rx_b) = guard(BanPolicy::default());
        let alone = guard(BanPolicy::default()).0;
        for g in [&a, &b] {
            g.share_failures();
        }
        let alice = account("alice1001", false);
        let stranger = ip("203.0.113.1");
        for i in 0..10u8 {
            a.auth_failure(IpAddr::from([192, 0, 2, i]), "alice1001", true, 100);
            b.auth_failure(IpAddr::from([198, 51, 100, i]), "alice1001", true, 100);
            alone.auth_failure(IpAddr::from([198, 51, 100, i]), "alice1001", true, 100);
        }
        assert!(
            alone.take_failure_deltas().is_empty(),
            "a single node gathers nothing to share"
        );
        assert!(a.may_authenticate(stranger, &alice, 101), "10 of 20 on A");
        let from_a = a.take_failure_deltas();
        assert_eq!(from_a, vec![("alice1001".to_owned(), 1, 10)]);
        assert!(a.take_failure_deltas().is_empty(), "taken once");
        // B learns A's 10 on top of its own 10: the limit (20) is met on B.
        b.set_others_failures(vec![("alice1001".into(), 10)], 101);
        assert!(!b.may_authenticate(stranger, &alice, 101));
        assert_eq!(
            events(&mut rx_b),
            vec![Event::AccountProtected {
                auth_id: "alice1001".into(),
                failures: 20
            }]
        );
        // A learns B's; a failed write is kept for the next one.
        a.set_others_failures(vec![("alice1001".into(), 10)], 101);
        assert!(!a.may_authenticate(stranger, &alice, 101));
        assert_eq!(events(&mut rx_a).len(), 1);
        a.return_failure_deltas(from_a);
        assert_eq!(a.take_failure_deltas().len(), 1);
        // The control: a node alone with its 10 still lets the right password in.
        assert!(alone.may_authenticate(stranger, &alice, 101));
    }

    #[test]
    fn a_page_of_other_nodes_sums_merges_and_a_whole_sweep_replaces() {
        // A sweep over more accounts under attack than one read holds: each page adds
        // its accounts' sums and keeps the others'; the end of the sweep forgets the
        // accounts no longer failing.
        let (g, mut rx) = guard(BanPolicy::default());
        g.share_failures();
        let alice = account("alice1001", false);
        let bob = account("bob1002", false);
        let stranger = ip("203.0.113.1");
        g.merge_others_failures(vec![("alice1001".into(), 25)], 101);
        g.merge_others_failures(vec![("bob1002".into(), 25)], 101);
        assert!(
            !g.may_authenticate(stranger, &alice, 101),
            "the first page's"
        );
        assert!(
            !g.may_authenticate(stranger, &bob, 101),
            "the second page's"
        );
        assert_eq!(events(&mut rx).len(), 2, "each crossing reported once");
        g.merge_others_failures(vec![("alice1001".into(), 26)], 101);
        assert!(events(&mut rx).is_empty(), "already over the limit");
        // The sweep ends without bob: his failures aged out of the store.
        g.set_others_failures(vec![("alice1001".into(), 26)], 102);
        assert!(!g.may_authenticate(stranger, &alice, 102));
        assert!(g.may_authenticate(stranger, &bob, 102), "forgotten");
    }

    #[test]
    fn distributed_guessing_closes_the_account_to_strangers_only() {
        let (g, mut rx) = guard(BanPolicy::default());
        let alice = account("alice1001", false);
        let office = ip("198.51.100.20");
        g.auth_success(office, "alice1001", 0);
        g.replace(&[], &[allow("10.0.0.0/8")], &[], false);
        // A botnet: one guess from each of 20 addresses. No source fails often enough
        // to be banned.
        for i in 0..19u8 {
            g.auth_failure(IpAddr::from([192, 0, 2, i]), "alice1001", true, 100);
        }
        assert!(g.may_authenticate(ip("203.0.113.1"), &alice, 100));
        g.auth_failure(ip("192.0.2.19"), "alice1001", true, 100);
        assert_eq!(
            events(&mut rx),
            vec![Event::AccountProtected {
                auth_id: "alice1001".into(),
                failures: 20
            }]
        );
        let stranger = ip("203.0.113.1");
        assert!(
            !g.may_authenticate(stranger, &alice, 101),
            "the right password no longer works"
        );
        assert!(
            g.may_authenticate(office, &alice, 101),
            "the office still logs in"
        );
        assert!(
            g.may_authenticate(ip("10.1.1.1"), &alice, 101),
            "so does the allow list"
        );
        assert!(
            g.may_authenticate(stranger, &account("bob1002", false), 101),
            "other accounts are not affected"
        );
        // Failures from where alice logs in, and for unknown names, do not count.
        let (g2, mut rx2) = guard(BanPolicy::default());
        g2.auth_success(office, "alice1001", 0);
        for t in 0..100 {
            g2.auth_failure(office, "alice1001", true, t);
            g2.auth_failure(IpAddr::from([192, 0, 2, t as u8]), "nobody", false, t);
        }
        assert!(g2.may_authenticate(stranger, &alice, 100));
        assert!(events(&mut rx2).is_empty());
        // The protection ends when the failures age out.
        assert!(g.may_authenticate(stranger, &alice, 100 + 3600));
    }

    #[test]
    fn weak_accounts_log_in_only_from_trusted_sources() {
        let (g, mut rx) = guard(BanPolicy::default());
        let weak = account("1001", true);
        let src = ip("203.0.113.1");
        assert!(!g.may_authenticate(src, &weak, 0));
        g.refused(src, &weak, 0);
        g.refused(src, &weak, 10);
        assert_eq!(
            events(&mut rx),
            vec![Event::WeakRefused {
                auth_id: "1001".into(),
                source: src
            }],
            "logged once an hour"
        );
        g.replace(&[], &[allow("203.0.113.0/24")], &[], false);
        assert!(g.may_authenticate(src, &weak, 0));
        let (open, _rx) = guard(BanPolicy {
            weak_credentials: WeakCredentials::Allow,
            ..Default::default()
        });
        assert!(open.may_authenticate(src, &weak, 0));
    }

    #[test]
    fn the_kernel_gets_banned_ipv4_sources_but_never_allowed_ones() {
        let (g, _rx) = guard(BanPolicy::default());
        g.tick(10);
        let before = g.generation();
        g.replace(
            &[
                ban("192.0.2.1", 100),
                ban("10.0.0.1", 100),
                ban("2001:db8::1", 100),
                ban("192.0.2.2", 5),
            ],
            &[allow("10.0.0.0/8")],
            &[],
            false,
        );
        assert_ne!(g.generation(), before);
        assert_eq!(g.kernel_drop_list(), vec![Ipv4Addr::new(192, 0, 2, 1)]);
        let before = g.generation();
        g.scanner(ip("192.0.2.3"), "sipcli/v1.8", Proof::Spoofable);
        assert_ne!(g.generation(), before, "a new ban moves the generation");
        assert_eq!(g.kernel_drop_list().len(), 2);
    }

    #[test]
    fn decoys_ban_at_once() {
        let (g, mut rx) = guard(BanPolicy::default());
        let src = ip("192.0.2.9");
        assert!(!g.decoy(src, "alice1001", 5), "not a decoy");
        assert!(g.decoy(src, "admin", 5));
        let b = bans(&mut rx).pop().expect("ban");
        assert_eq!(
            (b.reason.as_str(), b.expires_at),
            ("decoy.auth", 5 + 604_800)
        );
        assert!(b.detail.contains("\"admin\""));
        g.replace(&[], &[allow("10.0.0.0/8")], &[], false);
        assert!(
            !g.decoy(ip("10.0.0.1"), "admin", 5),
            "the allow list is never banned"
        );
    }

    #[test]
    fn provisioning_probes_ban_at_the_threshold_but_never_the_allow_list() {
        let (g, _rx) = guard(BanPolicy {
            provisioning_probes: 3,
            ..Default::default()
        });
        let prober: IpAddr = "198.51.100.7".parse().expect("ip");
        assert_eq!(
            g.provisioning_probe(prober, 1000, false),
            ProbeVerdict::Counted
        );
        assert_eq!(
            g.provisioning_probe(prober, 1001, false),
            ProbeVerdict::Counted
        );
        assert!(g.admits(prober));
        assert_eq!(
            g.provisioning_probe(prober, 1002, false),
            ProbeVerdict::Banned
        );
        assert!(!g.admits(prober));
        assert_eq!(
            g.metrics.bans_by_reason[Reason::ProvisioningProbe as usize].load(Ordering::Relaxed),
            1
        );
        let office: IpAddr = "10.0.0.5".parse().expect("ip");
        g.replace(
            &[],
            &[store::guard::AllowRow {
                network: "10.0.0.0/8".into(),
                note: String::new(),
                created_at: 0,
            }],
            &[],
            false,
        );
        for t in 0..10 {
            assert_eq!(
                g.provisioning_probe(office, 2000 + t, false),
                ProbeVerdict::Counted
            );
        }
        assert!(g.admits(office) && g.provisioning_admits(office, 2010));
    }

    #[test]
    fn probes_from_a_phones_address_limit_provisioning_and_never_ban() {
        let (g, mut rx) = guard(BanPolicy {
            provisioning_probes: 3,
            provisioning_window_secs: 600,
            ..Default::default()
        });
        // Registered (the registrar knows a binding there)...
        let desk: IpAddr = "198.51.100.20".parse().expect("ip");
        for t in 0..2 {
            assert_eq!(
                g.provisioning_probe(desk, 1000 + t, true),
                ProbeVerdict::Counted
            );
        }
        assert_eq!(
            g.provisioning_probe(desk, 1002, true),
            ProbeVerdict::Limited
        );
        assert!(g.admits(desk), "SIP keeps answering the phone");
        assert!(
            !g.provisioning_admits(desk, 1003),
            "provisioning does not, for now"
        );
        assert!(g.provisioning_admits(desk, 1002 + 600), "on its own scale");
        // ...or where an account logged in lately.
        let office: IpAddr = "198.51.100.21".parse().expect("ip");
        g.auth_success(office, "alice1001", 1000);
        for t in 0..3 {
            let _ = g.provisioning_probe(office, 1000 + t, false);
        }
        assert!(g.admits(office) && !g.provisioning_admits(office, 1003));
        let said: Vec<serde_json::Value> = events(&mut rx)
            .into_iter()
            .map(|e| e.to_json(None))
            .collect();
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said.iter().all(|e| {
            e["event"] == "provisioning_limited"
                && e["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("not banned"))
        }));
        assert_eq!(
            g.metrics.bans_by_reason[Reason::ProvisioningProbe as usize].load(Ordering::Relaxed),
            0,
            "no ban"
        );
        // Control: the same probes from a stranger ban it.
        let stranger: IpAddr = "198.51.100.22".parse().expect("ip");
        for t in 0..3 {
            let _ = g.provisioning_probe(stranger, 1000 + t, false);
        }
        assert!(!g.admits(stranger));
    }

    #[test]
    fn the_accounts_under_attack_are_those_with_most_failures_in_the_window() {
        let (g, _rx) = guard(BanPolicy {
            auth_failures: 100,
            extension_failures: 5,
            extension_window_secs: 600,
            ..Default::default()
        });
        assert!(g.targeted_accounts(1000, 10).is_empty());
        for (i, (account, n)) in [("alice1001", 3), ("bob1002", 7), ("carol1003", 1)]
            .into_iter()
            .enumerate()
        {
            for t in 0..n {
                let src = IpAddr::from([203, 0, 113, u8::try_from(i * 10 + t).expect("u8")]);
                g.auth_failure(src, account, true, 1000);
            }
        }
        // An unknown user name is no account under attack.
        g.auth_failure(ip("203.0.113.99"), "nobody", false, 1000);
        assert_eq!(
            g.targeted_accounts(1000, 2),
            [("bob1002".to_string(), 5), ("alice1001".to_string(), 3)],
            "most first, stopped at the lockout threshold, the limit kept"
        );
        // Another node's failures add up; the window ages everything out.
        g.set_others_failures(vec![("carol1003".into(), 3)], 1001);
        let named = |v: &[(&str, u32)]| -> Vec<(String, u32)> {
            v.iter().map(|(a, n)| ((*a).to_string(), *n)).collect()
        };
        assert_eq!(
            g.targeted_accounts(1001, 3),
            named(&[("bob1002", 5), ("carol1003", 4), ("alice1001", 3)])
        );
        assert_eq!(
            g.targeted_accounts(1000 + 601, 10),
            [("carol1003".to_string(), 3)]
        );
    }
}
