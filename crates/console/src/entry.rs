//! What every HTTP request meets before any handler runs: its real client address
//! ([`crate::client`]), the Host check, the allow list for `/metrics` (and `/healthz`
//! when so configured), and a deadline for the whole request. A request refused here
//! reaches no handler, so it counts toward no login lockout and no probe count.
//!
//! The Host check stops DNS rebinding: a page served from an attacker's name that
//! resolves to this server's address makes the browser send that name as Host. Only
//! configured names (`[console] hosts`, the provisioning URL's host, the SIP domain),
//! `localhost` on a loopback connection, and the address the client connected to are
//! answered; everything else gets `421 Misdirected Request`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use accounts::Registry;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use policy::clock::Clock;

use crate::client::{Client, Forwarding, client_of};

/// Who may read `/healthz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Healthz {
    /// Anyone (load balancers and monitors probe it; it says only "ok").
    Public,
    /// Only `[console] allow` (like `/metrics` and the console).
    AllowList,
}

/// The HTTP settings (`[console]` and `[http]` of the config file).
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Host names answered besides the server's own addresses, lower-case: `name`
    /// (any port) or `name:port`.
    pub hosts: Vec<String>,
    /// Reverse proxies whose `Forwarded` / `X-Forwarded-For` are honoured.
    pub trusted_proxies: Vec<IpNet>,
    /// `[console] allow`: when not empty, the only networks the console, the API and
    /// `/metrics` answer.
    pub allow: Vec<IpNet>,
    pub healthz: Healthz,
    /// Open connections (so unfinished requests) per client address; a network prefix
    /// (`guard.ipv6_prefix`) gets `guard.prefix_factor` times as many.
    pub connections_per_source: u32,
    /// A request's head must arrive within this (also the idle limit between requests).
    pub header_timeout: Duration,
    /// A whole request, body and handler included, within this.
    pub request_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            trusted_proxies: Vec::new(),
            allow: Vec::new(),
            healthz: Healthz::Public,
            connections_per_source: 16,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The address of this end of the connection (the listener inserts it): the address
/// the client reached, which a Host may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalAddr(pub SocketAddr);

/// The HTTP side's counters, appended to `/metrics` (no address in any label).
#[derive(Debug, Default)]
pub struct Counters {
    pub host_refused: AtomicU64,
    pub forwarded_untrusted: AtomicU64,
    pub connections_refused: AtomicU64,
    pub requests_timed_out: AtomicU64,
    /// Console logins whose password was checked (argon2), and those answered 429
    /// because no verification slot came free in time.
    pub logins_verified: AtomicU64,
    pub logins_busy: AtomicU64,
    /// Argon2 verifications running now, and the most ever at once.
    pub verifying: AtomicU64,
    pub verifying_peak: AtomicU64,
    /// When forwarding headers from an unlisted address were last written to the store
    /// (for `sipward advise`), epoch seconds.
    noted_at: AtomicI64,
}

impl Counters {
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut s = String::new();
        for (name, help, v) in [
            (
                "sipward_http_host_refused_total",
                "HTTP requests refused with 421: a Host that is not one of the server's names (DNS rebinding)",
                get(&self.host_refused),
            ),
            (
                "sipward_http_forwarded_untrusted_total",
                "HTTP requests with Forwarded or X-Forwarded-For from an address not in [http] trusted_proxies (ignored)",
                get(&self.forwarded_untrusted),
            ),
            (
                "sipward_http_connections_refused_total",
                "HTTP connections closed at once: the source had its limit of open connections",
                get(&self.connections_refused),
            ),
            (
                "sipward_http_requests_timed_out_total",
                "HTTP requests not finished within the request deadline (408)",
                get(&self.requests_timed_out),
            ),
            (
                "sipward_console_logins_verified_total",
                "console logins whose password was checked (argon2)",
                get(&self.logins_verified),
            ),
            (
                "sipward_console_logins_busy_total",
                "console logins answered 429 because no argon2 verification slot came free in time",
                get(&self.logins_busy),
            ),
        ] {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
            ));
        }
        let peak = get(&self.verifying_peak);
        s.push_str(&format!(
            "# HELP sipward_console_verifications_peak most argon2 verifications ever running at once\n\
             # TYPE sipward_console_verifications_peak gauge\nsipward_console_verifications_peak {peak}\n"
        ));
        s
    }

    /// Counts an argon2 verification starting; the returned guard counts its end.
    pub fn verification(self: &Arc<Self>) -> Verifying {
        self.logins_verified.fetch_add(1, Ordering::Relaxed);
        let now = self.verifying.fetch_add(1, Ordering::Relaxed) + 1;
        self.verifying_peak.fetch_max(now, Ordering::Relaxed);
        Verifying(self.clone())
    }
}

/// One argon2 verification running (see [`Counters::verification`]).
#[derive(Debug)]
pub struct Verifying(Arc<Counters>);

impl Drop for Verifying {
    fn drop(&mut self) {
        self.0.verifying.fetch_sub(1, Ordering::Relaxed);
    }
}

/// At most one note of forwarding headers from unlisted addresses is written to the
/// store per this many seconds.
const NOTE_EVERY_SECS: i64 = 60;

/// The entry layer's state.
#[derive(Clone)]
pub struct Entry {
    pub settings: Arc<HttpSettings>,
    pub counters: Arc<Counters>,
    registry: Registry,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Entry {
    pub fn new(
        settings: HttpSettings,
        counters: Arc<Counters>,
        registry: Registry,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            settings: Arc::new(settings),
            counters,
            registry,
            clock,
        }
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        let allow = &self.settings.allow;
        allow.is_empty() || allow.iter().any(|n| n.contains(&ip))
    }

    fn host_ok(&self, host: &str, local: Option<SocketAddr>) -> bool {
        host_allowed(&self.settings.hosts, host, local)
    }

    /// Counts a request whose forwarding headers came from an address that is not a
    /// trusted proxy, and notes it in the store for `sipward advise` (once a minute).
    fn untrusted_forwarding(&self, from: IpAddr) {
        self.counters
            .forwarded_untrusted
            .fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now();
        let last = self.counters.noted_at.load(Ordering::Relaxed);
        if now - last < NOTE_EVERY_SECS
            || self
                .counters
                .noted_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let count = self.counters.forwarded_untrusted.load(Ordering::Relaxed);
        let reg = self.registry.clone();
        accounts::event::emit(&serde_json::json!({
            "event": "forwarded_untrusted",
            "source": from.to_string(),
            "detail": "Forwarded / X-Forwarded-For from an address not in [http] trusted_proxies: ignored; list your reverse proxy there, or someone is posing as another client",
        }));
        tokio::spawn(async move {
            let noted = accounts::exposure::note_forwarded_untrusted(&reg, from, count, now).await;
            accounts::background::checked(
                accounts::background::Task::Console,
                "noting an untrusted Forwarded header",
                noted,
            );
        });
    }
}

/// Whether `host` (a Host header or URI authority) names this server, for a connection
/// whose local end is `local` (unknown: any address literal). `hosts` as in
/// [`HttpSettings::hosts`].
pub fn host_allowed(hosts: &[String], host: &str, local: Option<SocketAddr>) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let (name, port) = split_host(&host);
    if name.is_empty() {
        return false;
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        // A name never resolves into an address literal: no rebinding through it.
        return local.is_none_or(|l| l.ip().to_canonical() == ip.to_canonical());
    }
    if name == "localhost" {
        return local.is_none_or(|l| l.ip().to_canonical().is_loopback());
    }
    hosts.iter().any(|h| {
        let (n, p) = split_host(h);
        n == name && (p.is_none() || p == port)
    })
}

/// `host[:port]`, `[v6]:port` or `v6` into the name and the port.
fn split_host(h: &str) -> (&str, Option<&str>) {
    if let Some(rest) = h.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':')),
            None => ("", None),
        };
    }
    match h.rsplit_once(':') {
        // One colon: a name or IPv4 with a port; more: a bare IPv6 address.
        Some((n, p)) if !n.contains(':') => (n, Some(p)),
        _ => (h, None),
    }
}

fn refuse(status: StatusCode, text: &'static str) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], text).into_response()
}

/// The middleware: every route of the HTTP server runs behind it.
pub async fn check(State(entry): State<Entry>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    let (client, forwarding) = client_of(peer, req.headers(), &entry.settings.trusted_proxies);
    if forwarding == Forwarding::Untrusted {
        entry.untrusted_forwarding(peer.ip());
    }
    let local = req.extensions().get::<LocalAddr>().map(|l| l.0);
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    let host_ok = match (&host, &authority) {
        (Some(h), a) => {
            entry.host_ok(h, local) && a.as_deref().is_none_or(|a| entry.host_ok(a, local))
        }
        (None, Some(a)) => entry.host_ok(a, local),
        (None, None) => false,
    };
    if !host_ok {
        entry.counters.host_refused.fetch_add(1, Ordering::Relaxed);
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "refused: this server does not answer for that host name\n",
        );
    }
    let guarded = match req.uri().path() {
        "/metrics" => true,
        "/healthz" => entry.settings.healthz == Healthz::AllowList,
        _ => false,
    };
    if guarded && !entry.allowed(client.ip) {
        return refuse(StatusCode::FORBIDDEN, "forbidden\n");
    }
    req.extensions_mut().insert::<Client>(client);
    match tokio::time::timeout(entry.settings.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            entry
                .counters
                .requests_timed_out
                .fetch_add(1, Ordering::Relaxed);
            refuse(StatusCode::REQUEST_TIMEOUT, "request timed out\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(hosts: &[&str]) -> HttpSettings {
        HttpSettings {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        }
    }

    fn allowed(s: &HttpSettings, host: &str, local: &str) -> bool {
        let local: SocketAddr = local.parse().expect("addr");
        host_allowed(&s.hosts, host, Some(local))
    }

    #[test]
    fn only_the_servers_names_and_addresses_are_answered() {
        let s = settings(&["pbx.example.com", "console.example.com:8443"]);
        let lo = "127.0.0.1:8080";
        assert!(allowed(&s, "127.0.0.1:8080", lo));
        assert!(allowed(&s, "127.0.0.1:9000", lo), "an SSH tunnel's port");
        assert!(allowed(&s, "localhost:8080", lo));
        assert!(allowed(&s, "PBX.example.com", lo));
        assert!(allowed(&s, "pbx.example.com:8080", lo));
        assert!(allowed(&s, "console.example.com:8443", lo));
        assert!(
            !allowed(&s, "console.example.com:8080", lo),
            "that name only on its port"
        );
        assert!(
            !allowed(&s, "rebind.attacker.example:8080", lo),
            "DNS rebinding"
        );
        assert!(!allowed(&s, "127.0.0.2:8080", lo), "another address");
        assert!(!allowed(&s, "", lo));
        assert!(
            !allowed(&s, "localhost:8080", "192.168.1.10:8080"),
            "localhost only on loopback"
        );
        assert!(allowed(&s, "192.168.1.10", "192.168.1.10:8080"));
        assert!(allowed(&s, "[::1]:8080", "[::1]:8080"));
        assert!(
            allowed(&s, "192.168.1.10:8080", "[::ffff:192.168.1.10]:8080"),
            "dual stack"
        );
        assert!(!allowed(&s, "[::1", "[::1]:8080"));
        assert_eq!(split_host("[2001:db8::1]:80"), ("2001:db8::1", Some("80")));
        assert_eq!(split_host("2001:db8::1"), ("2001:db8::1", None));
        assert_eq!(split_host("pbx:80"), ("pbx", Some("80")));
    }

    #[test]
    fn the_counters_render_as_prometheus_text() {
        let c = Counters::default();
        c.host_refused.fetch_add(3, Ordering::Relaxed);
        let text = c.render();
        assert!(
            text.contains("sipward_http_host_refused_total 3\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE sipward_http_forwarded_untrusted_total counter"));
    }
}
