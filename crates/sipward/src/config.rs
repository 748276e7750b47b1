//! The config file: raw TOML parsed into typed settings, unknown keys refused, values out
//! of their sane range refused with one sentence naming the range. A file that holds a
//! secret must be private (0600, like the data dir's key), or the secret comes from a
//! file or an environment variable. Settings that weaken a defence are kept and
//! reported ([`Config::findings`]).

use std::os::unix::fs::PermissionsExt;
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
    http: RawHttp,
    log: RawLog,
    tls: RawTls,
    cluster: RawCluster,
    store: RawStore,
    media: Option<RawMedia>,
    voicemail: RawVoicemail,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawVoicemail {
    /// The internal extension `0` sends an internal caller to from the voicemail (a
    /// REFER to `sip:NUMBER@DOMAIN`); absent: `0` does nothing special. `serve` refuses
    /// a number that is not an extension of this system.
    operator: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCluster {
    /// This node's name among the nodes sharing one database (default: the host name;
    /// `--node-name` wins).
    node: Option<String>,
    /// `IP:PORT` where this node takes internal hops from the others (published in
    /// its `nodes` row); absent: it takes and sends none.
    internal: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    /// `postgres://user:password@host/db`: the database several nodes share. Absent:
    /// SQLite in the data dir. `--database` and SIPWARD_DATABASE_URL win over it.
    url: Option<String>,
    /// How often `serve` reads the store's versions, in milliseconds (50 to 10,000;
    /// default 250). On PostgreSQL a notification makes it read them at once; this
    /// bounds how long a lost notification leaves a node behind.
    poll_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMedia {
    /// The UDP ports calls sipward answers itself (voicemail) use, "LOW-HIGH": each call
    /// holds an even port for RTP and the next for RTCP. Open them in the firewall.
    rtp_ports: Option<String>,
    /// Calls one source address may hold ports for at once (more are answered 503).
    rtp_ports_per_source: Option<usize>,
    /// Calls the callers of one trunk (who all arrive from its address) may hold ports
    /// for at once; default half the range's pairs.
    rtp_ports_per_trunk: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    /// Which log records are written, as RUST_LOG says it; `--log` and RUST_LOG win
    /// over it. Changes on SIGHUP.
    filter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    /// Serve SIP over TLS (default true: with no certificate configured, the first
    /// start makes a private CA and a server certificate in DATA/tls).
    enabled: bool,
    /// Where to listen (default: the SIP address with the next port).
    listen: Option<std::net::SocketAddr>,
    /// The operator's certificate chain (PEM, leaf first) and key; both or neither.
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    /// Extra DNS names and IP addresses for the generated server certificate (the SIP
    /// domain is always in it).
    names: Vec<String>,
    /// Seconds a TLS handshake may take before the connection is cut.
    handshake_secs: Option<u64>,
    /// TLS handshakes in flight per source address.
    handshakes_per_source: Option<u32>,
}

impl Default for RawTls {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            cert: None,
            key: None,
            names: Vec::new(),
            handshake_secs: None,
            handshakes_per_source: None,
        }
    }
}

/// `[tls]`: SIP over TLS and where its certificate comes from.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub enabled: bool,
    pub listen: Option<std::net::SocketAddr>,
    /// The operator's certificate and key; None: the generated ones in DATA/tls.
    pub operator: Option<(PathBuf, PathBuf)>,
    /// Names for the generated certificate besides the domain.
    pub names: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConsole {
    /// When set, the only networks (addresses or CIDRs) the console, the API and
    /// /metrics answer.
    allow: Vec<String>,
    /// Host names the HTTP server answers for besides its own addresses (`name` or
    /// `name:port`); the provisioning URL's host and the SIP domain are added.
    hosts: Vec<String>,
    /// Who may read /healthz: "public" (default) or "allow-list".
    healthz: Option<console::entry::Healthz>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    /// Reverse proxies (addresses or CIDRs) whose Forwarded / X-Forwarded-For name the
    /// real client.
    trusted_proxies: Vec<String>,
    /// Open connections per client address (a network prefix gets guard.prefix_factor
    /// times as many).
    connections_per_source: Option<u32>,
    /// Seconds a request head may take to arrive (also the idle limit between requests).
    header_timeout_secs: Option<u64>,
    /// Seconds a whole request may take.
    request_timeout_secs: Option<u64>,
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
    // The passphrase opens every backup, and with it every sealed SIP password: its
    // file is held to the rule of the SMTP password's. (A file not there yet is read,
    // and checked, when the first backup needs it.)
    if let Some(f) = &raw.passphrase_file
        && f.exists()
    {
        private(f, "the backup passphrase", "SIPWARD_BACKUP_PASSPHRASE")?;
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
    /// The SIP port UDP and TCP phones are given.
    port: Option<u16>,
    /// The SIP port TLS phones are given (the TLS listener's, 5061 by default).
    tls_port: Option<u16>,
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
    /// The SMTP password itself: the config file must then be 0600...
    password: Option<String>,
    /// ...or read from this file's first line (the file must be 0600)...
    password_file: Option<PathBuf>,
    /// ...or from the environment variable of this name.
    password_env: Option<String>,
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
    /// Open SIP TCP connections per address (a prefix gets guard.prefix_factor times it).
    tcp_connections_per_source: Option<u32>,
    /// Seconds a new TCP connection has to deliver its first complete message.
    tcp_first_message_secs: Option<u64>,
    /// Seconds a TCP connection with no live registration may go without a complete message.
    tcp_idle_secs: Option<u64>,
    /// The same for a connection from a source with a live registration (900).
    tcp_idle_registered_secs: Option<u64>,
    /// Connections holding an unfinished request per address (a prefix gets
    /// guard.prefix_factor times it).
    tcp_unfinished_per_source: Option<u32>,
    /// Seconds an unfinished request has to become whole.
    tcp_message_secs: Option<u64>,
    /// The largest datagram taken, in bytes (larger: 513, or dropped and counted).
    max_message_udp: Option<usize>,
    /// The largest message taken on a stream, in bytes.
    max_message_tcp: Option<usize>,
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
    /// `[console]` hosts and healthz, `[http]`: what the HTTP server's entry checks and
    /// its listener enforce.
    pub http: console::entry::HttpSettings,
    /// `[sip] tcp_*`: what the SIP TCP transport enforces (the prefix lengths and
    /// factor come from `[guard]`).
    pub sip_tcp: pbx::transport::TcpLimits,
    /// `[sip] max_message_udp`, `max_message_tcp`.
    pub sip_messages: pbx::transport::MessageLimits,
    /// `[log] filter`: the log filter when neither `--log` nor RUST_LOG gives one.
    pub log_filter: Option<String>,
    pub tls: TlsConfig,
    /// `[cluster] node`: this node's name, when the file gives one.
    pub node: Option<policy::node::NodeName>,
    /// `[cluster] internal`: where this node takes internal hops.
    pub internal: Option<std::net::SocketAddr>,
    /// `[store] url`, `--database`, SIPWARD_DATABASE_URL: the PostgreSQL database; None
    /// for SQLite in the data dir. Shown and logged redacted only.
    pub database: Option<store::PgUrl>,
    /// `[store] poll_ms`.
    pub version_poll: std::time::Duration,
    /// `[media]`: the RTP port range and each source's share of it. None (no `[media]`
    /// section): voicemail is off and no RTP port is ever opened.
    pub rtp: Option<pbx::rtp::RtpConfig>,
    /// `[voicemail] operator`, a well-formed extension number; whether it is one of
    /// this system's extensions is [`voicemail_operator`]'s to say (it needs the
    /// database).
    pub voicemail_operator: Option<policy::fields::ExtensionNumber>,
}

impl Config {
    /// The settings that weaken a defence (`config.*` findings, worst first): what
    /// `audit`, `advise`, `serve` and the console's dashboard report, with `guard` in
    /// force instead of the file's `[guard]` (the file's with the thresholds changed in
    /// the database over it: a threshold lowered from the console is as much a
    /// weakening as one lowered in the file).
    pub fn findings_with(&self, guard: &policy::ban::BanPolicy) -> Vec<policy::Finding> {
        let mail = self.mail.as_ref().map(|m| policy::weakening::MailFacts {
            host: &m.host,
            encrypted: m.security != accounts::mail::Security::None,
        });
        policy::weakening::findings(&policy::weakening::Settings {
            guard,
            policy: &self.settings.policy,
            dialplan: &self.settings.dialplan,
            mail,
            grace_secs: self.settings.provisioning.grace_secs,
            provisioning_url: self.settings.provisioning.base_url.as_deref(),
            nonce_lifetime_secs: self.nonce_lifetime_secs,
        })
    }
}

const DEFAULT_REALM: &str = "sipward";
const DEFAULT_NONCE_LIFETIME: u64 = 300;

/// Reads the config: the explicit file (which must exist), else DATA/sipward.toml when
/// present, else the defaults. `database` (`--database` / SIPWARD_DATABASE_URL) wins
/// over the file's `[store] url`.
pub fn load(
    explicit: Option<&Path>,
    data: &Path,
    database: Option<&str>,
) -> anyhow::Result<Config> {
    let path: Option<PathBuf> = match explicit {
        Some(p) => Some(p.to_owned()),
        None => Some(data.join("sipward.toml")).filter(|p| p.exists()),
    };
    let mut raw = match &path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                OperatorError(format!("cannot read the config file {}: {e}", p.display()))
            })?;
            parse(&text).with_context(|| format!("in the config file {}", p.display()))?
        }
        None => RawConfig::default(),
    };
    if let (Some(p), Some(m)) = (&path, &mut raw.mail) {
        if m.password.is_some() {
            private(
                p,
                "mail.password",
                "mail.password_file or mail.password_env",
            )?;
        }
        m.password = mail_password(m)?;
    }
    if let (Some(p), Some(url)) = (&path, &raw.store.url)
        && store::PgUrl::parse(url).is_ok_and(|u| u.redacted() != *url)
    {
        private(
            p,
            "the database password (store.url)",
            "--database or SIPWARD_DATABASE_URL",
        )?;
    }
    if let Some(url) = database {
        raw.store.url = Some(url.to_owned());
    }
    typed(raw)
}

/// Refuses a file that holds a secret (`what`) but that others may read, the way the
/// data dir's key is refused.
pub(crate) fn private(path: &Path, what: &str, instead: &str) -> anyhow::Result<()> {
    let mode = std::fs::metadata(path)
        .map_err(|e| OperatorError(format!("cannot read {}: {e}", path.display())))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(OperatorError(format!(
            "{} holds {what} but others may read it (mode {mode:04o}): make it private (chmod 600 {}), or keep the secret in {instead}",
            path.display(),
            path.display()
        ))
        .into());
    }
    Ok(())
}

/// The SMTP password from exactly one of `password`, `password_file` (first line; the
/// file must be 0600) and `password_env` (the variable it names).
fn mail_password(m: &RawMail) -> anyhow::Result<Option<String>> {
    let given = [
        m.password.is_some(),
        m.password_file.is_some(),
        m.password_env.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(OperatorError(
            "set one of mail.password, mail.password_file and mail.password_env, not several"
                .into(),
        )
        .into());
    }
    if let Some(file) = &m.password_file {
        private(file, "the SMTP password", "mail.password_env")?;
        let text = std::fs::read_to_string(file).map_err(|e| {
            OperatorError(format!(
                "cannot read mail.password_file {}: {e}",
                file.display()
            ))
        })?;
        let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if line.is_empty() {
            return Err(
                OperatorError(format!("mail.password_file {} is empty", file.display())).into(),
            );
        }
        return Ok(Some(line.to_owned()));
    }
    if let Some(name) = &m.password_env {
        let value = std::env::var(name).map_err(|_| {
            OperatorError(format!(
                "mail.password_env names {name:?}, which is not set (or not UTF-8)"
            ))
        })?;
        if value.is_empty() {
            return Err(OperatorError(format!("the environment variable {name} is empty")).into());
        }
        return Ok(Some(value));
    }
    Ok(m.password.clone())
}

fn parse(text: &str) -> anyhow::Result<RawConfig> {
    toml::from_str(text).map_err(|e| {
        // toml's own message does not name the setting; the line it is on does.
        let at = e
            .span()
            .and_then(|span| {
                let line = text.get(..span.start)?.matches('\n').count();
                let shown = text.lines().nth(line)?.trim();
                Some(format!("line {} (`{shown}`): ", line + 1))
            })
            .unwrap_or_default();
        OperatorError(format!("{at}{}", e.message().trim_end())).into()
    })
}

fn typed(raw: RawConfig) -> anyhow::Result<Config> {
    raw.policy.validate().map_err(OperatorError)?;
    raw.registrar.validate().map_err(OperatorError)?;
    raw.guard.validate().map_err(OperatorError)?;
    let sip_tcp = sip_tcp(&raw.sip, &raw.guard, &raw.tls)?;
    let sip_messages = sip_messages(&raw.sip)?;
    let rtp = raw.media.as_ref().map(rtp).transpose()?;
    let tls = tls(&raw.tls)?;
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
    if let Some(spec) = &raw.log.filter {
        crate::log::check(spec).map_err(|e| OperatorError(format!("log.filter: {e}")))?;
    }
    let database = raw
        .store
        .url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
        .map(store::PgUrl::parse)
        .transpose()
        .map_err(|e| OperatorError(format!("store.url: {e}")))?;
    let version_poll = match raw.store.poll_ms {
        None => pbx::server::VERSION_POLL,
        Some(ms @ 50..=10_000) => std::time::Duration::from_millis(ms),
        Some(ms) => {
            return Err(OperatorError(format!(
                "store.poll_ms must be between 50 and 10000 (milliseconds), not {ms}"
            ))
            .into());
        }
    };
    let console_allow = networks("console.allow", &raw.console.allow)?;
    let http = http(
        &raw.console,
        raw.http,
        &console_allow,
        &provisioning,
        domain.as_deref(),
    )?;
    let voicemail_operator = raw
        .voicemail
        .operator
        .as_deref()
        .map(|n| {
            policy::fields::ExtensionNumber::parse(n).map_err(|e| {
                OperatorError(format!(
                    "voicemail.operator must name an internal extension: {e}"
                ))
            })
        })
        .transpose()?;
    let node = raw
        .cluster
        .node
        .as_deref()
        .map(policy::node::NodeName::parse)
        .transpose()
        .map_err(|e| OperatorError(format!("cluster.node: {e}")))?;
    let internal = raw
        .cluster
        .internal
        .as_deref()
        .map(internal_address)
        .transpose()
        .map_err(|e| OperatorError(format!("cluster.internal: {e}")))?;
    Ok(Config {
        node,
        internal,
        backup,
        console_allow,
        http,
        sip_tcp,
        sip_messages,
        tls,
        rtp,
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
        log_filter: raw.log.filter,
        database,
        version_poll,
        voicemail_operator,
    })
}

/// The voicemail's operator (`[voicemail] operator`) once it is known to be an
/// internal extension of this system: an extension (not a fax, not a gateway's virtual
/// extension) that the dial plan takes for internal. Anything else (a PSTN number, an
/// emergency number, a number nobody has) is refused with a sentence naming the key:
/// `0` in the voicemail must never lead outside.
pub async fn voicemail_operator(
    config: &Config,
    reg: &accounts::Registry,
) -> anyhow::Result<Option<policy::voicemail::menu::Operator>> {
    let Some(number) = &config.voicemail_operator else {
        return Ok(None);
    };
    let refused = |why: &str| -> anyhow::Error {
        OperatorError(format!(
            "voicemail.operator = \"{}\" {why}: it must name an internal extension of this system",
            number.as_str()
        ))
        .into()
    };
    let internal = config.settings.dialplan.dialled(number.as_str(), |_| true)
        == policy::dialplan::Dialled::Internal;
    if !internal {
        return Err(refused("is an emergency number"));
    }
    match reg.get_extension(number.as_str()).await {
        Ok(e) if e.kind == accounts::extension::ExtensionKind::User => Ok(Some(
            policy::voicemail::menu::Operator::configured(number.clone()),
        )),
        Ok(_) => Err(refused("is a fax extension")),
        Err(accounts::Error::NotFound { .. }) => Err(refused("is no extension")),
        Err(e) => Err(anyhow::Error::new(e).context("cannot check voicemail.operator")),
    }
}

/// Addresses or CIDR networks of a list setting.
/// An internal hop address: a concrete `IP:PORT` the other nodes can reach (it is
/// published for them), so neither an unspecified address nor port 0.
fn internal_address(text: &str) -> Result<std::net::SocketAddr, String> {
    let addr: std::net::SocketAddr = text
        .trim()
        .parse()
        .map_err(|_| "give IP:PORT (such as 10.0.0.5:5070)".to_owned())?;
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err("the other nodes reach it there: name an address and a port".into());
    }
    Ok(addr)
}

fn networks(setting: &str, list: &[String]) -> anyhow::Result<Vec<ipnet::IpNet>> {
    list.iter()
        .map(|n| {
            n.trim()
                .parse::<ipnet::IpNet>()
                .or_else(|_| n.trim().parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    OperatorError(format!(
                        "{setting}: {:?} is not an address or CIDR network",
                        n.chars().take(60).collect::<String>()
                    ))
                    .into()
                })
        })
        .collect()
}

/// The HTTP server's settings: `[console]` hosts and healthz, `[http]`.
fn http(
    console: &RawConsole,
    raw: RawHttp,
    allow: &[ipnet::IpNet],
    provisioning: &accounts::registry::ProvisioningSettings,
    domain: Option<&str>,
) -> anyhow::Result<console::entry::HttpSettings> {
    let d = console::entry::HttpSettings::default();
    let mut hosts = Vec::new();
    for h in &console.hosts {
        let h = h.trim().to_ascii_lowercase();
        let (name, port) = match h.rsplit_once(':') {
            Some((n, p)) if !n.contains(':') => (n, Some(p)),
            _ => (h.as_str(), None),
        };
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if policy::fields::Host::parse(name).is_err() || !port_ok {
            return Err(OperatorError(format!(
                "console.hosts: {:?} is not a host name with an optional :port",
                h.chars().take(60).collect::<String>()
            ))
            .into());
        }
        hosts.push(h.clone());
    }
    // The names phones and administrators are told to use are this server's names.
    if let Some(url) = &provisioning.base_url {
        let host = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_ascii_lowercase();
        hosts.push(host);
    }
    if let Some(d) = domain {
        hosts.push(d.to_owned());
    }
    let connections_per_source = raw
        .connections_per_source
        .unwrap_or(d.connections_per_source);
    if !(1..=1024).contains(&connections_per_source) {
        return Err(
            OperatorError("http.connections_per_source must be between 1 and 1024".into()).into(),
        );
    }
    let header_timeout_secs = raw
        .header_timeout_secs
        .unwrap_or(d.header_timeout.as_secs());
    if !(1..=300).contains(&header_timeout_secs) {
        return Err(
            OperatorError("http.header_timeout_secs must be between 1 and 300".into()).into(),
        );
    }
    let request_timeout_secs = raw
        .request_timeout_secs
        .unwrap_or(d.request_timeout.as_secs());
    if !(1..=3600).contains(&request_timeout_secs) {
        return Err(
            OperatorError("http.request_timeout_secs must be between 1 and 3600".into()).into(),
        );
    }
    Ok(console::entry::HttpSettings {
        hosts,
        trusted_proxies: networks("http.trusted_proxies", &raw.trusted_proxies)?,
        allow: allow.to_vec(),
        healthz: console.healthz.unwrap_or(d.healthz),
        connections_per_source,
        header_timeout: std::time::Duration::from_secs(header_timeout_secs),
        request_timeout: std::time::Duration::from_secs(request_timeout_secs),
    })
}

/// The message size limits of `[sip]`: at least what any SIP message needs (1,300 bytes,
/// RFC 3261 §18.1.1's path-MTU figure), at most what a datagram can hold (UDP) or a
/// megabyte (TCP).
fn sip_messages(raw: &RawSip) -> anyhow::Result<pbx::transport::MessageLimits> {
    let d = pbx::transport::MessageLimits::default();
    let datagram = raw.max_message_udp.unwrap_or(d.datagram);
    if !(1300..=65_507).contains(&datagram) {
        return Err(OperatorError(
            "sip.max_message_udp must be between 1300 and 65507 bytes".into(),
        )
        .into());
    }
    let stream = raw.max_message_tcp.unwrap_or(d.stream);
    if !(1300..=1 << 20).contains(&stream) {
        return Err(OperatorError(
            "sip.max_message_tcp must be between 1300 and 1048576 bytes".into(),
        )
        .into());
    }
    Ok(pbx::transport::MessageLimits { datagram, stream })
}

/// `[media]`: a range of at least one port pair, inside 1024-65535, and a share of it.
fn rtp(raw: &RawMedia) -> anyhow::Result<pbx::rtp::RtpConfig> {
    let d = pbx::rtp::RtpConfig::default();
    let ports = match &raw.rtp_ports {
        None => d.ports,
        Some(text) => {
            let parsed = text
                .split_once('-')
                .and_then(|(a, b)| {
                    Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
                })
                .filter(|(lo, hi)| *lo >= 1024 && hi > lo);
            let Some((lo, hi)) = parsed else {
                return Err(OperatorError(
                    "media.rtp_ports must be \"LOW-HIGH\" with 1024 <= LOW < HIGH <= 65535".into(),
                )
                .into());
            };
            lo..=hi
        }
    };
    let per_source = raw.rtp_ports_per_source.unwrap_or(d.ports_per_source);
    if !(1..=64).contains(&per_source) {
        return Err(
            OperatorError("media.rtp_ports_per_source must be between 1 and 64".into()).into(),
        );
    }
    let config = pbx::rtp::RtpConfig {
        ports,
        ports_per_source: per_source,
        ports_per_trunk: raw.rtp_ports_per_trunk,
    };
    if let Some(per_trunk) = raw.rtp_ports_per_trunk
        && !(per_source..=config.pairs()).contains(&per_trunk)
    {
        return Err(OperatorError(format!(
            "media.rtp_ports_per_trunk must be between media.rtp_ports_per_source ({per_source}) \
             and the pairs of media.rtp_ports ({})",
            config.pairs()
        ))
        .into());
    }
    Ok(config)
}

/// The SIP TCP limits from `[sip]`, with the prefixes of `[guard]`.
fn sip_tcp(
    raw: &RawSip,
    guard: &policy::ban::BanPolicy,
    tls: &RawTls,
) -> anyhow::Result<pbx::transport::TcpLimits> {
    let d = pbx::transport::TcpLimits::default();
    let per_source = raw.tcp_connections_per_source.unwrap_or(d.per_source);
    if !(1..=4096).contains(&per_source) {
        return Err(OperatorError(
            "sip.tcp_connections_per_source must be between 1 and 4096".into(),
        )
        .into());
    }
    let first = raw
        .tcp_first_message_secs
        .unwrap_or(d.first_message.as_secs());
    if !(1..=60).contains(&first) {
        return Err(
            OperatorError("sip.tcp_first_message_secs must be between 1 and 60".into()).into(),
        );
    }
    let idle = raw.tcp_idle_secs.unwrap_or(d.idle.as_secs());
    if !(first..=d.idle_registered.as_secs()).contains(&idle) {
        return Err(OperatorError(format!(
            "sip.tcp_idle_secs must be between sip.tcp_first_message_secs and {}",
            d.idle_registered.as_secs()
        ))
        .into());
    }
    let idle_registered = raw
        .tcp_idle_registered_secs
        .unwrap_or(d.idle_registered.as_secs());
    if !(idle..=86_400).contains(&idle_registered) {
        return Err(OperatorError(
            "sip.tcp_idle_registered_secs must be between sip.tcp_idle_secs and 86400 (a day)"
                .into(),
        )
        .into());
    }
    let unfinished = raw
        .tcp_unfinished_per_source
        .unwrap_or(d.unfinished_per_source);
    if !(1..=per_source).contains(&unfinished) {
        return Err(OperatorError(
            "sip.tcp_unfinished_per_source must be between 1 and sip.tcp_connections_per_source"
                .into(),
        )
        .into());
    }
    let message = raw.tcp_message_secs.unwrap_or(d.message.as_secs());
    if !(1..=120).contains(&message) {
        return Err(OperatorError("sip.tcp_message_secs must be between 1 and 120".into()).into());
    }
    let handshake = tls.handshake_secs.unwrap_or(d.handshake.as_secs());
    if !(1..=30).contains(&handshake) {
        return Err(OperatorError("tls.handshake_secs must be between 1 and 30".into()).into());
    }
    let handshakes = tls.handshakes_per_source.unwrap_or(d.handshakes_per_source);
    if !(1..=256).contains(&handshakes) {
        return Err(
            OperatorError("tls.handshakes_per_source must be between 1 and 256".into()).into(),
        );
    }
    Ok(pbx::transport::TcpLimits {
        handshake: std::time::Duration::from_secs(handshake),
        handshakes_per_source: handshakes,
        per_source,
        per_prefix: per_source.saturating_mul(guard.prefix_factor),
        ipv4_prefix: guard.ipv4_prefix,
        ipv6_prefix: guard.ipv6_prefix,
        first_message: std::time::Duration::from_secs(first),
        idle: std::time::Duration::from_secs(idle),
        idle_registered: std::time::Duration::from_secs(idle_registered),
        unfinished_per_source: unfinished,
        unfinished_per_prefix: unfinished.saturating_mul(guard.prefix_factor),
        message: std::time::Duration::from_secs(message),
        ..d
    })
}

/// `[tls]`, checked: a certificate needs its key, names must be host names or addresses.
fn tls(raw: &RawTls) -> anyhow::Result<TlsConfig> {
    let operator = match (&raw.cert, &raw.key) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            return Err(OperatorError(
                "tls.cert and tls.key go together: set both, or neither to use the generated certificate".into(),
            )
            .into());
        }
    };
    let mut names = Vec::new();
    for n in &raw.names {
        let n = n.trim().to_ascii_lowercase();
        if n.parse::<std::net::IpAddr>().is_err() {
            policy::fields::Host::parse(&n)
                .map_err(|e| OperatorError(format!("tls.names: {e}")))?;
        }
        names.push(n);
    }
    Ok(TlsConfig {
        enabled: raw.enabled,
        listen: raw.listen,
        operator,
        names,
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
    if !(0..=7 * 86_400).contains(&grace_secs) {
        return Err(bad(
            "provisioning.grace_secs must be between 0 and 604800 seconds (7 days)".into(),
        ));
    }
    let transport = raw.transport.unwrap_or(d.transport);
    let port = raw.port.unwrap_or(d.port);
    let tls_port = raw.tls_port.unwrap_or(d.tls_port);
    if tls_port == 0 {
        return Err(bad("provisioning.tls_port must not be 0".into()));
    }
    if port == 0 {
        return Err(bad("provisioning.port must not be 0".into()));
    }
    Ok(accounts::registry::ProvisioningSettings {
        server,
        port,
        tls_port,
        transport,
        voicemail_number,
        base_url,
        grace_secs,
        ca_pem: None,
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
    if raw.security == accounts::mail::Security::None
        && raw.username.is_some()
        && !policy::weakening::is_loopback_host(&host)
    {
        return Err(bad(
            "mail.security = \"none\" with a login to a host other than this one would send the SMTP password and every welcome mail in clear: use \"starttls\" or \"tls\"",
        ));
    }
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
    fn the_voicemail_operator_is_an_extension_number_or_refused_naming_the_key() {
        assert_eq!(config("").expect("defaults").voicemail_operator, None);
        let c = config("[voicemail]\noperator = \"100\"\n").expect("an extension number");
        assert_eq!(
            c.voicemail_operator.map(|n| n.as_str().to_owned()),
            Some("100".into())
        );
        for bad in ["9XX", "+442079460000", "004420794600", "", "1"] {
            let e = config(&format!("[voicemail]\noperator = \"{bad}\"\n"))
                .expect_err("not an extension number");
            assert!(e.to_string().contains("voicemail.operator"), "{bad}: {e}");
        }
        assert!(
            config("[voicemail]\ncallback = \"1\"\n").is_err(),
            "unknown keys"
        );
    }

    #[test]
    fn defaults() {
        let c = config("").expect("valid");
        assert_eq!(c.settings.realm, "sipward");
        assert_eq!(c.settings.domain, None);
        assert_eq!(c.nonce_lifetime_secs, 300);
        assert_eq!(c.registrar, RegistrarConfig::default());
        assert_eq!(c.digest_algorithms, vec![Algorithm::Md5, Algorithm::Sha256]);
        assert_eq!(
            c.sip_tcp.idle_registered.as_secs(),
            900,
            "the RFC 5626 figure"
        );
        assert_eq!(c.sip_messages.datagram, 16 * 1024);
        assert_eq!(c.sip_messages.stream, 64 * 1024);
        assert_eq!(c.bans.gateway_requests, 10_000);
        let md5 = config("[sip]\ndigest_algorithms = [\"MD5\"]\n").expect("valid");
        assert_eq!(md5.digest_algorithms, vec![Algorithm::Md5]);
        assert_eq!(c.rtp, None, "no [media]: no voicemail, no RTP port");
        let media = config("[media]\nrtp_ports = \" 30000-30099 \"\nrtp_ports_per_source = 2\n")
            .expect("valid");
        let rtp = media.rtp.expect("[media] given");
        assert_eq!(rtp.ports, 30000..=30099);
        assert_eq!(rtp.ports_per_source, 2);
        assert_eq!(
            rtp.trunk_share(),
            25,
            "a trunk's callers: half the 50 pairs"
        );
        let trunk = config("[media]\nrtp_ports = \"30000-30099\"\nrtp_ports_per_trunk = 40\n")
            .expect("valid");
        assert_eq!(trunk.rtp.expect("[media] given").trunk_share(), 40);
        assert_eq!(
            config("[media]\n").expect("valid").rtp,
            Some(pbx::rtp::RtpConfig::default())
        );
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
    fn http_settings_name_the_servers_hosts_and_its_proxies() {
        let c = config(
            "[sip]\ndomain = \"pbx.example.com\"\n[provisioning]\nbase_url = \"https://prov.example.com:8443\"\n\
             [console]\nhosts = [\"Console.example.com\"]\nhealthz = \"allow-list\"\nallow = [\"10.0.0.0/8\"]\n\
             [http]\ntrusted_proxies = [\"192.0.2.10\", \"198.51.100.0/24\"]\n",
        )
        .expect("valid");
        assert_eq!(
            c.http.hosts,
            [
                "console.example.com",
                "prov.example.com:8443",
                "pbx.example.com"
            ]
        );
        assert_eq!(c.http.healthz, console::entry::Healthz::AllowList);
        assert_eq!(c.http.trusted_proxies.len(), 2);
        assert_eq!(c.http.allow, c.console_allow);
        let d = config("").expect("valid");
        assert!(d.http.hosts.is_empty() && d.http.trusted_proxies.is_empty());
        assert_eq!(d.http.healthz, console::entry::Healthz::Public);
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
            "[provisioning]\ngrace_secs = 2592000\n",
            "[guard]\nflood_window_secs = 9223372036854775807\n",
            "[guard]\nflood_requests = 0\n",
            "[guard]\nextension_failures = 0\n",
            "[guard]\nauth_failures = 10000\n",
            "[guard]\nauth_window_secs = 172800\n",
            "[policy]\nmin_strength_score = 0\n",
            "[dialplan.limits]\nconcurrent_external = 0\n",
            "[cluster]\nnode = \"10.0.0.1\"\n",
            "[cluster]\nnode = \"a b\"\n",
            "[cluster]\nnode = \"\"\n",
            "[cluster]\ninternal = \"0.0.0.0:5070\"\n",
            "[cluster]\ninternal = \"10.0.0.5:0\"\n",
            "[cluster]\ninternal = \"pbx-a:5070\"\n",
            "[mail]\nsmtp_host = \"mail.example.com\"\nfrom = \"pbx@example.com\"\nsecurity = \"none\"\nusername = \"u\"\npassword = \"p\"\n",
            "[console]\nhosts = [\"bad host\"]\n",
            "[console]\nhosts = [\"pbx.example.com:0\"]\n",
            "[console]\nhealthz = \"sometimes\"\n",
            "[http]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            "[http]\nconnections_per_source = 0\n",
            "[sip]\ntcp_connections_per_source = 0\n",
            "[sip]\ntcp_first_message_secs = 0\n",
            "[sip]\ntcp_idle_secs = 2\n",
            "[sip]\nmax_message_udp = 100\n",
            "[sip]\ntcp_idle_registered_secs = 10\n",
            "[sip]\ntcp_unfinished_per_source = 0\n",
            "[sip]\ntcp_unfinished_per_source = 33\n",
            "[sip]\ntcp_message_secs = 0\n",
            "[sip]\nmax_message_udp = 70000\n",
            "[sip]\nmax_message_tcp = 2000000\n",
            "[http]\nheader_timeout_secs = 0\n",
            "[http]\nproxies = []\n",
            "[media]\nrtp_ports = \"10000\"\n",
            "[media]\nrtp_ports = \"20000-10000\"\n",
            "[media]\nrtp_ports = \"80-2000\"\n",
            "[media]\nrtp_ports = \"10000-70000\"\n",
            "[media]\nrtp_ports_per_source = 0\n",
            "[media]\nrtp_ports = \"30000-30099\"\nrtp_ports_per_trunk = 51\n",
            "[media]\nrtp_ports_per_source = 8\nrtp_ports_per_trunk = 4\n",
            "[media]\nports = \"1-2\"\n",
        ] {
            assert!(config(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_refusal_is_one_sentence_naming_the_range() {
        let e = config("[guard]\nflood_window_secs = 9223372036854775807\n")
            .expect_err("refused")
            .to_string();
        assert_eq!(
            e,
            "guard.flood_window_secs must be between 1 and 86400 seconds (a day)"
        );
        let e = config("[guard]\nflood_requests = 0\n")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("write \"off\""), "{e}");
        // toml's message does not name the setting: the line it is on does.
        assert!(e.starts_with("line 2 (`flood_requests = 0`): "), "{e}");
    }

    #[test]
    fn turning_a_defence_off_takes_off_and_is_a_finding() {
        let c = config("[guard]\nflood_requests = \"off\"\nextension_failures = \"off\"\n")
            .expect("off is taken");
        assert_eq!((c.bans.flood_requests, c.bans.extension_failures), (0, 0));
        let rules: Vec<String> = c
            .findings_with(&c.bans)
            .iter()
            .map(|f| f.rule.to_string())
            .collect();
        assert_eq!(
            rules,
            ["config.extension_lockout_off", "config.flood_limits_off"]
        );
        assert!({
            let c = config("").expect("defaults");
            c.findings_with(&c.bans).is_empty()
        });
        // A relay on this machine may go without TLS; anywhere else it is critical.
        let local = config(
            "[mail]\nsmtp_host = \"127.0.0.1\"\nfrom = \"pbx@example.com\"\nsecurity = \"none\"\n",
        )
        .expect("local relay");
        assert!(local.findings_with(&local.bans).is_empty());
        let remote = config("[mail]\nsmtp_host = \"mail.example.com\"\nfrom = \"pbx@example.com\"\nsecurity = \"none\"\n")
            .expect("accepted, and reported");
        let f = remote.findings_with(&remote.bans);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule.to_string(), "config.mail_unencrypted");
        assert_eq!(f[0].severity, policy::Severity::Critical);
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    #[test]
    fn the_database_url_is_a_secret_and_the_command_line_wins() {
        let dir = tempfile::tempdir().expect("tmp");
        let with_pw = "[store]\nurl = \"postgres://pbx:Db-Secret-7@db.example/pbx\"\n";
        let open = write(dir.path(), "open.toml", with_pw, 0o644);
        let e = format!(
            "{:#}",
            load(Some(&open), dir.path(), None).expect_err("0644")
        );
        assert!(e.contains("chmod 600"), "{e}");
        assert!(!e.contains("Db-Secret-7"), "never quoted: {e}");
        let closed = write(dir.path(), "closed.toml", with_pw, 0o600);
        let c = load(Some(&closed), dir.path(), None).expect("0600");
        let url = c.database.expect("url");
        assert_eq!(url.to_string(), "postgres://pbx:***@db.example/pbx");
        assert!(!format!("{url:?}").contains("Db-Secret-7"));
        assert_eq!(c.version_poll, pbx::server::VERSION_POLL);
        // Without a password the file may be readable; --database wins over it.
        let plain = write(
            dir.path(),
            "plain.toml",
            "[store]\nurl = \"postgres://pbx@db.example/pbx\"\npoll_ms = 2000\n",
            0o644,
        );
        let c = load(Some(&plain), dir.path(), Some("postgres://x@other/db")).expect("plain");
        assert_eq!(
            c.database.expect("url").to_string(),
            "postgres://x@other/db"
        );
        assert_eq!(c.version_poll, std::time::Duration::from_secs(2));
        let c = load(None, dir.path(), None).expect("defaults");
        assert!(c.database.is_none(), "SQLite in the data dir by default");
        for bad in [
            "[store]\nurl = \"mysql://u:Db-Secret-8@h/db\"\n",
            "[store]\npoll_ms = 20\n",
        ] {
            let p = write(dir.path(), "bad.toml", bad, 0o600);
            let e = format!("{:#}", load(Some(&p), dir.path(), None).expect_err(bad));
            assert!(e.contains("store."), "{e}");
            assert!(!e.contains("Db-Secret-8"), "{e}");
        }
    }

    #[test]
    fn a_secret_in_a_file_others_may_read_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let mail = "[mail]\nsmtp_host = \"mail.example.com\"\nfrom = \"pbx@example.com\"\nusername = \"pbx\"\n";
        let inline = format!("{mail}password = \"Smtp-Secret-1\"\n");
        let open = write(dir.path(), "open.toml", &inline, 0o644);
        let e = load(Some(&open), dir.path(), None)
            .expect_err("0644")
            .to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        assert!(!e.contains("Smtp-Secret-1"), "never quoted");
        let closed = write(dir.path(), "closed.toml", &inline, 0o600);
        let c = load(Some(&closed), dir.path(), None).expect("0600");
        let pw = c.mail.expect("mail").password.expect("password");
        assert!(pw.ct_eq("Smtp-Secret-1"));
        // Or the secret lives in a file of its own (private too), and the config may be
        // readable.
        let secret = write(dir.path(), "smtp.secret", "Smtp-Secret-2\n", 0o600);
        let by_file = write(
            dir.path(),
            "by-file.toml",
            &format!("{mail}password_file = \"{}\"\n", secret.display()),
            0o644,
        );
        let c = load(Some(&by_file), dir.path(), None).expect("file");
        assert!(
            c.mail
                .expect("mail")
                .password
                .expect("pw")
                .ct_eq("Smtp-Secret-2")
        );
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(
            load(Some(&by_file), dir.path(), None).is_err(),
            "a readable secret file"
        );
        // Two sources at once are refused.
        let both = write(
            dir.path(),
            "both.toml",
            &format!("{mail}password_file = \"x\"\npassword_env = \"Y\"\n"),
            0o600,
        );
        assert!(load(Some(&both), dir.path(), None).is_err());
        let unset = write(
            dir.path(),
            "env.toml",
            &format!("{mail}password_env = \"SIPWARD_TEST_NOT_SET_ANYWHERE\"\n"),
            0o644,
        );
        let e = load(Some(&unset), dir.path(), None)
            .expect_err("unset")
            .to_string();
        assert!(e.contains("SIPWARD_TEST_NOT_SET_ANYWHERE"), "{e}");
    }
}
