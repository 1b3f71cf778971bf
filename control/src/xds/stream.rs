//! One xDS stream's loop, the same for both protocols: requests (through
//! the [`Protocol`]), the group's head and rollout cohort (what this node
//! should run, see `targets.rs`; only ever forward), the caller's standing
//! after a policy or token reload, and shutdown. Responses go out through a
//! channel of one: while the client reads slowly the protocol keeps only
//! what is due, so a newer version replaces an unsent older one.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::agents::{AgentRegistry, NodeInfo, StreamKey};
use crate::hub::{Head, Published};
use crate::targets::{self, CohortView};
use crate::watch::admission::Access;
use crate::watch::state::next_change;
use crate::xds::tracker::{Present, Tracker};

/// The version a stream serves, with its resources.
pub(crate) struct Target {
    pub(crate) published: Arc<Published>,
    pub(crate) resources: Arc<vane_xds::Resources>,
}

impl Target {
    pub(crate) fn version(&self) -> u64 {
        self.published.version
    }
}

/// Nonces of one stream: a counter, unique within the stream.
#[derive(Debug, Default)]
pub(crate) struct Nonces(u64);

impl Nonces {
    pub(crate) fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}

/// The most names one stream may subscribe to per type.
pub(crate) const MAX_NAMES_PER_TYPE: usize = 65_536;
/// The most types Vane does not serve one stream may ask for.
pub(crate) const MAX_OTHER_TYPES: usize = 16;

/// The refusal of a subscription over the limits.
pub(crate) fn too_many(what: &str, max: usize) -> Status {
    Status::resource_exhausted(format!(
        "{what}: more than {max} on one stream, the server's limit"
    ))
}

/// Whether secrets carrying private keys may be sent to the client at
/// `remote`: over TLS, or to this host (plaintext on loopback never
/// leaves it). An unknown address is not this host.
pub(crate) fn may_send_private_keys(remote: Option<SocketAddr>, tls: bool) -> bool {
    tls || remote.is_some_and(|a| a.ip().to_canonical().is_loopback())
}

/// A discovery protocol: what requests mean and which response is due.
pub(crate) trait Protocol: Default + Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// The node a request carries (the first one must).
    fn node(request: &Self::Request) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
    /// Takes in a request; an error ends the stream with that status.
    fn on_request(&mut self, request: Self::Request, tracker: &mut Tracker) -> Result<(), Status>;
    /// The stream's version changed: every subscribed type is due.
    fn on_target(&mut self);
    /// Whether a response may be due.
    fn has_due(&self) -> bool;
    /// The next response due at `target`, if any.
    fn next_response(&mut self, target: &Target, tracker: &mut Tracker) -> Option<Self::Response>;
}

/// One stream.
pub(crate) struct XdsStream<P: Protocol> {
    pub(crate) protocol: P,
    pub(crate) tracker: Tracker,
    pub(crate) node: NodeInfo,
    pub(crate) agents: Arc<AgentRegistry>,
    pub(crate) key: StreamKey,
    pub(crate) heads: watch::Receiver<Head>,
    pub(crate) cohorts: watch::Receiver<CohortView>,
    pub(crate) target: Option<Target>,
    /// The last version that could not be translated (not tried again).
    pub(crate) untranslatable: u64,
    /// Secrets with inline private keys may be sent (see
    /// [`may_send_private_keys`]); else they are left out.
    pub(crate) keys_allowed: bool,
    pub(crate) access: Option<Box<Access>>,
    pub(crate) span: tracing::Span,
}

impl<P: Protocol> XdsStream<P> {
    /// Moves to what the node should run now, if newer than what it is
    /// served.
    async fn retarget(&mut self) {
        let head = self.heads.borrow().clone();
        let cohort = self.cohorts.borrow().clone();
        let Some(next) = targets::target(&head, &cohort, &self.node.id) else {
            return;
        };
        let current = self.target.as_ref().map_or(0, Target::version);
        if next.version <= current || next.version == self.untranslatable {
            return;
        }
        match next.xds().await {
            Ok(mut resources) => {
                if !self.keys_allowed
                    && let Some(safe) = resources.without_inline_keys()
                {
                    tracing::warn!(
                        parent: &self.span,
                        version = next.version,
                        secrets = ?resources.secrets_with_keys,
                        "secrets with inline private keys not sent: the connection is plaintext from another host (serve TLS, or give the keys as files on the client's host)"
                    );
                    resources = Arc::new(safe);
                }
                self.tracker.retarget(
                    next.version,
                    &next.hash,
                    next.published_at,
                    Present::of(&resources),
                );
                self.target = Some(Target {
                    published: next,
                    resources,
                });
                self.protocol.on_target();
            }
            Err(reason) => {
                tracing::warn!(parent: &self.span, version = next.version, %reason, "version not served to xDS clients");
                self.untranslatable = next.version;
                self.tracker.untranslatable(next.version, &reason);
            }
        }
    }

    /// Drives the stream until the client leaves or the server shuts
    /// down; returns the status to end it with, if any.
    pub(crate) async fn run(
        mut self,
        mut inbound: impl futures::Stream<Item = Result<P::Request, Status>> + Unpin,
        tx: mpsc::Sender<Result<P::Response, Status>>,
        changes: Option<watch::Receiver<u64>>,
        shutdown: CancellationToken,
    ) -> Option<Status> {
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let mut heads = tokio_stream::wrappers::WatchStream::from_changes(self.heads.clone());
        let mut cohorts = Some(tokio_stream::wrappers::WatchStream::from_changes(
            self.cohorts.clone(),
        ));
        let mut changes = changes.map(tokio_stream::wrappers::WatchStream::from_changes);
        self.retarget().await;
        let end = loop {
            let due = self.target.is_some() && self.protocol.has_due();
            tokio::select! {
                biased;
                () = &mut cancelled => break Some(Status::unavailable("the server is shutting down")),
                permit = tx.reserve(), if due => match permit {
                    Ok(permit) => {
                        if let Some(target) = &self.target
                            && let Some(response) = self.protocol.next_response(target, &mut self.tracker)
                        {
                            permit.send(Ok(response));
                        }
                    }
                    Err(_) => break None,
                },
                head = heads.next() => match head {
                    Some(_) => self.retarget().await,
                    None => break Some(Status::unavailable("the server is shutting down")),
                },
                cohort = next_change(&mut cohorts) => match cohort {
                    Some(_) => self.retarget().await,
                    None => cohorts = None,
                },
                change = next_change(&mut changes) => match change {
                    Some(_) => {
                        if let Some(access) = &self.access
                            && let Err(status) = access.recheck(&self.node.group)
                        {
                            tracing::info!(parent: &self.span, reason = status.message(), "access withdrawn; closing the stream");
                            break Some(status);
                        }
                    }
                    None => changes = None,
                },
                request = inbound.next() => match request {
                    Some(Ok(request)) => {
                        if let Err(status) = self.protocol.on_request(request, &mut self.tracker) {
                            break Some(status);
                        }
                    }
                    None => break None,
                    Some(Err(status)) => {
                        tracing::debug!(parent: &self.span, %status, "xDS stream failed");
                        break None;
                    }
                },
            }
        };
        self.agents.disconnect(&self.key);
        tracing::info!(
            parent: &self.span,
            reason = end.as_ref().map_or("client left", |s| s.message()),
            "xDS client disconnected"
        );
        end
    }
}
