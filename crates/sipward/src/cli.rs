//! The command line, as DESIGN.md fixes it. Flags here are raw text: validation happens
//! once, in the registry, so the CLI, the CSV import and the console share it.

use std::io::BufRead;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::OperatorError;

#[derive(Debug, Parser)]
#[command(
    name = "sipward",
    version,
    about = "A SIP PBX core that cannot be turned into a toll-fraud relay"
)]
pub struct Cli {
    /// The data directory (database, secrets key, provisioning files, backups).
    #[arg(
        long,
        global = true,
        env = "SIPWARD_DATA",
        default_value = "./sipward-data"
    )]
    pub data: PathBuf,
    /// The config file (TOML); by default DATA/sipward.toml when it exists.
    #[arg(long, global = true, env = "SIPWARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// How log records are written to stderr: text or json. Security events are one
    /// JSON line each in both.
    #[arg(
        long,
        global = true,
        env = "SIPWARD_LOG_FORMAT",
        value_enum,
        default_value_t = crate::log::Format::Text
    )]
    pub log_format: crate::log::Format,
    /// Which log records are written, as RUST_LOG says it (`info`, `pbx=debug,warn`);
    /// it overrides the config file's `[log] filter`.
    #[arg(long = "log", global = true, env = "RUST_LOG")]
    pub log_filter: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the PBX: SIP on UDP and TCP, health and metrics over HTTP.
    Serve(ServeArgs),
    /// Extensions: add, update, remove, list, show.
    #[command(subcommand)]
    Ext(ExtCommand),
    /// PSTN gateways (they register to sipward on a virtual extension number).
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// VoIP provider accounts (sipward registers to them).
    #[command(subcommand)]
    Provider(ProviderCommand),
    /// Report weak credentials across extensions, gateways and providers.
    Audit(AuditArgs),
    /// Add many extensions from a CSV file, all or nothing.
    Import(ImportArgs),
    /// Banned sources: list, ban by hand, lift a ban.
    #[command(subcommand)]
    Ban(BanCommand),
    /// Networks that are never banned (trunks, gateways, offices).
    #[command(subcommand)]
    Allow(AllowCommand),
    /// The welcome-mail outbox.
    #[command(subcommand)]
    Mail(MailCommand),
    /// Outbound routes: which trunk a dialled number goes to.
    #[command(subcommand)]
    Route(RouteCommand),
    /// Inbound numbers (DIDs): which extension a call from a trunk reaches.
    #[command(subcommand)]
    Did(DidCommand),
    /// Voicemail boxes: list them, show one with its messages, reset a PIN (through
    /// Re-Generate, which mails the owner the new one).
    #[command(subcommand)]
    Vm(VmCommand),
    /// Calls to trunks up right now (as the running server last wrote them).
    Calls {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Encrypted backups: create, verify, restore (refusing ones from before a security
    /// epoch unless --reharden).
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Console administrators and API tokens.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The administrators' audit log (changes made by commands, epochs and restores).
    Log {
        /// How many of the newest entries to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// The SIP TLS certificate: reload it in the running server, or show it.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Which ports must be reachable from the internet, and why; an nftables rule set.
    Advise {
        /// The SIP address `serve` listens on (to name its port).
        #[arg(long, default_value = "0.0.0.0:5060")]
        sip: std::net::SocketAddr,
        /// The HTTP address of the console and provisioning.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: std::net::SocketAddr,
        /// Phones outside the LAN will register (also inferred from live registrations
        /// from public addresses).
        #[arg(long)]
        remote_phones: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Set a console administrator's password (creating the administrator): a strong
    /// one is generated and shown once unless --password is given (`-` reads stdin).
    /// Ends the administrator's sessions.
    Passwd {
        #[arg(default_value = "admin")]
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Turn on a TOTP second factor for an administrator (the secret is shown once, as
    /// an otpauth:// URI for authenticator apps), or turn it off with --off.
    Totp {
        name: String,
        #[arg(long)]
        off: bool,
    },
    /// API tokens for scripts (`Authorization: Bearer TOKEN` on /api/v1).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Lift the console's login lockout of an administrator (NAME) or of a source
    /// address (--source IP; an IPv6 address lifts its /64), in the running server(s).
    Unlock {
        name: Option<String>,
        #[arg(long)]
        source: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is shown once (only its SHA-256 is stored).
    Create { name: String },
    /// Revoke a token.
    Remove { name: String },
}

/// How a backup is encrypted or opened. Without a flag: `[backup]` in the config, then
/// the env variable SIPWARD_BACKUP_PASSPHRASE, then a prompt.
#[derive(Debug, Args)]
pub struct BackupKeyArgs {
    /// A file whose first line is the passphrase.
    #[arg(long, conflicts_with_all = ["recipient", "identity"])]
    pub passphrase_file: Option<PathBuf>,
    /// Encrypt to this age recipient (`age1...`) instead of a passphrase (create only).
    #[arg(long, conflicts_with = "identity")]
    pub recipient: Option<String>,
    /// The age identity file that opens a backup made for a recipient (verify, restore).
    #[arg(long)]
    pub identity: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Write one encrypted file with the database, secrets key, config, templates and
    /// provisioning files.
    Create {
        /// Where to write it (default: DATA/backups/sipward-TIME.swbak).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        key: BackupKeyArgs,
        #[command(flatten)]
        out_format: JsonFlag,
    },
    /// Decrypt a backup and check its manifest and every file's SHA-256.
    Verify {
        file: PathBuf,
        #[command(flatten)]
        key: BackupKeyArgs,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Restore into --data DIR (stopped or new), atomically: a failed restore leaves DIR
    /// as it was; a replaced data dir is kept beside it.
    Restore {
        file: PathBuf,
        #[command(flatten)]
        key: BackupKeyArgs,
        /// Restore a backup from before the current security epoch and apply every newer
        /// epoch's hardening to it, printing what changed.
        #[arg(long)]
        reharden: bool,
        /// With --reharden: queue no welcome mails for re-generated extensions.
        #[arg(long)]
        no_email: bool,
        /// Trust archives signed by this key (its fingerprint, as `backup create` and a
        /// refused restore print it). The data dir restored into trusts its own key.
        #[arg(long, value_name = "FINGERPRINT")]
        trust_signer: Vec<String>,
        /// Restore an archive made before backups were signed (format 1). Anyone with
        /// the age recipient could have made one: only for a file you know is yours.
        #[arg(long)]
        allow_unsigned: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Add a route: numbers matching PATTERN go to TRUNK.
    Add {
        name: String,
        /// Dial pattern: digits, + * #, X (any digit), Z (1-9), N (2-9), [1-5] sets, and
        /// a final `.` for "one or more further digits" (for example `0ZX.` or `00.`).
        #[arg(long)]
        pattern: String,
        /// A gateway or provider name (`gateway:NAME` / `provider:NAME` when both exist).
        #[arg(long)]
        trunk: String,
        /// Leading digits removed before the number goes to the trunk.
        #[arg(long, default_value_t = 0)]
        strip: u32,
        /// Digits put in front after stripping (for example `+49`).
        #[arg(long, default_value = "")]
        prepend: String,
        /// Routes are tried by priority, lowest first (default: after the last one).
        #[arg(long)]
        priority: Option<i64>,
        #[command(flatten)]
        out: JsonFlag,
    },
    Remove {
        name: String,
    },
    /// Routes in the order they are tried.
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum DidCommand {
    /// Calls from a trunk to DID reach extension NUMBER.
    Add {
        did: String,
        #[arg(long = "ext")]
        number: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    Remove {
        did: String,
    },
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Check the certificate files and have the running server put them in force
    /// (existing connections keep theirs); a bad or expired certificate is refused and
    /// the one in force kept.
    Reload {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// The certificate files: names, validity, serial, the CA's fingerprint.
    Show {
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum MailCommand {
    /// Every mail in the outbox and its state (no contents).
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Send the mails that are due now through `[mail]` (as `serve` does).
    Send {
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum BanCommand {
    /// Bans in force (`--all`: expired ones too).
    List {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Ban an address, or a network prefix in CIDR form (2001:db8:1:2::/64), by hand.
    Add {
        address: String,
        /// Why (kept with the ban).
        #[arg(long, default_value = "")]
        reason: String,
        /// How long: 30m, 12h, 7d, or `forever` (the default).
        #[arg(long = "for", default_value = "forever")]
        duration: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Lift the ban of an address or prefix.
    Remove { address: String },
}

#[derive(Debug, Subcommand)]
pub enum AllowCommand {
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Never ban this network (CIDR) or address.
    Add {
        network: String,
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    Remove {
        network: String,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// SIP address for both UDP and TCP (port 0 picks a free one).
    #[arg(long, default_value = "0.0.0.0:5060")]
    pub sip: std::net::SocketAddr,
    /// HTTP address for /healthz and /metrics (local only by default).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: std::net::SocketAddr,
    /// SIP over TLS address (default `[tls] listen`, else the --sip address with the
    /// next port: 0.0.0.0:5061 beside 0.0.0.0:5060, an ephemeral port beside port 0).
    #[arg(long)]
    pub sips: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Level {
    Info,
    Warning,
    Critical,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print one JSON document on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Extension fields shared by `ext add` and `ext update`. A password or PIN given as `-`
/// is read from standard input (keeps it out of the process list and shell history).
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Every extension's box: messages new and saved, their length, the latest, the lock.
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// One box and its messages (time, length, caller, folder; never the audio).
    Show {
        number: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// A new PIN for the box by Re-Generate (new password and PIN, phone files, welcome
    /// mail with both), then the box's lock and wrong-PIN count are cleared.
    ResetPin {
        number: String,
        /// Do not queue the welcome mail.
        #[arg(long = "no-email")]
        no_email: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Args, Default)]
pub struct ExtFields {
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
    /// Make it a fax extension.
    #[arg(long)]
    pub fax: bool,
    /// SIP password (generated when absent on add; `-` reads it from stdin).
    #[arg(long)]
    pub password: Option<String>,
    /// Voicemail PIN (generated when absent on add; `-` reads it from stdin).
    #[arg(long)]
    pub pin: Option<String>,
    /// SIP ID (blank by default; an empty value clears it).
    #[arg(long = "sip-id")]
    pub sip_id: Option<String>,
    /// Authentication ID (random by default).
    #[arg(long = "auth-id")]
    pub auth_id: Option<String>,
    /// Phone MAC address, for provisioning.
    #[arg(long)]
    pub mac: Option<String>,
    /// Phone model, for provisioning.
    #[arg(long)]
    pub model: Option<String>,
    /// Class of service: internal, local, national, international or unrestricted (which
    /// also reaches high-cost destinations). Default from `[dialplan]`: national; an
    /// empty value resets it.
    #[arg(long = "class")]
    pub class_of_service: Option<String>,
    /// The transport its phones are provisioned with: udp, tcp or tls (default: the
    /// config's `[provisioning] transport`; an empty value returns to it).
    #[arg(long)]
    pub transport: Option<String>,
    /// Seconds a call rings before voicemail answers, 0 to 300 (0: no voicemail;
    /// default 20).
    #[arg(long = "voicemail-after")]
    pub voicemail_after_secs: Option<String>,
    /// Mail each new voicemail message to the extension's address: on or off (default
    /// on; only while it has an address).
    #[arg(long = "voicemail-mail")]
    pub voicemail_mail: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ExtCommand {
    /// Add an extension; missing credentials are generated and shown once.
    Add {
        number: String,
        #[command(flatten)]
        fields: ExtFields,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Change fields of an extension.
    Update {
        number: String,
        #[command(flatten)]
        fields: ExtFields,
        /// Make it a user (non-fax) extension.
        #[arg(long, conflicts_with = "fax")]
        user: bool,
        /// With a new password or auth ID: no grace window (a suspected compromise),
        /// the old credentials stop working everywhere at once.
        #[arg(long = "no-grace")]
        no_grace: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Remove an extension.
    Remove { number: String },
    /// Lift the suspension of an extension's outbound calling (a fraud limit was broken).
    Resume { number: String },
    /// List extensions.
    List {
        /// Only weak extensions (a finding of warning or worse).
        #[arg(long)]
        weak: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// New strong password and PIN for some extensions: their phones' files are
    /// rewritten, registered phones told to re-fetch them, welcome mails sent. The old
    /// password keeps working for `provisioning.grace_secs` from where the phones are.
    #[command(group = clap::ArgGroup::new("which").required(true).args(["numbers", "weak", "all"]))]
    Regenerate {
        /// Extension numbers.
        numbers: Vec<String>,
        /// Every weak extension (a finding of warning or worse).
        #[arg(long)]
        weak: bool,
        /// Every extension.
        #[arg(long)]
        all: bool,
        /// Queue no welcome mails.
        #[arg(long = "no-email")]
        no_email: bool,
        /// No grace window (a suspected compromise): the old password and phone login
        /// stop working everywhere at once, the phones' own addresses included.
        #[arg(long = "no-grace")]
        no_grace: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Show one extension and its findings.
    Show {
        number: String,
        /// Also print the SIP password, voicemail PIN and the phone's provisioning login.
        #[arg(long)]
        reveal: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Args)]
pub struct GatewayFields {
    /// Vendor id, such as grandstream or patton (`generic` for others).
    #[arg(long)]
    pub vendor: Option<String>,
    /// The gateway's virtual extension number.
    #[arg(long = "ext")]
    pub number: Option<String>,
    #[arg(long = "auth-id")]
    pub auth_id: Option<String>,
    /// `-` reads it from stdin.
    #[arg(long)]
    pub password: Option<String>,
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Add a PSTN gateway (all fields required).
    Add {
        name: String,
        #[command(flatten)]
        fields: GatewayFields,
        #[command(flatten)]
        out: JsonFlag,
    },
    Update {
        name: String,
        #[command(flatten)]
        fields: GatewayFields,
        #[command(flatten)]
        out: JsonFlag,
    },
    Remove {
        name: String,
    },
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
    Show {
        name: String,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Args)]
pub struct ProviderFields {
    /// The provider's registrar host[:port].
    #[arg(long)]
    pub registrar: Option<String>,
    #[arg(long = "auth-id")]
    pub auth_id: Option<String>,
    /// `-` reads it from stdin.
    #[arg(long)]
    pub password: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Add a VoIP provider account (all fields required).
    Add {
        name: String,
        #[command(flatten)]
        fields: ProviderFields,
        #[command(flatten)]
        out: JsonFlag,
    },
    Update {
        name: String,
        #[command(flatten)]
        fields: ProviderFields,
        #[command(flatten)]
        out: JsonFlag,
    },
    Remove {
        name: String,
    },
    List {
        #[command(flatten)]
        out: JsonFlag,
    },
    Show {
        name: String,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Exit with status 1 when a finding at or above this level exists.
    #[arg(long = "fail-on", value_enum)]
    pub fail_on: Option<Level>,
    #[command(flatten)]
    pub out: JsonFlag,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The CSV file (header row naming the columns).
    pub file: PathBuf,
    #[command(flatten)]
    pub out: JsonFlag,
}

/// Resolves secret flags: a value of `-` is read as one line from standard input, in the
/// order the flags are given here.
pub fn secrets_from_stdin<const N: usize>(values: [&mut Option<String>; N]) -> anyhow::Result<()> {
    let mut stdin = std::io::stdin().lock();
    for v in values {
        if v.as_deref() == Some("-") {
            let mut line = String::new();
            stdin.read_line(&mut line).map_err(|e| {
                OperatorError(format!("cannot read a secret from standard input: {e}"))
            })?;
            let line = line.trim_end_matches(['\n', '\r']).to_owned();
            if line.is_empty() {
                return Err(OperatorError(
                    "standard input ended before the secret was read".into(),
                )
                .into());
            }
            *v = Some(line);
        }
    }
    Ok(())
}
