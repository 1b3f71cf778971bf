//! The store as the server calls it, timed: every operation's latency in
//! `vane_control_store_operation_duration_seconds{operation,backend,result}`,
//! whichever backend (redb or etcd) is behind it. One decorator around
//! `Arc<dyn Store>` instead of timers in each backend, so both are timed
//! the same way and at the same place: as the server waits for them.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use vane_store::agents::AgentDirectory;
use vane_store::{
    AuditRecord, DeleteGroup, Deleted, HeadFeed, NewVersion, Pinned, PruneReport, PushOutcome,
    Retention, RolloutPut, RolloutRecord, Store, StoreError, StoreHealth, VersionMeta,
    VersionRecord,
};

/// Labels: the operation (one per method of `Store`: a fixed set), the
/// backend (`embedded`, `etcd`) and the result (`ok`, `error`).
type OpLabels = [(&'static str, &'static str); 3];

/// Bucket bounds, in seconds: from a cached read (100 µs) to an etcd call
/// at its retry budget (several seconds).
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The latency histograms, shared by the store's wrapper and the registry.
#[derive(Debug, Clone)]
pub struct StoreMetrics(Family<OpLabels, Histogram, fn() -> Histogram>);

impl Default for StoreMetrics {
    fn default() -> Self {
        Self(Family::new_with_constructor(histogram))
    }
}

impl StoreMetrics {
    /// Adds the histograms to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "vane_control_store_operation_duration_seconds",
            "Time the control server waited for its store, per operation (push, get, history, heads, groups, prune, pruned, rollout, rollouts, put_rollout, append_audit, audit, close), backend (embedded, etcd) and result (ok, error)",
            self.0.clone(),
        );
    }
}

/// A store whose every operation is timed into [`StoreMetrics`].
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    backend: &'static str,
    metrics: StoreMetrics,
}

impl MeteredStore {
    /// Times every operation of `inner`.
    pub fn new(inner: Arc<dyn Store>, metrics: StoreMetrics) -> Self {
        let backend = inner.health().backend;
        Self {
            inner,
            backend,
            metrics,
        }
    }

    fn observe<T>(&self, operation: &'static str, start: Instant, r: &Result<T, StoreError>) {
        let result = if r.is_ok() { "ok" } else { "error" };
        self.metrics
            .0
            .get_or_create(&[
                ("operation", operation),
                ("backend", self.backend),
                ("result", result),
            ])
            .observe(start.elapsed().as_secs_f64());
    }
}

/// Runs one operation of the inner store and times it.
macro_rules! timed {
    ($self:ident, $op:literal, $call:expr) => {{
        let start = Instant::now();
        let r = $call.await;
        $self.observe($op, start, &r);
        r
    }};
}

#[async_trait]
impl Store for MeteredStore {
    async fn push(&self, new: NewVersion) -> Result<PushOutcome, StoreError> {
        timed!(self, "push", self.inner.push(new))
    }

    async fn get(
        &self,
        group: &str,
        version: Option<u64>,
    ) -> Result<Option<VersionRecord>, StoreError> {
        timed!(self, "get", self.inner.get(group, version))
    }

    async fn history(&self, group: &str, limit: usize) -> Result<Vec<VersionMeta>, StoreError> {
        timed!(self, "history", self.inner.history(group, limit))
    }

    async fn heads(&self) -> Result<Vec<VersionRecord>, StoreError> {
        timed!(self, "heads", self.inner.heads())
    }

    async fn groups(&self) -> Result<Vec<String>, StoreError> {
        timed!(self, "groups", self.inner.groups())
    }

    async fn prune(
        &self,
        retention: Retention,
        pinned: &Pinned,
    ) -> Result<PruneReport, StoreError> {
        timed!(self, "prune", self.inner.prune(retention, pinned))
    }

    async fn pruned(&self, group: &str) -> Result<u64, StoreError> {
        timed!(self, "pruned", self.inner.pruned(group))
    }

    async fn rollout(&self, group: &str) -> Result<Option<RolloutRecord>, StoreError> {
        timed!(self, "rollout", self.inner.rollout(group))
    }

    async fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        timed!(self, "rollouts", self.inner.rollouts())
    }

    async fn put_rollout(&self, group: &str, put: RolloutPut) -> Result<RolloutRecord, StoreError> {
        timed!(self, "put_rollout", self.inner.put_rollout(group, put))
    }

    async fn append_audit(&self, entries: Vec<AuditRecord>) -> Result<(), StoreError> {
        timed!(self, "append_audit", self.inner.append_audit(entries))
    }

    async fn audit(
        &self,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        timed!(self, "audit", self.inner.audit(group, limit))
    }

    async fn delete_group(&self, delete: DeleteGroup) -> Result<Deleted, StoreError> {
        timed!(self, "delete_group", self.inner.delete_group(delete))
    }

    async fn tombstones(&self) -> Result<Vec<(String, u64)>, StoreError> {
        timed!(self, "tombstones", self.inner.tombstones())
    }

    async fn close(&self) -> Result<(), StoreError> {
        timed!(self, "close", self.inner.close())
    }

    fn health(&self) -> StoreHealth {
        self.inner.health()
    }

    fn feed(&self) -> Option<HeadFeed> {
        self.inner.feed()
    }

    fn agent_directory(&self) -> Option<Arc<dyn AgentDirectory>> {
        self.inner.agent_directory()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn operations_are_timed_by_name_backend_and_result() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> =
            Arc::new(vane_store::RedbStore::open(dir.path()).await.unwrap());
        let metrics = StoreMetrics::default();
        let store = MeteredStore::new(inner, metrics.clone());
        assert!(store.get("edge", None).await.unwrap().is_none());
        store.groups().await.unwrap();
        store.close().await.unwrap();
        assert!(store.get("edge", None).await.is_err());
        let mut r = Registry::default();
        metrics.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for line in [
            r#"vane_control_store_operation_duration_seconds_count{operation="get",backend="embedded",result="ok"} 1"#,
            r#"vane_control_store_operation_duration_seconds_count{operation="get",backend="embedded",result="error"} 1"#,
            r#"vane_control_store_operation_duration_seconds_count{operation="groups",backend="embedded",result="ok"} 1"#,
        ] {
            assert!(text.contains(line), "no {line} in:\n{text}");
        }
    }
}
