//! `sipward audit`

use std::process::ExitCode;

use accounts::Registry;
use policy::{Finding, Severity};
use serde::Serialize;

use crate::cli::{AuditArgs, Level};
use crate::config::Config;
use crate::output::{self, Table};

#[derive(Serialize)]
struct Summary {
    critical: usize,
    warning: usize,
    info: usize,
}

#[derive(Serialize)]
struct Report<'a> {
    summary: Summary,
    findings: &'a [Finding],
}

/// The SIP TLS certificate's expiry (`tls.cert_expiring` 21 days before, then
/// `tls.cert_expired`); nothing when TLS is off or no certificate exists yet.
fn tls_finding(reg: &Registry, config: &Config) -> Option<Finding> {
    if !config.tls.enabled {
        return None;
    }
    let source = crate::tls::Source::of(&config.tls, reg.data_dir().root());
    let cert = source.read().ok()?;
    let f = cert.facts();
    let now = crate::clock::clock().now();
    policy::audit::certificate("sip", f.not_before, f.not_after, now)
}

/// The config's weakened settings first, then every stored account's findings.
pub async fn run(reg: &Registry, args: AuditArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let guard = reg.guard_view().await?.policy;
    let mut findings = config.findings_with(&guard);
    findings.extend(tls_finding(reg, config));
    findings.extend(reg.audit().await?);
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let summary = Summary {
        critical: count(Severity::Critical),
        warning: count(Severity::Warning),
        info: count(Severity::Info),
    };
    if args.out.json {
        output::json(&Report {
            summary,
            findings: &findings,
        })?;
    } else if findings.is_empty() {
        println!("no findings: every setting and every credential passes the policy");
    } else {
        let mut t = Table::new(&["SEVERITY", "RULE", "SUBJECT", "FIELD", "MESSAGE"]);
        for f in &findings {
            t.row(
                vec![
                    f.severity.as_str().into(),
                    f.rule.to_string(),
                    f.subject.clone(),
                    f.field.into(),
                    f.message.clone(),
                ],
                f.severity >= accounts::findings::WEAK_AT,
            );
        }
        t.print()?;
        println!(
            "{} critical, {} warning, {} info",
            summary.critical, summary.warning, summary.info
        );
    }
    let threshold = args.fail_on.map(|l| match l {
        Level::Info => Severity::Info,
        Level::Warning => Severity::Warning,
        Level::Critical => Severity::Critical,
    });
    let failed = threshold.is_some_and(|t| findings.iter().any(|f| f.severity >= t));
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
