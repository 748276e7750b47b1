//! The guard: the first thing every packet meets. A banned source costs one hash lookup
//! before any parsing or allocation; allow-listed networks are never dropped. The state
//! is loaded from the store's ban and allow records and reloaded when they change, so a
//! ban made with the CLI takes effect in the running server within the reload interval.
//!
//! Automatic bans (failed authentication, floods, scanners, decoys) come next (#4); this
//! module is the mechanism they will use.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::RwLock;
use std::sync::atomic::{AtomicI64, Ordering};

use ipnet::IpNet;
use store::guard::{AllowRow, BanRow};

#[derive(Debug, Default)]
struct State {
    /// Banned address -> expiry (epoch seconds).
    banned: HashMap<IpAddr, i64>,
    allow: Vec<IpNet>,
}

#[derive(Debug, Default)]
pub struct Guard {
    state: RwLock<State>,
    /// A coarse clock (epoch seconds) refreshed by the reload loop, so the hot path
    /// needs no time call.
    now: AtomicI64,
}

impl Guard {
    /// Whether a packet from `ip` may be looked at at all.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        match st.banned.get(&ip) {
            None => true,
            Some(&expires) => {
                expires <= self.now.load(Ordering::Relaxed)
                    || st.allow.iter().any(|n| n.contains(&ip))
            }
        }
    }

    pub fn set_now(&self, now: i64) {
        self.now.store(now, Ordering::Relaxed);
    }

    /// Replaces the state with the store's records (rows that do not parse are skipped:
    /// the CLI validates them on the way in).
    pub fn replace(&self, bans: &[BanRow], allow: &[AllowRow]) {
        let banned = bans
            .iter()
            .filter_map(|b| Some((b.source.parse().ok()?, b.expires_at)))
            .collect();
        let allow = allow
            .iter()
            .filter_map(|a| a.network.parse().ok())
            .collect();
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = State { banned, allow };
    }

    pub fn banned_count(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .banned
            .len()
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
        g.set_now(200);
        assert!(g.admits(a), "expired");
        assert_eq!(g.banned_count(), 2);
    }
}
