//! The clustered store: every replica of the control plane keeps its versions
//! in one etcd cluster, allocates version numbers with compare-and-set
//! transactions, and follows the other replicas' pushes with an etcd watch.
//!
//! # Layout (under the configured prefix, `/vane` by default)
//! - `schema` -> [`SCHEMA_VERSION`], so a future layout change is detected.
//! - `heads/<group>` -> [`HeadValue`]: the head version, its hash and the
//!   id of the push that created it.
//! - `versions/<group>/<version, 20 digits>` -> [`StoredVersion`]: the
//!   version's metadata and a reference to its body. Zero-padded so a range
//!   read returns versions in order; small, so `history` never reads bodies.
//! - `blobs/<sha256 of the body>/<chunk, 6 digits>` -> up to [`CHUNK_BYTES`]
//!   of the encoded snapshot. Content-addressed: a rollback or a repeated
//!   content stores nothing new.
//! - `agents/<group>/<node id>/<lease id>` -> [`StoredAgent`], bound to the
//!   writing replica's lease (see [`EtcdAgents`]).
//!
//! # A push
//! Pushes of one group are serialized inside a replica (a per-group lock), so
//! compare-and-set only ever races against other replicas. Each attempt
//! reads the head, checks `expected_version` and "unchanged" against it, and
//! commits one transaction: *if the head key's `mod_revision` is still the
//! one read (or the key is absent)*, put the head, the version record and —
//! for a body of one chunk — the chunk. A body larger than one chunk (etcd
//! refuses requests over 1.5 MiB by default) is written chunk by chunk
//! *before* that transaction, which also compares that every chunk exists:
//! a reader never finds a head whose body is missing. A lost race re-reads
//! and tries again; `--expect-version` is the same compare, so a stale
//! expectation is a [`StoreError::Conflict`].
//!
//! Every push carries a random id, stored in the head and the version. When
//! etcd does not answer a commit (timeout, member killed), the outcome is
//! unknown; the next attempt first reads the head and the version numbers the
//! unanswered commits aimed at, and returns `Created` if one of them carries
//! the push's id. So a push is never stored twice, even across etcd leader
//! changes, and one that returns success is stored.
//!
//! # Availability
//! Every call to etcd is bounded by `request_timeout` (transient failures are
//! retried within it); past it the push fails with
//! [`StoreError::Degraded`], saying whether anything may have been stored.
//! The last outcome of the calls and the state of the feed make
//! [`Store::health`]: while etcd is away the replica is read-only and keeps
//! streaming what it has.
//!
//! # TLS and authentication
//! With `https://` endpoints the store verifies etcd's certificate against
//! the configured CA and may present a client certificate; with a user it
//! authenticates and renews etcd's token when it expires. A refusal of
//! either (an unknown CA, a wrong password, a missing role) is a
//! configuration error, not an outage: it is not retried, it names the
//! settings to check, and the replica is degraded until it goes away.
//!
//! # The feed
//! [`Store::feed`] reads every head at one revision, then watches
//! `versions/` from the next one, and reports new versions in revision order
//! (only the newest of a group per batch: the hub wants heads). It resumes
//! after the last revision it reported when the watch breaks, and re-reads
//! every head when etcd says that revision was compacted.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KvClient, PutOptions,
    SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;
use vane_proto as pb;

use vane_store::agents::{AgentChange, AgentDirectory, AgentRecord, SharedAgent};
use vane_store::{
    AUDIT_RETENTION, AuditRecord, FeedEvent, HeadFeed, NewVersion, PushOutcome, Store, StoreError,
    StoreHealth, VersionMeta, VersionRecord, decode_audit, encode_audit, now_unix_ms,
};

mod credentials;
pub use self::credentials::{EtcdAuth, EtcdCredentialError, EtcdTls};

/// Layout version stored under `<prefix>/schema`.
pub const SCHEMA_VERSION: u64 = 1;
/// Largest piece of a body in one key: well under etcd's default request
/// limit of 1.5 MiB, with room for the head and version record that share
/// the transaction of a one-chunk body.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Largest etcd response this store accepts (a range of chunks, a history,
/// the agents of a big fleet).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
/// Most operations per transaction (etcd's default limit is 128).
const MAX_TXN_OPS: usize = 64;
/// How long `Status` waits for the other replicas' agents.
const AGENTS_READ_TIMEOUT: Duration = Duration::from_millis(1500);
/// Longest pause of the feed between two attempts.
const FEED_RETRY_CAP: Duration = Duration::from_secs(2);
/// Compare-and-set rounds lost to other replicas before a push gives up.
const MAX_CAS_ROUNDS: u32 = 64;

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members: all `http://host:2379`, or all
    /// `https://host:2379` with [`Self::tls`]. Required.
    pub endpoints: Vec<String>,
    /// Key prefix under which everything is stored. Default `/vane`; several
    /// Vane clusters may share an etcd with different prefixes.
    pub prefix: String,
    /// Bound on each operation against etcd, retries included; a push that
    /// etcd does not confirm within it fails. Default 3s.
    pub request_timeout: Duration,
    /// Time-to-live of the lease the agents' records are bound to: how long
    /// a dead replica's agents stay listed. Default 10s.
    pub lease_ttl: Duration,
    /// TLS to etcd: required with `https://` endpoints, refused with
    /// `http://` ones. Default `None`.
    pub tls: Option<EtcdTls>,
    /// The etcd user this replica authenticates as, when etcd has
    /// authentication enabled. Default `None`.
    pub auth: Option<EtcdAuth>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            prefix: "/vane".into(),
            request_timeout: Duration::from_secs(3),
            lease_ttl: Duration::from_secs(10),
            tls: None,
            auth: None,
        }
    }
}

/// `heads/<group>`.
#[derive(Clone, PartialEq, prost::Message)]
struct HeadValue {
    #[prost(uint64, tag = "1")]
    version: u64,
    #[prost(string, tag = "2")]
    hash: String,
    #[prost(string, tag = "3")]
    push_id: String,
}

/// Where a body is: `blobs/<sha256>/<chunk>`.
#[derive(Clone, PartialEq, prost::Message)]
struct BodyRef {
    #[prost(string, tag = "1")]
    sha256: String,
    #[prost(uint64, tag = "2")]
    size: u64,
    #[prost(uint32, tag = "3")]
    chunks: u32,
}

/// `versions/<group>/<version>`.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredVersion {
    #[prost(message, optional, tag = "1")]
    info: Option<pb::VersionInfo>,
    #[prost(string, tag = "2")]
    push_id: String,
    #[prost(message, optional, tag = "3")]
    body: Option<BodyRef>,
}

/// `agents/<group>/<node>/<lease>`.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredAgent {
    #[prost(string, tag = "1")]
    replica: String,
    #[prost(string, tag = "2")]
    node_id: String,
    #[prost(string, tag = "3")]
    group: String,
    #[prost(btree_map = "string, string", tag = "4")]
    labels: BTreeMap<String, String>,
    #[prost(string, tag = "5")]
    agent_build: String,
    #[prost(string, tag = "6")]
    peer: String,
    #[prost(bool, tag = "7")]
    connected: bool,
    #[prost(int64, tag = "8")]
    connected_since_unix_ms: i64,
    #[prost(int64, tag = "9")]
    last_seen_unix_ms: i64,
    #[prost(uint64, tag = "10")]
    sent_version: u64,
    #[prost(uint64, tag = "11")]
    acked_version: u64,
    #[prost(string, tag = "12")]
    acked_hash: String,
    #[prost(uint64, tag = "13")]
    last_nacked_version: u64,
    #[prost(string, tag = "14")]
    nack_reason: String,
}

impl From<&SharedAgent> for StoredAgent {
    fn from(a: &SharedAgent) -> Self {
        let r = &a.record;
        Self {
            replica: a.replica.clone(),
            node_id: r.node_id.clone(),
            group: r.group.clone(),
            labels: r.labels.clone(),
            agent_build: r.agent_build.clone(),
            peer: r.peer.clone(),
            connected: r.connected,
            connected_since_unix_ms: r.connected_since_unix_ms,
            last_seen_unix_ms: r.last_seen_unix_ms,
            sent_version: r.sent_version,
            acked_version: r.acked_version,
            acked_hash: r.acked_hash.clone(),
            last_nacked_version: r.last_nacked_version,
            nack_reason: r.nack_reason.clone(),
        }
    }
}

impl From<StoredAgent> for SharedAgent {
    fn from(a: StoredAgent) -> Self {
        Self {
            replica: a.replica,
            record: AgentRecord {
                node_id: a.node_id,
                group: a.group,
                labels: a.labels,
                agent_build: a.agent_build,
                peer: a.peer,
                connected: a.connected,
                connected_since_unix_ms: a.connected_since_unix_ms,
                last_seen_unix_ms: a.last_seen_unix_ms,
                sent_version: a.sent_version,
                acked_version: a.acked_version,
                acked_hash: a.acked_hash,
                last_nacked_version: a.last_nacked_version,
                nack_reason: a.nack_reason,
            },
        }
    }
}

/// The keys of one prefix.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn schema(&self) -> String {
        format!("{}/schema", self.prefix)
    }
    fn heads(&self) -> String {
        format!("{}/heads/", self.prefix)
    }
    fn head(&self, group: &str) -> String {
        format!("{}/heads/{group}", self.prefix)
    }
    fn versions(&self) -> String {
        format!("{}/versions/", self.prefix)
    }
    fn versions_of(&self, group: &str) -> String {
        format!("{}/versions/{group}/", self.prefix)
    }
    fn version(&self, group: &str, version: u64) -> String {
        format!("{}/versions/{group}/{version:020}", self.prefix)
    }
    fn blob(&self, sha256: &str) -> String {
        format!("{}/blobs/{sha256}/", self.prefix)
    }
    fn chunk(&self, sha256: &str, index: usize) -> String {
        format!("{}/blobs/{sha256}/{index:06}", self.prefix)
    }
    fn audit(&self, group: Option<&str>) -> String {
        match group {
            Some(group) => format!("{}/audit/{}/", self.prefix, audit_dir(group)),
            None => format!("{}/audit/", self.prefix),
        }
    }
    fn agents(&self, group: Option<&str>) -> String {
        match group {
            Some(group) => format!("{}/agents/{group}/", self.prefix),
            None => format!("{}/agents/", self.prefix),
        }
    }
    fn agent(&self, group: &str, node_id: &str, lease: i64) -> String {
        format!("{}/agents/{group}/{node_id}/{lease:016x}", self.prefix)
    }

    /// (group, version) of a `versions/` key.
    fn parse_version(&self, key: &[u8]) -> Option<(String, u64)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.versions())?;
        let (group, version) = rest.rsplit_once('/')?;
        Some((group.to_owned(), version.parse().ok()?))
    }
}

/// Why a call to etcd failed.
#[derive(Debug, Clone)]
enum Failure {
    /// No answer within the deadline (the last error seen, if any).
    TimedOut(Option<String>),
    /// etcd answered with a refusal that retrying does not change.
    Refused(String),
    /// etcd (or the TLS handshake) turned this replica away: its TLS
    /// settings or its etcd user do not fit etcd's. Not retried; the
    /// replica is degraded until the configuration changes.
    Rejected(String),
}

/// Whether an etcd error is worth retrying: the member is down, has no
/// leader, is electing one, or the connection broke.
fn transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        // Out of space (the NOSPACE alarm): refused until an operator acts.
        E::GRpcStatus(status) if status.message().contains("database space exceeded") => false,
        E::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Aborted
                | tonic::Code::Internal
                | tonic::Code::ResourceExhausted
                | tonic::Code::Cancelled
        ),
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => true,
        _ => false,
    }
}

/// A one-line description of an etcd error.
fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            if message.is_empty() {
                format!("{:?}", status.code())
            } else {
                message.to_owned()
            }
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                let _ = write!(text, ": {cause}");
                source = cause.source();
            }
            text
        }
    }
}

/// 50 ms, doubling, at most `cap`.
fn backoff(attempt: u32, cap: Duration) -> Duration {
    (Duration::from_millis(50) * 2u32.pow(attempt.min(8))).min(cap)
}

/// What the store knows about etcd's reachability.
#[derive(Debug, Default)]
struct Link {
    /// Set while the feed is not watching.
    feed: Option<String>,
    /// Set when the last call timed out; cleared by the next success.
    calls: Option<String>,
}

/// Everything the store, its feed and its agent directory share.
struct Shared {
    config: EtcdConfig,
    keys: Keys,
    client: Client,
    kv: KvClient,
    closed: AtomicBool,
    /// Set once `connect` succeeded: before, errors are the caller's to
    /// report (one line at startup, not also a log record).
    connected: AtomicBool,
    link: Mutex<Link>,
    /// Per-group push locks. Each holds when the last push of the group found
    /// etcd unreachable, so pushes queued behind it fail at once.
    groups: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
    /// Audit entries appended by this process: every so many, the log is
    /// pruned to its retention.
    audit_appends: AtomicU64,
}

impl Shared {
    fn endpoints(&self) -> String {
        self.config.endpoints.join(",")
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::Unavailable("the store is closed".into()))
        } else {
            Ok(())
        }
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What an etcd error means for an operator: the configuration problem
    /// when etcd (or the TLS handshake) refused this replica's settings,
    /// else its description.
    fn explain(&self, e: &etcd_client::Error) -> String {
        credentials::rejection(e, self.config.tls.as_ref()).unwrap_or_else(|| describe(e))
    }

    /// "etcd at URLS: TLS: ... (hint)": etcd and this replica do not
    /// agree on TLS or credentials.
    fn rejected(&self, reason: &str) -> String {
        format!("etcd at {}: {reason}", self.endpoints())
    }

    /// "etcd at URLS did not answer within 3s (last error: ...)".
    fn unreachable(&self, within: Duration, last: Option<&str>) -> String {
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
    async fn call<T, F, Fut>(&self, deadline: Instant, mut f: F) -> Result<T, Failure>
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
    async fn call_once<T, F, Fut>(&self, deadline: Instant, f: &mut F) -> Result<T, Failure>
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

    fn deadline(&self) -> Instant {
        Instant::now() + self.config.request_timeout
    }

    /// Whether `e` is etcd refusing this replica's TLS settings or
    /// credentials (see [`credentials::rejection`]). Under TLS 1.3 etcd
    /// refuses a client certificate after the handshake, and the request in
    /// flight often sees only a closed connection: then one handshake of
    /// our own, bounded by `deadline`, asks etcd what it thinks of us.
    async fn rejection(&self, e: &etcd_client::Error, deadline: Instant) -> Option<String> {
        rejection(&self.config, e, deadline).await
    }

    /// The error of a read that failed.
    fn read_error(&self, f: Failure) -> StoreError {
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
    fn push_error(&self, f: Failure, sent: bool) -> StoreError {
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

    fn group_lock(&self, group: &str) -> Arc<tokio::sync::Mutex<Option<Instant>>> {
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(groups.entry(group.to_owned()).or_default())
    }

    /// Reads the version record `(group, version)`, without its body.
    async fn read_version(
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
    async fn read_body(
        &self,
        group: &str,
        version: u64,
        body: &BodyRef,
        deadline: Instant,
    ) -> Result<Bytes, StoreError> {
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
    async fn read_record(
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

    /// Adds the body to a version record.
    async fn complete(
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

    /// Every head with its body, and the revision they were read at.
    async fn read_heads(&self) -> Result<(Vec<VersionRecord>, i64), StoreError> {
        let deadline = self.deadline();
        let prefix = self.keys.heads();
        let resp = self
            .call(deadline, |mut kv| {
                let prefix = prefix.clone();
                async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await
            .map_err(|f| self.read_error(f))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut heads = Vec::new();
        for kv in resp.kvs() {
            let group = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(&prefix))
                .ok_or_else(|| StoreError::Corrupt("a head key is not UTF-8".into()))?
                .to_owned();
            let head = HeadValue::decode(kv.value()).map_err(|e| {
                StoreError::Corrupt(format!("group {group:?}: head does not decode: {e}"))
            })?;
            heads.push((group, head.version));
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
        Ok((records, revision))
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn missing(group: &str, version: u64, what: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "group {group:?} version {version}: record has no {what}"
    ))
}

fn head_without_version(group: &str, head: u64) -> StoreError {
    StoreError::Corrupt(format!(
        "group {group:?}: head is version {head} but that version is not stored"
    ))
}

fn decode_version(group: &str, version: u64, bytes: &[u8]) -> Result<StoredVersion, StoreError> {
    let stored = StoredVersion::decode(bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "group {group:?} version {version}: record does not decode: {e}"
        ))
    })?;
    match &stored.info {
        Some(info) if info.version == version => Ok(stored),
        Some(info) => Err(StoreError::Corrupt(format!(
            "group {group:?} version {version}: record says version {}",
            info.version
        ))),
        None => Err(missing(group, version, "info")),
    }
}

fn decode_head(group: &str, bytes: &[u8]) -> Result<HeadValue, StoreError> {
    HeadValue::decode(bytes)
        .map_err(|e| StoreError::Corrupt(format!("group {group:?}: head does not decode: {e}")))
}

fn record(group: &str, version: u64, info: pb::VersionInfo, snapshot: Bytes) -> VersionRecord {
    VersionRecord {
        group: group.to_owned(),
        version,
        hash: info.hash,
        message: info.message,
        author: info.author,
        created_at_unix_ms: info.created_at_unix_ms,
        rollback_of: (info.rollback_of != 0).then_some(info.rollback_of),
        snapshot,
    }
}

/// Group names become key segments: they must not contain `/`.
/// The key directory of a group's audit entries: the group, or `-` for a
/// name that cannot be a key segment (an audited refusal of a bad name).
fn audit_dir(group: &str) -> &str {
    if group.is_empty() || group.contains('/') {
        "-"
    } else {
        group
    }
}

/// Audit appends between two prunes of the log.
const AUDIT_PRUNE_EVERY: u64 = 256;

fn check_group(group: &str) -> Result<(), StoreError> {
    if group.is_empty() || group.contains('/') {
        Err(StoreError::Io(format!(
            "group {group:?}: not a valid group name for the etcd store"
        )))
    } else {
        Ok(())
    }
}

/// The first `Get` of a transaction's responses at `index`.
fn txn_get(responses: &[TxnOpResponse], index: usize) -> Option<&etcd_client::KeyValue> {
    match responses.get(index)? {
        TxnOpResponse::Get(get) => get.kvs().first(),
        _ => None,
    }
}

/// The etcd store. Open it with [`EtcdStore::connect`].
pub struct EtcdStore {
    shared: Arc<Shared>,
    agents: Arc<EtcdAgents>,
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

    async fn push_locked(&self, new: NewVersion) -> Result<PushOutcome, StoreError> {
        let sh = &self.shared;
        let keys = &sh.keys;
        let group = new.group.as_str();
        let deadline = sh.deadline();
        let push_id = format!("{:032x}", rand::random::<u128>());
        let now = now_unix_ms();
        let sha = sha256_hex(&new.snapshot);
        let chunks: Vec<Bytes> = if new.snapshot.is_empty() {
            vec![Bytes::new()]
        } else {
            (0..new.snapshot.len())
                .step_by(CHUNK_BYTES)
                .map(|at| {
                    new.snapshot
                        .slice(at..(at + CHUNK_BYTES).min(new.snapshot.len()))
                })
                .collect()
        };
        let body = BodyRef {
            sha256: sha.clone(),
            size: new.snapshot.len() as u64,
            chunks: u32::try_from(chunks.len())
                .map_err(|_| StoreError::Io("snapshot: too many chunks".into()))?,
        };
        // A large body goes first, piece by piece: the head that points to
        // it is written only once every piece is there.
        if chunks.len() > 1 {
            for (i, chunk) in chunks.iter().enumerate() {
                let key = keys.chunk(&sha, i);
                sh.call(deadline, |mut kv| {
                    let (key, chunk) = (key.clone(), chunk.to_vec());
                    async move { kv.put(key, chunk, None).await }
                })
                .await
                .map_err(|f| sh.push_error(f, false))?;
            }
        }
        let created = |version: u64| VersionRecord {
            group: group.to_owned(),
            version,
            hash: new.hash.clone(),
            message: new.message.clone(),
            author: new.author.clone(),
            created_at_unix_ms: now,
            rollback_of: new.rollback_of,
            snapshot: new.snapshot.clone(),
        };
        let head_key = keys.head(group);
        // Versions that commits without an answer may have created.
        let mut unanswered: Vec<u64> = Vec::new();
        let mut sent = false;
        let mut rounds = 0u32;
        loop {
            // The head and the versions unanswered commits aimed at, at one
            // revision.
            let mut ops = vec![TxnOp::get(head_key.clone(), None)];
            ops.extend(
                unanswered
                    .iter()
                    .map(|v| TxnOp::get(keys.version(group, *v), None)),
            );
            let read = sh
                .call(deadline, |mut kv| {
                    let txn = Txn::new().and_then(ops.clone());
                    async move { kv.txn(txn).await }
                })
                .await
                .map_err(|f| sh.push_error(f, sent))?;
            let responses = read.op_responses();
            let head = match txn_get(&responses, 0) {
                Some(kv) => Some((decode_head(group, kv.value())?, kv.mod_revision())),
                None => None,
            };
            if let Some((h, _)) = &head
                && h.push_id == push_id
            {
                return Ok(PushOutcome::Created(created(h.version)));
            }
            let mut still_open = Vec::new();
            for (i, version) in unanswered.iter().enumerate() {
                match txn_get(&responses, i + 1) {
                    Some(kv) => {
                        let stored = decode_version(group, *version, kv.value())?;
                        if stored.push_id == push_id {
                            return Ok(PushOutcome::Created(created(*version)));
                        }
                        // Another push took that number: ours did not land there.
                    }
                    None => still_open.push(*version),
                }
            }
            unanswered = still_open;

            let head_version = head.as_ref().map_or(0, |(h, _)| h.version);
            if let Some(expected) = new.expected_version
                && expected != head_version
            {
                return Err(StoreError::Conflict {
                    group: group.to_owned(),
                    expected,
                    actual: head_version,
                });
            }
            if let Some((h, _)) = &head
                && h.hash == new.hash
            {
                let current = sh
                    .read_record(group, h.version, deadline)
                    .await?
                    .ok_or_else(|| head_without_version(group, h.version))?;
                return Ok(PushOutcome::Unchanged(current));
            }
            let version = head_version.checked_add(1).ok_or_else(|| {
                StoreError::Corrupt(format!("group {group:?}: version space exhausted"))
            })?;

            let stored = StoredVersion {
                info: Some(pb::VersionInfo {
                    version,
                    hash: new.hash.clone(),
                    message: new.message.clone(),
                    created_at_unix_ms: now,
                    author: new.author.clone(),
                    rollback_of: new.rollback_of.unwrap_or(0),
                    size_bytes: new.snapshot.len() as u64,
                }),
                push_id: push_id.clone(),
                body: Some(body.clone()),
            };
            let head_value = HeadValue {
                version,
                hash: new.hash.clone(),
                push_id: push_id.clone(),
            };
            let mut compares = vec![match &head {
                Some((_, mod_revision)) => {
                    Compare::mod_revision(head_key.clone(), CompareOp::Equal, *mod_revision)
                }
                None => Compare::create_revision(head_key.clone(), CompareOp::Equal, 0),
            }];
            let mut puts = vec![
                TxnOp::put(head_key.clone(), head_value.encode_to_vec(), None),
                TxnOp::put(keys.version(group, version), stored.encode_to_vec(), None),
            ];
            if chunks.len() == 1 {
                puts.push(TxnOp::put(keys.chunk(&sha, 0), chunks[0].to_vec(), None));
            } else {
                compares.extend(
                    (0..chunks.len())
                        .map(|i| Compare::version(keys.chunk(&sha, i), CompareOp::Greater, 0)),
                );
            }
            let txn = Txn::new()
                .when(compares)
                .and_then(puts)
                .or_else(vec![TxnOp::get(head_key.clone(), None)]);
            let mut once = |mut kv: KvClient| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            };
            match sh.call_once(deadline, &mut once).await {
                Ok(resp) if resp.succeeded() => {
                    return Ok(PushOutcome::Created(created(version)));
                }
                Ok(resp) => {
                    let now_head = txn_get(&resp.op_responses(), 0).map(|kv| kv.mod_revision());
                    if now_head == head.as_ref().map(|(_, r)| *r) {
                        // The head did not move, so a chunk compare failed.
                        return Err(StoreError::Io(format!(
                            "group {group:?}: a chunk of body {sha} vanished before the commit"
                        )));
                    }
                    rounds += 1;
                    if rounds >= MAX_CAS_ROUNDS {
                        // Not `Unavailable`: vanectl would call this
                        // server unreachable.
                        return Err(StoreError::Io(format!(
                            "group {group:?}: lost {rounds} compare-and-set rounds in a row to \
                             pushes through other replicas; nothing was stored, try again"
                        )));
                    }
                    tracing::debug!(group, version, "another replica moved the head; retrying");
                }
                Err(Failure::TimedOut(last)) => {
                    sent = true;
                    unanswered.push(version);
                    if Instant::now() >= deadline {
                        return Err(sh.push_error(Failure::TimedOut(last), true));
                    }
                    tracing::debug!(group, version, error = ?last, "commit unanswered; checking");
                    let pause = backoff(unanswered.len() as u32, Duration::from_millis(500))
                        .min(deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(pause).await;
                }
                Err(failure) => return Err(sh.push_error(failure, sent)),
            }
        }
    }
}

/// Endpoints are all `http://` (then no TLS settings), or all `https://`
/// (then TLS settings are required): never plaintext by accident.
fn check_schemes(endpoints: &[String], tls: bool) -> Result<(), StoreError> {
    let https = endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    let http = endpoints
        .iter()
        .filter(|e| e.starts_with("http://"))
        .count();
    if let Some(other) = endpoints
        .iter()
        .find(|e| !e.starts_with("http://") && !e.starts_with("https://"))
    {
        return Err(StoreError::Io(format!(
            "etcd endpoints: {other:?} must be an http:// or https:// URL"
        )));
    }
    if https > 0 && http > 0 {
        return Err(StoreError::Io(
            "etcd endpoints: all http:// or all https://, not both".into(),
        ));
    }
    if https > 0 && !tls {
        return Err(StoreError::Io(
            "etcd endpoints: https:// needs the CA that signed etcd's certificate (--etcd-ca)"
                .into(),
        ));
    }
    if http > 0 && tls {
        return Err(StoreError::Io(
            "etcd endpoints: TLS settings (--etcd-ca, --etcd-cert, --etcd-key) need https:// endpoints; these are http://"
                .into(),
        ));
    }
    Ok(())
}

/// [`Shared::rejection`], before there is a [`Shared`].
async fn rejection(
    config: &EtcdConfig,
    e: &etcd_client::Error,
    deadline: Instant,
) -> Option<String> {
    if let Some(reason) = credentials::rejection(e, config.tls.as_ref()) {
        return Some(reason);
    }
    let tls = config.tls.as_ref()?;
    if !credentials::broken_connection(e) {
        return None;
    }
    let within = deadline
        .saturating_duration_since(Instant::now())
        .min(credentials::PROBE_TIMEOUT);
    tls.probe(&config.endpoints, within).await
}

/// Whether `endpoint` is an `http://` URL whose host is not this one.
fn plaintext_beyond_loopback(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let Ok(uri) = format!("http://{rest}").parse::<http::Uri>() else {
        return true;
    };
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !(host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()))
}

/// The etcd client. With a user, connecting authenticates, which needs etcd:
/// an answer that retrying may change is retried until `request_timeout`,
/// as every later call is.
async fn connect_client(
    config: &EtcdConfig,
    options: ConnectOptions,
) -> Result<Client, StoreError> {
    let endpoints = config.endpoints.join(",");
    let deadline = Instant::now() + config.request_timeout;
    let mut attempt = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last = match tokio::time::timeout(
            remaining,
            Client::connect(&config.endpoints, Some(options.clone())),
        )
        .await
        {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => {
                if let Some(reason) = rejection(config, &e, deadline).await {
                    return Err(StoreError::Degraded(format!(
                        "etcd at {endpoints}: {reason}"
                    )));
                }
                // Only the authentication call talks to etcd; any other
                // error is the settings' (a URL, the TLS material).
                if !(matches!(e, etcd_client::Error::GRpcStatus(_)) && transient(&e)) {
                    return Err(StoreError::Io(format!(
                        "etcd endpoints {endpoints}: {}",
                        describe(&e)
                    )));
                }
                Some(describe(&e))
            }
            Err(_) => None,
        };
        if Instant::now() >= deadline {
            let mut text = format!(
                "etcd at {endpoints} did not answer within {}",
                humantime::format_duration(config.request_timeout)
            );
            if let Some(last) = last {
                let _ = write!(text, " (last error: {last})");
            }
            return Err(StoreError::Degraded(text));
        }
        let pause = backoff(attempt, Duration::from_millis(500))
            .min(deadline.saturating_duration_since(Instant::now()));
        attempt += 1;
        tokio::time::sleep(pause).await;
    }
}

/// Creates `<prefix>/schema` on first use; refuses another layout version.
impl EtcdStore {
    /// Deletes the oldest audit entries beyond [`AUDIT_RETENTION`].
    async fn prune_audit(&self) -> Result<(), StoreError> {
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
}

async fn check_schema(shared: &Shared) -> Result<(), StoreError> {
    let key = shared.keys.schema();
    let resp = shared
        .call(shared.deadline(), |mut kv| {
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(
                    key.clone(),
                    SCHEMA_VERSION.to_string(),
                    None,
                )])
                .or_else(vec![TxnOp::get(key.clone(), None)]);
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|f| shared.read_error(f))?;
    if resp.succeeded() {
        return Ok(());
    }
    let found = txn_get(&resp.op_responses(), 0)
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .unwrap_or_default();
    if found == SCHEMA_VERSION.to_string() {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "etcd prefix {}: layout version {found:?} is not supported (this build reads {SCHEMA_VERSION})",
            shared.config.prefix
        )))
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
                match resp.kvs().first() {
                    Some(kv) => decode_head(group, kv.value())?.version,
                    None => return Ok(None),
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

    async fn heads(&self) -> Result<Vec<VersionRecord>, StoreError> {
        self.shared.check_open()?;
        Ok(self.shared.read_heads().await?.0)
    }

    async fn groups(&self) -> Result<Vec<String>, StoreError> {
        let sh = &self.shared;
        sh.check_open()?;
        let prefix = sh.keys.heads();
        let resp = sh
            .call(sh.deadline(), |mut kv| {
                let prefix = prefix.clone();
                let options = GetOptions::new().with_prefix().with_keys_only();
                async move { kv.get(prefix, Some(options)).await }
            })
            .await
            .map_err(|f| sh.read_error(f))?;
        let mut groups: Vec<String> = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                std::str::from_utf8(kv.key())
                    .ok()?
                    .strip_prefix(&prefix)
                    .map(str::to_owned)
            })
            .collect();
        groups.sort();
        Ok(groups)
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

/// Where the feed is.
enum FeedState {
    /// Read every head, then watch from the next revision.
    Resync { attempt: u32 },
    /// Open a watch from `from`.
    Watch { from: i64, attempt: u32 },
    /// Watching; `next` is the first revision not yet reported. `resumed`:
    /// this watch replaces one that was lost, which is reported once etcd
    /// confirms it.
    Streaming {
        stream: Box<WatchStream>,
        next: i64,
        resumed: bool,
    },
    /// Wait, then go on.
    Backoff {
        until: Instant,
        then: Box<FeedState>,
    },
}

fn feed(shared: Arc<Shared>) -> HeadFeed {
    Box::pin(futures::stream::unfold(
        (shared, FeedState::Resync { attempt: 0 }),
        |(shared, state)| async move {
            let (event, state) = feed_step(&shared, state).await?;
            Some((event, (shared, state)))
        },
    ))
}

/// Advances the feed to its next event; `None` once the store is closed.
async fn feed_step(shared: &Shared, mut state: FeedState) -> Option<(FeedEvent, FeedState)> {
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return None;
        }
        state = match state {
            FeedState::Backoff { until, then } => {
                tokio::time::sleep_until(until).await;
                *then
            }
            FeedState::Resync { attempt } => match shared.read_heads().await {
                Ok((records, revision)) => {
                    shared.link().feed = None;
                    let next = FeedState::Watch {
                        from: revision + 1,
                        attempt: 0,
                    };
                    return Some((FeedEvent::Resynced(records), next));
                }
                Err(error) => {
                    return Some(lost(
                        shared,
                        error,
                        attempt,
                        FeedState::Resync {
                            attempt: attempt + 1,
                        },
                    ));
                }
            },
            FeedState::Watch { from, attempt } => {
                let options = WatchOptions::new().with_prefix().with_start_revision(from);
                let mut client = shared
                    .client
                    .watch_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES);
                let opened = tokio::time::timeout(
                    shared.config.request_timeout,
                    client.watch(shared.keys.versions(), Some(options)),
                )
                .await;
                match opened {
                    Ok(Ok(stream)) => FeedState::Streaming {
                        stream: Box::new(stream),
                        next: from,
                        resumed: attempt > 0,
                    },
                    Ok(Err(e)) => {
                        let error = StoreError::Degraded(format!(
                            "watching etcd at {}: {}",
                            shared.endpoints(),
                            shared.explain(&e)
                        ));
                        return Some(lost(
                            shared,
                            error,
                            attempt,
                            FeedState::Watch {
                                from,
                                attempt: attempt + 1,
                            },
                        ));
                    }
                    Err(_) => {
                        let error = StoreError::Degraded(format!(
                            "watching etcd: {}",
                            shared.unreachable(shared.config.request_timeout, None)
                        ));
                        return Some(lost(
                            shared,
                            error,
                            attempt,
                            FeedState::Watch {
                                from,
                                attempt: attempt + 1,
                            },
                        ));
                    }
                }
            }
            FeedState::Streaming {
                mut stream,
                next,
                resumed,
            } => {
                let ended = match stream.message().await {
                    Ok(Some(resp)) => Ok(resp),
                    Ok(None) => Err("the watch stream ended".to_owned()),
                    Err(e) => Err(shared.explain(&e)),
                };
                let resp = match ended {
                    Ok(resp) => resp,
                    Err(why) => {
                        let error = StoreError::Degraded(format!(
                            "watching etcd at {}: {why}",
                            shared.endpoints()
                        ));
                        return Some(lost(
                            shared,
                            error,
                            0,
                            FeedState::Watch {
                                from: next,
                                attempt: 1,
                            },
                        ));
                    }
                };
                if resp.compact_revision() > 0 {
                    tracing::warn!(
                        from = next,
                        compacted = resp.compact_revision(),
                        "etcd compacted the history this replica had not read yet; re-reading every head"
                    );
                    FeedState::Resync { attempt: 0 }
                } else if resp.canceled() {
                    let error = StoreError::Degraded(format!(
                        "etcd cancelled the watch: {}",
                        resp.cancel_reason()
                    ));
                    return Some(lost(
                        shared,
                        error,
                        0,
                        FeedState::Watch {
                            from: next,
                            attempt: 1,
                        },
                    ));
                } else {
                    if resp.created() {
                        shared.link().feed = None;
                        tracing::debug!(from = next, "watching etcd");
                        if resumed {
                            let state = FeedState::Streaming {
                                stream,
                                next,
                                resumed: false,
                            };
                            return Some((FeedEvent::Resumed, state));
                        }
                    }
                    // Newest version per group in this batch.
                    let mut latest: BTreeMap<String, (u64, StoredVersion)> = BTreeMap::new();
                    let mut last_revision = None;
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        last_revision = Some(kv.mod_revision());
                        if event.event_type() != EventType::Put {
                            continue;
                        }
                        let Some((group, version)) = shared.keys.parse_version(kv.key()) else {
                            continue;
                        };
                        match decode_version(&group, version, kv.value()) {
                            Ok(stored) => {
                                if latest.get(&group).is_none_or(|(v, _)| version > *v) {
                                    latest.insert(group, (version, stored));
                                }
                            }
                            Err(e) => tracing::error!(error = %e, "skipping a version record"),
                        }
                    }
                    let deadline = shared.deadline();
                    let mut records = Vec::with_capacity(latest.len());
                    for (group, (version, stored)) in latest {
                        match shared.complete(&group, version, stored, deadline).await {
                            Ok(record) => records.push(record),
                            Err(e @ StoreError::Corrupt(_)) => {
                                tracing::error!(error = %e, "skipping a version whose body is unreadable");
                            }
                            Err(error) => {
                                // Read the batch again once etcd answers.
                                return Some(lost(
                                    shared,
                                    error,
                                    0,
                                    FeedState::Watch {
                                        from: next,
                                        attempt: 1,
                                    },
                                ));
                            }
                        }
                    }
                    let next = last_revision.map_or(next, |r| r + 1);
                    let state = FeedState::Streaming {
                        stream,
                        next,
                        resumed: false,
                    };
                    if records.is_empty() {
                        state
                    } else {
                        return Some((FeedEvent::Heads(records), state));
                    }
                }
            }
        };
    }
}

/// The feed lost etcd: note it and retry after a pause.
fn lost(
    shared: &Shared,
    error: StoreError,
    attempt: u32,
    then: FeedState,
) -> (FeedEvent, FeedState) {
    shared.link().feed = Some(match &error {
        StoreError::Degraded(e) => e.clone(),
        other => other.to_string(),
    });
    let retry_in = backoff(attempt, FEED_RETRY_CAP);
    (
        FeedEvent::Lost { error, retry_in },
        FeedState::Backoff {
            until: Instant::now() + retry_in,
            then: Box::new(then),
        },
    )
}

/// Agents' records in etcd, bound to this replica's lease.
pub struct EtcdAgents {
    shared: Arc<Shared>,
    /// The current lease (0: none yet, or lost) and its epoch. Held across
    /// the calls that grant or use it, so one replica has one lease.
    lease: tokio::sync::Mutex<(i64, u64)>,
    /// The current lease id, for readers that must not wait for a write.
    lease_id: AtomicI64,
    epochs: AtomicU64,
}

impl EtcdAgents {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            lease: tokio::sync::Mutex::new((0, 0)),
            lease_id: AtomicI64::new(0),
            epochs: AtomicU64::new(0),
        }
    }

    /// The current lease, granting one if there is none.
    async fn lease(&self, current: &mut (i64, u64)) -> Result<(i64, u64), StoreError> {
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
                        StoredAgent::from(agent).encode_to_vec(),
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

#[cfg(test)]
mod tests;
