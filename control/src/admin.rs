//! The `Admin` gRPC service (what `vanectl` talks to): push, get, history,
//! diff, rollback and status.
//!
//! Every refusal names the field and the reason in one line, with the gRPC
//! code saying whose fault it is: `InvalidArgument` for a bad request,
//! `FailedPrecondition` for a compare-and-set conflict or a rollback target
//! that no longer validates or a store that is read-only (etcd away),
//! `NotFound` for an unknown group or version, `Unavailable`/`Internal` for
//! the store's own failures.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use vane_model::Snapshot;
use vane_proto as pb;

use crate::accept::ConnInfo;
use crate::agents::{AgentRecord, AgentRegistry, AgentState, SharedAgent};
use crate::audit::AuditLog;
use crate::auth::rate::PushLimiter;
use crate::auth::{Action, Auth, Caller};
use crate::hub::{Hub, Published};
use vane_store::AuditRecord;
use vane_store::{NewVersion, PushOutcome, Store, StoreError, VersionMeta, VersionRecord};

/// Audit entries returned when the request sets no limit.
pub const DEFAULT_AUDIT_LIMIT: usize = 100;
/// Most audit entries one request returns.
pub const MAX_AUDIT_LIMIT: usize = 10_000;

/// How many entries to read for `limit` visible ones: more when the caller
/// sees only some groups and the rest are filtered out.
fn limit_for_filter(everything: bool, limit: usize) -> usize {
    if everything {
        limit
    } else {
        limit.saturating_mul(10).min(vane_store::AUDIT_RETENTION)
    }
}

/// Longest push or rollback message, in bytes.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// The `Admin` gRPC service.
#[derive(Clone)]
pub struct AdminService {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    agents: Arc<AgentRegistry>,
    tasks: TaskTracker,
    max_snapshot_bytes: usize,
    /// This server's name among the replicas ("" for a single server).
    replica: String,
    auth: Auth,
    audit: Option<Arc<AuditLog>>,
    push_limit: Arc<PushLimiter>,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService")
            .field("max_snapshot_bytes", &self.max_snapshot_bytes)
            .finish_non_exhaustive()
    }
}

impl AdminService {
    /// A service over `store`, publishing new versions to `hub`. Store
    /// writes run on `tasks`, so the server can wait for them at shutdown.
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        agents: Arc<AgentRegistry>,
        tasks: TaskTracker,
        max_snapshot_bytes: usize,
    ) -> Self {
        Self {
            store,
            hub,
            agents,
            tasks,
            max_snapshot_bytes,
            replica: String::new(),
            auth: Auth::open(),
            audit: None,
            push_limit: Arc::new(PushLimiter::new(0.0, 1)),
        }
    }

    /// Who may do what (default: everyone, everything), where pushes and
    /// refusals are recorded (default: nowhere), and the per-identity push
    /// rate limit (default: none).
    #[must_use]
    pub fn with_security(
        mut self,
        auth: Auth,
        audit: Option<Arc<AuditLog>>,
        push_limit: Arc<PushLimiter>,
    ) -> Self {
        self.auth = auth;
        self.audit = audit;
        self.push_limit = push_limit;
        self
    }

    /// The caller of `request`, authorized for `action` on `group`.
    fn allow<T>(
        &self,
        request: &Request<T>,
        action: Action,
        group: &str,
    ) -> Result<Caller, Status> {
        let caller = self.auth.caller_of(request)?;
        if let Err(status) = self.auth.authorize(&caller, action, group) {
            // Refused reads are audited too (best effort, like every
            // refusal): probing groups one may not see leaves a trace.
            if let Some(audit) = &self.audit {
                audit.refused(&caller, "read", group, "", &status);
            }
            return Err(status);
        }
        Ok(caller)
    }

    /// Records the outcome of a push or rollback in the audit log: the
    /// version it created (waiting until that entry is durable) or why it
    /// was refused.
    async fn audited(
        &self,
        caller: &Caller,
        action: &str,
        group: &str,
        message: &str,
        outcome: &Result<PushOutcome, Status>,
    ) {
        let Some(audit) = &self.audit else { return };
        match outcome {
            Ok(outcome) => {
                let r = outcome.record();
                let entry = AuditRecord {
                    identity: caller.identity.clone(),
                    peer: caller.peer.clone(),
                    action: action.to_owned(),
                    group: group.to_owned(),
                    version: r.version,
                    hash: r.hash.clone(),
                    message: message.to_owned(),
                    result: if outcome.is_unchanged() {
                        "unchanged"
                    } else {
                        "created"
                    }
                    .to_owned(),
                    rollback_of: r.rollback_of.unwrap_or(0),
                    ..AuditRecord::default()
                };
                if let Err(e) = audit.record(entry).await {
                    tracing::error!(error = %e, group, version = r.version, "audit entry of a push not written");
                }
            }
            Err(status) => audit.refused(caller, action, group, message, status),
        }
    }

    /// Authenticates, authorizes and rate-limits a push or rollback of
    /// `group`; a refusal is audited.
    fn allow_write<T>(
        &self,
        request: &Request<T>,
        action: &str,
        group: &str,
        message: &str,
    ) -> Result<Caller, Status> {
        let caller = match self.auth.caller_of(request) {
            Ok(caller) => caller,
            Err(status) => {
                let anonymous = Caller {
                    identity: String::new(),
                    source: crate::auth::Source::None,
                    peer: request
                        .extensions()
                        .get::<ConnInfo>()
                        .map(|c| c.remote.to_string())
                        .unwrap_or_default(),
                };
                if let Some(audit) = &self.audit {
                    audit.refused(&anonymous, action, group, message, &status);
                }
                return Err(status);
            }
        };
        let allowed = self
            .auth
            .authorize(&caller, Action::Write, group)
            .and_then(|()| {
                self.push_limit
                    .check(&caller.identity, std::time::Instant::now())
                    .map_err(|wait| {
                        Status::resource_exhausted(format!(
                            "push rate limit: {} may push {}; retry in {}ms",
                            caller.describe(),
                            self.push_limit.describe(),
                            wait.as_millis().max(1)
                        ))
                    })
            });
        if let Err(status) = allowed {
            tracing::info!(identity = %caller.identity, peer = %caller.peer, group, action, code = ?status.code(), reason = status.message(), "refused");
            if let Some(audit) = &self.audit {
                audit.refused(&caller, action, group, message, &status);
            }
            return Err(status);
        }
        Ok(caller)
    }

    /// Names this server among the replicas: `Status` shows it next to the
    /// agents it serves.
    #[must_use]
    pub fn with_replica(mut self, replica: impl Into<String>) -> Self {
        self.replica = replica.into();
        self
    }

    /// The tonic server wrapper, accepting requests a little larger than the
    /// snapshot limit so an oversize snapshot gets our error (naming the
    /// limit) rather than the transport's.
    pub fn into_server(self) -> pb::admin_server::AdminServer<Self> {
        let decode_limit = request_size_limit(self.max_snapshot_bytes);
        pb::admin_server::AdminServer::new(self).max_decoding_message_size(decode_limit)
    }

    /// Stores `new` and publishes the result. The write runs in its own task
    /// so that a client hanging up mid-push cannot leave a version stored but
    /// never published to the agents.
    async fn commit(&self, new: NewVersion) -> Result<PushOutcome, Status> {
        let store = Arc::clone(&self.store);
        let hub = Arc::clone(&self.hub);
        let task = self.tasks.spawn(async move {
            let outcome = store.push(new).await?;
            // Publishing an unchanged head is a no-op; doing it anyway heals a
            // hub that missed a version.
            // With the delta from the previous head built first (hub.rs).
            hub.publish_prepared(Published::from(outcome.record()))
                .await;
            Ok::<_, StoreError>(outcome)
        });
        let outcome = task
            .await
            .map_err(|e| Status::internal(format!("push task failed: {e}")))?
            .map_err(store_status)?;
        let r = outcome.record();
        tracing::info!(
            group = %r.group,
            version = r.version,
            hash = %r.hash,
            unchanged = outcome.is_unchanged(),
            rollback_of = r.rollback_of.unwrap_or(0),
            "push"
        );
        Ok(outcome)
    }

    async fn record(&self, group: &str, version: Option<u64>) -> Result<VersionRecord, Status> {
        self.store
            .get(group, version)
            .await
            .map_err(store_status)?
            .ok_or_else(|| self.not_found(group, version))
    }

    fn not_found(&self, group: &str, version: Option<u64>) -> Status {
        match (version, self.hub.head(group)) {
            (Some(v), Some(head)) => Status::not_found(format!(
                "version {v} of group {group:?} not found (the head is version {})",
                head.version
            )),
            _ => Status::not_found(format!("group {group:?} not found")),
        }
    }

    async fn dry_run(
        &self,
        group: String,
        hash: String,
        expected_version: Option<u64>,
    ) -> Result<pb::PushResponse, Status> {
        let head = self.store.get(&group, None).await.map_err(store_status)?;
        let head_version = head.as_ref().map_or(0, |h| h.version);
        if let Some(expected) = expected_version
            && expected != head_version
        {
            return Err(conflict(&group, expected, head_version));
        }
        let response = match head {
            Some(head) if head.hash == hash => pb::PushResponse {
                group,
                version: head.version,
                hash,
                unchanged: true,
                dry_run: true,
                created_at_unix_ms: head.created_at_unix_ms,
            },
            _ => pb::PushResponse {
                group,
                version: head_version + 1,
                hash,
                unchanged: false,
                dry_run: true,
                created_at_unix_ms: 0,
            },
        };
        Ok(response)
    }
}

impl AdminService {
    /// A push by `caller`, after authorization: validate, then store and
    /// publish (or only report, on a dry run).
    async fn push_as(&self, caller: &Caller, request: pb::PushRequest) -> Result<PushDone, Status> {
        check_group(&request.group)?;
        check_message(&request.message)?;
        let snapshot = request
            .snapshot
            .ok_or_else(|| Status::invalid_argument("snapshot: required"))?;
        let max = self.max_snapshot_bytes;
        // Validation compiles regexes and walks the whole snapshot: keep it
        // off the async workers.
        let (encoded, hash) = tokio::task::spawn_blocking(move || prepare(snapshot, max))
            .await
            .map_err(|e| Status::internal(format!("validation task failed: {e}")))??;
        if request.dry_run {
            let response = self
                .dry_run(request.group, hash, request.expected_version)
                .await?;
            return Ok(PushDone::DryRun(response));
        }
        let outcome = self
            .commit(NewVersion {
                group: request.group,
                snapshot: encoded,
                hash,
                message: request.message,
                author: caller.identity.clone(),
                rollback_of: None,
                expected_version: request.expected_version,
            })
            .await?;
        Ok(PushDone::Committed(outcome))
    }

    /// A rollback by `caller`, after authorization.
    async fn rollback_as(
        &self,
        caller: &Caller,
        request: pb::RollbackRequest,
    ) -> Result<PushOutcome, Status> {
        check_group(&request.group)?;
        check_version_field("to_version", request.to_version)?;
        check_message(&request.message)?;
        let target = self
            .record(&request.group, Some(request.to_version))
            .await?;
        // The old content must still be acceptable today: validation rules or
        // the size limit may have tightened since it was stored, and agents
        // would refuse what we cannot validate ourselves.
        // The content is re-encoded and re-hashed by today's rules, exactly
        // like a push: agents verify against those rules, not the stored ones.
        let max = self.max_snapshot_bytes;
        let bytes = target.snapshot.clone();
        let (group, version) = (request.group.clone(), request.to_version);
        let (snapshot, hash) = tokio::task::spawn_blocking(move || {
            let snapshot = Snapshot::decode(&bytes).map_err(|e| e.to_string())?;
            let encoded = Bytes::from(snapshot.encode());
            vane_model::check_size(encoded.len(), max).map_err(|e| e.to_string())?;
            Ok::<_, String>((encoded, snapshot.content_hash().to_hex()))
        })
        .await
        .map_err(|e| Status::internal(format!("validation task failed: {e}")))?
        .map_err(|e| {
            Status::failed_precondition(capped(format!(
                "to_version: version {version} of group {group:?} no longer validates: {e}"
            )))
        })?;
        let message = if request.message.is_empty() {
            format!("rollback to {}", request.to_version)
        } else {
            request.message
        };
        let outcome = self
            .commit(NewVersion {
                group: request.group,
                snapshot,
                hash,
                message,
                author: caller.identity.clone(),
                rollback_of: Some(request.to_version),
                expected_version: request.expected_version,
            })
            .await?;
        Ok(outcome)
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn push(
        &self,
        request: Request<pb::PushRequest>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        let caller = self.allow_write(
            &request,
            "push",
            &request.get_ref().group,
            &request.get_ref().message,
        )?;
        let request = request.into_inner();
        let (group, message) = (request.group.clone(), request.message.clone());
        let dry_run = request.dry_run;
        let outcome = self.push_as(&caller, request).await;
        match outcome {
            Ok(PushDone::DryRun(response)) => Ok(Response::new(response)),
            Ok(PushDone::Committed(outcome)) => {
                let outcome = Ok(outcome);
                self.audited(&caller, "push", &group, &message, &outcome)
                    .await;
                outcome.map(|o| Response::new(push_response(&o)))
            }
            Err(status) => {
                if !dry_run {
                    self.audited(&caller, "push", &group, &message, &Err(status.clone()))
                        .await;
                }
                Err(status)
            }
        }
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.allow(&request, Action::Read, &request.get_ref().group)?;
        let request = request.into_inner();
        check_group(&request.group)?;
        if request.version == Some(0) {
            return Err(Status::invalid_argument("version: must be at least 1"));
        }
        let record = self.record(&request.group, request.version).await?;
        let snapshot = pb::Snapshot::decode(record.snapshot.as_ref()).map_err(|e| {
            Status::internal(format!(
                "stored version {} of group {:?} does not decode: {e}",
                record.version, record.group
            ))
        })?;
        Ok(Response::new(pb::GetResponse {
            group: request.group,
            info: Some(version_info(&record.meta())),
            snapshot: Some(snapshot),
        }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        self.allow(&request, Action::Read, &request.get_ref().group)?;
        let request = request.into_inner();
        check_group(&request.group)?;
        let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
        let versions = self
            .store
            .history(&request.group, limit)
            .await
            .map_err(store_status)?;
        if versions.is_empty() {
            return Err(self.not_found(&request.group, None));
        }
        Ok(Response::new(pb::HistoryResponse {
            group: request.group,
            versions: versions.iter().map(version_info).collect(),
        }))
    }

    async fn diff(
        &self,
        request: Request<pb::DiffRequest>,
    ) -> Result<Response<pb::DiffResponse>, Status> {
        self.allow(&request, Action::Read, &request.get_ref().group)?;
        let request = request.into_inner();
        check_group(&request.group)?;
        check_version_field("from_version", request.from_version)?;
        check_version_field("to_version", request.to_version)?;
        let (from, to) = tokio::try_join!(
            self.record(&request.group, Some(request.from_version)),
            self.record(&request.group, Some(request.to_version)),
        )?;
        let (from_info, to_info) = (version_info(&from.meta()), version_info(&to.meta()));
        let group = request.group;
        let labels = (
            format!("{group}@{}", from.version),
            format!("{group}@{}", to.version),
        );
        let unified_diff = tokio::task::spawn_blocking(move || {
            let old = canonical_yaml(&from)?;
            let new = canonical_yaml(&to)?;
            Ok::<_, Status>(vane_model::unified_diff(&old, &new, &labels.0, &labels.1))
        })
        .await
        .map_err(|e| Status::internal(format!("diff task failed: {e}")))??;
        Ok(Response::new(pb::DiffResponse {
            group,
            from: Some(from_info),
            to: Some(to_info),
            unified_diff,
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        let caller = self.allow_write(
            &request,
            "rollback",
            &request.get_ref().group,
            &request.get_ref().message,
        )?;
        let request = request.into_inner();
        let (group, message) = (request.group.clone(), request.message.clone());
        let outcome = self.rollback_as(&caller, request).await;
        self.audited(&caller, "rollback", &group, &message, &outcome)
            .await;
        outcome.map(|o| Response::new(push_response(&o)))
    }

    async fn audit(
        &self,
        request: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditResponse>, Status> {
        let caller = self.auth.caller_of(&request)?;
        let request = request.into_inner();
        let limit = match request.limit {
            0 => DEFAULT_AUDIT_LIMIT,
            n => usize::try_from(n)
                .unwrap_or(MAX_AUDIT_LIMIT)
                .min(MAX_AUDIT_LIMIT),
        };
        let entries = if request.group.is_empty() {
            let store = self
                .store
                .audit(
                    None,
                    limit_for_filter(self.auth.allowed_everywhere(&caller, Action::Read)?, limit),
                )
                .await;
            store
                .map_err(store_status)?
                .into_iter()
                .filter(|e| self.auth.allows(&caller, Action::Read, &e.group))
                .take(limit)
                .collect::<Vec<_>>()
        } else {
            check_group(&request.group)?;
            self.auth.authorize(&caller, Action::Read, &request.group)?;
            self.store
                .audit(Some(&request.group), limit)
                .await
                .map_err(store_status)?
        };
        Ok(Response::new(pb::AuditResponse {
            entries: entries.iter().map(pb::AuditEntry::from).collect(),
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = self.auth.caller_of(&request)?;
        let roles = self
            .auth
            .roles(&caller)
            .into_iter()
            .map(|(role, groups)| pb::RoleBinding {
                role: role.as_str().to_owned(),
                groups,
            })
            .collect();
        Ok(Response::new(pb::WhoAmIResponse {
            identity: caller.identity,
            source: caller.source.as_str().to_owned(),
            authorization: if self.auth.enforced() { "on" } else { "off" }.to_owned(),
            roles,
        }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let caller = self.auth.caller_of(&request)?;
        let request = request.into_inner();
        let filter = if request.group.is_empty() {
            None
        } else {
            check_group(&request.group)?;
            Some(request.group.as_str())
        };
        // Every group, or only those the caller may read.
        let everything = match filter {
            Some(group) => {
                self.auth.authorize(&caller, Action::Read, group)?;
                true
            }
            None => self.auth.allowed_everywhere(&caller, Action::Read)?,
        };
        let visible = |group: &str| everything || self.auth.allows(&caller, Action::Read, group);
        let heads: HashMap<String, Arc<Published>> = self
            .hub
            .heads()
            .into_iter()
            .map(|h| (h.group.clone(), h))
            .collect();
        let head_version = |group: &str| heads.get(group).map_or(0, |h| h.version);
        // With a clustered store, the other replicas' agents too; when the
        // store cannot say, this replica's own, and the store shows degraded.
        let others = match self.store.agent_directory() {
            Some(directory) => match directory.others(filter).await {
                Ok(others) => others,
                Err(e) => {
                    tracing::debug!(error = %e, "status without the other replicas' agents");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let agents = crate::replication::merge(self.agents.list(filter), &self.replica, others)
            .iter()
            .filter(|a| visible(&a.record.group))
            .map(|a| agent_status(a, head_version(&a.record.group)))
            .collect();
        let mut groups: Vec<pb::GroupStatus> = heads
            .values()
            .filter(|h| filter.is_none_or(|g| g == h.group) && visible(&h.group))
            .map(|h| pb::GroupStatus {
                group: h.group.clone(),
                head_version: h.version,
                head_hash: h.hash.clone(),
            })
            .collect();
        // A group agents watch before its first push still has a status.
        if let Some(group) = filter
            && groups.is_empty()
        {
            groups.push(pb::GroupStatus {
                group: group.to_owned(),
                head_version: 0,
                head_hash: String::new(),
            });
        }
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        let health = self.store.health();
        let store = pb::StoreStatus {
            backend: health.backend.to_owned(),
            location: health.location,
            degraded: health.degraded.is_some(),
            reason: health.degraded.unwrap_or_default(),
            replica: self.replica.clone(),
        };
        Ok(Response::new(pb::StatusResponse {
            agents,
            groups,
            store: Some(store),
        }))
    }
}

/// What a push did: a dry run's report, or a stored (or unchanged) version.
enum PushDone {
    DryRun(pb::PushResponse),
    Committed(PushOutcome),
}

/// The largest request or response the transport accepts for a snapshot
/// limit: the limit plus room for the rest of the message.
pub fn request_size_limit(max_snapshot_bytes: usize) -> usize {
    max_snapshot_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024)
}

/// Longest error message the Admin API returns. gRPC carries it in HTTP/2
/// headers, and clients reset streams whose headers exceed 16 KiB, which
/// would turn a validation error into what looks like a broken connection.
const MAX_ERROR_MESSAGE_BYTES: usize = 8 * 1024;

/// `message`, cut to [`MAX_ERROR_MESSAGE_BYTES`] on a character boundary.
fn capped(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE_BYTES {
        let mut cut = MAX_ERROR_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(" …");
    }
    message
}

/// Validates a pushed snapshot and returns its canonical encoding and hash.
/// Converts and validates a pushed snapshot, checks its encoded size against
/// `max`, and returns the canonical encoding and its content hash (public
/// for the fuzz targets). The error is the `InvalidArgument` a push gets.
pub fn prepare(snapshot: pb::Snapshot, max: usize) -> Result<(Bytes, String), Status> {
    let snapshot = Snapshot::try_from(snapshot)
        .map_err(|e| Status::invalid_argument(capped(e.to_string())))?;
    let encoded = Bytes::from(snapshot.encode());
    vane_model::check_size(encoded.len(), max)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok((encoded, snapshot.content_hash().to_hex()))
}

fn canonical_yaml(record: &VersionRecord) -> Result<String, Status> {
    Snapshot::decode(&record.snapshot)
        .map(|s| s.to_yaml())
        .map_err(|e| {
            Status::internal(format!(
                "stored version {} of group {:?} does not decode: {e}",
                record.version, record.group
            ))
        })
}

fn check_group(group: &str) -> Result<(), Status> {
    vane_model::names::check_group(group)
        .map_err(|e| Status::invalid_argument(format!("group: {e}")))
}

fn check_message(message: &str) -> Result<(), Status> {
    if message.len() > MAX_MESSAGE_LEN {
        Err(Status::invalid_argument(format!(
            "message: is {} bytes long, over the limit of {MAX_MESSAGE_LEN} bytes",
            message.len()
        )))
    } else {
        Ok(())
    }
}

fn check_version_field(field: &str, version: u64) -> Result<(), Status> {
    if version == 0 {
        Err(Status::invalid_argument(format!(
            "{field}: required (versions start at 1)"
        )))
    } else {
        Ok(())
    }
}

fn conflict(group: &str, expected: u64, actual: u64) -> Status {
    let now = if actual == 0 {
        format!("conflict: group {group:?} has no version yet")
    } else {
        format!("conflict: group {group:?} is at version {actual}")
    };
    let wanted = if expected == 0 {
        "expected it to have none (0)".to_owned()
    } else {
        format!("expected {expected}")
    };
    Status::failed_precondition(format!("{now}, {wanted}"))
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Conflict {
            group,
            expected,
            actual,
        } => conflict(&group, expected, actual),
        StoreError::Unavailable(_) => Status::unavailable(e.to_string()),
        // Not UNAVAILABLE: this server answered, and it is the store behind
        // it that is away. vanectl reads UNAVAILABLE as "server unreachable"
        // (exit 3); this is a refusal (exit 1) whose message says why and
        // whether anything was stored.
        StoreError::Degraded(_) => {
            tracing::warn!(error = %e, "store degraded");
            Status::failed_precondition(e.to_string())
        }
        StoreError::Corrupt(_) | StoreError::Io(_) => {
            tracing::error!(error = %e, "store failure");
            Status::internal(e.to_string())
        }
    }
}

fn push_response(outcome: &PushOutcome) -> pb::PushResponse {
    let r = outcome.record();
    pb::PushResponse {
        group: r.group.clone(),
        version: r.version,
        hash: r.hash.clone(),
        unchanged: outcome.is_unchanged(),
        dry_run: false,
        created_at_unix_ms: r.created_at_unix_ms,
    }
}

fn version_info(m: &VersionMeta) -> pb::VersionInfo {
    pb::VersionInfo {
        version: m.version,
        hash: m.hash.clone(),
        message: m.message.clone(),
        created_at_unix_ms: m.created_at_unix_ms,
        author: m.author.clone(),
        rollback_of: m.rollback_of.unwrap_or(0),
        size_bytes: m.size_bytes,
    }
}

fn agent_status(shared: &SharedAgent, head: u64) -> pb::AgentStatus {
    let a: &AgentRecord = &shared.record;
    let state = match a.state(head) {
        AgentState::Synced => pb::AgentState::Synced,
        AgentState::Stale => pb::AgentState::Stale,
        AgentState::Nacked => pb::AgentState::Nacked,
        AgentState::NotSent => pb::AgentState::NotSent,
    };
    pb::AgentStatus {
        node_id: a.node_id.clone(),
        group: a.group.clone(),
        labels: a.labels.clone(),
        agent_build: a.agent_build.clone(),
        acked_version: a.acked_version,
        acked_hash: a.acked_hash.clone(),
        last_nacked_version: a.last_nacked_version,
        nack_reason: a.nack_reason.clone(),
        connected_since_unix_ms: a.connected_since_unix_ms,
        last_seen_unix_ms: a.last_seen_unix_ms,
        state: state as i32,
        connected: a.connected,
        sent_version: a.sent_version,
        peer: a.peer.clone(),
        replica: shared.replica.clone(),
    }
}

#[cfg(test)]
mod tests {
    use pb::admin_server::Admin;

    use super::*;
    use vane_store::RedbStore;

    const EXAMPLE: &str = r#"
listeners:
  - { name: web, address: "127.0.0.1:18080", protocol: http, route_table: main }
route_tables:
  - name: main
    routes:
      - { match: { path_prefix: / }, cluster: web }
clusters:
  - { name: web, endpoints: [ { address: "127.0.0.1:9003" } ] }
values:
  flag: true
"#;

    fn snapshot(flag: bool) -> pb::Snapshot {
        let text = EXAMPLE.replace("flag: true", &format!("flag: {flag}"));
        let spec = vane_model::parse_file(text.as_bytes(), vane_model::Format::Yaml).unwrap();
        vane_model::proto::spec_to_proto(&spec)
    }

    async fn service(dir: &std::path::Path) -> (AdminService, Arc<dyn Store>) {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir).await.unwrap());
        let svc = AdminService::new(
            Arc::clone(&store),
            Arc::new(Hub::new()),
            Arc::new(AgentRegistry::default()),
            TaskTracker::new(),
            vane_model::DEFAULT_MAX_SNAPSHOT_BYTES,
        );
        (svc, store)
    }

    fn push(group: &str, flag: bool) -> Request<pb::PushRequest> {
        Request::new(pb::PushRequest {
            group: group.into(),
            snapshot: Some(snapshot(flag)),
            expected_version: None,
            dry_run: false,
            message: "m".into(),
        })
    }

    #[tokio::test]
    async fn push_get_history_diff_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, store) = service(dir.path()).await;

        let r1 = svc.push(push("edge", true)).await.unwrap().into_inner();
        assert_eq!((r1.version, r1.unchanged), (1, false));
        assert_eq!(r1.hash.len(), 64);
        assert_eq!(svc.hub.head("edge").unwrap().version, 1);
        let again = svc.push(push("edge", true)).await.unwrap().into_inner();
        assert_eq!((again.version, again.unchanged), (1, true));
        let r2 = svc.push(push("edge", false)).await.unwrap().into_inner();
        assert_eq!(r2.version, 2);

        let got = svc
            .get(Request::new(pb::GetRequest {
                group: "edge".into(),
                version: Some(1),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.info.unwrap().hash, r1.hash);
        assert!(got.snapshot.unwrap().values.contains_key("flag"));

        let history = svc
            .history(Request::new(pb::HistoryRequest {
                group: "edge".into(),
                limit: 0,
            }))
            .await
            .unwrap()
            .into_inner();
        let versions: Vec<u64> = history.versions.iter().map(|v| v.version).collect();
        assert_eq!(versions, vec![2, 1]);

        let diff = svc
            .diff(Request::new(pb::DiffRequest {
                group: "edge".into(),
                from_version: 1,
                to_version: 2,
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(
            diff.unified_diff.contains("--- edge@1"),
            "{}",
            diff.unified_diff
        );
        assert!(diff.unified_diff.contains("+++ edge@2"));
        assert!(
            diff.unified_diff.contains("-  flag: true"),
            "{}",
            diff.unified_diff
        );
        assert!(diff.unified_diff.contains("+  flag: false"));

        let back = svc
            .rollback(Request::new(pb::RollbackRequest {
                group: "edge".into(),
                to_version: 1,
                expected_version: Some(2),
                message: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((back.version, back.hash.as_str()), (3, r1.hash.as_str()));
        let head = store.get("edge", None).await.unwrap().unwrap();
        assert_eq!(head.message, "rollback to 1");
        assert_eq!(head.rollback_of, Some(1));
        assert_eq!(svc.hub.head("edge").unwrap().version, 3);

        // Rolling back to content equal to the head is unchanged.
        let same = svc
            .rollback(Request::new(pb::RollbackRequest {
                group: "edge".into(),
                to_version: 1,
                expected_version: None,
                message: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((same.version, same.unchanged), (3, true));
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn refusals_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, store) = service(dir.path()).await;
        svc.push(push("edge", true)).await.unwrap();

        let err = svc.push(push("bad group", true)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("group: "), "{err:?}");

        let mut missing = push("edge", true);
        missing.get_mut().snapshot = None;
        let err = svc.push(missing).await.unwrap_err();
        assert_eq!(err.message(), "snapshot: required");

        let mut dangling = push("edge", true);
        dangling.get_mut().snapshot.as_mut().unwrap().route_tables[0].routes[0].cluster =
            "paymnets".into();
        let err = svc.push(dangling).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("paymnets"), "{err:?}");

        let mut long = push("edge", false);
        long.get_mut().message = "x".repeat(MAX_MESSAGE_LEN + 1);
        let err = svc.push(long).await.unwrap_err();
        assert!(err.message().starts_with("message: "), "{err:?}");

        let mut stale = push("edge", false);
        stale.get_mut().expected_version = Some(0);
        let err = svc.push(stale).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            err.message(),
            r#"conflict: group "edge" is at version 1, expected it to have none (0)"#
        );
        let mut stale = push("edge", false);
        stale.get_mut().expected_version = Some(3);
        let err = svc.push(stale).await.unwrap_err();
        assert_eq!(
            err.message(),
            r#"conflict: group "edge" is at version 1, expected 3"#
        );

        let err = svc
            .get(Request::new(pb::GetRequest {
                group: "edge".into(),
                version: Some(9),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.message().contains("version 9"), "{err:?}");
        let err = svc
            .history(Request::new(pb::HistoryRequest {
                group: "nope".into(),
                limit: 0,
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(err.message(), r#"group "nope" not found"#);
        let err = svc
            .rollback(Request::new(pb::RollbackRequest {
                group: "edge".into(),
                to_version: 7,
                expected_version: None,
                message: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);

        // Nothing above stored anything.
        assert_eq!(store.history("edge", 0).await.unwrap().len(), 1);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn oversize_snapshot_is_refused_with_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(dir.path()).await.unwrap());
        let svc = AdminService::new(
            Arc::clone(&store),
            Arc::new(Hub::new()),
            Arc::new(AgentRegistry::default()),
            TaskTracker::new(),
            16,
        );
        let err = svc.push(push("edge", true)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().starts_with("snapshot: encoded size"),
            "{err:?}"
        );
        assert!(store.get("edge", None).await.unwrap().is_none());
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn dry_run_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, store) = service(dir.path()).await;
        let mut dry = push("edge", true);
        dry.get_mut().dry_run = true;
        let r = svc.push(dry).await.unwrap().into_inner();
        assert_eq!((r.version, r.unchanged, r.dry_run), (1, false, true));
        assert!(store.get("edge", None).await.unwrap().is_none());
        assert!(svc.hub.head("edge").is_none());

        let real = svc.push(push("edge", true)).await.unwrap().into_inner();
        let mut dry = push("edge", true);
        dry.get_mut().dry_run = true;
        let r = svc.push(dry).await.unwrap().into_inner();
        assert_eq!((r.version, r.unchanged, r.hash), (1, true, real.hash));
        let mut dry = push("edge", false);
        dry.get_mut().dry_run = true;
        dry.get_mut().expected_version = Some(5);
        let err = svc.push(dry).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn status_reports_agents_and_heads() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, store) = service(dir.path()).await;
        svc.push(push("edge", true)).await.unwrap();
        let node = crate::agents::NodeInfo {
            id: "n1".into(),
            group: "edge".into(),
            labels: Default::default(),
            agent_build: "t".into(),
        };
        let key = svc.agents.connect(&node, "127.0.0.1:1", None);
        svc.agents.record_sent(&key, 1);
        svc.agents.record_nack(&key, 1, "bad");
        let status = svc
            .status(Request::new(pb::StatusRequest {
                group: "edge".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.groups.len(), 1);
        assert_eq!(status.groups[0].head_version, 1);
        let a = &status.agents[0];
        assert_eq!(a.state, pb::AgentState::Nacked as i32);
        assert_eq!(a.nack_reason, "bad");

        let empty = svc
            .status(Request::new(pb::StatusRequest {
                group: "other".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(empty.agents.is_empty());
        assert_eq!(empty.groups[0].head_version, 0);
        store.close().await.unwrap();
    }
}
