//! The guard's thresholds as an administrator changes them from the console, the API or
//! the CLI: stored in the database over the config file's `[guard]` (a setting given
//! here wins over the file's until it is reset), validated by the same rules as the file,
//! audit-logged, and in force on the running server within its store poll (the guard
//! version moves).
//!
//! Only the counting thresholds, windows, ban lengths and switches can be changed this
//! way. What sizes tables or sockets at start (prefix lengths, the prefix factor, trusted
//! pairs per account), what needs another setting (`refuse_ip_request_uri` needs
//! `sip.domain`), and the lists (`decoys`, `gateway_limits`) stay in the file.

use std::sync::Arc;

use policy::InvalidField;
use policy::ban::BanPolicy;
use serde_json::{Map, Value};

use crate::audit_log::LogEntry;
use crate::registry::Registry;
use crate::{Error, Result};

/// The `[guard]` keys that can be changed outside the config file.
pub const EDITABLE: &[&str] = &[
    "auth_failures",
    "auth_window_secs",
    "ban_secs",
    "repeat_bans",
    "repeat_window_secs",
    "repeat_ban_secs",
    "trusted_secs",
    "ban_scanners",
    "scanner_ban_secs",
    "flood_requests",
    "silence_requests",
    "flood_window_secs",
    "flood_ban_secs",
    "trusted_factor",
    "gateway_requests",
    "extension_failures",
    "extension_window_secs",
    "weak_credentials",
    "decoy_ban_secs",
    "provisioning_probes",
    "provisioning_window_secs",
    "provisioning_ban_secs",
];

/// The most characters a typed value may have (the longest valid one is `trusted-only`).
const VALUE_MAX: usize = 32;

/// The settings changed outside the file: `[guard]` key to value, as the file would
/// write it (`5`, `"off"`, `true`, `"trusted-only"`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides(Map<String, Value>);

impl Overrides {
    /// Reads what the store holds; a value that no longer parses (written by a newer
    /// version, or edited by hand) is none rather than an error that stops the guard.
    pub fn from_stored(text: Option<&str>) -> Self {
        let map = text
            .and_then(|t| serde_json::from_str::<Map<String, Value>>(t).ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| EDITABLE.contains(&k.as_str()))
            .collect();
        Self(map)
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter()
    }

    /// The file's policy with these settings over it, validated as the file is. An
    /// override set that the file's values make invalid (a file changed since) is an
    /// error: the caller keeps the file's policy and says why.
    pub fn over(&self, base: &BanPolicy) -> Result<BanPolicy> {
        if self.0.is_empty() {
            return Ok(base.clone());
        }
        let mut merged = serde_json::to_value(base).map_err(|e| invalid(e.to_string()))?;
        if let Value::Object(m) = &mut merged {
            for (k, v) in &self.0 {
                m.insert(k.clone(), v.clone());
            }
        }
        let policy: BanPolicy = serde_json::from_value(merged).map_err(|e| {
            // serde's sentence names the key and what it expected; it holds no secret.
            invalid(format!("a guard setting has the wrong type: {e}"))
        })?;
        policy.validate().map_err(invalid)?;
        Ok(policy)
    }
}

fn invalid(reason: String) -> Error {
    Error::Invalid(InvalidField::new("guard setting", reason))
}

/// Refuses a key that cannot be changed outside the file, naming those that can.
fn editable(key: &str) -> Result<()> {
    if EDITABLE.contains(&key) {
        return Ok(());
    }
    Err(invalid(format!(
        "guard.{key} cannot be changed here (it is not a guard setting, or it stays in the config file): one of {}",
        EDITABLE.join(", ")
    )))
}

/// Turns what an administrator typed into the value the file would hold: a whole number,
/// `true`/`false`, or a word (`off`, `trusted-only`, `allow`).
fn typed(key: &str, text: &str) -> Result<Value> {
    editable(key)?;
    let text = text.trim();
    if text.is_empty() || text.chars().count() > VALUE_MAX {
        return Err(invalid(format!(
            "guard.{key} needs a value: a number, true or false, or a word such as off"
        )));
    }
    Ok(if let Ok(n) = text.parse::<i64>() {
        Value::from(n)
    } else if let Ok(b) = text.parse::<bool>() {
        Value::Bool(b)
    } else if text.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
        Value::String(text.to_owned())
    } else {
        return Err(invalid(format!(
            "guard.{key} must be a number, true or false, or a word such as off"
        )));
    })
}

/// The policy in force and where each editable setting comes from.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GuardView {
    /// Flattened: the API's `GET /api/v1/guard` keeps answering the policy's own keys
    /// at the top, as it did before settings could be changed there.
    #[serde(flatten)]
    pub policy: BanPolicy,
    /// The keys set outside the file, with their values.
    pub overrides: Map<String, Value>,
    /// Why the overrides are not in force (the file changed under them), if so: the
    /// file's policy is.
    pub refused: Option<String>,
    /// The keys that can be changed outside the file.
    pub editable: &'static [&'static str],
}

impl Registry {
    /// The config file's `[guard]` as last loaded.
    pub fn guard_file(&self) -> Arc<BanPolicy> {
        Arc::clone(&self.guard_file.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts the config file's `[guard]` (at start, after a reload) under the overrides.
    pub fn set_guard_file(&self, policy: BanPolicy) {
        *self.guard_file.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }

    /// The settings changed outside the file.
    pub async fn guard_overrides(&self) -> Result<Overrides> {
        let mut conn = self.store.conn().await?;
        let text = store::guard::overrides(&mut conn).await?;
        Ok(Overrides::from_stored(text.as_deref()))
    }

    /// The policy in force: the file's `[guard]` with the overrides over it, or the
    /// file's alone when they no longer fit it (`refused` says why).
    pub async fn guard_view(&self) -> Result<GuardView> {
        let overrides = self.guard_overrides().await?;
        let base = self.guard_file();
        let (policy, refused) = match overrides.over(&base) {
            Ok(p) => (p, None),
            Err(e) => ((*base).clone(), Some(e.to_string())),
        };
        Ok(GuardView {
            policy,
            overrides: overrides.0,
            refused,
            editable: EDITABLE,
        })
    }

    /// Makes `changes` (a key and the value typed, `None` back to the file's) together or
    /// not at all, after checking the whole policy they make over the file's `[guard]`
    /// by the file's rules; each is logged as `actor`. Returns the policy now in force.
    pub async fn set_guard(
        &self,
        actor: &str,
        changes: &[(&str, Option<&str>)],
    ) -> Result<BanPolicy> {
        let base = self.guard_file();
        let mut tx = self.store.begin().await?;
        let stored = store::guard::overrides(&mut tx).await?;
        let mut overrides = Overrides::from_stored(stored.as_deref());
        let mut details = Vec::with_capacity(changes.len());
        for (key, value) in changes {
            // Taken as given: a key padded with spaces is no key (trimming it would let
            // one body set one setting twice, under two spellings).
            let key = *key;
            let detail = match value {
                Some(text) => {
                    let v = typed(key, text)?;
                    let shown = v.to_string();
                    overrides.0.insert(key.to_owned(), v);
                    format!("{key} = {shown}")
                }
                None => {
                    editable(key)?;
                    overrides.0.remove(key);
                    format!("{key} reset to the config file's")
                }
            };
            details.push((key.to_owned(), detail));
        }
        let policy = overrides.over(&base)?;
        let text = serde_json::to_string(&overrides.0).map_err(|e| invalid(e.to_string()))?;
        store::guard::set_overrides(&mut tx, &text).await?;
        let now = self.now();
        for (key, detail) in &details {
            let entry = LogEntry {
                actor,
                action: "guard.changed",
                subject: &format!("guard:{key}"),
                detail,
            };
            self.log_in(&mut tx, now, entry).await?;
        }
        tx.commit().await?;
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(o: &mut Overrides, k: &str, v: &str) {
        o.0.insert(k.into(), typed(k, v).expect("typed"));
    }

    #[test]
    fn an_override_wins_over_the_file_and_is_checked_like_it() {
        let base = BanPolicy::default();
        let mut o = Overrides::default();
        set(&mut o, "auth_failures", "4");
        set(&mut o, "flood_requests", "off");
        set(&mut o, "weak_credentials", "allow");
        let p = o.over(&base).expect("valid");
        assert_eq!(p.auth_failures, 4);
        assert_eq!(p.flood_requests, 0);
        assert_eq!(p.ban_secs, base.ban_secs, "the rest is the file's");
        // Out of range: the file's own sentence.
        set(&mut o, "auth_failures", "1000");
        let e = o.over(&base).expect_err("out of range").to_string();
        assert!(
            e.contains("guard.auth_failures must be between 1 and 100"),
            "{e}"
        );
        // The wrong type for the key.
        let mut o = Overrides::default();
        set(&mut o, "ban_scanners", "7");
        assert!(o.over(&base).is_err());
    }

    #[test]
    fn only_the_listed_keys_and_plain_values_are_taken() {
        for key in ["decoys", "refuse_ip_request_uri", "ipv4_prefix", "nonsense"] {
            assert!(typed(key, "1").is_err(), "{key}");
        }
        for bad in ["", "   ", "1; DROP", "x".repeat(40).as_str(), "\"off\""] {
            assert!(typed("auth_failures", bad).is_err(), "{bad:?}");
        }
        // A stored key that is not editable (written by hand) is dropped when read.
        let o = Overrides::from_stored(Some(r#"{"decoys": [], "ban_secs": 60}"#));
        assert_eq!(o.iter().count(), 1);
        assert_eq!(
            Overrides::from_stored(Some("not json")),
            Overrides::default()
        );
    }
}
