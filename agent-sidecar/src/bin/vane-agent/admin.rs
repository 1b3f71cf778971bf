//! The sidecar's admin endpoint: `GET /status` (JSON), `/healthz`,
//! `/readyz`, `/metrics` and `/config` (see `config_http`).
//!
//! - `/healthz`: liveness. 200 while the process serves and its tasks run
//!   (the agent's watch loop, the on-change and health-command tasks), 503
//!   naming the task that stopped. Its body states what `/status` states:
//!   `alive: <state>[: <reason>]; version <N> (<source>)`, so a degraded
//!   agent is alive but never says a bare "ok".
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
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::AbortHandle;
use vane_admin_http::ConnHold;
use vane_agent::{AgentHandle, HealthState, Source};

use crate::config_http::{ConfigState, MAX_WAITERS, get_config};

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
    tasks: Arc<[(&'static str, AbortHandle)]>,
    config: ConfigState,
}

impl FromRef<AppState> for ConfigState {
    fn from_ref(s: &AppState) -> Self {
        s.config.clone()
    }
}

/// Serves the admin endpoint until `stop`; `tasks` are the sidecar's own
/// tasks whose end `/healthz` reports.
pub(crate) async fn serve(
    listener: TcpListener,
    agent: AgentHandle,
    tasks: Vec<(&'static str, AbortHandle)>,
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
    let config = ConfigState {
        group: agent.config().group.clone(),
        agent: agent.clone(),
        waiters: Arc::new(Semaphore::new(MAX_WAITERS)),
        stop: stop.clone(),
    };
    let state = AppState {
        agent,
        registry: Arc::new(registry),
        tasks: tasks.into(),
        config,
    };
    let app = Router::new()
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .route("/config", get(get_config))
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
    // `ConnHold`: a `/config` long poll holds its connection's deadline off
    // for its wait.
    if let Err(e) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<ConnHold>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn status(State(s): State<AppState>) -> impl IntoResponse {
    axum::Json(s.agent.status())
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let stopped = std::iter::once(("the agent's watch loop", s.agent.is_running()))
        .chain(s.tasks.iter().map(|(name, t)| (*name, !t.is_finished())))
        .find(|(_, running)| !running);
    if let Some((name, _)) = stopped {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not alive: {name} stopped\n"),
        );
    }
    let h = s.agent.health();
    let state = match &h.state {
        HealthState::Healthy => "healthy".to_owned(),
        HealthState::Degraded { reason } => format!("degraded: {reason}"),
    };
    (
        StatusCode::OK,
        format!(
            "alive: {state}; version {} ({})\n",
            h.version,
            h.source.as_str()
        ),
    )
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
