//! The JSON API under `/api/v1`: the console's operations for scripts. A request
//! authenticates with `Authorization: Bearer TOKEN` (`sipward admin token create`) or
//! with a console session (then a state-changing request also carries `X-CSRF-Token`).
//! Errors are `{"error": "..."}` with 400, 401, 403, 404 or 409. The OpenAPI document
//! at `/api/v1/openapi.json` is built from [`ENDPOINTS`], the same table the tests
//! check the router against.

use std::net::IpAddr;

use accounts::audit_log::{self, Setting};
use accounts::regenerate::Selection;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admin;
use crate::client::ClientIp;
use crate::trunks::{Item, Refused};
use crate::web::{self, Web};

/// One documented operation.
#[derive(Debug)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// Statuses it answers besides 200.
    pub errors: &'static [u16],
    pub body: Option<&'static str>,
}

pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "get",
        path: "/api/v1/gateways",
        summary: "PSTN gateways with their audit findings",
        errors: &[401],
        body: None,
    },
    Endpoint {
        method: "get",
        path: "/api/v1/providers",
        summary: "VoIP provider accounts with their audit findings",
        errors: &[401],
        body: None,
    },
    Endpoint {
        method: "get",
        path: "/api/v1/bans",
        summary: "Sources banned now, with why",
        errors: &[401],
        body: None,
    },
    Endpoint {
        method: "delete",
        path: "/api/v1/bans/{source}",
        summary: "Lift a ban",
        errors: &[400, 401, 403, 404],
        body: None,
    },
    Endpoint {
        method: "get",
        path: "/api/v1/calls",
        summary: "Calls to and from trunks now (as the server last wrote them)",
        errors: &[401],
        body: None,
    },
    Endpoint {
        method: "get",
        path: "/api/v1/log",
        summary: "The newest 500 entries of the audit log",
        errors: &[401],
        body: None,
    },
    Endpoint {
        method: "get",
        path: "/api/v1/extensions",
        summary: "Extensions with their audit findings (title, message, rule id) and whether each is weak; `q` searches number, name and email, `weak=1` filters, `page`/`per_page` page (X-Total-Count: all matches)",
        errors: &[401],
        body: None,
    },
    Endpoint {
        method: "post",
        path: "/api/v1/extensions",
        summary: "Add an extension; credentials not given are generated and returned once",
        errors: &[400, 401, 403, 409],
        body: Some("NewExtension"),
    },
    Endpoint {
        method: "get",
        path: "/api/v1/extensions/{number}",
        summary: "One extension with its findings",
        errors: &[400, 401, 404],
        body: None,
    },
    Endpoint {
        method: "patch",
        path: "/api/v1/extensions/{number}",
        summary: "Change some fields of an extension (absent fields stay; an empty email, SIP ID, MAC or model clears it); the answer says where old credentials still work (grace)",
        errors: &[400, 401, 403, 404, 409],
        body: Some("ExtensionChange"),
    },
    Endpoint {
        method: "post",
        path: "/api/v1/extensions/{number}/resume",
        summary: "Resume an extension's suspended outbound calling",
        errors: &[400, 401, 403, 404],
        body: None,
    },
    Endpoint {
        method: "get",
        path: "/api/v1/allow",
        summary: "Networks that are never banned",
        errors: &[401],
        body: None,
    },
    Endpoint {
        method: "post",
        path: "/api/v1/allow",
        summary: "Add a network to the allow list, or remove it (`remove: true`)",
        errors: &[400, 401, 403, 404, 409],
        body: Some("AllowChange"),
    },
    Endpoint {
        method: "delete",
        path: "/api/v1/extensions/{number}",
        summary: "Remove an extension (its phone files and DIDs go with it)",
        errors: &[400, 401, 403, 404],
        body: None,
    },
    Endpoint {
        method: "post",
        path: "/api/v1/extensions/regenerate",
        summary: "Re-Generate the listed extensions: new password and PIN, phone files, welcome mails",
        errors: &[400, 401, 403, 404],
        body: Some("Regenerate"),
    },
    Endpoint {
        method: "post",
        path: "/api/v1/gateways",
        summary: "Add a PSTN gateway (the same checks as `sipward gateway add`); answers it with its findings",
        errors: &[400, 401, 403, 404, 409],
        body: Some("NewGateway"),
    },
    Endpoint {
        method: "patch",
        path: "/api/v1/gateways/{name}",
        summary: "Change some fields of a gateway (absent fields stay)",
        errors: &[400, 401, 403, 404, 409],
        body: Some("GatewayChange"),
    },
    Endpoint {
        method: "delete",
        path: "/api/v1/gateways/{name}",
        summary: "Remove a gateway (refused while a route uses it)",
        errors: &[400, 401, 403, 404, 409],
        body: None,
    },
    Endpoint {
        method: "post",
        path: "/api/v1/providers",
        summary: "Add a VoIP provider account (the same checks as `sipward provider add`)",
        errors: &[400, 401, 403, 404, 409],
        body: Some("NewProvider"),
    },
    Endpoint {
        method: "patch",
        path: "/api/v1/providers/{name}",
        summary: "Change some fields of a provider account (absent fields stay)",
        errors: &[400, 401, 403, 404, 409],
        body: Some("ProviderChange"),
    },
    Endpoint {
        method: "delete",
        path: "/api/v1/providers/{name}",
        summary: "Remove a provider account (refused while a route uses it)",
        errors: &[400, 401, 403, 404, 409],
        body: None,
    },
    Endpoint {
        method: "get",
        path: "/api/v1/routes",
        summary: "Outbound routes in the order they are tried",
        errors: &[401],
        body: None,
    },
    Endpoint {
        method: "post",
        path: "/api/v1/routes",
        summary: "Add an outbound route (the same checks as `sipward route add`)",
        errors: &[400, 401, 403, 404, 409],
        body: Some("NewRoute"),
    },
    Endpoint {
        method: "patch",
        path: "/api/v1/routes/{name}",
        summary: "Change a route's pattern, trunk, rewrite or priority (absent fields stay)",
        errors: &[400, 401, 403, 404, 409],
        body: Some("RouteChange"),
    },
    Endpoint {
        method: "delete",
        path: "/api/v1/routes/{name}",
        summary: "Remove an outbound route",
        errors: &[400, 401, 403, 404],
        body: None,
    },
    Endpoint {
        method: "get",
        path: "/api/v1/dids",
        summary: "DIDs and the extensions they ring",
        errors: &[401],
        body: None,
    },
    Endpoint {
        method: "post",
        path: "/api/v1/dids",
        summary: "Add a DID ringing an extension (the same checks as `sipward did add`)",
        errors: &[400, 401, 403, 404, 409],
        body: Some("NewDid"),
    },
    Endpoint {
        method: "patch",
        path: "/api/v1/dids/{did}",
        summary: "Point a DID at another extension",
        errors: &[400, 401, 403, 404, 409],
        body: Some("DidChange"),
    },
    Endpoint {
        method: "delete",
        path: "/api/v1/dids/{did}",
        summary: "Remove a DID",
        errors: &[400, 401, 403, 404],
        body: None,
    },
    Endpoint {
        method: "post",
        path: "/api/v1/bans",
        summary: "Ban an address or prefix by hand (the same checks as `sipward ban add`); `seconds` absent: until lifted",
        errors: &[400, 401, 403, 409],
        body: Some("Ban"),
    },
    Endpoint {
        method: "get",
        path: "/api/v1/voicemail",
        summary: "Every extension's voicemail box: messages new and saved, their total length, the latest, the lock, whether the PIN is weak (reset it with Re-Generate)",
        errors: &[401],
        body: None,
    },
    Endpoint {
        method: "get",
        path: "/api/v1/voicemail/{number}",
        summary: "One box with its messages (time, length, caller, folder; no audio)",
        errors: &[400, 401, 404],
        body: None,
    },
    Endpoint {
        method: "post",
        path: "/api/v1/voicemail/{number}/messages/{id}/open",
        summary: "A message's recording (audio/wav), for an administrator who gives a reason; the reason and who asked go to the audit log",
        errors: &[400, 401, 403, 404],
        body: Some("VoicemailOpen"),
    },
    Endpoint {
        method: "post",
        path: "/api/v1/voicemail/{number}/unlock",
        summary: "End a box's lock after wrong PINs and clear its count (after Re-Generate gave it a new PIN)",
        errors: &[400, 401, 403, 404],
        body: None,
    },
    Endpoint {
        method: "get",
        path: "/api/v1/guard",
        summary: "The anti-hacking thresholds in force (`[guard]` in the config file, with the settings changed here over it), which were changed here, and which can be",
        errors: &[401],
        body: None,
    },
    Endpoint {
        method: "patch",
        path: "/api/v1/guard",
        summary: "Change anti-hacking thresholds without editing the config file (`null` puts a setting back to the file's); all or none, checked like the file; in force on the running server within seconds",
        errors: &[400, 401, 403],
        body: Some("GuardChange"),
    },
];

pub fn routes(web: Web) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/extensions", get(list).post(add))
        .route("/api/v1/extensions/regenerate", post(regenerate))
        .route(
            "/api/v1/extensions/{number}",
            get(one).delete(remove).patch(update),
        )
        .route("/api/v1/extensions/{number}/resume", post(resume))
        .route("/api/v1/allow", get(allow_list).post(allow_change))
        .route("/api/v1/gateways", get(gateways).post(add_item::<GATEWAY>))
        .route(
            "/api/v1/gateways/{name}",
            axum::routing::patch(update_item::<GATEWAY>).delete(remove_item::<GATEWAY>),
        )
        .route(
            "/api/v1/providers",
            get(providers).post(add_item::<PROVIDER>),
        )
        .route(
            "/api/v1/providers/{name}",
            axum::routing::patch(update_item::<PROVIDER>).delete(remove_item::<PROVIDER>),
        )
        .route(
            "/api/v1/routes",
            get(list_items::<ROUTE>).post(add_item::<ROUTE>),
        )
        .route(
            "/api/v1/routes/{name}",
            axum::routing::patch(update_item::<ROUTE>).delete(remove_item::<ROUTE>),
        )
        .route("/api/v1/dids", get(list_items::<DID>).post(add_item::<DID>))
        .route(
            "/api/v1/dids/{did}",
            axum::routing::patch(update_item::<DID>).delete(remove_item::<DID>),
        )
        .route("/api/v1/guard", get(guard).patch(guard_change))
        .route("/api/v1/bans", get(bans).post(ban))
        .route("/api/v1/bans/{source}", axum::routing::delete(unban))
        .route("/api/v1/calls", get(calls))
        .route("/api/v1/log", get(log))
        .fallback(not_found)
        .with_state(web)
        .layer(axum::middleware::map_response(web::security_headers))
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// Who is calling (for the audit log): an API token's name or a console session's
/// administrator. A state-changing method from a session must also carry its CSRF token
/// and come from the console's origin.
#[derive(Debug)]
pub struct Caller(pub String);

impl FromRequestParts<Web> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Response> {
        let peer = crate::client::client_ip(parts);
        let unsafe_method = !matches!(parts.method, Method::GET | Method::HEAD);
        caller(web, &parts.headers, peer, unsafe_method)
            .await
            .map(Caller)
    }
}

/// A JSON request body; anything else is a 400 saying why.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned> FromRequest<Web> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: Request, web: &Web) -> Result<Self, Response> {
        let bytes = axum::body::Bytes::from_request(req, web)
            .await
            .map_err(IntoResponse::into_response)?;
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("the JSON body does not fit this call: {e}"),
            )
        })
    }
}

/// Who is calling, or the error answer. `unsafe_method`: a session must also carry its
/// CSRF token and come from the console's origin.
async fn caller(
    web: &Web,
    headers: &HeaderMap,
    peer: IpAddr,
    unsafe_method: bool,
) -> Result<String, Response> {
    if !web.admits(peer) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "the console does not answer this address",
        ));
    }
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let token = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()));
        let Some(token) = token else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "a Bearer API token is required",
            ));
        };
        let name = match web.registry.store().conn().await {
            Ok(mut conn) => store::console::token_name(&mut conn, &admin::token_digest(token))
                .await
                .ok()
                .flatten(),
            Err(_) => None,
        };
        return name
            .map(|n| format!("API token {n} ({peer})"))
            .ok_or_else(|| error(StatusCode::UNAUTHORIZED, "unknown API token"));
    }
    let Some(s) = web::session(web, headers, peer).await else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "log in to the console or send an API token",
        ));
    };
    if unsafe_method {
        let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
        if !web::same_origin(headers) || !sent.is_some_and(|t| web::tokens_match(t, &s.csrf)) {
            return Err(error(
                StatusCode::FORBIDDEN,
                "a console session needs its X-CSRF-Token from the console's own pages",
            ));
        }
    }
    Ok(s.actor())
}

/// Findings with their titles (rule id, severity, subject, field, title, message).
fn plain(findings: &[policy::Finding]) -> Vec<crate::findings::Plain> {
    findings.iter().map(crate::findings::Plain::of).collect()
}

pub(crate) fn accounts_error(e: &accounts::Error) -> Response {
    let status = match e {
        accounts::Error::NotFound { .. } => StatusCode::NOT_FOUND,
        accounts::Error::InUse { .. } => StatusCode::CONFLICT,
        accounts::Error::Store(store::Error::Conflict { .. }) => StatusCode::CONFLICT,
        e if e.is_operator_error() => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

/// The list, or one page of it: `q` searches number, name and email, `weak=1` keeps
/// the weak ones, `page` and `per_page` page it (every match when neither is given).
/// `X-Total-Count` says how many match in all.
async fn list(
    State(web): State<Web>,
    Caller(_): Caller,
    Query(query): Query<crate::snapshot::ListQuery>,
) -> Response {
    match web::rows(&web).await {
        Ok(rows) => {
            let paged = query.page.is_some() || query.per_page.is_some();
            let (rows, matching) = if paged {
                let page = query.select(&rows, crate::snapshot::PER_PAGE);
                (page.rows, page.matching)
            } else {
                // Unpaged: every match (the shape scripts had before paging).
                let rows: Vec<crate::snapshot::Row> =
                    query.filter(&rows).into_iter().cloned().collect();
                let n = rows.len();
                (rows, n)
            };
            let mut r = axum::Json(rows).into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&matching.to_string()) {
                r.headers_mut().insert("x-total-count", v);
            }
            r
        }
        Err(e) => accounts_error(&e),
    }
}

async fn one(State(web): State<Web>, Caller(_): Caller, Path(number): Path<String>) -> Response {
    if policy::fields::ExtensionNumber::parse(&number).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{number:?} is not an extension number"),
        );
    }
    match web::rows(&web).await {
        Ok(rows) => match rows.iter().find(|r| r.view.number == number) {
            Some(r) => axum::Json(r).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                format!("extension {number} does not exist"),
            ),
        },
        Err(e) => accounts_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewExtension {
    number: String,
    name: Option<String>,
    email: Option<String>,
    fax: Option<bool>,
    password: Option<String>,
    pin: Option<String>,
    sip_id: Option<String>,
    auth_id: Option<String>,
    mac: Option<String>,
    model: Option<String>,
    /// `udp`, `tcp` or `tls` for this extension's phones.
    transport: Option<String>,
    /// Seconds a call rings before voicemail answers (0: no voicemail).
    voicemail_after_secs: Option<u32>,
    /// Mail new messages to the extension's address.
    voicemail_mail: Option<bool>,
}

fn switch_text(on: bool) -> String {
    if on { "on" } else { "off" }.to_owned()
}

async fn add(
    State(web): State<Web>,
    Caller(actor): Caller,
    Body(req): Body<NewExtension>,
) -> Response {
    let new = accounts::extension::NewExtension {
        kind: if req.fax == Some(true) {
            accounts::extension::ExtensionKind::Fax
        } else {
            accounts::extension::ExtensionKind::User
        },
        name: req.name,
        email: req.email,
        password: req.password,
        pin: req.pin,
        sip_id: req.sip_id,
        auth_id: req.auth_id,
        mac: req.mac,
        model: req.model,
        class_of_service: None,
        transport: req.transport,
        voicemail_after_secs: req.voicemail_after_secs.map(|v| v.to_string()),
        voicemail_mail: req.voicemail_mail.map(switch_text),
    };
    let added = match web.registry.add_extension(&req.number, new).await {
        Ok(a) => a,
        Err(e) => return accounts_error(&e),
    };
    let number = added.extension.number.clone();
    web.log_setting(
        &actor,
        Setting::Extension,
        audit_log::Change::Added,
        &number,
        "",
    )
    .await;
    let g = &added.generated;
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "extension": added.extension,
            "generated": {
                "password": g.password.as_ref().map(|p| p.expose().to_owned()),
                "pin": g.pin.as_ref().map(|p| p.expose().to_owned()),
                "auth_id": g.auth_id,
            },
            "findings": plain(&added.findings),
        })),
    )
        .into_response()
}

async fn remove(
    State(web): State<Web>,
    Caller(actor): Caller,
    Path(number): Path<String>,
) -> Response {
    match web.registry.remove_extension(&number).await {
        Ok(()) => {
            web.log_setting(
                &actor,
                Setting::Extension,
                audit_log::Change::Removed,
                &number,
                "",
            )
            .await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => accounts_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Regenerate {
    numbers: Vec<String>,
    /// Queue welcome mails (default true).
    email: Option<bool>,
    /// No grace window (a suspected compromise): the old credentials stop working
    /// everywhere at once (default false).
    no_grace: Option<bool>,
}

async fn regenerate(
    State(web): State<Web>,
    Caller(actor): Caller,
    Body(req): Body<Regenerate>,
) -> Response {
    if req.numbers.is_empty() || req.numbers.len() > 100_000 {
        return error(
            StatusCode::BAD_REQUEST,
            "numbers must list 1 to 100000 extensions",
        );
    }
    let selection = Selection::Numbers(req.numbers);
    let results = match web
        .registry
        .regenerate_with(
            &selection,
            req.email.unwrap_or(true),
            !req.no_grace.unwrap_or(false),
            &mut |_, _| {},
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return accounts_error(&e),
    };
    for r in &results {
        web.log_setting(
            &actor,
            Setting::Extension,
            audit_log::Change::Regenerated,
            &r.number,
            "new password and PIN",
        )
        .await;
    }
    let out: Vec<Value> = results
        .iter()
        .map(|r| {
            json!({
                "number": r.number,
                "files": r.files.describe(),
                "mail": r.mail.describe(),
                "grace": {
                    "sources": r.grace_sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "provisioning_sources": r.provisioning_sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "until": r.grace_until.map(crate::timestamp::iso8601),
                },
            })
        })
        .collect();
    axum::Json(json!({ "regenerated": out })).into_response()
}

/// The OpenAPI 3.1 document for [`ENDPOINTS`].
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    for e in ENDPOINTS {
        let mut responses = serde_json::Map::new();
        responses.insert(
            "200".into(),
            json!({ "description": "OK", "content": { "application/json": { "schema": {} } } }),
        );
        for code in e.errors {
            responses.insert(
                code.to_string(),
                json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }),
            );
        }
        let mut op = json!({
            "summary": e.summary,
            "operationId": format!("{}{}", e.method, e.path.replace(['/', '{', '}'], "_")),
            "responses": responses,
            "security": [{ "bearer": [] }],
        });
        if e.path.contains("{number}") {
            op["parameters"] = json!([{ "name": "number", "in": "path", "required": true,
                                         "schema": { "type": "string", "pattern": "^[0-9]{2,15}$" } }]);
        }
        if e.path.contains("{id}")
            && let Some(params) = op["parameters"].as_array_mut()
        {
            params.push(json!({ "name": "id", "in": "path", "required": true,
                                "description": "a message id from the box's list",
                                "schema": { "type": "string", "maxLength": 64 } }));
        }
        if e.method == "get" && e.path == "/api/v1/extensions" {
            op["parameters"] = json!([
                { "name": "q", "in": "query", "required": false, "description": "part of a number, name or email",
                  "schema": { "type": "string", "maxLength": 100 } },
                { "name": "weak", "in": "query", "required": false, "description": "1: weak extensions only",
                  "schema": { "type": "string", "enum": ["0", "1"] } },
                { "name": "page", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1 } },
                { "name": "per_page", "in": "query", "required": false,
                  "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } },
            ]);
        }
        for p in ["name", "did"] {
            if e.path.contains(&format!("{{{p}}}")) {
                op["parameters"] = json!([{ "name": p, "in": "path", "required": true,
                                             "schema": { "type": "string", "maxLength": 100 } }]);
            }
        }
        if e.path.contains("{source}") {
            op["parameters"] = json!([{ "name": "source", "in": "path", "required": true,
                                         "schema": { "type": "string" } }]);
        }
        if let Some(body) = e.body {
            op["requestBody"] = json!({ "required": true, "content": { "application/json": {
                "schema": { "$ref": format!("#/components/schemas/{body}") } } } });
        }
        paths
            .entry(e.path)
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|m| m.insert(e.method.into(), op));
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "sipward API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
                "NewExtension": { "type": "object", "required": ["number"], "additionalProperties": false,
                    "properties": {
                        "number": { "type": "string" }, "name": { "type": "string" },
                        "email": { "type": "string" }, "fax": { "type": "boolean" },
                        "password": { "type": "string" }, "pin": { "type": "string" },
                        "sip_id": { "type": "string" }, "auth_id": { "type": "string" },
                        "mac": { "type": "string" }, "model": { "type": "string" },
                        "transport": { "type": "string", "enum": ["udp", "tcp", "tls"] },
                        "voicemail_after_secs": { "type": "integer", "minimum": 0, "maximum": 300 },
                        "voicemail_mail": { "type": "boolean" } } },
                "ExtensionChange": { "type": "object", "additionalProperties": false,
                    "properties": {
                        "name": { "type": "string" }, "email": { "type": "string" },
                        "password": { "type": "string" }, "pin": { "type": "string" },
                        "sip_id": { "type": "string" }, "auth_id": { "type": "string" },
                        "mac": { "type": "string" }, "model": { "type": "string" },
                        "class_of_service": { "type": "string" },
                        "transport": { "type": "string", "enum": ["", "udp", "tcp", "tls"] },
                        "voicemail_after_secs": { "type": "integer", "minimum": 0, "maximum": 300 },
                        "voicemail_mail": { "type": "boolean" } } },
                "VoicemailOpen": { "type": "object", "required": ["reason"], "additionalProperties": false,
                    "properties": { "reason": { "type": "string", "minLength": 4, "maxLength": 200 } } },
                "GuardChange": guard_change_schema(),
                "AllowChange": { "type": "object", "required": ["network"], "additionalProperties": false,
                    "properties": { "network": { "type": "string" }, "note": { "type": "string" },
                                    "remove": { "type": "boolean" } } },
                "NewGateway": Item::Gateway.schema(false), "GatewayChange": Item::Gateway.schema(true),
                "NewProvider": Item::Provider.schema(false), "ProviderChange": Item::Provider.schema(true),
                "NewRoute": Item::Route.schema(false), "RouteChange": Item::Route.schema(true),
                "NewDid": Item::Did.schema(false), "DidChange": Item::Did.schema(true),
                "Ban": { "type": "object", "required": ["source"], "additionalProperties": false,
                    "properties": { "source": { "type": "string" }, "reason": { "type": "string" },
                                    "seconds": { "type": "integer", "minimum": 1, "maximum": MAX_BAN_SECS } } },
                "Regenerate": { "type": "object", "required": ["numbers"], "additionalProperties": false,
                    "properties": { "numbers": { "type": "array", "items": { "type": "string" } },
                                    "email": { "type": "boolean" }, "no_grace": { "type": "boolean" } } },
            },
        },
    })
}

async fn openapi() -> Response {
    axum::Json(openapi_document()).into_response()
}

/// Accounts of one kind with their warning-or-worse findings.
fn with_findings<T: serde::Serialize>(
    items: &[T],
    subject: impl Fn(&T) -> String,
    findings: &[policy::Finding],
) -> Vec<Value> {
    let weak = accounts::findings::weak_by_subject(findings);
    items
        .iter()
        .map(|item| {
            let mine = weak
                .get(subject(item).as_str())
                .cloned()
                .unwrap_or_default();
            let mut v = serde_json::to_value(item).unwrap_or(Value::Null);
            v["weak"] = json!(!mine.is_empty());
            v["findings"] = json!(
                mine.iter()
                    .map(|f| crate::findings::Plain::of(f))
                    .collect::<Vec<_>>()
            );
            v
        })
        .collect()
}

/// `GET /gateways` and `GET /providers`: the list with each account's findings.
async fn trunk_accounts<T: serde::Serialize>(
    web: &Web,
    list: accounts::Result<Vec<T>>,
    kind: &str,
    name: impl Fn(&T) -> &str,
) -> Response {
    match (list, web.findings().await) {
        (Ok(items), Ok(f)) => {
            axum::Json(with_findings(&items, |i| format!("{kind}:{}", name(i)), &f)).into_response()
        }
        (Err(e), _) | (_, Err(e)) => accounts_error(&e),
    }
}

async fn gateways(State(web): State<Web>, Caller(_): Caller) -> Response {
    let list = web.registry.list_gateways().await;
    trunk_accounts(&web, list, "gateway", |g| g.name.as_str()).await
}

async fn providers(State(web): State<Web>, Caller(_): Caller) -> Response {
    let list = web.registry.list_providers().await;
    trunk_accounts(&web, list, "provider", |p| p.name.as_str()).await
}

async fn bans(State(web): State<Web>, Caller(_): Caller) -> Response {
    use crate::timestamp::{iso8601, iso8601_or_null};
    match web.registry.bans(false).await {
        Ok(b) => axum::Json(
            b.iter()
                .map(|b| {
                    json!({
                        "source": b.source, "reason": b.reason, "detail": b.detail,
                        "first_seen": iso8601_or_null(b.first_seen),
                        "last_seen": iso8601_or_null(b.last_seen),
                        // A ban by hand without an end has none.
                        "expires_at": (b.expires_at < accounts::bans::FOREVER)
                            .then(|| iso8601(b.expires_at)),
                        "times": b.times,
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => accounts_error(&e),
    }
}

async fn unban(
    State(web): State<Web>,
    Caller(actor): Caller,
    Path(source): Path<String>,
) -> Response {
    match web.registry.unban(&source).await {
        Ok(stored) => {
            web.log_setting(
                &actor,
                Setting::Ban,
                audit_log::Change::Removed,
                &stored,
                "",
            )
            .await;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => accounts_error(&e),
    }
}

async fn calls(State(web): State<Web>, Caller(_): Caller) -> Response {
    match web.registry.active_calls().await {
        Ok((calls, written_at)) => {
            let calls: Vec<Value> = calls
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id, "caller": c.caller, "callee": c.callee, "kind": c.kind,
                        "trunk": c.trunk, "state": c.state,
                        "started_at": crate::timestamp::iso8601_or_null(c.started_at),
                        "answered_at": crate::timestamp::iso8601_or_null(c.answered_at),
                    })
                })
                .collect();
            axum::Json(
                json!({ "calls": calls, "written_at": crate::timestamp::iso8601_or_null(written_at) }),
            )
            .into_response()
        }
        Err(e) => accounts_error(&e),
    }
}

async fn log(State(web): State<Web>, Caller(_): Caller) -> Response {
    match web.registry.recent_log(500).await {
        Ok(rows) => axum::Json(
            rows.iter()
                .map(|r| {
                    json!({ "id": r.id, "at": crate::timestamp::iso8601(r.at), "actor": r.actor, "action": r.action,
                                  "subject": r.subject, "detail": r.detail })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => accounts_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    name: Option<String>,
    email: Option<String>,
    password: Option<String>,
    pin: Option<String>,
    sip_id: Option<String>,
    auth_id: Option<String>,
    mac: Option<String>,
    model: Option<String>,
    class_of_service: Option<String>,
    transport: Option<String>,
    voicemail_after_secs: Option<u32>,
    voicemail_mail: Option<bool>,
}

async fn update(
    State(web): State<Web>,
    Caller(actor): Caller,
    Path(number): Path<String>,
    Body(c): Body<Change>,
) -> Response {
    let change = accounts::extension::ExtensionChange {
        name: c.name,
        email: c.email,
        password: c.password,
        pin: c.pin,
        sip_id: c.sip_id,
        auth_id: c.auth_id,
        mac: c.mac,
        model: c.model,
        class_of_service: c.class_of_service,
        transport: c.transport,
        voicemail_after_secs: c.voicemail_after_secs.map(|v| v.to_string()),
        voicemail_mail: c.voicemail_mail.map(switch_text),
        ..Default::default()
    };
    let changed = change.given_fields();
    match web.registry.update_extension(&number, change).await {
        Ok(up) => {
            web.log_setting(
                &actor,
                Setting::Extension,
                audit_log::Change::Updated,
                &number,
                &changed,
            )
            .await;
            axum::Json(
                json!({ "extension": up.extension, "findings": plain(&up.findings), "grace": {
                    "sources": up.grace.sources, "provisioning_sources": up.grace.provisioning_sources,
                    "until": up.grace.until.map(crate::timestamp::iso8601),
                } }),
            )
            .into_response()
        }
        Err(e) => accounts_error(&e),
    }
}

async fn resume(
    State(web): State<Web>,
    Caller(actor): Caller,
    Path(number): Path<String>,
) -> Response {
    match web.registry.resume(&number).await {
        Ok(was) => {
            web.log(
                &actor,
                "ext.resumed",
                &format!("ext:{number}"),
                "outbound calling",
            )
            .await;
            axum::Json(json!({ "number": number, "was_suspended": was })).into_response()
        }
        Err(e) => accounts_error(&e),
    }
}

async fn allow_list(State(web): State<Web>, Caller(_): Caller) -> Response {
    match web.registry.allow_list().await {
        Ok(a) => axum::Json(a).into_response(),
        Err(e) => accounts_error(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowChange {
    network: String,
    note: Option<String>,
    remove: Option<bool>,
}

async fn allow_change(
    State(web): State<Web>,
    Caller(actor): Caller,
    Body(c): Body<AllowChange>,
) -> Response {
    if c.remove == Some(true) {
        return match web.registry.disallow(&c.network).await {
            Ok(stored) => {
                web.log_setting(
                    &actor,
                    Setting::Allow,
                    audit_log::Change::Removed,
                    &stored,
                    "",
                )
                .await;
                axum::Json(json!({ "removed": stored })).into_response()
            }
            Err(e) => accounts_error(&e),
        };
    }
    let note = c.note.unwrap_or_default();
    match web.registry.allow(&c.network, &note).await {
        Ok(view) => {
            web.log_setting(
                &actor,
                Setting::Allow,
                audit_log::Change::Added,
                &view.network,
                &view.note,
            )
            .await;
            (StatusCode::CREATED, axum::Json(view)).into_response()
        }
        Err(e) => accounts_error(&e),
    }
}

// Gateways, providers, routes and DIDs: one handler each for add, change and remove,
// told apart by a const parameter (axum needs a concrete function per route).
const GATEWAY: u8 = 0;
const PROVIDER: u8 = 1;
const ROUTE: u8 = 2;
const DID: u8 = 3;

fn item_of<const I: u8>() -> Item {
    match I {
        GATEWAY => Item::Gateway,
        PROVIDER => Item::Provider,
        ROUTE => Item::Route,
        _ => Item::Did,
    }
}

fn refused(e: &Refused) -> Response {
    match e {
        Refused::Input(s) => error(StatusCode::BAD_REQUEST, s.clone()),
        Refused::Accounts(e) => accounts_error(e),
    }
}

/// An item and its findings (titles included), as an add or a change answers.
fn answer(d: &crate::trunks::Done) -> Value {
    json!({ "item": d.view, "findings": plain(&d.findings) })
}

async fn list_items<const I: u8>(State(web): State<Web>, Caller(_): Caller) -> Response {
    match crate::trunks::list(&web, item_of::<I>()).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => accounts_error(&e),
    }
}

async fn add_item<const I: u8>(
    State(web): State<Web>,
    Caller(actor): Caller,
    Body(body): Body<Value>,
) -> Response {
    let item = item_of::<I>();
    let values = match crate::trunks::from_json(item, &body, false) {
        Ok(v) => v,
        Err(e) => return refused(&e),
    };
    match crate::trunks::add(&web, &actor, item, &values).await {
        Ok(d) => (StatusCode::CREATED, axum::Json(answer(&d))).into_response(),
        Err(e) => refused(&e),
    }
}

async fn update_item<const I: u8>(
    State(web): State<Web>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    Body(body): Body<Value>,
) -> Response {
    let item = item_of::<I>();
    let values = match crate::trunks::from_json(item, &body, true) {
        Ok(v) => v,
        Err(e) => return refused(&e),
    };
    match crate::trunks::update(&web, &actor, item, &id, &values).await {
        Ok(d) => axum::Json(answer(&d)).into_response(),
        Err(e) => refused(&e),
    }
}

async fn remove_item<const I: u8>(
    State(web): State<Web>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> Response {
    match crate::trunks::remove(&web, &actor, item_of::<I>(), &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refused(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ban {
    source: String,
    reason: Option<String>,
    /// Absent: until lifted.
    seconds: Option<i64>,
}

/// The longest ban by hand with an end: ten years (longer is "until lifted").
const MAX_BAN_SECS: i64 = 10 * 365 * 86_400;

async fn ban(
    State(web): State<Web>,
    Caller(actor): Caller,
    ClientIp(asker): ClientIp,
    Body(b): Body<Ban>,
) -> Response {
    if b.seconds.is_some_and(|s| !(1..=MAX_BAN_SECS).contains(&s)) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("seconds must be 1 to {MAX_BAN_SECS}, or absent for a ban until lifted"),
        );
    }
    let reason = b.reason.unwrap_or_default();
    match web
        .registry
        .ban(&b.source, &reason, b.seconds, Some(asker))
        .await
    {
        Ok(v) => {
            web.log_setting(
                &actor,
                Setting::Ban,
                audit_log::Change::Added,
                &v.source,
                &reason,
            )
            .await;
            (
                StatusCode::CREATED,
                axum::Json(json!({
                    "source": v.source, "reason": v.reason, "detail": v.detail,
                    "expires_at": (v.expires_at < accounts::bans::FOREVER)
                        .then(|| crate::timestamp::iso8601(v.expires_at)),
                })),
            )
                .into_response()
        }
        Err(e) => accounts_error(&e),
    }
}

async fn guard(State(web): State<Web>, Caller(_): Caller) -> Response {
    match web.registry.guard_view().await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => accounts_error(&e),
    }
}

/// `{"auth_failures": 5, "flood_requests": "off", "ban_secs": null}`: each key set (or
/// back to the file's with `null`), all together or none.
async fn guard_change(
    State(web): State<Web>,
    Caller(actor): Caller,
    Body(body): Body<serde_json::Map<String, Value>>,
) -> Response {
    let mut texts: Vec<(String, Option<String>)> = Vec::with_capacity(body.len());
    for (key, value) in &body {
        let text = match value {
            Value::Null => None,
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::String(s) => Some(s.clone()),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "guard.{key} must be a number, true or false, a word such as off, or null"
                    ),
                );
            }
        };
        texts.push((key.clone(), text));
    }
    if texts.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "name at least one guard setting to change",
        );
    }
    let changes: Vec<(&str, Option<&str>)> = texts
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref()))
        .collect();
    match web.registry.set_guard(&actor, &changes).await {
        Ok(_) => guard(State(web), Caller(actor)).await,
        Err(e) => accounts_error(&e),
    }
}

/// The schema of `PATCH /api/v1/guard`: every setting that can be changed there, each a
/// value or `null` (back to the config file's).
fn guard_change_schema() -> Value {
    let properties: serde_json::Map<String, Value> = accounts::guard_policy::EDITABLE
        .iter()
        .map(|k| {
            let schema = match *k {
                "ban_scanners" => json!({ "type": ["boolean", "null"] }),
                "weak_credentials" => {
                    json!({ "type": ["string", "null"], "enum": ["trusted-only", "allow", null] })
                }
                "flood_requests" | "extension_failures" => {
                    json!({ "type": ["integer", "string", "null"] })
                }
                _ => json!({ "type": ["integer", "null"] }),
            };
            ((*k).to_owned(), schema)
        })
        .collect();
    json!({ "type": "object", "additionalProperties": false, "minProperties": 1,
            "properties": properties })
}
