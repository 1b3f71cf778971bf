//! `flagd.sync.v1.FlagSyncService`: flagd's providers in in-process mode
//! open `SyncFlags` with the group as selector and get the group's whole
//! flag configuration at once and again on every new version (the one
//! their rollout cohort says, like any node), until they hang up, the
//! server stops or a reload withdraws their access. `FetchAllFlags` gives
//! the configuration once.
//!
//! Each `SyncFlags` stream is a node of the group in the registry (client
//! `flagd`, node id = the provider id, else `flagd-<peer address>`), counted
//! against the per-identity stream cap and `--max-agents`. The protocol has
//! no acknowledgement: status shows these nodes `UNACKED` at the version
//! last sent.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use vane_proto::flagd::sync::v1 as fpb;
use vane_proto::flagd::sync::v1::flag_sync_service_server::{
    FlagSyncService as FlagSync, FlagSyncServiceServer,
};

use crate::agents::{AgentRegistry, NodeInfo, StreamKey};
use crate::auth::{Action, Caller};
use crate::hub::Head;
use crate::targets::{self, CohortView};
use crate::watch::Parts;
use crate::watch::admission::{Access, Credentials, MAX_NODE_FIELD_LEN};

/// The `client` of these nodes in the registry and status.
pub use vane_store::agents::FLAGD_CLIENT as CLIENT;

/// The flagd sync service, sharing the watch service's parts.
#[derive(Clone)]
pub struct FlagSyncService {
    parts: Arc<Parts>,
}

impl std::fmt::Debug for FlagSyncService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlagSyncService").finish_non_exhaustive()
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<fpb::SyncFlagsResponse, Status>> + Send>>;

impl FlagSyncService {
    /// The service beside `watch`: the same hub, cohorts, registry, policy,
    /// limits and shutdown.
    pub fn beside(watch: &crate::watch::DiscoveryService) -> Self {
        Self {
            parts: Arc::new(watch.parts()),
        }
    }

    /// The gRPC service to add to a tonic server.
    pub fn into_server(self) -> FlagSyncServiceServer<Self> {
        FlagSyncServiceServer::new(self).max_encoding_message_size(usize::MAX)
    }

    fn refused(&self, caller: &Caller, group: &str, status: &Status) {
        tracing::info!(identity = %caller.identity, peer = %caller.peer, group, code = ?status.code(), reason = status.message(), "flagd sync refused");
        if let Some(audit) = &self.parts.audit {
            audit.refused(caller, "flagd", group, "", status);
        }
    }

    /// The caller, allowed to follow the selector's group.
    fn admit<T>(
        &self,
        request: &Request<T>,
        selector: &str,
    ) -> Result<(Credentials, Caller, String), Status> {
        let credentials = Credentials::of_request(request);
        let caller = credentials
            .caller(&self.parts.auth)
            .map_err(|(anonymous, status)| {
                self.refused(&anonymous, "", &status);
                status
            })?;
        // flagd's providers send the selector in the request, some also as
        // the `flagd-selector` header.
        let header = request
            .metadata()
            .get("flagd-selector")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let group = if selector.is_empty() {
            header
        } else {
            selector
        };
        let group = group.trim().to_owned();
        if let Err(e) = vane_model::names::check_group(&group) {
            let status = Status::invalid_argument(format!(
                "selector: {e} (the selector names the Vane group whose flags to sync)"
            ));
            self.refused(&caller, "", &status);
            return Err(status);
        }
        if let Err(status) = self.parts.auth.authorize(&caller, Action::Watch, &group) {
            self.refused(&caller, &group, &status);
            return Err(status);
        }
        Ok((credentials, caller, group))
    }
}

#[tonic::async_trait]
impl FlagSync for FlagSyncService {
    type SyncFlagsStream = Responses;

    async fn sync_flags(
        &self,
        request: Request<fpb::SyncFlagsRequest>,
    ) -> Result<Response<Responses>, Status> {
        let changes = self.parts.auth.subscribe_changes();
        let agent_build = request
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(|s| crate::text::prefix(s, MAX_NODE_FIELD_LEN))
            .unwrap_or_default();
        // Deprecated in flagd's schema for the `flagd-selector` header, but
        // both are sent by the providers; `admit` takes either.
        #[allow(deprecated)]
        let selector = request.get_ref().selector.clone();
        let (credentials, caller, group) = self.admit(&request, &selector)?;
        let provider_id = request.into_inner().provider_id;
        let id = node_id(&provider_id, &caller.peer)
            .inspect_err(|status| self.refused(&caller, &group, status))?;
        let parts = &self.parts;
        let slot = if caller.identity.is_empty() {
            None
        } else {
            Some(
                parts
                    .streams
                    .acquire(&caller.identity)
                    .inspect_err(|status| self.refused(&caller, &group, status))?,
            )
        };
        let node = NodeInfo {
            id,
            group: group.clone(),
            labels: Default::default(),
            agent_build,
            client: CLIENT.to_owned(),
        };
        let key = parts
            .agents
            .connect_as(
                &node,
                &caller.peer,
                None,
                &caller.identity,
                parts.max_agents,
            )
            .map_err(|e| {
                let status = Status::from(e);
                self.refused(&caller, &group, &status);
                status
            })?;
        tracing::info!(group = %group, node = %node.id, peer = %caller.peer, "flagd provider connected");
        let access = changes.is_some().then(|| Access {
            auth: parts.auth.clone(),
            audit: parts.audit.clone(),
            credentials,
            caller,
        });
        let sync = Sync {
            agents: Arc::clone(&parts.agents),
            key,
            node: node.id,
            group: group.clone(),
            heads: parts.hub.subscribe(&group),
            cohorts: parts.cohorts.subscribe(&group),
            changes,
            access,
            stop: parts.shutdown.clone(),
        };
        let (tx, rx) = mpsc::channel(1);
        let (end_tx, end_rx) = oneshot::channel::<Status>();
        parts.tasks.spawn(async move {
            let end = sync.run(tx).await;
            drop(slot);
            if let Some(status) = end {
                let _ = end_tx.send(status);
            }
        });
        // A task that ended without a word (it panicked) still ends the
        // stream with an error: never OK, which Node's provider would take
        // as final.
        let end = futures::stream::once(end_rx).map(|end| {
            Err(end.unwrap_or_else(|_| Status::unavailable("the sync stream failed; reconnect")))
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(Ok)
            .chain(end);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_all_flags(
        &self,
        request: Request<fpb::FetchAllFlagsRequest>,
    ) -> Result<Response<fpb::FetchAllFlagsResponse>, Status> {
        #[allow(deprecated)]
        let selector = request.get_ref().selector.clone();
        let (_, _, group) = self.admit(&request, &selector)?;
        let provider_id = request.into_inner().provider_id;
        let head = self.parts.hub.head(&group);
        let cohort = self.parts.cohorts.get(&group);
        let node = node_id(&provider_id, "")?;
        let Some(version) = targets::target(&head, &cohort, &node) else {
            return Err(Status::not_found(format!(
                "selector: group {group:?} has no version yet"
            )));
        };
        let flags = version
            .flags()
            .await
            .map_err(|reason| Status::internal(format!("version {}: {reason}", version.version)))?;
        Ok(Response::new(fpb::FetchAllFlagsResponse {
            flag_configuration: flags.configuration.clone(),
        }))
    }

    async fn get_metadata(
        &self,
        request: Request<fpb::GetMetadataRequest>,
    ) -> Result<Response<fpb::GetMetadataResponse>, Status> {
        // No selector here: the caller only needs to be known.
        Credentials::of_request(&request)
            .caller(&self.parts.auth)
            .map_err(|(anonymous, status)| {
                self.refused(&anonymous, "", &status);
                status
            })?;
        // An empty `metadata`, never none: the Python provider reads the
        // field unconditionally and its sync thread dies without it.
        Ok(Response::new(fpb::GetMetadataResponse {
            metadata: Some(vane_proto::prost_types::Struct::default()),
        }))
    }
}

/// One `SyncFlags` stream.
struct Sync {
    agents: Arc<AgentRegistry>,
    key: StreamKey,
    node: String,
    group: String,
    heads: watch::Receiver<Head>,
    cohorts: watch::Receiver<CohortView>,
    changes: Option<watch::Receiver<u64>>,
    access: Option<Access>,
    stop: CancellationToken,
}

impl Sync {
    /// Sends the node's version whenever it changes; the status to end the
    /// stream with, if any. The node is disconnected in the registry however
    /// it ends (a panic included: the guard's drop).
    async fn run(mut self, tx: mpsc::Sender<fpb::SyncFlagsResponse>) -> Option<Status> {
        let _connected = Connected {
            agents: Arc::clone(&self.agents),
            key: self.key.clone(),
        };
        let end = self.serve(&tx).await;
        tracing::info!(group = %self.group, node = %self.node, "flagd provider disconnected");
        end
    }

    async fn serve(&mut self, tx: &mpsc::Sender<fpb::SyncFlagsResponse>) -> Option<Status> {
        let Self {
            agents,
            key,
            node,
            group,
            heads,
            cohorts,
            changes,
            access,
            stop,
        } = self;
        let mut sent: Option<(u64, String)> = None;
        loop {
            let head = heads.borrow_and_update().clone();
            let cohort = cohorts.borrow_and_update().clone();
            if let Some(version) = targets::target(&head, &cohort, node) {
                let is_new = sent
                    .as_ref()
                    .is_none_or(|(v, h)| *v != version.version || *h != version.hash);
                if is_new {
                    match version.flags().await {
                        Ok(flags) => {
                            let message = fpb::SyncFlagsResponse {
                                flag_configuration: flags.configuration.clone(),
                                sync_context: None,
                            };
                            tokio::select! {
                                sent = tx.send(message) => if sent.is_err() { return None },
                                () = stop.cancelled() => return Some(stopping()),
                            }
                            agents.record_sent(key, version.version);
                        }
                        Err(reason) => tracing::warn!(
                            group = %group,
                            version = version.version,
                            %reason,
                            "version not sent to flagd provider"
                        ),
                    }
                    sent = Some((version.version, version.hash.clone()));
                }
            }
            let reloaded = async {
                let changed = match changes.as_mut() {
                    Some(changes) => changes.changed().await.is_ok(),
                    None => false,
                };
                if !changed {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => return Some(stopping()),
                () = tx.closed() => return None,
                () = reloaded => {
                    if let Some(access) = access.as_ref()
                        && let Err(status) = access.recheck(group)
                    {
                        return Some(status);
                    }
                }
                // Never an OK end: Node's provider would not reconnect.
                changed = heads.changed() => if changed.is_err() { return Some(stopping()) },
                changed = cohorts.changed() => if changed.is_err() { return Some(stopping()) },
            }
        }
    }
}

/// Disconnects a node from the registry when dropped.
struct Connected {
    agents: Arc<AgentRegistry>,
    key: StreamKey,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.agents.disconnect(&self.key);
    }
}

fn stopping() -> Status {
    Status::unavailable(
        "the server is shutting down; reconnect (another replica, or this one once it is back)",
    )
}

/// The node id of a provider: `flagd-` and its provider id, else its
/// address. The prefix keeps providers out of other clients' node ids: a
/// provider id equal to an agent's must not take over the agent's entry.
fn node_id(provider_id: &str, peer: &str) -> Result<String, Status> {
    let id = if provider_id.is_empty() {
        format!("flagd-{peer}")
    } else {
        format!("flagd-{provider_id}")
    };
    if id.len() > MAX_NODE_FIELD_LEN || id.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "provider_id: must be at most {MAX_NODE_FIELD_LEN} bytes without control characters"
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_without_an_id_is_named_by_its_address() {
        assert_eq!(
            node_id("", "10.0.0.1:5000").ok(),
            Some("flagd-10.0.0.1:5000".into())
        );
        assert_eq!(
            node_id("checkout-7", "10.0.0.1:5000").ok(),
            Some("flagd-checkout-7".into())
        );
        let long = "x".repeat(MAX_NODE_FIELD_LEN + 1);
        let refused = node_id(&long, "").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().starts_with("provider_id:"));
        assert!(node_id("a\nb", "").is_err());
    }
}
