//! [`EtcdAgents`]: agents' records in etcd, bound to this replica's lease,
//! so a dead replica's agents expire with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{GetOptions, PutOptions, Txn, TxnOp};
use prost::Message as _;
use tokio::time::Instant;
use vane_store::StoreError;
use vane_store::agents::{AgentChange, AgentDirectory, SharedAgent};

use crate::failure::*;
use crate::layout::*;
use crate::shared::*;

/// Agents' records in etcd, bound to this replica's lease.
pub struct EtcdAgents {
    pub(crate) shared: Arc<Shared>,
    /// The current lease (0: none yet, or lost) and its epoch. Held across
    /// the calls that grant or use it, so one replica has one lease.
    pub(crate) lease: tokio::sync::Mutex<(i64, u64)>,
    /// The current lease id, for readers that must not wait for a write.
    pub(crate) lease_id: AtomicI64,
    pub(crate) epochs: AtomicU64,
}

impl EtcdAgents {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            lease: tokio::sync::Mutex::new((0, 0)),
            lease_id: AtomicI64::new(0),
            epochs: AtomicU64::new(0),
        }
    }

    /// The current lease, granting one if there is none.
    pub(crate) async fn lease(&self, current: &mut (i64, u64)) -> Result<(i64, u64), StoreError> {
        if current.0 != 0 {
            return Ok(*current);
        }
        let sh = &self.shared;
        let ttl = i64::try_from(sh.config.lease_ttl.as_secs()).unwrap_or(i64::MAX);
        let mut lease_client = sh.client.lease_client();
        let granted =
            tokio::time::timeout(sh.config.request_timeout, lease_client.grant(ttl, None))
                .await
                .map_err(|_| StoreError::Degraded(sh.unreachable(sh.config.request_timeout, None)))?
                .map_err(|e| {
                    StoreError::Degraded(format!("granting a lease: {}", sh.explain(&e)))
                })?;
        let epoch = self.epochs.fetch_add(1, Ordering::AcqRel) + 1;
        *current = (granted.id(), epoch);
        self.lease_id.store(granted.id(), Ordering::Release);
        tracing::info!(
            lease = format!("{:016x}", granted.id()),
            ttl,
            "agent records bound to a new lease"
        );
        Ok(*current)
    }
}

#[async_trait]
impl AgentDirectory for EtcdAgents {
    async fn publish(&self, changes: &[AgentChange]) -> Result<u64, StoreError> {
        let sh = &self.shared;
        sh.check_open()?;
        let mut current = self.lease.lock().await;
        let (lease, epoch) = self.lease(&mut current).await?;
        let deadline = sh.deadline();
        for batch in changes.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = batch
                .iter()
                .map(|change| match change {
                    AgentChange::Put(agent) => TxnOp::put(
                        sh.keys
                            .agent(&agent.record.group, &agent.record.node_id, lease),
                        StoredAgent::from(&**agent).encode_to_vec(),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    AgentChange::Delete { group, node_id } => {
                        TxnOp::delete(sh.keys.agent(group, node_id, lease), None)
                    }
                })
                .collect();
            let result = sh
                .call(deadline, |mut kv| {
                    let txn = Txn::new().and_then(ops.clone());
                    async move { kv.txn(txn).await }
                })
                .await;
            match result {
                Ok(_) => {}
                Err(Failure::Refused(e)) if e.contains("lease not found") => {
                    // Expired while etcd was away: the next call binds the
                    // records to a new lease (and the caller rewrites all).
                    *current = (0, epoch);
                    return Err(StoreError::Degraded(format!(
                        "this replica's lease expired: {e}"
                    )));
                }
                Err(f) => return Err(sh.read_error(f)),
            }
        }
        Ok(epoch)
    }

    async fn renew(&self) -> Result<u64, StoreError> {
        let sh = &self.shared;
        sh.check_open()?;
        let mut current = self.lease.lock().await;
        let (lease, epoch) = self.lease(&mut current).await?;
        let mut lease_client = sh.client.lease_client();
        // `keep_alive` sends one renewal and waits for its answer, failing
        // when the lease is gone; the stream it opens is dropped at once.
        let kept =
            tokio::time::timeout(sh.config.request_timeout, lease_client.keep_alive(lease)).await;
        match kept {
            Ok(Ok(_)) => Ok(epoch),
            Ok(Err(e)) if describe(&e).contains("lease not found") => {
                *current = (0, epoch);
                self.lease(&mut current).await.map(|(_, e)| e)
            }
            Ok(Err(e)) => Err(StoreError::Degraded(format!(
                "renewing the lease: {}",
                sh.explain(&e)
            ))),
            Err(_) => Err(StoreError::Degraded(
                sh.unreachable(sh.config.request_timeout, None),
            )),
        }
    }

    fn renew_every(&self) -> Duration {
        // A third of the TTL: two renewals may fail before the lease expires.
        self.shared.config.lease_ttl / 3
    }

    async fn others(&self, group: Option<&str>) -> Result<Vec<SharedAgent>, StoreError> {
        let sh = &self.shared;
        sh.check_open()?;
        let own = format!("/{:016x}", self.lease_id.load(Ordering::Acquire));
        let prefix = sh.keys.agents(group);
        let deadline = Instant::now() + AGENTS_READ_TIMEOUT.min(sh.config.request_timeout);
        let resp = sh
            .call(deadline, |mut kv| {
                let prefix = prefix.clone();
                async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await
            .map_err(|f| match f {
                Failure::TimedOut(last) => StoreError::Degraded(sh.unreachable(
                    AGENTS_READ_TIMEOUT.min(sh.config.request_timeout),
                    last.as_deref(),
                )),
                Failure::Refused(e) => StoreError::Io(format!("etcd refused a read: {e}")),
                Failure::Rejected(reason) => StoreError::Degraded(sh.rejected(&reason)),
            })?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            if kv.key().ends_with(own.as_bytes()) {
                continue;
            }
            match StoredAgent::decode(kv.value()) {
                Ok(agent) => out.push(SharedAgent::from(agent)),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an agent record that does not decode")
                }
            }
        }
        Ok(out)
    }

    async fn withdraw(&self) -> Result<(), StoreError> {
        let sh = &self.shared;
        let mut current = self.lease.lock().await;
        let lease = current.0;
        if lease == 0 {
            return Ok(());
        }
        *current = (0, current.1);
        self.lease_id.store(0, Ordering::Release);
        let mut lease_client = sh.client.lease_client();
        tokio::time::timeout(sh.config.request_timeout, lease_client.revoke(lease))
            .await
            .map_err(|_| StoreError::Degraded(sh.unreachable(sh.config.request_timeout, None)))?
            .map_err(|e| StoreError::Degraded(format!("revoking the lease: {}", sh.explain(&e))))?;
        Ok(())
    }
}
