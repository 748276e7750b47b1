//! Settings that weaken a defence are findings: every setting of the door (the guard),
//! the fraud limits, the credential policy or mail security that the config turns below
//! its default is reported (`config.*` rule ids), with a severity by how much it opens.
//! `sipward audit`, `advise`, `serve` (at start) and the console's dashboard all show
//! them. Values outside their sane range never get here: they are refused at load.
//!
//! The defaults raise nothing: a finding always names something the operator changed.

use std::net::IpAddr;

use crate::audit::{Check, Finding, Kind, RuleId, Severity};
use crate::ban::{BanPolicy, WeakCredentials};
use crate::config::PolicyConfig;
use crate::dialplan::{ClassOfService, DialPlan};

/// What the rules read of the installation's settings.
#[derive(Clone, Copy, Debug)]
pub struct Settings<'a> {
    pub guard: &'a BanPolicy,
    pub policy: &'a PolicyConfig,
    pub dialplan: &'a DialPlan,
    /// `[mail]`, when configured.
    pub mail: Option<MailFacts<'a>>,
    /// `provisioning.grace_secs`.
    pub grace_secs: i64,
    /// `provisioning.base_url`, when set.
    pub provisioning_url: Option<&'a str>,
    /// `sip.nonce_lifetime`.
    pub nonce_lifetime_secs: u64,
}

/// What the rules read of `[mail]`.
#[derive(Clone, Copy, Debug)]
pub struct MailFacts<'a> {
    pub host: &'a str,
    /// STARTTLS or implicit TLS (`security` is not `none`).
    pub encrypted: bool,
}

/// Whether `host` (a name or an address) is this machine.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Guesses a source may make within an hour before the rule stops it, at `count`
/// within `window_secs`.
fn per_hour(count: u32, window_secs: i64) -> i64 {
    i64::from(count).saturating_mul(3600) / window_secs.max(1)
}

/// How much more than the default a rate allows: 4× the default is a warning, 60× (the
/// default's hourly allowance every minute) is critical.
fn by_factor(rate: i64, default_rate: i64) -> Option<Severity> {
    if rate > default_rate.saturating_mul(60) {
        Some(Severity::Critical)
    } else if rate > default_rate.saturating_mul(4) {
        Some(Severity::Warning)
    } else {
        None
    }
}

struct Report(Vec<Finding>);

impl Report {
    fn push(&mut self, check: Check, severity: Severity, field: &'static str, message: String) {
        self.0.push(Finding {
            rule: RuleId {
                kind: Kind::Config,
                check,
            },
            severity,
            subject: Kind::Config.as_str().to_owned(),
            field,
            message,
        });
    }
}

/// Every finding about `s`, worst first.
pub fn findings(s: &Settings<'_>) -> Vec<Finding> {
    let mut r = Report(Vec::new());
    guard(&mut r, s.guard);
    credentials(&mut r, s.policy);
    fraud(&mut r, s.dialplan);
    if let Some(m) = &s.mail
        && !m.encrypted
        && !is_loopback_host(m.host)
    {
        r.push(
            Check::MailUnencrypted,
            Severity::Critical,
            "mail.security",
            format!(
                "mail to {} is sent without encryption: welcome mails carry SIP passwords, and anyone on the way reads them; use \"starttls\" or \"tls\"",
                m.host
            ),
        );
    }
    if s.grace_secs > 86_400 {
        r.push(
            Check::GraceLong,
            Severity::Warning,
            "provisioning.grace_secs",
            format!(
                "an old password keeps working for {} hours after Re-Generate (from the phones' addresses); a day is enough for phones to fetch the new one",
                s.grace_secs / 3600
            ),
        );
    }
    if let Some(url) = s.provisioning_url
        && let Some(rest) = url.strip_prefix("http://")
    {
        let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
        if !is_loopback_host(host) {
            r.push(
                Check::ProvisioningPlainHttp,
                Severity::Warning,
                "provisioning.base_url",
                "phones fetch their files over plain HTTP: the files carry SIP passwords, and anyone on the way reads them; serve them over https".into(),
            );
        }
    }
    if s.nonce_lifetime_secs > 600 {
        r.push(
            Check::NonceLifetimeLong,
            Severity::Info,
            "sip.nonce_lifetime",
            format!(
                "a digest nonce stays valid for {} minutes: a captured login can be tried again for that long",
                s.nonce_lifetime_secs / 60
            ),
        );
    }
    let mut out = r.0;
    out.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.field.cmp(b.field)));
    out
}

fn guard(r: &mut Report, g: &BanPolicy) {
    let d = BanPolicy::default();
    if g.flood_requests == 0 {
        r.push(
            Check::FloodLimitsOff,
            Severity::Warning,
            "guard.flood_requests",
            "flood limits are off: a source that never logged in may send requests as fast as it likes (enumeration and guessing at full speed, stopped only by the failure count)".into(),
        );
    } else if let Some(sev) = by_factor(
        per_hour(g.flood_requests, g.flood_window_secs),
        per_hour(d.flood_requests, d.flood_window_secs),
    ) {
        r.push(
            Check::FloodLimitsLenient,
            sev,
            "guard.flood_requests",
            format!(
                "a source that never logged in may send {} requests within {} s before it is banned ({}× the default rate)",
                g.flood_requests,
                g.flood_window_secs,
                per_hour(g.flood_requests, g.flood_window_secs)
                    / per_hour(d.flood_requests, d.flood_window_secs).max(1)
            ),
        );
    }
    // The most any gateway address may send: its own exception, or the common limit.
    let gateway = g
        .gateway_limits
        .values()
        .copied()
        .chain(std::iter::once(g.gateway_requests))
        .max()
        .unwrap_or(g.gateway_requests);
    if g.flood_requests > 0
        && let Some(sev) = by_factor(
            per_hour(gateway, g.flood_window_secs),
            per_hour(d.gateway_requests, d.flood_window_secs),
        )
    {
        r.push(
            Check::GatewayLimitLenient,
            sev,
            "guard.gateway_requests",
            format!(
                "a gateway's address may send {gateway} requests within {} s before the rest is dropped; a UDP source can be forged, so anyone may send that many in a trunk's name, each read and answered",
                g.flood_window_secs
            ),
        );
    }
    if !g.ban_scanners {
        r.push(
            Check::ScannerBansOff,
            Severity::Warning,
            "guard.ban_scanners",
            "known scanners (SIPVicious, friendly-scanner, ...) are answered instead of banned at their first request".into(),
        );
    }
    if g.decoys.is_empty() {
        r.push(
            Check::NoDecoys,
            Severity::Info,
            "guard.decoys",
            "no decoy user names: a source trying \"admin\" or \"100\" is not banned at once"
                .into(),
        );
    }
    let rate = per_hour(g.auth_failures, g.auth_window_secs);
    if let Some(sev) = by_factor(rate, per_hour(d.auth_failures, d.auth_window_secs)) {
        r.push(
            Check::AuthFailuresLenient,
            sev,
            "guard.auth_failures",
            format!(
                "a source may fail {} logins within {} s before it is banned: up to {rate} password guesses an hour (the default allows {})",
                g.auth_failures,
                g.auth_window_secs,
                per_hour(d.auth_failures, d.auth_window_secs)
            ),
        );
    }
    if g.ban_secs < 600 {
        r.push(
            Check::BansShort,
            Severity::Warning,
            "guard.ban_secs",
            format!(
                "a ban lasts {} s: a guessing source is back within minutes",
                g.ban_secs
            ),
        );
    }
    // A source can be banned at most once per ban length: more repeat bans than fit in
    // the window never add up, and the long ban never comes.
    let fit = g.repeat_window_secs / g.ban_secs.max(1) + 1;
    if i64::from(g.repeat_bans) > fit {
        r.push(
            Check::EscalationOff,
            Severity::Warning,
            "guard.repeat_bans",
            format!(
                "a source must be banned {} times within {} s for the long ban, but bans of {} s fit only {fit} times: a guesser that waits out each ban is never banned longer",
                g.repeat_bans, g.repeat_window_secs, g.ban_secs
            ),
        );
    }
    // The other bans default to a day or a week: cut below an hour, a prober, a decoy
    // or scanner hit, a flooder or a repeat offender is back before anyone looks.
    for (field, value, default) in [
        (
            "guard.repeat_ban_secs",
            g.repeat_ban_secs,
            d.repeat_ban_secs,
        ),
        (
            "guard.scanner_ban_secs",
            g.scanner_ban_secs,
            d.scanner_ban_secs,
        ),
        ("guard.flood_ban_secs", g.flood_ban_secs, d.flood_ban_secs),
        ("guard.decoy_ban_secs", g.decoy_ban_secs, d.decoy_ban_secs),
        (
            "guard.provisioning_ban_secs",
            g.provisioning_ban_secs,
            d.provisioning_ban_secs,
        ),
    ] {
        if value < 3600 {
            r.push(
                Check::BansShort,
                Severity::Warning,
                field,
                format!(
                    "a ban lasts {value} s where the default holds it for {} hours: the banned source is back within the hour",
                    default / 3600
                ),
            );
        }
    }
    if g.trusted_factor > d.trusted_factor {
        r.push(
            Check::TrustWide,
            Severity::Warning,
            "guard.trusted_factor",
            format!(
                "a source where any account logged in may send {}× the flood limits (the default allows {}×): whoever holds one account gets that much room",
                g.trusted_factor, d.trusted_factor
            ),
        );
    }
    if g.trusted_secs > d.trusted_secs {
        r.push(
            Check::TrustWide,
            Severity::Warning,
            "guard.trusted_secs",
            format!(
                "a source stays trusted for {} days after a login (the default is {}): its failures for that account go uncounted that long",
                g.trusted_secs / 86_400,
                d.trusted_secs / 86_400
            ),
        );
    }
    if g.extension_failures == 0 {
        r.push(
            Check::ExtensionLockoutOff,
            Severity::Critical,
            "guard.extension_failures",
            "the per-account limit is off: a botnet that rotates its addresses can guess an extension's password without end (per-source bans never see it)".into(),
        );
    } else if let Some(sev) = by_factor(
        per_hour(g.extension_failures, g.extension_window_secs),
        per_hour(d.extension_failures, d.extension_window_secs),
    ) {
        r.push(
            Check::ExtensionLockoutLenient,
            sev,
            "guard.extension_failures",
            format!(
                "an account may collect {} failures within {} s from untrusted sources before only trusted ones may log in",
                g.extension_failures, g.extension_window_secs
            ),
        );
    }
    if g.weak_credentials == WeakCredentials::Allow {
        r.push(
            Check::WeakCredentialsAllowed,
            Severity::Critical,
            "guard.weak_credentials",
            "accounts with weak passwords (the extension number, a common word) log in from anywhere: the first guess of every scanner works".into(),
        );
    }
    if let Some(sev) = by_factor(
        per_hour(g.provisioning_probes, g.provisioning_window_secs),
        per_hour(d.provisioning_probes, d.provisioning_window_secs),
    ) {
        r.push(
            Check::ProvisioningProbesLenient,
            sev,
            "guard.provisioning_probes",
            format!(
                "a source may fail {} provisioning logins within {} s before it is stopped",
                g.provisioning_probes, g.provisioning_window_secs
            ),
        );
    }
}

fn credentials(r: &mut Report, p: &PolicyConfig) {
    let d = PolicyConfig::default();
    if p.min_strength_score == 0 {
        r.push(
            Check::MinStrengthLow,
            Severity::Critical,
            "policy.min_strength_score",
            "the strength check is off: no password is ever flagged as guessable, nor held to trusted sources".into(),
        );
    } else if p.min_strength_score < d.min_strength_score {
        r.push(
            Check::MinStrengthLow,
            Severity::Warning,
            "policy.min_strength_score",
            format!(
                "passwords scoring {} of 4 pass as strong (the default asks for {})",
                p.min_strength_score, d.min_strength_score
            ),
        );
    }
    if p.min_password_length < d.min_password_length {
        r.push(
            Check::MinPasswordLengthLow,
            Severity::Warning,
            "policy.min_password_length",
            format!(
                "passwords of {} characters pass (the default asks for {})",
                p.min_password_length, d.min_password_length
            ),
        );
    }
    if p.generated_pin_length < d.generated_pin_length {
        r.push(
            Check::GeneratedPinShort,
            Severity::Info,
            "policy.generated_pin_length",
            format!(
                "generated voicemail PINs have {} digits (the default is {})",
                p.generated_pin_length, d.generated_pin_length
            ),
        );
    }
}

fn fraud(r: &mut Report, plan: &DialPlan) {
    let l = &plan.limits;
    for (field, value, warn, critical, what) in [
        (
            "dialplan.limits.concurrent_external",
            l.concurrent_external,
            10,
            100,
            "external calls at once per extension",
        ),
        (
            "dialplan.limits.attempts_per_minute",
            l.attempts_per_minute,
            30,
            1000,
            "external call attempts a minute per extension",
        ),
        (
            "dialplan.limits.international_per_day",
            l.international_per_day,
            100,
            10_000,
            "international and high-cost calls a day per extension",
        ),
    ] {
        let severity = if value >= critical {
            Severity::Critical
        } else if value > warn {
            Severity::Warning
        } else {
            continue;
        };
        r.push(
            Check::FraudLimitHigh,
            severity,
            field,
            format!(
                "{value} {what} pass before the extension is suspended: a hijacked extension runs up that much toll"
            ),
        );
    }
    for (field, class) in [
        ("dialplan.default_user_class", plan.default_user_class),
        ("dialplan.default_fax_class", plan.default_fax_class),
    ] {
        if class == ClassOfService::International {
            r.push(
                Check::DefaultClassWide,
                Severity::Warning,
                field,
                "every new extension of this kind may call abroad: grant international calling one extension at a time".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fraud::FraudLimits;

    fn settings<'a>(g: &'a BanPolicy, p: &'a PolicyConfig, d: &'a DialPlan) -> Settings<'a> {
        Settings {
            guard: g,
            policy: p,
            dialplan: d,
            mail: None,
            grace_secs: 86_400,
            provisioning_url: None,
            nonce_lifetime_secs: 300,
        }
    }

    fn rules(f: &[Finding]) -> Vec<String> {
        f.iter()
            .map(|f| format!("{} {} {}", f.rule, f.severity.as_str(), f.field))
            .collect()
    }

    #[test]
    fn the_defaults_raise_nothing() {
        let (g, p, d) = (
            BanPolicy::default(),
            PolicyConfig::default(),
            DialPlan::default(),
        );
        assert!(findings(&settings(&g, &p, &d)).is_empty());
        let mut s = settings(&g, &p, &d);
        s.mail = Some(MailFacts {
            host: "127.0.0.1",
            encrypted: false,
        });
        s.provisioning_url = Some("https://pbx.example.com");
        assert!(findings(&s).is_empty(), "a local relay, https");
    }

    /// The weakened config of issue 15, setting by setting.
    #[test]
    fn every_weakened_setting_is_a_finding_with_its_severity() {
        let g = BanPolicy {
            flood_requests: 0,
            ban_scanners: false,
            decoys: Vec::new(),
            auth_failures: 100,
            auth_window_secs: 1,
            extension_failures: 0,
            weak_credentials: WeakCredentials::Allow,
            ban_secs: 60,
            provisioning_ban_secs: 60,
            decoy_ban_secs: 60,
            scanner_ban_secs: 60,
            flood_ban_secs: 60,
            repeat_ban_secs: 60,
            trusted_factor: 1000,
            trusted_secs: 30 * 86_400,
            ..BanPolicy::default()
        };
        let p = PolicyConfig {
            min_strength_score: 0,
            min_password_length: 8,
            generated_pin_length: 4,
            ..PolicyConfig::default()
        };
        let d = DialPlan {
            limits: FraudLimits {
                concurrent_external: 1000,
                attempts_per_minute: 10_000,
                international_per_day: 100_000,
            },
            default_user_class: ClassOfService::International,
            ..DialPlan::default()
        };
        let mut s = settings(&g, &p, &d);
        s.mail = Some(MailFacts {
            host: "mail.example.com",
            encrypted: false,
        });
        s.grace_secs = 7 * 86_400;
        s.provisioning_url = Some("http://pbx.example.com:8080");
        s.nonce_lifetime_secs = 3600;
        let got = rules(&findings(&s));
        for want in [
            "config.auth_failures_lenient critical guard.auth_failures",
            "config.extension_lockout_off critical guard.extension_failures",
            "config.weak_credentials_allowed critical guard.weak_credentials",
            "config.min_strength_low critical policy.min_strength_score",
            "config.fraud_limit_high critical dialplan.limits.concurrent_external",
            "config.fraud_limit_high critical dialplan.limits.attempts_per_minute",
            "config.fraud_limit_high critical dialplan.limits.international_per_day",
            "config.mail_unencrypted critical mail.security",
            "config.flood_limits_off warning guard.flood_requests",
            "config.scanner_bans_off warning guard.ban_scanners",
            "config.bans_short warning guard.ban_secs",
            "config.bans_short warning guard.provisioning_ban_secs",
            "config.bans_short warning guard.decoy_ban_secs",
            "config.bans_short warning guard.scanner_ban_secs",
            "config.bans_short warning guard.flood_ban_secs",
            "config.bans_short warning guard.repeat_ban_secs",
            "config.trust_wide warning guard.trusted_factor",
            "config.trust_wide warning guard.trusted_secs",
            "config.min_password_length_low warning policy.min_password_length",
            "config.default_class_wide warning dialplan.default_user_class",
            "config.grace_long warning provisioning.grace_secs",
            "config.provisioning_plain_http warning provisioning.base_url",
            "config.no_decoys info guard.decoys",
            "config.generated_pin_short info policy.generated_pin_length",
            "config.nonce_lifetime_long info sip.nonce_lifetime",
        ] {
            assert!(got.iter().any(|g| g == want), "missing {want}: {got:#?}");
        }
        assert_eq!(got.len(), 25, "{got:#?}");
        let f = findings(&s);
        assert!(
            f.windows(2).all(|w| w[0].severity >= w[1].severity),
            "worst first"
        );
        assert!(
            f.iter()
                .all(|f| f.subject == "config" && !f.message.is_empty())
        );
    }

    #[test]
    fn severity_follows_how_much_a_setting_opens() {
        let p = PolicyConfig::default();
        let d = DialPlan::default();
        let sev = |g: BanPolicy| {
            findings(&settings(&g, &p, &d))
                .into_iter()
                .find(|f| f.field == "guard.auth_failures")
                .map(|f| f.severity)
        };
        // The default: 10 in 600 s = 60 guesses an hour.
        assert_eq!(sev(BanPolicy::default()), None);
        assert_eq!(
            sev(BanPolicy {
                auth_failures: 20,
                ..BanPolicy::default()
            }),
            None,
            "2×"
        );
        assert_eq!(
            sev(BanPolicy {
                auth_failures: 10,
                auth_window_secs: 60,
                ..BanPolicy::default()
            }),
            Some(Severity::Warning),
            "10×"
        );
        assert_eq!(
            sev(BanPolicy {
                auth_failures: 100,
                auth_window_secs: 60,
                ..BanPolicy::default()
            }),
            Some(Severity::Critical),
            "100×"
        );
        let mut wide = DialPlan::default();
        wide.limits.concurrent_external = 20;
        let f = findings(&settings(&BanPolicy::default(), &p, &wide));
        assert_eq!(
            rules(&f),
            ["config.fraud_limit_high warning dialplan.limits.concurrent_external"]
        );
    }

    #[test]
    fn a_gateway_limit_far_above_the_default_is_a_finding() {
        let (p, d) = (PolicyConfig::default(), DialPlan::default());
        let sev = |g: BanPolicy| {
            findings(&settings(&g, &p, &d))
                .into_iter()
                .find(|f| f.field == "guard.gateway_requests")
                .map(|f| (f.rule.to_string(), f.severity))
        };
        assert_eq!(sev(BanPolicy::default()), None);
        let mut one = BanPolicy::default();
        one.gateway_limits.insert("192.0.2.10".into(), 50_000);
        assert_eq!(
            sev(one),
            Some(("config.gateway_limit_lenient".into(), Severity::Warning)),
            "one gateway's exception at 5× the default"
        );
        assert_eq!(
            sev(BanPolicy {
                gateway_requests: 10_000_000,
                ..BanPolicy::default()
            })
            .map(|(_, s)| s),
            Some(Severity::Critical)
        );
    }

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "127.0.0.1", "127.9.9.9", "::1", "[::1]"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["mail.example.com", "192.0.2.1", "localhost.example.com", ""] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
