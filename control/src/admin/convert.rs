//! The Admin API's checks and conversions: limits, request fields checked
//! with the field named, store errors and records turned into gRPC
//! statuses and messages, and `prepare`, the one way a pushed snapshot
//! becomes stored bytes and a hash.

use bytes::Bytes;
use tonic::Status;
use vane_model::Snapshot;
use vane_proto as pb;
use vane_store::{PushOutcome, StoreError, VersionMeta, VersionRecord};

use crate::agents::{AgentRecord, AgentState, SharedAgent};

/// Audit entries returned when the request sets no limit.
pub const DEFAULT_AUDIT_LIMIT: usize = 100;
/// Most audit entries one request returns.
pub const MAX_AUDIT_LIMIT: usize = 10_000;

/// How many entries to read for `limit` visible ones: more when the caller
/// sees only some groups and the rest are filtered out.
pub(crate) fn limit_for_filter(everything: bool, limit: usize) -> usize {
    if everything {
        limit
    } else {
        limit.saturating_mul(10).min(vane_store::AUDIT_RETENTION)
    }
}

/// Longest push or rollback message, in bytes.
pub const MAX_MESSAGE_LEN: usize = 1024;

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
pub(crate) const MAX_ERROR_MESSAGE_BYTES: usize = 8 * 1024;

/// `message`, cut to [`MAX_ERROR_MESSAGE_BYTES`] on a character boundary.
pub(crate) fn capped(mut message: String) -> String {
    if crate::text::cut(&mut message, MAX_ERROR_MESSAGE_BYTES) {
        message.push_str(" …");
    }
    message
}

/// Converts and validates a pushed snapshot, checks its encoded size against
/// `max`, and returns the canonical encoding and its content hash (public
/// for the fuzz targets). The error is the `InvalidArgument` a push gets.
pub fn prepare(snapshot: pb::Snapshot, max: usize) -> Result<(Bytes, String), Status> {
    let snapshot = Snapshot::try_from(snapshot)
        .map_err(|e| Status::invalid_argument(capped(e.to_string())))?;
    // One canonical form for both the bytes and the hash.
    let (encoded, hash) = snapshot.encode_and_hash();
    vane_model::check_size(encoded.len(), max)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok((Bytes::from(encoded), hash.to_hex()))
}

/// The canonical YAML of a stored version, its private keys replaced by
/// their placeholders when `redact`.
/// [`prepare`] for a push or a rollout's candidate, at `now`: the
/// certificates' dates are checked too. An expired (or not yet valid)
/// certificate refuses the push like any invalid field; one that expires
/// within 30 days is accepted with a warning, returned with the bytes and
/// the hash.
pub(crate) fn prepare_push(
    snapshot: pb::Snapshot,
    max: usize,
    now: std::time::SystemTime,
) -> Result<(Bytes, String, Vec<String>), Status> {
    let snapshot = Snapshot::try_from(snapshot)
        .map_err(|e| Status::invalid_argument(capped(e.to_string())))?;
    let warnings = dates(&snapshot, now).map_err(Status::invalid_argument)?;
    let (encoded, hash) = snapshot.encode_and_hash();
    vane_model::check_size(encoded.len(), max)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok((Bytes::from(encoded), hash.to_hex(), warnings))
}

/// The dates of `snapshot`'s certificates at `now`: the warnings, or the
/// errors in one line (each naming its field).
pub(crate) fn dates(
    snapshot: &Snapshot,
    now: std::time::SystemTime,
) -> Result<Vec<String>, String> {
    let report = vane_model::tls_check::check_dates(&snapshot.secrets, now);
    match vane_model::ValidationError::from_errors(report.errors) {
        Some(errors) => Err(capped(errors.to_string())),
        None => Ok(report.warnings.iter().map(ToString::to_string).collect()),
    }
}

/// Whether a pushed snapshot holds a redacted placeholder (a `get -o yaml`
/// pushed back) to resolve from the group's head.
pub(crate) fn has_placeholders(snapshot: &pb::Snapshot) -> bool {
    snapshot
        .secrets
        .iter()
        .any(|s| vane_model::redact::is_redacted(&s.private_key))
}

pub(crate) fn canonical_yaml(record: &VersionRecord, redact: bool) -> Result<String, Status> {
    Snapshot::decode(&record.snapshot)
        .map(|mut s| {
            if redact {
                vane_model::redact::redact_snapshot(&mut s);
            }
            s.to_yaml()
        })
        .map_err(|e| {
            Status::internal(format!(
                "stored version {} of group {:?} does not decode: {e}",
                record.version, record.group
            ))
        })
}

pub(crate) fn check_group(group: &str) -> Result<(), Status> {
    vane_model::names::check_group(group)
        .map_err(|e| Status::invalid_argument(format!("group: {e}")))
}

pub(crate) fn check_message(message: &str) -> Result<(), Status> {
    if message.len() > MAX_MESSAGE_LEN {
        Err(Status::invalid_argument(format!(
            "message: is {} bytes long, over the limit of {MAX_MESSAGE_LEN} bytes",
            message.len()
        )))
    } else {
        Ok(())
    }
}

pub(crate) fn check_version_field(field: &str, version: u64) -> Result<(), Status> {
    if version == 0 {
        Err(Status::invalid_argument(format!(
            "{field}: required (versions start at 1)"
        )))
    } else {
        Ok(())
    }
}

pub(crate) fn conflict(group: &str, expected: u64, actual: u64) -> Status {
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

pub(crate) fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Conflict {
            group,
            expected,
            actual,
        } => conflict(&group, expected, actual),
        StoreError::RolloutActive { .. } => Status::failed_precondition(format!(
            "{e}; wait for it, abort it (vanectl rollout abort), or push with --supersede"
        )),
        StoreError::RolloutMoved { .. } => Status::failed_precondition(format!(
            "{e}: the rollout changed meanwhile; look at `vanectl rollout status` and try again"
        )),
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

pub(crate) fn push_response(outcome: &PushOutcome) -> pb::PushResponse {
    let r = outcome.record();
    pb::PushResponse {
        group: r.group.clone(),
        version: r.version,
        hash: r.hash.clone(),
        unchanged: outcome.is_unchanged(),
        dry_run: false,
        created_at_unix_ms: r.created_at_unix_ms,
        warnings: Vec::new(),
    }
}

pub(crate) fn version_info(m: &VersionMeta) -> pb::VersionInfo {
    pb::VersionInfo {
        rollout_id: m
            .candidate
            .as_ref()
            .map(|c| c.rollout_id.clone())
            .unwrap_or_default(),
        rollout_stable_version: m.candidate.as_ref().map_or(0, |c| c.stable_version),
        version: m.version,
        hash: m.hash.clone(),
        message: m.message.clone(),
        created_at_unix_ms: m.created_at_unix_ms,
        author: m.author.clone(),
        rollback_of: m.rollback_of.unwrap_or(0),
        size_bytes: m.size_bytes,
    }
}

pub(crate) fn agent_status(shared: &SharedAgent, head: u64) -> pb::AgentStatus {
    let a: &AgentRecord = &shared.record;
    let state = match a.state(head) {
        AgentState::Synced => pb::AgentState::Synced,
        AgentState::Stale => pb::AgentState::Stale,
        AgentState::Nacked => pb::AgentState::Nacked,
        AgentState::NotSent => pb::AgentState::NotSent,
        AgentState::Unacked => pb::AgentState::Unacked,
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
        degraded: a.health_degraded,
        health_reason: a.health_reason.clone(),
        health_version: a.health_version,
        nack_code: a.nack_code,
        sessions: a.sessions,
        client: if a.client.is_empty() {
            "vane-agent".to_owned()
        } else {
            a.client.clone()
        },
        ..pb::AgentStatus::default()
    }
}
