//! Administrator credentials: argon2id password hashes, random tokens (sessions, CSRF,
//! API) stored only as SHA-256 digests, and the login lockout that refuses a source or
//! an account after repeated failures *before* any hash is computed. An attempt takes
//! its place in the lockout atomically before it is checked ([`Lockout::reserve`]), so
//! concurrent guesses cannot overtake the limit; `sipward admin unlock` lifts a lockout
//! of a running server through the store ([`request_unlock`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use ipnet::IpNet;

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

/// Argon2 verifications run at once at most (each takes ~30 ms of a core and ~19 MiB);
/// a login that cannot get one within [`VERIFY_WAIT`] is answered 429.
pub const MAX_VERIFYING: usize = 2;
pub const VERIFY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Recent failed logins, and logins being checked right now, per source and per
/// account. A source is an address, or its /64 for IPv6 (one site, however many
/// addresses it uses).
#[derive(Debug, Default)]
pub struct Lockout {
    sources: HashMap<IpNet, Tally>,
    accounts: HashMap<String, Tally>,
    /// The newest `sipward admin unlock` applied.
    unlocks_seen: i64,
}

#[derive(Debug, Default)]
struct Tally {
    failures: Vec<i64>,
    /// Attempts reserved and not settled: they count like failures until they are.
    checking: u32,
}

impl Tally {
    fn used(&mut self, now: i64) -> usize {
        recent(&mut self.failures, now);
        self.failures.len() + self.checking as usize
    }

    fn idle(&self, now: i64) -> bool {
        self.checking == 0 && self.failures.iter().all(|t| now - *t >= WINDOW_SECS)
    }
}

/// Why a login is refused before its password is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locked {
    Source { retry_in: i64 },
    Account { retry_in: i64 },
}

/// How a reserved attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    /// Never checked (no verification slot free): it counts as nothing.
    NotChecked,
}

fn recent(list: &mut Vec<i64>, now: i64) {
    list.retain(|t| now - *t < WINDOW_SECS);
}

fn retry_in(list: &[i64], now: i64) -> i64 {
    list.iter()
        .min()
        .map_or(WINDOW_SECS, |first| WINDOW_SECS - (now - first))
        .max(1)
}

/// The lockout's key for a source address.
pub fn source_key(ip: IpAddr) -> IpNet {
    let ip = ip.to_canonical();
    let len = if ip.is_ipv4() { 32 } else { 64 };
    IpNet::new(ip, len).map_or(IpNet::from(ip), |n| n.trunc())
}

impl Lockout {
    /// Takes a place for a login from `ip` for `account` at `now`, or says why not. An
    /// `account` that is no possible administrator name ([`name_ok`]) is tallied under
    /// one shared key: what a stranger types is never kept as it came (a name of
    /// megabytes, a new one each time, would make the table hold them). The
    /// place counts like a failure until [`Attempt::finish`] settles it, so N
    /// concurrent attempts can never pass a limit of fewer than N.
    pub fn reserve(
        lockout: &Arc<Mutex<Lockout>>,
        ip: IpAddr,
        account: &str,
        now: i64,
    ) -> Result<Attempt, Locked> {
        let key = source_key(ip);
        let account = if name_ok(account) { account } else { "" };
        let mut l = lockout.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = l.sources.get_mut(&key)
            && t.used(now) >= SOURCE_FAILURES
        {
            return Err(Locked::Source {
                retry_in: retry_in(&t.failures, now),
            });
        }
        if let Some(t) = l.accounts.get_mut(account)
            && t.used(now) >= ACCOUNT_FAILURES
        {
            return Err(Locked::Account {
                retry_in: retry_in(&t.failures, now),
            });
        }
        if l.sources.len() >= MAX_ENTRIES {
            l.sources.retain(|_, t| !t.idle(now));
        }
        if l.accounts.len() >= MAX_ENTRIES {
            l.accounts.retain(|_, t| !t.idle(now));
        }
        if l.sources.len() >= MAX_ENTRIES || l.accounts.len() >= MAX_ENTRIES {
            // Full of live entries: refuse rather than forget someone's failures.
            return Err(Locked::Source { retry_in: 60 });
        }
        l.sources.entry(key).or_default().checking += 1;
        l.accounts.entry(account.to_owned()).or_default().checking += 1;
        Ok(Attempt {
            lockout: lockout.clone(),
            source: key,
            account: account.to_owned(),
            now,
            done: false,
        })
    }

    fn settle(&mut self, source: IpNet, account: &str, outcome: Outcome, now: i64) {
        if let Some(t) = self.sources.get_mut(&source) {
            t.checking = t.checking.saturating_sub(1);
            match outcome {
                Outcome::Failed => t.failures.push(now),
                // A successful login clears its source's failures.
                Outcome::Succeeded => t.failures.clear(),
                Outcome::NotChecked => {}
            }
        }
        if let Some(t) = self.accounts.get_mut(account) {
            t.checking = t.checking.saturating_sub(1);
            if outcome == Outcome::Failed {
                t.failures.push(now);
                // Never more than the threshold's worth of times.
                if t.failures.len() > ACCOUNT_FAILURES {
                    t.failures.remove(0);
                }
            }
        }
    }

    /// Lifts the lockout of an administrator (`sipward admin unlock NAME`).
    pub fn unlock_account(&mut self, name: &str) {
        if let Some(t) = self.accounts.get_mut(name) {
            t.failures.clear();
        }
    }

    /// Lifts the lockout of a source (`sipward admin unlock --source IP`).
    pub fn unlock_source(&mut self, ip: IpAddr) {
        if let Some(t) = self.sources.get_mut(&source_key(ip)) {
            t.failures.clear();
        }
    }

    /// Applies the unlocks requested since the last call (newest id last).
    pub fn apply(&mut self, unlocks: &[Unlock]) {
        let seen = self.unlocks_seen;
        for u in unlocks.iter().filter(|u| u.id > seen) {
            if let Some(name) = &u.name {
                self.unlock_account(name);
            }
            if let Some(ip) = u.source {
                self.unlock_source(ip);
            }
            self.unlocks_seen = u.id;
        }
    }

    pub fn unlocks_seen(&self) -> i64 {
        self.unlocks_seen
    }
}

/// A login attempt with its place in the lockout. Dropped without [`Attempt::finish`]
/// (the client went away mid-check) it counts as a failure.
#[derive(Debug)]
pub struct Attempt {
    lockout: Arc<Mutex<Lockout>>,
    source: IpNet,
    account: String,
    now: i64,
    done: bool,
}

impl Attempt {
    pub fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.lockout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .settle(self.source, &self.account, outcome, self.now);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.done {
            self.lockout
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .settle(self.source, &self.account, Outcome::Failed, self.now);
        }
    }
}

/// A lockout lifted with `sipward admin unlock`: an administrator, a source, or both.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unlock {
    pub id: i64,
    pub name: Option<String>,
    pub source: Option<IpAddr>,
    pub at: i64,
}

/// The meta key holding the latest unlock requests (the running server applies them
/// at its next login attempt; every node sharing the database does).
pub const META_UNLOCKS: &str = "console_unlocks";
/// Unlock requests kept (older ones have long been applied).
const UNLOCKS_KEPT: usize = 50;

/// The unlock requests in the store, oldest first.
pub async fn unlocks(reg: &Registry) -> accounts::Result<Vec<Unlock>> {
    let mut conn = reg.store().conn().await?;
    let text = store::meta::get_meta(&mut conn, META_UNLOCKS).await?;
    Ok(text
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

/// Records an unlock request for the running server(s), with its audit-log entry.
pub async fn request_unlock(
    reg: &Registry,
    name: Option<&str>,
    source: Option<IpAddr>,
    now: i64,
) -> accounts::Result<Unlock> {
    let mut tx = reg.store().begin().await?;
    let mut list: Vec<Unlock> = store::meta::get_meta(&mut tx, META_UNLOCKS)
        .await?
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let unlock = Unlock {
        id: list.last().map_or(1, |u| u.id + 1),
        name: name.map(str::to_owned),
        source,
        at: now,
    };
    list.push(unlock.clone());
    if list.len() > UNLOCKS_KEPT {
        list.drain(..list.len() - UNLOCKS_KEPT);
    }
    let text = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
    store::meta::set_meta(&mut tx, META_UNLOCKS, &text).await?;
    let subject = match (&unlock.name, unlock.source) {
        (Some(n), _) => format!("admin:{n}"),
        (None, Some(ip)) => format!("source:{ip}"),
        (None, None) => "console".into(),
    };
    let entry = LogEntry {
        actor: "sipward admin unlock",
        action: "admin.unlocked",
        subject: &subject,
        detail: "console login lockout lifted",
    };
    reg.log_in(&mut tx, now, entry).await?;
    tx.commit().await?;
    Ok(unlock)
}

/// Whether `name` can be an administrator's: 1 to 64 letters, digits and `._-@`.
pub fn name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
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

    fn lockout() -> Arc<Mutex<Lockout>> {
        Arc::default()
    }

    /// Whether a login may be tried (the place is given back unchecked).
    fn may_try(l: &Arc<Mutex<Lockout>>, ip: IpAddr, name: &str, now: i64) -> bool {
        Lockout::reserve(l, ip, name, now)
            .map(|a| a.finish(Outcome::NotChecked))
            .is_ok()
    }

    fn fail(l: &Arc<Mutex<Lockout>>, ip: IpAddr, name: &str, now: i64) {
        Lockout::reserve(l, ip, name, now)
            .expect("allowed")
            .finish(Outcome::Failed);
    }

    #[test]
    fn the_sixth_try_from_a_source_is_refused_and_expires() {
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let l = lockout();
        for i in 0..SOURCE_FAILURES as i64 {
            fail(&l, ip, "admin", 100 + i);
        }
        assert!(matches!(
            Lockout::reserve(&l, ip, "admin", 110),
            Err(Locked::Source { .. })
        ));
        assert!(
            Lockout::reserve(&l, other, "admin", 110).is_ok(),
            "others still may"
        );
        assert!(Lockout::reserve(&l, ip, "admin", 100 + WINDOW_SECS + 10).is_ok());
    }

    #[test]
    fn a_name_no_administrator_can_have_is_not_kept_as_typed() {
        let l = lockout();
        for i in 0..4u8 {
            let ip = IpAddr::from([192, 0, 2, i]);
            let name = format!("{i}{}", "A".repeat(100_000));
            drop(Lockout::reserve(&l, ip, &name, 100));
        }
        let held = l.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            held.accounts.keys().all(|k| k.len() <= 64),
            "names kept as typed"
        );
        assert!(name_ok("ops.admin-2@site") && !name_ok("") && !name_ok("a b"));
    }

    #[test]
    fn concurrent_attempts_hold_their_place_before_any_check() {
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let l = lockout();
        // 50 at once: only 5 get to be checked.
        let held: Vec<_> = (0..50)
            .filter_map(|_| Lockout::reserve(&l, ip, "admin", 100).ok())
            .collect();
        assert_eq!(held.len(), SOURCE_FAILURES);
        // A place given back unchecked (no verification slot) counts as nothing...
        let mut held = held.into_iter();
        held.next().expect("one").finish(Outcome::NotChecked);
        assert!(Lockout::reserve(&l, ip, "admin", 100).is_ok());
        // ...one whose client went away counts as a failure.
        drop(held);
        assert!(Lockout::reserve(&l, ip, "admin", 101).is_err());
        // From many sources, the account's limit holds the same way.
        let l = lockout();
        let held: Vec<_> = (0..50u8)
            .filter_map(|i| Lockout::reserve(&l, IpAddr::from([10, 0, 0, i]), "admin", 100).ok())
            .collect();
        assert_eq!(held.len(), ACCOUNT_FAILURES);
    }

    #[test]
    fn an_account_under_distributed_guessing_is_refused() {
        let l = lockout();
        for i in 0..ACCOUNT_FAILURES {
            let ip = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            fail(&l, ip, "admin", 100);
        }
        let fresh: IpAddr = "192.0.2.9".parse().expect("ip");
        assert!(matches!(
            Lockout::reserve(&l, fresh, "admin", 101),
            Err(Locked::Account { .. })
        ));
        assert!(Lockout::reserve(&l, fresh, "ops", 101).is_ok());
    }

    #[test]
    fn unlocks_lift_a_source_or_an_account_once() {
        let ip: IpAddr = "2001:db8:1:2::7".parse().expect("ip");
        let l = lockout();
        for i in 0..SOURCE_FAILURES as i64 {
            // Addresses of one /64 are one source.
            fail(
                &l,
                IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0, i as u16]),
                "ops",
                100,
            );
        }
        assert!(!may_try(&l, ip, "admin", 101));
        let unlock = |id, name: Option<&str>, source| Unlock {
            id,
            name: name.map(str::to_owned),
            source,
            at: 0,
        };
        l.lock().expect("lock").apply(&[unlock(1, None, Some(ip))]);
        assert!(may_try(&l, ip, "admin", 101));
        for i in 0..ACCOUNT_FAILURES {
            fail(&l, IpAddr::from([10, 1, 0, i as u8]), "admin", 102);
        }
        assert!(!may_try(&l, "192.0.2.1".parse().expect("ip"), "admin", 103));
        let both = [unlock(1, None, Some(ip)), unlock(2, Some("admin"), None)];
        l.lock().expect("lock").apply(&both);
        assert_eq!(l.lock().expect("lock").unlocks_seen(), 2);
        assert!(may_try(&l, "192.0.2.1".parse().expect("ip"), "admin", 103));
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
