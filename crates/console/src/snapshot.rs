//! The credential audit and the extension list at one registry version: computed once
//! per version (the counter the store's triggers move on every account, route, DID or
//! grace write), so a page load at 10,000 extensions runs neither the audit nor the
//! full list again; pages, searches and the weak-only filter are cut from the list.

use std::sync::Arc;

use accounts::Registry;
use accounts::extension::ExtensionView;
use accounts::findings::weak_by_subject;
use policy::Finding;
use serde::Serialize;

use crate::findings::Plain;

/// An extension as the list shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub view: ExtensionView,
    pub weak: bool,
    /// The rule ids that make it weak, without the `ext.` prefix.
    pub rules: Vec<String>,
    /// Their messages.
    pub reasons: Vec<String>,
    /// The same findings as sentences (title, message, rule id).
    pub findings: Vec<Plain>,
}

impl Row {
    /// Whether `q` (already lower-case) is in the number, name or email.
    fn matches(&self, q: &str) -> bool {
        q.is_empty()
            || self.view.number.contains(q)
            || self.view.name.to_lowercase().contains(q)
            || self
                .view
                .email
                .as_deref()
                .is_some_and(|e| e.to_lowercase().contains(q))
    }
}

/// The list's rows from the extensions and the audit's findings.
pub fn rows_of(views: Vec<ExtensionView>, findings: &[Finding]) -> Vec<Row> {
    let weak = weak_by_subject(findings);
    views
        .into_iter()
        .map(|view| {
            let weak_ones = weak
                .get(format!("ext:{}", view.number).as_str())
                .cloned()
                .unwrap_or_default();
            Row {
                weak: !weak_ones.is_empty(),
                rules: weak_ones
                    .iter()
                    .map(|f| f.rule.to_string().trim_start_matches("ext.").to_owned())
                    .collect(),
                reasons: weak_ones.iter().map(|f| f.message.clone()).collect(),
                findings: weak_ones.iter().map(|f| Plain::of(f)).collect(),
                view,
            }
        })
        .collect()
}

/// Extensions per page of the list.
pub const PER_PAGE: usize = 100;
/// The most a caller may ask for in one page (the API's `per_page`).
pub const MAX_PER_PAGE: usize = 1000;
/// The longest search text looked at.
const MAX_QUERY: usize = 100;

/// One page of the extension list: which rows, and how many match in all.
#[derive(Debug)]
pub struct Page {
    pub rows: Vec<Row>,
    /// Rows that match the search and filter, on every page.
    pub matching: usize,
    /// Of those, the weak ones.
    pub weak: usize,
    /// 1-based, clamped to the pages there are.
    pub page: usize,
    pub pages: usize,
}

/// The search and filter of the extension list, as the page and the API take them.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ListQuery {
    /// Part of a number, name or email (case-insensitive).
    pub q: Option<String>,
    /// `1` (or `true`): weak extensions only.
    pub weak: Option<String>,
    /// 1-based.
    pub page: Option<String>,
    pub per_page: Option<String>,
}

impl ListQuery {
    pub fn weak_only(&self) -> bool {
        matches!(self.weak.as_deref(), Some("1" | "true" | "yes"))
    }

    /// The search text, trimmed, lower-case, at most [`MAX_QUERY`] characters.
    pub fn text(&self) -> String {
        self.q
            .as_deref()
            .unwrap_or("")
            .trim()
            .chars()
            .take(MAX_QUERY)
            .collect::<String>()
            .to_lowercase()
    }

    /// The rows that match the search and the weak-only filter.
    pub fn filter<'r>(&self, all: &'r [Row]) -> Vec<&'r Row> {
        let q = self.text();
        let weak_only = self.weak_only();
        all.iter()
            .filter(|r| (!weak_only || r.weak) && r.matches(&q))
            .collect()
    }

    /// The page asked for: a page past the matching rows clamps to the last one; text
    /// that is not a number counts as the first page (or the default size).
    pub fn select(&self, all: &[Row], default_per_page: usize) -> Page {
        let per_page = self
            .per_page
            .as_deref()
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(default_per_page)
            .clamp(1, MAX_PER_PAGE);
        let matching = self.filter(all);
        let pages = matching.len().div_ceil(per_page).max(1);
        let page = self
            .page
            .as_deref()
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(1)
            .clamp(1, pages);
        let weak = matching.iter().filter(|r| r.weak).count();
        let count = matching.len();
        let rows = matching
            .into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .cloned()
            .collect();
        Page {
            rows,
            matching: count,
            weak,
            page,
            pages,
        }
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
        let rows = Arc::new(rows_of(reg.list_extensions().await?, &findings));
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

    fn row(number: &str, name: &str, email: Option<&str>, weak: bool) -> Row {
        let view = ExtensionView {
            number: number.into(),
            kind: accounts::extension::ExtensionKind::User,
            name: name.into(),
            email: email.map(str::to_owned),
            auth_id: format!("a{number}"),
            sip_id: None,
            mac: None,
            model: None,
            transport: None,
            voicemail_after_secs: 20,
            voicemail_mail: true,
            created_at: 0,
            updated_at: 0,
        };
        Row {
            view,
            weak,
            rules: Vec::new(),
            reasons: Vec::new(),
            findings: Vec::new(),
        }
    }

    #[test]
    fn the_list_pages_searches_and_filters_on_the_server() {
        let all = || {
            (0..250)
                .map(|i| {
                    let n = format!("{}", 1000 + i);
                    let email = format!("user{i}@example.com");
                    let name = if i == 42 { "Reception Desk" } else { "Desk" };
                    row(&n, name, Some(&email), i % 10 == 0)
                })
                .collect::<Vec<_>>()
        };
        let q = |q: &str, weak: bool, page: &str| ListQuery {
            q: Some(q.into()),
            weak: weak.then(|| "1".into()),
            page: Some(page.into()),
            per_page: None,
        };
        let p = q("", false, "2").select(&all(), 100);
        assert_eq!(
            (p.matching, p.pages, p.page, p.rows.len()),
            (250, 3, 2, 100)
        );
        assert_eq!(p.rows[0].view.number, "1100");
        // Past the end clamps to the last page; nonsense is the first.
        assert_eq!(q("", false, "99").select(&all(), 100).rows.len(), 50);
        assert_eq!(q("", false, "x").select(&all(), 100).page, 1);
        // By number, name (any case) and email.
        let by = |text: &str| {
            q(text, false, "1")
                .select(&all(), 100)
                .rows
                .iter()
                .map(|r| r.view.number.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(by("1042"), ["1042"]);
        assert_eq!(by("RECEPTION"), ["1042"]);
        assert_eq!(by("user7@"), ["1007"]);
        assert!(by("nobody").is_empty());
        // Weak only: every tenth.
        let weak = q("", true, "1").select(&all(), 100);
        assert_eq!((weak.matching, weak.weak), (25, 25));
        assert!(weak.rows.iter().all(|r| r.weak));
    }
}
