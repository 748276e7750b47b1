//! The audit rules: weak credentials of extensions, gateways and providers, and outbound
//! routes whose rewrite raises the class of the numbers they send. Each finding has a
//! stable rule id (`kind.check`, for example `ext.password_equals_number`,
//! `route.rewrite_raises_class`), a severity, the field it concerns, and a sentence a
//! person understands. Messages never quote a secret or a part of one.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::config::PolicyConfig;
use crate::dialplan::{Destination, DialPlan, Leaving};
use crate::route::{Pattern, Rewrite};
use crate::{password, pin, route, vendor};

/// What kind of account a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Ext,
    Gateway,
    Provider,
    Route,
    /// The installation's settings (`sipward.toml`): see [`crate::weakening`].
    Config,
    /// The SIP TLS certificate.
    Tls,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ext => "ext",
            Kind::Gateway => "gateway",
            Kind::Provider => "provider",
            Kind::Route => "route",
            Kind::Config => "config",
            Kind::Tls => "tls",
        }
    }

    /// The subject string used in findings, such as `ext:1001`.
    pub fn subject(self, id: &str) -> String {
        format!("{}:{id}", self.as_str())
    }
}

/// How bad a finding is. Ordered: `Info < Warning < Critical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// The individual checks; combined with a [`Kind`] they make a rule id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Check {
    PasswordEqualsNumber,
    PasswordEqualsAuthId,
    PinEqualsNumber,
    SipIdEqualsNumber,
    AuthIdEqualsNumber,
    PasswordTooShort,
    PasswordNotMixed,
    PasswordContainsNumber,
    PasswordContainsAuthId,
    PasswordContainsName,
    PasswordContainsDomain,
    PasswordCommon,
    PasswordGuessable,
    PasswordReused,
    PinTooShort,
    PinTrivial,
    PinContainsNumber,
    FactoryDefaultLogin,
    NoEmail,
    /// A number, SIP ID or auth ID that is also another account's identifier: calls and
    /// registrations for it reach the wrong account.
    IdentityCollision,
    /// A route's rewrite sends numbers out as a higher class than they are dialled.
    RewriteRaisesClass,
    /// A route's rewrite sends numbers that the dial plan reads as a lower class than
    /// they are dialled (typically international digits without `+`).
    RewriteLowersClass,
    // Settings that weaken a defence (`config.*`, see [`crate::weakening`]).
    FloodLimitsOff,
    FloodLimitsLenient,
    /// A gateway's address may send far more than the default before it is limited
    /// (anyone can forge it).
    GatewayLimitLenient,
    ScannerBansOff,
    NoDecoys,
    AuthFailuresLenient,
    BansShort,
    /// Repeat offenders can never be banned often enough within the window to get the
    /// long ban.
    EscalationOff,
    ExtensionLockoutOff,
    ExtensionLockoutLenient,
    WeakCredentialsAllowed,
    ProvisioningProbesLenient,
    MinStrengthLow,
    MinPasswordLengthLow,
    GeneratedPinShort,
    FraudLimitHigh,
    DefaultClassWide,
    MailUnencrypted,
    GraceLong,
    ProvisioningPlainHttp,
    NonceLifetimeLong,
    /// Sources where an account logged in are trusted wider (more traffic, or longer)
    /// than the default.
    TrustWide,
    /// The SIP TLS certificate expires within [`CERT_WARN_DAYS`] days.
    CertExpiring,
    /// The SIP TLS certificate has expired (or is not valid yet): phones that verify it
    /// cannot connect.
    CertExpired,
}

/// `tls.cert_expiring` is reported this many days before the certificate expires.
pub const CERT_WARN_DAYS: i64 = 21;

/// The finding about a TLS certificate valid from `not_before` to `not_after` (Unix
/// seconds) at `now`, if any.
pub fn certificate(subject: &str, not_before: i64, not_after: i64, now: i64) -> Option<Finding> {
    let days = (not_after - now).div_euclid(86_400);
    let (check, message) = if now >= not_after || now < not_before {
        (
            Check::CertExpired,
            "the SIP TLS certificate is not valid now: phones that verify it cannot connect; replace it and run `sipward tls reload`".to_owned(),
        )
    } else if not_after - now <= CERT_WARN_DAYS * 86_400 {
        (
            Check::CertExpiring,
            format!(
                "the SIP TLS certificate expires in {days} days: renew it and run `sipward tls reload`"
            ),
        )
    } else {
        return None;
    };
    Some(Finding {
        rule: RuleId {
            kind: Kind::Tls,
            check,
        },
        severity: check.severity(),
        subject: Kind::Tls.subject(subject),
        field: check.field(),
        message,
    })
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::PasswordEqualsNumber => "password_equals_number",
            Check::PasswordEqualsAuthId => "password_equals_auth_id",
            Check::PinEqualsNumber => "pin_equals_number",
            Check::SipIdEqualsNumber => "sip_id_equals_number",
            Check::AuthIdEqualsNumber => "auth_id_equals_number",
            Check::PasswordTooShort => "password_too_short",
            Check::PasswordNotMixed => "password_not_mixed",
            Check::PasswordContainsNumber => "password_contains_number",
            Check::PasswordContainsAuthId => "password_contains_auth_id",
            Check::PasswordContainsName => "password_contains_name",
            Check::PasswordContainsDomain => "password_contains_domain",
            Check::PasswordCommon => "password_common",
            Check::PasswordGuessable => "password_guessable",
            Check::PasswordReused => "password_reused",
            Check::PinTooShort => "pin_too_short",
            Check::PinTrivial => "pin_trivial",
            Check::PinContainsNumber => "pin_contains_number",
            Check::FactoryDefaultLogin => "factory_default_login",
            Check::NoEmail => "no_email",
            Check::IdentityCollision => "identity_collision",
            Check::RewriteRaisesClass => "rewrite_raises_class",
            Check::RewriteLowersClass => "rewrite_lowers_class",
            Check::FloodLimitsOff => "flood_limits_off",
            Check::FloodLimitsLenient => "flood_limits_lenient",
            Check::GatewayLimitLenient => "gateway_limit_lenient",
            Check::ScannerBansOff => "scanner_bans_off",
            Check::NoDecoys => "no_decoys",
            Check::AuthFailuresLenient => "auth_failures_lenient",
            Check::BansShort => "bans_short",
            Check::EscalationOff => "escalation_off",
            Check::ExtensionLockoutOff => "extension_lockout_off",
            Check::ExtensionLockoutLenient => "extension_lockout_lenient",
            Check::WeakCredentialsAllowed => "weak_credentials_allowed",
            Check::ProvisioningProbesLenient => "provisioning_probes_lenient",
            Check::MinStrengthLow => "min_strength_low",
            Check::MinPasswordLengthLow => "min_password_length_low",
            Check::GeneratedPinShort => "generated_pin_short",
            Check::FraudLimitHigh => "fraud_limit_high",
            Check::DefaultClassWide => "default_class_wide",
            Check::MailUnencrypted => "mail_unencrypted",
            Check::GraceLong => "grace_long",
            Check::ProvisioningPlainHttp => "provisioning_plain_http",
            Check::NonceLifetimeLong => "nonce_lifetime_long",
            Check::TrustWide => "trust_wide",
            Check::CertExpiring => "cert_expiring",
            Check::CertExpired => "cert_expired",
        }
    }

    /// The check's severity; for the route checks the worst one (a route that changes
    /// the class of national numbers only is a warning, see [`Auditor::route`]).
    pub fn severity(self) -> Severity {
        use Check::*;
        match self {
            PasswordEqualsNumber | PasswordEqualsAuthId | PinEqualsNumber | PasswordTooShort
            | PasswordCommon | PinTooShort | PinTrivial | PinContainsNumber
            | FactoryDefaultLogin | IdentityCollision | RewriteRaisesClass | RewriteLowersClass => {
                Severity::Critical
            }
            // The worst a setting check reports; each finding carries its own, by how
            // much the setting opens (see `crate::weakening`).
            FloodLimitsOff
            | FloodLimitsLenient
            | GatewayLimitLenient
            | ScannerBansOff
            | NoDecoys
            | AuthFailuresLenient
            | BansShort
            | EscalationOff
            | ExtensionLockoutOff
            | ExtensionLockoutLenient
            | WeakCredentialsAllowed
            | ProvisioningProbesLenient
            | MinStrengthLow
            | MinPasswordLengthLow
            | GeneratedPinShort
            | FraudLimitHigh
            | DefaultClassWide
            | MailUnencrypted
            | GraceLong
            | ProvisioningPlainHttp
            | NonceLifetimeLong
            | TrustWide
            | CertExpired => Severity::Critical,
            CertExpiring => Severity::Warning,
            SipIdEqualsNumber
            | AuthIdEqualsNumber
            | PasswordNotMixed
            | PasswordContainsNumber
            | PasswordContainsAuthId
            | PasswordContainsName
            | PasswordContainsDomain
            | PasswordGuessable
            | PasswordReused => Severity::Warning,
            NoEmail => Severity::Info,
        }
    }

    pub fn field(self) -> &'static str {
        use Check::*;
        match self {
            PinEqualsNumber | PinTooShort | PinTrivial | PinContainsNumber => "pin",
            SipIdEqualsNumber => "sip_id",
            AuthIdEqualsNumber => "auth_id",
            NoEmail => "email",
            RewriteRaisesClass | RewriteLowersClass => "rewrite",
            FloodLimitsOff
            | FloodLimitsLenient
            | GatewayLimitLenient
            | ScannerBansOff
            | NoDecoys
            | AuthFailuresLenient
            | BansShort
            | EscalationOff
            | ExtensionLockoutOff
            | ExtensionLockoutLenient
            | WeakCredentialsAllowed
            | ProvisioningProbesLenient
            | MinStrengthLow
            | MinPasswordLengthLow
            | GeneratedPinShort
            | FraudLimitHigh
            | DefaultClassWide
            | MailUnencrypted
            | GraceLong
            | ProvisioningPlainHttp
            | NonceLifetimeLong
            | TrustWide => "setting",
            CertExpiring | CertExpired => "certificate",
            _ => "password",
        }
    }
}

/// A stable rule id such as `gateway.password_equals_auth_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId {
    pub kind: Kind,
    pub check: Check,
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind.as_str(), self.check.as_str())
    }
}

impl Serialize for RuleId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One weakness found in one account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: RuleId,
    pub severity: Severity,
    /// `ext:1001`, `gateway:NAME` or `provider:NAME`.
    pub subject: String,
    pub field: &'static str,
    pub message: String,
}

/// What the rules need to know about the installation.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub policy: &'a PolicyConfig,
    /// The SIP domain, when one is configured; passwords must not contain it.
    pub domain: Option<&'a str>,
}

/// The facts about one extension that the rules look at (plaintext secrets included:
/// build these only transiently, in memory).
#[derive(Clone, Copy, Debug)]
pub struct ExtensionFacts<'a> {
    pub number: &'a str,
    pub auth_id: &'a str,
    pub sip_id: Option<&'a str>,
    pub name: &'a str,
    pub email: Option<&'a str>,
    pub password: &'a str,
    /// The stored zxcvbn score, if known; computed when `None`.
    pub password_score: Option<u8>,
    pub pin: &'a str,
}

#[derive(Clone, Copy, Debug)]
pub struct GatewayFacts<'a> {
    pub name: &'a str,
    pub vendor: &'a str,
    pub number: &'a str,
    pub auth_id: &'a str,
    pub password: &'a str,
    pub password_score: Option<u8>,
}

#[derive(Clone, Copy, Debug)]
pub struct ProviderFacts<'a> {
    pub name: &'a str,
    pub registrar: &'a str,
    pub auth_id: &'a str,
    pub password: &'a str,
    pub password_score: Option<u8>,
}

/// The facts about one outbound route that the route rule looks at.
#[derive(Clone, Copy, Debug)]
pub struct RouteFacts<'a> {
    /// The route's name (`sipward route add NAME`).
    pub name: &'a str,
    pub pattern: &'a Pattern,
    pub rewrite: &'a Rewrite,
}

/// Runs the rules over any number of accounts and, at the end, the cross-account rule
/// (the same password on several accounts).
#[derive(Debug)]
pub struct Auditor<'a> {
    ctx: Context<'a>,
    /// The configured domain's tokens, lower-case, computed once.
    domain_tokens: Vec<String>,
    findings: Vec<Finding>,
    /// Every password with the accounts that use it. Owned (and wiped when the auditor
    /// is dropped), so that accounts can be fed a page at a time: a caller need not
    /// hold every account's opened secrets until the end.
    by_password: HashMap<PasswordKey, Vec<(Kind, String)>>,
    /// Every number, SIP ID and auth ID of extensions and gateways, with its owners.
    by_identity: HashMap<String, Vec<Owner>>,
}

/// A password as the reuse rule's key: wiped on drop like every plaintext secret.
#[derive(PartialEq, Eq)]
struct PasswordKey(zeroize::Zeroizing<String>);

impl std::hash::Hash for PasswordKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

impl fmt::Debug for PasswordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordKey(..)")
    }
}

/// An account holding an identifier: its kind, its id and the field (`number`,
/// `sip_id`, `auth_id`).
type Owner = (Kind, String, &'static str);

impl<'a> Auditor<'a> {
    pub fn new(ctx: Context<'a>) -> Self {
        Self {
            domain_tokens: ctx.domain.map(password::domain_tokens).unwrap_or_default(),
            ctx,
            findings: Vec::new(),
            by_password: HashMap::new(),
            by_identity: HashMap::new(),
        }
    }

    fn push(&mut self, kind: Kind, id: &str, check: Check, message: String) {
        self.findings.push(Finding {
            rule: RuleId { kind, check },
            severity: check.severity(),
            subject: kind.subject(id),
            field: check.field(),
            message,
        });
    }

    pub fn extension(&mut self, e: &ExtensionFacts<'_>) {
        let (k, id) = (Kind::Ext, e.number);
        if e.password == e.number {
            self.push(k, id, Check::PasswordEqualsNumber, "the SIP password is the extension number: anyone who knows the number can register as this extension".into());
        } else if password::contains_ci(e.password, e.number) {
            self.push(
                k,
                id,
                Check::PasswordContainsNumber,
                "the SIP password contains the extension number".into(),
            );
        }
        let identity = Identity {
            auth_id: e.auth_id,
            name: e.name,
            extra_host: None,
        };
        self.password_rules(k, id, e.password, e.password_score, identity);

        if e.pin == e.number {
            self.push(
                k,
                id,
                Check::PinEqualsNumber,
                "the voicemail PIN is the extension number: anyone can open this voicemail box"
                    .into(),
            );
        } else {
            if e.pin.len() < 4 {
                self.push(
                    k,
                    id,
                    Check::PinTooShort,
                    format!(
                        "the voicemail PIN has {} digits; use at least 4 (6 recommended)",
                        e.pin.len()
                    ),
                );
            } else if let Some(why) = pin::trivial_reason(e.pin) {
                self.push(
                    k,
                    id,
                    Check::PinTrivial,
                    format!("the voicemail PIN is trivial: {why}"),
                );
            }
            if pin::contains_number(e.pin, e.number) {
                self.push(
                    k,
                    id,
                    Check::PinContainsNumber,
                    "the voicemail PIN contains the extension number (or its digits reversed)"
                        .into(),
                );
            }
        }
        if e.sip_id == Some(e.number) {
            self.push(
                k,
                id,
                Check::SipIdEqualsNumber,
                "the SIP ID repeats the extension number; leave it blank".into(),
            );
        }
        if e.auth_id == e.number {
            self.push(k, id, Check::AuthIdEqualsNumber, "the auth ID is the extension number, so a scanner that finds the number also has the login name; use a random auth ID".into());
        }
        if e.email.is_none() {
            self.push(
                k,
                id,
                Check::NoEmail,
                "no email address: new credentials cannot be mailed to this extension's user"
                    .into(),
            );
        }
        self.track_reuse(k, id, e.password);
        self.track_identity(k, id, e.number, "number");
        if let Some(s) = e.sip_id {
            self.track_identity(k, id, s, "sip_id");
        }
        self.track_identity(k, id, e.auth_id, "auth_id");
    }

    pub fn gateway(&mut self, g: &GatewayFacts<'_>) {
        let (k, id) = (Kind::Gateway, g.name);
        if g.password == g.number {
            self.push(
                k,
                id,
                Check::PasswordEqualsNumber,
                "the gateway's password is its virtual extension number".into(),
            );
        } else if password::contains_ci(g.password, g.number) {
            self.push(
                k,
                id,
                Check::PasswordContainsNumber,
                "the gateway's password contains its virtual extension number".into(),
            );
        }
        if g.auth_id == g.number {
            self.push(
                k,
                id,
                Check::AuthIdEqualsNumber,
                "the gateway's auth ID is its virtual extension number; use a random auth ID"
                    .into(),
            );
        }
        if let Ok(v) = vendor::find(g.vendor)
            && let Some(login) = v.matching_default(g.auth_id, g.password)
        {
            self.push(
                k,
                id,
                Check::FactoryDefaultLogin,
                format!(
                    "the gateway uses the {} factory default login (user {:?}); source: {}",
                    v.name, login.user, v.source
                ),
            );
        }
        let identity = Identity {
            auth_id: g.auth_id,
            name: g.name,
            extra_host: None,
        };
        self.password_rules(k, id, g.password, g.password_score, identity);
        self.track_reuse(k, id, g.password);
        self.track_identity(k, id, g.number, "number");
        self.track_identity(k, id, g.auth_id, "auth_id");
    }

    pub fn provider(&mut self, p: &ProviderFacts<'_>) {
        let (k, id) = (Kind::Provider, p.name);
        let identity = Identity {
            auth_id: p.auth_id,
            name: p.name,
            extra_host: Some(p.registrar),
        };
        self.password_rules(k, id, p.password, p.password_score, identity);
        self.track_reuse(k, id, p.password);
    }

    /// The route rules, over one outbound route and the server's dial plan
    /// ([`route::classes`] explains the method):
    ///
    /// - `route.rewrite_raises_class`: the rewrite sends numbers out as a higher class than
    ///   the pattern matches as dialled. Critical when they leave as international or
    ///   high-cost, a warning otherwise.
    /// - `route.rewrite_lowers_class`: the rewrite sends numbers that the dial plan reads
    ///   as a lower class than dialled, so calls would be held to the lower class if the
    ///   trunk reads them otherwise (international digits without `+`). Critical when the
    ///   numbers are dialled as international or high-cost, a warning otherwise.
    ///
    /// This is the entry point for `sipward audit`: the registry's audit calls it for
    /// every stored route.
    pub fn route(&mut self, plan: &DialPlan, r: &RouteFacts<'_>) {
        let found = route::classes(plan, r.pattern, r.rewrite);
        let rewrite = match (r.rewrite.strip, r.rewrite.prepend.as_str()) {
            (0, "") => "no rewrite".to_owned(),
            (n, "") => format!("strip {n}"),
            (0, p) => format!("prepend {p}"),
            (n, p) => format!("strip {n}, prepend {p}"),
        };
        let pattern = r.pattern.as_str();
        if let Some(c) = found.raised {
            let severity = if c.sent.destination.counts_per_day() {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let message = format!(
                "route pattern {pattern} ({rewrite}) matches {}, which as dialled is {}, and \
                 sends it out as {}, {}: calls are classed by the number that leaves, so make \
                 the pattern match what the route sends, or change the rewrite",
                c.dialled,
                dialled_as(c.as_dialled),
                c.sent.number,
                leaves_as(&c.sent),
            );
            self.push_route(r.name, Check::RewriteRaisesClass, severity, message);
        }
        if let Some(c) = found.lowered {
            let severity = if c.as_dialled.is_some_and(|d| d.counts_per_day()) {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let message = format!(
                "route pattern {pattern} ({rewrite}) matches {}, which as dialled is {}, and \
                 sends {}, which this dial plan reads as {}: if the trunk reads it as the \
                 number dialled, such calls are held to a lower class than they cost; send \
                 numbers in international form (prepend +) or as the dial plan reads them",
                c.dialled,
                dialled_as(c.as_dialled),
                r.rewrite.apply(&c.dialled).unwrap_or_default(),
                leaves_as(&c.sent),
            );
            self.push_route(r.name, Check::RewriteLowersClass, severity, message);
        }
    }

    fn push_route(&mut self, name: &str, check: Check, severity: Severity, message: String) {
        self.findings.push(Finding {
            rule: RuleId {
                kind: Kind::Route,
                check,
            },
            severity,
            subject: Kind::Route.subject(name),
            field: check.field(),
            message,
        });
    }

    /// The rules every password is held to, whatever the account.
    fn password_rules(
        &mut self,
        k: Kind,
        id: &str,
        pw: &str,
        score: Option<u8>,
        who: Identity<'_>,
    ) {
        let policy = self.ctx.policy;
        // Lower-cased once: every containment test below compares lower-case text.
        let lower = pw.to_ascii_lowercase();
        let contains = |needle: &str| !needle.is_empty() && lower.contains(needle);
        if pw == who.auth_id {
            self.push(
                k,
                id,
                Check::PasswordEqualsAuthId,
                "the password is the same as the auth ID".into(),
            );
        } else if who.auth_id.len() >= 3 && contains(&who.auth_id.to_ascii_lowercase()) {
            self.push(
                k,
                id,
                Check::PasswordContainsAuthId,
                "the password contains the auth ID".into(),
            );
        }
        let len = pw.chars().count();
        if len < policy.min_password_length {
            self.push(
                k,
                id,
                Check::PasswordTooShort,
                format!(
                    "the password has {len} characters; at least {} are required",
                    policy.min_password_length
                ),
            );
        }
        if !password::is_mixed(pw) {
            self.push(
                k,
                id,
                Check::PasswordNotMixed,
                "the password does not mix letters and digits".into(),
            );
        }
        if password::name_tokens(who.name).iter().any(|t| contains(t)) {
            self.push(
                k,
                id,
                Check::PasswordContainsName,
                "the password contains the name".into(),
            );
        }
        let extra_host_tokens = who
            .extra_host
            .map(|h| password::domain_tokens(h.rsplit_once(':').map_or(h, |(a, _)| a)))
            .unwrap_or_default();
        let in_domain = self
            .domain_tokens
            .iter()
            .chain(&extra_host_tokens)
            .any(|t| contains(t));
        if in_domain {
            self.push(
                k,
                id,
                Check::PasswordContainsDomain,
                "the password contains the domain name".into(),
            );
        }
        if password::is_common_lower(&lower) {
            self.push(
                k,
                id,
                Check::PasswordCommon,
                "the password is in the list of the most common passwords".into(),
            );
        } else {
            let score = score.unwrap_or_else(|| password::strength_score(pw));
            if score < policy.min_strength_score {
                self.push(
                    k,
                    id,
                    Check::PasswordGuessable,
                    format!(
                        "the password is easy to guess (strength {score} of 4; at least {} needed)",
                        policy.min_strength_score
                    ),
                );
            }
        }
    }

    fn track_reuse(&mut self, kind: Kind, id: &str, pw: &str) {
        self.by_password
            .entry(PasswordKey(zeroize::Zeroizing::new(pw.to_owned())))
            .or_default()
            .push((kind, id.to_owned()));
    }

    fn track_identity(&mut self, kind: Kind, id: &str, value: &str, field: &'static str) {
        let owners = match self.by_identity.get_mut(value) {
            Some(owners) => owners,
            None => self.by_identity.entry(value.to_owned()).or_default(),
        };
        // An account's own identifiers may repeat each other (other rules flag that).
        if !owners.iter().any(|(k, i, _)| *k == kind && i == id) {
            owners.push((kind, id.to_owned(), field));
        }
    }

    /// `ext.identity_collision` / `gateway.identity_collision`: a number, SIP ID or auth
    /// ID that several accounts hold (data from before the check on add, update and
    /// import, or restored). One finding per account, on the field that collides.
    fn identity_collisions(&mut self) {
        let mut groups: Vec<(String, Vec<Owner>)> = std::mem::take(&mut self.by_identity)
            .into_iter()
            .filter(|(_, g)| g.len() > 1)
            .collect();
        groups.sort();
        let label = |f: &str| match f {
            "sip_id" => "SIP ID",
            "auth_id" => "auth ID",
            _ => "number",
        };
        for (value, group) in groups {
            for (i, (kind, id, field)) in group.iter().enumerate() {
                let others: Vec<String> = group
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (k, o, f))| format!("{}'s {}", k.subject(o), label(f)))
                    .collect();
                self.findings.push(Finding {
                    rule: RuleId {
                        kind: *kind,
                        check: Check::IdentityCollision,
                    },
                    severity: Check::IdentityCollision.severity(),
                    subject: kind.subject(id),
                    field,
                    message: format!(
                        "the {} {value} is also {}: calls and registrations for {value} can reach the wrong account; give each account identifiers of its own",
                        label(field),
                        others.join(" and ")
                    ),
                });
            }
        }
    }

    /// All findings, with the reuse and collision findings added, sorted by subject
    /// then rule.
    pub fn finish(mut self) -> Vec<Finding> {
        self.identity_collisions();
        let groups: Vec<Vec<(Kind, String)>> = std::mem::take(&mut self.by_password)
            .into_values()
            .filter(|g| g.len() > 1)
            .collect();
        for group in groups {
            for (i, (kind, id)) in group.iter().enumerate() {
                let others: Vec<String> = group
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .take(5)
                    .map(|(_, (k, o))| k.subject(o))
                    .collect();
                let more = group.len() - 1 - others.len();
                let tail = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                self.push(
                    *kind,
                    id,
                    Check::PasswordReused,
                    format!(
                        "the same password is also used by {}{tail}",
                        others.join(", ")
                    ),
                );
            }
        }
        self.findings
            .sort_by(|a, b| (&a.subject, a.rule).cmp(&(&b.subject, b.rule)));
        self.findings
    }
}

/// "an international number", or what a number that does not map is.
fn dialled_as(d: Option<Destination>) -> &'static str {
    d.map_or(
        "not a number this dial plan maps at all",
        Destination::describe,
    )
}

/// "a high-cost destination (revenue-share fraud destination: Cuba)".
fn leaves_as(l: &Leaving) -> String {
    match l.high_cost {
        Some(e) => format!(
            "{} ({}: {})",
            l.destination.describe(),
            e.kind.as_str(),
            e.name
        ),
        None => l.destination.describe().to_owned(),
    }
}

#[derive(Clone, Copy)]
struct Identity<'a> {
    auth_id: &'a str,
    name: &'a str,
    extra_host: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialplan::DialPlan;
    use crate::route::{Pattern, Rewrite};

    const STRONG: &str = "Xk29fLq8PzR4tW7yM3cB";

    fn strong_ext() -> ExtensionFacts<'static> {
        ExtensionFacts {
            number: "1001",
            auth_id: "k3x9m2p8q4",
            sip_id: None,
            name: "Ann Smith",
            email: Some("ann@example.com"),
            password: STRONG,
            password_score: None,
            pin: "482913",
        }
    }

    fn run_ext(e: ExtensionFacts<'_>, domain: Option<&str>) -> Vec<String> {
        let policy = PolicyConfig::default();
        let mut a = Auditor::new(Context {
            policy: &policy,
            domain,
        });
        a.extension(&e);
        a.finish().into_iter().map(|f| f.rule.to_string()).collect()
    }

    fn rules_of(e: ExtensionFacts<'_>) -> Vec<String> {
        run_ext(e, Some("pbx.example.com"))
    }

    #[test]
    fn a_strong_extension_has_no_findings() {
        assert!(
            rules_of(strong_ext()).is_empty(),
            "{:?}",
            rules_of(strong_ext())
        );
    }

    /// Each case: the facts to change, the rule that must fire.
    #[test]
    fn each_extension_rule_fires() {
        let base = strong_ext();
        let cases: Vec<(ExtensionFacts<'_>, &str)> = vec![
            (
                ExtensionFacts {
                    password: "1001",
                    ..base
                },
                "ext.password_equals_number",
            ),
            (
                ExtensionFacts {
                    password: "Zq8xLm1001Tr4wPy",
                    ..base
                },
                "ext.password_contains_number",
            ),
            (
                ExtensionFacts {
                    pin: "1001",
                    ..base
                },
                "ext.pin_equals_number",
            ),
            (
                ExtensionFacts {
                    sip_id: Some("1001"),
                    ..base
                },
                "ext.sip_id_equals_number",
            ),
            (
                ExtensionFacts {
                    auth_id: "1001",
                    ..base
                },
                "ext.auth_id_equals_number",
            ),
            (
                ExtensionFacts {
                    password: "Xk29fLq8",
                    ..base
                },
                "ext.password_too_short",
            ),
            (
                ExtensionFacts {
                    password: "XkqfLqPzRtWyMcBvbnTe",
                    ..base
                },
                "ext.password_not_mixed",
            ),
            (
                ExtensionFacts {
                    password: "k3x9m2p8q4",
                    ..base
                },
                "ext.password_equals_auth_id",
            ),
            (
                ExtensionFacts {
                    password: "Zz7k3x9m2p8q4Lw",
                    ..base
                },
                "ext.password_contains_auth_id",
            ),
            (
                ExtensionFacts {
                    password: "Smith8Rq2LmZ7wPx",
                    ..base
                },
                "ext.password_contains_name",
            ),
            (
                ExtensionFacts {
                    password: "pbx.example.com1001",
                    ..base
                },
                "ext.password_contains_domain",
            ),
            (
                ExtensionFacts {
                    password: "Rq2Example7wPxZ9",
                    ..base
                },
                "ext.password_contains_domain",
            ),
            (
                ExtensionFacts {
                    password: "password",
                    ..base
                },
                "ext.password_common",
            ),
            (
                ExtensionFacts {
                    password: "Jennifer2000!",
                    ..base
                },
                "ext.password_guessable",
            ),
            (ExtensionFacts { pin: "123", ..base }, "ext.pin_too_short"),
            (
                ExtensionFacts {
                    pin: "012345",
                    ..base
                },
                "ext.pin_trivial",
            ),
            (
                ExtensionFacts {
                    pin: "0000",
                    ..base
                },
                "ext.pin_trivial",
            ),
            (
                ExtensionFacts {
                    pin: "910019",
                    ..base
                },
                "ext.pin_contains_number",
            ),
            (
                ExtensionFacts {
                    email: None,
                    ..base
                },
                "ext.no_email",
            ),
        ];
        for (facts, rule) in cases {
            let got = rules_of(facts);
            assert!(
                got.iter().any(|r| r == rule),
                "{rule} must fire for {facts:?}; got {got:?}"
            );
        }
    }

    #[test]
    fn equality_is_not_reported_twice_as_containment() {
        let got = rules_of(ExtensionFacts {
            password: "1001",
            pin: "1001",
            ..strong_ext()
        });
        assert!(
            !got.contains(&"ext.password_contains_number".to_string()),
            "{got:?}"
        );
        assert!(
            !got.contains(&"ext.pin_contains_number".to_string()),
            "{got:?}"
        );
        assert!(
            !got.contains(&"ext.pin_too_short".to_string())
                && !got.contains(&"ext.pin_trivial".to_string()),
            "{got:?}"
        );
    }

    #[test]
    fn the_domain_rule_needs_a_domain() {
        let e = ExtensionFacts {
            password: "Rq2Example7wPxZ9",
            ..strong_ext()
        };
        assert!(
            !run_ext(e, None)
                .iter()
                .any(|r| r == "ext.password_contains_domain")
        );
    }

    #[test]
    fn a_stored_score_is_used() {
        // A strong password with a stored low score is reported: the stored fact wins,
        // proving the audit does not recompute it.
        let got = rules_of(ExtensionFacts {
            password_score: Some(1),
            ..strong_ext()
        });
        assert_eq!(got, vec!["ext.password_guessable"]);
    }

    #[test]
    fn messages_never_contain_the_secret() {
        let policy = PolicyConfig::default();
        let mut a = Auditor::new(Context {
            policy: &policy,
            domain: Some("pbx.example.com"),
        });
        let secrets = ["pbx.example.com1001", "Smith8Rq2LmZ7wPx", "letmein"];
        for (i, pw) in secrets.iter().enumerate() {
            let number = format!("{}", 2000 + i);
            let number: &'static str = Box::leak(number.into_boxed_str());
            a.extension(&ExtensionFacts {
                number,
                password: pw,
                ..strong_ext()
            });
        }
        for f in a.finish() {
            for s in secrets {
                assert!(!f.message.contains(s), "{f:?} leaks {s}");
            }
        }
    }

    #[test]
    fn identifiers_shared_between_accounts_are_critical_collisions() {
        let policy = PolicyConfig::default();
        let mut a = Auditor::new(Context {
            policy: &policy,
            domain: None,
        });
        // Issue #17: `ext add 2104 --sip-id 2102` while 2102 exists.
        a.extension(&ExtensionFacts {
            number: "2102",
            auth_id: "a2102kq8",
            ..strong_ext()
        });
        a.extension(&ExtensionFacts {
            number: "2104",
            sip_id: Some("2102"),
            auth_id: "a2104kq8",
            password: "Qm7vLx2Rt9Wz4Kp8Hn3B",
            ..strong_ext()
        });
        // A gateway whose auth ID is an extension's auth ID.
        a.gateway(&GatewayFacts {
            name: "gw1",
            vendor: "generic",
            number: "4001",
            auth_id: "a2104kq8",
            password: "Zp4Wn8Kq2Lx7Rm3Tv9Yb",
            password_score: None,
        });
        // Its own SIP ID equal to its own number is a warning of its own, not a collision.
        a.extension(&ExtensionFacts {
            number: "2105",
            sip_id: Some("2105"),
            auth_id: "a2105kq8",
            password: "Hb6Ty3Nq9Ws2Lp5Xc8Vm",
            ..strong_ext()
        });
        let found = a.finish();
        let collisions: Vec<(&str, &str, &str)> = found
            .iter()
            .filter(|f| f.rule.check == Check::IdentityCollision)
            .map(|f| (f.subject.as_str(), f.field, f.severity.as_str()))
            .collect();
        assert_eq!(
            collisions,
            vec![
                ("ext:2102", "number", "critical"),
                ("ext:2104", "sip_id", "critical"),
                ("ext:2104", "auth_id", "critical"),
                ("gateway:gw1", "auth_id", "critical"),
            ]
        );
        let f = found
            .iter()
            .find(|f| f.subject == "ext:2104" && f.field == "sip_id")
            .expect("finding");
        assert_eq!(f.rule.to_string(), "ext.identity_collision");
        assert!(
            f.message.contains("SIP ID 2102 is also ext:2102's number"),
            "{}",
            f.message
        );
        assert!(
            found.iter().any(
                |f| f.subject == "ext:2105" && f.rule.to_string() == "ext.sip_id_equals_number"
            )
        );
        assert!(
            !found
                .iter()
                .any(|f| f.subject == "ext:2105" && f.rule.check == Check::IdentityCollision)
        );
    }

    #[test]
    fn reuse_is_found_across_accounts() {
        let policy = PolicyConfig::default();
        let mut a = Auditor::new(Context {
            policy: &policy,
            domain: None,
        });
        a.extension(&ExtensionFacts {
            number: "1001",
            ..strong_ext()
        });
        a.extension(&ExtensionFacts {
            number: "1002",
            auth_id: "zz81kq",
            ..strong_ext()
        });
        a.gateway(&GatewayFacts {
            name: "gw1",
            vendor: "generic",
            number: "4001",
            auth_id: "gwauth77",
            password: STRONG,
            password_score: None,
        });
        a.extension(&ExtensionFacts {
            number: "1003",
            auth_id: "zz82kq",
            password: "Tq4Lm9Wz2Rp8Xc7Vb",
            ..strong_ext()
        });
        let found = a.finish();
        let reused: Vec<&str> = found
            .iter()
            .filter(|f| f.rule.check == Check::PasswordReused)
            .map(|f| f.subject.as_str())
            .collect();
        assert_eq!(reused, vec!["ext:1001", "ext:1002", "gateway:gw1"]);
        let msg = &found
            .iter()
            .find(|f| f.subject == "gateway:gw1")
            .expect("gw")
            .message;
        assert!(
            msg.contains("ext:1001") && msg.contains("ext:1002"),
            "{msg}"
        );
    }

    /// The auditor keeps what the cross-account rules need on its own: each account's
    /// facts may be dropped (its secrets wiped) as soon as it is fed, as the registry's
    /// audit does a page at a time.
    #[test]
    fn reuse_and_collisions_are_found_after_each_account_is_dropped() {
        let policy = PolicyConfig::default();
        let mut a = Auditor::new(Context {
            policy: &policy,
            domain: None,
        });
        for (number, auth_id, sip_id) in
            [("1001", "zz81kq", None), ("1002", "zz82kq", Some("1001"))]
        {
            // Owned here and dropped at the end of each round.
            let (number, auth_id, password) =
                (number.to_owned(), auth_id.to_owned(), STRONG.to_owned());
            let sip_id = sip_id.map(str::to_owned);
            a.extension(&ExtensionFacts {
                number: &number,
                auth_id: &auth_id,
                sip_id: sip_id.as_deref(),
                password: &password,
                ..strong_ext()
            });
        }
        let found: Vec<(String, String)> = a
            .finish()
            .into_iter()
            .filter(|f| f.severity >= Severity::Warning)
            .map(|f| (f.subject, f.rule.to_string()))
            .collect();
        for (subject, rule) in [
            ("ext:1001", "ext.password_reused"),
            ("ext:1002", "ext.password_reused"),
            ("ext:1001", "ext.identity_collision"),
            ("ext:1002", "ext.identity_collision"),
        ] {
            assert!(
                found.contains(&(subject.to_owned(), rule.to_owned())),
                "{subject} {rule}: {found:?}"
            );
        }
    }

    fn gateway_rules(g: GatewayFacts<'_>) -> Vec<String> {
        let policy = PolicyConfig::default();
        let mut a = Auditor::new(Context {
            policy: &policy,
            domain: None,
        });
        a.gateway(&g);
        a.finish().into_iter().map(|f| f.rule.to_string()).collect()
    }

    #[test]
    fn gateway_rules_both_ways() {
        let base = GatewayFacts {
            name: "gw1",
            vendor: "grandstream",
            number: "4001",
            auth_id: "gw7xq2",
            password: STRONG,
            password_score: None,
        };
        assert!(gateway_rules(base).is_empty(), "{:?}", gateway_rules(base));
        let cases = [
            (
                GatewayFacts {
                    password: "gw7xq2",
                    ..base
                },
                "gateway.password_equals_auth_id",
            ),
            (
                GatewayFacts {
                    password: "4001",
                    ..base
                },
                "gateway.password_equals_number",
            ),
            (
                GatewayFacts {
                    auth_id: "4001",
                    ..base
                },
                "gateway.auth_id_equals_number",
            ),
            (
                GatewayFacts {
                    password: "admin",
                    ..base
                },
                "gateway.factory_default_login",
            ),
            (
                GatewayFacts {
                    auth_id: "user",
                    password: "123",
                    ..base
                },
                "gateway.factory_default_login",
            ),
            (
                GatewayFacts {
                    password: "qwerty",
                    ..base
                },
                "gateway.password_common",
            ),
            (
                GatewayFacts {
                    password: "Xk29fL",
                    ..base
                },
                "gateway.password_too_short",
            ),
        ];
        for (g, rule) in cases {
            let got = gateway_rules(g);
            assert!(got.iter().any(|r| r == rule), "{rule} for {g:?}: {got:?}");
        }
        // A default password for another vendor is not this vendor's factory login.
        let got = gateway_rules(GatewayFacts {
            vendor: "yeastar",
            password: "admin",
            ..base
        });
        assert!(
            !got.contains(&"gateway.factory_default_login".to_string()),
            "{got:?}"
        );
    }

    #[test]
    fn provider_rules_both_ways() {
        let policy = PolicyConfig::default();
        let run = |p: ProviderFacts<'_>| {
            let mut a = Auditor::new(Context {
                policy: &policy,
                domain: None,
            });
            a.provider(&p);
            a.finish()
                .into_iter()
                .map(|f| f.rule.to_string())
                .collect::<Vec<_>>()
        };
        let base = ProviderFacts {
            name: "itsp",
            registrar: "sip.carrier.net:5060",
            auth_id: "55512345",
            password: STRONG,
            password_score: None,
        };
        assert!(run(base).is_empty());
        assert!(
            run(ProviderFacts {
                password: "55512345",
                ..base
            })
            .contains(&"provider.password_equals_auth_id".into())
        );
        assert!(
            run(ProviderFacts {
                password: "letmein",
                ..base
            })
            .contains(&"provider.password_common".into())
        );
        assert!(
            run(ProviderFacts {
                password: "Carrier2024xQ9z",
                ..base
            })
            .contains(&"provider.password_contains_domain".into())
        );
    }

    fn route_findings(
        plan: &DialPlan,
        name: &str,
        pattern: &str,
        strip: u32,
        prepend: &str,
    ) -> Vec<Finding> {
        let policy = PolicyConfig::default();
        let mut a = Auditor::new(Context {
            policy: &policy,
            domain: None,
        });
        let pattern = Pattern::parse(pattern).expect("pattern");
        let rewrite = Rewrite::parse(strip, prepend).expect("rewrite");
        a.route(
            plan,
            &RouteFacts {
                name,
                pattern: &pattern,
                rewrite: &rewrite,
            },
        );
        a.finish()
    }

    /// The README's `world` route under the default (NANP) plan: the canonical case.
    #[test]
    fn a_route_that_raises_numbers_abroad_is_critical() {
        let found = route_findings(&DialPlan::default(), "world", "00.", 2, "+");
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.rule.to_string(), "route.rewrite_raises_class");
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(f.subject, "route:world");
        assert_eq!(f.field, "rewrite");
        for part in [
            "route pattern 00. (strip 2, prepend +) matches 00",
            "not a number this dial plan maps at all",
            "sends it out as +",
            "a high-cost destination (revenue-share fraud destination: ",
            "classed by the number that leaves",
        ] {
            assert!(f.message.contains(part), "{part:?} in {}", f.message);
        }
    }

    #[test]
    fn a_route_that_raises_local_numbers_to_national_is_a_warning() {
        let plan = DialPlan {
            area_code: "212".into(),
            ..DialPlan::default()
        };
        let found = route_findings(&plan, "sf", "NXXXXXX", 0, "+1415");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].rule.to_string(), "route.rewrite_raises_class");
        assert_eq!(found[0].severity, Severity::Warning);
        assert!(
            found[0]
                .message
                .contains("which as dialled is a local number")
                && found[0].message.contains("+1415"),
            "{}",
            found[0].message
        );
        // And sent to Jamaica instead: critical.
        let found = route_findings(&plan, "jm", "NXXXXXX", 0, "+1876");
        assert_eq!(found[0].severity, Severity::Critical);
        assert!(found[0].message.contains("Jamaica"), "{}", found[0].message);
    }

    #[test]
    fn a_route_that_lowers_numbers_abroad_is_critical() {
        let berlin = DialPlan {
            country_code: "49".into(),
            international_prefix: "00".into(),
            national_prefix: "0".into(),
            area_code: "30".into(),
            ..DialPlan::default()
        };
        // International digits sent without +: read as Berlin subscriber numbers. (The
        // same route also raises: 0000 25... is sent as 0025..., which is abroad.)
        let found = route_findings(&berlin, "bare", "00.", 2, "");
        let rules: Vec<String> = found.iter().map(|f| f.rule.to_string()).collect();
        assert_eq!(
            rules,
            vec!["route.rewrite_raises_class", "route.rewrite_lowers_class"],
            "{found:?}"
        );
        let lowered = &found[1];
        assert_eq!(lowered.severity, Severity::Critical);
        assert!(
            lowered
                .message
                .contains("which this dial plan reads as a local number")
                && lowered.message.contains("prepend +"),
            "{}",
            lowered.message
        );
        let lowered = |pattern: &str| {
            route_findings(&berlin, "de", pattern, 1, "49")
                .into_iter()
                .find(|f| f.rule.check == Check::RewriteLowersClass)
                .expect("lowered")
        };
        // National numbers sent as 49...: critical, because 0900 premium numbers are
        // among them; a warning where the pattern leaves them out.
        assert_eq!(lowered("0ZX.").severity, Severity::Critical);
        assert_eq!(lowered("0[2-8]X.").severity, Severity::Warning);
    }

    #[test]
    fn faithful_routes_have_no_findings() {
        let germany = DialPlan {
            country_code: "49".into(),
            international_prefix: "00".into(),
            national_prefix: "0".into(),
            emergency_numbers: vec!["112".into()],
            ..DialPlan::default()
        };
        for (pattern, strip, prepend) in [
            ("0ZX.", 0, ""),
            ("0ZX.", 1, "+49"),
            ("00.", 2, "+"),
            ("00.", 0, ""),
            ("112", 0, ""),
        ] {
            let found = route_findings(&germany, "r", pattern, strip, prepend);
            assert!(found.is_empty(), "{pattern}: {found:?}");
        }
        assert!(route_findings(&DialPlan::default(), "us", "1NXXNXXXXXX", 0, "+").is_empty());
        assert!(route_findings(&DialPlan::default(), "intl", "011.", 3, "+").is_empty());
    }

    #[test]
    fn severities_order_and_parse() {
        assert!(Severity::Info < Severity::Warning && Severity::Warning < Severity::Critical);
        for s in [Severity::Info, Severity::Warning, Severity::Critical] {
            assert_eq!(Severity::parse(s.as_str()), Some(s));
        }
        assert_eq!(Severity::parse("fatal"), None);
        assert_eq!(Check::PasswordEqualsNumber.severity(), Severity::Critical);
        assert_eq!(Check::SipIdEqualsNumber.severity(), Severity::Warning);
    }

    #[test]
    fn a_certificate_is_flagged_21_days_before_it_expires_and_once_it_has() {
        const DAY: i64 = 86_400;
        let now = 1_800_000_000;
        assert_eq!(certificate("sip", now - DAY, now + 22 * DAY, now), None);
        let soon = certificate("sip", now - DAY, now + 21 * DAY, now).expect("finding");
        assert_eq!(soon.rule.to_string(), "tls.cert_expiring");
        assert_eq!(soon.severity, Severity::Warning);
        assert_eq!(soon.subject, "tls:sip");
        let gone = certificate("sip", now - 2 * DAY, now - DAY, now).expect("finding");
        assert_eq!(gone.rule.to_string(), "tls.cert_expired");
        assert_eq!(gone.severity, Severity::Critical);
        let early = certificate("sip", now + DAY, now + 90 * DAY, now).expect("finding");
        assert_eq!(early.rule.to_string(), "tls.cert_expired");
    }
}
