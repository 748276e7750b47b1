//! The HTTP side of `sipward serve`: health and metrics, phone provisioning, the web
//! console and the JSON API, one file per area, merged in [`router`] behind the
//! [`entry`] checks (client address, Host, allow list, deadline), served by
//! [`listener`] under per-source connection caps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use accounts::running::RunningServer;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

pub mod admin;
pub mod api;
pub mod client;
pub mod entry;
pub mod findings;
pub mod listener;
pub mod pages;
pub mod provisioning;
pub mod snapshot;
pub mod timestamp;
pub mod trends;
pub mod trunks;
pub mod voicemail;
pub mod web;

#[derive(Clone, Debug)]
pub struct ConsoleState {
    /// The SIP server running in this process.
    pub server: Arc<dyn RunningServer>,
    /// Set once the SIP transports are serving.
    pub ready: Arc<AtomicBool>,
    /// The HTTP side's own counters (appended to `/metrics`).
    pub http: Arc<entry::Counters>,
}

/// The HTTP routes behind the [`entry`] checks; serve them with [`listener::serve`]
/// (every request needs `ConnectInfo<SocketAddr>`: the client address comes from it).
pub fn router(
    state: ConsoleState,
    prov: provisioning::Provisioning,
    web: web::Web,
    entry: entry::Entry,
) -> Router {
    let prov = Router::new()
        .route("/prov/{path}/{file}", get(provisioning::serve_file))
        .with_state(prov);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(prov)
        .merge(web::routes(web.clone()))
        .merge(pages::routes(web.clone()))
        .merge(trunks::routes(web.clone()))
        .merge(voicemail::routes(web.clone()))
        .merge(api::routes(web))
        .layer(axum::middleware::from_fn_with_state(entry, entry::check))
}

async fn healthz(State(s): State<ConsoleState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn metrics(State(s): State<ConsoleState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.server.metrics_text() + &s.http.render(),
    )
}
