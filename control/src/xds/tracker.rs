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

/// One stream's types, and what was recorded of them.
pub(crate) struct Tracker {
    types: BTreeMap<ResourceType, State>,
    agents: Arc<AgentRegistry>,
    key: StreamKey,
    metrics: StreamMetrics,
    /// The version the stream serves now, its hash and when it was
    /// published (`None` before the first).
    target: Option<(u64, String, Instant)>,
    /// The highest version recorded as sent, acked and refused.
    recorded_sent: u64,
    recorded_acked: u64,
    recorded_refused: u64,
    /// When the stream opened: a version published before is not timed.
    opened_at: Instant,
}

impl Tracker {
    pub(crate) fn new(agents: Arc<AgentRegistry>, key: StreamKey, metrics: StreamMetrics) -> Self {
        Self {
            types: BTreeMap::new(),
            agents,
            key,
            metrics,
            target: None,
            recorded_sent: 0,
            recorded_acked: 0,
            recorded_refused: 0,
            opened_at: Instant::now(),
        }
    }

    /// The state of `ty`.
    pub(crate) fn state(&self, ty: ResourceType) -> &State {
        self.types.get(&ty).unwrap_or(&State::Unsubscribed)
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
        self.check_synced();
    }

    /// The stream serves `version` now (its hash, when it was published).
    pub(crate) fn retarget(&mut self, version: u64, hash: &str, published_at: Instant) {
        self.target = Some((version, hash.to_owned(), published_at));
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
        if delta {
            self.metrics.sent_delta(bytes);
        } else {
            self.metrics.sent_full(bytes);
        }
        if version > self.recorded_sent {
            self.recorded_sent = version;
            self.agents.record_sent(&self.key, version);
        }
    }

    /// Nothing needs sending for `ty` at `version`: the client has it.
    pub(crate) fn settled(&mut self, ty: ResourceType, version: u64) {
        if matches!(self.state(ty), State::Unsubscribed) {
            return;
        }
        let unanswered = matches!(self.state(ty), State::Sent { version: v, .. } if *v == version);
        if !unanswered {
            self.types.insert(ty, State::Acked { version });
            if version > self.recorded_sent {
                self.recorded_sent = version;
                self.agents.record_sent(&self.key, version);
            }
            self.check_synced();
        }
    }

    /// The client answered the response of `ty` sent under `nonce`.
    pub(crate) fn answered(
        &mut self,
        ty: ResourceType,
        nonce: &str,
        refusal: Option<Refusal>,
    ) -> Answer {
        self.agents.touch(&self.key);
        let (version, acked) = match self.state(ty) {
            State::Sent {
                version,
                nonce: sent,
                acked,
            } if sent == nonce => (*version, *acked),
            _ => return Answer::Stale,
        };
        match refusal {
            None => {
                self.types.insert(ty, State::Acked { version });
                self.check_synced();
                Answer::Ack(version)
            }
            Some(refusal) => {
                let reason = format!("{} {}", ty.short(), refusal.message.trim());
                self.types.insert(
                    ty,
                    State::Nacked {
                        version,
                        acked,
                        reason: reason.clone(),
                    },
                );
                self.metrics.nacked();
                self.recorded_refused = self.recorded_refused.max(version);
                self.agents
                    .record_nack(&self.key, version, &nack_reason(&reason), refusal.code);
                Answer::Nack(version)
            }
        }
    }

    /// Records the node SYNCED at the target once every subscribed type
    /// acked it.
    fn check_synced(&mut self) {
        let Some((version, hash, published_at)) = &self.target else {
            return;
        };
        if *version <= self.recorded_acked || self.types.is_empty() {
            return;
        }
        let all = self
            .types
            .values()
            .all(|s| matches!(s, State::Acked { version: v } if v == version));
        if all {
            self.recorded_acked = *version;
            self.agents.record_ack(&self.key, *version, hash);
            let since = (*published_at >= self.opened_at).then(|| published_at.elapsed());
            self.metrics.acked(since);
        }
    }
}
