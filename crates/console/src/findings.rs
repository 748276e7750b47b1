//! What the console shows of the credential audit: each finding as a sentence a person
//! reads at a glance (a short title plus the rule's own message; the stable rule id goes
//! to a tooltip and to JSON), and the audit's result kept per registry version so a page
//! load at 10,000 extensions does not run it again.

use std::sync::Arc;

use accounts::Registry;
use policy::Finding;
use policy::audit::Check;
use serde::Serialize;

use crate::web::Row;

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
        Check::ScannerBansOff => "Scanners are not banned",
        Check::NoDecoys => "No decoy accounts",
        Check::AuthFailuresLenient => "Many failed logins allowed",
        Check::BansShort => "Bans are short",
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

/// The audit's findings, and the extension list built from them, at one registry
/// version.
#[derive(Debug, Default)]
struct Cached {
    version: i64,
    findings: Option<Arc<Vec<Finding>>>,
    rows: Option<Arc<Vec<Row>>>,
}

/// The audit over every account, computed once per registry version (the counter the
/// store's triggers move on every account, route, DID or grace write). Callers that
/// arrive while it runs wait for that one run instead of starting their own.
#[derive(Debug, Default)]
pub struct AuditCache {
    cached: tokio::sync::Mutex<Cached>,
}

impl AuditCache {
    /// The findings as of now: the cached ones when the version has not moved. The
    /// version is read *before* the audit, so a write during it moves the version past
    /// the one stored and the next call audits again.
    pub async fn findings(&self, reg: &Registry) -> accounts::Result<Arc<Vec<Finding>>> {
        let version = Self::version(reg).await?;
        let mut cached = self.cached.lock().await;
        Self::findings_at(&mut cached, reg, version).await
    }

    /// Every extension with its findings, built once per registry version too (at
    /// 10,000 extensions, fetching and joining them is most of a page's time).
    pub async fn rows(&self, reg: &Registry) -> accounts::Result<Arc<Vec<Row>>> {
        let version = Self::version(reg).await?;
        let mut cached = self.cached.lock().await;
        if let Some(r) = &cached.rows
            && cached.version == version
        {
            return Ok(Arc::clone(r));
        }
        let findings = Self::findings_at(&mut cached, reg, version).await?;
        let rows = Arc::new(crate::web::rows_of(reg.list_extensions().await?, &findings));
        cached.rows = Some(Arc::clone(&rows));
        Ok(rows)
    }

    async fn version(reg: &Registry) -> accounts::Result<i64> {
        let mut conn = reg.store().conn().await?;
        Ok(store::directory::accounts_version(&mut conn).await?)
    }

    async fn findings_at(
        cached: &mut Cached,
        reg: &Registry,
        version: i64,
    ) -> accounts::Result<Arc<Vec<Finding>>> {
        if let Some(f) = &cached.findings
            && cached.version == version
        {
            return Ok(Arc::clone(f));
        }
        let findings = Arc::new(reg.audit().await?);
        *cached = Cached {
            version,
            findings: Some(Arc::clone(&findings)),
            rows: None,
        };
        Ok(findings)
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

    async fn registry(dir: &std::path::Path) -> Registry {
        use rand::SeedableRng;
        let clock = std::sync::Arc::new(policy::clock::ManualClock::new(
            1_795_916_875,
            std::time::Instant::now(),
        ));
        let (registry, _) = Registry::open(
            &store::DataDir::new(dir.join("d")),
            accounts::Settings {
                realm: "sipward".into(),
                domain: None,
                policy: policy::PolicyConfig::default(),
                dialplan: Default::default(),
                admin_email: None,
                provisioning: Default::default(),
            },
            Box::new(rand::rngs::StdRng::seed_from_u64(7)),
            clock,
        )
        .await
        .expect("open");
        registry
    }

    #[tokio::test]
    async fn the_audit_runs_once_per_registry_version() {
        let dir = tempfile::tempdir().expect("tmp");
        let reg = registry(dir.path()).await;
        let weak = accounts::extension::NewExtension {
            password: Some("1001".into()),
            ..Default::default()
        };
        reg.add_extension("1001", weak).await.expect("add");
        let cache = AuditCache::default();
        let first = cache.findings(&reg).await.expect("audit");
        assert!(
            first
                .iter()
                .any(|f| f.rule.to_string() == "ext.password_equals_number")
        );
        // Nothing written: the same result, not a new audit.
        let again = cache.findings(&reg).await.expect("audit");
        assert!(Arc::ptr_eq(&first, &again));
        let rows = cache.rows(&reg).await.expect("rows");
        assert!(Arc::ptr_eq(&rows, &cache.rows(&reg).await.expect("rows")));
        assert!(rows.iter().any(|r| r.view.number == "1001" && r.weak));
        assert!(Arc::ptr_eq(
            &first,
            &cache.findings(&reg).await.expect("audit")
        ));
        // A write moves the version: audited again, and the finding is gone.
        let change = accounts::extension::ExtensionChange {
            password: Some("Quiet-Harbour-Lantern-93".into()),
            ..Default::default()
        };
        reg.update_extension("1001", change).await.expect("update");
        let rows_after = cache.rows(&reg).await.expect("rows");
        assert!(
            rows_after
                .iter()
                .any(|r| r.view.number == "1001" && !r.weak)
        );
        let after = cache.findings(&reg).await.expect("audit");
        assert!(!Arc::ptr_eq(&first, &after));
        assert!(
            !after
                .iter()
                .any(|f| f.rule.to_string() == "ext.password_equals_number"),
            "{after:?}"
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
