//! The web console: server-rendered pages (minijinja, every value escaped), sessions in
//! the store behind `HttpOnly; Secure; SameSite=Strict` cookies, a CSRF token on every
//! state-changing request plus an Origin / `Sec-Fetch-Site` check, a strict
//! Content-Security-Policy (scripts and styles from this server's files only), and a
//! login that refuses a source or an account after repeated failures before hashing.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::{Environment, Value, context};

/// A serializable value for a template.
pub(crate) fn ser<T: Serialize>(v: T) -> Value {
    Value::from(minijinja::value::Serde(v))
}
use accounts::Registry;
use accounts::audit_log::{Change, LogEntry, Setting};
use accounts::extension::ExtensionChange;
use accounts::findings::{WEAK_AT, weak_by_subject};
use accounts::regenerate::Selection;
use policy::Finding;
use policy::clock::Clock;
use serde::Serialize;
use store::audit_log::LogRow;
use store::console::{self as q, SessionRow};

use crate::admin::{self, Locked, Lockout};
use crate::client::ClientIp;
use crate::findings::Plain;
use crate::snapshot::{AuditCache, ListQuery, PER_PAGE, Row};

pub const COOKIE: &str = "sipward_session";
/// Sessions last 12 hours.
const SESSION_SECS: i64 = 12 * 3600;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the console needs.
#[derive(Clone)]
pub struct Web {
    pub registry: Registry,
    /// The one clock (the binary's; tests could move a `ManualClock`).
    pub clock: Arc<dyn Clock>,
    pub lockout: Arc<Mutex<Lockout>>,
    /// Argon2 verifications running at once ([`admin::MAX_VERIFYING`]).
    pub verifying: Arc<tokio::sync::Semaphore>,
    pub templates: Arc<Environment<'static>>,
    pub options: Arc<Options>,
    /// The audit's findings, computed once per registry version.
    pub audit: Arc<AuditCache>,
    /// The SIP server running in this process (what only its memory holds: the accounts
    /// under attack now).
    pub server: Arc<dyn accounts::running::RunningServer>,
}

/// The config's weakened settings (`config.*` findings) as a function of the guard policy
/// in force.
#[derive(Clone)]
pub struct ConfigFindings(pub Arc<FindingsWith>);

/// What [`ConfigFindings`] holds: the findings with a given guard policy.
pub type FindingsWith = dyn Fn(&policy::ban::BanPolicy) -> Vec<policy::Finding> + Send + Sync;

impl std::fmt::Debug for ConfigFindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigFindings")
    }
}

/// What the console shows of the server's settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where `serve` listens for SIP and HTTP (for the advisor).
    pub listening: (SocketAddr, SocketAddr),
    /// The SIP over TLS address, when served.
    pub sips: Option<SocketAddr>,
    /// When not empty, the only networks the console and API answer.
    pub allow: Vec<ipnet::IpNet>,
    /// Where scheduled and automatic backups go.
    pub backups_dir: std::path::PathBuf,
    /// The config's settings that weaken a defence (`config.*` findings) with a given
    /// guard policy in force, shown on the dashboard with the one in force now (the
    /// console can change the guard's thresholds).
    pub config_findings: ConfigFindings,
    /// `[http] trusted_proxies` (for the advisor).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The HTTP side's counters (the advisor reads forwarding headers from unlisted
    /// addresses there).
    pub http: Arc<crate::entry::Counters>,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Web")
    }
}

/// The templates, compiled into the binary.
pub fn templates() -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    for (name, text) in [
        ("base.html", include_str!("../templates/base.html")),
        ("login.html", include_str!("../templates/login.html")),
        (
            "dashboard.html",
            include_str!("../templates/dashboard.html"),
        ),
        (
            "extensions.html",
            include_str!("../templates/extensions.html"),
        ),
        ("confirm.html", include_str!("../templates/confirm.html")),
        ("results.html", include_str!("../templates/results.html")),
        ("edit.html", include_str!("../templates/edit.html")),
        ("new.html", include_str!("../templates/new.html")),
        ("added.html", include_str!("../templates/added.html")),
        ("trunks.html", include_str!("../templates/trunks.html")),
        (
            "trunk_form.html",
            include_str!("../templates/trunk_form.html"),
        ),
        ("security.html", include_str!("../templates/security.html")),
        ("advisor.html", include_str!("../templates/advisor.html")),
        ("log.html", include_str!("../templates/log.html")),
        (
            "log_table.html",
            include_str!("../templates/log_table.html"),
        ),
        ("calls.html", include_str!("../templates/calls.html")),
        ("backups.html", include_str!("../templates/backups.html")),
        (
            "voicemail.html",
            include_str!("../templates/voicemail.html"),
        ),
        (
            "voicemail_box.html",
            include_str!("../templates/voicemail_box.html"),
        ),
    ] {
        env.add_template(name, text)?;
    }
    env.add_filter("when", crate::timestamp::when);
    env.add_filter("segment", |v: String| path_segment(&v));
    Ok(env)
}

impl Web {
    pub fn new(
        registry: Registry,
        clock: Arc<dyn Clock>,
        options: Options,
        server: Arc<dyn accounts::running::RunningServer>,
    ) -> Result<Self, minijinja::Error> {
        Ok(Self {
            registry,
            clock,
            server,
            lockout: Arc::new(Mutex::new(Lockout::default())),
            verifying: Arc::new(tokio::sync::Semaphore::new(admin::MAX_VERIFYING)),
            templates: Arc::new(templates()?),
            options: Arc::new(options),
            audit: Arc::new(AuditCache::default()),
        })
    }

    /// The audit's findings (cached per registry version, see [`AuditCache`]).
    pub async fn findings(&self) -> accounts::Result<Arc<Vec<Finding>>> {
        self.audit.findings(&self.registry).await
    }

    /// Whether the console's allow list (if any) lets `ip` in.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let allow = &self.options.allow;
        allow.is_empty() || allow.iter().any(|n| n.contains(&ip))
    }

    pub(crate) fn render(&self, status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
        match self
            .templates
            .get_template(name)
            .and_then(|t| t.render(ctx))
        {
            Ok(html) => (status, Html(html)).into_response(),
            Err(e) => {
                let event = serde_json::json!({
                    "event": "console_error", "page": name, "error": e.to_string(),
                });
                accounts::event::emit(&event);
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the page could not be rendered\n",
                )
                    .into_response()
            }
        }
    }

    /// Appends to the audit log (a failure to log does not fail the action).
    /// Logs a change to a setting with the action id and subject the CLI writes too.
    pub(crate) fn log_setting(
        &self,
        actor: &str,
        setting: Setting,
        change: Change,
        id: &str,
        detail: &str,
    ) -> impl Future<Output = ()> + Send + use<> {
        self.log(actor, &setting.action(change), &setting.subject(id), detail)
    }

    pub(crate) fn log(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        detail: &str,
    ) -> impl Future<Output = ()> + Send + use<> {
        let reg = self.registry.clone();
        let now = self.clock.now();
        let (actor, action, subject, detail) = (
            actor.to_owned(),
            action.to_owned(),
            subject.to_owned(),
            detail.to_owned(),
        );
        async move {
            let conn = reg.store().conn().await;
            let what = "writing the audit log";
            let task = accounts::background::Task::Console;
            if let Some(mut conn) = accounts::background::checked(task, what, conn) {
                let entry = LogEntry {
                    actor: &actor,
                    action: &action,
                    subject: &subject,
                    detail: &detail,
                };
                let logged = reg.log_in(&mut conn, now, entry).await;
                accounts::background::checked(task, what, logged);
            }
        }
    }
}

/// A logged-in administrator.
#[derive(Clone, Debug)]
pub struct Session {
    pub admin: String,
    pub csrf: String,
    digest: String,
    pub source: IpAddr,
}

impl Session {
    pub fn actor(&self) -> String {
        format!("admin {} (console, {})", self.admin, self.source)
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The session the request's cookie names, if it is live.
pub async fn session(web: &Web, headers: &HeaderMap, source: IpAddr) -> Option<Session> {
    if !web.admits(source) {
        return None;
    }
    let token = cookie_value(headers, COOKIE)?;
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let digest = admin::token_digest(&token);
    let mut conn = web.registry.store().conn().await.ok()?;
    let row = q::session(&mut conn, &digest, web.clock.now())
        .await
        .ok()??;
    Some(Session {
        admin: row.admin,
        csrf: row.csrf,
        digest,
        source,
    })
}

/// The real client's address (behind a trusted proxy, the one it forwarded for).
fn peer(parts: &Parts) -> IpAddr {
    crate::client::client_ip(parts)
}

/// A logged-in administrator asking for a page; otherwise the answer is the login form.
#[derive(Debug)]
pub struct Admin(pub Session);

impl FromRequestParts<Web> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Response> {
        session(web, &parts.headers, peer(parts))
            .await
            .map(Admin)
            .ok_or_else(|| Redirect::to("/login").into_response())
    }
}

/// A form a logged-in administrator posted from the console's own pages: its origin
/// and CSRF token (field `csrf` or header `X-CSRF-Token`) are checked.
#[derive(Debug)]
pub struct AdminForm {
    pub session: Session,
    pub form: Vec<(String, String)>,
}

impl FromRequest<Web> for AdminForm {
    type Rejection = Response;

    async fn from_request(req: Request, web: &Web) -> Result<Self, Response> {
        let (parts, body) = req.into_parts();
        let (ip, headers) = (peer(&parts), parts.headers.clone());
        let axum::Form(form) = axum::Form::<Vec<(String, String)>>::from_request(
            Request::from_parts(parts, body),
            web,
        )
        .await
        .map_err(IntoResponse::into_response)?;
        let session = checked(web, &headers, ip, field(&form, "csrf")).await?;
        Ok(Self { session, form })
    }
}

/// Refuses requests another site made the browser send: `Sec-Fetch-Site` must be
/// same-origin (or absent, for non-browser clients), and an `Origin` must be this host.
pub fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return false;
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        return origin == format!("http://{host}") || origin == format!("https://{host}");
    }
    true
}

/// Constant-time comparison of two tokens (by their digests' bytes).
pub fn tokens_match(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    let (da, db) = (admin::token_digest(a), admin::token_digest(b));
    bool::from(da.as_bytes().ct_eq(db.as_bytes()))
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "refused: this request did not come from the console's own pages\n",
    )
        .into_response()
}

pub(crate) fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A session whose CSRF token the form (or `X-CSRF-Token`) carries, from this origin.
pub(crate) async fn checked(
    web: &Web,
    headers: &HeaderMap,
    source: IpAddr,
    form_token: Option<&str>,
) -> Result<Session, Response> {
    if !same_origin(headers) {
        return Err(forbidden());
    }
    let Some(s) = session(web, headers, source).await else {
        return Err(Redirect::to("/login").into_response());
    };
    let sent = form_token.or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()));
    match sent {
        Some(t) if tokens_match(t, &s.csrf) => Ok(s),
        _ => Err(forbidden()),
    }
}

pub fn routes(web: Web) -> Router {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/", get(dashboard))
        .route("/extensions", get(extensions))
        .route("/extensions/regenerate", post(regenerate))
        .route("/extensions/{number}", get(edit_page).post(edit))
        .route("/extensions/{number}/check", post(check))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
        .with_state(web)
        .layer(axum::middleware::map_response(security_headers))
}

/// Headers on every console answer.
pub async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        // Not no-referrer: with it, browsers send `Origin: null` on the console's own forms.
        ("referrer-policy", "same-origin"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/console.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/console.js"),
    )
}

async fn login_page(State(web): State<Web>) -> Response {
    web.render(
        StatusCode::OK,
        "login.html",
        context! { title => "Log in", name => "" },
    )
}

async fn login(
    State(web): State<Web>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> Response {
    if !same_origin(&headers) || !web.admits(ip) {
        return forbidden();
    }
    // The name shown back in the form is cut to what a name can be.
    let name: String = field(&form, "name")
        .unwrap_or("")
        .trim()
        .chars()
        .take(65)
        .collect();
    let password = field(&form, "password").unwrap_or("").to_owned();
    let now = web.clock.now();
    let page = |status, error: String| {
        web.render(
            status,
            "login.html",
            context! { title => "Log in", name => name.clone(), error => error },
        )
    };
    // Unlocks made with `sipward admin unlock` since the last login attempt.
    let seen = web
        .lockout
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unlocks_seen();
    if let Ok(list) = admin::unlocks(&web.registry).await
        && list.last().is_some_and(|u| u.id > seen)
    {
        web.lockout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&list);
    }
    // Refused before any hashing: guessing costs the guesser, not the server. The
    // place is taken at once, so concurrent guesses cannot overtake the limit.
    let attempt = match Lockout::reserve(&web.lockout, ip, &name, now) {
        Ok(a) => a,
        Err(l) => {
            let (who, secs) = match l {
                Locked::Source { retry_in } => ("from this address", retry_in),
                Locked::Account { retry_in } => ("for this account", retry_in),
            };
            return page(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many failed logins {who}; try again in {} minutes",
                    (secs + 59) / 60
                ),
            );
        }
    };
    // A bounded number of argon2 verifications at once; the rest wait briefly.
    let Ok(Ok(slot)) =
        tokio::time::timeout(admin::VERIFY_WAIT, web.verifying.clone().acquire_owned()).await
    else {
        attempt.finish(admin::Outcome::NotChecked);
        web.options
            .http
            .logins_busy
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            "the server is busy checking logins; try again in a moment".into(),
        );
    };
    let hash = match web.registry.store().conn().await {
        Ok(mut conn) => q::admin_hash(&mut conn, &name).await.ok().flatten(),
        Err(_) => None,
    };
    let verifying = web.options.http.verification();
    let password_ok = tokio::task::spawn_blocking(move || {
        let ok = admin::verify_password(&password, hash.as_deref());
        drop((verifying, slot));
        ok
    })
    .await
    .unwrap_or(false);
    let code = field(&form, "code").unwrap_or("").trim().to_owned();
    let ok = password_ok && second_factor(&web, &name, &code, now).await;
    if !ok {
        attempt.finish(admin::Outcome::Failed);
        // The same words whichever part was wrong.
        return page(
            StatusCode::UNAUTHORIZED,
            "wrong name, password or code".into(),
        );
    }
    attempt.finish(admin::Outcome::Succeeded);
    let mut rng = rand_core::UnwrapErr(rand::rngs::SysRng);
    let token = admin::token(&mut rng);
    let row = SessionRow {
        admin: name.clone(),
        csrf: admin::token(&mut rng),
        source: ip.to_string(),
        created_at: now,
        expires_at: now + SESSION_SECS,
    };
    let stored = match web.registry.store().conn().await {
        Ok(mut conn) => q::insert_session(&mut conn, &admin::token_digest(&token), &row)
            .await
            .is_ok(),
        Err(_) => false,
    };
    if !stored {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session could not be stored; try again".into(),
        );
    }
    web.log(
        &format!("admin {name} (console, {ip})"),
        "console.login",
        "console",
        "logged in",
    )
    .await;
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={SESSION_SECS}"
    );
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// The TOTP check of an administrator who turned it on (`sipward admin totp`); true
/// for one who did not. An accepted step is stored first, so a code works once.
async fn second_factor(web: &Web, name: &str, code: &str, now: i64) -> bool {
    let Ok(mut conn) = web.registry.store().conn().await else {
        return false;
    };
    let Ok(totp) = q::admin_totp(&mut conn, name).await else {
        return false;
    };
    let Some((sealed, last)) = totp else {
        return true;
    };
    let Some(secret) = web
        .registry
        .open_admin_totp(name, &sealed)
        .ok()
        .and_then(|s| hex::decode(s.expose()).ok())
    else {
        return false;
    };
    match admin::totp_step(&secret, code, now, last) {
        Some(step) => q::accept_totp_step(&mut conn, name, step)
            .await
            .unwrap_or(false),
        None => false,
    }
}

async fn logout(State(web): State<Web>, AdminForm { session: s, .. }: AdminForm) -> Response {
    let what = "ending a console session";
    let conn = web.registry.store().conn().await;
    if let Some(mut conn) =
        accounts::background::checked(accounts::background::Task::Console, what, conn)
    {
        let deleted = q::delete_session(&mut conn, &s.digest, web.clock.now()).await;
        accounts::background::checked(accounts::background::Task::Console, what, deleted);
    }
    web.log(&s.actor(), "console.logout", "console", "logged out")
        .await;
    let mut r = Redirect::to("/login").into_response();
    let gone = format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&gone) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// Every extension with its findings (the same audit as `sipward ext list`), built
/// once per registry version ([`AuditCache::rows`]).
pub async fn rows(web: &Web) -> accounts::Result<Arc<Vec<Row>>> {
    web.audit.rows(&web.registry).await
}

#[derive(Debug, serde::Deserialize)]
struct DashboardQuery {
    /// `48h` (the default) or `30d`.
    range: Option<String>,
}

async fn dashboard(
    State(web): State<Web>,
    Admin(s): Admin,
    Query(query): Query<DashboardQuery>,
) -> Response {
    let reg = &web.registry;
    let window = crate::trends::Window::parse(query.range.as_deref().unwrap_or(""));
    let charts = crate::trends::dashboard(reg, web.clock.now(), window)
        .await
        .unwrap_or(Value::UNDEFINED);
    let (Ok(findings), Ok(exts), Ok(gws), Ok(provs), Ok(bans)) = (
        web.findings().await,
        rows(&web).await,
        reg.list_gateways().await,
        reg.list_providers().await,
        reg.bans(false).await,
    ) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the data dir cannot be read\n",
        )
            .into_response();
    };
    let weak = weak_by_subject(&findings);
    let weak_of = |kind: &str| weak.keys().filter(|s| s.starts_with(kind)).count();
    let kinds = [
        ("extensions", weak_of("ext:"), exts.len()),
        ("gateways", weak_of("gateway:"), gws.len()),
        ("providers", weak_of("provider:"), provs.len()),
    ];
    let (weak_total, total): (usize, usize) =
        kinds.iter().fold((0, 0), |a, k| (a.0 + k.1, a.1 + k.2));
    let now = web.clock.now();
    let registrations = match reg.store().conn().await {
        Ok(mut conn) => store::bindings::live_bindings(&mut conn, now)
            .await
            .map_or(0, |b| b.len()),
        Err(_) => 0,
    };
    let log = reg.recent_log(10).await.unwrap_or_default();
    let log = log_rows(&log);
    let mut recent = bans.clone();
    recent.sort_by_key(|b| std::cmp::Reverse(b.last_seen));
    let recent_bans: Vec<_> = recent
        .iter()
        .take(5)
        .map(|b| {
            context! {
                at => b.last_seen, source => b.source.clone(),
                reason => b.reason.clone(), detail => b.detail.clone(),
            }
        })
        .collect();
    let guard = match web.registry.guard_view().await {
        Ok(v) => v.policy,
        Err(_) => (*web.registry.guard_file()).clone(),
    };
    let settings: Vec<Value> = (web.options.config_findings.0)(&guard)
        .iter()
        .map(|f| ser(Plain::of(f)))
        .collect();
    web.render(
        StatusCode::OK,
        "dashboard.html",
        context! {
            title => "Dashboard", admin => s.admin, csrf => s.csrf, settings,
            weak_total, bans => bans.len(), registrations, recent_bans,
            score => ((total - weak_total) * 100).checked_div(total).unwrap_or(100),
            kinds => kinds.iter().map(|k| context! { kind => k.0, weak => k.1, total => k.2 }).collect::<Vec<_>>(),
            log, charts,
        },
    )
}

/// Audit log entries for a template, newest first.
pub(crate) fn log_rows(rows: &[LogRow]) -> Vec<Value> {
    rows.iter()
        .rev()
        .map(|e| {
            context! {
                at => e.at,
                actor => e.actor.clone(), action => e.action.clone(),
                subject => e.subject.clone(), detail => e.detail.clone(),
            }
        })
        .collect()
}

async fn extensions(
    State(web): State<Web>,
    Admin(s): Admin,
    Query(query): Query<ListQuery>,
) -> Response {
    let Ok(all) = rows(&web).await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the data dir cannot be read\n",
        )
            .into_response();
    };
    let total = all.len();
    let page = query.select(&all, PER_PAGE);
    let q = query.text();
    let weak_only = query.weak_only();
    // The links to other pages keep the search and the filter.
    let link = |n: usize| {
        let mut url = format!("/extensions?page={n}");
        if !q.is_empty() {
            url.push_str("&q=");
            url.push_str(&form_urlencode(&q));
        }
        if weak_only {
            url.push_str("&weak=1");
        }
        url
    };
    web.render(
        StatusCode::OK,
        "extensions.html",
        context! { title => "Extensions", admin => s.admin, csrf => s.csrf,
        rows => ser(&page.rows), weak_only, q => q.clone(), total, matching => page.matching,
        weak_count => page.weak, page => page.page, pages => page.pages,
        prev => (page.page > 1).then(|| link(page.page - 1)),
        next => (page.page < page.pages).then(|| link(page.page + 1)) },
    )
}

/// Text as one percent-encoded path segment (a name in a link, whatever it holds).
pub fn path_segment(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `application/x-www-form-urlencoded` text for a query value.
fn form_urlencode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

async fn regenerate(State(web): State<Web>, AdminForm { session: s, form }: AdminForm) -> Response {
    let numbers: Vec<String> = form
        .iter()
        .filter(|(k, _)| k == "number")
        .map(|(_, v)| v.clone())
        .collect();
    if numbers.is_empty() {
        return (StatusCode::BAD_REQUEST, "select at least one extension\n").into_response();
    }
    if field(&form, "confirm") != Some("yes") {
        return web.render(
            StatusCode::OK,
            "confirm.html",
            context! { title => "Re-Generate", admin => s.admin, csrf => s.csrf, numbers },
        );
    }
    let selection = Selection::Numbers(numbers.clone());
    let keep_grace = field(&form, "no_grace") != Some("yes");
    let results = match web
        .registry
        .regenerate_with(&selection, true, keep_grace, &mut |_, _| {})
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let status = if matches!(e, accounts::Error::NotFound { .. }) {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            };
            return (status, format!("{e}\n")).into_response();
        }
    };
    for r in &results {
        web.log_setting(
            &s.actor(),
            Setting::Extension,
            Change::Regenerated,
            &r.number,
            "new password and PIN",
        )
        .await;
    }
    let results: Vec<_> = results
        .iter()

        .map(|r| {
            let kept: Vec<String> = r
                .grace_sources
                .iter()
                .chain(&r.provisioning_sources)
                .map(ToString::to_string)
                .collect();
            context! { number => r.number.clone(), files => r.files.describe(), mail => r.mail.describe(),
                grace => kept.join(", ") }
        })
        .collect();
    web.render(
        StatusCode::OK,
        "results.html",
        context! { title => "Re-Generated", admin => s.admin, csrf => s.csrf, results },
    )
}

/// The password, PIN and SIP ID findings (warning or worse), by field, as sentences.
fn field_findings(findings: &[Finding]) -> BTreeMap<&'static str, Vec<String>> {
    let mut out: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for f in findings.iter().filter(|f| f.severity >= WEAK_AT) {
        if matches!(f.field, "password" | "pin" | "sip_id") {
            out.entry(f.field)
                .or_default()
                .push(Plain::of(f).sentence());
        }
    }
    out
}

async fn edit_page(
    State(web): State<Web>,
    Admin(s): Admin,
    Path(number): Path<String>,
) -> Response {
    // One audit (it also finds a password reused on another account).
    let view = match web.registry.get_extension(&number).await {
        Ok(v) => v,
        Err(accounts::Error::NotFound { .. } | accounts::Error::Invalid(_)) => {
            return (StatusCode::NOT_FOUND, "no such extension\n").into_response();
        }
        Err(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the data dir cannot be read\n",
            )
                .into_response();
        }
    };
    let Ok(findings) = web.findings().await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the data dir cannot be read\n",
        )
            .into_response();
    };
    let subject = format!("ext:{number}");
    let mine: Vec<Finding> = findings
        .iter()
        .filter(|f| f.subject == subject)
        .cloned()
        .collect();
    // Where its phones are registered from, and over which transport (UDP, TCP, TLS),
    // as the running server last wrote it.
    let registrations = web
        .registry
        .registrations(&number)
        .await
        .unwrap_or_default();
    let (transport, port) = web
        .registry
        .settings()
        .provisioning
        .for_phone(view.transport.as_deref());
    web.render(
        StatusCode::OK,
        "edit.html",
        context! { title => format!("Extension {number}"), admin => s.admin, csrf => s.csrf,
        e => ser(&view),
        registrations => ser(&registrations),
        transport => transport.as_str(), port => port,
        fields => ser(field_findings(&mine)) },
    )
}

fn change_from(form: &[(String, String)]) -> ExtensionChange {
    let given = |name: &str| field(form, name).map(str::to_owned);
    let secret = |name: &str| {
        field(form, name)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    ExtensionChange {
        name: given("name"),
        email: given("email"),
        sip_id: given("sip_id"),
        password: secret("password"),
        pin: secret("pin"),
        transport: given("transport"),
        ..Default::default()
    }
}

async fn edit(
    State(web): State<Web>,
    Path(number): Path<String>,
    AdminForm { session: s, form }: AdminForm,
) -> Response {
    let change = change_from(&form);
    let changed: Vec<&str> = [
        ("name", change.name.is_some()),
        ("email", change.email.is_some()),
        ("sip_id", change.sip_id.is_some()),
        ("password", change.password.is_some()),
        ("pin", change.pin.is_some()),
    ]
    .iter()
    .filter(|(_, c)| *c)
    .map(|(n, _)| *n)
    .collect();
    match web.registry.update_extension(&number, change).await {
        Ok(accounts::extension::Updated {
            extension: view,
            findings,
            grace,
        }) => {
            web.log_setting(
                &s.actor(),
                Setting::Extension,
                Change::Updated,
                &number,
                &changed.join(", "),
            )
            .await;
            web.render(
                StatusCode::OK,
                "edit.html",
                context! { title => format!("Extension {number}"), admin => s.admin, csrf => s.csrf,
                e => ser(&view),
                fields => ser(field_findings(&findings)), saved => true,
                grace => grace.sources.iter().chain(&grace.provisioning_sources)
                    .map(ToString::to_string).collect::<Vec<_>>().join(", ") },
            )
        }
        Err(accounts::Error::NotFound { .. }) => {
            (StatusCode::NOT_FOUND, "no such extension\n").into_response()
        }
        Err(e) => match web.registry.get_extension(&number).await {
            Ok(view) => web.render(
                StatusCode::BAD_REQUEST,
                "edit.html",
                context! { title => format!("Extension {number}"), admin => s.admin, csrf => s.csrf,
                e => ser(&view),
                fields => ser(BTreeMap::<&str, Vec<String>>::new()), error => e.to_string() },
            ),
            Err(_) => (StatusCode::NOT_FOUND, "no such extension\n").into_response(),
        },
    }
}

/// The live check: the typed values through the same audit rules as the CLI, without
/// saving. Blank password and PIN boxes mean "unchanged" and are not reported.
async fn check(
    State(web): State<Web>,
    Path(number): Path<String>,
    AdminForm { form, .. }: AdminForm,
) -> Response {
    let change = change_from(&form);
    let typed_password = change.password.is_some();
    let typed_pin = change.pin.is_some();
    match web.registry.check_extension(&number, &change).await {
        Ok(findings) => {
            let mut fields = field_findings(&findings);
            if !typed_password {
                fields.remove("password");
            }
            if !typed_pin {
                fields.remove("pin");
            }
            axum::Json(serde_json::json!({ "fields": fields })).into_response()
        }
        Err(accounts::Error::NotFound { .. }) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_the_handlers_render_is_there_and_compiles() {
        let env = templates().expect("templates");
        let sources = [
            include_str!("web.rs"),
            include_str!("pages.rs"),
            include_str!("trunks.rs"),
            include_str!("voicemail.rs"),
        ];
        let mut names = 0;
        for src in sources {
            for part in src.split('"').skip(1).step_by(2) {
                if part.ends_with(".html") && !part.contains(' ') && !part.contains('/') {
                    names += 1;
                    assert!(env.get_template(part).is_ok(), "{part} is not registered");
                }
            }
        }
        assert!(names >= 15, "found {names} page names");
    }

    #[test]
    fn cross_site_requests_are_told_apart() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h), "non-browser clients carry neither header");
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h));
    }

    #[test]
    fn search_links_carry_any_text_safely() {
        assert_eq!(form_urlencode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
        assert_eq!(path_segment("a b/+1"), "a%20b%2F%2B1");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sipward_session=abc; b=2"),
        );
        assert_eq!(cookie_value(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie_value(&h, "c"), None);
    }
}
