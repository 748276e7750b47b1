//! The HTTP side of `sipward serve`: health and metrics now; the web console and the
//! JSON API (issue #7) grow here, one file per area, merged in [`router`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use pbx::metrics::Metrics;

pub mod provisioning;

#[derive(Clone, Debug)]
pub struct ConsoleState {
    pub metrics: Arc<Metrics>,
    /// Set once the SIP transports are serving.
    pub ready: Arc<AtomicBool>,
}

/// The HTTP routes; serve them with `into_make_service_with_connect_info::<SocketAddr>`
/// (provisioning counts probes per source address).
pub fn router(state: ConsoleState, prov: provisioning::Provisioning) -> Router {
    let prov = Router::new()
        .route("/prov/{path}/{file}", get(provisioning::serve_file))
        .with_state(prov);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(prov)
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
        s.metrics.render(),
    )
}
