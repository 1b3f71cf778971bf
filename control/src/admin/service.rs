//! [`AdminService`]: its settings, and the checks every handler starts
//! with (who is calling, may they, the push rate limit, the audit log).

use std::sync::Arc;

use tokio_util::task::TaskTracker;
use tonic::{Request, Status};
use vane_proto as pb;
use vane_store::{AuditRecord, PushOutcome, Store};

use crate::accept::ConnInfo;
use crate::admin::convert::request_size_limit;
use crate::agents::AgentRegistry;
use crate::audit::AuditLog;
use crate::auth::rate::PushLimiter;
use crate::auth::{Action, Auth, Caller};
use crate::hub::Hub;
use crate::rollout::driver::Rollouts;
use crate::targets::Cohorts;

/// The `Admin` gRPC service.
#[derive(Clone)]
pub struct AdminService {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) agents: Arc<AgentRegistry>,
    pub(crate) tasks: TaskTracker,
    pub(crate) max_snapshot_bytes: usize,
    /// This server's name among the replicas ("" for a single server).
    pub(crate) replica: String,
    pub(crate) auth: Auth,
    pub(crate) audit: Option<Arc<AuditLog>>,
    pub(crate) push_limit: Arc<PushLimiter>,
    pub(crate) rollouts: Arc<Rollouts>,
    /// Cancelled when the server stops: ends `WatchGroup` streams.
    pub(crate) stop: tokio_util::sync::CancellationToken,
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
        let rollouts = Rollouts::new(
            Arc::clone(&store),
            Arc::clone(&hub),
            Arc::new(Cohorts::new()),
            Arc::clone(&agents),
            String::new(),
            None,
        );
        Self {
            rollouts,
            store,
            hub,
            agents,
            tasks,
            max_snapshot_bytes,
            replica: String::new(),
            auth: Auth::open(),
            audit: None,
            push_limit: Arc::new(PushLimiter::new(0.0, 1)),
            stop: tokio_util::sync::CancellationToken::new(),
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
    pub(crate) fn allow<T>(
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

    /// Whether `caller` may see the private keys of `group` in clear (role
    /// `admin`, `show_secrets` asked); a refusal names the role and is
    /// audited like any refused read.
    pub(crate) fn allow_secrets(&self, caller: &Caller, group: &str) -> Result<(), Status> {
        let Err(status) = self.auth.authorize(caller, Action::ReadSecrets, group) else {
            return Ok(());
        };
        let status = match status.code() {
            tonic::Code::PermissionDenied => Status::permission_denied(format!(
                "{}: show_secrets (--show-secrets) needs role admin on the group; without it private keys are shown as redacted:sha256:<fingerprint>",
                status.message()
            )),
            _ => status,
        };
        if let Some(audit) = &self.audit {
            audit.refused(caller, "read", group, "show_secrets", &status);
        }
        Err(status)
    }

    /// Refuses to send keys in clear over `request`'s connection when it is
    /// plaintext to a peer off loopback (`crate::secrets`).
    pub(crate) fn check_key_transport<T>(
        &self,
        request: &Request<T>,
        group: &str,
        version: u64,
    ) -> Result<(), Status> {
        let tcp_only = request.remote_addr().map(|remote| ConnInfo {
            remote,
            identity: None,
            tls: false,
        });
        let conn = request.extensions().get::<ConnInfo>().or(tcp_only.as_ref());
        match crate::secrets::refusal_for(conn) {
            None => Ok(()),
            Some(why) => {
                tracing::warn!(group, version, peer = ?conn.map(|c| c.remote), "private keys not sent: {why}");
                Err(crate::secrets::refused(group, version, &why))
            }
        }
    }

    /// Records the outcome of a push or rollback in the audit log: the
    /// version it created (waiting until that entry is durable) or why it
    /// was refused.
    pub(crate) async fn audited(
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
    pub(crate) fn allow_write<T>(
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

    /// Where rollouts are kept and driven (by default, rollouts of this
    /// service alone, whose cohorts no watch stream follows).
    #[must_use]
    pub fn with_rollouts(mut self, rollouts: Arc<Rollouts>) -> Self {
        self.rollouts = rollouts;
        self
    }

    /// Ends the observers' streams (`WatchGroup`) when `stop` is cancelled
    /// (default: a token nobody cancels).
    #[must_use]
    pub fn with_shutdown(mut self, stop: tokio_util::sync::CancellationToken) -> Self {
        self.stop = stop;
        self
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
}
