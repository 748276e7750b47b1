//! The config file: raw TOML parsed into typed settings, unknown keys refused.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use pbx::Settings;
use pbx::registrar::RegistrarConfig;
use policy::PolicyConfig;
use serde::Deserialize;
use sip::digest::Algorithm;

use crate::OperatorError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    sip: RawSip,
    policy: PolicyConfig,
    registrar: RegistrarConfig,
    guard: policy::ban::BanPolicy,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSip {
    /// Digest realm; defaults to the domain, or "sipward".
    realm: Option<String>,
    /// SIP domain of this PBX.
    domain: Option<String>,
    /// Seconds a digest nonce stays valid (then `stale=true`).
    nonce_lifetime: Option<u64>,
    /// Digest algorithms challenged with, in order of preference.
    digest_algorithms: Option<Vec<String>>,
}

/// Everything the config file sets, typed and checked.
#[derive(Clone, Debug)]
pub struct Config {
    pub settings: Settings,
    pub registrar: RegistrarConfig,
    pub nonce_lifetime_secs: u64,
    pub digest_algorithms: Vec<sip::digest::Algorithm>,
    pub bans: policy::ban::BanPolicy,
}

const DEFAULT_REALM: &str = "sipward";
const DEFAULT_NONCE_LIFETIME: u64 = 300;

/// Reads the config: the explicit file (which must exist), else DATA/sipward.toml when
/// present, else the defaults.
pub fn load(explicit: Option<&Path>, data: &Path) -> anyhow::Result<Config> {
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
    typed(raw)
}

fn parse(text: &str) -> anyhow::Result<RawConfig> {
    toml::from_str(text).map_err(|e| OperatorError(e.message().to_owned()).into())
}

fn typed(raw: RawConfig) -> anyhow::Result<Config> {
    raw.policy.validate().map_err(OperatorError)?;
    raw.registrar.validate().map_err(OperatorError)?;
    raw.guard.validate().map_err(OperatorError)?;
    let domain = raw
        .sip
        .domain
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty());
    if let Some(d) = &domain {
        policy::fields::Host::parse(d).map_err(|e| OperatorError(format!("sip.domain: {e}")))?;
    }
    if raw.guard.refuse_ip_request_uri && domain.is_none() {
        return Err(OperatorError(
            "guard.refuse_ip_request_uri needs sip.domain: phones must be set up with the domain"
                .into(),
        )
        .into());
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
    let digest_algorithms = match raw.sip.digest_algorithms {
        None => vec![Algorithm::Md5, Algorithm::Sha256],
        Some(list) => {
            let mut algs = Vec::new();
            for name in &list {
                let alg = Algorithm::from_token(Some(name)).ok_or_else(|| {
                    OperatorError(format!("sip.digest_algorithms: {name:?} is not supported; use \"MD5\" and/or \"SHA-256\""))
                })?;
                if algs.contains(&alg) {
                    return Err(OperatorError(format!(
                        "sip.digest_algorithms lists {name:?} twice"
                    ))
                    .into());
                }
                algs.push(alg);
            }
            if algs.is_empty() {
                return Err(OperatorError(
                    "sip.digest_algorithms must name at least one algorithm".into(),
                )
                .into());
            }
            algs
        }
    };
    let nonce_lifetime_secs = raw.sip.nonce_lifetime.unwrap_or(DEFAULT_NONCE_LIFETIME);
    if !(30..=3600).contains(&nonce_lifetime_secs) {
        return Err(
            OperatorError("sip.nonce_lifetime must be between 30 and 3600 seconds".into()).into(),
        );
    }
    Ok(Config {
        settings: Settings {
            realm,
            domain,
            policy: raw.policy,
        },
        registrar: raw.registrar,
        nonce_lifetime_secs,
        digest_algorithms,
        bans: raw.guard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> anyhow::Result<Config> {
        typed(parse(text)?)
    }

    #[test]
    fn defaults() {
        let c = config("").expect("valid");
        assert_eq!(c.settings.realm, "sipward");
        assert_eq!(c.settings.domain, None);
        assert_eq!(c.nonce_lifetime_secs, 300);
        assert_eq!(c.registrar, RegistrarConfig::default());
        assert_eq!(c.digest_algorithms, vec![Algorithm::Md5, Algorithm::Sha256]);
        let md5 = config("[sip]\ndigest_algorithms = [\"MD5\"]\n").expect("valid");
        assert_eq!(md5.digest_algorithms, vec![Algorithm::Md5]);
    }

    #[test]
    fn domain_becomes_the_realm() {
        let c = config("[sip]\ndomain = \"PBX.Example.com\"\n").expect("valid");
        assert_eq!(c.settings.realm, "pbx.example.com");
        assert_eq!(c.settings.domain.as_deref(), Some("pbx.example.com"));
    }

    #[test]
    fn bad_configs_are_refused() {
        for bad in [
            "[sip]\nrealmm = \"x\"\n",
            "[policy]\nmin_password_length = \"ten\"\n",
            "[policy]\nmin_password_length = 4\n",
            "[sip]\nrealm = \"a\\\"b\"\n",
            "[sip]\ndomain = \"bad domain\"\n",
            "[sip]\nnonce_lifetime = 5\n",
            "[registrar]\nmin_expires = 0\n",
            "[registrar]\nmax_contacts = 1000\n",
            "[sip]\ndigest_algorithms = []\n",
            "[sip]\ndigest_algorithms = [\"SHA-512-256\"]\n",
            "[sip]\ndigest_algorithms = [\"MD5\", \"md5\"]\n",
            "[guard]\nrefuse_ip_request_uri = true\n",
            "[guard]\nweak_credentials = \"sometimes\"\n",
            "[guard]\ndecoys = [\"\"]\n",
            "[guard]\nsilence_requests = 500\n",
        ] {
            assert!(config(bad).is_err(), "{bad}");
        }
    }
}
