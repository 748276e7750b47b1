//! Administrator credentials: argon2id password hashes, random tokens (sessions, CSRF,
//! API) stored only as SHA-256 digests, and the login lockout that refuses a source or
//! an account after repeated failures *before* any hash is computed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;

use accounts::Registry;
use accounts::audit_log::LogEntry;
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
/// Length of the console passwords sipward generates (the first administrator's, and
/// `sipward admin passwd` without a password).
pub const GENERATED_PASSWORD_LEN: usize = 20;
/// Entries kept per table: a flood of sources cannot grow memory without bound.
const MAX_ENTRIES: usize = 65_536;

/// Stores administrator `name`'s password hash (creating the administrator) and ends
/// its sessions, in one transaction with the audit-log entry that says so.
pub async fn store_password(
    reg: &Registry,
    name: &str,
    hash: &str,
    now: i64,
) -> accounts::Result<()> {
    let mut tx = reg.store().begin().await?;
    store::console::set_admin(&mut tx, name, hash, now).await?;
    let subject = format!("admin:{name}");
    let entry = LogEntry {
        actor: "sipward admin passwd",
        action: "admin.password_set",
        subject: &subject,
        detail: "console password set; sessions ended",
    };
    reg.log_in(&mut tx, now, entry).await?;
    tx.commit().await?;
    Ok(())
}

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

/// Seconds per TOTP step (RFC 6238's default, what authenticator apps use).
pub const TOTP_PERIOD: i64 = 30;

/// The 6-digit HOTP value (RFC 4226) of `secret` at `counter`, with HMAC-SHA1.
pub fn hotp(secret: &[u8], counter: u64) -> u32 {
    use hmac::{KeyInit, Mac};
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret) else {
        return u32::MAX; // unreachable: HMAC takes keys of any length
    };
    mac.update(&counter.to_be_bytes());
    let d = mac.finalize().into_bytes();
    let off = usize::from(d[19] & 0x0f);
    let bin = u32::from_be_bytes([d[off] & 0x7f, d[off + 1], d[off + 2], d[off + 3]]);
    bin % 1_000_000
}

/// The step a 6-digit `code` matches at `now` (one step of clock drift either way), if
/// any, and only if it is newer than `last_step` (a code is never accepted twice).
pub fn totp_step(secret: &[u8], code: &str, now: i64, last_step: i64) -> Option<i64> {
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let want: u32 = code.parse().ok()?;
    let step = now.div_euclid(TOTP_PERIOD);
    let mut found = None;
    for s in [step - 1, step, step + 1] {
        // Every candidate is computed: the time taken says nothing about which matched.
        let ok = u64::try_from(s).is_ok_and(|c| hotp(secret, c) == want);
        if ok && s > last_step {
            found = Some(s);
        }
    }
    found
}

/// RFC 4648 base32 without padding, as authenticator apps take secrets.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buf >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buf << (5 - bits)) & 31) as usize]));
    }
    out
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
    fn totp_matches_rfc_6238_and_refuses_replays() {
        // RFC 6238 appendix B, SHA-1 key, last 6 of the 8-digit values.
        let key = b"12345678901234567890";
        assert_eq!(hotp(key, 59 / 30), 287_082);
        assert_eq!(hotp(key, 1_111_111_109 / 30), 81_804);
        assert_eq!(hotp(key, 1_234_567_890 / 30), 5_924);
        assert_eq!(totp_step(key, "287082", 59, 0), Some(1));
        assert_eq!(
            totp_step(key, "287082", 59 + 30, 0),
            Some(1),
            "one step of drift"
        );
        assert_eq!(totp_step(key, "287082", 59 + 90, 0), None, "too old");
        assert_eq!(totp_step(key, "287082", 59, 1), None, "already used");
        assert_eq!(totp_step(key, "28708", 59, 0), None);
        assert_eq!(totp_step(key, "2870a2", 59, 0), None);
    }

    #[test]
    fn base32_matches_rfc_4648() {
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(
            base32(b"12345678901234567890"),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
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
