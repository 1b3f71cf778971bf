//! The sidecar's admin endpoint: `GET /status` (JSON), `/healthz`,
//! `/readyz`, `/metrics`.
//!
//! - `/healthz`: liveness, 200 while the process serves.
//! - `/readyz`: 200 once the agent serves a configuration (live, or from its
//!   cache), 503 while it serves the embedded defaults or nothing.
//!
//! At most [`MAX_CONNECTIONS`] connections are open at once (more are
//! accepted and closed at once), and each must send a whole request within
//! [`REQUEST_TIMEOUT`] of connecting or of its previous answer, or it is
//! closed, so idle and slowloris clients cannot hold the port (or stall the
//! graceful shutdown, which waits for open connections).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use vane_agent::{AgentHandle, HealthState, Source};

/// Most admin connections open at once: scrapes and health checks need a
/// handful.
const MAX_CONNECTIONS: usize = vane_admin_http::DEFAULT_MAX_CONNECTIONS;
/// How long a client has to send a whole request, after connecting or after
/// its previous answer (so also the keep-alive idle timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct AppState {
    agent: AgentHandle,
    registry: Arc<Registry>,
}

pub(crate) async fn serve(
    listener: TcpListener,
    agent: AgentHandle,
    mut stop: watch::Receiver<bool>,
) {
    let mut registry = Registry::default();
    agent.register_metrics(&mut registry);
    vane_admin_http::process::register_process_and_build(&mut registry);
    crate::counters::register(&mut registry);
    let (refused, timed_out) = (Counter::default(), Counter::default());
    registry.register(
        "vane_agent_admin_connections_refused",
        "Admin-endpoint connections closed at once because the endpoint was at its connection cap",
        refused.clone(),
    );
    registry.register(
        "vane_agent_admin_connections_timed_out",
        "Admin-endpoint connections closed because a request was not complete (or the connection idle) in time",
        timed_out.clone(),
    );
    let state = AppState {
        agent,
        registry: Arc::new(registry),
    };
    let app = Router::new()
        .route("/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let listener = vane_admin_http::GuardedListener::new(
        listener,
        MAX_CONNECTIONS,
        REQUEST_TIMEOUT,
        refused,
        timed_out,
    );
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

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let current = s.agent.current();
    match current.source {
        Source::Live | Source::Cache => (
            StatusCode::OK,
            format!(
                "ready: serving version {} ({})\n",
                current.version,
                current.source.as_str()
            ),
        ),
        // Defaults are what to serve when there is nothing better, not a
        // configuration this node was given.
        Source::Defaults => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {}\n",
                match s.agent.health().state {
                    HealthState::Degraded { reason } => reason,
                    HealthState::Healthy => "serving the embedded defaults".to_owned(),
                }
            ),
        ),
    }
}

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    // Refreshes the staleness and health gauges.
    let _ = s.agent.health();
    vane_admin_http::exposition::respond(
        &headers,
        Ok(vane_agent::status::render_metrics(&s.registry)),
    )
}
