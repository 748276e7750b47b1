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

#[derive(Clone, Debug)]
pub struct ConsoleState {
    pub metrics: Arc<Metrics>,
    /// Set once the SIP transports are serving.
    pub ready: Arc<AtomicBool>,
}

pub fn router(state: ConsoleState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
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
