//! What the server knows about each agent: who it is, what was sent to it,
//! what it acked or refused. Read by `Admin.Status`, written by watch streams.
//!
//! An agent is keyed by (group, node id). Each stream gets a generation when
//! it connects; updates carry it and are ignored unless it is the entry's
//! current one, so an old stream of a node that reconnected cannot mark the
//! new stream disconnected or overwrite what it recorded. (Two live agents
//! sharing a node id therefore show as one: the newest stream wins.)
//!
//! # Across replicas
//! With a clustered store, each replica publishes its own agents' records to
//! an [`AgentDirectory`] (etcd keys bound to the replica's lease) from one
//! task, `replication::replicate`: the registry only marks which agents changed, and the
//! task writes their latest state, so a burst of ACKs costs one write per
//! agent and a sign of life (`touch`) costs none. `Status` merges the local
//! records with the other replicas' (`replication::merge`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use vane_store::now_unix_ms;

pub use vane_store::agents::{AgentChange, AgentDirectory, AgentRecord, AgentState, SharedAgent};

/// How long a disconnected agent stays listed, unless configured.
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(60 * 60);

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
    /// What kind of client: `vane-agent`, `envoy`, `grpc`, `xds` (see
    /// [`AgentRecord::client`]).
    pub client: String,
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
    /// The identity that opened this node's streams ("" when anonymous):
    /// no other identity may take its record over.
    owner: String,
    generation: u64,
    // Monotonic, for expiry: a wall-clock jump must not forget agents early.
    last_seen: Instant,
    /// An HTTP long-poll node (no stream to end): it counts as
    /// disconnected once this passes without a new poll.
    expires: Option<Instant>,
    /// The hash of `record.sent_version` as sent over HTTP, which the
    /// node's ACK must name.
    sent_hash: String,
}

impl Entry {
    /// Connected: a stream is open, or an HTTP node polled recently enough.
    fn connected(&self, now: Instant) -> bool {
        self.record.connected && self.expires.is_none_or(|at| at > now)
    }
}

#[derive(Debug, Default)]
struct Inner {
    agents: HashMap<(String, String), Entry>,
    next_generation: u64,
    /// Agents whose record changed (or was forgotten) since the replication
    /// task last took them; `None` unless [`AgentRegistry::track_changes`]
    /// was called. A set of keys, not of records: the task reads the latest
    /// record when it writes, so the set is bounded by the number of agents.
    dirty: Option<HashSet<(String, String)>>,
}

/// Why [`AgentRegistry::connect_as`] refused a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefused {
    /// Another identity holds this node id.
    #[error("node.id: this node id is held by identity {owner:?}")]
    Owned {
        /// The identity that holds it.
        owner: String,
    },
    /// The registry is full.
    #[error("the server tracks {max} agents, its limit; no new node ids are accepted")]
    Full {
        /// The limit.
        max: usize,
    },
}

impl From<ConnectRefused> for tonic::Status {
    /// `PERMISSION_DENIED` for a node id another identity holds,
    /// `RESOURCE_EXHAUSTED` for a full registry.
    fn from(e: ConnectRefused) -> Self {
        match e {
            ConnectRefused::Owned { .. } => tonic::Status::permission_denied(e.to_string()),
            ConnectRefused::Full { .. } => tonic::Status::resource_exhausted(e.to_string()),
        }
    }
}

/// Why an HTTP node's ACK or NACK was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportRefused {
    /// The node never polled this group here (or was forgotten).
    #[error("node: has not polled this group on this server (poll first, then acknowledge)")]
    Unknown,
    /// Another identity holds this node id.
    #[error("node: this node id is held by identity {owner:?}")]
    Owned {
        /// The identity that holds it.
        owner: String,
    },
    /// The node id belongs to a stream (a vane-agent or xDS client).
    #[error("node: this node id is a streaming agent's, which acknowledges on its stream")]
    Stream,
}

/// The registry of agents.
#[derive(Debug)]
pub struct AgentRegistry {
    // A std mutex: every critical section is a few field writes, never an
    // await, and contention is one lock per request of an agent.
    inner: Mutex<Inner>,
    forget_after: Duration,
    // Wakes the replication task; `notify_one` keeps a permit, so a change
    // made while the task is busy is not lost.
    changed: Notify,
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
            changed: Notify::new(),
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
        let (key, tracked) = Self::connect_locked(&mut inner, node, peer, running, "");
        drop(inner);
        self.notify(tracked);
        key
    }

    /// [`Self::connect`] for a caller with an identity: refused when the
    /// node's record belongs to another identity (an agent cannot claim
    /// another's node id to overwrite its ACK record), or when the registry
    /// holds `max_agents` records and this node is not one of them.
    pub fn connect_as(
        &self,
        node: &NodeInfo,
        peer: &str,
        running: Option<(u64, &str)>,
        identity: &str,
        max_agents: usize,
    ) -> Result<StreamKey, ConnectRefused> {
        let mut inner = self.lock();
        let key = (node.group.clone(), node.id.clone());
        match inner.agents.get(&key) {
            Some(entry) if !entry.owner.is_empty() && entry.owner != identity => {
                return Err(ConnectRefused::Owned {
                    owner: entry.owner.clone(),
                });
            }
            Some(_) => {}
            None if inner.agents.len() >= max_agents => {
                return Err(ConnectRefused::Full { max: max_agents });
            }
            None => {}
        }
        let (key, tracked) = Self::connect_locked(&mut inner, node, peer, running, identity);
        drop(inner);
        self.notify(tracked);
        Ok(key)
    }

    fn connect_locked(
        inner: &mut Inner,
        node: &NodeInfo,
        peer: &str,
        running: Option<(u64, &str)>,
        identity: &str,
    ) -> (StreamKey, bool) {
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
                    ..AgentRecord::default()
                },
                owner: String::new(),
                generation,
                last_seen: Instant::now(),
                expires: None,
                sent_hash: String::new(),
            });
        if entry.owner.is_empty() {
            identity.clone_into(&mut entry.owner);
        }
        entry.generation = generation;
        entry.last_seen = Instant::now();
        // A stream, until an HTTP poll says otherwise (`poll_as`).
        entry.expires = None;
        entry.sent_hash.clear();
        let r = &mut entry.record;
        r.labels.clone_from(&node.labels);
        r.agent_build.clone_from(&node.agent_build);
        r.client.clone_from(&node.client);
        r.peer = peer.to_owned();
        r.connected = true;
        r.connected_since_unix_ms = now_ms;
        r.last_seen_unix_ms = now_ms;
        // What was sent belongs to the old stream; the NACK stays until the
        // agent acks something newer, since it still describes the head.
        r.sent_version = 0;
        // Counted while the record is kept (a rollout tells crash loops by
        // it); the health is the new stream's to say (its first request).
        r.sessions = r.sessions.saturating_add(1);
        r.health_degraded = false;
        r.health_reason.clear();
        r.health_version = 0;
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
        let key = (node.group.clone(), node.id.clone());
        let tracked = mark_dirty(inner, &key);
        (StreamKey { key, generation }, tracked)
    }

    /// Wakes the replication task after a change `mark_dirty` tracked.
    fn notify(&self, tracked: bool) {
        if tracked {
            self.changed.notify_one();
        }
    }

    /// Applies `f` to the stream's record if the stream is still the
    /// agent's current one. `publish` says whether the change is worth
    /// telling the other replicas about.
    fn update(&self, key: &StreamKey, publish: bool, f: impl FnOnce(&mut AgentRecord)) {
        let mut inner = self.lock();
        let mut tracked = false;
        if let Some(entry) = inner.agents.get_mut(&key.key)
            && entry.generation == key.generation
        {
            entry.last_seen = Instant::now();
            entry.record.last_seen_unix_ms = now_unix_ms();
            f(&mut entry.record);
            if publish {
                tracked = mark_dirty(&mut inner, &key.key);
            }
        }
        drop(inner);
        if tracked {
            self.changed.notify_one();
        }
    }

    /// A request arrived (of any kind). Not published to other replicas:
    /// a sign of life is not a change, and the replica's lease already says
    /// it is alive.
    pub fn touch(&self, key: &StreamKey) {
        self.update(key, false, |_| {});
    }

    /// `version` was sent on the stream.
    pub fn record_sent(&self, key: &StreamKey, version: u64) {
        self.update(key, true, |r| r.sent_version = version);
    }

    /// The agent acked `version` (it now runs it).
    pub fn record_ack(&self, key: &StreamKey, version: u64, hash: &str) {
        self.update(key, true, |r| {
            r.acked_version = version;
            r.acked_hash = hash.to_owned();
        });
    }

    /// The agent refused `version` and keeps running what it acked before;
    /// `code` is the gRPC code of its ErrorDetail (3: invalid content).
    pub fn record_nack(&self, key: &StreamKey, version: u64, reason: &str, code: i32) {
        self.update(key, true, |r| {
            r.last_nacked_version = version;
            r.nack_reason = reason.to_owned();
            r.nack_code = code;
        });
    }

    /// The agent's data plane reports its health for `version` (all zero:
    /// it reports none).
    pub fn record_health(&self, key: &StreamKey, degraded: bool, reason: &str, version: u64) {
        self.update(key, true, |r| {
            r.health_degraded = degraded;
            reason.clone_into(&mut r.health_reason);
            r.health_version = version;
        });
    }

    /// The stream ended.
    pub fn disconnect(&self, key: &StreamKey) {
        self.update(key, true, |r| r.connected = false);
    }

    /// Records a poll of an HTTP long-poll node (`crate::http`) and returns
    /// its key. There is no stream: the node counts as connected until
    /// `alive_for` passes without another poll. A node that is still
    /// polling keeps its key (its ACKs keep counting); one seen anew (or
    /// after a stream of the same id) starts a session like a stream's
    /// connect, keeping what it acked before unless `running` says what it
    /// runs. Refused like [`Self::connect_as`].
    pub fn poll_as(
        &self,
        node: &NodeInfo,
        peer: &str,
        identity: &str,
        max_agents: usize,
        alive_for: Duration,
        running: Option<(u64, &str)>,
    ) -> Result<StreamKey, ConnectRefused> {
        let mut inner = self.lock();
        let key = (node.group.clone(), node.id.clone());
        let now = Instant::now();
        let until = now + alive_for;
        let tracked_agents = inner.agents.len();
        match inner.agents.get_mut(&key) {
            Some(entry) if !entry.owner.is_empty() && entry.owner != identity => {
                return Err(ConnectRefused::Owned {
                    owner: entry.owner.clone(),
                });
            }
            Some(entry) if entry.expires.is_some() && entry.connected(now) => {
                entry.last_seen = now;
                entry.record.last_seen_unix_ms = now_unix_ms();
                entry.expires = Some(entry.expires.map_or(until, |at| at.max(until)));
                let changed = entry.record.labels != node.labels || entry.record.peer != peer;
                if changed {
                    entry.record.labels.clone_from(&node.labels);
                    peer.clone_into(&mut entry.record.peer);
                }
                let generation = entry.generation;
                let tracked = changed && mark_dirty(&mut inner, &key);
                drop(inner);
                self.notify(tracked);
                return Ok(StreamKey { key, generation });
            }
            Some(_) => {}
            None if tracked_agents >= max_agents => {
                return Err(ConnectRefused::Full { max: max_agents });
            }
            None => {}
        }
        let previous = inner
            .agents
            .get(&key)
            .filter(|e| e.record.acked_version > 0)
            .map(|e| (e.record.acked_version, e.record.acked_hash.clone()));
        let running = running.map(|(v, h)| (v, h.to_owned())).or(previous);
        let running = running.as_ref().map(|(v, h)| (*v, h.as_str()));
        let (stream, tracked) = Self::connect_locked(&mut inner, node, peer, running, identity);
        if let Some(entry) = inner.agents.get_mut(&key) {
            entry.expires = Some(until);
        }
        drop(inner);
        self.notify(tracked);
        Ok(stream)
    }

    /// `version` (hashing to `hash`) was sent to an HTTP node.
    pub fn record_http_sent(&self, key: &StreamKey, version: u64, hash: &str) {
        let mut inner = self.lock();
        let mut tracked = false;
        if let Some(entry) = inner.agents.get_mut(&key.key)
            && entry.generation == key.generation
        {
            entry.record.sent_version = version;
            hash.clone_into(&mut entry.sent_hash);
            tracked = mark_dirty(&mut inner, &key.key);
        }
        drop(inner);
        self.notify(tracked);
    }

    /// What was last sent to an HTTP node of `group` (version, hash;
    /// `(0, "")` when nothing), for checking its ACK; refused when the node
    /// is not known here or belongs to another identity.
    pub fn http_sent(
        &self,
        group: &str,
        node: &str,
        identity: &str,
    ) -> Result<(u64, String), ReportRefused> {
        let inner = self.lock();
        let entry = inner
            .agents
            .get(&(group.to_owned(), node.to_owned()))
            .ok_or(ReportRefused::Unknown)?;
        if !entry.owner.is_empty() && entry.owner != identity {
            return Err(ReportRefused::Owned {
                owner: entry.owner.clone(),
            });
        }
        if entry.expires.is_none() {
            return Err(ReportRefused::Stream);
        }
        Ok((entry.record.sent_version, entry.sent_hash.clone()))
    }

    /// An HTTP node's ACK (`nack: None`) or NACK (with its reason) of
    /// `version`, already checked against [`Self::http_sent`]. A report is
    /// a sign of life too.
    pub fn record_http_report(
        &self,
        group: &str,
        node: &str,
        version: u64,
        hash: &str,
        nack: Option<&str>,
    ) {
        let key = (group.to_owned(), node.to_owned());
        let mut inner = self.lock();
        let mut tracked = false;
        if let Some(entry) = inner.agents.get_mut(&key)
            && entry.expires.is_some()
        {
            entry.last_seen = Instant::now();
            let r = &mut entry.record;
            r.last_seen_unix_ms = now_unix_ms();
            match nack {
                None => {
                    r.acked_version = version;
                    hash.clone_into(&mut r.acked_hash);
                }
                Some(reason) => {
                    r.last_nacked_version = version;
                    reason.clone_into(&mut r.nack_reason);
                    // INVALID_ARGUMENT: the node refused the content.
                    r.nack_code = 3;
                }
            }
            tracked = mark_dirty(&mut inner, &key);
        }
        drop(inner);
        self.notify(tracked);
    }

    /// Every agent (of `group` when given), sorted by group then node id.
    pub fn list(&self, group: Option<&str>) -> Vec<AgentRecord> {
        let inner = self.lock();
        let now = Instant::now();
        let mut out: Vec<AgentRecord> = inner
            .agents
            .values()
            .filter(|e| group.is_none_or(|g| e.record.group == g))
            .map(|e| {
                let mut record = e.record.clone();
                // An HTTP node past its expiry shows as gone at once, not
                // at the next sweep.
                record.connected = e.connected(now);
                record
            })
            .collect();
        out.sort_by(|a, b| (&a.group, &a.node_id).cmp(&(&b.group, &b.node_id)));
        out
    }

    /// Forgets agents disconnected for longer than `forget_after`. Returns
    /// how many were forgotten.
    pub fn sweep(&self) -> usize {
        let forget_after = self.forget_after;
        let now = Instant::now();
        let mut inner = self.lock();
        // HTTP nodes that stopped polling are disconnected now (and told to
        // the other replicas), then forgotten like any disconnected agent.
        let mut expired = Vec::new();
        for (key, e) in &mut inner.agents {
            if e.record.connected && !e.connected(now) {
                e.record.connected = false;
                expired.push(key.clone());
            }
        }
        let mut forgotten = Vec::new();
        inner.agents.retain(|key, e| {
            let keep = e.record.connected || e.last_seen.elapsed() < forget_after;
            if !keep {
                forgotten.push(key.clone());
            }
            keep
        });
        let mut tracked = false;
        for key in expired.iter().chain(&forgotten) {
            tracked |= mark_dirty(&mut inner, key);
        }
        drop(inner);
        if tracked {
            self.changed.notify_one();
        }
        forgotten.len()
    }

    /// Starts remembering which agents change, for [`Self::take_changes`];
    /// every agent already known counts as changed.
    pub fn track_changes(&self) {
        let mut inner = self.lock();
        let all: HashSet<_> = inner.agents.keys().cloned().collect();
        inner.dirty = Some(all);
        drop(inner);
        self.changed.notify_one();
    }

    /// Marks every agent as changed (after the shared copies were lost, e.g.
    /// with an expired lease).
    pub fn mark_all_changed(&self) {
        let mut inner = self.lock();
        let all: Vec<_> = inner.agents.keys().cloned().collect();
        if let Some(dirty) = inner.dirty.as_mut() {
            dirty.extend(all);
        }
        drop(inner);
        self.changed.notify_one();
    }

    /// Waits until an agent changed since the last [`Self::take_changes`]
    /// (returns at once if one did).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The latest state of every agent that changed since the last call:
    /// a record to write, or a deletion for an agent that was forgotten.
    pub fn take_changes(&self, replica: &str) -> Vec<AgentChange> {
        let mut inner = self.lock();
        let Some(dirty) = inner.dirty.as_mut() else {
            return Vec::new();
        };
        let keys = std::mem::take(dirty);
        let mut changes: Vec<AgentChange> = keys
            .into_iter()
            .map(|key| match inner.agents.get(&key) {
                Some(e) => AgentChange::Put(Box::new(SharedAgent {
                    replica: replica.to_owned(),
                    record: e.record.clone(),
                })),
                None => AgentChange::Delete {
                    group: key.0,
                    node_id: key.1,
                },
            })
            .collect();
        changes.sort_by(|a, b| a.key().cmp(&b.key()));
        changes
    }

    /// Marks the agents of `changes` as changed again (their write failed);
    /// the next [`Self::take_changes`] returns their state as it is then.
    pub fn requeue(&self, changes: &[AgentChange]) {
        let mut inner = self.lock();
        if let Some(dirty) = inner.dirty.as_mut() {
            for change in changes {
                let (group, node) = change.key();
                dirty.insert((group.to_owned(), node.to_owned()));
            }
        }
    }
}

/// Adds `key` to the changed set if changes are tracked; says whether they are.
fn mark_dirty(inner: &mut Inner, key: &(String, String)) -> bool {
    match inner.dirty.as_mut() {
        Some(dirty) => {
            dirty.insert(key.clone());
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            client: "vane-agent".to_owned(),
            id: id.into(),
            group: "edge".into(),
            labels: BTreeMap::from([("zone".into(), "a".into())]),
            agent_build: "test/1".into(),
        }
    }

    #[test]
    fn old_stream_cannot_touch_new_one() {
        let reg = AgentRegistry::default();
        let old = reg.connect(&node("a"), "1.2.3.4:5", None);
        reg.record_sent(&old, 1);
        let new = reg.connect(&node("a"), "1.2.3.4:6", Some((1, "h1")));
        assert_ne!(old.generation(), new.generation());
        reg.disconnect(&old);
        reg.record_nack(&old, 1, "late", 9);
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
        reg.record_nack(&a, 2, "clusters[0]: bad", 3);
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

    fn http_node(id: &str) -> NodeInfo {
        NodeInfo {
            client: "http".to_owned(),
            ..node(id)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_http_node_lives_while_it_polls_then_expires_and_is_forgotten() {
        let reg = AgentRegistry::new(Duration::from_secs(600));
        reg.track_changes();
        reg.take_changes("r");
        let alive = Duration::from_secs(60);
        let first = reg
            .poll_as(&http_node("p"), "peer", "", 10, alive, None)
            .unwrap();
        reg.record_http_sent(&first, 2, "h2");
        tokio::time::advance(Duration::from_secs(50)).await;
        // Still polling: the same session, expiry pushed back.
        let again = reg
            .poll_as(&http_node("p"), "peer", "", 10, alive, None)
            .unwrap();
        assert_eq!(first, again);
        assert_eq!(reg.http_sent("edge", "p", ""), Ok((2, "h2".to_owned())));
        reg.record_http_report("edge", "p", 2, "h2", None);
        let r = &reg.list(None)[0];
        assert!(r.connected);
        assert_eq!((r.client.as_str(), r.sessions), ("http", 1));
        assert_eq!(r.state(2), AgentState::Synced);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(reg.list(None)[0].connected);
        assert_eq!(reg.sweep(), 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        // Past its expiry: shown disconnected at once, told to the other
        // replicas at the sweep, forgotten after --forget-after.
        assert!(!reg.list(None)[0].connected);
        reg.take_changes("r");
        assert_eq!(reg.sweep(), 0);
        match &reg.take_changes("r")[..] {
            [AgentChange::Put(shared)] => assert!(!shared.record.connected),
            other => panic!("{other:?}"),
        }
        // A poll after expiry is a new session that keeps its ACK.
        reg.poll_as(&http_node("p"), "peer", "", 10, alive, None)
            .unwrap();
        let r = &reg.list(None)[0];
        assert!(r.connected);
        assert_eq!((r.sessions, r.acked_version), (2, 2));
        tokio::time::advance(Duration::from_secs(61 + 600)).await;
        assert_eq!(reg.sweep(), 1);
        assert!(reg.list(None).is_empty());
    }

    #[test]
    fn http_reports_are_refused_for_unknown_foreign_and_streaming_nodes() {
        let reg = AgentRegistry::default();
        let alive = Duration::from_secs(60);
        assert_eq!(
            reg.http_sent("edge", "p", "me"),
            Err(ReportRefused::Unknown)
        );
        reg.poll_as(&http_node("p"), "", "me", 10, alive, None)
            .unwrap();
        assert!(matches!(
            reg.http_sent("edge", "p", "other"),
            Err(ReportRefused::Owned { .. })
        ));
        assert!(matches!(
            reg.poll_as(&http_node("p"), "", "other", 10, alive, None),
            Err(ConnectRefused::Owned { .. })
        ));
        assert!(matches!(
            reg.poll_as(&http_node("q"), "", "me", 1, alive, None),
            Err(ConnectRefused::Full { max: 1 })
        ));
        reg.connect(&node("s"), "", None);
        assert_eq!(reg.http_sent("edge", "s", ""), Err(ReportRefused::Stream));
        // A NACK is recorded with its reason; the ACK before it stays.
        reg.record_http_report("edge", "p", 1, "h1", None);
        reg.record_http_report("edge", "p", 2, "h2", Some("bad file"));
        let r = reg
            .list(Some("edge"))
            .into_iter()
            .find(|r| r.node_id == "p")
            .unwrap();
        assert_eq!((r.acked_version, r.last_nacked_version), (1, 2));
        assert_eq!(
            (r.nack_reason.as_str(), r.state(2)),
            ("bad file", AgentState::Nacked)
        );
    }

    fn keys(changes: &[AgentChange]) -> Vec<(String, bool)> {
        changes
            .iter()
            .map(|c| (c.key().1.to_owned(), matches!(c, AgentChange::Put(_))))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_tracked_once_asked_and_signs_of_life_are_not_changes() {
        let reg = AgentRegistry::new(Duration::from_secs(60));
        let a = reg.connect(&node("a"), "", None);
        assert!(reg.take_changes("r").is_empty(), "not tracking yet");
        reg.track_changes();
        reg.changed().await;
        let changes = reg.take_changes("r");
        assert_eq!(keys(&changes), vec![("a".into(), true)]);
        match &changes[0] {
            AgentChange::Put(shared) => assert_eq!(shared.replica, "r"),
            other => panic!("{other:?}"),
        }
        reg.touch(&a);
        assert!(reg.take_changes("r").is_empty());
        reg.record_sent(&a, 1);
        reg.record_ack(&a, 1, "h");
        let changes = reg.take_changes("r");
        assert_eq!(changes.len(), 1, "two changes of one agent make one write");
        match &changes[0] {
            AgentChange::Put(shared) => assert_eq!(shared.record.acked_version, 1),
            other => panic!("{other:?}"),
        }
        // A failed write comes back with the state as it is by then.
        reg.requeue(&changes);
        reg.record_nack(&a, 2, "no", 9);
        match &reg.take_changes("r")[0] {
            AgentChange::Put(shared) => assert_eq!(shared.record.last_nacked_version, 2),
            other => panic!("{other:?}"),
        }
        reg.disconnect(&a);
        tokio::time::advance(Duration::from_secs(61)).await;
        reg.take_changes("r");
        assert_eq!(reg.sweep(), 1);
        assert_eq!(keys(&reg.take_changes("r")), vec![("a".into(), false)]);
    }
}
