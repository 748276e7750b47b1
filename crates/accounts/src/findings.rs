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

/// Extensions the audit reads, opens and checks at a time: large enough that a page's
/// query and thread start-up are small against its work, small enough that a page's
/// rows and secrets stay well under a MiB.
pub const AUDIT_PAGE: i64 = 1_000;

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
    ///
    /// Extensions are read, opened and checked [`AUDIT_PAGE`] at a time: what the audit
    /// holds at once is one page of rows and secrets (and the next page being read),
    /// plus what the cross-account rules remember of each account, never every account's
    /// rows and opened secrets together.
    pub async fn audit(&self) -> Result<Vec<Finding>> {
        self.audit_in_pages(AUDIT_PAGE).await
    }

    async fn audit_in_pages(&self, page_size: i64) -> Result<Vec<Finding>> {
        let mut conn = self.store().conn().await?;
        let gws = q::list_gateways(&mut conn).await?;
        let provs = q::list_providers(&mut conn).await?;
        let routes = store::trunks::routes(&mut conn).await?;
        // Tens of milliseconds per thousand accounts: off the async worker, on tokio's
        // bounded blocking pool, so the runtime's other tasks keep running meanwhile.
        // Pages reach it through a channel of one: the next page is read while this one
        // is checked.
        let (pages, mut next) = tokio::sync::mpsc::channel::<Vec<ExtensionAuditRow>>(1);
        let this = self.clone();
        let checker = tokio::task::spawn_blocking(move || {
            let mut auditor = Auditor::new(this.context());
            while let Some(page) = next.blocking_recv() {
                this.audit_extensions(&mut auditor, &page)?;
            }
            this.audit_rest(auditor, &gws, &provs, &routes)
        });
        let mut after = String::new();
        let read = loop {
            let page = match q::list_extensions_for_audit(&mut conn, &after, page_size).await {
                Ok(page) => page,
                Err(e) => break Err(e),
            };
            let (Some(last), false) = (page.last, page.rows.is_empty()) else {
                break Ok(());
            };
            let full = i64::try_from(page.rows.len()).is_ok_and(|n| n >= page_size);
            // A closed channel is the checker stopped on an error: it says which below.
            if pages.send(page.rows).await.is_err() || !full {
                break Ok(());
            }
            after = last;
        };
        drop(pages);
        drop(conn);
        let checked = match checker.await {
            Ok(findings) => findings,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(crate::Error::ShuttingDown),
        };
        read?;
        checked
    }

    /// One page of extensions: their secrets opened on every core, checked, and wiped
    /// when the page is done.
    fn audit_extensions(
        &self,
        auditor: &mut Auditor<'_>,
        page: &[ExtensionAuditRow],
    ) -> Result<()> {
        let opened: Vec<OpenedExt<'_>> =
            crate::registry::parallel_map(page, crate::registry::worker_threads(), |r| {
                self.open_ext(r)
            })
            .into_iter()
            .collect::<Result<_>>()?;
        for o in &opened {
            auditor.extension(&Self::ext_facts(o));
        }
        Ok(())
    }

    /// The gateways, providers and routes (few, read whole), then the cross-account
    /// rules.
    fn audit_rest(
        &self,
        mut auditor: Auditor<'_>,
        gws: &[GatewayRow],
        provs: &[ProviderRow],
        routes: &[store::trunks::RouteRow],
    ) -> Result<Vec<Finding>> {
        let gw_pw: Vec<Secret> = gws
            .iter()
            .map(|g| self.open_secret(&gateway_aad(&g.name), &g.password_enc))
            .collect::<Result<_>>()?;
        let prov_pw: Vec<Secret> = provs
            .iter()
            .map(|p| self.open_secret(&provider_aad(&p.name), &p.password_enc))
            .collect::<Result<_>>()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_find_what_one_read_of_every_account_finds() {
        let dir = tempfile::tempdir().expect("tmp");
        let reg = crate::open::tests::registry_in(dir.path()).await;
        let shared = "Quiet-Harbour-Lantern-93";
        // 1001 and 1005 share a password and 1003's SIP ID is 1004's number: with
        // pages of two (888 is the data dir's fax extension), each pair lies on
        // different pages.
        for (number, password) in [
            ("1001", Some(shared)),
            ("1002", Some("1002")),
            ("1003", None),
            ("1004", None),
            ("1005", Some(shared)),
        ] {
            let e = crate::extension::NewExtension {
                password: password.map(str::to_owned),
                ..Default::default()
            };
            reg.add_extension(number, e).await.expect("add");
        }
        // Written past the registry's own identity check, as data from before it.
        let mut conn = reg.store().conn().await.expect("conn");
        let mut row = q::get_extension(&mut conn, "1003")
            .await
            .expect("get")
            .expect("row");
        row.sip_id = Some("1004".to_owned());
        q::update_extension(&mut conn, &row).await.expect("update");
        drop(conn);
        let whole = reg.audit_in_pages(1_000).await.expect("one page");
        let rules = |f: &[Finding], subject: &str| -> Vec<String> {
            f.iter()
                .filter(|f| f.subject == subject)
                .map(|f| f.rule.to_string())
                .collect()
        };
        assert!(rules(&whole, "ext:1001").contains(&"ext.password_reused".to_owned()));
        assert!(rules(&whole, "ext:1005").contains(&"ext.password_reused".to_owned()));
        assert!(rules(&whole, "ext:1002").contains(&"ext.password_equals_number".to_owned()));
        assert!(rules(&whole, "ext:1004").contains(&"ext.identity_collision".to_owned()));
        for size in [1, 2, 3] {
            assert_eq!(
                reg.audit_in_pages(size).await.expect("pages"),
                whole,
                "pages of {size}"
            );
        }
    }
}
