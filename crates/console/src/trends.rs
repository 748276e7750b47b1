//! The dashboard's pictures: what the door did over the last 48 hours (per hour) and 30
//! days (per day). Every minute [`Recorder::record`] writes the increase of the server's
//! counters (authentication failures, bans by reason, calls to trunks, calls refused by
//! class or limit) and the value of its gauges (registrations, the share of strong
//! accounts) into the store's bounded `trends` table; [`chart`] draws a series as an SVG
//! on the server, bars carrying their time and value, with no script and no inline
//! style, so the CSP stays strict.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use accounts::Registry;
use accounts::running::RunningServer;
use minijinja::Value;
use policy::ban::Reason;
use policy::clock::Clock;

use crate::snapshot::AuditCache;

/// Counters read from the server's metrics: (trend name, metric line prefix).
const COUNTERS: [(&str, &str); 3] = [
    ("auth_failures", "sipward_auth_failures_total "),
    ("calls_trunk", "sipward_calls_trunk_total "),
    ("calls_refused", "sipward_calls_forbidden_total "),
];
/// Registrations live now (gauge).
pub const REGISTRATIONS: &str = "registrations";
/// Percent of accounts without a weak finding (gauge).
pub const STRONG_SHARE: &str = "strong_share";

/// The trend name of bans for one reason.
pub fn bans_metric(r: Reason) -> String {
    format!("bans.{}", r.as_str())
}

/// A counter's value in Prometheus text (`NAME VALUE` or `NAME{labels} VALUE`).
fn counter(text: &str, prefix: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Writes the trends every minute. Counters are remembered between calls, so each call
/// writes only their increase (a counter that went down, a restart, counts from zero).
pub struct Recorder {
    registry: Registry,
    /// The console's audit (the share of strong accounts comes from it).
    audit: Arc<AuditCache>,
    clock: Arc<dyn Clock>,
    server: Arc<dyn RunningServer>,
    last: HashMap<String, i64>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorder")
    }
}

impl Recorder {
    pub fn new(
        registry: Registry,
        audit: Arc<AuditCache>,
        clock: Arc<dyn Clock>,
        server: Arc<dyn RunningServer>,
    ) -> Self {
        Self {
            registry,
            audit,
            clock,
            server,
            last: HashMap::new(),
        }
    }

    /// One minute's samples, stamped with the console's clock, and the pruning.
    pub async fn record(&mut self) -> accounts::Result<()> {
        let now = self.clock.now();
        let text = self.server.metrics_text();
        let mut counters: Vec<(String, i64)> = COUNTERS
            .iter()
            .filter_map(|(name, prefix)| counter(&text, prefix).map(|v| ((*name).to_owned(), v)))
            .collect();
        for r in Reason::ALL {
            let prefix = format!("sipward_bans_total{{reason=\"{}\"}} ", r.as_str());
            if let Some(v) = counter(&text, &prefix) {
                counters.push((bans_metric(r), v));
            }
        }
        let strong = self.strong_share().await?;
        let mut conn = self.registry.store().conn().await?;
        let registrations = store::bindings::count_live_bindings(&mut conn, now).await?;
        for (name, value) in counters {
            let before = self.last.insert(name.clone(), value).unwrap_or(0);
            let delta = if value >= before {
                value - before
            } else {
                value
            };
            if delta > 0 {
                store::trends::add(&mut conn, &name, now, delta).await?;
            }
        }
        store::trends::set(&mut conn, REGISTRATIONS, now, registrations).await?;
        store::trends::set(&mut conn, STRONG_SHARE, now, strong).await?;
        store::trends::prune(&mut conn, now - store::trends::KEEP_SECS).await?;
        Ok(())
    }

    async fn strong_share(&self) -> accounts::Result<i64> {
        let reg = &self.registry;
        let findings = self.audit.findings(reg).await?;
        let weak = accounts::findings::weak_by_subject(&findings)
            .keys()
            .filter(|s| {
                s.starts_with("ext:") || s.starts_with("gateway:") || s.starts_with("provider:")
            })
            .count();
        // Counted, not listed: the extension list with its findings is built for the
        // pages that show it, never for a number every minute.
        let extensions = {
            let mut conn = reg.store().conn().await?;
            store::account::count_extensions(&mut conn).await?
        };
        let total = usize::try_from(extensions).unwrap_or(0)
            + reg.list_gateways().await?.len()
            + reg.list_providers().await?.len();
        let strong = total.saturating_sub(weak) * 100;
        Ok(i64::try_from(strong.checked_div(total).unwrap_or(100)).unwrap_or(100))
    }

    /// Records every `period` until `shutdown` resolves (a failed write is reported and
    /// tried again a minute later).
    pub async fn run(mut self, period: std::time::Duration, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {
                    if let Err(e) = self.record().await {
                        let event = serde_json::json!({ "event": "trends_error", "error": e.to_string() });
                        eprintln!("{event}");
                    }
                }
            }
        }
    }
}

/// The window a chart covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// 48 bars of an hour.
    Hours48,
    /// 30 bars of a day.
    Days30,
}

impl Window {
    pub fn parse(s: &str) -> Self {
        if s == "30d" {
            Window::Days30
        } else {
            Window::Hours48
        }
    }

    fn step(self) -> i64 {
        match self {
            Window::Hours48 => 3600,
            Window::Days30 => 86_400,
        }
    }

    fn bars(self) -> i64 {
        match self {
            Window::Hours48 => 48,
            Window::Days30 => 30,
        }
    }

    /// The start of the first bar for a window ending with the bar `now` falls in.
    pub fn from(self, now: i64) -> i64 {
        let last = now - now.rem_euclid(self.step());
        last - (self.bars() - 1) * self.step()
    }
}

/// How hours of a bar add up: counters sum, gauges keep the last hour's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fold {
    Sum,
    Last,
}

/// The bars of a window from hourly (start, value) points: one per hour or day, empty
/// ones 0 for counters and absent (None) for gauges never sampled.
pub fn bars(window: Window, now: i64, hours: &[(i64, i64)], fold: Fold) -> Vec<(i64, Option<i64>)> {
    let from = window.from(now);
    let step = window.step();
    (0..window.bars())
        .map(|i| {
            let start = from + i * step;
            let mut inside = hours
                .iter()
                .filter(|(h, _)| *h >= start && *h < start + step);
            let v = match fold {
                Fold::Sum => Some(inside.map(|(_, v)| *v).sum()),
                Fold::Last => inside.next_back().map(|(_, v)| *v),
            };
            (start, v)
        })
        .collect()
}

/// Text safe inside an SVG element or attribute.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const WIDTH: i64 = 480;
const HEIGHT: i64 = 120;

/// A bar chart as SVG: each bar a `<rect class="bar">` with `data-at` (ISO 8601 start)
/// and `data-value`, and a `<title>` a screen reader or a hover reads; the whole has
/// a role, a name and a summary. `max` fixes the scale (100 for a percentage).
pub fn chart(
    id: &str,
    label: &str,
    unit: &str,
    bars: &[(i64, Option<i64>)],
    max: Option<i64>,
) -> Value {
    let top = max
        .unwrap_or_else(|| bars.iter().filter_map(|(_, v)| *v).max().unwrap_or(0))
        .max(1);
    let total: i64 = bars.iter().filter_map(|(_, v)| *v).sum();
    let n = i64::try_from(bars.len()).unwrap_or(1).max(1);
    let slot = WIDTH / n;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" id="{id}" viewBox="0 0 {WIDTH} {h}" width="{WIDTH}" height="{h}" role="img" aria-labelledby="{id}-t {id}-d" xmlns="http://www.w3.org/2000/svg"><title id="{id}-t">{label}</title><desc id="{id}-d">{summary}</desc>"#,
        id = escape(id),
        h = HEIGHT + 16,
        label = escape(label),
        summary = escape(&format!(
            "{} bars; highest {top} {unit}{}",
            bars.len(),
            if max.is_some() {
                String::new()
            } else {
                format!("; {total} in all")
            }
        )),
    );
    let _ = write!(
        svg,
        r#"<line class="axis" x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}"/><text class="scale" x="2" y="12">{top} {unit}</text>"#,
        unit = escape(unit),
    );
    for (i, (at, v)) in (0_i64..).zip(bars) {
        let iso = crate::timestamp::iso8601(*at);
        let x = i * slot + 1;
        match v {
            Some(v) => {
                let h = (v * (HEIGHT - 16) / top).clamp(0, HEIGHT - 16);
                let _ = write!(
                    svg,
                    r#"<rect class="bar" x="{x}" y="{y}" width="{w}" height="{h}" data-at="{iso}" data-value="{v}"><title>{iso}: {v} {unit}</title></rect>"#,
                    y = HEIGHT - h,
                    w = (slot - 2).max(1),
                    unit = escape(unit),
                );
            }
            None => {
                let _ = write!(
                    svg,
                    r#"<rect class="bar none" x="{x}" y="{y}" width="{w}" height="1" data-at="{iso}" data-value=""><title>{iso}: no sample</title></rect>"#,
                    y = HEIGHT - 1,
                    w = (slot - 2).max(1),
                );
            }
        }
    }
    if let (Some((first, _)), Some((last, _))) = (bars.first(), bars.last()) {
        let _ = write!(
            svg,
            r#"<text class="scale" x="2" y="{y}">{a}</text><text class="scale end" x="{WIDTH}" y="{y}">{b}</text>"#,
            y = HEIGHT + 14,
            a = &crate::timestamp::iso8601(*first)[..16].replace('T', " "),
            b = &crate::timestamp::iso8601(*last)[..16].replace('T', " "),
        );
    }
    svg.push_str("</svg>");
    // Built from numbers, fixed text and escaped labels only.
    Value::from_safe_string(svg)
}

/// Every chart of the dashboard for `window`, in order, and the counts beside them.
pub async fn dashboard(reg: &Registry, now: i64, window: Window) -> accounts::Result<Value> {
    let from = window.from(now);
    let mut conn = reg.store().conn().await?;
    let auth = store::trends::series(&mut conn, "auth_failures", from).await?;
    let regs = store::trends::series(&mut conn, REGISTRATIONS, from).await?;
    let calls = store::trends::series(&mut conn, "calls_trunk", from).await?;
    let refused = store::trends::series(&mut conn, "calls_refused", from).await?;
    let strong = store::trends::series(&mut conn, STRONG_SHARE, from).await?;
    let mut bans_all: Vec<(i64, i64)> = Vec::new();
    let mut by_reason = Vec::new();
    for r in Reason::ALL {
        let s = store::trends::series(&mut conn, &bans_metric(r), from).await?;
        let n: i64 = s.iter().map(|(_, v)| v).sum();
        if n > 0 {
            by_reason.push(minijinja::context! { reason => r.as_str(), count => n });
        }
        bans_all.extend(s);
    }
    bans_all.sort_unstable();
    let suffix = match window {
        Window::Hours48 => "per hour, last 48 hours",
        Window::Days30 => "per day, last 30 days",
    };
    let calls_n: i64 = calls.iter().map(|(_, v)| v).sum();
    let refused_n: i64 = refused.iter().map(|(_, v)| v).sum();
    let attempted = calls_n + refused_n;
    Ok(minijinja::context! {
        auth => chart("chart-auth", &format!("Authentication failures, {suffix}"), "failures",
                      &bars(window, now, &auth, Fold::Sum), None),
        bans => chart("chart-bans", &format!("Bans, {suffix}"), "bans",
                      &bars(window, now, &bans_all, Fold::Sum), None),
        bans_by_reason => by_reason,
        registrations => chart("chart-registrations", &format!("Registrations, {suffix}"), "registrations",
                      &bars(window, now, &regs, Fold::Last), None),
        calls => chart("chart-calls", &format!("Calls to trunks, {suffix}"), "calls",
                      &bars(window, now, &calls, Fold::Sum), None),
        refused => chart("chart-refused", &format!("Calls refused by class or limit, {suffix}"), "refused",
                      &bars(window, now, &refused, Fold::Sum), None),
        refused_share => (attempted > 0).then(|| refused_n * 100 / attempted),
        calls_n, refused_n,
        strong => chart("chart-strong", &format!("Share of strong accounts, {suffix}"), "%",
                      &bars(window, now, &strong, Fold::Last), Some(100)),
        window => match window { Window::Hours48 => "48h", Window::Days30 => "30d" },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_916_875; // 2026-11-29T01:47:55Z

    /// The (data-at, data-value) of every bar in an SVG.
    fn points(svg: &str) -> Vec<(String, String)> {
        svg.split("<rect ")
            .skip(1)
            .map(|r| {
                let attr = |name: &str| {
                    let i = r.find(&format!("{name}=\"")).expect(name) + name.len() + 2;
                    r[i..i + r[i..].find('"').expect("end")].to_owned()
                };
                (attr("data-at"), attr("data-value"))
            })
            .collect()
    }

    #[test]
    fn a_seeded_hourly_series_is_drawn_bar_by_bar() {
        let hour = NOW - NOW.rem_euclid(3600);
        // Two samples in the current hour summed, one 3 hours ago, one outside the window.
        let hours = [
            (hour - 60 * 3600, 99),
            (hour - 3 * 3600, 4),
            (hour, 2),
            (hour, 5),
        ];
        let b = bars(Window::Hours48, NOW, &hours, Fold::Sum);
        assert_eq!(b.len(), 48);
        let svg = chart("c", "Failures <per hour>", "failures", &b, None).to_string();
        let p = points(&svg);
        assert_eq!(p.len(), 48);
        assert_eq!(p[47], ("2026-11-29T01:00:00Z".to_owned(), "7".to_owned()));
        assert_eq!(p[44], ("2026-11-28T22:00:00Z".to_owned(), "4".to_owned()));
        assert_eq!(p[0].0, "2026-11-27T02:00:00Z");
        assert!(p.iter().filter(|(_, v)| v == "0").count() == 46);
        // The tallest bar is full height; the label is escaped; nothing inline.
        assert!(
            svg.contains(r#"height="104" data-at="2026-11-29T01:00:00Z""#),
            "{svg}"
        );
        assert!(svg.contains("Failures &lt;per hour&gt;"));
        assert!(!svg.contains("style=") && !svg.contains("<script"));
        assert!(svg.contains(r#"role="img""#));
    }

    #[test]
    fn days_sum_their_hours_and_gauges_keep_the_last_value() {
        let day = NOW - NOW.rem_euclid(86_400);
        let hours = [
            (day - 86_400 + 3600, 60),
            (day - 86_400 + 7200, 80),
            (day, 90),
        ];
        let sums = bars(Window::Days30, NOW, &hours, Fold::Sum);
        assert_eq!(sums.len(), 30);
        assert_eq!(sums[28].1, Some(140));
        assert_eq!(sums[29].1, Some(90));
        let last = bars(Window::Days30, NOW, &hours, Fold::Last);
        assert_eq!(last[28].1, Some(80));
        assert_eq!(last[0].1, None, "never sampled: no bar, not a zero");
        let svg = chart("s", "Strong", "%", &last, Some(100)).to_string();
        let p = points(&svg);
        assert_eq!(p[28], ("2026-11-28T00:00:00Z".to_owned(), "80".to_owned()));
        assert_eq!(p[0].1, "");
        // A percentage is drawn against 100, not against its highest day.
        assert!(
            svg.contains(r#"height="83" data-at="2026-11-28T00:00:00Z""#),
            "{svg}"
        );
    }

    #[derive(Debug, Default)]
    struct Server {
        text: std::sync::Mutex<String>,
    }

    impl RunningServer for Server {
        fn admits(&self, _: std::net::IpAddr) -> bool {
            true
        }
        fn provisioning_admits(&self, _: std::net::IpAddr, _: i64) -> bool {
            true
        }
        fn provisioning_refused(
            &self,
            _: std::net::IpAddr,
            _: i64,
        ) -> accounts::running::ProbeVerdict {
            accounts::running::ProbeVerdict::Counted
        }
        fn provisioning_served(&self) {}
        fn provisioning_not_served(&self) {}
        fn metrics_text(&self) -> String {
            self.text.lock().map(|t| t.clone()).unwrap_or_default()
        }
        fn targeted_accounts(&self, _: i64, _: usize) -> Vec<(String, u32)> {
            Vec::new()
        }
    }

    #[tokio::test]
    async fn each_minute_writes_the_counters_increase_and_the_gauges_and_prunes() {
        use rand::SeedableRng;
        let dir = tempfile::tempdir().expect("tmp");
        let clock = Arc::new(policy::clock::ManualClock::new(
            NOW,
            std::time::Instant::now(),
        ));
        let (registry, _) = accounts::Registry::open(
            &store::DataDir::new(dir.path().join("d")),
            accounts::Settings {
                realm: "sipward".into(),
                domain: None,
                policy: policy::PolicyConfig::default(),
                dialplan: Default::default(),
                admin_email: None,
                provisioning: Default::default(),
            },
            Box::new(rand::rngs::StdRng::seed_from_u64(5)),
            clock.clone(),
        )
        .await
        .expect("open");
        // 888 (strong) and a weak one: half strong.
        let weak = accounts::extension::NewExtension {
            password: Some("1001".into()),
            ..Default::default()
        };
        registry.add_extension("1001", weak).await.expect("add");
        let server = Arc::new(Server::default());
        let set = |t: &str| *server.text.lock().expect("lock") = t.to_owned();
        let mut rec = Recorder::new(
            registry.clone(),
            Arc::new(AuditCache::default()),
            clock.clone(),
            server.clone(),
        );
        set("sipward_auth_failures_total 5\nsipward_bans_total{reason=\"scanner.user_agent\"} 1\n");
        rec.record().await.expect("record");
        clock.advance(std::time::Duration::from_secs(60));
        set(
            "sipward_auth_failures_total 12\nsipward_bans_total{reason=\"scanner.user_agent\"} 1\n",
        );
        rec.record().await.expect("record");
        let mut conn = registry.store().conn().await.expect("conn");
        let hour = store::trends::hour_of(NOW);
        let from = NOW - 86_400;
        let auth = store::trends::series(&mut conn, "auth_failures", from)
            .await
            .expect("s");
        assert_eq!(auth, [(hour, 12)], "5, then 7 more");
        let scans = store::trends::series(&mut conn, &bans_metric(Reason::Scanner), from)
            .await
            .expect("s");
        assert_eq!(scans, [(hour, 1)], "no increase the second minute");
        let strong = store::trends::series(&mut conn, STRONG_SHARE, from)
            .await
            .expect("s");
        assert_eq!(strong, [(hour, 50)]);
        let regs = store::trends::series(&mut conn, REGISTRATIONS, from)
            .await
            .expect("s");
        assert_eq!(regs, [(hour, 0)]);
        drop(conn);
        // 32 days on: the old hours are pruned, only the new ones stay.
        clock.advance(std::time::Duration::from_secs(32 * 86_400));
        set("sipward_auth_failures_total 1\n");
        rec.record().await.expect("record");
        let mut conn = registry.store().conn().await.expect("conn");
        assert_eq!(
            store::trends::rows(&mut conn).await.expect("rows"),
            3,
            "auth, strong, registrations"
        );
        let late = store::trends::hour_of(NOW + 60 + 32 * 86_400);
        assert_eq!(
            store::trends::series(&mut conn, "auth_failures", NOW)
                .await
                .expect("series"),
            [(late, 1)],
            "a counter that went down (a restart) counts from zero"
        );
    }

    #[test]
    fn counters_are_read_from_the_metrics_text() {
        let text =
            "# HELP x\nsipward_auth_failures_total 12\nsipward_bans_total{reason=\"manual\"} 3\n";
        assert_eq!(counter(text, "sipward_auth_failures_total "), Some(12));
        assert_eq!(
            counter(text, "sipward_bans_total{reason=\"manual\"} "),
            Some(3)
        );
        assert_eq!(counter(text, "sipward_calls_trunk_total "), None);
    }
}
