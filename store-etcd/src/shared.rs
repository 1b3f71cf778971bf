//! What the store, its feed and its agent directory share: the client,
//! the keys, what is known of etcd's reachability, and `call`, the one
//! bounded, retrying way every operation reaches etcd.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Client, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};
use prost::Message as _;
use tokio::time::Instant;
use vane_store::{StoreError, VersionRecord};

use crate::config::EtcdConfig;
use crate::credentials::*;
use crate::failure::*;
use crate::layout::*;

/// What the store knows about etcd's reachability.
#[derive(Debug, Default)]
pub(crate) struct Link {
    /// Set while the feed is not watching.
    pub(crate) feed: Option<String>,
    /// Set when the last call timed out; cleared by the next success.
    pub(crate) calls: Option<String>,
}

/// Everything the store, its feed and its agent directory share.
pub(crate) struct Shared {
    pub(crate) config: EtcdConfig,
    pub(crate) keys: Keys,
    pub(crate) client: Client,
    pub(crate) kv: KvClient,
    pub(crate) closed: AtomicBool,
    /// Set once `connect` succeeded: before, errors are the caller's to
    /// report (one line at startup, not also a log record).
    pub(crate) connected: AtomicBool,
    pub(crate) link: Mutex<Link>,
    /// Per-group push locks. Each holds when the last push of the group found
    /// etcd unreachable, so pushes queued behind it fail at once.
    pub(crate) groups: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
    /// Audit entries appended by this process: every so many, the log is
    /// pruned to its retention.
    pub(crate) audit_appends: AtomicU64,
    /// Bodies of this replica's own pushes, by push id, until the feed
    /// reports their versions: the feed takes these bytes (already in the
    /// hub) rather than reading them back from etcd. Bounded by
    /// [`OWN_BODIES_KEPT`]: the body of a push that never committed is
    /// pushed out by later ones.
    pub(crate) own_bodies: Mutex<VecDeque<(String, Bytes)>>,
    /// Bodies read from etcd (for the tests: own pushes are never read back).
    pub(crate) body_reads: AtomicU64,
}

/// Own pushes whose bodies are kept for the feed. Pushes of one group are
/// serialized and the feed follows within milliseconds, so a handful is
/// plenty; they share their bytes with the hub, so keeping them is cheap.
pub(crate) const OWN_BODIES_KEPT: usize = 16;

impl Shared {
    /// Keeps the body of this replica's push `push_id` for the feed.
    pub(crate) fn remember_own_body(&self, push_id: &str, body: Bytes) {
        let mut own = self
            .own_bodies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if own.len() >= OWN_BODIES_KEPT {
            own.pop_front();
        }
        own.push_back((push_id.to_owned(), body));
    }

    /// Takes the body of this replica's push `push_id`, if it is kept: for
    /// the feed, or to drop it when the push stored nothing.
    pub(crate) fn take_own_body(&self, push_id: &str) -> Option<Bytes> {
        let mut own = self
            .own_bodies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let at = own.iter().position(|(id, _)| id == push_id)?;
        own.remove(at).map(|(_, body)| body)
    }

    pub(crate) fn endpoints(&self) -> String {
        self.config.endpoints.join(",")
    }

    pub(crate) fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Unavailable("the store is closed".into()))
        } else {
            Ok(())
        }
    }

    pub(crate) fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What an etcd error means for an operator: the configuration problem
    /// when etcd (or the TLS handshake) refused this replica's settings,
    /// else its description.
    pub(crate) fn explain(&self, e: &etcd_client::Error) -> String {
        rejection(e, self.config.tls.as_ref()).unwrap_or_else(|| describe(e))
    }

    /// "etcd at URLS: TLS: ... (hint)": etcd and this replica do not
    /// agree on TLS or credentials.
    pub(crate) fn rejected(&self, reason: &str) -> String {
        format!("etcd at {}: {reason}", self.endpoints())
    }

    /// "etcd at URLS did not answer within 3s (last error: ...)".
    pub(crate) fn unreachable(&self, within: Duration, last: Option<&str>) -> String {
        let mut text = format!(
            "etcd at {} did not answer within {}",
            self.endpoints(),
            humantime::format_duration(within)
        );
        if let Some(last) = last {
            let _ = write!(text, " (last error: {last})");
        }
        text
    }

    /// Runs `f` until it succeeds, fails for good, or `deadline` passes,
    /// retrying transient errors with backoff.
    pub(crate) async fn call<T, F, Fut>(&self, deadline: Instant, mut f: F) -> Result<T, Failure>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempt = 0;
        let mut last: Option<String> = None;
        loop {
            match self.call_once(deadline, &mut f).await {
                Ok(v) => return Ok(v),
                Err(Failure::TimedOut(Some(e))) if Instant::now() < deadline => {
                    let pause = backoff(attempt, Duration::from_millis(500))
                        .min(deadline.saturating_duration_since(Instant::now()));
                    tracing::debug!(error = %e, ?pause, "etcd call failed; retrying");
                    last = Some(e);
                    attempt += 1;
                    tokio::time::sleep(pause).await;
                }
                Err(Failure::TimedOut(e)) => {
                    let e = e.or(last);
                    self.link().calls =
                        Some(self.unreachable(self.config.request_timeout, e.as_deref()));
                    return Err(Failure::TimedOut(e));
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// One attempt of `f`, bounded by `deadline`. A transient error is
    /// `TimedOut(Some(error))` at once, so the caller decides on retrying.
    pub(crate) async fn call_once<T, F, Fut>(
        &self,
        deadline: Instant,
        f: &mut F,
    ) -> Result<T, Failure>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Failure::TimedOut(None));
        }
        match tokio::time::timeout(remaining, f(self.kv.clone())).await {
            Ok(Ok(v)) => {
                self.link().calls = None;
                Ok(v)
            }
            Ok(Err(e)) => match self.rejection(&e, deadline).await {
                Some(reason) => {
                    // Read-only until the configuration changes; said once
                    // per new reason, not once per call.
                    let text = self.rejected(&reason);
                    let mut link = self.link();
                    if link.calls.as_deref() != Some(text.as_str()) {
                        if self.connected.load(Ordering::Acquire) {
                            tracing::error!(
                                error = %text,
                                "etcd refused this replica's TLS settings or credentials; \
                                 read-only until that is fixed"
                            );
                        }
                        link.calls = Some(text);
                    }
                    Err(Failure::Rejected(reason))
                }
                None if transient(&e) => Err(Failure::TimedOut(Some(describe(&e)))),
                None => Err(Failure::Refused(describe(&e))),
            },
            Err(_) => Err(Failure::TimedOut(None)),
        }
    }

    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.config.request_timeout
    }

    /// Whether `e` is etcd refusing this replica's TLS settings or
    /// credentials (see [`rejection`]). Under TLS 1.3 etcd
    /// refuses a client certificate after the handshake, and the request in
    /// flight often sees only a closed connection: then one handshake of
    /// our own, bounded by `deadline`, asks etcd what it thinks of us.
    pub(crate) async fn rejection(
        &self,
        e: &etcd_client::Error,
        deadline: Instant,
    ) -> Option<String> {
        refusal(
            self.config.tls.as_ref(),
            &self.config.endpoints,
            e,
            deadline,
        )
        .await
    }

    /// The error of a read that failed.
    pub(crate) fn read_error(&self, f: Failure) -> StoreError {
        match f {
            Failure::TimedOut(last) => {
                StoreError::Degraded(self.unreachable(self.config.request_timeout, last.as_deref()))
            }
            Failure::Refused(e) => StoreError::Io(format!("etcd refused a read: {e}")),
            Failure::Rejected(reason) => StoreError::Degraded(self.rejected(&reason)),
        }
    }

    /// The error of a push that failed; `sent` says whether a commit may have
    /// reached etcd.
    pub(crate) fn push_error(&self, f: Failure, sent: bool) -> StoreError {
        match (f, sent) {
            (Failure::TimedOut(last), false) => StoreError::Degraded(format!(
                "{}; nothing was stored",
                self.unreachable(self.config.request_timeout, last.as_deref())
            )),
            (Failure::TimedOut(last), true) => StoreError::Degraded(format!(
                "{}; the push may or may not have been stored: `vanectl history` tells",
                self.unreachable(self.config.request_timeout, last.as_deref())
            )),
            (Failure::Refused(e), _) => StoreError::Io(format!("etcd refused the push: {e}")),
            (Failure::Rejected(reason), false) => {
                StoreError::Degraded(format!("{}; nothing was stored", self.rejected(&reason)))
            }
            (Failure::Rejected(reason), true) => StoreError::Degraded(format!(
                "{}; the push may or may not have been stored: `vanectl history` tells",
                self.rejected(&reason)
            )),
        }
    }

    pub(crate) fn group_lock(&self, group: &str) -> Arc<tokio::sync::Mutex<Option<Instant>>> {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(groups.entry(group.to_owned()).or_default())
    }

    /// Reads the version record `(group, version)`, without its body.
    pub(crate) async fn read_version(
        &self,
        group: &str,
        version: u64,
        deadline: Instant,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let key = self.keys.version(group, version);
        let resp = self
            .call(deadline, |mut kv| {
                let key = key.clone();
                async move { kv.get(key, None).await }
            })
            .await
            .map_err(|f| self.read_error(f))?;
        resp.kvs()
            .first()
            .map(|kv| decode_version(group, version, kv.value()))
            .transpose()
    }

    /// Reads a body and checks it against its reference.
    pub(crate) async fn read_body(
        &self,
        group: &str,
        version: u64,
        body: &BodyRef,
        deadline: Instant,
    ) -> Result<Bytes, StoreError> {
        self.body_reads.fetch_add(1, Ordering::Relaxed);
        let (key, options) = if body.chunks == 1 {
            (self.keys.chunk(&body.sha256, 0), None)
        } else {
            (
                self.keys.blob(&body.sha256),
                Some(GetOptions::new().with_prefix()),
            )
        };
        let resp = self
            .call(deadline, |mut kv| {
                let (key, options) = (key.clone(), options.clone());
                async move { kv.get(key, options).await }
            })
            .await
            .map_err(|f| self.read_error(f))?;
        let kvs = resp.kvs();
        if kvs.len() != body.chunks as usize {
            return Err(StoreError::Corrupt(format!(
                "group {group:?} version {version}: body {} has {} of its {} chunks",
                body.sha256,
                kvs.len(),
                body.chunks
            )));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(body.size).unwrap_or(0));
        for kv in kvs {
            bytes.extend_from_slice(kv.value());
        }
        if bytes.len() as u64 != body.size || sha256_hex(&bytes) != body.sha256 {
            return Err(StoreError::Corrupt(format!(
                "group {group:?} version {version}: body does not match its sha256 {}",
                body.sha256
            )));
        }
        Ok(Bytes::from(bytes))
    }

    /// A whole version: record and body.
    pub(crate) async fn read_record(
        &self,
        group: &str,
        version: u64,
        deadline: Instant,
    ) -> Result<Option<VersionRecord>, StoreError> {
        let Some(stored) = self.read_version(group, version, deadline).await? else {
            return Ok(None);
        };
        self.complete(group, version, stored, deadline)
            .await
            .map(Some)
    }

    /// The feed's way to a version's record: the body of this replica's
    /// own push as kept (it is what was just written, under a random push
    /// id), else the body read from etcd.
    pub(crate) async fn complete_for_feed(
        &self,
        group: &str,
        version: u64,
        stored: StoredVersion,
        deadline: Instant,
    ) -> Result<VersionRecord, StoreError> {
        if let Some(body) = self.take_own_body(&stored.push_id) {
            let size = stored.body.as_ref().map(|b| b.size);
            if let (Some(info), Some(size)) = (stored.info.clone(), size)
                && size == body.len() as u64
            {
                return Ok(record(group, version, info, body));
            }
        }
        self.complete(group, version, stored, deadline).await
    }

    /// Adds the body to a version record.
    pub(crate) async fn complete(
        &self,
        group: &str,
        version: u64,
        stored: StoredVersion,
        deadline: Instant,
    ) -> Result<VersionRecord, StoreError> {
        let info = stored.info.ok_or_else(|| missing(group, version, "info"))?;
        let body = stored.body.ok_or_else(|| missing(group, version, "body"))?;
        let snapshot = self.read_body(group, version, &body, deadline).await?;
        Ok(record(group, version, info, snapshot))
    }

    /// Every key under `prefix`, read within the store's deadline (retried
    /// on another endpoint on failure); a failure is a read error.
    pub(crate) async fn read_prefix(
        &self,
        prefix: &str,
    ) -> Result<etcd_client::GetResponse, StoreError> {
        self.call(self.deadline(), |mut kv| {
            let prefix = prefix.to_owned();
            async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .await
        .map_err(|f| self.read_error(f))
    }

    /// Every head with its body, the tombstones of deleted groups (group,
    /// last version), and the revision they were read at.
    pub(crate) async fn read_heads(&self) -> Result<HeadsRead, StoreError> {
        let deadline = self.deadline();
        let prefix = self.keys.heads();
        let resp = self.read_prefix(&prefix).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut heads = Vec::new();
        let mut tombstones = Vec::new();
        for kv in resp.kvs() {
            let group = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(&prefix))
                .ok_or_else(|| StoreError::Corrupt("a head key is not UTF-8".into()))?
                .to_owned();
            let head = HeadValue::decode(kv.value()).map_err(|e| {
                StoreError::Corrupt(format!("group {group:?}: head does not decode: {e}"))
            })?;
            // A deleted group's tombstone has no version to read.
            if head.deleted {
                tombstones.push((group, head.version));
            } else {
                heads.push((group, head.version));
            }
        }
        let mut records = Vec::with_capacity(heads.len());
        for batch in heads.chunks(MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = batch
                .iter()
                .map(|(g, v)| TxnOp::get(self.keys.version(g, *v), None))
                .collect();
            let resp = self
                .call(deadline, |mut kv| {
                    let txn = Txn::new().and_then(ops.clone());
                    async move { kv.txn(txn).await }
                })
                .await
                .map_err(|f| self.read_error(f))?;
            for ((group, version), op) in batch.iter().zip(resp.op_responses()) {
                let stored = match op {
                    TxnOpResponse::Get(get) => get
                        .kvs()
                        .first()
                        .map(|kv| decode_version(group, *version, kv.value()))
                        .transpose()?,
                    _ => None,
                }
                .ok_or_else(|| head_without_version(group, *version))?;
                records.push(self.complete(group, *version, stored, deadline).await?);
            }
        }
        records.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(HeadsRead {
            records,
            tombstones,
            revision,
        })
    }

    /// The group's head key, decoded; `None` if it has none.
    pub(crate) async fn read_head(&self, group: &str) -> Result<Option<HeadValue>, StoreError> {
        let key = self.keys.head(group);
        let resp = self
            .call(self.deadline(), |mut kv| {
                let key = key.clone();
                async move { kv.get(key, None).await }
            })
            .await
            .map_err(|f| self.read_error(f))?;
        resp.kvs()
            .first()
            .map(|kv| decode_head(group, kv.value()))
            .transpose()
    }
}

/// What [`Shared::read_heads`] read.
pub(crate) struct HeadsRead {
    /// Every live head with its body, by group.
    pub(crate) records: Vec<VersionRecord>,
    /// Every deleted group with its last version.
    pub(crate) tombstones: Vec<(String, u64)>,
    /// The etcd revision they were read at.
    pub(crate) revision: i64,
}
