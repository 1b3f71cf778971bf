//! The admin endpoint (`--admin-listen`): liveness, readiness, the agent's
//! status, the running configuration and Prometheus metrics. It runs on its
//! own socket, never on a data-plane listener.
//!
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /readyz`: 200 once a configuration (live, cached or defaults) is
//!   active, 503 before and during shutdown.
//! - `GET /status`: the agent's status JSON (the agent's contract).
//! - `GET /config_dump`: the configuration the data plane runs: `version`,
//!   `hash`, `source`, `applied_at_unix_ms`, the bound `listeners`, and the
//!   `snapshot` in its canonical JSON form.
//! - `GET /metrics`: OpenMetrics text (data plane and agent).
//!
//! At most [`MAX_CONNECTIONS`] connections are open at once (more are
//! accepted and closed at once), and each must send a whole request within
//! `--header-read-timeout` of connecting or of its previous answer, or it is
//! closed: idle and slowloris clients cannot hold the port (see
//! `vane_admin_http`).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::proxy::ProxyHandle;

/// Most admin connections open at once. Health checks and scrapes need a
/// handful; the cap keeps a flood of them from taking file descriptors the
/// data plane needs.
pub const MAX_CONNECTIONS: usize = vane_admin_http::DEFAULT_MAX_CONNECTIONS;

/// Serves the admin endpoint on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    proxy: ProxyHandle,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let shared = proxy.shared();
    let listener = vane_admin_http::GuardedListener::new(
        listener,
        MAX_CONNECTIONS,
        shared.config.header_read_timeout,
        shared.metrics.admin_refused.clone(),
        shared.metrics.admin_timeouts.clone(),
    );
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/config_dump", get(config_dump))
        .route("/metrics", get(metrics))
        .with_state(proxy);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

async fn readyz(State(p): State<ProxyHandle>) -> impl IntoResponse {
    if p.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no configuration loaded yet, or shutting down\n",
        )
    }
}

async fn status(State(p): State<ProxyHandle>) -> impl IntoResponse {
    axum::Json(p.agent().status())
}

async fn config_dump(State(p): State<ProxyHandle>) -> impl IntoResponse {
    let running = p.running();
    let applied_at = running
        .applied_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let listeners: Vec<_> = p
        .listener_addresses()
        .into_iter()
        .map(|(name, address)| json!({ "name": name, "address": address.to_string() }))
        .collect();
    axum::Json(json!({
        "version": running.version,
        "hash": running.hash,
        "source": running.source.as_str(),
        "applied_at_unix_ms": applied_at,
        "listeners": listeners,
        "snapshot": shown_snapshot(&running.snapshot),
    }))
}

/// The running snapshot as JSON, private keys as their fingerprints: the
/// admin port has no authentication, so it never shows a key.
fn shown_snapshot(snapshot: &vane_model::Snapshot) -> serde_json::Value {
    if !snapshot.has_private_keys() {
        return snapshot.to_json();
    }
    let mut shown = snapshot.clone();
    vane_model::redact::redact_snapshot(&mut shown);
    shown.to_json()
}

async fn metrics(State(p): State<ProxyHandle>, headers: HeaderMap) -> impl IntoResponse {
    vane_admin_http::exposition::respond(&headers, Ok(p.render_metrics()))
}
