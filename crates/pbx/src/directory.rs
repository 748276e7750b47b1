//! The credential directory the registrar authenticates against: auth IDs, numbers and
//! HA1s held in memory (never passwords; the HA1s are sealed at rest and opened by
//! `accounts::credentials`), reloaded whenever the store's registry version moves, so a
//! change made with the CLI takes effect in the running server.
//!
//! Each account carries its credential generation; comparing two snapshots says which
//! extensions were removed or had their credentials changed ([`Directory::revocations`]),
//! and a binding is backed only while its generation is the account's (or that of the
//! account's open grace window, from the window's sources: [`Account::backs`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use accounts::credentials::{Credential, GraceCredential};
use sip::digest::{Algorithm, ha1};

/// An extension's previous password during its grace window after Re-Generate: HA1s
/// only, accepted only from the addresses its phones were registered from.
pub struct Grace {
    pub ha1_md5: String,
    pub ha1_sha256: String,
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

impl PartialEq for Grace {
    fn eq(&self, o: &Self) -> bool {
        self.ha1_md5 == o.ha1_md5
            && self.ha1_sha256 == o.ha1_sha256
            && self.sources == o.sources
            && self.expires_at == o.expires_at
            && self.generation == o.generation
    }
}
impl Eq for Grace {}

/// One account that can authenticate.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    /// `ext` or `gateway`.
    pub kind: &'static str,
    pub number: String,
    pub auth_id: String,
    pub ha1_md5: String,
    pub ha1_sha256: String,
    /// The password is weak: guessable (zxcvbn below the policy's minimum) or equal to
    /// the number or the auth ID (recognised from the HA1, without the password).
    pub weak: bool,
    /// The previous password's window after Re-Generate, if open.
    pub grace: Option<Arc<Grace>>,
    /// The credential generation bindings made by this login carry: the extension's
    /// (a login with the grace window's old password carries the window's, see
    /// [`Account::grace_login`]); for a gateway, one derived from its HA1, so that a new
    /// gateway password revokes too.
    pub generation: i64,
}

impl Account {
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
            .field("weak", &self.weak)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

/// An immutable snapshot; replaced whole on reload.
#[derive(Debug, Default)]
pub struct Directory {
    by_auth_id: HashMap<String, Arc<Account>>,
    /// A registrable user part (number or SIP ID) to the extension number.
    by_user: HashMap<String, String>,
    by_number: HashMap<String, Arc<Account>>,
}

impl Directory {
    /// Builds the snapshot; `realm` and `min_score` decide which passwords are weak.
    pub fn from_rows(rows: Vec<Credential>, realm: &str, min_score: u8) -> Self {
        Self::with_graces(rows, Vec::new(), realm, min_score)
    }

    /// Builds the snapshot with the open grace windows (matched by number and auth ID).
    pub fn with_graces(
        rows: Vec<Credential>,
        graces: Vec<GraceCredential>,
        realm: &str,
        min_score: u8,
    ) -> Self {
        let mut graces: HashMap<String, GraceCredential> =
            graces.into_iter().map(|g| (g.number.clone(), g)).collect();
        let mut d = Directory::default();
        // A SIP ID that is another extension's number (data from before the identity
        // check, reported by the audit as ext.identity_collision) never takes that
        // number's registrations and calls: numbers win.
        let mut sip_ids = Vec::new();
        for r in rows {
            d.by_user.insert(r.number.clone(), r.number.clone());
            if let Some(s) = &r.sip_id {
                sip_ids.push((s.clone(), r.number.clone()));
            }
            let md5 = |password: &str| ha1(Algorithm::Md5, &r.auth_id, realm, password);
            let weak = r.password_score < min_score
                || r.ha1_md5.ct_eq(&md5(&r.number))
                || r.ha1_md5.ct_eq(&md5(&r.auth_id));
            let grace = match graces.remove(&r.number) {
                Some(g) if r.kind == "ext" && g.auth_id == r.auth_id => Some(Arc::new(Grace {
                    sources: g
                        .sources
                        .split(',')
                        .filter_map(|s| s.parse().ok())
                        .collect(),
                    ha1_md5: g.ha1_md5.expose().to_owned(),
                    ha1_sha256: g.ha1_sha256.expose().to_owned(),
                    expires_at: g.expires_at,
                    generation: g.generation,
                    ended: AtomicBool::new(false),
                })),
                _ => None,
            };
            let generation = if r.kind == "gateway" {
                gateway_generation(r.ha1_md5.expose())
            } else {
                r.credential_generation
            };
            let acc = Account {
                generation,
                grace,
                weak,
                kind: r.kind,
                number: r.number,
                auth_id: r.auth_id,
                ha1_md5: r.ha1_md5.expose().to_owned(),
                ha1_sha256: r.ha1_sha256.expose().to_owned(),
            };
            let acc = Arc::new(acc);
            d.by_number.insert(acc.number.clone(), acc.clone());
            d.by_auth_id.insert(acc.auth_id.clone(), acc);
        }
        for (sip_id, number) in sip_ids {
            d.by_user.entry(sip_id).or_insert(number);
        }
        d
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
            ha1_md5: policy::Secret::new(ha1(Algorithm::Md5, auth_id, "sipward", password)),
            ha1_sha256: policy::Secret::new(ha1(Algorithm::Sha256, auth_id, "sipward", password)),
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
        let weak = |id: &str| d.account(id).expect("account").weak;
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
            ha1_md5: policy::Secret::new("x"),
            ha1_sha256: policy::Secret::new("y"),
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
        assert!(!shown.contains(&a.ha1_md5), "{shown}");
        assert!(!shown.contains(&a.ha1_sha256), "{shown}");
    }
}
