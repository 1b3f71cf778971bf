//! The `vane.v1.Admin` handlers: each authenticates and authorizes its
//! caller first, then reads or writes through the store, the hub and the
//! agent registry.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};
use vane_proto as pb;

use crate::admin::convert::{
    DEFAULT_AUDIT_LIMIT, MAX_AUDIT_LIMIT, canonical_yaml, check_group, check_message,
    check_version_field, limit_for_filter, push_response, store_status, version_info,
};
use crate::admin::groups::{VersionStream, parse_selector};
use crate::admin::push::PushDone;
use crate::admin::service::AdminService;
use crate::auth::Action;
use crate::hub::Published;
use crate::rollout::engine;

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
            Ok(PushDone::Committed(outcome, warnings, wake)) => {
                let outcome = Ok(outcome);
                self.audited(&caller, "push", &group, &message, &outcome)
                    .await;
                outcome.map(|o| {
                    let mut response = Response::new(pb::PushResponse {
                        warnings,
                        ..push_response(&o)
                    });
                    // The streams wake once the answer is handed over
                    // (`metered.rs` keeps it with the body; without it,
                    // when the response is dropped).
                    if let Some(wake) = wake {
                        response.extensions_mut().insert(wake);
                    }
                    response
                })
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
        let caller = self.allow(&request, Action::Read, &request.get_ref().group)?;
        let show_secrets = request.get_ref().show_secrets;
        if show_secrets {
            self.allow_secrets(&caller, &request.get_ref().group)?;
        }
        check_group(&request.get_ref().group)?;
        if request.get_ref().version == Some(0) {
            return Err(Status::invalid_argument("version: must be at least 1"));
        }
        let record = self
            .record(&request.get_ref().group, request.get_ref().version)
            .await?;
        let snapshot = pb::Snapshot::decode(record.snapshot.as_ref()).map_err(|e| {
            Status::internal(format!(
                "stored version {} of group {:?} does not decode: {e}",
                record.version, record.group
            ))
        })?;
        let has_keys = snapshot.secrets.iter().any(|s| !s.private_key.is_empty());
        let (snapshot, redacted_hash) = match (has_keys, show_secrets) {
            (false, _) => (snapshot, None),
            (true, true) => {
                self.check_key_transport(&request, &record.group, record.version)?;
                (snapshot, None)
            }
            (true, false) => {
                let (group, version) = (record.group.clone(), record.version);
                tokio::task::spawn_blocking(move || {
                    vane_model::Snapshot::try_from(snapshot)
                        .map(crate::secrets::redacted)
                        .map_err(|e| {
                            Status::internal(format!(
                                "stored version {version} of group {group:?} does not validate: {e}"
                            ))
                        })
                })
                .await
                .map_err(|e| Status::internal(format!("redaction task failed: {e}")))??
            }
        };
        Ok(Response::new(pb::GetResponse {
            group: request.into_inner().group,
            info: Some(version_info(&record.meta())),
            snapshot: Some(snapshot),
            redacted: redacted_hash.is_some(),
            redacted_hash: redacted_hash.unwrap_or_default(),
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
        let pruned_versions = self
            .store
            .pruned(&request.group)
            .await
            .map_err(store_status)?;
        let corrupt = self.hub.corrupt();
        Ok(Response::new(pb::HistoryResponse {
            corrupt_versions: versions
                .iter()
                .filter(|v| corrupt.is_known(&v.group, v.version))
                .map(|v| v.version)
                .collect(),
            versions: versions.iter().map(version_info).collect(),
            pruned_versions,
            group: request.group,
        }))
    }

    async fn diff(
        &self,
        request: Request<pb::DiffRequest>,
    ) -> Result<Response<pb::DiffResponse>, Status> {
        let caller = self.allow(&request, Action::Read, &request.get_ref().group)?;
        let show_secrets = request.get_ref().show_secrets;
        if show_secrets {
            self.allow_secrets(&caller, &request.get_ref().group)?;
        }
        let transport = self.check_key_transport(
            &request,
            &request.get_ref().group,
            request.get_ref().to_version,
        );
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
        if show_secrets
            && let Err(status) = transport
            && (crate::secrets::encoded_has_keys(&from.snapshot)
                || crate::secrets::encoded_has_keys(&to.snapshot))
        {
            return Err(status);
        }
        let unified_diff = tokio::task::spawn_blocking(move || {
            // Without show_secrets a key is its fingerprint: a diff still
            // shows that it changed.
            let old = canonical_yaml(&from, !show_secrets)?;
            let new = canonical_yaml(&to, !show_secrets)?;
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
        let (outcome, warnings) = match outcome {
            Ok((outcome, warnings)) => (Ok(outcome), warnings),
            Err(status) => (Err(status), Vec::new()),
        };
        self.audited(&caller, "rollback", &group, &message, &outcome)
            .await;
        outcome.map(|o| {
            Response::new(pb::PushResponse {
                warnings,
                ..push_response(&o)
            })
        })
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

    async fn start_rollout(
        &self,
        request: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        let caller = self.allow_write(
            &request,
            "rollout.start",
            &request.get_ref().group,
            &request.get_ref().message,
        )?;
        let request = request.into_inner();
        let group = request.group.clone();
        let message = request.message.clone();
        let started = self.start_rollout_as(&caller, request).await;
        match started {
            Ok(rollout) => Ok(Response::new(pb::RolloutResponse {
                rollout: Some(rollout),
            })),
            Err(status) => {
                if let Some(audit) = &self.audit {
                    audit.refused(&caller, "rollout.start", &group, &message, &status);
                }
                Err(status)
            }
        }
    }

    async fn get_rollout(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        self.allow(&request, Action::Read, &request.get_ref().group)?;
        let group = request.into_inner().group;
        check_group(&group)?;
        let rollout = self.rollouts.shown(&group).await?;
        Ok(Response::new(pb::RolloutResponse {
            rollout: Some(rollout),
        }))
    }

    async fn control_rollout(
        &self,
        request: Request<pb::ControlRolloutRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        let action = match request.get_ref().action() {
            pb::RolloutAction::Pause => engine::Action::Pause,
            pb::RolloutAction::Resume => engine::Action::Resume,
            pb::RolloutAction::Promote => engine::Action::Promote,
            pb::RolloutAction::Abort => engine::Action::Abort,
            pb::RolloutAction::Unspecified => {
                return Err(Status::invalid_argument(
                    "action: required (PAUSE, RESUME, PROMOTE or ABORT)",
                ));
            }
        };
        let caller = self.allow_write(
            &request,
            action.name(),
            &request.get_ref().group,
            &request.get_ref().reason,
        )?;
        let request = request.into_inner();
        check_group(&request.group)?;
        check_message(&request.reason)?;
        let acted = self
            .rollouts
            .act(&request.group, action, &request.reason, &caller.identity)
            .await;
        if let Err(status) = &acted
            && let Some(audit) = &self.audit
        {
            audit.refused(
                &caller,
                action.name(),
                &request.group,
                &request.reason,
                status,
            );
        }
        acted?;
        let rollout = self.rollouts.shown(&request.group).await?;
        Ok(Response::new(pb::RolloutResponse {
            rollout: Some(rollout),
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

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let caller = self.auth.caller_of(&request)?;
        self.list_groups_as(&caller).await.map(Response::new)
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let caller = self.allow_write(
            &request,
            "delete",
            &request.get_ref().group,
            &request.get_ref().message,
        )?;
        let request = request.into_inner();
        let (group, message) = (request.group.clone(), request.message.clone());
        match self.delete_group_as(&caller, request).await {
            Ok(deleted) => {
                self.audit_delete(&caller, &message, &deleted).await;
                Ok(Response::new(deleted))
            }
            Err(status) => {
                if let Some(audit) = &self.audit {
                    audit.refused(&caller, "delete", &group, &message, &status);
                }
                Err(status)
            }
        }
    }

    type WatchGroupStream = VersionStream;

    async fn watch_group(
        &self,
        request: Request<pb::WatchGroupRequest>,
    ) -> Result<Response<Self::WatchGroupStream>, Status> {
        let caller = self.allow(&request, Action::Read, &request.get_ref().group)?;
        let group = request.into_inner().group;
        self.watch_group_as(&caller, group).await.map(Response::new)
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
        let selector = parse_selector(&request.selector)?;
        let agents = self
            .agent_statuses(filter, &visible, selector.as_ref())
            .await;
        let mut groups: Vec<pb::GroupStatus> = heads
            .values()
            .filter(|h| filter.is_none_or(|g| g == h.group) && visible(&h.group))
            .map(|h| pb::GroupStatus {
                group: h.group.clone(),
                head_version: h.version,
                head_hash: h.hash.clone(),
                ..pb::GroupStatus::default()
            })
            .collect();
        // A corrupt newest version degrades its group (integrity.rs), also
        // one with nothing to serve.
        for corrupt in self.hub.corrupt().heads() {
            if filter.is_some_and(|g| g != corrupt.group) || !visible(&corrupt.group) {
                continue;
            }
            let at = match groups.iter().position(|g| g.group == corrupt.group) {
                Some(at) => at,
                None => {
                    groups.push(pb::GroupStatus {
                        group: corrupt.group.clone(),
                        ..pb::GroupStatus::default()
                    });
                    groups.len() - 1
                }
            };
            groups[at].degraded = true;
            groups[at].corrupt_version = corrupt.version;
            groups[at].reason = corrupt.to_string();
        }
        let mut rollouts = Vec::new();
        let rollout_groups: Vec<String> = match filter {
            Some(group) => vec![group.to_owned()],
            None => self
                .rollouts
                .all()
                .into_iter()
                .map(|k| k.rollout.group)
                .filter(|g| visible(g))
                .collect(),
        };
        for group in rollout_groups {
            // NOT_FOUND: the group never had one.
            if let Ok(shown) = self.rollouts.shown(&group).await {
                rollouts.push(shown);
            }
        }
        // A group agents watch before its first push (or after it was
        // deleted) still has a status; a name nobody uses is a typo.
        if let Some(group) = filter
            && groups.is_empty()
        {
            let has_agents = !agents.is_empty() || !self.agents.list(Some(group)).is_empty();
            let stored = !self
                .store
                .history(group, 1)
                .await
                .map_err(store_status)?
                .is_empty();
            if !has_agents && !stored && rollouts.is_empty() {
                let known = self.known_groups().await?;
                return Err(self.unknown_group(&caller, group, &known));
            }
            groups.push(pb::GroupStatus {
                group: group.to_owned(),
                ..pb::GroupStatus::default()
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
            rollouts,
            agents,
            groups,
            store: Some(store),
        }))
    }

    async fn server_version(
        &self,
        request: Request<pb::ServerVersionRequest>,
    ) -> Result<Response<pb::ServerVersionResponse>, Status> {
        // Any authenticated caller, whatever its roles: the build is not
        // a secret, but an anonymous prober learns nothing from it.
        let caller = self.auth.caller_of(&request)?;
        if self.auth.enforced() && caller.identity.is_empty() {
            return Err(Status::unauthenticated(
                "server version: no identity (send a client certificate or a bearer token)",
            ));
        }
        Ok(Response::new(pb::ServerVersionResponse {
            version: vane_build_info::VERSION.to_owned(),
            commit: vane_build_info::COMMIT.to_owned(),
            commit_date: vane_build_info::COMMIT_DATE.to_owned(),
        }))
    }
}
