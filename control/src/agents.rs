//! What the server knows about each agent: who it is, what was sent to it,
//! what it acked or refused. Read by `Admin.Status`, written by watch streams.
//!
//! An agent is keyed by (group, node id). Each stream gets a generation when
//! it connects; updates carry it and are ignored unless it is the entry's
//! current one, so an old stream of a node that reconnected cannot mark the
//! new stream disconnected or overwrite what it recorded. (Two live agents
//! sharing a node id therefore show as one: the newest stream wins.)

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::now_unix_ms;

/// How long a disconnected agent stays listed, unless configured.
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(60 * 60);

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
}

impl AgentState {
    /// The name `vanectl status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "SYNCED",
            Self::Stale => "STALE",
            Self::Nacked => "NACKED",
            Self::NotSent => "NOT_SENT",
        }
    }
}

/// Who connected: the node of a stream's first request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id, unique within a group.
    pub id: String,
    /// The group it watches.
    pub group: String,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Build of the agent, e.g. `vane-agent/0.1.0`.
    pub agent_build: String,
}

/// Everything recorded about one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl AgentRecord {
    /// The state relative to the group's head version `head` (0: no version).
    pub fn state(&self, head: u64) -> AgentState {
        if head == 0 {
            AgentState::NotSent
        } else if self.acked_version == head {
            AgentState::Synced
        } else if self.last_nacked_version == head {
            AgentState::Nacked
        } else if self.sent_version == 0 && self.acked_version == 0 {
            AgentState::NotSent
        } else {
            AgentState::Stale
        }
    }
}

/// Identifies one stream's hold on its agent entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamKey {
    // (group, node id): the registry's map key, kept whole to avoid
    // rebuilding it on every request.
    key: (String, String),
    generation: u64,
}

impl StreamKey {
    /// The stream's generation, unique within this server process.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

#[derive(Debug)]
struct Entry {
    record: AgentRecord,
    generation: u64,
    // Monotonic, for expiry: a wall-clock jump must not forget agents early.
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    agents: HashMap<(String, String), Entry>,
    next_generation: u64,
}

/// The registry of agents.
#[derive(Debug)]
pub struct AgentRegistry {
    // A std mutex: every critical section is a few field writes, never an
    // await, and contention is one lock per request of an agent.
    inner: Mutex<Inner>,
    forget_after: Duration,
}

impl Default for AgentRegistry {
    fn default() -> Self {
        Self::new(DEFAULT_FORGET_AFTER)
    }
}

impl AgentRegistry {
    /// An empty registry that forgets disconnected agents after `forget_after`.
    pub fn new(forget_after: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            forget_after,
        }
    }

    /// How long disconnected agents stay listed.
    pub fn forget_after(&self) -> Duration {
        self.forget_after
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; the map is still whole.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a new stream of `node` and returns its key. `running` is the
    /// (version, hash) the agent says it runs, recorded as acked; the caller
    /// passes `None` when the claim cannot be true (see `watch`).
    pub fn connect(&self, node: &NodeInfo, peer: &str, running: Option<(u64, &str)>) -> StreamKey {
        let mut inner = self.lock();
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let now_ms = now_unix_ms();
        let entry = inner
            .agents
            .entry((node.group.clone(), node.id.clone()))
            .or_insert_with(|| Entry {
                record: AgentRecord {
                    node_id: node.id.clone(),
                    group: node.group.clone(),
                    labels: BTreeMap::new(),
                    agent_build: String::new(),
                    peer: String::new(),
                    connected: false,
                    connected_since_unix_ms: 0,
                    last_seen_unix_ms: 0,
                    sent_version: 0,
                    acked_version: 0,
                    acked_hash: String::new(),
                    last_nacked_version: 0,
                    nack_reason: String::new(),
                },
                generation,
                last_seen: Instant::now(),
            });
        entry.generation = generation;
        entry.last_seen = Instant::now();
        let r = &mut entry.record;
        r.labels.clone_from(&node.labels);
        r.agent_build.clone_from(&node.agent_build);
        r.peer = peer.to_owned();
        r.connected = true;
        r.connected_since_unix_ms = now_ms;
        r.last_seen_unix_ms = now_ms;
        // What was sent belongs to the old stream; the NACK stays until the
        // agent acks something newer, since it still describes the head.
        r.sent_version = 0;
        match running {
            Some((version, hash)) => {
                r.acked_version = version;
                r.acked_hash = hash.to_owned();
            }
            None => {
                r.acked_version = 0;
                r.acked_hash.clear();
            }
        }
        StreamKey {
            key: (node.group.clone(), node.id.clone()),
            generation,
        }
    }

    fn update(&self, key: &StreamKey, f: impl FnOnce(&mut AgentRecord)) {
        let mut inner = self.lock();
        if let Some(entry) = inner.agents.get_mut(&key.key)
            && entry.generation == key.generation
        {
            entry.last_seen = Instant::now();
            entry.record.last_seen_unix_ms = now_unix_ms();
            f(&mut entry.record);
        }
    }

    /// A request arrived (of any kind).
    pub fn touch(&self, key: &StreamKey) {
        self.update(key, |_| {});
    }

    /// `version` was sent on the stream.
    pub fn record_sent(&self, key: &StreamKey, version: u64) {
        self.update(key, |r| r.sent_version = version);
    }

    /// The agent acked `version` (it now runs it).
    pub fn record_ack(&self, key: &StreamKey, version: u64, hash: &str) {
        self.update(key, |r| {
            r.acked_version = version;
            r.acked_hash = hash.to_owned();
        });
    }

    /// The agent refused `version` and keeps running what it acked before.
    pub fn record_nack(&self, key: &StreamKey, version: u64, reason: &str) {
        self.update(key, |r| {
            r.last_nacked_version = version;
            r.nack_reason = reason.to_owned();
        });
    }

    /// The stream ended.
    pub fn disconnect(&self, key: &StreamKey) {
        self.update(key, |r| r.connected = false);
    }

    /// Every agent (of `group` when given), sorted by group then node id.
    pub fn list(&self, group: Option<&str>) -> Vec<AgentRecord> {
        let inner = self.lock();
        let mut out: Vec<AgentRecord> = inner
            .agents
            .values()
            .filter(|e| group.is_none_or(|g| e.record.group == g))
            .map(|e| e.record.clone())
            .collect();
        out.sort_by(|a, b| (&a.group, &a.node_id).cmp(&(&b.group, &b.node_id)));
        out
    }

    /// Forgets agents disconnected for longer than `forget_after`. Returns
    /// how many were forgotten.
    pub fn sweep(&self) -> usize {
        let forget_after = self.forget_after;
        let mut inner = self.lock();
        let before = inner.agents.len();
        inner
            .agents
            .retain(|_, e| e.record.connected || e.last_seen.elapsed() < forget_after);
        before - inner.agents.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            group: "edge".into(),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            agent_build: "test/1".into(),
        }
    }

    fn record() -> AgentRecord {
        AgentRecord {
            node_id: "n".into(),
            group: "g".into(),
            labels: BTreeMap::new(),
            agent_build: String::new(),
            peer: String::new(),
            connected: true,
            connected_since_unix_ms: 0,
            last_seen_unix_ms: 0,
            sent_version: 0,
            acked_version: 0,
            acked_hash: String::new(),
            last_nacked_version: 0,
            nack_reason: String::new(),
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

    #[test]
    fn old_stream_cannot_touch_new_one() {
        let reg = AgentRegistry::default();
        let old = reg.connect(&node("a"), "1.2.3.4:5", None);
        reg.record_sent(&old, 1);
        let new = reg.connect(&node("a"), "1.2.3.4:6", Some((1, "h1")));
        assert_ne!(old.generation(), new.generation());
        reg.disconnect(&old);
        reg.record_nack(&old, 1, "late");
        let list = reg.list(None);
        assert_eq!(list.len(), 1);
        let a = &list[0];
        assert!(a.connected);
        assert_eq!(a.peer, "1.2.3.4:6");
        assert_eq!((a.acked_version, a.acked_hash.as_str()), (1, "h1"));
        assert_eq!(a.last_nacked_version, 0);
        assert_eq!(a.sent_version, 0);
        reg.disconnect(&new);
        assert!(!reg.list(None)[0].connected);
    }

    #[test]
    fn ack_nack_and_listing() {
        let reg = AgentRegistry::default();
        let a = reg.connect(&node("a"), "", None);
        let mut other = node("b");
        other.group = "core".into();
        reg.connect(&other, "", None);
        reg.record_sent(&a, 1);
        reg.record_ack(&a, 1, "h1");
        reg.record_sent(&a, 2);
        reg.record_nack(&a, 2, "clusters[0]: bad");
        let edge = reg.list(Some("edge"));
        assert_eq!(edge.len(), 1);
        let r = &edge[0];
        assert_eq!(r.acked_version, 1, "a NACK keeps the acked version");
        assert_eq!(r.last_nacked_version, 2);
        assert_eq!(r.nack_reason, "clusters[0]: bad");
        assert_eq!(r.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(r.state(2), AgentState::Nacked);
        let all: Vec<String> = reg.list(None).into_iter().map(|r| r.group).collect();
        assert_eq!(all, vec!["core".to_owned(), "edge".to_owned()]);
    }

    #[tokio::test(start_paused = true)]
    async fn forgets_disconnected_agents_after_a_while() {
        let reg = AgentRegistry::new(Duration::from_secs(60));
        let gone = reg.connect(&node("gone"), "", None);
        let _live = reg.connect(&node("live"), "", None);
        reg.disconnect(&gone);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(reg.sweep(), 0);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(reg.sweep(), 1);
        let left: Vec<String> = reg.list(None).into_iter().map(|r| r.node_id).collect();
        assert_eq!(left, vec!["live".to_owned()]);
    }
}
