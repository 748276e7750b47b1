//! The console's other pages: adding an extension, gateways and providers, security
//! (bans and the allow list), the exposure advisor and the audit log.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::context;
use pbx::audit::WEAK_AT;
use pbx::registry::backup::utc_stamp;
use pbx::registry::{ExtensionKind, NewExtension};
use policy::exposure::{self, Facts};

use crate::web::{self, Web, field, ser};

pub fn routes(web: Web) -> Router {
    Router::new()
        .route("/extensions/new", get(new_page).post(add))
        .route("/trunks", get(trunks))
        .route("/security", get(security))
        .route("/security/unban", post(unban))
        .route("/security/allow", post(allow))
        .route("/security/disallow", post(disallow))
        .route("/advisor", get(advisor))
        .route("/log", get(log))
        .with_state(web)
        .layer(axum::middleware::map_response(web::security_headers))
}

fn unreadable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the data dir cannot be read\n",
    )
        .into_response()
}

async fn new_page(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let Some(s) = web::session(&web, &headers, peer.ip()).await else {
        return Redirect::to("/login").into_response();
    };
    web.render(
        StatusCode::OK,
        "new.html",
        context! { title => "Add an extension", admin => s.admin, csrf => s.csrf,
        number => "", name => "", email => "" },
    )
}

async fn add(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> Response {
    let s = match web::checked(&web, &headers, peer.ip(), field(&form, "csrf")).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let text = |n: &str| {
        field(&form, n)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let number = text("number").unwrap_or_default();
    let new = NewExtension {
        kind: if field(&form, "fax") == Some("1") {
            ExtensionKind::Fax
        } else {
            ExtensionKind::User
        },
        name: text("name"),
        email: text("email"),
        ..Default::default()
    };
    match web.registry.add_extension(&number, new).await {
        Ok(added) => {
            web.log(&s.actor(), "ext.added", &format!("ext:{number}"), "generated credentials")
                .await;
            let g = &added.generated;
            web.render(
                StatusCode::OK,
                "added.html",
                context! {
                    title => format!("Extension {number} added"), admin => s.admin, csrf => s.csrf,
                    e => ser(&added.extension),
                    password => g.password.as_ref().map(|p| p.expose().to_owned()),
                    pin => g.pin.as_ref().map(|p| p.expose().to_owned()),
                },
            )
        }
        Err(e) => web.render(
            StatusCode::BAD_REQUEST,
            "new.html",
            context! { title => "Add an extension", admin => s.admin, csrf => s.csrf, error => e.to_string(),
                       number, name => text("name"), email => text("email") },
        ),
    }
}

async fn trunks(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let Some(s) = web::session(&web, &headers, peer.ip()).await else {
        return Redirect::to("/login").into_response();
    };
    let reg = &web.registry;
    let (Ok(findings), Ok(gws), Ok(provs)) = (
        reg.audit().await,
        reg.list_gateways().await,
        reg.list_providers().await,
    ) else {
        return unreadable();
    };
    let mut by_subject: BTreeMap<&str, Vec<&policy::Finding>> = BTreeMap::new();
    for f in findings.iter().filter(|f| f.severity >= WEAK_AT) {
        by_subject.entry(f.subject.as_str()).or_default().push(f);
    }
    let row = |kind: &str, name: &str, address: &str, auth_id: &str| {
        let subject = format!("{kind}:{name}");
        let fs = by_subject
            .get(subject.as_str())
            .cloned()
            .unwrap_or_default();
        context! {
            subject => subject.replace(':', "-"), kind, name, address, auth_id,
            weak => !fs.is_empty(),
            rules => fs.iter().map(|f| f.rule.to_string()).collect::<Vec<_>>(),
            reasons => fs.iter().map(|f| f.message.clone()).collect::<Vec<_>>(),
        }
    };
    let mut rows: Vec<_> = gws
        .iter()
        .map(|g| row("gateway", &g.name, &g.host, &g.auth_id))
        .collect();
    rows.extend(
        provs
            .iter()
            .map(|p| row("provider", &p.name, &p.registrar, &p.auth_id)),
    );
    web.render(
        StatusCode::OK,
        "trunks.html",
        context! { title => "Gateways and providers", admin => s.admin, csrf => s.csrf, trunks => rows },
    )
}

async fn security(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let Some(s) = web::session(&web, &headers, peer.ip()).await else {
        return Redirect::to("/login").into_response();
    };
    let (Ok(bans), Ok(allow)) = (
        web.registry.bans(false).await,
        web.registry.allow_list().await,
    ) else {
        return unreadable();
    };
    let bans: Vec<_> = bans
        .iter()
        .map(|b| {
            context! {
                source => b.source.clone(), reason => b.reason.clone(),
                detail => b.detail.clone(), times => b.times,
                until => if b.expires_at >= pbx::bans::FOREVER { "never".to_owned() } else { utc_stamp(b.expires_at) },
            }
        })
        .collect();
    web.render(
        StatusCode::OK,
        "security.html",
        context! { title => "Security", admin => s.admin, csrf => s.csrf, bans, allow => ser(&allow) },
    )
}

/// A security change from a form: done, logged, back to the security page.
async fn security_change(
    web: &Web,
    headers: &HeaderMap,
    peer: SocketAddr,
    form: &[(String, String)],
    key: &str,
) -> Result<(web::Session, String), Response> {
    let s = web::checked(web, headers, peer.ip(), field(form, "csrf")).await?;
    let value = field(form, key).unwrap_or("").trim().to_owned();
    Ok((s, value))
}

fn outcome(r: pbx::Result<()>) -> Response {
    match r {
        Ok(()) => Redirect::to("/security").into_response(),
        Err(pbx::Error::NotFound { what }) => {
            (StatusCode::NOT_FOUND, format!("{what} does not exist\n")).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn unban(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> Response {
    let (s, source) = match security_change(&web, &headers, peer, &form, "source").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let r = web.registry.unban(&source).await;
    if r.is_ok() {
        web.log(&s.actor(), "ban.lifted", &source, "").await;
    }
    outcome(r)
}

async fn allow(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> Response {
    let (s, network) = match security_change(&web, &headers, peer, &form, "network").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let note = field(&form, "note").unwrap_or("").trim().to_owned();
    let r = web.registry.allow(&network, &note).await.map(|_| ());
    if r.is_ok() {
        web.log(&s.actor(), "allow.added", &network, &note).await;
    }
    outcome(r)
}

async fn disallow(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<Vec<(String, String)>>,
) -> Response {
    let (s, network) = match security_change(&web, &headers, peer, &form, "network").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let r = web.registry.disallow(&network).await;
    if r.is_ok() {
        web.log(&s.actor(), "allow.removed", &network, "").await;
    }
    outcome(r)
}

async fn advisor(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let Some(s) = web::session(&web, &headers, peer.ip()).await else {
        return Redirect::to("/login").into_response();
    };
    let Ok(facts) = facts(&web).await else {
        return unreadable();
    };
    web.render(
        StatusCode::OK,
        "advisor.html",
        context! { title => "Exposure advisor", admin => s.admin, csrf => s.csrf,
        advice => ser(exposure::advise(&facts)) },
    )
}

/// What the advisor looks at: the addresses `serve` listens on, the providers' resolved
/// registrars and the registrations from public addresses.
pub async fn facts(web: &Web) -> pbx::Result<Facts> {
    let mut providers = Vec::new();
    for p in web.registry.list_providers().await? {
        let addrs = pbx::server::resolve(&p.registrar)
            .await
            .map(|a| a.ip())
            .into_iter()
            .collect();
        providers.push((p.name, addrs));
    }
    let mut conn = web
        .registry
        .store()
        .pool()
        .acquire()
        .await
        .map_err(store::Error::from)?;
    let mut remote_seen: Vec<_> = store::registrar::live_bindings(&mut conn, (web.now)())
        .await?
        .into_iter()
        .filter_map(|b| {
            let ip = b.source.parse::<SocketAddr>().ok()?.ip();
            exposure::is_public(ip).then_some((b.number, ip))
        })
        .collect();
    remote_seen.sort();
    remote_seen.dedup();
    let (sip, http) = web.listening;
    Ok(Facts {
        sip_port: sip.port(),
        http_port: http.port(),
        http_all_interfaces: http.ip().is_unspecified(),
        providers,
        remote_declared: false,
        remote_seen,
    })
}

async fn log(
    State(web): State<Web>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let Some(s) = web::session(&web, &headers, peer.ip()).await else {
        return Redirect::to("/login").into_response();
    };
    let Ok(mut conn) = web.registry.store().pool().acquire().await else {
        return unreadable();
    };
    let rows = store::audit_log::recent(&mut conn, 500)
        .await
        .unwrap_or_default();
    let log = web::log_rows(&rows);
    web.render(
        StatusCode::OK,
        "log.html",
        context! { title => "Audit log", admin => s.admin, csrf => s.csrf, log },
    )
}
