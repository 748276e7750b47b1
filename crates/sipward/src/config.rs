//! The config file: raw TOML parsed into typed settings, unknown keys refused.

use std::path::{Path, PathBuf};

use accounts::Settings;
use anyhow::Context as _;
use pbx::registrar::RegistrarConfig;
use policy::PolicyConfig;
use serde::Deserialize;
use sip::digest::Algorithm;

use crate::error::OperatorError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    sip: RawSip,
    policy: PolicyConfig,
    registrar: RegistrarConfig,
    guard: policy::ban::BanPolicy,
    provisioning: RawProvisioning,
    mail: Option<RawMail>,
    dialplan: policy::dialplan::DialPlan,
    backup: RawBackup,
    console: RawConsole,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConsole {
    /// When set, the only networks (addresses or CIDRs) the console and API answer.
    allow: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBackup {
    /// Where scheduled and automatic backups go (default DATA/backups).
    dir: Option<PathBuf>,
    /// Seconds between scheduled backups made by `serve` (absent or 0: none).
    interval_secs: Option<u64>,
    /// How many scheduled backups to keep (default 7).
    keep: Option<usize>,
    /// Encrypt to this age recipient (`age1...`).
    recipient: Option<String>,
    /// Or with the passphrase on this file's first line.
    passphrase_file: Option<PathBuf>,
    /// The most bytes one restore writes (all files of the archive together).
    restore_max_bytes: Option<u64>,
}

/// `[backup]`: scheduled backups and the key automatic ones are encrypted with.
#[derive(Clone, Debug)]
pub struct BackupConfig {
    pub dir: Option<PathBuf>,
    pub interval_secs: Option<u64>,
    pub keep: usize,
    pub recipient: Option<String>,
    pub passphrase_file: Option<PathBuf>,
    /// What one restore may write: a crafted archive cannot fill the disk.
    pub restore_limits: store::backup::Limits,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            dir: None,
            interval_secs: None,
            keep: DEFAULT_BACKUP_KEEP,
            recipient: None,
            passphrase_file: None,
            restore_limits: store::backup::Limits::default(),
        }
    }
}

const DEFAULT_BACKUP_KEEP: usize = 7;
/// Below this a restore of even a new data dir would be refused.
const MIN_RESTORE_BYTES: u64 = 1 << 20;

fn backup(raw: RawBackup) -> anyhow::Result<BackupConfig> {
    if raw.recipient.is_some() && raw.passphrase_file.is_some() {
        return Err(OperatorError(
            "backup: set either recipient or passphrase_file, not both".into(),
        )
        .into());
    }
    if let Some(r) = &raw.recipient {
        store::backup::parse_recipient(r)
            .map_err(|e| OperatorError(format!("backup.recipient: {e}")))?;
    }
    let interval_secs = raw.interval_secs.filter(|s| *s > 0);
    if interval_secs.is_some() && raw.recipient.is_none() && raw.passphrase_file.is_none() {
        return Err(OperatorError(
            "backup.interval_secs needs backup.recipient or backup.passphrase_file: scheduled backups are always encrypted".into(),
        )
        .into());
    }
    let keep = raw.keep.unwrap_or(DEFAULT_BACKUP_KEEP);
    if keep == 0 {
        return Err(OperatorError("backup.keep must be at least 1".into()).into());
    }
    let max_bytes = raw
        .restore_max_bytes
        .unwrap_or(store::backup::DEFAULT_MAX_BYTES);
    if max_bytes < MIN_RESTORE_BYTES {
        return Err(OperatorError(format!(
            "backup.restore_max_bytes must be at least {MIN_RESTORE_BYTES} (1 MiB)"
        ))
        .into());
    }
    Ok(BackupConfig {
        dir: raw.dir,
        interval_secs,
        keep,
        recipient: raw.recipient,
        passphrase_file: raw.passphrase_file,
        restore_limits: store::backup::Limits { max_bytes },
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProvisioning {
    /// The SIP server phones register to; defaults to sip.domain.
    server: Option<String>,
    port: Option<u16>,
    transport: Option<accounts::provisioning::PhoneTransport>,
    voicemail_number: Option<String>,
    /// `http://host:port` phones fetch their files from (shown in welcome mails).
    base_url: Option<String>,
    /// Seconds the old password keeps working after Re-Generate (0 = off).
    grace_secs: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMail {
    smtp_host: String,
    smtp_port: Option<u16>,
    #[serde(default)]
    security: accounts::mail::Security,
    username: Option<String>,
    password: Option<String>,
    from: String,
    ca_file: Option<PathBuf>,
    timeout_secs: Option<u64>,
    /// Where security alerts go (suspensions, emergency calls).
    admin: Option<String>,
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
    /// The SMTP server welcome mails go through (`[mail]`); None: mails stay queued.
    pub mail: Option<accounts::mail::SmtpSettings>,
    pub backup: BackupConfig,
    /// `[console] allow`: the networks the console answers (empty: any).
    pub console_allow: Vec<ipnet::IpNet>,
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
    let provisioning = provisioning(raw.provisioning)?;
    raw.dialplan
        .validate()
        .map_err(|e| OperatorError(e.to_string()))?;
    let admin_email = match raw.mail.as_ref().and_then(|m| m.admin.as_deref()) {
        Some(a) => Some(
            policy::fields::Email::parse(a.trim())
                .map_err(|e| OperatorError(format!("mail.admin: {e}")))?
                .into_string(),
        ),
        None => None,
    };
    let mail = raw.mail.map(mail).transpose()?;
    let backup = backup(raw.backup)?;
    let mut console_allow = Vec::new();
    for n in &raw.console.allow {
        let net = n
            .parse::<ipnet::IpNet>()
            .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                OperatorError(format!(
                    "console.allow: {n:?} is not an address or CIDR network"
                ))
            })?;
        console_allow.push(net);
    }
    Ok(Config {
        backup,
        console_allow,
        settings: Settings {
            realm,
            domain,
            policy: raw.policy,
            provisioning,
            dialplan: raw.dialplan,
            admin_email,
        },
        mail,
        registrar: raw.registrar,
        nonce_lifetime_secs,
        digest_algorithms,
        bans: raw.guard,
    })
}

fn provisioning(raw: RawProvisioning) -> anyhow::Result<accounts::registry::ProvisioningSettings> {
    let d = accounts::registry::ProvisioningSettings::default();
    let bad = |m: String| -> anyhow::Error { OperatorError(m).into() };
    let server = raw
        .server
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    if let Some(s) = &server {
        policy::fields::Host::parse(s).map_err(|e| bad(format!("provisioning.server: {e}")))?;
    }
    let voicemail_number = raw.voicemail_number.unwrap_or(d.voicemail_number);
    let vm_ok = !voicemail_number.is_empty()
        && voicemail_number.len() <= 16
        && voicemail_number
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#');
    if !vm_ok {
        return Err(bad(
            "provisioning.voicemail_number must be 1 to 16 of 0-9 * #".into(),
        ));
    }
    let base_url = raw
        .base_url
        .map(|u| u.trim().trim_end_matches('/').to_owned())
        .filter(|u| !u.is_empty());
    if let Some(u) = &base_url {
        let rest = u
            .strip_prefix("http://")
            .or_else(|| u.strip_prefix("https://"))
            .ok_or_else(|| {
                bad("provisioning.base_url must start with http:// or https://".into())
            })?;
        let host_ok = !rest.is_empty()
            && !rest.contains(['/', '?', '#', '@'])
            && !rest.chars().any(|c| c.is_control() || c.is_whitespace());
        if !host_ok {
            return Err(bad(
                "provisioning.base_url must be http(s)://host[:port] without a path or login"
                    .into(),
            ));
        }
    }
    let grace_secs = raw.grace_secs.unwrap_or(d.grace_secs);
    if !(0..=30 * 86_400).contains(&grace_secs) {
        return Err(bad(
            "provisioning.grace_secs must be between 0 and 2592000 (30 days)".into(),
        ));
    }
    let port = raw.port.unwrap_or(d.port);
    if port == 0 {
        return Err(bad("provisioning.port must not be 0".into()));
    }
    Ok(accounts::registry::ProvisioningSettings {
        server,
        port,
        transport: raw.transport.unwrap_or(d.transport),
        voicemail_number,
        base_url,
        grace_secs,
    })
}

fn mail(raw: RawMail) -> anyhow::Result<accounts::mail::SmtpSettings> {
    let bad = |m: &str| -> anyhow::Error { OperatorError(m.into()).into() };
    let host = raw.smtp_host.trim().to_owned();
    policy::fields::Host::parse(&host).map_err(|e| bad(&format!("mail.smtp_host: {e}")))?;
    policy::fields::Email::parse(raw.from.trim()).map_err(|e| bad(&format!("mail.from: {e}")))?;
    if raw.username.is_some() != raw.password.is_some() {
        return Err(bad("mail.username and mail.password go together"));
    }
    let timeout = raw.timeout_secs.unwrap_or(20);
    if !(1..=300).contains(&timeout) {
        return Err(bad("mail.timeout_secs must be between 1 and 300"));
    }
    let port = raw.smtp_port.unwrap_or(match raw.security {
        accounts::mail::Security::Tls => 465,
        _ => 587,
    });
    Ok(accounts::mail::SmtpSettings {
        host,
        port,
        security: raw.security,
        username: raw.username,
        password: raw.password.map(policy::Secret::new),
        from: raw.from.trim().to_owned(),
        ca_file: raw.ca_file,
        timeout: std::time::Duration::from_secs(timeout),
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
    fn provisioning_and_mail() {
        let c = config("").expect("valid");
        assert_eq!(c.settings.provisioning.grace_secs, 86_400);
        assert!(c.mail.is_none());
        let c = config(
            "[provisioning]\nserver = \"pbx.example.com\"\ntransport = \"tcp\"\nbase_url = \"https://pbx.example.com:8443/\"\ngrace_secs = 0\n\
             [mail]\nsmtp_host = \"mail.example.com\"\nfrom = \"pbx@example.com\"\nsecurity = \"tls\"\n",
        )
        .expect("valid");
        let p = &c.settings.provisioning;
        assert_eq!(p.base_url.as_deref(), Some("https://pbx.example.com:8443"));
        assert_eq!(p.transport, accounts::provisioning::PhoneTransport::Tcp);
        assert_eq!(p.grace_secs, 0);
        let m = c.mail.expect("mail");
        assert_eq!((m.port, m.security), (465, accounts::mail::Security::Tls));
        assert!(m.username.is_none());
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
            "[provisioning]\nbase_url = \"ftp://x\"\n",
            "[provisioning]\nbase_url = \"http://u:p@x\"\n",
            "[provisioning]\nbase_url = \"http://x/a\"\n",
            "[provisioning]\ngrace_secs = -1\n",
            "[provisioning]\nvoicemail_number = \"*97\\nx\"\n",
            "[provisioning]\ntransport = \"sctp\"\n",
            "[provisioning]\nserver = \"bad host\"\n",
            "[mail]\nsmtp_host = \"mail\"\n",
            "[mail]\nsmtp_host = \"mail\"\nfrom = \"nobody\"\n",
            "[mail]\nsmtp_host = \"mail\"\nfrom = \"pbx@example.com\"\nusername = \"u\"\n",
            "[mail]\nsmtp_host = \"mail\"\nfrom = \"pbx@example.com\"\nsecurity = \"ssl\"\n",
        ] {
            assert!(config(bad).is_err(), "{bad}");
        }
    }
}
