//! The config file: raw TOML parsed into typed settings, unknown keys refused.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use pbx::Settings;
use policy::PolicyConfig;
use serde::Deserialize;

use crate::OperatorError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    sip: RawSip,
    policy: PolicyConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSip {
    /// Digest realm; defaults to the domain, or "sipward".
    realm: Option<String>,
    /// SIP domain of this PBX.
    domain: Option<String>,
}

const DEFAULT_REALM: &str = "sipward";

/// Reads the config: the explicit file (which must exist), else DATA/sipward.toml when
/// present, else the defaults.
pub fn load(explicit: Option<&Path>, data: &Path) -> anyhow::Result<Settings> {
    let path: Option<PathBuf> = match explicit {
        Some(p) => Some(p.to_owned()),
        None => Some(data.join("sipward.toml")).filter(|p| p.exists()),
    };
    let raw = match &path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                OperatorError(format!("cannot read the config file {}: {e}", p.display()))
            })?;
            parse(&text).with_context(|| format!("in the config file {}", p.display()))?
        }
        None => RawConfig::default(),
    };
    settings(raw)
}

fn parse(text: &str) -> anyhow::Result<RawConfig> {
    toml::from_str(text).map_err(|e| OperatorError(e.message().to_owned()).into())
}

fn settings(raw: RawConfig) -> anyhow::Result<Settings> {
    raw.policy.validate().map_err(OperatorError)?;
    let domain = raw
        .sip
        .domain
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty());
    if let Some(d) = &domain {
        policy::fields::Host::parse(d).map_err(|e| OperatorError(format!("sip.domain: {e}")))?;
    }
    let realm = raw
        .sip
        .realm
        .or_else(|| domain.clone())
        .unwrap_or_else(|| DEFAULT_REALM.to_owned());
    let realm_ok = !realm.is_empty()
        && realm.len() <= 128
        && realm
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\');
    if !realm_ok {
        return Err(OperatorError(
            "sip.realm must be 1 to 128 printable characters without quotes or backslashes".into(),
        )
        .into());
    }
    Ok(Settings {
        realm,
        domain,
        policy: raw.policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = settings(parse("").expect("empty parses")).expect("valid");
        assert_eq!(s.realm, "sipward");
        assert_eq!(s.domain, None);
    }

    #[test]
    fn domain_becomes_the_realm() {
        let s = settings(parse("[sip]\ndomain = \"PBX.Example.com\"\n").expect("parses"))
            .expect("valid");
        assert_eq!(s.realm, "pbx.example.com");
        assert_eq!(s.domain.as_deref(), Some("pbx.example.com"));
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(parse("[sip]\nrealmm = \"x\"\n").is_err(), "unknown key");
        assert!(
            parse("[policy]\nmin_password_length = \"ten\"\n").is_err(),
            "wrong type"
        );
        assert!(settings(parse("[policy]\nmin_password_length = 4\n").expect("parses")).is_err());
        assert!(settings(parse("[sip]\nrealm = \"a\\\"b\"\n").expect("parses")).is_err());
        assert!(settings(parse("[sip]\ndomain = \"bad domain\"\n").expect("parses")).is_err());
    }
}
