//! The records the control server keeps about agents, as every backend
//! stores them: an agent's last ACK/NACK ([`AgentRecord`]), how replicas
//! share them ([`SharedAgent`], [`AgentChange`]) and where
//! ([`AgentDirectory`], implemented by the etcd backend).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::StoreError;

/// The `client` of OpenFeature flagd sync nodes, whose protocol has no
/// acknowledgement.
pub const FLAGD_CLIENT: &str = "flagd";

/// The state shown for an agent, relative to its group's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentState {
    /// Acked the head.
    Synced,
    /// Runs something older than the head (not sent yet, in flight, or gone).
    Stale,
    /// Refused the head.
    Nacked,
    /// Nothing was sent to it (the group has no version, or nothing went out yet).
    NotSent,
    /// Was sent the head, but its protocol has no acknowledgement (flagd
    /// sync clients): it is known to have received it, not to run it.
    Unacked,
}

impl AgentState {
    /// The name `vanectl status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "SYNCED",
            Self::Stale => "STALE",
            Self::Nacked => "NACKED",
            Self::NotSent => "NOT_SENT",
            Self::Unacked => "UNACKED",
        }
    }
}

/// Everything recorded about one agent.
///
/// `Default` is an agent nothing is known about yet: disconnected, nothing
/// sent, acked or refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentRecord {
    /// Node id.
    pub node_id: String,
    /// Group.
    pub group: String,
    /// Labels of the latest stream.
    pub labels: BTreeMap<String, String>,
    /// Agent build of the latest stream.
    pub agent_build: String,
    /// Address the latest stream came from ("" when unknown).
    pub peer: String,
    /// Whether a stream is open.
    pub connected: bool,
    /// When the latest stream opened, Unix ms.
    pub connected_since_unix_ms: i64,
    /// Last request received (or disconnect), Unix ms.
    pub last_seen_unix_ms: i64,
    /// Last version sent on the latest stream (0: none).
    pub sent_version: u64,
    /// The version the agent runs, as acked (0: none).
    pub acked_version: u64,
    /// Its hash ("" when none).
    pub acked_hash: String,
    /// The last version it refused (0: none).
    pub last_nacked_version: u64,
    /// Why it refused it.
    pub nack_reason: String,
    /// The gRPC code of that refusal (3, INVALID_ARGUMENT: the content is
    /// invalid; others: the agent could not apply it).
    pub nack_code: i32,
    /// Whether the data plane reports itself degraded (see `health_version`).
    pub health_degraded: bool,
    /// Why, when degraded.
    pub health_reason: String,
    /// The version the health report is about (0: never reported).
    pub health_version: u64,
    /// Streams the agent opened since this server first saw it: its
    /// reconnects + 1 (a rollout counts crash loops with it).
    pub sessions: u64,
    /// What kind of client it is: `vane-agent` (Vane's own watch), `envoy`
    /// or `grpc` (xDS clients), `xds` (another xDS client); "" for records
    /// written before clients were told apart (shown as `vane-agent`).
    pub client: String,
}

impl AgentRecord {
    /// Whether its protocol acknowledges versions: every client but flagd
    /// sync clients (`flagd`).
    pub fn can_ack(&self) -> bool {
        self.client != FLAGD_CLIENT
    }

    /// The state relative to the group's head version `head` (0: no version).
    pub fn state(&self, head: u64) -> AgentState {
        if head == 0 {
            AgentState::NotSent
        } else if self.acked_version == head {
            AgentState::Synced
        } else if self.last_nacked_version == head {
            AgentState::Nacked
        } else if self.sent_version == head && !self.can_ack() {
            AgentState::Unacked
        } else if self.sent_version == 0 && self.acked_version == 0 {
            AgentState::NotSent
        } else {
            AgentState::Stale
        }
    }
}

/// An agent's record as a replica shares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedAgent {
    /// The replica holding (or that last held) the agent's stream.
    pub replica: String,
    /// The record.
    pub record: AgentRecord,
}

/// One change of a replica's agents (the record boxed: it is most of the
/// enum's size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentChange {
    /// The agent's current record.
    Put(Box<SharedAgent>),
    /// The agent was forgotten.
    Delete {
        /// Its group.
        group: String,
        /// Its node id.
        node_id: String,
    },
}

impl AgentChange {
    /// (group, node id).
    pub fn key(&self) -> (&str, &str) {
        match self {
            Self::Put(a) => (&a.record.group, &a.record.node_id),
            Self::Delete { group, node_id } => (group, node_id),
        }
    }
}

/// Where the replicas of a clustered control plane share their agents'
/// records. Each replica writes only its own agents, under a lease it keeps
/// alive: when a replica dies, its records expire with the lease.
#[async_trait]
pub trait AgentDirectory: Send + Sync + 'static {
    /// Writes these changes of this replica's agents. Returns the lease
    /// epoch used: it grows whenever the lease had to be replaced, and then
    /// every record must be written again (the old lease took them along).
    async fn publish(&self, changes: &[AgentChange]) -> Result<u64, StoreError>;

    /// Keeps this replica's lease alive (replacing it if it expired) and
    /// returns its epoch, as [`Self::publish`] does.
    async fn renew(&self) -> Result<u64, StoreError>;

    /// How often [`Self::renew`] must be called.
    fn renew_every(&self) -> Duration;

    /// The agents the other replicas recorded (of `group` when given).
    async fn others(&self, group: Option<&str>) -> Result<Vec<SharedAgent>, StoreError>;

    /// Removes this replica's records at once (at shutdown), rather than
    /// when its lease expires.
    async fn withdraw(&self) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AgentRecord {
        AgentRecord {
            node_id: "n".into(),
            group: "g".into(),
            connected: true,
            ..AgentRecord::default()
        }
    }

    #[test]
    fn state_rules() {
        let mut r = record();
        assert_eq!(r.state(0), AgentState::NotSent);
        assert_eq!(r.state(3), AgentState::NotSent);
        r.sent_version = 3;
        assert_eq!(r.state(3), AgentState::Stale, "in flight");
        r.acked_version = 3;
        assert_eq!(r.state(3), AgentState::Synced);
        assert_eq!(r.state(4), AgentState::Stale);
        r.sent_version = 4;
        r.last_nacked_version = 4;
        assert_eq!(r.state(4), AgentState::Nacked);
        assert_eq!(r.state(5), AgentState::Stale);
        // A NACK of an older version does not hide a later ACK.
        r.acked_version = 5;
        assert_eq!(r.state(5), AgentState::Synced);
        // Runs something but nothing sent on this stream: stale, not "not sent".
        let mut r = record();
        r.acked_version = 2;
        assert_eq!(r.state(3), AgentState::Stale);
        assert_eq!(r.state(0), AgentState::NotSent);
        assert_eq!(AgentState::Nacked.as_str(), "NACKED");
    }
}
