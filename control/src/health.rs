//! Readiness: whether this server can do its whole job now (its store is
//! open and writable and, with etcd, reachable). `/readyz` on the admin
//! endpoint answers from it, and so does the standard gRPC health service
//! (`grpc.health.v1.Health`) on the main port, which a task keeps current.
//!
//! Liveness stays `/healthz`: a server whose store is away still serves
//! every agent what it has, and restarting it would not bring the store
//! back.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use vane_store::Store;

/// How often the gRPC health service's answer is brought up to date.
pub const HEALTH_REFRESH: Duration = Duration::from_millis(500);

/// The services whose status the gRPC health service reports: the server
/// as a whole (`""`) and each service on the port.
pub const SERVICES: [&str; 3] = ["", "vane.v1.ConfigDiscovery", "vane.v1.Admin"];

/// Why this server is not ready, or `None` when it is.
pub fn not_ready(store: &dyn Store) -> Option<String> {
    let health = store.health();
    health
        .degraded
        .map(|why| format!("store {} ({}): {why}", health.backend, health.location))
}

/// Keeps the gRPC health service's statuses equal to [`not_ready`] until
/// `stop`.
pub async fn report(reporter: HealthReporter, store: Arc<dyn Store>, stop: CancellationToken) {
    let mut last: Option<ServingStatus> = None;
    let mut tick = tokio::time::interval(HEALTH_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let why = not_ready(store.as_ref());
        let status = if why.is_some() {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        if last != Some(status) {
            match &why {
                Some(why) => {
                    tracing::warn!(reason = %why, "not ready: gRPC health says NOT_SERVING")
                }
                None if last.is_some() => tracing::info!("ready again: gRPC health says SERVING"),
                None => {}
            }
            for service in SERVICES {
                reporter.set_service_status(service, status).await;
            }
            last = Some(status);
        }
    }
    // Shutting down: tell watchers of the health service before the port closes.
    for service in SERVICES {
        reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
}
