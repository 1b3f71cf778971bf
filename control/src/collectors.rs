//! Metrics read at scrape time from state other parts own: the store's
//! health, the accept loop's refusals and the audit log's losses. Kept
//! apart from those parts so none of them depends on Prometheus wiring.

use std::sync::Arc;

use vane_store::Store;

use crate::accept::ConnCounters;
use crate::audit::AuditLog;
use crate::rollout::driver::Rollouts;

/// The store's health for Prometheus, read at scrape time:
/// `vane_control_store_degraded{backend}` is 1 while the store is read-only
/// (etcd unreachable, a full disk), else 0.
pub struct HealthCollector(pub Arc<dyn Store>);

impl std::fmt::Debug for HealthCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HealthCollector").finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for HealthCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let health = self.0.health();
        let mut metric = encoder.encode_descriptor(
            "vane_control_store_degraded",
            "1 while the store cannot be written (etcd unreachable, a full disk, the embedded file being reopened): streams go on with the last known snapshots and pushes fail",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        let labels = [("backend", health.backend)];
        prometheus_client::metrics::gauge::ConstGauge::new(i64::from(health.degraded.is_some()))
            .encode(metric.encode_family(&labels)?)
    }
}

/// The security counters for Prometheus, read at scrape time:
/// `vane_control_connections_refused_total{reason}` (`max_connections`,
/// `max_per_identity`, `handshake`) and
/// `vane_control_audit_entries_lost_total{reason}` (`queue_full`,
/// `store_failed`).
pub struct SecurityCollector {
    /// The accept loop's counters.
    pub connections: Arc<ConnCounters>,
    /// The audit log.
    pub audit: Arc<AuditLog>,
}

impl std::fmt::Debug for SecurityCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityCollector").finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for SecurityCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;

        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        let c = &self.connections;
        let mut metric = encoder.encode_descriptor(
            "vane_control_connections_refused",
            "Connections closed by the accept loop: over --max-connections, over --max-connections-per-identity, or a TLS handshake that failed or timed out (plaintext: silent past the timeout)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, n) in [
            ("max_connections", c.over_max.load(Relaxed)),
            ("max_per_identity", c.over_identity.load(Relaxed)),
            ("handshake", c.handshake_failed.load(Relaxed)),
        ] {
            ConstCounter::new(n).encode(metric.encode_family(&[("reason", reason)])?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "vane_control_audit_entries_lost",
            "Audit entries not recorded: refusals dropped because the audit queue was full, or entries the store failed to write",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, n) in [
            ("queue_full", self.audit.dropped()),
            ("store_failed", self.audit.failed()),
        ] {
            ConstCounter::new(n).encode(metric.encode_family(&[("reason", reason)])?)?;
        }
        Ok(())
    }
}

/// Rollouts for Prometheus, read at scrape time:
/// `vane_control_rollout_state{group}` (the `vane.v1.RolloutState` number:
/// 1 PROGRESSING, 2 BAKING, 3 PAUSED, 4 ABORTING, 5 COMPLETE, 6
/// ROLLED_BACK, 7 SUPERSEDED) and `vane_control_rollout_step{group}` (the
/// current step, from 1), of each group's current or last rollout.
pub struct RolloutCollector(pub Arc<Rollouts>);

impl std::fmt::Debug for RolloutCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RolloutCollector").finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for RolloutCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let all = self.0.all();
        let mut state = encoder.encode_descriptor(
            "vane_control_rollout_state",
            "State of the group's current or last rollout: 1 PROGRESSING, 2 BAKING, 3 PAUSED, 4 ABORTING, 5 COMPLETE, 6 ROLLED_BACK, 7 SUPERSEDED",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for known in &all {
            let labels = [("group", known.rollout.group.as_str())];
            prometheus_client::metrics::gauge::ConstGauge::new(known.rollout.state.wire() as i64)
                .encode(state.encode_family(&labels)?)?;
        }
        let mut step = encoder.encode_descriptor(
            "vane_control_rollout_step",
            "Current step (from 1) of the group's current or last rollout",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for known in &all {
            let labels = [("group", known.rollout.group.as_str())];
            prometheus_client::metrics::gauge::ConstGauge::new(
                i64::try_from(known.rollout.step + 1).unwrap_or(i64::MAX),
            )
            .encode(step.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
