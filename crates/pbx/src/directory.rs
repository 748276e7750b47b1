//! The credential directory the registrar authenticates against: auth IDs, numbers and
//! HA1s held in memory (never secrets), reloaded whenever the store's registry version
//! moves, so a change made with the CLI takes effect in the running server.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use store::registrar::DirectoryRow;

/// One account that can authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// `ext` or `gateway`.
    pub kind: &'static str,
    pub number: String,
    pub auth_id: String,
    pub ha1_md5: String,
    pub ha1_sha256: String,
}

/// An immutable snapshot; replaced whole on reload.
#[derive(Debug, Default)]
pub struct Directory {
    by_auth_id: HashMap<String, Arc<Account>>,
    /// A registrable user part (number or SIP ID) to the extension number.
    by_user: HashMap<String, String>,
}

impl Directory {
    pub fn from_rows(rows: Vec<DirectoryRow>) -> Self {
        let mut d = Directory::default();
        for r in rows {
            d.by_user.insert(r.number.clone(), r.number.clone());
            if let Some(s) = &r.sip_id {
                d.by_user.insert(s.clone(), r.number.clone());
            }
            let acc = Account {
                kind: r.kind,
                number: r.number,
                auth_id: r.auth_id,
                ha1_md5: r.ha1_md5,
                ha1_sha256: r.ha1_sha256,
            };
            d.by_auth_id.insert(acc.auth_id.clone(), Arc::new(acc));
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
