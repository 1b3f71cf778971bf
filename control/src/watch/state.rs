//! One watch stream's protocol: what was sent, what the agent answered
//! (ACK, NACK, stale answers, heartbeats), which version goes next (full or
//! delta, latest wins while the agent is slow), what the agent was told of
//! the store's reachability, and the stream's loop.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use futures::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use vane_proto as pb;

use crate::agents::{AgentRegistry, NodeInfo, StreamKey};
use crate::hub::{Head, Published};
use crate::metrics::StreamMetrics;
use crate::reach::StoreReach;
use crate::targets::{self, CohortView};
use crate::watch::admission::{Access, nack_reason};

/// The last response sent on a stream.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    version: u64,
    hash: String,
    /// When its version was published, if after the stream opened (the
    /// start of its push-to-ACK time).
    pushed_at: Option<Instant>,
    /// Whether the agent answered it (ACK or NACK).
    answered: bool,
}

/// One stream's protocol state.
pub(crate) struct WatchState {
    pub(crate) agents: Arc<AgentRegistry>,
    pub(crate) key: StreamKey,
    pub(crate) node: NodeInfo,
    pub(crate) nonce_prefix: String,
    pub(crate) next_nonce: u64,
    /// Nonce of the last response sent ("" before the first).
    pub(crate) last_nonce: String,
    /// The last response sent.
    pub(crate) sent: Option<Sent>,
    /// Highest version sent or known to run on the agent: only newer heads
    /// are sent.
    pub(crate) known_version: u64,
    /// The version waiting for room in the channel.
    pub(crate) pending: Option<Arc<Published>>,
    /// Whether the agent applies deltas (its first request said so).
    pub(crate) accept_delta: bool,
    /// (version, hash) the agent runs as far as this stream knows: the last
    /// version it acked here, or the head it said it ran on connecting.
    pub(crate) acked: Option<(u64, String)>,
    /// The next response must be a full snapshot: the agent asked for one.
    pub(crate) want_full: bool,
    /// The group's rollout cohort (see `targets.rs`): with the head, it
    /// decides what this agent is sent.
    pub(crate) cohorts: watch::Receiver<CohortView>,
    /// Whether the agent reads store notices (its first request said so).
    pub(crate) accept_notices: bool,
    /// Whether this replica reaches its store, as of the last change.
    pub(crate) reach: StoreReach,
    /// Where changes of `reach` come from (`None`: it never changes).
    pub(crate) reach_changes: Option<watch::Receiver<StoreReach>>,
    /// Whether the agent was last told the store is reachable (what it
    /// assumes before being told anything).
    pub(crate) told_reachable: bool,
    /// When the stream opened.
    pub(crate) opened_at: Instant,
    pub(crate) metrics: StreamMetrics,
    /// The stream's span (group, node, peer), parent of its log lines.
    pub(crate) span: tracing::Span,
    /// How to check the caller again when the policy or tokens change
    /// (`None` when nothing can change).
    pub(crate) access: Option<Box<Access>>,
    /// The data-plane health the agent's requests last carried, as
    /// recorded (`None`: it reports none).
    pub(crate) health: Option<pb::Health>,
    /// Why this connection may not carry private keys (plaintext, peer off
    /// loopback: `crate::secrets`); `None` when it may.
    pub(crate) keys_refused: Option<String>,
}

/// What a request after the first asks of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Nothing to send.
    Nothing,
    /// Send the head again, whole (the agent could not use a delta).
    ResendFull,
}

impl WatchState {
    pub(crate) fn new(
        agents: Arc<AgentRegistry>,
        key: StreamKey,
        node: NodeInfo,
        accept_delta: bool,
        metrics: StreamMetrics,
    ) -> Self {
        Self {
            agents,
            nonce_prefix: format!("{:x}", key.generation()),
            key,
            node,
            next_nonce: 0,
            last_nonce: String::new(),
            sent: None,
            known_version: 0,
            pending: None,
            accept_delta,
            acked: None,
            want_full: false,
            accept_notices: false,
            // Its sender is gone: no rollout, for good.
            cohorts: watch::channel(None).1,
            reach: StoreReach::Reachable,
            reach_changes: None,
            told_reachable: true,
            opened_at: Instant::now(),
            metrics,
            span: tracing::Span::none(),
            access: None,
            health: None,
            // Until told otherwise: streams built outside `open` (replays,
            // unit tests) have no network peer.
            keys_refused: None,
        }
    }

    /// Drives the stream until the agent leaves or the server shuts down.
    /// Returns the status to end the stream with, if any.
    pub(crate) async fn run(
        &mut self,
        mut inbound: impl Stream<Item = Result<pb::WatchRequest, Status>> + Unpin,
        heads: watch::Receiver<Head>,
        changes: Option<watch::Receiver<u64>>,
        tx: mpsc::Sender<Box<pb::WatchResponse>>,
        shutdown: CancellationToken,
        idle_timeout: Duration,
    ) -> Option<Status> {
        // The futures that outlive one turn of the loop are made once: the
        // shutdown token and the group's channel are shared by every stream,
        // and registering with them anew on every wake-up (an ACK, a send)
        // would take their locks ten thousand times per push.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let closed = tx.closed();
        tokio::pin!(closed);
        let current = heads.clone();
        let mut heads = tokio_stream::wrappers::WatchStream::from_changes(heads);
        let cohort_now = self.cohorts.clone();
        let mut cohorts = Some(tokio_stream::wrappers::WatchStream::from_changes(
            self.cohorts.clone(),
        ));
        let mut changes = changes.map(tokio_stream::wrappers::WatchStream::from_changes);
        let mut reach = self
            .reach_changes
            .take()
            .map(tokio_stream::wrappers::WatchStream::from_changes);
        // Reset by every request (heartbeats included); a stream silent for
        // the whole timeout belongs to a peer that is gone or idle on purpose.
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        let end = loop {
            tokio::select! {
                // Shutdown first, so a busy stream cannot delay it.
                biased;
                () = &mut cancelled => {
                    break Some(Status::unavailable("the server is shutting down"));
                }
                permit = tx.reserve(), if self.pending.is_some() || self.notice_due() => match permit {
                    Ok(permit) => {
                        // A version carries the store's reachability too,
                        // so a notice goes only when no version does.
                        if let Some(published) = self.pending.take() {
                            if let Some(why) = &self.keys_refused
                                && published.has_private_keys()
                            {
                                tracing::warn!(parent: &self.span, version = published.version, "private keys not sent: {why}");
                                break Some(crate::secrets::refused(&published.group, published.version, why));
                            }
                            let delta = self.delta_for(&published).await;
                            permit.send(Box::new(self.response(&published, delta)));
                        } else {
                            permit.send(Box::new(self.notice()));
                        }
                    }
                    // The response stream was dropped: the agent is gone.
                    Err(_) => break None,
                },
                head = heads.next() => match head {
                    Some(head) => {
                        let target = targets::target(&head, &cohort_now.borrow(), &self.node.id);
                        self.offer(target);
                    }
                    // The hub is gone, which only happens at shutdown.
                    None => break Some(Status::unavailable("the server is shutting down")),
                },
                cohort = next_change(&mut cohorts) => match cohort {
                    Some(cohort) => {
                        let target = targets::target(&current.borrow(), &cohort, &self.node.id);
                        self.offer(target);
                    }
                    // No rollouts on this server any more (shutdown).
                    None => cohorts = None,
                },
                change = next_change(&mut changes) => match change {
                    Some(_) => {
                        if let Err(status) = self.recheck_access() {
                            tracing::info!(parent: &self.span, reason = status.message(), "access withdrawn; closing the stream");
                            break Some(status);
                        }
                    }
                    // The server's Auth is gone: nothing will change again.
                    None => changes = None,
                },
                now = next_change(&mut reach) => match now {
                    Some(now) => self.reach = now,
                    // Nobody follows the store's health (a single server):
                    // it is reachable for good.
                    None => reach = None,
                },
                () = &mut idle => {
                    tracing::info!(parent: &self.span, timeout = ?idle_timeout, "stream idle; closing it");
                    break Some(Status::unavailable(format!(
                        "idle stream: no request for {}",
                        humantime::format_duration(idle_timeout)
                    )));
                }
                request = inbound.next() => match request {
                    Some(Ok(request)) => match self.on_request_at(request, idle.as_mut(), idle_timeout) {
                        Ok(Answer::Nothing) => {}
                        Ok(Answer::ResendFull) => {
                            // The target, even if this stream carried it; a
                            // newer pending version is the target anyway.
                            let target = targets::target(&current.borrow(), &cohort_now.borrow(), &self.node.id);
                            if let Some(target) = target {
                                self.pending = Some(target);
                            }
                        }
                        Err(status) => break Some(status),
                    },
                    None => break None,
                    // An oversize or undecodable request: the agent hears
                    // why (if it is still there).
                    Some(Err(status)) => {
                        tracing::debug!(parent: &self.span, %status, "agent stream failed");
                        break Some(status);
                    }
                },
                () = &mut closed => break None,
            }
        };
        self.agents.disconnect(&self.key);
        tracing::info!(
            parent: &self.span,
            reason = end.as_ref().map_or("agent left", |s| s.message()),
            "agent disconnected"
        );
        end
    }

    /// Checks the caller again after a policy or token reload.
    fn recheck_access(&self) -> Result<(), Status> {
        match &self.access {
            Some(access) => access.recheck(&self.node.group),
            None => Ok(()),
        }
    }

    /// A new target (the head, or during a rollout the version this agent's
    /// cohort runs): make it the pending version if it is newer than
    /// anything sent, pending or known to run on the agent. Versions never
    /// go backwards on a stream.
    pub(crate) fn offer(&mut self, head: Head) {
        let Some(head) = head else { return };
        let newer_than_pending = self
            .pending
            .as_ref()
            .is_none_or(|p| head.version > p.version);
        if head.version > self.known_version && newer_than_pending {
            self.pending = Some(head);
        }
    }

    /// Whether the agent reads notices and was told otherwise than what is
    /// true now.
    pub(crate) fn notice_due(&self) -> bool {
        self.accept_notices && self.told_reachable != self.reach.is_reachable()
    }

    /// A store notice: no body, no version, no nonce (it needs no answer),
    /// only the store's reachability.
    pub(crate) fn notice(&mut self) -> pb::WatchResponse {
        let (store_unreachable, store_unreachable_ms) = self.reach.fields(Instant::now());
        self.told_reachable = !store_unreachable;
        if store_unreachable {
            tracing::info!(parent: &self.span, unreachable_ms = store_unreachable_ms, "told the agent the store is unreachable");
        } else {
            tracing::info!(parent: &self.span, "told the agent the store is reachable again");
        }
        pb::WatchResponse {
            group: self.node.group.clone(),
            store_unreachable,
            store_unreachable_ms,
            ..pb::WatchResponse::default()
        }
    }

    /// The version the agent will run when it reads the next response, if
    /// a delta may start from it.
    fn delta_base(&self) -> Option<(u64, String)> {
        if !self.accept_delta || self.want_full {
            return None;
        }
        match &self.sent {
            Some(sent) if !sent.answered => Some((sent.version, sent.hash.clone())),
            _ => self.acked.clone(),
        }
    }

    /// The delta to send instead of `published`'s full snapshot, if any:
    /// (base version, base hash, encoded delta).
    async fn delta_for(&self, published: &Published) -> Option<(u64, String, bytes::Bytes)> {
        let (version, hash) = self.delta_base()?;
        if version >= published.version {
            return None;
        }
        let delta = published.delta_from(version, &hash).await?;
        Some((version, hash, delta))
    }

    pub(crate) fn response(
        &mut self,
        published: &Published,
        delta: Option<(u64, String, bytes::Bytes)>,
    ) -> pb::WatchResponse {
        self.next_nonce += 1;
        // `<stream>-<n>`, without the formatting machinery: this runs once
        // per agent per push.
        self.last_nonce.clear();
        self.last_nonce.push_str(&self.nonce_prefix);
        self.last_nonce.push('-');
        push_decimal(&mut self.last_nonce, self.next_nonce);
        let nonce = self.last_nonce.clone();
        self.sent = Some(Sent {
            version: published.version,
            hash: published.hash.clone(),
            pushed_at: (published.published_at >= self.opened_at).then_some(published.published_at),
            answered: false,
        });
        self.known_version = published.version;
        self.want_full = false;
        self.agents.record_sent(&self.key, published.version);
        // Either way the body shares the hub's buffer: no copy per stream.
        let (body, base_version, base_hash) = match delta {
            Some((base_version, base_hash, delta)) => {
                tracing::debug!(parent: &self.span, version = published.version, base_version, %nonce, "sent delta");
                self.metrics.sent_delta(delta.len());
                (
                    pb::watch_response::Body::Delta(delta),
                    base_version,
                    base_hash,
                )
            }
            None => {
                tracing::debug!(parent: &self.span, version = published.version, %nonce, "sent");
                self.metrics.sent_full(published.snapshot.len());
                (
                    pb::watch_response::Body::Snapshot(published.snapshot.clone()),
                    0,
                    String::new(),
                )
            }
        };
        let (store_unreachable, store_unreachable_ms) = self.reach.fields(Instant::now());
        self.told_reachable = !store_unreachable;
        pb::WatchResponse {
            group: published.group.clone(),
            version: published.version,
            hash: published.hash.clone(),
            nonce,
            body: Some(body),
            base_version,
            base_hash,
            created_at_unix_ms: published.created_at_unix_ms,
            store_unreachable,
            store_unreachable_ms,
        }
    }

    /// [`Self::on_request`], after pushing the idle deadline back.
    fn on_request_at(
        &mut self,
        request: pb::WatchRequest,
        idle: std::pin::Pin<&mut tokio::time::Sleep>,
        idle_timeout: Duration,
    ) -> Result<Answer, Status> {
        idle.reset(Instant::now() + idle_timeout);
        self.on_request(request)
    }

    /// Handles one request after the first. An error ends the stream.
    /// Every request counts as a sign of life (`last_seen`): an ACK or NACK
    /// records it with what it records, anything else by itself (one
    /// registry update per request, not two).
    pub(crate) fn on_request(&mut self, request: pb::WatchRequest) -> Result<Answer, Status> {
        let recorded = self.handle_request(&request)?;
        let health_recorded = self.record_health(request.health.as_ref());
        if !recorded.0 && !health_recorded {
            self.agents.touch(&self.key);
        }
        Ok(recorded.1)
    }

    /// Records the data plane's health when a request (any: hello, ACK,
    /// NACK, heartbeat) says otherwise than the last one did; a request
    /// without it says "not reported". Returns whether it recorded.
    pub(crate) fn record_health(&mut self, health: Option<&pb::Health>) -> bool {
        if self.health.as_ref() == health {
            return false;
        }
        let was_degraded = self.health.as_ref().is_some_and(|h| h.degraded);
        self.health = health.cloned();
        let (degraded, reason, version) = match health {
            Some(h) if h.degraded => (true, nack_reason(&h.reason), h.version),
            Some(h) => (false, String::new(), h.version),
            None => (false, String::new(), 0),
        };
        // Healthy on each new version is the common case: not worth a line
        // per agent per push.
        if degraded {
            tracing::warn!(parent: &self.span, version, %reason, "agent reports its data plane degraded");
        } else if was_degraded {
            tracing::info!(parent: &self.span, version, "agent reports its data plane healthy again");
        } else {
            tracing::debug!(parent: &self.span, version, "agent reports its data plane healthy");
        }
        self.agents
            .record_health(&self.key, degraded, &reason, version);
        true
    }

    /// [`Self::on_request`] but for `last_seen`: also says whether the
    /// registry was updated.
    fn handle_request(&mut self, request: &pb::WatchRequest) -> Result<(bool, Answer), Status> {
        if let Some(node) = &request.node
            && (node.id != self.node.id || node.group != self.node.group)
        {
            return Err(Status::invalid_argument(format!(
                "node: must not change within a stream (was id {:?} group {:?})",
                self.node.id, self.node.group
            )));
        }
        if request.response_nonce.is_empty() || request.response_nonce != self.last_nonce {
            tracing::debug!(parent: &self.span, nonce = %request.response_nonce, "stale request ignored");
            return Ok((false, Answer::Nothing));
        }
        let Some(sent) = self.sent.take() else {
            return Ok((false, Answer::Nothing));
        };
        let (version, answer) = (
            sent.version,
            Sent {
                answered: true,
                ..sent
            },
        );
        let sent = &answer;
        let outcome = if request.want_full {
            // Not a refusal of the content: the agent could not rebuild it
            // from the delta. It keeps what it runs; send it the whole head.
            tracing::info!(
                parent: &self.span,
                version,
                reason = request
                    .error_detail
                    .as_ref()
                    .map_or("", |e| e.message.as_str()),
                "agent could not apply a delta; sending the full snapshot"
            );
            self.metrics.delta_fallback();
            self.want_full = true;
            (false, Answer::ResendFull)
        } else if let Some(error) = &request.error_detail {
            let reason = nack_reason(&error.message);
            tracing::warn!(parent: &self.span, version, code = error.code, %reason, "agent refused version (NACK)");
            self.metrics.nacked();
            self.agents
                .record_nack(&self.key, version, &reason, error.code);
            (true, Answer::Nothing)
        } else if request.version_info == version
            && (request.hash.is_empty() || request.hash == sent.hash)
        {
            tracing::debug!(parent: &self.span, version, "acked");
            self.metrics.acked(sent.pushed_at.map(|at| at.elapsed()));
            self.agents.record_ack(&self.key, version, &sent.hash);
            self.acked = Some((version, sent.hash.clone()));
            (true, Answer::Nothing)
        } else {
            if request.version_info == version {
                tracing::warn!(
                    parent: &self.span,
                    version,
                    sent = %sent.hash,
                    acked = %request.hash,
                    "ACK names another hash than the one sent; not recorded"
                );
            } else {
                tracing::debug!(
                    parent: &self.span,
                    version,
                    version_info = request.version_info,
                    "answer neither acks nor nacks the last response"
                );
            }
            // Not an answer: the response still waits for one.
            self.sent = Some(Sent {
                answered: false,
                ..answer
            });
            return Ok((false, Answer::Nothing));
        };
        self.sent = Some(answer);
        Ok(outcome)
    }
}

/// The next change of the policy or tokens (or of the store's
/// reachability); never, when they cannot change.
pub(crate) async fn next_change<T: Clone + Send + Sync + 'static>(
    changes: &mut Option<tokio_stream::wrappers::WatchStream<T>>,
) -> Option<T> {
    match changes {
        Some(changes) => changes.next().await,
        None => std::future::pending().await,
    }
}

/// Appends `n` in decimal.
pub(crate) fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|&d| char::from(d)));
}
