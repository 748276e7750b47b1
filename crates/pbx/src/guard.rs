//! The guard: the first thing every packet meets. A banned source costs one hash lookup
//! before any parsing or allocation; allow-listed networks are never dropped or counted.
//! The state is loaded from the store's ban and allow records and reloaded when they
//! change, so a ban made with the CLI takes effect in the running server within the
//! reload interval.
//!
//! Automatic bans so far: repeated failed authentication (`auth.failures`), counted only
//! for requests that answered a nonce issued to that very source (a spoofed UDP source
//! never received one). Floods, scanners and decoys come next (#4) on the same mechanism.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};

use ipnet::IpNet;
use policy::ban::{BanPolicy, FailureWindow};
use store::guard::{AllowRow, BanRow};
use tokio::sync::mpsc;

/// Sources whose failures are tracked at once; the oldest is forgotten first, so a
/// flood from millions of addresses cannot exhaust memory.
pub const FAILURE_TABLE_CAPACITY: usize = 65_536;

#[derive(Debug, Default)]
struct State {
    /// Banned address -> expiry (epoch seconds).
    banned: HashMap<IpAddr, i64>,
    allow: Vec<IpNet>,
    /// Address -> (bans within the repeat window, time of the last one), for escalation.
    history: HashMap<IpAddr, (u32, i64)>,
}

impl State {
    fn allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Debug, Default)]
struct FailureTable {
    windows: HashMap<IpAddr, FailureWindow>,
    order: VecDeque<IpAddr>,
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

#[derive(Debug, Default)]
pub struct Guard {
    state: RwLock<State>,
    /// A coarse clock (epoch seconds) refreshed by the reload loop, so the hot path
    /// needs no time call.
    now: AtomicI64,
    policy: BanPolicy,
    failures: Mutex<FailureTable>,
    trusted: Mutex<TrustTable>,
    /// Where new bans go to be written to the store (set by the server).
    writer: OnceLock<mpsc::Sender<BanRow>>,
}

impl Guard {
    pub fn new(policy: BanPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// Connects the channel new bans are persisted through.
    pub fn set_writer(&self, tx: mpsc::Sender<BanRow>) {
        let _ = self.writer.set(tx);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a packet from `ip` may be looked at at all.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let st = self.read();
        match st.banned.get(&ip) {
            None => true,
            Some(&expires) => expires <= self.now.load(Ordering::Relaxed) || st.allowed(ip),
        }
    }

    pub fn set_now(&self, now: i64) {
        self.now.store(now, Ordering::Relaxed);
    }

    /// Replaces the state with the store's records. `bans` may include expired records:
    /// they feed escalation, not the ban set. Rows that do not parse are skipped (the CLI
    /// validates them on the way in).
    pub fn replace(&self, bans: &[BanRow], allow: &[AllowRow]) {
        let now = self.now.load(Ordering::Relaxed);
        let parsed = || {
            bans.iter()
                .filter_map(|b| Some((b.source.parse::<IpAddr>().ok()?, b)))
        };
        let banned = parsed()
            .filter(|(_, b)| b.expires_at > now)
            .map(|(ip, b)| (ip, b.expires_at))
            .collect();
        let history = parsed()
            .map(|(ip, b)| (ip, (u32::try_from(b.times).unwrap_or(1), b.last_seen)))
            .collect();
        let allow = allow
            .iter()
            .filter_map(|a| a.network.parse().ok())
            .collect();
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = State {
            banned,
            allow,
            history,
        };
    }

    /// Sources banned now.
    pub fn banned_count(&self) -> usize {
        let now = self.now.load(Ordering::Relaxed);
        self.read().banned.values().filter(|e| **e > now).count()
    }

    /// Records that `auth_id` authenticated from `ip`: the pair is trusted for a while.
    pub fn auth_success(&self, ip: IpAddr, auth_id: &str, now: i64) {
        let until = now.saturating_add(self.policy.trusted_secs);
        let mut guard = self.trusted.lock().unwrap_or_else(|p| p.into_inner());
        let t: &mut TrustTable = &mut guard;
        if let Some(u) = t.until.get_mut(&ip).and_then(|m| m.get_mut(auth_id)) {
            *u = until;
            return;
        }
        if t.pairs >= FAILURE_TABLE_CAPACITY
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
        let t = self.trusted.lock().unwrap_or_else(|p| p.into_inner());
        t.until
            .get(&ip)
            .and_then(|m| m.get(auth_id))
            .is_some_and(|u| *u > now)
    }

    /// Counts a failed authentication for `auth_id` from `ip` (one that answered a nonce
    /// issued to `ip`); bans the source at once when it has failed too often, and returns
    /// the ban. Not counted: allow-listed sources, and an auth ID failing where it has
    /// authenticated before (a phone that still has its old password must not get its
    /// office banned; guessing at that one extension from there is for the
    /// per-extension protection to stop).
    pub fn auth_failure(&self, ip: IpAddr, auth_id: &str, now: i64) -> Option<BanRow> {
        if self.read().allowed(ip) || self.trusted(ip, auth_id, now) {
            return None;
        }
        let count = {
            let mut t = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if !t.windows.contains_key(&ip) {
                if t.windows.len() >= FAILURE_TABLE_CAPACITY
                    && let Some(old) = t.order.pop_front()
                {
                    t.windows.remove(&old);
                }
                t.order.push_back(ip);
            }
            let count = t
                .windows
                .entry(ip)
                .or_default()
                .record(now, self.policy.auth_window_secs);
            if count >= self.policy.auth_failures {
                t.windows.remove(&ip);
            }
            count
        };
        if count < self.policy.auth_failures {
            return None;
        }
        let window_min = self.policy.auth_window_secs / 60;
        Some(self.impose(ip, "auth.failures", now, |n| {
            format!(
                "{count} failed authentications within {window_min} minutes (ban {n} within {} hours)",
                self.policy.repeat_window_secs / 3600
            )
        }, None))
    }

    /// Bans `ip` at once when its User-Agent names a known scanner (unless allow-listed
    /// or scanner bans are off). Returns the ban.
    /// Runs on every request with a User-Agent: matching needs no lock, allocation or
    /// time call; only a match reads the (coarse) clock.
    pub fn scanner(&self, ip: IpAddr, user_agent: &str) -> Option<BanRow> {
        let tool = policy::scanner::scanner(user_agent)?;
        let now = self.now.load(Ordering::Relaxed);
        if !self.policy.ban_scanners || self.read().allowed(ip) {
            return None;
        }
        Some(self.impose(
            ip,
            "scanner.user_agent",
            now,
            |_| format!("User-Agent of a scanner: {tool}"),
            Some(self.policy.scanner_ban_secs),
        ))
    }

    /// Puts a ban in force in memory at once and hands it to the writer. The length is
    /// `fixed`, or else escalates with the source's recent bans.
    fn impose(
        &self,
        ip: IpAddr,
        reason: &str,
        now: i64,
        detail: impl FnOnce(u32) -> String,
        fixed: Option<i64>,
    ) -> BanRow {
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        let n = self.policy.ban_number(st.history.get(&ip).copied(), now);
        let expires_at = now.saturating_add(fixed.unwrap_or_else(|| self.policy.ban_length(n)));
        st.banned.insert(ip, expires_at);
        st.history.insert(ip, (n, now));
        drop(st);
        let row = BanRow {
            source: ip.to_string(),
            reason: reason.to_owned(),
            detail: detail(n),
            first_seen: now,
            last_seen: now,
            expires_at,
            times: i64::from(n),
        };
        // The ban is in force in memory already; the store write happens off the packet path.
        if let Some(tx) = self.writer.get()
            && tx.try_send(row.clone()).is_err()
        {
            eprintln!("{{\"event\":\"ban_not_persisted\",\"source\":\"{ip}\"}}");
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(ip: &str, expires_at: i64) -> BanRow {
        BanRow {
            source: ip.into(),
            reason: "manual".into(),
            detail: String::new(),
            first_seen: 0,
            last_seen: 0,
            expires_at,
            times: 1,
        }
    }

    #[test]
    fn bans_expire_and_the_allow_list_wins() {
        let g = Guard::default();
        g.set_now(100);
        let a: IpAddr = "192.0.2.7".parse().expect("ip");
        let b: IpAddr = "198.51.100.1".parse().expect("ip");
        g.replace(
            &[ban("192.0.2.7", 200), ban("198.51.100.1", 200)],
            &[AllowRow {
                network: "198.51.100.0/24".into(),
                note: String::new(),
                created_at: 0,
            }],
        );
        assert!(!g.admits(a), "banned");
        assert!(g.admits(b), "allow-listed networks are never dropped");
        assert!(g.admits("203.0.113.9".parse().expect("ip")));
        assert_eq!(g.banned_count(), 2);
        g.set_now(200);
        assert!(g.admits(a), "expired");
        assert_eq!(g.banned_count(), 0);
    }

    #[test]
    fn repeated_failures_ban_and_escalate() {
        let g = Guard::new(BanPolicy::default());
        let ip: IpAddr = "203.0.113.5".parse().expect("ip");
        for i in 0..9 {
            assert!(g.auth_failure(ip, "x", i).is_none());
        }
        let first = g.auth_failure(ip, "x", 9).expect("the tenth failure bans");
        assert_eq!(
            (first.reason.as_str(), first.times, first.expires_at),
            ("auth.failures", 1, 9 + 3600)
        );
        g.set_now(10);
        assert!(!g.admits(ip));
        // Two more rounds within a day: the third ban lasts a week.
        let mut t = 4000;
        let mut last = first;
        for _ in 0..2 {
            for _ in 0..10 {
                t += 1;
                if let Some(b) = g.auth_failure(ip, "x", t) {
                    last = b;
                }
            }
        }
        assert_eq!(last.times, 3);
        assert_eq!(last.expires_at - t, 604_800);
    }

    #[test]
    fn a_stale_phone_does_not_get_its_office_banned() {
        let g = Guard::new(BanPolicy {
            auth_failures: 3,
            ..Default::default()
        });
        let office: IpAddr = "198.51.100.20".parse().expect("ip");
        g.auth_success(office, "alice1001", 0);
        for t in 1..100 {
            assert!(
                g.auth_failure(office, "alice1001", t).is_none(),
                "the stale phone's failures do not count"
            );
        }
        // Guessing another extension's password from the same address still counts...
        for t in 100..102 {
            assert!(g.auth_failure(office, "bob1002", t).is_none());
        }
        assert!(g.auth_failure(office, "bob1002", 102).is_some());
        // ...and the trust expires.
        let g = Guard::new(BanPolicy {
            auth_failures: 1,
            ..Default::default()
        });
        g.auth_success(office, "alice1001", 0);
        assert!(g.auth_failure(office, "alice1001", 604_801).is_some());
    }

    #[test]
    fn the_trust_table_is_bounded() {
        let g = Guard::new(BanPolicy::default());
        for i in 0..(FAILURE_TABLE_CAPACITY as u32 + 500) {
            g.auth_success(IpAddr::from(i.to_be_bytes()), "a", 0);
            g.auth_success(IpAddr::from(i.to_be_bytes()), "a", 1); // a refresh adds nothing
        }
        let t = g.trusted.lock().expect("lock");
        assert_eq!(t.pairs, FAILURE_TABLE_CAPACITY);
        assert_eq!(
            t.until.values().map(HashMap::len).sum::<usize>(),
            FAILURE_TABLE_CAPACITY
        );
    }

    #[test]
    fn allow_listed_sources_are_not_counted_and_the_table_is_bounded() {
        let g = Guard::new(BanPolicy {
            auth_failures: 1,
            ..Default::default()
        });
        g.replace(
            &[],
            &[AllowRow {
                network: "10.0.0.0/8".into(),
                note: String::new(),
                created_at: 0,
            }],
        );
        assert!(
            g.auth_failure("10.1.2.3".parse().expect("ip"), "x", 0)
                .is_none()
        );
        let many = Guard::new(BanPolicy {
            auth_failures: 2,
            ..Default::default()
        });
        for i in 0..(FAILURE_TABLE_CAPACITY as u32 + 1000) {
            many.auth_failure(IpAddr::from(i.to_be_bytes()), "x", 0);
        }
        assert!(many.failures.lock().expect("lock").windows.len() <= FAILURE_TABLE_CAPACITY);
    }
}
