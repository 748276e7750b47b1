//! The credential directory the registrar authenticates against: auth IDs, numbers and
//! HA1s held in memory (never passwords; the HA1s are sealed at rest and opened by
//! `accounts::credentials`), reloaded whenever the store's registry version moves, so a
//! change made with the CLI takes effect in the running server.

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
        for r in rows {
            d.by_user.insert(r.number.clone(), r.number.clone());
            if let Some(s) = &r.sip_id {
                d.by_user.insert(s.clone(), r.number.clone());
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
                    ended: AtomicBool::new(false),
                })),
                _ => None,
            };
            let acc = Account {
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
        d
    }

    pub fn account(&self, auth_id: &str) -> Option<&Arc<Account>> {
        self.by_auth_id.get(auth_id)
    }

    /// The extension number a To/AOR user part names (its number or SIP ID).
    pub fn number_for_user(&self, user: &str) -> Option<&str> {
        self.by_user.get(user).map(String::as_str)
    }

    /// The auth ID of the account with this number.
    pub fn auth_id_of(&self, number: &str) -> Option<&str> {
        self.by_number.get(number).map(|a| a.auth_id.as_str())
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
