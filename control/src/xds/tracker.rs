//! What each resource type of an xDS stream was sent and what the client
//! answered, and from that the node's record in the agent registry.
//!
//! One type's [`State`]:
//!
//! ```text
//!  Unsubscribed ──request──▶ Waiting ──sent(v, nonce)──▶ Sent{v, nonce}
//!                                                         │        │
//!                                       ACK of that nonce │        │ NACK of that nonce
//!                                                         ▼        ▼
//!                                               Acked{v}        Nacked{v, acked, reason}
//!                                                         │        │
//!                                   sent(v', nonce') ─────┴────────┴──▶ Sent{v', nonce'}
//! ```
//!
//! An answer carrying another nonce than the last one sent is stale and
//! changes nothing. A delta stream with nothing to send for a type at a new
//! version settles it there ([`Tracker::settled`]): the client already has
//! that content. The node is SYNCED at `v` once every type it subscribed to
//! is `Acked{v}`; a NACK is recorded with the type and the client's reason,
//! and the version is not sent again (a newer version is).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::time::Instant;
use vane_xds::ResourceType;

use crate::agents::{AgentRegistry, StreamKey};
use crate::metrics::StreamMetrics;
use crate::watch::admission::nack_reason;

/// Where one resource type of a stream is (see the module's diagram).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// The client has not asked for this type.
    Unsubscribed,
    /// Asked for; nothing sent yet.
    Waiting,
    /// `version` sent under `nonce`, not answered yet.
    Sent {
        /// The Vane version.
        version: u64,
        /// The response's nonce.
        nonce: String,
        /// What the type ran before (0: nothing acked).
        acked: u64,
    },
    /// The client applied `version`.
    Acked {
        /// The Vane version.
        version: u64,
    },
    /// The client refused `version` and keeps `acked`.
    Nacked {
        /// The refused version.
        version: u64,
        /// The version it keeps (0: none).
        acked: u64,
        /// Its reason.
        reason: String,
    },
}

impl State {
    /// The version the type last acked (0: none).
    fn acked(&self) -> u64 {
        match self {
            Self::Unsubscribed | Self::Waiting => 0,
            Self::Sent { acked, .. } | Self::Nacked { acked, .. } => *acked,
            Self::Acked { version } => *version,
        }
    }
}

/// How a client answered a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// It applied this version.
    Ack(u64),
    /// It refused this version.
    Nack(u64),
    /// The answer is for an older response: ignored.
    Stale,
}

/// The client's error on a NACK: its gRPC code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: i32,
    pub(crate) message: String,
}

/// The most responses of one type kept waiting for an answer: older ones
/// are forgotten (their answers then count as stale).
const MAX_IN_FLIGHT: usize = 8;

/// Which types a version has resources of (what a node must subscribe to
/// before it can be SYNCED).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Present {
    pub(crate) routes: bool,
    pub(crate) clusters: bool,
    pub(crate) endpoints: bool,
    /// A listener or cluster names a secret.
    pub(crate) secrets: bool,
}

impl Present {
    pub(crate) fn of(resources: &vane_xds::Resources) -> Self {
        Self {
            routes: !resources.routes.is_empty(),
            clusters: !resources.clusters.is_empty(),
            endpoints: !resources.endpoints.is_empty(),
            secrets: resources.uses_secrets,
        }
    }
}

/// The version a stream serves.
struct Serving {
    version: u64,
    hash: String,
    published_at: Instant,
    present: Present,
}

/// One stream's types, and what was recorded of them.
pub(crate) struct Tracker {
    types: BTreeMap<ResourceType, State>,
    /// Per type, the responses not answered yet: (nonce, version), oldest
    /// first, at most [`MAX_IN_FLIGHT`].
    in_flight: BTreeMap<ResourceType, Vec<(String, u64)>>,
    agents: Arc<AgentRegistry>,
    key: StreamKey,
    metrics: StreamMetrics,
    /// Envoy subscribes to listeners and clusters, always.
    envoy: bool,
    target: Option<Serving>,
    /// The highest version recorded as sent and refused.
    recorded_sent: u64,
    recorded_refused: u64,
    /// The version recorded as acked and its hash, and the one before it
    /// (put back when a type refuses the recorded one after all).
    recorded_acked: (u64, String),
    previous_acked: (u64, String),
    /// When the stream opened: a version published before is not timed.
    opened_at: Instant,
}

impl Tracker {
    pub(crate) fn new(
        agents: Arc<AgentRegistry>,
        key: StreamKey,
        metrics: StreamMetrics,
        envoy: bool,
    ) -> Self {
        Self {
            types: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            agents,
            key,
            metrics,
            envoy,
            target: None,
            recorded_sent: 0,
            recorded_refused: 0,
            recorded_acked: (0, String::new()),
            previous_acked: (0, String::new()),
            opened_at: Instant::now(),
        }
    }

    /// The state of `ty`.
    pub(crate) fn state(&self, ty: ResourceType) -> &State {
        self.types.get(&ty).unwrap_or(&State::Unsubscribed)
    }

    /// Whether `ty` refused the version the stream serves.
    pub(crate) fn refused_current(&self, ty: ResourceType) -> bool {
        let serving = self.target.as_ref().map_or(0, |t| t.version);
        matches!(self.state(ty), State::Nacked { version, .. } if *version == serving)
    }

    /// The client asked for `ty` (a first request, or new names).
    pub(crate) fn subscribed(&mut self, ty: ResourceType) {
        self.agents.touch(&self.key);
        self.types.entry(ty).or_insert(State::Waiting);
    }

    /// A request that changes nothing but says the client is there.
    pub(crate) fn touch(&self) {
        self.agents.touch(&self.key);
    }

    /// The client unsubscribed from every resource of `ty`.
    pub(crate) fn unsubscribed(&mut self, ty: ResourceType) {
        self.types.remove(&ty);
        self.in_flight.remove(&ty);
        self.check_synced();
    }

    /// The stream serves `version` now (its hash, when it was published,
    /// which types it has resources of).
    pub(crate) fn retarget(
        &mut self,
        version: u64,
        hash: &str,
        published_at: Instant,
        present: Present,
    ) {
        self.target = Some(Serving {
            version,
            hash: hash.to_owned(),
            published_at,
            present,
        });
    }

    /// `version` cannot be served: it has no xDS form. Recorded as a
    /// refusal (FAILED_PRECONDITION) so `vanectl status` says why the node
    /// stays where it is.
    pub(crate) fn untranslatable(&mut self, version: u64, reason: &str) {
        if version > self.recorded_refused {
            self.recorded_refused = version;
            self.agents.record_nack(
                &self.key,
                version,
                &nack_reason(&format!("vane-control: version {version} {reason}")),
                9,
            );
        }
    }

    fn record_sent(&mut self, version: u64) {
        if version > self.recorded_sent {
            self.recorded_sent = version;
            self.agents.record_sent(&self.key, version);
        }
    }

    /// A response of `ty` at `version` went out under `nonce` carrying
    /// `bytes` bytes (`delta`: on a delta stream).
    pub(crate) fn sent(
        &mut self,
        ty: ResourceType,
        version: u64,
        nonce: &str,
        bytes: usize,
        delta: bool,
    ) {
        let acked = self.state(ty).acked();
        self.types.insert(
            ty,
            State::Sent {
                version,
                nonce: nonce.to_owned(),
                acked,
            },
        );
        let in_flight = self.in_flight.entry(ty).or_default();
        if in_flight.len() == MAX_IN_FLIGHT {
            in_flight.remove(0);
        }
        in_flight.push((nonce.to_owned(), version));
        if delta {
            self.metrics.sent_delta(bytes);
        } else {
            self.metrics.sent_full(bytes);
        }
        self.record_sent(version);
    }

    /// Nothing needs sending for `ty` at `version`: the client has that
    /// content, or will once it applies the response in flight (whose ACK
    /// then stands for `version`).
    pub(crate) fn settled(&mut self, ty: ResourceType, version: u64) {
        match self.types.get_mut(&ty) {
            None => return,
            Some(State::Sent {
                version: v, nonce, ..
            }) => {
                *v = version;
                if let Some(last) = self
                    .in_flight
                    .get_mut(&ty)
                    .and_then(|f| f.iter_mut().find(|(n, _)| n == nonce))
                {
                    last.1 = version;
                }
            }
            Some(state) => *state = State::Acked { version },
        }
        self.record_sent(version);
        self.check_synced();
    }

    /// The client answered the response of `ty` sent under `nonce`.
    ///
    /// An ACK of an older response than the last one waits for the last;
    /// a NACK of any response in flight is recorded.
    pub(crate) fn answered(
        &mut self,
        ty: ResourceType,
        nonce: &str,
        refusal: Option<Refusal>,
    ) -> Answer {
        self.agents.touch(&self.key);
        let in_flight = self.in_flight.entry(ty).or_default();
        let Some(at) = in_flight.iter().position(|(n, _)| n == nonce) else {
            return Answer::Stale;
        };
        let version = in_flight[at].1;
        let latest = at + 1 == in_flight.len();
        // This response and every older one are answered.
        in_flight.drain(..=at);
        let acked = self.state(ty).acked();
        match refusal {
            None if latest => {
                self.types.insert(ty, State::Acked { version });
                self.check_synced();
                Answer::Ack(version)
            }
            None => Answer::Stale,
            Some(refusal) => {
                let reason = format!("{} {}", ty.short(), refusal.message.trim());
                if latest {
                    self.types.insert(
                        ty,
                        State::Nacked {
                            version,
                            acked,
                            reason: reason.clone(),
                        },
                    );
                }
                self.metrics.nacked();
                self.recorded_refused = self.recorded_refused.max(version);
                if version <= self.recorded_acked.0 {
                    // Recorded SYNCED at it before this type answered: the
                    // node does not run it whole.
                    self.recorded_acked = std::mem::take(&mut self.previous_acked);
                    let (v, h) = &self.recorded_acked;
                    self.agents.record_ack(&self.key, *v, h);
                }
                self.agents
                    .record_nack(&self.key, version, &nack_reason(&reason), refusal.code);
                Answer::Nack(version)
            }
        }
    }

    /// Whether the node must have `ty` before it runs the target whole:
    /// what it subscribed to, and what those refer to.
    fn required(&self, ty: ResourceType, present: Present) -> bool {
        let has = |t: ResourceType| self.types.contains_key(&t);
        has(ty)
            || match ty {
                ResourceType::Listener | ResourceType::Cluster => self.envoy,
                ResourceType::Route => present.routes && has(ResourceType::Listener),
                ResourceType::Endpoint => {
                    present.endpoints && (has(ResourceType::Cluster) || self.envoy)
                }
                // Envoy asks for the secrets its TLS listeners and clusters
                // name once it has them.
                ResourceType::Secret => {
                    present.secrets
                        && (has(ResourceType::Listener) || has(ResourceType::Cluster))
                        && self.envoy
                }
            }
            || (ty == ResourceType::Cluster && present.clusters && has(ResourceType::Route))
    }

    /// Records the node SYNCED at the target once every type it needs
    /// acked it.
    fn check_synced(&mut self) {
        let Some(serving) = &self.target else {
            return;
        };
        let version = serving.version;
        if version <= self.recorded_acked.0 || self.types.is_empty() {
            return;
        }
        let all = ResourceType::ALL.into_iter().all(|ty| {
            !self.required(ty, serving.present)
                || matches!(self.state(ty), State::Acked { version: v } if *v == version)
        });
        if all {
            self.previous_acked =
                std::mem::replace(&mut self.recorded_acked, (version, serving.hash.clone()));
            self.agents.record_ack(&self.key, version, &serving.hash);
            let since =
                (serving.published_at >= self.opened_at).then(|| serving.published_at.elapsed());
            self.metrics.acked(since);
        }
    }
}
