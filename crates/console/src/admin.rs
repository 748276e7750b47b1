//! Administrator credentials: argon2id password hashes, random tokens (sessions, CSRF,
//! API) stored only as SHA-256 digests, and the login lockout that refuses a source or
//! an account after repeated failures *before* any hash is computed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Argon2, PasswordHash};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};

/// Failed logins from one source within [`WINDOW_SECS`] after which it is refused.
pub const SOURCE_FAILURES: usize = 5;
/// Failed logins for one account, from any sources, after which it is refused (higher:
/// one source must not be able to lock the administrator out).
pub const ACCOUNT_FAILURES: usize = 20;
pub const WINDOW_SECS: i64 = 900;
/// Entries kept per table: a flood of sources cannot grow memory without bound.
const MAX_ENTRIES: usize = 65_536;

/// An argon2id hash (PHC string) of `password` with a 16-byte salt from `rng`.
pub fn hash_password(password: &str, rng: &mut dyn CryptoRng) -> Option<String> {
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .ok()
        .map(|h: PasswordHash| h.to_string())
}

/// Whether `password` matches `hash`; with no hash (unknown administrator), the same
/// work against a stand-in so that both answers take as long.
pub fn verify_password(password: &str, hash: Option<&str>) -> bool {
    static STAND_IN: OnceLock<String> = OnceLock::new();
    let stand_in = STAND_IN.get_or_init(|| {
        let mut rng = rand_core::UnwrapErr(rand::rngs::SysRng);
        let random = token(&mut rng);
        hash_password(&random, &mut rng).unwrap_or_default()
    });
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), hash.unwrap_or(stand_in))
        .is_ok();
    ok && hash.is_some()
}

/// 32 random bytes as 64 hex digits.
pub fn token(rng: &mut dyn CryptoRng) -> String {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    hex::encode(b)
}

/// What the store keeps of a token.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Recent failed logins per source and per account.
#[derive(Debug, Default)]
pub struct Lockout {
    sources: HashMap<IpAddr, Vec<i64>>,
    accounts: HashMap<String, Vec<i64>>,
}

/// Why a login is refused before its password is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locked {
    Source { retry_in: i64 },
    Account { retry_in: i64 },
}

fn recent(list: &mut Vec<i64>, now: i64) {
    list.retain(|t| now - *t < WINDOW_SECS);
}

fn retry_in(list: &[i64], now: i64) -> i64 {
    list.iter()
        .min()
        .map_or(0, |first| WINDOW_SECS - (now - first))
        .max(1)
}

impl Lockout {
    /// Whether a login from `ip` for `account` may be tried now.
    pub fn check(&mut self, ip: IpAddr, account: &str, now: i64) -> Result<(), Locked> {
        if let Some(list) = self.sources.get_mut(&ip) {
            recent(list, now);
            if list.len() >= SOURCE_FAILURES {
                return Err(Locked::Source {
                    retry_in: retry_in(list, now),
                });
            }
        }
        if let Some(list) = self.accounts.get_mut(account) {
            recent(list, now);
            if list.len() >= ACCOUNT_FAILURES {
                return Err(Locked::Account {
                    retry_in: retry_in(list, now),
                });
            }
        }
        Ok(())
    }

    pub fn failed(&mut self, ip: IpAddr, account: &str, now: i64) {
        if self.sources.len() >= MAX_ENTRIES {
            self.sources
                .retain(|_, l| l.iter().any(|t| now - *t < WINDOW_SECS));
        }
        if self.sources.len() < MAX_ENTRIES {
            self.sources.entry(ip).or_default().push(now);
        }
        if self.accounts.len() >= MAX_ENTRIES {
            self.accounts
                .retain(|_, l| l.iter().any(|t| now - *t < WINDOW_SECS));
        }
        if self.accounts.len() < MAX_ENTRIES {
            let list = self.accounts.entry(account.to_owned()).or_default();
            list.push(now);
            // Never more than the threshold's worth of times.
            if list.len() > ACCOUNT_FAILURES {
                list.remove(0);
            }
        }
    }

    /// A successful login clears its source's failures.
    pub fn succeeded(&mut self, ip: IpAddr) {
        self.sources.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_per_salt() {
        let mut rng = rand_core::UnwrapErr(rand::rngs::SysRng);
        let a = hash_password("correct horse", &mut rng).expect("hash");
        let b = hash_password("correct horse", &mut rng).expect("hash");
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", Some(&a)));
        assert!(!verify_password("wrong horse", Some(&a)));
        assert!(!verify_password("correct horse", None));
    }

    #[test]
    fn the_sixth_try_from_a_source_is_refused_and_expires() {
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let mut l = Lockout::default();
        for i in 0..SOURCE_FAILURES as i64 {
            assert_eq!(l.check(ip, "admin", 100 + i), Ok(()));
            l.failed(ip, "admin", 100 + i);
        }
        assert!(matches!(
            l.check(ip, "admin", 110),
            Err(Locked::Source { .. })
        ));
        assert_eq!(l.check(other, "admin", 110), Ok(()), "others still may");
        assert_eq!(l.check(ip, "admin", 100 + WINDOW_SECS + 10), Ok(()));
    }

    #[test]
    fn an_account_under_distributed_guessing_is_refused() {
        let mut l = Lockout::default();
        for i in 0..ACCOUNT_FAILURES {
            let ip = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            l.failed(ip, "admin", 100);
        }
        let fresh: IpAddr = "192.0.2.9".parse().expect("ip");
        assert!(matches!(
            l.check(fresh, "admin", 101),
            Err(Locked::Account { .. })
        ));
        assert_eq!(l.check(fresh, "ops", 101), Ok(()));
    }

    #[test]
    fn tokens_are_random_and_stored_as_digests() {
        let mut rng = rand_core::UnwrapErr(rand::rngs::SysRng);
        let t = token(&mut rng);
        assert_eq!(t.len(), 64);
        assert_ne!(t, token(&mut rng));
        assert_eq!(token_digest(&t).len(), 64);
        assert_ne!(token_digest(&t), t);
    }
}
