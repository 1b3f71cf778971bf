//! The sidecar's admin endpoint: `GET /status` (JSON), `/healthz`, `/metrics`.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::sync::watch;
use vane_agent::AgentHandle;

#[derive(Clone)]
struct AppState {
    agent: AgentHandle,
    registry: Arc<Registry>,
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    agent: AgentHandle,
    mut stop: watch::Receiver<bool>,
) {
    let mut registry = Registry::default();
    agent.register_metrics(&mut registry);
    let state = AppState {
        agent,
        registry: Arc::new(registry),
    };
    let app = Router::new()
        .route("/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(state);
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn status(State(s): State<AppState>) -> impl IntoResponse {
    axum::Json(s.agent.status())
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    // Refreshes the staleness and health gauges.
    let _ = s.agent.health();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        vane_agent::status::render_metrics(&s.registry),
    )
}
