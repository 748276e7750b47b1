//! The guard: the first thing every packet meets. A banned source costs one hash lookup
//! before any parsing or allocation; allow-listed networks and gateway addresses are
//! never dropped, counted or banned. The ban and allow records are loaded from the store
//! and reloaded when they change, so a ban made with the CLI takes effect in the running
//! server within the reload interval.
//!
//! Rules, each with a stable reason id (see [`policy::ban::Reason`]):
//! - `auth.failures`: repeated failed authentication from one source, counted only for
//!   requests that answered a nonce issued to that very source (a spoofed UDP source
//!   never received one), escalating for repeat offenders;
//! - `flood.requests`: too many requests from a source where nothing ever
//!   authenticated (above a lower rate it is first silenced);
//! - `scanner.user_agent`: the User-Agent of a known scanner;
//! - `decoy.auth`: authenticating as a decoy user name;
//! - `manual`: banned with the CLI.
//!
//! Besides bans, an account under distributed guessing (many failures from sources it
//! never authenticated from) and an account with a weak password can authenticate only
//! from trusted sources; the answer to everyone else stays exactly the same.
//!
//! Every table keyed by a source or a user name is bounded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use ipnet::IpNet;
use policy::ban::{BanPolicy, FailureWindow, Reason, WeakCredentials, sliding_count};
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

/// A security event: one JSON line in the server's log each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A ban made here (to be persisted) or found in the store (made with the CLI).
    Ban { row: BanRow, from_store: bool },
    /// A ban removed from the store before it expired.
    Unban { source: IpAddr },
    /// A ban that ran out.
    Expired { source: IpAddr },
    /// A source over the silence rate: its requests go unanswered for now.
    Silenced { source: IpAddr, requests: u32 },
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
    /// An extension called an emergency number (always allowed; the administrator is told).
    EmergencyCall { number: String, dialled: String },
    /// An emergency call was refused: the extension, or the PBX, holds as many at once
    /// as the emergency limits allow.
    EmergencyRefused {
        number: String,
        breach: policy::dialplan::EmergencyBreach,
    },
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
            Event::Silenced { source, requests } => json!({
                "event": "silenced",
                "source": source.to_string(),
                "detail": format!("{requests} requests within the flood window from a source nothing authenticated from"),
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
            Event::EmergencyRefused { number, breach } => json!({
                "event": "emergency_refused",
                "extension": number,
                "reason": breach.id(),
                "detail": breach.describe(),
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
    /// Banned address -> expiry (epoch seconds).
    banned: HashMap<IpAddr, i64>,
    /// Bans imposed here and not yet seen back from the store.
    pending: HashSet<IpAddr>,
    allow: Vec<IpNet>,
    /// Gateway addresses: never banned, like the allow list.
    gateways: HashSet<IpAddr>,
    /// Address -> (bans within the repeat window, time of the last one), for escalation.
    history: HashMap<IpAddr, (u32, i64)>,
}

impl State {
    fn allowed(&self, ip: IpAddr) -> bool {
        self.gateways.contains(&ip) || self.allow.iter().any(|n| n.contains(&ip))
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

    /// Starts counting afresh for `key` (it stays in the table, so the order stays true).
    pub(crate) fn reset(&mut self, key: &K) {
        if let Some(w) = self.map.get_mut(key) {
            w.clear();
        }
    }
}

/// (address, auth ID) pairs that authenticated successfully, with their expiry. Keyed
/// by address first so that a refresh (every successful REGISTER) finds its entry
/// without allocating.
#[derive(Debug, Default)]
struct TrustTable {
    until: HashMap<IpAddr, HashMap<String, i64>>,
    pairs: usize,
    order: VecDeque<(IpAddr, String)>,
}

/// How a source is limited, decided when it first crosses the untrusted silence rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Trusted,
    Exempt,
}

#[derive(Debug, Default)]
struct FloodEntry {
    requests: u32,
    /// Only positive answers are remembered: an untrusted source is asked again, so an
    /// office becomes trusted the moment its first phone logs in.
    class: Option<Class>,
    silenced: bool,
}

/// Requests per source in the current and the previous fixed window. When the current
/// window holds [`TABLE_CAPACITY`] sources it is closed early, so memory stays bounded
/// (under a flood from that many addresses windows get shorter, never larger).
#[derive(Debug, Default)]
struct FloodTable {
    start: i64,
    current: HashMap<IpAddr, FloodEntry>,
    previous: HashMap<IpAddr, u32>,
}

impl FloodTable {
    fn roll(&mut self, ip: IpAddr, now: i64, window: i64) {
        let full = self.current.len() >= TABLE_CAPACITY && !self.current.contains_key(&ip);
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

#[derive(Debug, Default)]
pub struct Guard {
    state: RwLock<State>,
    /// A coarse clock (epoch seconds) refreshed by the reload loop, so the hot path
    /// needs no time call.
    now: AtomicI64,
    policy: BanPolicy,
    decoys: HashSet<String>,
    failures: Mutex<Windows<IpAddr>>,
    provisioning_probes: Mutex<Windows<IpAddr>>,
    account_failures: Mutex<Windows<String>>,
    /// Weak accounts refused lately: one event per account and hour, not per attempt.
    weak_noted: Mutex<HashMap<String, i64>>,
    trusted: Mutex<TrustTable>,
    flood: Mutex<FloodTable>,
    metrics: Arc<Metrics>,
    /// Where events go to be logged (and bans persisted); set by the server.
    events: OnceLock<mpsc::Sender<Event>>,
    /// Moves whenever the set of banned sources changes.
    generation: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Guard {
    pub fn new(policy: BanPolicy, metrics: Arc<Metrics>) -> Self {
        Self {
            decoys: policy.decoys.iter().cloned().collect(),
            policy,
            metrics,
            ..Self::default()
        }
    }

    pub fn policy(&self) -> &BanPolicy {
        &self.policy
    }

    /// Connects the channel events (and the bans to persist) go through.
    pub fn set_events(&self, tx: mpsc::Sender<Event>) {
        let _ = self.events.set(tx);
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
            eprintln!(
                "{}",
                json!({"event": "event_dropped", "dropped": e.to_json(None)})
            );
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

    /// Whether `ip` is banned now: one read lock and one hash lookup, nothing else.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let st = self.read();
        match st.banned.get(&ip) {
            None => true,
            Some(&expires) => expires <= self.now() || st.allowed(ip),
        }
    }

    /// The door: the ban check, then the flood limits. Counts what it drops.
    pub fn admit(&self, ip: IpAddr) -> Admission {
        if !self.admits(ip) {
            Metrics::inc(&self.metrics.dropped_banned);
            return Admission::Banned;
        }
        if self.policy.flood_requests == 0 {
            return Admission::Admit;
        }
        let now = self.now();
        let window = self.policy.flood_window_secs;
        let requests = {
            let mut t = lock(&self.flood);
            t.roll(ip, now, window);
            let previous = t.previous.get(&ip).copied().unwrap_or(0);
            let elapsed = now - t.start;
            let e = t.current.entry(ip).or_default();
            e.requests = e.requests.saturating_add(1);
            let requests = sliding_count(e.requests, previous, elapsed, window);
            if requests <= self.policy.silence_requests {
                return Admission::Admit;
            }
            if e.class.is_none() {
                e.class = if self.read().allowed(ip) {
                    Some(Class::Exempt)
                } else if self.trusted_anywhere(ip, now) {
                    Some(Class::Trusted)
                } else {
                    None
                };
            }
            let (silence, ban) = match e.class {
                Some(Class::Exempt) => return Admission::Admit,
                Some(Class::Trusted) => self.policy.flood_limits(true),
                None => self.policy.flood_limits(false),
            };
            if requests <= silence {
                return Admission::Admit;
            }
            if requests <= ban {
                let first = !e.silenced;
                e.silenced = true;
                drop(t);
                Metrics::inc(&self.metrics.silenced);
                if first {
                    self.emit(Event::Silenced {
                        source: ip,
                        requests,
                    });
                }
                return Admission::Silenced;
            }
            e.requests = 0;
            requests
        };
        self.impose(
            ip,
            Reason::Flood,
            now,
            |_| format!("{requests} requests within {window} s"),
            Some(self.policy.flood_ban_secs),
        );
        Metrics::inc(&self.metrics.dropped_banned);
        Admission::Banned
    }

    /// Moves the coarse clock and lets bans that ran out go (one event each).
    pub fn tick(&self, now: i64) {
        self.now.store(now, Ordering::Relaxed);
        let expired: Vec<IpAddr> = {
            let st = self.read();
            st.banned
                .iter()
                .filter(|(_, e)| **e <= now)
                .map(|(ip, _)| *ip)
                .collect()
        };
        if expired.is_empty() {
            return;
        }
        let mut st = self.write();
        for ip in &expired {
            st.banned.remove(ip);
            st.pending.remove(ip);
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
                .filter_map(|b| Some((b.source.parse::<IpAddr>().ok()?, b)))
        };
        let mut banned: HashMap<IpAddr, i64> = parsed()
            .filter(|(_, b)| b.expires_at > now)
            .map(|(ip, b)| (ip, b.expires_at))
            .collect();
        let mut history: HashMap<IpAddr, (u32, i64)> = parsed()
            .map(|(ip, b)| (ip, (u32::try_from(b.times).unwrap_or(1), b.last_seen)))
            .collect();
        let allow = allow
            .iter()
            .filter_map(|a| a.network.parse().ok())
            .collect();
        let mut st = self.write();
        let mut pending = std::mem::take(&mut st.pending);
        pending.retain(|ip| !banned.contains_key(ip));
        for ip in &pending {
            if let Some(e) = st.banned.get(ip) {
                banned.insert(*ip, *e);
            }
            if let Some(h) = st.history.get(ip) {
                history.insert(*ip, *h);
            }
        }
        let old = std::mem::take(&mut st.banned);
        self.generation.fetch_add(1, Ordering::Relaxed);
        *st = State {
            banned,
            pending,
            allow,
            gateways: gateways.iter().copied().collect(),
            history,
        };
        let mut events = Vec::new();
        if announce {
            for (ip, _) in old.iter().filter(|(_, e)| **e > now) {
                if !st.banned.contains_key(ip) {
                    events.push(Event::Unban { source: *ip });
                }
            }
            for (ip, b) in parsed().filter(|(_, b)| b.expires_at > now) {
                if !old.contains_key(&ip) {
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

    /// The banned IPv4 sources the kernel may drop by itself (not allow-listed, at most
    /// [`KERNEL_DROP_MAX`], those banned longest first).
    pub fn kernel_drop_list(&self) -> Vec<Ipv4Addr> {
        let now = self.now();
        let st = self.read();
        let mut v: Vec<(i64, Ipv4Addr)> = st
            .banned
            .iter()
            .filter(|(ip, e)| **e > now && !st.allowed(**ip))
            .filter_map(|(ip, e)| match ip {
                IpAddr::V4(v4) => Some((*e, *v4)),
                IpAddr::V6(_) => None,
            })
            .collect();
        drop(st);
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.truncate(KERNEL_DROP_MAX);
        v.into_iter().map(|(_, ip)| ip).collect()
    }

    /// Sources banned now.
    /// How many allow-list networks are in force.
    pub fn allowed_count(&self) -> usize {
        self.read().allow.len()
    }

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
        let until = now.saturating_add(self.policy.trusted_secs);
        let mut guard = lock(&self.trusted);
        let t: &mut TrustTable = &mut guard;
        if let Some(u) = t.until.get_mut(&ip).and_then(|m| m.get_mut(auth_id)) {
            *u = until;
            return;
        }
        if t.pairs >= TABLE_CAPACITY
            && let Some((old_ip, old_id)) = t.order.pop_front()
            && let Some(m) = t.until.get_mut(&old_ip)
        {
            if m.remove(&old_id).is_some() {
                t.pairs -= 1;
            }
            if m.is_empty() {
                t.until.remove(&old_ip);
            }
        }
        t.order.push_back((ip, auth_id.to_owned()));
        t.until
            .entry(ip)
            .or_default()
            .insert(auth_id.to_owned(), until);
        t.pairs += 1;
    }

    fn trusted(&self, ip: IpAddr, auth_id: &str, now: i64) -> bool {
        lock(&self.trusted)
            .until
            .get(&ip)
            .and_then(|m| m.get(auth_id))
            .is_some_and(|u| *u > now)
    }

    fn trusted_anywhere(&self, ip: IpAddr, now: i64) -> bool {
        lock(&self.trusted)
            .until
            .get(&ip)
            .is_some_and(|m| m.values().any(|u| *u > now))
    }

    /// Whether `account` may log in from `ip` now, its credentials being right. No when
    /// the source is not trusted for it and the account's password is weak (with
    /// `weak_credentials = "trusted-only"`) or the account is under distributed guessing.
    /// Called for wrong credentials too, so both take the same path.
    pub fn may_authenticate(&self, ip: IpAddr, account: &Account, now: i64) -> bool {
        if self.allowed(ip) || self.trusted(ip, &account.auth_id, now) {
            return true;
        }
        if account.weak && self.policy.weak_credentials == WeakCredentials::TrustedOnly {
            return false;
        }
        self.policy.extension_failures == 0
            || lock(&self.account_failures).count(
                &account.auth_id,
                now,
                self.policy.extension_window_secs,
            ) < self.policy.extension_failures
    }

    /// The right password was refused by [`Guard::may_authenticate`]: counted, and
    /// logged once an hour per account when the password is weak.
    pub fn refused(&self, ip: IpAddr, account: &Account, now: i64) {
        Metrics::inc(&self.metrics.refused_credentials);
        if account.weak && self.policy.weak_credentials == WeakCredentials::TrustedOnly {
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

    /// Counts a failed authentication for `auth_id` from `ip` (one that answered a nonce
    /// issued to `ip`; `known` when the auth ID is an account here). Bans the source when
    /// it has failed too often, and protects the account when it collects too many
    /// failures from untrusted sources. Not counted: allow-listed sources, and an auth
    /// ID failing where it has authenticated before (a phone that still has its old
    /// password must not get its office banned nor its account closed).
    pub fn auth_failure(&self, ip: IpAddr, auth_id: &str, known: bool, now: i64) {
        if self.allowed(ip) || self.trusted(ip, auth_id, now) {
            return;
        }
        let p = &self.policy;
        if known && p.extension_failures > 0 {
            let key = auth_id.to_owned();
            let mut t = lock(&self.account_failures);
            let before = t.count(&key, now, p.extension_window_secs);
            let after = t.record(&key, now, p.extension_window_secs, p.extension_failures);
            drop(t);
            if before < p.extension_failures && after >= p.extension_failures {
                Metrics::inc(&self.metrics.accounts_protected);
                self.emit(Event::AccountProtected {
                    auth_id: key,
                    failures: after,
                });
            }
        }
        let count = {
            let mut t = lock(&self.failures);
            let count = t.record(&ip, now, p.auth_window_secs, p.auth_failures);
            if count >= p.auth_failures {
                t.reset(&ip);
            }
            count
        };
        if count < p.auth_failures {
            return;
        }
        let window_min = p.auth_window_secs / 60;
        let hours = p.repeat_window_secs / 3600;
        self.impose(
            ip,
            Reason::AuthFailures,
            now,
            |n| {
                format!(
                    "{count} failed authentications within {window_min} minutes (ban {n} within {hours} hours)"
                )
            },
            None,
        );
    }

    /// Bans `ip` at once when its User-Agent names a known scanner (unless allow-listed
    /// or scanner bans are off). Returns whether it did.
    /// Runs on every request with a User-Agent: matching needs no lock, allocation or
    /// time call; only a match reads the (coarse) clock.
    pub fn scanner(&self, ip: IpAddr, user_agent: &str) -> bool {
        let Some(tool) = policy::scanner::scanner(user_agent) else {
            return false;
        };
        if !self.policy.ban_scanners || self.allowed(ip) {
            return false;
        }
        self.impose(
            ip,
            Reason::Scanner,
            self.now(),
            |_| format!("User-Agent of a scanner: {tool}"),
            Some(self.policy.scanner_ban_secs),
        );
        true
    }

    /// Counts a provisioning request for a file no phone has, or with a wrong login;
    /// bans the source at the threshold. Returns whether it banned.
    pub fn provisioning_probe(&self, ip: IpAddr, now: i64) -> bool {
        if self.allowed(ip) {
            return false;
        }
        let p = &self.policy;
        let count = {
            let mut t = lock(&self.provisioning_probes);
            let count = t.record(&ip, now, p.provisioning_window_secs, p.provisioning_probes);
            if count >= p.provisioning_probes {
                t.reset(&ip);
            }
            count
        };
        if count < p.provisioning_probes {
            return false;
        }
        let minutes = p.provisioning_window_secs / 60;
        self.impose(
            ip,
            Reason::ProvisioningProbe,
            now,
            |_| format!("{count} provisioning requests for unknown phones or with a wrong login within {minutes} minutes"),
            Some(p.provisioning_ban_secs),
        );
        true
    }

    /// Bans `ip` at once when `user` is a decoy (the caller has checked it is no account
    /// here). Returns whether it did.
    pub fn decoy(&self, ip: IpAddr, user: &str, now: i64) -> bool {
        if !self.decoys.contains(user) || self.allowed(ip) {
            return false;
        }
        self.impose(
            ip,
            Reason::Decoy,
            now,
            |_| format!("authenticated as the decoy user name {user:?}"),
            Some(self.policy.decoy_ban_secs),
        );
        true
    }

    /// Puts a ban in force in memory at once and hands it to the writer. The length is
    /// `fixed`, or else escalates with the source's recent bans.
    fn impose(
        &self,
        ip: IpAddr,
        reason: Reason,
        now: i64,
        detail: impl FnOnce(u32) -> String,
        fixed: Option<i64>,
    ) -> BanRow {
        let mut st = self.write();
        let n = self.policy.ban_number(st.history.get(&ip).copied(), now);
        let expires_at = now.saturating_add(fixed.unwrap_or_else(|| self.policy.ban_length(n)));
        st.banned.insert(ip, expires_at);
        st.pending.insert(ip);
        st.history.insert(ip, (n, now));
        drop(st);
        self.generation.fetch_add(1, Ordering::Relaxed);
        Metrics::inc(&self.metrics.bans_by_reason[reason as usize]);
        let row = BanRow {
            source: ip.to_string(),
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
        Account {
            kind: "ext",
            number: "1001".into(),
            auth_id: auth_id.into(),
            ha1_md5: String::new(),
            ha1_sha256: String::new(),
            weak,
            grace: None,
        }
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
        assert!(expired.contains(&Event::Expired { source: a }));
        g.tick(201);
        assert!(events(&mut rx).is_empty(), "one event per expiry");
    }

    #[test]
    fn the_store_wins_on_reload_but_fresh_bans_wait_for_it_and_changes_are_logged() {
        let (g, mut rx) = guard(BanPolicy::default());
        g.tick(10);
        let (cli, mine) = (ip("192.0.2.1"), ip("192.0.2.2"));
        g.replace(&[ban("192.0.2.1", 1000)], &[], &[], false);
        assert!(g.scanner(mine, "friendly-scanner"));
        assert_eq!(bans(&mut rx)[0].reason, "scanner.user_agent");
        // The CLI removed its ban; the store does not hold the scanner ban yet.
        g.replace(&[], &[], &[], true);
        assert_eq!(g.admit(cli), Admission::Admit);
        assert_eq!(
            g.admit(mine),
            Admission::Banned,
            "kept until the store has it"
        );
        assert_eq!(events(&mut rx), vec![Event::Unban { source: cli }]);
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
    fn the_trust_table_is_bounded() {
        let (g, _rx) = guard(BanPolicy::default());
        for i in 0..(TABLE_CAPACITY as u32 + 500) {
            g.auth_success(IpAddr::from(i.to_be_bytes()), "a", 0);
            g.auth_success(IpAddr::from(i.to_be_bytes()), "a", 1); // a refresh adds nothing
        }
        let t = g.trusted.lock().expect("lock");
        assert_eq!(t.pairs, TABLE_CAPACITY);
        assert_eq!(
            t.until.values().map(HashMap::len).sum::<usize>(),
            TABLE_CAPACITY
        );
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
                source: src,
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
        g.scanner(ip("192.0.2.3"), "sipcli/v1.8");
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
        assert!(!g.provisioning_probe(prober, 1000));
        assert!(!g.provisioning_probe(prober, 1001));
        assert!(g.admits(prober));
        assert!(g.provisioning_probe(prober, 1002));
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
            assert!(!g.provisioning_probe(office, 2000 + t));
        }
        assert!(g.admits(office));
    }
}
