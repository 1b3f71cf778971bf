//! Pushes and rollbacks: validate (off the async workers), then either
//! report what a dry run would do, or store the version and publish it to
//! the hub in a task of its own (a client hanging up mid-push cannot leave a
//! version stored but unpublished).

use std::sync::Arc;

use bytes::Bytes;
use tonic::Status;
use vane_model::{Snapshot, SnapshotSpec};
use vane_proto as pb;
use vane_store::{NewVersion, PushOutcome, StoreError, VersionRecord};

use crate::admin::convert::{
    capped, check_group, check_message, check_version_field, conflict, dates, has_placeholders,
    prepare_push, store_status,
};
use crate::admin::service::AdminService;
use crate::auth::Caller;
use crate::hub::{Published, Wake};
use crate::integrity::{Corrupt, verify_off_thread};
use crate::rollout::service::{Start, in_progress};
use crate::rollout::spec::Spec;

impl AdminService {
    /// Stores `new` and publishes the result. The write runs in its own task
    /// so that a client hanging up mid-push cannot leave a version stored but
    /// never published to the agents. The log line names `caller`'s
    /// identity and address.
    pub(crate) async fn commit(
        &self,
        caller: &Caller,
        new: NewVersion,
    ) -> Result<PushOutcome, Status> {
        // Dropped here: the streams wake now.
        Ok(self.commit_deferred(caller, new).await?.0)
    }

    /// [`Self::commit`], but the group's streams wake when the returned
    /// [`Wake`] is dropped (at the latest after
    /// `hub::WAKE_DEFERRED_AT_MOST`): the version is stored and the head
    /// already, so the caller can answer first (hub.rs).
    pub(crate) async fn commit_deferred(
        &self,
        caller: &Caller,
        new: NewVersion,
    ) -> Result<(PushOutcome, Option<Wake>), Status> {
        let store = Arc::clone(&self.store);
        let hub = Arc::clone(&self.hub);
        let task = self.tasks.spawn(async move {
            let outcome = store.push(new).await?;
            // An unchanged head was read back from the store: it is checked
            // against its hash before it may be published (integrity.rs).
            if outcome.is_unchanged()
                && let (_, Err(corrupt)) = verify_off_thread(outcome.record().clone()).await
            {
                return Ok(Err(corrupt));
            }
            // Publishing an unchanged head is a no-op; doing it anyway heals a
            // hub that missed a version.
            // With the delta from the previous head built first (hub.rs).
            // A caller that went away drops the wake with this task's output.
            let wake = hub
                .publish_prepared_deferred(Published::from(outcome.record()))
                .await;
            Ok::<_, StoreError>(Ok((outcome, wake)))
        });
        let outcome = task
            .await
            .map_err(|e| Status::internal(format!("push task failed: {e}")))?
            .map_err(store_status)?
            .map_err(|corrupt| {
                // The store keeps versions immutable: equal content cannot
                // replace the damaged copy, a new version can.
                let hint = format!(
                    "; this push has the content it should have, and versions are immutable: push changed content, or `vanectl rollback {} --to` a good version, to create a new one",
                    corrupt.group
                );
                let status = self.corrupt_status(corrupt);
                Status::data_loss(capped(format!("{}{hint}", status.message())))
            })?;
        let (outcome, wake) = outcome;
        let r = outcome.record();
        tracing::info!(
            identity = %caller.identity,
            peer = %caller.peer,
            group = %r.group,
            version = r.version,
            hash = %r.hash,
            unchanged = outcome.is_unchanged(),
            rollback_of = r.rollback_of.unwrap_or(0),
            "push"
        );
        Ok((outcome, wake))
    }

    /// A version read from the store and checked against its hash (`get`,
    /// `diff`, the source of a rollback): a corrupt one is DATA_LOSS naming
    /// the group, the version and "corrupt", and is never shown as valid.
    pub(crate) async fn record(
        &self,
        group: &str,
        version: Option<u64>,
    ) -> Result<VersionRecord, Status> {
        let record = match self.store.get(group, version).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(self.not_found(group, version)),
            // The store could not even decode the record.
            Err(StoreError::Corrupt(detail)) if version.is_some() => {
                let corrupt = Corrupt::unreadable(group, version.unwrap_or(0), detail);
                return Err(self.corrupt_status(corrupt));
            }
            Err(e) => return Err(store_status(e)),
        };
        self.verified(record).await
    }

    /// `record`, checked against its hash.
    pub(crate) async fn verified(&self, record: VersionRecord) -> Result<VersionRecord, Status> {
        match verify_off_thread(record).await {
            (record, Ok(())) => Ok(record),
            (_, Err(corrupt)) => Err(self.corrupt_status(corrupt)),
        }
    }

    /// Logs a corrupt version, tells the hub (a corrupt newest version
    /// degrades its group) and says it to the caller.
    fn corrupt_status(&self, corrupt: Corrupt) -> Status {
        tracing::error!(
            group = %corrupt.group,
            version = corrupt.version,
            error = %corrupt,
            "corrupt version in the store (run `vane-control check`)"
        );
        let status = Status::data_loss(capped(corrupt.to_string()));
        self.hub.found_corrupt(corrupt);
        status
    }

    pub(crate) fn not_found(&self, group: &str, version: Option<u64>) -> Status {
        match (version, self.hub.head(group)) {
            // Numbers are gap-free and never reused: an absent one below the
            // head was removed by retention.
            (Some(v), Some(head)) if v < head.version => Status::not_found(format!(
                "version {v} of group {group:?} was pruned by retention (--retain-versions, --retain-age); \
                 `vanectl history {group}` lists the versions kept (the head is version {})",
                head.version
            )),
            (Some(v), Some(head)) => Status::not_found(format!(
                "version {v} of group {group:?} not found (the head is version {})",
                head.version
            )),
            _ => Status::not_found(format!("unknown group {group:?}: not found")),
        }
    }

    /// `snapshot` with every redacted placeholder (`redacted:sha256:…`, what
    /// `get` shows for a key) replaced by the key of the group's head it
    /// stands for, so a `get -o yaml` edited and pushed back keeps its keys.
    /// A placeholder of a key the head does not hold is `InvalidArgument`
    /// naming its field.
    pub(crate) async fn resolved(
        &self,
        group: &str,
        snapshot: pb::Snapshot,
    ) -> Result<pb::Snapshot, Status> {
        if !has_placeholders(&snapshot) {
            return Ok(snapshot);
        }
        let head = match self.store.get(group, None).await.map_err(store_status)? {
            Some(head) => Some(self.verified(head).await?),
            None => None,
        };
        tokio::task::spawn_blocking(move || {
            use prost::Message as _;
            let invalid = |e: String| Status::invalid_argument(capped(e));
            let mut spec = SnapshotSpec::try_from(snapshot).map_err(|e| invalid(e.to_string()))?;
            let known = match head {
                Some(head) => {
                    let decoded = pb::Snapshot::decode(head.snapshot.as_ref())
                        .map_err(|e| Status::internal(format!("the head does not decode: {e}")))?;
                    vec![
                        SnapshotSpec::try_from(decoded).map_err(|e| {
                            Status::internal(format!("the head does not convert: {e}"))
                        })?,
                    ]
                }
                None => Vec::new(),
            };
            let known: Vec<&SnapshotSpec> = known.iter().collect();
            vane_model::redact::resolve_redacted(&mut spec, &known)
                .map_err(|e| invalid(e.to_string()))?;
            Ok(vane_model::proto::spec_to_proto(&spec))
        })
        .await
        .map_err(|e| Status::internal(format!("resolution task failed: {e}")))?
    }

    pub(crate) async fn dry_run(
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
                warnings: Vec::new(),
            },
            _ => pb::PushResponse {
                group,
                version: head_version + 1,
                hash,
                unchanged: false,
                dry_run: true,
                created_at_unix_ms: 0,
                warnings: Vec::new(),
            },
        };
        Ok(response)
    }
}

impl AdminService {
    /// A push by `caller`, after authorization: validate, then store and
    /// publish (or only report, on a dry run).
    pub(crate) async fn push_as(
        &self,
        caller: &Caller,
        request: pb::PushRequest,
    ) -> Result<PushDone, Status> {
        check_group(&request.group)?;
        check_message(&request.message)?;
        let snapshot = request
            .snapshot
            .ok_or_else(|| Status::invalid_argument("snapshot: required"))?;
        let snapshot = self.resolved(&request.group, snapshot).await?;
        let max = self.max_snapshot_bytes;
        let now = std::time::SystemTime::now();
        // Validation compiles regexes and walks the whole snapshot: keep it
        // off the async workers.
        let (encoded, hash, warnings) =
            tokio::task::spawn_blocking(move || prepare_push(snapshot, max, now))
                .await
                .map_err(|e| Status::internal(format!("validation task failed: {e}")))??;
        // A running rollout refuses plain pushes (the store checks again in
        // the write itself); `supersede` ends it instead.
        let rollout = if request.supersede {
            self.rollouts
                .superseding(&request.group, &caller.identity)
                .await?
        } else {
            if let Some(known) = self.rollouts.running_known(&request.group) {
                return Err(in_progress(&known));
            }
            None
        };
        if request.dry_run {
            let response = self
                .dry_run(request.group, hash, request.expected_version)
                .await?;
            return Ok(PushDone::DryRun(pb::PushResponse {
                warnings,
                ..response
            }));
        }
        let superseding = rollout.is_some();
        let group = request.group.clone();
        let (outcome, wake) = self
            .commit_deferred(
                caller,
                NewVersion {
                    candidate: None,
                    rollout,
                    group: request.group,
                    snapshot: encoded,
                    hash,
                    message: request.message,
                    author: caller.identity.clone(),
                    rollback_of: None,
                    expected_version: request.expected_version,
                },
            )
            .await?;
        if superseding {
            // Its cohort ends at once on this server (the others follow
            // within a driver tick).
            self.rollouts.reread(&group).await;
            tracing::info!(group, "push superseded the running rollout");
        }
        Ok(PushDone::Committed(outcome, warnings, wake))
    }

    /// A rollback by `caller`, after authorization, and its warnings. A
    /// version whose certificate has expired (or is not valid yet) is
    /// restored only with `force` (its date errors become warnings): agents
    /// would serve a certificate clients refuse.
    pub(crate) async fn rollback_as(
        &self,
        caller: &Caller,
        request: pb::RollbackRequest,
    ) -> Result<(PushOutcome, Vec<String>), Status> {
        check_group(&request.group)?;
        check_version_field("to_version", request.to_version)?;
        check_message(&request.message)?;
        if let Some(known) = self.rollouts.running_known(&request.group) {
            return Err(in_progress(&known));
        }
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
        let (force, now) = (request.force, std::time::SystemTime::now());
        let (snapshot, hash, warnings) = tokio::task::spawn_blocking(move || {
            let snapshot = Snapshot::decode(&bytes).map_err(|e| e.to_string())?;
            let warnings = match dates(&snapshot, now) {
                Ok(warnings) => warnings,
                Err(e) if force => vec![format!("restored anyway (--force): {e}")],
                Err(e) => {
                    return Err(format!(
                        "{e}; push a renewed certificate instead, or roll back with --force to restore it anyway"
                    ));
                }
            };
            let (encoded, hash) = snapshot.encode_and_hash();
            vane_model::check_size(encoded.len(), max).map_err(|e| e.to_string())?;
            Ok::<_, String>((Bytes::from(encoded), hash.to_hex(), warnings))
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
            .commit(
                caller,
                NewVersion {
                    candidate: None,
                    rollout: None,
                    group: request.group,
                    snapshot,
                    hash,
                    message,
                    author: caller.identity.clone(),
                    rollback_of: Some(request.to_version),
                    expected_version: request.expected_version,
                },
            )
            .await?;
        Ok((outcome, warnings))
    }
}

impl AdminService {
    /// Starts a rollout for `caller`, after authorization: validate the
    /// plan and the candidate like a push, then store both in one write.
    pub(crate) async fn start_rollout_as(
        &self,
        caller: &Caller,
        request: pb::StartRolloutRequest,
    ) -> Result<pb::Rollout, Status> {
        check_group(&request.group)?;
        check_message(&request.message)?;
        let spec = Spec::try_from(request.spec.unwrap_or_default())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let snapshot = request
            .snapshot
            .ok_or_else(|| Status::invalid_argument("snapshot: required"))?;
        let snapshot = self.resolved(&request.group, snapshot).await?;
        let max = self.max_snapshot_bytes;
        let now = std::time::SystemTime::now();
        let (encoded, hash, warnings) =
            tokio::task::spawn_blocking(move || prepare_push(snapshot, max, now))
                .await
                .map_err(|e| Status::internal(format!("validation task failed: {e}")))??;
        for warning in &warnings {
            tracing::warn!(group = %request.group, "rollout candidate: {warning}");
        }
        let group = request.group.clone();
        self.rollouts
            .start(Start {
                group: request.group,
                snapshot: encoded,
                hash,
                spec,
                message: request.message,
                author: caller.identity.clone(),
                expected_version: request.expected_version,
            })
            .await?;
        if let Some(audit) = &self.audit
            && let Some(known) = self.rollouts.known(&group)
        {
            let r = &known.rollout;
            let entry = vane_store::AuditRecord {
                identity: caller.identity.clone(),
                peer: caller.peer.clone(),
                action: "rollout.start".to_owned(),
                group: group.clone(),
                version: r.candidate.version,
                hash: r.candidate.hash.clone(),
                message: format!("rollout {} {}: {}", r.id, r.state.name(), r.reason),
                result: "created".to_owned(),
                ..vane_store::AuditRecord::default()
            };
            if let Err(e) = audit.record(entry).await {
                tracing::error!(error = %e, group, "audit entry of a rollout start not written");
            }
        }
        self.rollouts.shown(&group).await
    }
}

/// What a push did: a dry run's report, or a stored (or unchanged) version.
pub(crate) enum PushDone {
    DryRun(pb::PushResponse),
    /// With the push's warnings, and what wakes the group's streams
    /// (dropped once the answer is handed over: see `hub::Wake`).
    Committed(PushOutcome, Vec<String>, Option<Wake>),
}
