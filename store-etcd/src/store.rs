//! [`EtcdStore`]: connecting, and the [`Store`] operations on etcd
//! (reads, history, audit, health); pushes are in `push.rs`, rollout
//! records in `rollouts.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{ConnectOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use tokio::time::Instant;
use vane_store::agents::AgentDirectory;
use vane_store::{
    AUDIT_RETENTION, AuditRecord, DeleteGroup, Deleted, HeadFeed, NewVersion, Pinned, PruneReport,
    PushOutcome, Retention, RolloutPut, RolloutRecord, Store, StoreError, StoreHealth, VersionMeta,
    VersionRecord, decode_audit, encode_audit,
};

use crate::agents::*;
use crate::config::EtcdConfig;
use crate::connect::*;
use crate::feed::*;
use crate::layout::*;
use crate::shared::*;

/// The etcd store. Open it with [`EtcdStore::connect`].
pub struct EtcdStore {
    pub(crate) shared: Arc<Shared>,
    pub(crate) agents: Arc<EtcdAgents>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.shared.config.endpoints)
            .field("prefix", &self.shared.config.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to etcd, checks (or writes, on first use) the layout version
    /// under the prefix, and fails if etcd does not answer within
    /// `request_timeout`.
    pub async fn connect(mut config: EtcdConfig) -> Result<Self, StoreError> {
        config.prefix = config.prefix.trim_end_matches('/').to_owned();
        if config.endpoints.is_empty() {
            return Err(StoreError::Io(
                "etcd endpoints: at least one URL is required".into(),
            ));
        }
        if config.prefix.is_empty() {
            return Err(StoreError::Io(
                "etcd prefix: must not be empty or \"/\"".into(),
            ));
        }
        check_schemes(&config.endpoints, config.tls.is_some())?;
        if config.request_timeout.is_zero() || config.lease_ttl < Duration::from_secs(2) {
            return Err(StoreError::Io(
                "etcd timeouts: the request timeout must be above zero and the lease TTL at least 2s"
                    .into(),
            ));
        }
        let mut options = ConnectOptions::new()
            // Fail (and retry elsewhere) on a member cut off from its
            // cluster, rather than hang or read stale data there.
            .with_require_leader(true)
            .with_connect_timeout(config.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls.options(config.request_timeout));
        }
        if let Some(auth) = &config.auth {
            // etcd's tokens expire (5 minutes by default): the client
            // authenticates again when a call is refused for that.
            options = options
                .with_user(auth.user(), auth.password())
                .with_auto_token_refresh(true);
        }
        let client = connect_client(&config, options).await?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let shared = Arc::new(Shared {
            keys: Keys {
                prefix: config.prefix.clone(),
            },
            config,
            client,
            kv,
            closed: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            link: Mutex::new(Link::default()),
            groups: Mutex::new(HashMap::new()),
            audit_appends: AtomicU64::new(0),
            own_bodies: Mutex::new(VecDeque::new()),
            body_reads: AtomicU64::new(0),
        });
        check_schema(&shared).await?;
        shared.connected.store(true, Ordering::Release);
        tracing::info!(
            endpoints = %shared.endpoints(),
            prefix = %shared.config.prefix,
            "etcd store connected"
        );
        if let Some(endpoint) = shared
            .config
            .endpoints
            .iter()
            .find(|e| plaintext_beyond_loopback(e))
        {
            tracing::warn!(
                endpoint = %endpoint,
                password = shared.config.auth.is_some(),
                "etcd over plaintext beyond this host: whoever is on the path can read every \
                 version (and the etcd password, if any) and write what agents run; use \
                 https:// with --etcd-ca"
            );
        }
        Ok(Self {
            agents: Arc::new(EtcdAgents::new(Arc::clone(&shared))),
            shared,
        })
    }
}

/// Creates `<prefix>/schema` on first use; refuses another layout version.
impl EtcdStore {
    /// Deletes the oldest audit entries beyond [`AUDIT_RETENTION`].
    pub(crate) async fn prune_audit(&self) -> Result<(), StoreError> {
        let sh = &self.shared;
        let prefix = sh.keys.audit(None);
        let counted = sh
            .call(sh.deadline(), |mut kv| {
                let prefix = prefix.clone();
                let options = GetOptions::new().with_prefix().with_count_only();
                async move { kv.get(prefix, Some(options)).await }
            })
            .await
            .map_err(|f| sh.read_error(f))?;
        let excess = usize::try_from(counted.count())
            .unwrap_or(0)
            .saturating_sub(AUDIT_RETENTION);
        if excess == 0 {
            return Ok(());
        }
        let oldest = sh
            .call(sh.deadline(), |mut kv| {
                let prefix = prefix.clone();
                let options = GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_sort(SortTarget::Create, SortOrder::Ascend)
                    .with_limit(i64::try_from(excess.min(10_000)).unwrap_or(10_000));
                async move { kv.get(prefix, Some(options)).await }
            })
            .await
            .map_err(|f| sh.read_error(f))?;
        let keys: Vec<Vec<u8>> = oldest.kvs().iter().map(|kv| kv.key().to_vec()).collect();
        for chunk in keys.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::delete(k.clone(), None))
                .collect();
            sh.call(sh.deadline(), |mut kv| {
                let txn = Txn::new().and_then(ops.clone());
                async move { kv.txn(txn).await }
            })
            .await
            .map_err(|f| sh.push_error(f, true))?;
        }
        tracing::debug!(pruned = keys.len(), "audit log pruned");
        Ok(())
    }

    /// Every head key, decoded, with its group: live heads and the
    /// tombstones of deleted groups (`groups` and `tombstones` tell them
    /// apart).
    async fn head_keys(&self) -> Result<Vec<(String, HeadValue)>, StoreError> {
        let sh = &self.shared;
        sh.check_open()?;
        let prefix = sh.keys.heads();
        let resp = sh.read_prefix(&prefix).await?;
        let mut heads = Vec::new();
        for kv in resp.kvs() {
            let Some(group) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(&prefix))
            else {
                continue;
            };
            heads.push((group.to_owned(), decode_head(group, kv.value())?));
        }
        Ok(heads)
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn push(&self, new: NewVersion) -> Result<PushOutcome, StoreError> {
        self.shared.check_open()?;
        check_group(&new.group)?;
        let lock = self.shared.group_lock(&new.group);
        let queued_at = Instant::now();
        let mut last_failure = lock.lock().await;
        if let Some(failed_at) = *last_failure
            && failed_at >= queued_at
        {
            // The push ahead of this one just found etcd unreachable: fail
            // fast rather than wait out another timeout per queued push.
            return Err(StoreError::Degraded(format!(
                "{}; nothing was stored",
                self.shared.link().calls.clone().unwrap_or_else(|| self
                    .shared
                    .unreachable(self.shared.config.request_timeout, None))
            )));
        }
        let outcome = self.push_locked(new).await;
        *last_failure = match &outcome {
            Err(StoreError::Degraded(_)) => Some(Instant::now()),
            _ => None,
        };
        outcome
    }

    async fn get(
        &self,
        group: &str,
        version: Option<u64>,
    ) -> Result<Option<VersionRecord>, StoreError> {
        let sh = &self.shared;
        sh.check_open()?;
        check_group(group)?;
        let deadline = sh.deadline();
        let version = match version {
            Some(v) => v,
            None => {
                let key = sh.keys.head(group);
                let resp = sh
                    .call(deadline, |mut kv| {
                        let key = key.clone();
                        async move { kv.get(key, None).await }
                    })
                    .await
                    .map_err(|f| sh.read_error(f))?;
                match resp.kvs().first().map(|kv| decode_head(group, kv.value())) {
                    Some(Ok(head)) if !head.deleted => head.version,
                    Some(Err(e)) => return Err(e),
                    _ => return Ok(None),
                }
            }
        };
        if version == 0 {
            return Ok(None);
        }
        sh.read_record(group, version, deadline).await
    }

    async fn history(&self, group: &str, limit: usize) -> Result<Vec<VersionMeta>, StoreError> {
        let sh = &self.shared;
        sh.check_open()?;
        check_group(group)?;
        let prefix = sh.keys.versions_of(group);
        let limit = i64::try_from(limit).unwrap_or(0);
        let resp = sh
            .call(sh.deadline(), |mut kv| {
                let prefix = prefix.clone();
                let options = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(limit);
                async move { kv.get(prefix, Some(options)).await }
            })
            .await
            .map_err(|f| sh.read_error(f))?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let (_, version) = sh.keys.parse_version(kv.key()).ok_or_else(|| {
                StoreError::Corrupt(format!("group {group:?}: malformed version key"))
            })?;
            let stored = decode_version(group, version, kv.value())?;
            let info = stored.info.ok_or_else(|| missing(group, version, "info"))?;
            out.push(VersionMeta {
                candidate: candidate_of(&info),
                group: group.to_owned(),
                version,
                hash: info.hash,
                message: info.message,
                author: info.author,
                created_at_unix_ms: info.created_at_unix_ms,
                rollback_of: (info.rollback_of != 0).then_some(info.rollback_of),
                size_bytes: info.size_bytes,
            });
        }
        Ok(out)
    }

    async fn prune(
        &self,
        retention: Retention,
        pinned: &Pinned,
    ) -> Result<PruneReport, StoreError> {
        self.prune_versions(retention, pinned).await
    }

    async fn pruned(&self, group: &str) -> Result<u64, StoreError> {
        check_group(group)?;
        self.pruned_count(group).await
    }

    async fn rollout(&self, group: &str) -> Result<Option<RolloutRecord>, StoreError> {
        self.read_rollout(group).await
    }

    async fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        self.read_rollouts().await
    }

    async fn put_rollout(&self, group: &str, put: RolloutPut) -> Result<RolloutRecord, StoreError> {
        self.write_rollout(group, put).await
    }

    async fn heads(&self) -> Result<Vec<VersionRecord>, StoreError> {
        self.shared.check_open()?;
        Ok(self.shared.read_heads().await?.records)
    }

    async fn groups(&self) -> Result<Vec<String>, StoreError> {
        // A tombstone is not a group.
        let mut groups: Vec<String> = self
            .head_keys()
            .await?
            .into_iter()
            .filter(|(_, head)| !head.deleted)
            .map(|(group, _)| group)
            .collect();
        groups.sort();
        Ok(groups)
    }

    async fn delete_group(&self, delete: DeleteGroup) -> Result<Deleted, StoreError> {
        self.shared.check_open()?;
        check_group(&delete.group)?;
        let lock = self.shared.group_lock(&delete.group);
        let _held = lock.lock().await;
        self.delete_locked(delete).await
    }

    async fn tombstones(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out: Vec<(String, u64)> = self
            .head_keys()
            .await?
            .into_iter()
            .filter(|(_, head)| head.deleted)
            .map(|(group, head)| (group, head.version))
            .collect();
        out.sort();
        Ok(out)
    }

    async fn append_audit(&self, entries: Vec<AuditRecord>) -> Result<(), StoreError> {
        let sh = &self.shared;
        sh.check_open()?;
        let count = entries.len() as u64;
        for chunk in entries.chunks(MAX_TXN_OPS) {
            // Keys sort by time within a group; the random part keeps two
            // replicas' entries of the same millisecond apart.
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|e| {
                    let key = format!(
                        "{}{:013}-{:016x}",
                        sh.keys.audit(Some(&e.group)),
                        e.at_unix_ms.max(0),
                        rand::random::<u64>()
                    );
                    TxnOp::put(key, encode_audit(e), None)
                })
                .collect();
            sh.call(sh.deadline(), |mut kv| {
                let txn = Txn::new().and_then(ops.clone());
                async move { kv.txn(txn).await }
            })
            .await
            .map_err(|f| sh.push_error(f, true))?;
        }
        let before = sh.audit_appends.fetch_add(count, Ordering::Relaxed);
        if before / AUDIT_PRUNE_EVERY != (before + count) / AUDIT_PRUNE_EVERY
            && let Err(e) = self.prune_audit().await
        {
            tracing::warn!(error = %e, "pruning the audit log");
        }
        Ok(())
    }

    async fn audit(
        &self,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let sh = &self.shared;
        sh.check_open()?;
        let prefix = sh.keys.audit(group);
        let limit = if limit == 0 { AUDIT_RETENTION } else { limit };
        // Newest first: by creation revision across groups; the group
        // filter below only matters for the "-" directory of bad names.
        let fetch = if group.is_some() {
            limit.saturating_mul(2)
        } else {
            limit
        };
        let resp = sh
            .call(sh.deadline(), |mut kv| {
                let prefix = prefix.clone();
                let options = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Descend)
                    .with_limit(i64::try_from(fetch).unwrap_or(i64::MAX));
                async move { kv.get(prefix, Some(options)).await }
            })
            .await
            .map_err(|f| sh.read_error(f))?;
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let record = decode_audit(&key, kv.value())?;
            if group.is_none_or(|g| g == record.group) {
                out.push(record);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn close(&self) -> Result<(), StoreError> {
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            tracing::info!(endpoints = %self.shared.endpoints(), "etcd store closed");
        }
        Ok(())
    }

    fn health(&self) -> StoreHealth {
        let sh = &self.shared;
        let degraded = if sh.closed.load(Ordering::Acquire) {
            Some("the store is closed".to_owned())
        } else {
            let link = sh.link();
            link.calls.clone().or_else(|| link.feed.clone())
        };
        StoreHealth {
            backend: "etcd",
            location: format!("{} prefix {}", sh.endpoints(), sh.config.prefix),
            degraded,
        }
    }

    fn feed(&self) -> Option<HeadFeed> {
        Some(feed(Arc::clone(&self.shared)))
    }

    fn agent_directory(&self) -> Option<Arc<dyn AgentDirectory>> {
        Some(Arc::clone(&self.agents) as Arc<dyn AgentDirectory>)
    }
}
