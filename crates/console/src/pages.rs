//! The console's other pages: adding an extension, gateways and providers, security
//! (bans and the allow list), the exposure advisor and the audit log.

use accounts::audit_log::{Change, Setting};
use accounts::extension::{ExtensionKind, NewExtension};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::context;
use policy::exposure;

use crate::client::ClientIp;
use crate::web::{self, Admin, AdminForm, Web, field, ser};

pub fn routes(web: Web) -> Router {
    Router::new()
        .route("/extensions/new", get(new_page).post(add))
        .route("/security", get(security))
        .route("/security/{action}", post(security_change))
        .route("/advisor", get(advisor))
        .route("/log", get(log))
        .route("/calls", get(calls))
        .route("/calls/resume", post(resume))
        .route("/backups", get(backups))
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

async fn new_page(State(web): State<Web>, Admin(s): Admin) -> Response {
    web.render(
        StatusCode::OK,
        "new.html",
        context! { title => "Add an extension", admin => s.admin, csrf => s.csrf,
        number => "", name => "", email => "" },
    )
}

async fn add(State(web): State<Web>, AdminForm { session: s, form }: AdminForm) -> Response {
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
            web.log_setting(
                &s.actor(),
                Setting::Extension,
                Change::Added,
                &number,
                "generated credentials",
            )
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

async fn security(State(web): State<Web>, Admin(s): Admin) -> Response {
    let (Ok(bans), Ok(allow), Ok(mut every)) = (
        web.registry.bans(false).await,
        web.registry.allow_list().await,
        web.registry.bans(true).await,
    ) else {
        return unreadable();
    };
    // The sources banned most often (expired bans included: they are kept for escalation).
    every.sort_by_key(|b| (std::cmp::Reverse(b.times), std::cmp::Reverse(b.last_seen)));
    let top: Vec<_> = every
        .iter()
        .take(10)
        .map(|b| {
            context! { source => b.source.clone(), times => b.times, reason => b.reason.clone(),
            last_seen => b.last_seen, active => b.expires_at > web.clock.now() }
        })
        .collect();
    let bans: Vec<_> = bans
        .iter()
        .map(|b| {
            context! {
                source => b.source.clone(), reason => b.reason.clone(),
                detail => b.detail.clone(), times => b.times,
                until => b.expires_at, forever => b.expires_at >= accounts::bans::FOREVER,
                last_seen => b.last_seen,
            }
        })
        .collect();
    let Ok(guard) = web.registry.guard_view().await else {
        return unreadable();
    };
    let thresholds = thresholds(&guard);
    let Ok(targeted) = targeted(&web, &guard.policy).await else {
        return unreadable();
    };
    web.render(
        StatusCode::OK,
        "security.html",
        context! { title => "Security", admin => s.admin, csrf => s.csrf, bans, allow => ser(&allow), top,
                   thresholds, refused => guard.refused, targeted,
                   account_window_min => guard.policy.extension_window_secs / 60 },
    )
}

/// A change on the security page (`lift`, `allow`, `disallow`): done, logged, back to
/// the page.
async fn security_change(
    State(web): State<Web>,
    Path(action): Path<String>,
    ClientIp(asker): ClientIp,
    AdminForm { session: s, form }: AdminForm,
) -> Response {
    let value = |k: &str| field(&form, k).unwrap_or("").trim().to_owned();
    if action == "guard" {
        return guard_change(&web, &s.actor(), &form).await;
    }
    // Each change answers the subject as stored, which the audit log names.
    let (what, detail, r) = match action.as_str() {
        "unban" => {
            let r = web.registry.unban(&value("source")).await;
            ((Setting::Ban, Change::Removed), String::new(), r)
        }
        "allow" => {
            let (network, note) = (value("network"), value("note"));
            let r = web.registry.allow(&network, &note).await.map(|v| v.network);
            ((Setting::Allow, Change::Added), note, r)
        }
        "ban" => {
            let (source, reason) = (value("source"), value("reason"));
            let seconds = match value("for").as_str() {
                "forever" | "" => None,
                s => match s.parse::<i64>() {
                    Ok(n) if (1..=10 * 365 * 86_400).contains(&n) => Some(n),
                    _ => {
                        return (StatusCode::BAD_REQUEST, "choose how long the ban lasts\n")
                            .into_response();
                    }
                },
            };
            let r = web
                .registry
                .ban(&source, &reason, seconds, Some(asker))
                .await
                .map(|v| v.source);
            ((Setting::Ban, Change::Added), reason, r)
        }
        "disallow" => {
            let r = web.registry.disallow(&value("network")).await;
            ((Setting::Allow, Change::Removed), String::new(), r)
        }
        _ => return (StatusCode::NOT_FOUND, "no such action\n").into_response(),
    };
    match r {
        Ok(subject) => {
            web.log_setting(&s.actor(), what.0, what.1, &subject, &detail)
                .await;
            Redirect::to("/security").into_response()
        }
        Err(accounts::Error::NotFound { what }) => {
            (StatusCode::NOT_FOUND, format!("{what} does not exist\n")).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn advisor(State(web): State<Web>, Admin(s): Admin) -> Response {
    let (sip, http) = web.options.listening;
    let Ok(mut facts) = accounts::exposure::facts(
        &web.registry,
        (sip, web.options.sips),
        http,
        false,
        web.clock.now(),
    )
    .await
    else {
        return unreadable();
    };
    facts.trusted_proxies = web
        .options
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    web.render(
        StatusCode::OK,
        "advisor.html",
        context! { title => "Exposure advisor", admin => s.admin, csrf => s.csrf,
        advice => ser(exposure::advise(&facts)) },
    )
}

async fn log(State(web): State<Web>, Admin(s): Admin) -> Response {
    let Ok(rows) = web.registry.recent_log(500).await else {
        return unreadable();
    };
    let log = web::log_rows(&rows);
    web.render(
        StatusCode::OK,
        "log.html",
        context! { title => "Audit log", admin => s.admin, csrf => s.csrf, log },
    )
}

async fn calls(State(web): State<Web>, Admin(s): Admin) -> Response {
    let Ok((calls, written_at)) = web.registry.active_calls().await else {
        return unreadable();
    };
    let Ok(mut conn) = web.registry.store().conn().await else {
        return unreadable();
    };
    let suspended: Vec<_> = store::outbound::calling(&mut conn)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.outbound.suspended_at > 0)
        .map(|c| {
            context! {
                number => c.outbound.number, since => c.outbound.suspended_at,
                reason => c.outbound.suspend_reason,
            }
        })
        .collect();
    let calls: Vec<_> = calls
        .iter()
        .map(|c| {
            context! {
                caller => c.caller.clone(), callee => c.callee.clone(), kind => c.kind.clone(),
                trunk => c.trunk.clone(), state => c.state.clone(), since => c.started_at,
            }
        })
        .collect();
    web.render(
        StatusCode::OK,
        "calls.html",
        context! { title => "Calls", admin => s.admin, csrf => s.csrf, calls, suspended,
        written => (written_at > 0).then_some(written_at) },
    )
}

async fn resume(State(web): State<Web>, AdminForm { session: s, form }: AdminForm) -> Response {
    let number = field(&form, "number").unwrap_or("").trim().to_owned();
    match web.registry.resume(&number).await {
        Ok(_) => {
            web.log(
                &s.actor(),
                "ext.resumed",
                &format!("ext:{number}"),
                "outbound calling",
            )
            .await;
            Redirect::to("/calls").into_response()
        }
        Err(accounts::Error::NotFound { what }) => {
            (StatusCode::NOT_FOUND, format!("{what} does not exist\n")).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn backups(State(web): State<Web>, Admin(s): Admin) -> Response {
    let dir = &web.options.backups_dir;
    let mut files: Vec<(String, u64, i64)> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    if !name.ends_with(".swbak") {
                        return None;
                    }
                    let m = e.metadata().ok()?;
                    let at = m
                        .modified()
                        .ok()?
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()?
                        .as_secs();
                    Some((name, m.len(), i64::try_from(at).ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort_by_key(|f| std::cmp::Reverse(f.2));
    let epoch = web.registry.security_epoch().await.unwrap_or(0);
    let files: Vec<_> = files
        .iter()
        .map(|(name, bytes, at)| context! { name, bytes, at })
        .collect();
    web.render(
        StatusCode::OK,
        "backups.html",
        context! { title => "Backups", admin => s.admin, csrf => s.csrf, files,
        dir => dir.display().to_string(), epoch },
    )
}

/// What each guard setting means, in the words of the security page.
fn threshold_label(key: &str) -> &'static str {
    match key {
        "auth_failures" => "Failed logins that ban a source",
        "auth_window_secs" => "…counted within (seconds)",
        "ban_secs" => "Ban length (seconds)",
        "repeat_bans" => "Bans that make a source a repeat offender",
        "repeat_window_secs" => "…counted within (seconds)",
        "repeat_ban_secs" => "A repeat offender's ban (seconds)",
        "trusted_secs" => "A phone's address stays trusted for (seconds)",
        "ban_scanners" => "Ban scanners' User-Agents at once (true or false)",
        "scanner_ban_secs" => "A scanner's ban (seconds)",
        "flood_requests" => "Requests from a stranger that ban it as a flood (or off)",
        "silence_requests" => "…and above which it is not answered",
        "flood_window_secs" => "…counted within (seconds)",
        "flood_ban_secs" => "A flood's ban (seconds)",
        "trusted_factor" => "Times higher limits for addresses that logged in",
        "gateway_requests" => "Requests a gateway's address may send per window",
        "extension_failures" => "Failures that close an account to strangers (or off)",
        "extension_window_secs" => "…counted within (seconds)",
        "weak_credentials" => "Weak accounts log in (trusted-only or allow)",
        "decoy_ban_secs" => "A decoy user name's ban (seconds)",
        "provisioning_probes" => "Provisioning probes that ban a source",
        "provisioning_window_secs" => "…counted within (seconds)",
        "provisioning_ban_secs" => "A provisioning prober's ban (seconds)",
        _ => "",
    }
}

/// A setting's value as typed in the form (`off`, `trusted-only`, `5`, `true`).
fn typed_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn thresholds(view: &accounts::guard_policy::GuardView) -> Vec<minijinja::Value> {
    let policy = serde_json::to_value(&view.policy).unwrap_or_default();
    view.editable
        .iter()
        .map(|k| {
            context! {
                key => *k, label => threshold_label(k), value => typed_text(&policy[*k]),
                changed => view.overrides.contains_key(*k),
            }
        })
        .collect()
}

/// The thresholds form: every field whose value differs from the one in force is set,
/// every `reset.KEY` ticked goes back to the file's; all together or none.
async fn guard_change(web: &Web, actor: &str, form: &[(String, String)]) -> Response {
    let Ok(view) = web.registry.guard_view().await else {
        return unreadable();
    };
    let policy = serde_json::to_value(&view.policy).unwrap_or_default();
    let mut changes: Vec<(&str, Option<&str>)> = Vec::new();
    for key in view.editable {
        if field(form, &format!("reset.{key}")).is_some() {
            changes.push((key, None));
        } else if let Some(v) = field(form, &format!("g.{key}"))
            && !v.trim().is_empty()
            && v.trim() != typed_text(&policy[*key])
        {
            changes.push((key, Some(v)));
        }
    }
    if changes.is_empty() {
        return Redirect::to("/security#thresholds").into_response();
    }
    match web.registry.set_guard(actor, &changes).await {
        Ok(_) => Redirect::to("/security#thresholds").into_response(),
        Err(e) if e.is_operator_error() => {
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Err(_) => unreadable(),
    }
}

/// The accounts with the most failed logins from strangers in the guard's account window
/// (the running server's memory, the other nodes' counts included), each with its
/// extension or gateway and whether it is closed to strangers now.
async fn targeted(
    web: &Web,
    policy: &policy::ban::BanPolicy,
) -> accounts::Result<Vec<minijinja::Value>> {
    let top = web.server.targeted_accounts(web.clock.now(), 10);
    if top.is_empty() {
        return Ok(Vec::new());
    }
    let owners: std::collections::HashMap<String, (String, String)> = web
        .registry
        .list_extensions()
        .await?
        .into_iter()
        .map(|e| (e.auth_id.clone(), (e.number.clone(), e.name.clone())))
        .collect();
    Ok(top
        .into_iter()
        .map(|(auth_id, failures)| {
            let (number, name) = owners.get(&auth_id).cloned().unwrap_or_default();
            context! {
                auth_id, number, name, failures,
                closed => policy.extension_failures > 0 && failures >= policy.extension_failures,
            }
        })
        .collect())
}
