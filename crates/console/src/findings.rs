//! What the console shows of the credential audit: each finding as a sentence a person
//! reads at a glance (a short title plus the rule's own message; the stable rule id goes
//! to a tooltip and to JSON).

use policy::Finding;
use policy::audit::Check;
use serde::Serialize;

/// The few words that name what a check found, shown before the rule's own sentence.
/// Exhaustive: a new check does not build until it has a title.
pub fn title(check: Check) -> &'static str {
    match check {
        Check::PasswordEqualsNumber => "Password is the extension number",
        Check::PasswordEqualsAuthId => "Password is the login name",
        Check::PinEqualsNumber => "PIN is the extension number",
        Check::SipIdEqualsNumber => "SIP ID is the extension number",
        Check::AuthIdEqualsNumber => "Login name is the number",
        Check::PasswordTooShort => "Password is too short",
        Check::PasswordNotMixed => "Password uses one kind of character",
        Check::PasswordContainsNumber => "Password contains the number",
        Check::PasswordContainsAuthId => "Password contains the login name",
        Check::PasswordContainsName => "Password contains the name",
        Check::PasswordContainsDomain => "Password contains the domain",
        Check::PasswordCommon => "Password is a common one",
        Check::PasswordGuessable => "Password is easy to guess",
        Check::PasswordReused => "Password is used elsewhere too",
        Check::PinTooShort => "PIN is too short",
        Check::PinTrivial => "PIN is trivial",
        Check::PinContainsNumber => "PIN contains the extension number",
        Check::FactoryDefaultLogin => "Factory default login",
        Check::NoEmail => "No email address",
        Check::IdentityCollision => "Same identifier as another account",
        Check::RewriteRaisesClass => "Route sends numbers out as a costlier class",
        Check::RewriteLowersClass => "Route hides the class of the numbers it sends",
        Check::FloodLimitsOff => "Flood limits are off",
        Check::FloodLimitsLenient => "Flood limits are lenient",
        Check::GatewayLimitLenient => "Gateway limit is lenient",
        Check::CertExpiring => "TLS certificate expires soon",
        Check::CertExpired => "TLS certificate is not valid now",
        Check::ScannerBansOff => "Scanners are not banned",
        Check::NoDecoys => "No decoy accounts",
        Check::AuthFailuresLenient => "Many failed logins allowed",
        Check::BansShort => "Bans are short",
        Check::EscalationOff => "Repeat offenders are never banned longer",
        Check::ExtensionLockoutOff => "Accounts under guessing stay open",
        Check::ExtensionLockoutLenient => "Accounts under guessing close late",
        Check::WeakCredentialsAllowed => "Weak credentials may register",
        Check::ProvisioningProbesLenient => "Provisioning probes are tolerated",
        Check::MinStrengthLow => "Weak passwords are accepted",
        Check::MinPasswordLengthLow => "Short passwords are accepted",
        Check::GeneratedPinShort => "Generated PINs are short",
        Check::FraudLimitHigh => "Fraud limit is high",
        Check::DefaultClassWide => "New extensions may call far",
        Check::MailUnencrypted => "Mail is sent unencrypted",
        Check::GraceLong => "Old passwords work for long",
        Check::ProvisioningPlainHttp => "Phone files over plain HTTP",
        Check::NonceLifetimeLong => "Challenges live long",
        Check::TrustWide => "Trusted sources get wide limits",
    }
}

/// A finding as a page or the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Plain {
    /// The stable id (`ext.password_equals_number`), for scripts and the tooltip.
    pub rule: String,
    pub severity: &'static str,
    pub subject: String,
    pub field: &'static str,
    /// The short title ([`title`]).
    pub title: &'static str,
    /// The rule's own sentence.
    pub message: String,
}

impl Plain {
    pub fn of(f: &Finding) -> Self {
        Self {
            rule: f.rule.to_string(),
            severity: f.severity.as_str(),
            subject: f.subject.clone(),
            field: f.field,
            title: title(f.rule.check),
            message: f.message.clone(),
        }
    }

    /// Title and message as one line: "Password is the extension number: ...".
    pub fn sentence(&self) -> String {
        format!("{}: {}", self.title, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::Severity;
    use policy::audit::{Kind, RuleId};

    #[test]
    fn a_finding_reads_as_a_title_and_its_message_with_the_rule_id_kept() {
        let f = Finding {
            rule: RuleId {
                kind: Kind::Ext,
                check: Check::PasswordEqualsNumber,
            },
            severity: Severity::Critical,
            subject: "ext:1001".into(),
            field: "password",
            message: "the SIP password equals the extension number".into(),
        };
        let p = Plain::of(&f);
        assert_eq!(p.rule, "ext.password_equals_number");
        assert_eq!(p.title, "Password is the extension number");
        assert_eq!(
            p.sentence(),
            "Password is the extension number: the SIP password equals the extension number"
        );
        assert_eq!(
            serde_json::to_value(&p).expect("json")["severity"],
            "critical"
        );
    }

    #[test]
    fn titles_are_short_and_start_with_a_capital() {
        use Check::*;
        for c in [
            PasswordEqualsNumber,
            PinTrivial,
            FactoryDefaultLogin,
            RewriteRaisesClass,
            TrustWide,
        ] {
            let t = title(c);
            assert!(t.len() <= 48, "{t}");
            assert!(t.starts_with(|ch: char| ch.is_ascii_uppercase()), "{t}");
        }
    }
}
