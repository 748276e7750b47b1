//! The credential directory the registrar authenticates against: auth IDs, numbers and
//! HA1s held in memory (never passwords), reloaded whenever the store's registry version
//! moves, so a change made with the CLI takes effect in the running server.
//!
//! The HA1s are sealed at rest; each account keeps its sealed pair and opens it
//! (`accounts::credentials::Ha1Opener`) once, on first use or in the pass
//! ([`Directory::open_all`]) the server runs after it is ready, so a start with 10,000
//! accounts does not open 20,000 values before it answers. Until that pass is over, an
//! unknown user costs an opening too ([`Directory::as_unknown`]): a first login and an
//! unknown user take the same time. A reload reuses the opened pair of every account
//! whose sealed values did not change.
//!
//! Each account carries its credential generation; comparing two snapshots says which
//! extensions were removed or had their credentials changed ([`Directory::revocations`]),
//! and a binding is backed only while its generation is the account's (or that of the
//! account's open grace window, from the window's sources: [`Account::backs`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use accounts::credentials::{Credential, GraceCredential, Ha1Opener, Ha1s};
use policy::Secret;
use sip::digest::{Algorithm, ha1};

/// An account's HA1s as opened for the authenticator, and whether the password equals the
/// number or the auth ID (recognised from the HA1, without the password). Printed
/// redacted.
#[derive(Debug)]
pub struct AccountHa1s {
    pub md5: Secret,
    pub sha256: Secret,
    /// The password is the number or the auth ID.
    pub guessable: bool,
}

/// What every account's opening needs: the opener (`None` when the HA1s come opened)
/// and the realm the HA1s are over.
#[derive(Debug, Default)]
pub struct Opening {
    pub opener: Option<Ha1Opener>,
    pub realm: String,
}

/// An account's (or grace window's) HA1s, opened at most once: shared by the snapshots
/// of successive reloads while the sealed values stay the same.
pub struct Ha1Cell {
    ha1s: Ha1s,
    opening: Arc<Opening>,
    /// `Err` holds the AADs of the values that did not open.
    opened: OnceLock<Result<AccountHa1s, Vec<String>>>,
}

/// Never prints a sealed or opened value: only whether it is open.
impl std::fmt::Debug for Ha1Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ha1Cell")
            .field("open", &self.is_open())
            .finish_non_exhaustive()
    }
}

impl Ha1Cell {
    fn new(ha1s: Ha1s, opening: Arc<Opening>) -> Self {
        Ha1Cell {
            ha1s,
            opening,
            opened: OnceLock::new(),
        }
    }

    /// The HA1s, opened now if this is the first use; `number` and `auth_id` are the
    /// account's (the same for every call: a cell is reused only for the same ones).
    fn open(&self, number: &str, auth_id: &str) -> Result<&AccountHa1s, &[String]> {
        self.opened
            .get_or_init(|| open_ha1s(&self.opening, &self.ha1s, number, auth_id))
            .as_ref()
            .map_err(Vec::as_slice)
    }

    fn is_open(&self) -> bool {
        self.opened.get().is_some()
    }

    /// Opened, and some value did not open.
    fn failed(&self) -> bool {
        self.opened.get().is_some_and(Result::is_err)
    }
}

/// Opens HA1s and looks whether the password is the number or the auth ID: the whole
/// work of a first use, which an unknown user's dummy repeats.
fn open_ha1s(
    opening: &Opening,
    ha1s: &Ha1s,
    number: &str,
    auth_id: &str,
) -> Result<AccountHa1s, Vec<String>> {
    let opened = match (&opening.opener, ha1s) {
        (Some(o), ha1s) => o.open_ha1s(ha1s)?,
        (None, Ha1s::Opened(o)) => o.clone(),
        (None, Ha1s::Sealed(s)) => return Err(s.aads().to_vec()),
    };
    Ok(with_guessable(opened, &opening.realm, number, auth_id))
}

/// Whether the opened password is the number or the auth ID: two HA1s computed, both
/// compared (in constant time) whatever the first says.
fn with_guessable(
    opened: accounts::credentials::OpenedHa1s,
    realm: &str,
    number: &str,
    auth_id: &str,
) -> AccountHa1s {
    let md5 = |password: &str| ha1(Algorithm::Md5, auth_id, realm, password);
    let guessable = opened.md5.ct_eq(&md5(number)) | opened.md5.ct_eq(&md5(auth_id));
    AccountHa1s {
        md5: opened.md5,
        sha256: opened.sha256,
        guessable,
    }
}

/// An extension's previous password during its grace window after Re-Generate: HA1s
/// only, accepted only from the addresses its phones were registered from.
pub struct Grace {
    ha1s: Arc<Ha1Cell>,
    pub sources: Vec<IpAddr>,
    pub expires_at: i64,
    /// The credential generation of the old password: bindings made with it stay until
    /// the window ends.
    pub generation: i64,
    /// Set by the first registration with the new password; the store row is deleted
    /// behind it.
    pub ended: AtomicBool,
}

impl Grace {
    /// Whether the old password is accepted from `source` at `now`.
    pub fn applies(&self, source: IpAddr, now: i64) -> bool {
        now < self.expires_at
            && !self.ended.load(Ordering::Relaxed)
            && self.sources.contains(&source)
    }

    /// Ends the window; true the first time.
    pub fn end(&self) -> bool {
        !self.ended.swap(true, Ordering::Relaxed)
    }

    /// The old HA1s, opened on first use; `None` when they do not open.
    pub fn ha1s(&self) -> Option<&AccountHa1s> {
        self.ha1s.open("", "").ok()
    }
}

/// HA1s log in like passwords: never printed.
impl std::fmt::Debug for Grace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grace")
            .field("sources", &self.sources)
            .field("expires_at", &self.expires_at)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// One account that can authenticate.
#[derive(Clone)]
pub struct Account {
    /// `ext` or `gateway`.
    pub kind: &'static str,
    pub number: String,
    pub auth_id: String,
    pub sip_id: Option<String>,
    ha1s: Arc<Ha1Cell>,
    /// The password's score is below the policy's minimum (guessable).
    low_score: bool,
    /// The previous password's window after Re-Generate, if open.
    pub grace: Option<Arc<Grace>>,
    /// The credential generation bindings made by this login carry: the extension's
    /// (a login with the grace window's old password carries the window's, see
    /// [`Account::grace_login`]); for a gateway, one derived from its HA1, so that a new
    /// gateway password revokes too.
    pub generation: i64,
}

impl Account {
    /// The HA1s, opened on first use (and kept); `None` when they do not open (altered
    /// in the database): such an account cannot log in.
    pub fn ha1s(&self) -> Option<&AccountHa1s> {
        self.ha1s.open(&self.number, &self.auth_id).ok()
    }

    /// Whether a use before this one opened the HA1s (or found them unopenable): this
    /// use then costs no opening of its own ([`Directory::as_unknown`] pays for one).
    pub fn ha1s_tried(&self) -> bool {
        self.ha1s.is_open()
    }

    /// The password is weak: guessable (zxcvbn below the policy's minimum) or equal to
    /// the number or the auth ID (recognised from the HA1, which this opens if it is
    /// not open yet).
    pub fn weak(&self) -> bool {
        self.low_score || self.ha1s().is_some_and(|h| h.guessable)
    }

    /// Whether a binding made under `generation` from `source` is still backed by
    /// credentials this account has at `now`.
    pub fn backs(&self, generation: i64, source: IpAddr, now: i64) -> bool {
        generation == self.generation
            || self
                .grace
                .as_ref()
                .is_some_and(|g| g.generation == generation && g.applies(source, now))
    }

    /// This account as authenticated by the grace window's old password: what it
    /// registers carries the old generation, and goes when the window does.
    pub fn grace_login(self: &Arc<Self>) -> Arc<Account> {
        match &self.grace {
            Some(g) => Arc::new(Account {
                generation: g.generation,
                ..Account::clone(self)
            }),
            None => self.clone(),
        }
    }
}

/// Why an account's registrations and calls lose their footing on a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevocationReason {
    /// The extension (or gateway) is gone.
    Removed,
    /// Its credentials changed (Re-Generate, a new password or auth ID).
    CredentialsChanged,
}

impl RevocationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Removed => "removed",
            RevocationReason::CredentialsChanged => "credentials_changed",
        }
    }
}

/// An account whose old credentials no longer hold: everything they reached lets go
/// (the registrar drops the bindings they made; the call path ends its calls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// The extension number (or a gateway's virtual extension number).
    pub number: String,
    /// `ext` or `gateway`.
    pub kind: &'static str,
    pub reason: RevocationReason,
}

/// A stand-in credential generation for a gateway (which has no stored one): derived
/// from its HA1, so it moves exactly when the gateway's credentials (or the realm) do.
fn gateway_generation(ha1_md5: &str) -> i64 {
    // FNV-1a: stable across processes (unlike the std hasher), and no secret is at
    // stake (the opened HA1 is in memory beside it; a gateway's bindings, and so this
    // value, are never stored).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ha1_md5.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Negative, so it never equals an extension's generation (those count up from 1).
    i64::from_ne_bytes(h.to_ne_bytes()) | i64::MIN
}

/// HA1s log in like passwords: never printed.
impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("kind", &self.kind)
            .field("number", &self.number)
            .field("auth_id", &self.auth_id)
            .field("low_score", &self.low_score)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

/// An immutable snapshot; replaced whole on reload.
#[derive(Default)]
pub struct Directory {
    by_auth_id: HashMap<String, Arc<Account>>,
    /// A registrable user part (number or SIP ID) to the extension number.
    by_user: HashMap<String, String>,
    by_number: HashMap<String, Arc<Account>>,
    /// What opens the HA1s.
    opening: Arc<Opening>,
    /// Every account's and window's HA1s have been opened (or failed to):
    /// [`Directory::open_all`] is over.
    opened_all: AtomicBool,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("by_auth_id", &self.by_auth_id)
            .field("opened_all", &self.opened_all)
            .finish_non_exhaustive()
    }
}

impl Directory {
    /// Builds the snapshot from opened HA1s; `realm` and `min_score` decide which
    /// passwords are weak.
    pub fn from_rows(rows: Vec<Credential>, realm: &str, min_score: u8) -> Self {
        Self::with_graces(rows, Vec::new(), realm, min_score)
    }

    /// Builds the snapshot from opened HA1s with the open grace windows (matched by
    /// number and auth ID).
    pub fn with_graces(
        rows: Vec<Credential>,
        graces: Vec<GraceCredential>,
        realm: &str,
        min_score: u8,
    ) -> Self {
        let opening = Arc::new(Opening {
            opener: None,
            realm: realm.to_owned(),
        });
        Self::load(rows, graces, opening, min_score, None).0
    }

    /// Builds the snapshot from HA1s as the store hands them over (sealed), opened by
    /// `opening`: the gateways' now (a gateway's generation derives from its HA1; they
    /// are a handful), everything else on first use or in [`Directory::open_all`]. An
    /// account or window of `previous` with the same sealed values keeps its opened HA1s.
    /// Returns the AADs of gateway values that did not open (those gateways are left
    /// out, as they cannot log in).
    pub fn load(
        rows: Vec<Credential>,
        graces: Vec<GraceCredential>,
        opening: Arc<Opening>,
        min_score: u8,
        previous: Option<&Directory>,
    ) -> (Self, Vec<String>) {
        let mut graces: HashMap<String, GraceCredential> =
            graces.into_iter().map(|g| (g.number.clone(), g)).collect();
        let mut unopened = Vec::new();
        let mut accounts = Vec::with_capacity(rows.len());
        let all_open = opening.opener.is_none();
        for r in rows {
            let before = previous.and_then(|p| p.by_number.get(&r.number));
            let cell = match before {
                Some(b) if b.kind == r.kind && b.auth_id == r.auth_id && b.ha1s.ha1s == r.ha1s => {
                    b.ha1s.clone()
                }
                _ => Arc::new(Ha1Cell::new(r.ha1s, opening.clone())),
            };
            let grace = match graces.remove(&r.number) {
                Some(g) if r.kind == "ext" && g.auth_id == r.auth_id => {
                    let was = before
                        .and_then(|b| b.grace.as_ref())
                        .filter(|w| w.ha1s.ha1s == g.ha1s);
                    // A window the new password's first login ended stays ended, though
                    // its store row is deleted only behind that login: a reload in
                    // between must not let the old password back in.
                    let ended = was.is_some_and(|w| w.ended.load(Ordering::Relaxed));
                    Some(Arc::new(Grace {
                        ha1s: was
                            .map(|w| w.ha1s.clone())
                            .unwrap_or_else(|| Arc::new(Ha1Cell::new(g.ha1s, opening.clone()))),
                        sources: g
                            .sources
                            .split(',')
                            .filter_map(|s| s.parse().ok())
                            .collect(),
                        expires_at: g.expires_at,
                        generation: g.generation,
                        ended: AtomicBool::new(ended),
                    }))
                }
                _ => None,
            };
            let generation = if r.kind == "gateway" {
                match cell.open(&r.number, &r.auth_id) {
                    Ok(h) => gateway_generation(h.md5.expose()),
                    Err(aads) => {
                        unopened.extend_from_slice(aads);
                        continue;
                    }
                }
            } else {
                r.credential_generation
            };
            accounts.push(Arc::new(Account {
                generation,
                grace,
                low_score: r.password_score < min_score,
                kind: r.kind,
                number: r.number,
                auth_id: r.auth_id,
                sip_id: r.sip_id,
                ha1s: cell,
            }));
        }
        let d = Directory::index(accounts, opening, all_open);
        (d, unopened)
    }

    /// The maps over `accounts`.
    fn index(accounts: Vec<Arc<Account>>, opening: Arc<Opening>, opened_all: bool) -> Self {
        let mut d = Directory {
            opening,
            opened_all: AtomicBool::new(opened_all),
            ..Directory::default()
        };
        // A SIP ID that is another extension's number (data from before the identity
        // check, reported by the audit as ext.identity_collision) never takes that
        // number's registrations and calls: numbers win.
        let mut sip_ids = Vec::new();
        for acc in accounts {
            d.by_user.insert(acc.number.clone(), acc.number.clone());
            if let Some(s) = &acc.sip_id {
                sip_ids.push((s.clone(), acc.number.clone()));
            }
            d.by_number.insert(acc.number.clone(), acc.clone());
            d.by_auth_id.insert(acc.auth_id.clone(), acc);
        }
        for (sip_id, number) in sip_ids {
            d.by_user.entry(sip_id).or_insert(number);
        }
        d
    }

    /// Opens every account's and grace window's HA1s not opened yet (tens of
    /// milliseconds for 10,000 accounts, on the caller's thread: run it off the SIP
    /// threads), and
    /// returns the AADs of the values that did not open. From then on an unknown user
    /// costs no dummy opening ([`Directory::as_unknown`]).
    pub fn open_all(&self) -> Vec<String> {
        let mut unopened = Vec::new();
        let mut numbers: Vec<&String> = self.by_number.keys().collect();
        numbers.sort();
        for n in numbers {
            let Some(a) = self.by_number.get(n) else {
                continue;
            };
            if let Err(aads) = a.ha1s.open(&a.number, &a.auth_id) {
                unopened.extend_from_slice(aads);
            }
            if let Some(g) = &a.grace
                && let Err(aads) = g.ha1s.open("", "")
            {
                unopened.extend_from_slice(aads);
            }
        }
        self.opened_all.store(true, Ordering::Release);
        unopened
    }

    /// The snapshot without the accounts, and the grace windows, whose HA1s did not
    /// open (after [`Directory::open_all`]): what a load leaves out, as such an account
    /// cannot log in. `None` when every value opened.
    pub fn without_unopened(&self) -> Option<Directory> {
        let any = self
            .by_number
            .values()
            .any(|a| a.ha1s.failed() || a.grace.as_ref().is_some_and(|g| g.ha1s.failed()));
        any.then(|| self.keeping(|c| !c.failed()))
    }

    /// A copy holding the accounts, and grace windows, whose HA1s `keep` keeps.
    pub fn keeping(&self, keep: impl Fn(&Ha1Cell) -> bool) -> Directory {
        let mut accounts: Vec<Arc<Account>> = self
            .by_number
            .values()
            .filter(|a| keep(&a.ha1s))
            .map(|a| match &a.grace {
                Some(g) if !keep(&g.ha1s) => Arc::new(Account {
                    grace: None,
                    ..Account::clone(a)
                }),
                _ => a.clone(),
            })
            .collect();
        // The order a load has (by number), so SIP IDs resolve alike.
        accounts.sort_by(|a, b| a.number.cmp(&b.number));
        Directory::index(
            accounts,
            self.opening.clone(),
            self.opened_all.load(Ordering::Acquire),
        )
    }

    /// The work a first login does, while some HA1s may still be unopened, for a user
    /// the directory does not hold or an account whose HA1s an earlier use opened: opens
    /// the dummy pair (and looks at it as at a real one), so that until the pass after
    /// ready is over every attempt costs one opening, and an unknown user, an account's
    /// first login and its later ones take the same time.
    pub fn as_unknown(&self, user: &str) {
        if self.opened_all.load(Ordering::Acquire) {
            return;
        }
        if let Some(opener) = &self.opening.opener
            && let Some(dummy) = opener.open_dummy()
        {
            let opened = with_guessable(dummy, &self.opening.realm, user, user);
            std::hint::black_box(opened.guessable);
        }
    }

    /// Whether every HA1 has been opened (or found unopenable).
    pub fn opened_all(&self) -> bool {
        self.opened_all.load(Ordering::Acquire)
    }

    /// How many accounts' HA1s are open: for tests and the operator's figures.
    pub fn opened_count(&self) -> usize {
        self.by_number.values().filter(|a| a.ha1s.is_open()).count()
    }

    pub fn account(&self, auth_id: &str) -> Option<&Arc<Account>> {
        self.by_auth_id.get(auth_id)
    }

    /// The account number a To/AOR user part names (its number or SIP ID): what a
    /// REGISTER may bind, gateways' virtual numbers included.
    pub fn number_for_user(&self, user: &str) -> Option<&str> {
        self.by_user.get(user).map(String::as_str)
    }

    /// The extension a dialled user part names. Never a gateway: a gateway is a trunk,
    /// its virtual number is not a user anyone can call, and calls reach it only
    /// through a route.
    pub fn extension_for_user(&self, user: &str) -> Option<&str> {
        let number = self.by_user.get(user)?;
        self.by_number
            .get(number)
            .filter(|a| a.kind == "ext")
            .map(|a| a.number.as_str())
    }

    /// The auth ID of the account with this number.
    pub fn auth_id_of(&self, number: &str) -> Option<&str> {
        self.by_number.get(number).map(|a| a.auth_id.as_str())
    }

    /// The account with this (extension or gateway virtual) number.
    pub fn by_number(&self, number: &str) -> Option<&Arc<Account>> {
        self.by_number.get(number)
    }

    /// The accounts of `self` (the snapshot before a reload) that `new` removed or gave
    /// new credentials, in number order: what the runtime must let go of.
    pub fn revocations(&self, new: &Directory) -> Vec<Revocation> {
        let mut out: Vec<Revocation> = self
            .by_number
            .values()
            .filter_map(|old| {
                let reason = match new.by_number.get(&old.number) {
                    None => RevocationReason::Removed,
                    Some(n) if n.kind != old.kind => RevocationReason::Removed,
                    Some(n) if n.generation != old.generation => {
                        RevocationReason::CredentialsChanged
                    }
                    Some(_) => return None,
                };
                Some(Revocation {
                    number: old.number.clone(),
                    kind: old.kind,
                    reason,
                })
            })
            .collect();
        out.sort_by(|a, b| a.number.cmp(&b.number));
        out
    }

    /// The numbers of extensions (not gateways).
    pub fn extension_numbers(&self) -> impl Iterator<Item = &str> {
        self.by_number
            .values()
            .filter(|a| a.kind == "ext")
            .map(|a| a.number.as_str())
    }

    pub fn len(&self) -> usize {
        self.by_auth_id.len()
    }

    /// The earliest end of a grace window after `after`: when it comes, the bindings the
    /// window kept lose their footing even though no reload says so.
    pub fn next_grace_end(&self, after: i64) -> Option<i64> {
        self.by_number
            .values()
            .filter_map(|a| a.grace.as_ref().map(|g| g.expires_at))
            .filter(|t| *t > after)
            .min()
    }

    pub fn is_empty(&self) -> bool {
        self.by_auth_id.is_empty()
    }
}

/// The current snapshot, swapped atomically by the reloader.
#[derive(Debug, Default)]
pub struct DirectoryCache {
    current: RwLock<Arc<Directory>>,
}

impl DirectoryCache {
    pub fn get(&self) -> Arc<Directory> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn replace(&self, d: Directory) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(number: &str, auth_id: &str, password: &str, score: u8) -> Credential {
        Credential {
            kind: "ext",
            number: number.into(),
            auth_id: auth_id.into(),
            sip_id: None,
            ha1s: accounts::credentials::Ha1s::opened(
                policy::Secret::new(ha1(Algorithm::Md5, auth_id, "sipward", password)),
                policy::Secret::new(ha1(Algorithm::Sha256, auth_id, "sipward", password)),
            ),
            password_score: score,
            credential_generation: 1,
        }
    }

    #[test]
    fn weak_passwords_are_recognised_without_the_password() {
        let d = Directory::from_rows(
            vec![
                row("1001", "alice1001", "Zq8xLmTr4wPyK7vB2", 4),
                row("1002", "bob1002", "1002", 4),
                row("1003", "carol1003", "carol1003", 4),
                row("1004", "dave1004", "summer2024", 1),
            ],
            "sipward",
            3,
        );
        let weak = |id: &str| d.account(id).expect("account").weak();
        assert!(!weak("alice1001"));
        assert!(weak("bob1002"), "equals the number");
        assert!(weak("carol1003"), "equals the auth ID");
        assert!(weak("dave1004"), "guessable");
        assert_eq!(d.auth_id_of("1002"), Some("bob1002"));
        assert_eq!(d.auth_id_of("1999"), None);
    }

    #[test]
    fn revocations_name_removed_and_changed_accounts_only() {
        let strong = "Zq8xLmTr4wPyK7vB2";
        let gw = |password: &str| Credential {
            kind: "gateway",
            credential_generation: 0,
            ..row("4001", "gw4001", password, 4)
        };
        let old = Directory::from_rows(
            vec![
                row("1001", "a1001", strong, 4),
                row("1002", "b1002", strong, 4),
                row("1003", "c1003", strong, 4),
                gw(strong),
            ],
            "sipward",
            3,
        );
        let mut changed = row("1002", "b1002", strong, 4);
        changed.credential_generation = 7;
        let new = Directory::from_rows(
            vec![
                row("1001", "a1001", strong, 4),
                changed,
                gw("Another-Gw-Passw0rd"),
            ],
            "sipward",
            3,
        );
        let r = old.revocations(&new);
        let got: Vec<(&str, RevocationReason)> =
            r.iter().map(|r| (r.number.as_str(), r.reason)).collect();
        assert_eq!(
            got,
            vec![
                ("1002", RevocationReason::CredentialsChanged),
                ("1003", RevocationReason::Removed),
                ("4001", RevocationReason::CredentialsChanged),
            ]
        );
        assert!(new.revocations(&new).is_empty(), "control: nothing moved");
    }

    #[test]
    fn a_binding_is_backed_by_its_generation_or_by_the_grace_window_from_its_sources() {
        let phone: IpAddr = "127.0.0.2".parse().expect("ip");
        let elsewhere: IpAddr = "127.0.0.3".parse().expect("ip");
        let mut r = row("1001", "a1001", "Zq8xLmTr4wPyK7vB2", 4);
        r.credential_generation = 5;
        let grace = GraceCredential {
            number: "1001".into(),
            auth_id: "a1001".into(),
            ha1s: accounts::credentials::Ha1s::opened(
                policy::Secret::new("x"),
                policy::Secret::new("y"),
            ),
            sources: "127.0.0.2".into(),
            expires_at: 100,
            generation: 4,
        };
        let d = Directory::with_graces(vec![r], vec![grace], "sipward", 3);
        let a = d.by_number("1001").expect("account");
        assert!(a.backs(5, elsewhere, 0), "the current generation, anywhere");
        assert!(a.backs(4, phone, 0), "the old one from the window's source");
        assert!(!a.backs(4, elsewhere, 0), "not from elsewhere");
        assert!(!a.backs(4, phone, 100), "not once the window is over");
        assert!(!a.backs(3, phone, 0), "an older generation never");
        assert_eq!(a.grace_login().generation, 4);
        assert!(a.grace.as_ref().expect("grace").end());
        assert!(
            !a.backs(4, phone, 0),
            "not once a new login ended the window"
        );
    }

    #[test]
    fn a_sip_id_never_takes_another_extensions_number() {
        // Rows as the store returns them, the colliding SIP ID last and first.
        for order in [[0, 1], [1, 0]] {
            let rows = [
                row("2102", "a2102", "Zq8xLmTr4wPyK7vB2", 4),
                Credential {
                    sip_id: Some("2102".into()),
                    ..row("2104", "a2104", "Nq4Zt8LmXw2Kp7RbQ", 4)
                },
            ];
            let d = Directory::from_rows(
                order.iter().map(|i| rows[*i].clone()).collect(),
                "sipward",
                3,
            );
            assert_eq!(d.number_for_user("2102"), Some("2102"), "{order:?}");
            assert_eq!(d.number_for_user("2104"), Some("2104"));
        }
    }

    #[test]
    fn a_gateway_registers_on_its_number_but_is_no_extension() {
        let mut gw = row("800", "gw-pstn", "Zq8xLmTr4wPyK7vB2", 4);
        gw.kind = "gateway";
        let d = Directory::from_rows(
            vec![row("1001", "alice1001", "Zq8xLmTr4wPyK7vB2", 4), gw],
            "sipward",
            3,
        );
        assert_eq!(d.number_for_user("800"), Some("800"), "it may register");
        assert_eq!(d.extension_for_user("800"), None, "it cannot be dialled");
        assert_eq!(d.extension_for_user("1001"), Some("1001"));
    }

    #[test]
    fn debug_output_never_shows_an_ha1() {
        let d = Directory::from_rows(
            vec![row("1001", "alice1001", "Zq8xLmTr4wPyK7vB2", 4)],
            "sipward",
            3,
        );
        let a = d.account("alice1001").expect("account");
        let shown = format!("{a:?} {d:?}");
        assert!(shown.contains("alice1001"), "{shown}");
        let h = a.ha1s().expect("opens");
        assert!(!shown.contains(h.md5.expose()), "{shown}");
        assert!(!shown.contains(h.sha256.expose()), "{shown}");
    }
}
