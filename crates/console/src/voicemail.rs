//! Voicemail in the console and the API: every box with its messages in numbers (count,
//! length, date), one box's messages, and a message's recording.
//!
//! Who may hear a message: its box's owner, from the phone (the voicemail menu), and
//! otherwise an administrator who gives a reason. The console has no owner logins
//! (extension owners do not log in to it), so here a recording is handed out only to
//! an administrator, only by a state-changing request (POST: a session needs its CSRF
//! token, so no link another site plants can fetch one), and only with a reason, which
//! goes to the audit log with who asked. A box's PIN is reset by Re-Generate (the
//! existing one: new PIN, mailed to the owner); a weak PIN's finding links to it.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use minijinja::context;
use serde::Deserialize;
use serde_json::json;

use crate::api::{Body, Caller, accounts_error, error};
use crate::web::{self, Admin, AdminForm, Web, field, ser};

/// The longest reason kept (it goes to the audit log).
const MAX_REASON_CHARS: usize = 200;

pub fn routes(web: Web) -> Router {
    Router::new()
        .route("/voicemail", get(boxes_page))
        .route("/voicemail/{number}", get(box_page))
        .route("/voicemail/{number}/{id}", post(listen_page))
        .route("/api/v1/voicemail", get(boxes))
        .route("/api/v1/voicemail/{number}", get(one_box))
        .route("/api/v1/voicemail/{number}/messages/{id}/open", post(open))
        .route("/api/v1/voicemail/{number}/unlock", post(unlock))
        .with_state(web)
        .layer(axum::middleware::map_response(web::security_headers))
}

/// A reason an administrator gave, or why it is not one.
fn reason(text: Option<&str>) -> Result<String, &'static str> {
    let text: String = text
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_CHARS)
        .collect();
    let text = text.trim();
    if text.chars().count() < 4 {
        return Err("say why you open this message (a reason of at least 4 characters)");
    }
    Ok(text.to_owned())
}

/// The extensions whose PIN the audit finds weak.
async fn weak_pins(web: &Web) -> Vec<String> {
    web::rows(web)
        .await
        .map(|rows| {
            rows.iter()
                .filter(|r| r.rules.iter().any(|rule| rule.starts_with("pin_")))
                .map(|r| r.view.number.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// The recording as a download, after the audit log has it.
async fn recording(web: &Web, actor: &str, number: &str, id: &str, why: &str) -> Response {
    let wav = match web.registry.open_message(number, id).await {
        Ok(w) => w,
        Err(e) => return accounts_error(&e),
    };
    web.log(
        actor,
        "voicemail.message_opened",
        &format!("ext:{number}"),
        &format!("message {id}; reason: {why}"),
    )
    .await;
    let name = format!("voicemail-{number}-{id}.wav")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-.".contains(*c))
        .collect::<String>();
    (
        [
            (header::CONTENT_TYPE, "audio/wav".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        wav,
    )
        .into_response()
}

async fn boxes_page(State(web): State<Web>, Admin(s): Admin) -> Response {
    let boxes = match web.registry.voicemail_boxes().await {
        Ok(b) => b,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    let weak = weak_pins(&web).await;
    let boxes: Vec<_> = boxes
        .iter()
        .map(|b| {
            context! { b => ser(b), weak_pin => weak.contains(&b.number) }
        })
        .collect();
    web.render(
        StatusCode::OK,
        "voicemail.html",
        context! { title => "Voicemail", admin => s.admin, csrf => s.csrf, boxes },
    )
}

async fn box_page(State(web): State<Web>, Admin(s): Admin, Path(number): Path<String>) -> Response {
    let view = match web.registry.voicemail_box(&number).await {
        Ok(v) => v,
        Err(accounts::Error::NotFound { .. } | accounts::Error::Invalid(_)) => {
            return (StatusCode::NOT_FOUND, "no such voicemail box\n").into_response();
        }
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    let messages = web.registry.messages(&number).await.unwrap_or_default();
    let weak_pin = weak_pins(&web).await.contains(&view.number);
    web.render(
        StatusCode::OK,
        "voicemail_box.html",
        context! { title => format!("Voicemail {}", view.number), admin => s.admin,
        csrf => s.csrf, b => ser(&view), messages => ser(&messages), weak_pin },
    )
}

async fn listen_page(
    State(web): State<Web>,
    Path((number, id)): Path<(String, String)>,
    AdminForm { session: s, form }: AdminForm,
) -> Response {
    match reason(field(&form, "reason")) {
        Ok(why) => recording(&web, &s.actor(), &number, &id, &why).await,
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn boxes(State(web): State<Web>, Caller(_): Caller) -> Response {
    match web.registry.voicemail_boxes().await {
        Ok(b) => {
            let weak = weak_pins(&web).await;
            let rows: Vec<_> = b
                .iter()
                .map(|b| json!({ "box": b, "weak_pin": weak.contains(&b.number) }))
                .collect();
            axum::Json(rows).into_response()
        }
        Err(e) => accounts_error(&e),
    }
}

async fn one_box(
    State(web): State<Web>,
    Caller(_): Caller,
    Path(number): Path<String>,
) -> Response {
    if policy::fields::ExtensionNumber::parse(&number).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{number:?} is not an extension number"),
        );
    }
    let view = match web.registry.voicemail_box(&number).await {
        Ok(v) => v,
        Err(e) => return accounts_error(&e),
    };
    let messages = match web.registry.messages(&number).await {
        Ok(m) => m,
        Err(e) => return accounts_error(&e),
    };
    let weak_pin = weak_pins(&web).await.contains(&view.number);
    axum::Json(json!({ "box": view, "weak_pin": weak_pin, "messages": messages })).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Open {
    /// Why an administrator opens someone's message (kept in the audit log).
    reason: String,
}

async fn open(
    State(web): State<Web>,
    Caller(actor): Caller,
    Path((number, id)): Path<(String, String)>,
    Body(req): Body<Open>,
) -> Response {
    if policy::fields::ExtensionNumber::parse(&number).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{number:?} is not an extension number"),
        );
    }
    match reason(Some(&req.reason)) {
        Ok(why) => recording(&web, &actor, &number, &id, &why).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn unlock(
    State(web): State<Web>,
    Caller(actor): Caller,
    Path(number): Path<String>,
) -> Response {
    if policy::fields::ExtensionNumber::parse(&number).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{number:?} is not an extension number"),
        );
    }
    match web.registry.unlock_box(&number, &actor).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => accounts_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_needed_and_kept_printable_and_short() {
        assert!(reason(None).is_err());
        assert!(reason(Some("  ab ")).is_err());
        assert_eq!(
            reason(Some("court order 12\r\n")),
            Ok("court order 12".into())
        );
        assert_eq!(
            reason(Some(&"x".repeat(1000))).map(|r| r.len()),
            Ok(MAX_REASON_CHARS)
        );
    }
}
