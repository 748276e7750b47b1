//! The findings of the credential audit over everything stored: secrets are opened in memory only for the rules and
//! dropped (wiped) afterwards; findings never carry them.

use policy::Secret;
use policy::audit::{Auditor, Context, ExtensionFacts, GatewayFacts, ProviderFacts, RouteFacts};
use policy::route::{Pattern, Rewrite};
use policy::{Finding, Severity};
use store::account::{self as q, ExtensionAuditRow, ExtensionRow, GatewayRow, ProviderRow};

use crate::Result;
use crate::registry::{Registry, ext_aad, gateway_aad, provider_aad};

/// An extension (or other account) is *weak* when it has a finding of at least this
/// severity; info findings (such as a missing email) do not make it weak.
pub const WEAK_AT: Severity = Severity::Warning;

/// The findings that make each subject (`ext:1001`, `gateway:NAME`, ...) weak: those of
/// [`WEAK_AT`] or worse, grouped by subject. A subject absent from the map is not weak.
pub fn weak_by_subject(findings: &[Finding]) -> std::collections::BTreeMap<&str, Vec<&Finding>> {
    let mut out: std::collections::BTreeMap<&str, Vec<&Finding>> = Default::default();
    for f in findings.iter().filter(|f| f.severity >= WEAK_AT) {
        out.entry(f.subject.as_str()).or_default().push(f);
    }
    out
}

struct OpenedExt<'r> {
    row: &'r ExtensionAuditRow,
    password: Secret,
    pin: Secret,
}

impl Registry {
    fn context(&self) -> Context<'_> {
        Context {
            policy: &self.settings().policy,
            domain: self.settings().domain.as_deref(),
        }
    }

    fn open_ext<'r>(&self, row: &'r ExtensionAuditRow) -> Result<OpenedExt<'r>> {
        Ok(OpenedExt {
            password: self.open_secret(&ext_aad(&row.number, "password"), &row.password_enc)?,
            pin: self.open_secret(&ext_aad(&row.number, "pin"), &row.pin_enc)?,
            row,
        })
    }

    fn ext_facts<'a>(o: &'a OpenedExt<'_>) -> ExtensionFacts<'a> {
        ExtensionFacts {
            number: &o.row.number,
            auth_id: &o.row.auth_id,
            sip_id: o.row.sip_id.as_deref(),
            name: &o.row.name,
            email: o.row.email.as_deref(),
            password: o.password.expose(),
            password_score: u8::try_from(o.row.password_score).ok(),
            pin: o.pin.expose(),
        }
    }

    fn gw_facts<'a>(row: &'a GatewayRow, pw: &'a Secret) -> GatewayFacts<'a> {
        GatewayFacts {
            name: &row.name,
            vendor: &row.vendor,
            number: &row.number,
            auth_id: &row.auth_id,
            password: pw.expose(),
            password_score: u8::try_from(row.password_score).ok(),
        }
    }

    fn prov_facts<'a>(row: &'a ProviderRow, pw: &'a Secret) -> ProviderFacts<'a> {
        ProviderFacts {
            name: &row.name,
            registrar: &row.registrar,
            auth_id: &row.auth_id,
            password: pw.expose(),
            password_score: u8::try_from(row.password_score).ok(),
        }
    }

    /// Every finding over every extension, gateway and provider, including passwords
    /// reused across accounts, and every route whose rewrite moves numbers into another
    /// class than its pattern matches (`route.rewrite_raises_class`: what the class of
    /// service is checked on is the number that leaves). Sorted by subject, then rule.
    pub async fn audit(&self) -> Result<Vec<Finding>> {
        let mut conn = self.store().conn().await?;
        let exts = q::list_extensions_for_audit(&mut conn).await?;
        let gws = q::list_gateways(&mut conn).await?;
        let provs = q::list_providers(&mut conn).await?;
        let routes = store::trunks::routes(&mut conn).await?;
        drop(conn);
        // Tens of milliseconds per thousand accounts: off the async worker, on tokio's
        // bounded blocking pool, so the runtime's other tasks keep running meanwhile.
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.audit_rows(&exts, &gws, &provs, &routes))
            .await
        {
            Ok(findings) => findings,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(crate::Error::ShuttingDown),
        }
    }

    /// The audit's CPU work over rows already read.
    fn audit_rows(
        &self,
        exts: &[ExtensionAuditRow],
        gws: &[GatewayRow],
        provs: &[ProviderRow],
        routes: &[store::trunks::RouteRow],
    ) -> Result<Vec<Finding>> {
        // Opening ~200,000 sealed secrets is the largest cost after the fetch: use every core.
        let opened: Vec<OpenedExt<'_>> =
            crate::registry::parallel_map(exts, crate::registry::worker_threads(), |r| {
                self.open_ext(r)
            })
            .into_iter()
            .collect::<Result<_>>()?;
        let gw_pw: Vec<Secret> = gws
            .iter()
            .map(|g| self.open_secret(&gateway_aad(&g.name), &g.password_enc))
            .collect::<Result<_>>()?;
        let prov_pw: Vec<Secret> = provs
            .iter()
            .map(|p| self.open_secret(&provider_aad(&p.name), &p.password_enc))
            .collect::<Result<_>>()?;

        let mut auditor = Auditor::new(self.context());
        for o in &opened {
            auditor.extension(&Self::ext_facts(o));
        }
        for (g, pw) in gws.iter().zip(&gw_pw) {
            auditor.gateway(&Self::gw_facts(g, pw));
        }
        for (p, pw) in provs.iter().zip(&prov_pw) {
            auditor.provider(&Self::prov_facts(p, pw));
        }
        // Stored routes were validated when added; a row that no longer parses (an
        // older rule) has nothing to sample and is skipped.
        let plan = &*self.dialplan();
        for r in routes {
            let (Ok(pattern), Some(rewrite)) = (
                Pattern::parse(&r.pattern),
                u32::try_from(r.strip)
                    .ok()
                    .and_then(|strip| Rewrite::parse(strip, &r.prepend).ok()),
            ) else {
                continue;
            };
            auditor.route(
                plan,
                &RouteFacts {
                    name: &r.name,
                    pattern: &pattern,
                    rewrite: &rewrite,
                },
            );
        }
        Ok(auditor.finish())
    }

    /// Findings for one extension on its own (reuse across accounts needs the full audit).
    pub(crate) fn audit_extension_row(&self, row: &ExtensionRow) -> Result<Vec<Finding>> {
        let row = ExtensionAuditRow::from(row);
        let o = self.open_ext(&row)?;
        let mut a = Auditor::new(self.context());
        a.extension(&Self::ext_facts(&o));
        Ok(a.finish())
    }

    pub(crate) fn audit_gateway_row(&self, row: &GatewayRow) -> Result<Vec<Finding>> {
        let pw = self.open_secret(&gateway_aad(&row.name), &row.password_enc)?;
        let mut a = Auditor::new(self.context());
        a.gateway(&Self::gw_facts(row, &pw));
        Ok(a.finish())
    }

    pub(crate) fn audit_provider_row(&self, row: &ProviderRow) -> Result<Vec<Finding>> {
        let pw = self.open_secret(&provider_aad(&row.name), &row.password_enc)?;
        let mut a = Auditor::new(self.context());
        a.provider(&Self::prov_facts(row, &pw));
        Ok(a.finish())
    }
}
