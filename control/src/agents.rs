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
//! task, [`replicate`]: the registry only marks which agents changed, and the
//! task writes their latest state, so a burst of ACKs costs one write per
//! agent and a sign of life (`touch`) costs none. `Status` merges the local
//! records with the other replicas' ([`merge`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::{StoreError, now_unix_ms};

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
    /// The identity that opened this node's streams ("" when anonymous):
    /// no other identity may take its record over.
    owner: String,
    generation: u64,
    // Monotonic, for expiry: a wall-clock jump must not forget agents early.
    last_seen: Instant,
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
                owner: String::new(),
                generation,
                last_seen: Instant::now(),
            });
        if entry.owner.is_empty() {
            identity.clone_into(&mut entry.owner);
        }
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

    /// The agent refused `version` and keeps running what it acked before.
    pub fn record_nack(&self, key: &StreamKey, version: u64, reason: &str) {
        self.update(key, true, |r| {
            r.last_nacked_version = version;
            r.nack_reason = reason.to_owned();
        });
    }

    /// The stream ended.
    pub fn disconnect(&self, key: &StreamKey) {
        self.update(key, true, |r| r.connected = false);
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
        let mut forgotten = Vec::new();
        inner.agents.retain(|key, e| {
            let keep = e.record.connected || e.last_seen.elapsed() < forget_after;
            if !keep {
                forgotten.push(key.clone());
            }
            keep
        });
        let mut tracked = false;
        for key in &forgotten {
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
                Some(e) => AgentChange::Put(SharedAgent {
                    replica: replica.to_owned(),
                    record: e.record.clone(),
                }),
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

/// An agent's record as a replica shares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedAgent {
    /// The replica holding (or that last held) the agent's stream.
    pub replica: String,
    /// The record.
    pub record: AgentRecord,
}

/// One change of a replica's agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentChange {
    /// The agent's current record.
    Put(SharedAgent),
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

/// How long the replication task waits after a change before writing, so an
/// agent's "sent" and its ACK a few milliseconds later make one write.
pub const PUBLISH_COALESCE: Duration = Duration::from_millis(100);
/// Longest wait between retries of a failed write.
const PUBLISH_RETRY_CAP: Duration = Duration::from_secs(5);
/// How long shutdown waits for the lease to be revoked.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(2);

/// Publishes `registry`'s changes to `directory` as replica `replica` and
/// keeps the replica's lease alive, until `stop`; then withdraws the
/// replica's records. Failed writes are retried with backoff, always with
/// the agents' latest state.
pub async fn replicate(
    registry: Arc<AgentRegistry>,
    directory: Arc<dyn AgentDirectory>,
    replica: String,
    stop: CancellationToken,
) {
    registry.track_changes();
    let mut renew = tokio::time::interval(directory.renew_every());
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut epoch = 0u64;
    let mut failures = 0u32;
    let mut renew_failing = false;
    let mut retry_at: Option<Instant> = None;
    loop {
        let publish_now = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = renew.tick() => {
                match directory.renew().await {
                    Ok(e) => {
                        if std::mem::take(&mut renew_failing) {
                            tracing::info!("renewing this replica's lease again");
                        }
                        note_epoch(&registry, &mut epoch, e);
                    }
                    // Once per outage: the store's health says the rest.
                    Err(e) if !renew_failing => {
                        renew_failing = true;
                        tracing::warn!(error = %e, "cannot renew this replica's lease");
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot renew this replica's lease"),
                }
                false
            }
            () = sleep_until_opt(retry_at) => {
                retry_at = None;
                true
            }
            () = registry.changed(), if retry_at.is_none() => {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(PUBLISH_COALESCE) => {}
                }
                true
            }
        };
        if !publish_now {
            continue;
        }
        let changes = registry.take_changes(&replica);
        if changes.is_empty() {
            continue;
        }
        match directory.publish(&changes).await {
            Ok(e) => {
                if std::mem::take(&mut failures) > 0 {
                    tracing::info!("sharing agent status with the other replicas again");
                }
                note_epoch(&registry, &mut epoch, e);
            }
            Err(e) => {
                registry.requeue(&changes);
                failures = failures.saturating_add(1);
                let delay = retry_delay(failures);
                // Once per outage at warn: the store's health says the rest.
                if failures == 1 {
                    tracing::warn!(
                        error = %e,
                        agents = changes.len(),
                        retry_in = ?delay,
                        "cannot share agent status with the other replicas"
                    );
                } else {
                    tracing::debug!(error = %e, retry_in = ?delay, "still cannot share agent status");
                }
                retry_at = Some(Instant::now() + delay);
            }
        }
    }
    match tokio::time::timeout(WITHDRAW_TIMEOUT, directory.withdraw()).await {
        Ok(Ok(())) => tracing::debug!("withdrew this replica's agent records"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot withdraw this replica's agent records; they expire with its lease")
        }
        Err(_) => tracing::warn!(
            "withdrawing this replica's agent records timed out; they expire with its lease"
        ),
    }
}

fn note_epoch(registry: &AgentRegistry, epoch: &mut u64, new: u64) {
    if new != *epoch {
        if *epoch != 0 {
            tracing::warn!("this replica's lease was replaced; sharing every agent again");
            registry.mark_all_changed();
        }
        *epoch = new;
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// 250 ms, doubling, at most [`PUBLISH_RETRY_CAP`].
fn retry_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    (Duration::from_millis(250) * 2u32.pow(exp)).min(PUBLISH_RETRY_CAP)
}

/// This replica's agents merged with the other replicas': one entry per
/// (group, node id), sorted. An agent that moved keeps an entry on the
/// replica it left until that one forgets it (or dies), so the entry shown
/// is the one with an open stream, else the most recently seen.
pub fn merge(local: Vec<AgentRecord>, replica: &str, others: Vec<SharedAgent>) -> Vec<SharedAgent> {
    let mut best: HashMap<(String, String), SharedAgent> = HashMap::new();
    let all = local
        .into_iter()
        .map(|record| SharedAgent {
            replica: replica.to_owned(),
            record,
        })
        .chain(others);
    for agent in all {
        let key = (agent.record.group.clone(), agent.record.node_id.clone());
        match best.get(&key) {
            Some(current) if !newer(&agent.record, &current.record) => {}
            _ => {
                best.insert(key, agent);
            }
        }
    }
    let mut out: Vec<SharedAgent> = best.into_values().collect();
    out.sort_by(|a, b| {
        (&a.record.group, &a.record.node_id).cmp(&(&b.record.group, &b.record.node_id))
    });
    out
}

/// Whether `a` describes the agent better than `b`: connected beats
/// disconnected, then the later stream, then the later sign of life.
fn newer(a: &AgentRecord, b: &AgentRecord) -> bool {
    (a.connected, a.connected_since_unix_ms, a.last_seen_unix_ms)
        > (b.connected, b.connected_since_unix_ms, b.last_seen_unix_ms)
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
        reg.record_nack(&a, 2, "no");
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

    #[test]
    fn merge_shows_the_open_stream() {
        let mut left = record();
        left.node_id = "moved".into();
        left.connected = false;
        left.connected_since_unix_ms = 10;
        left.last_seen_unix_ms = 50;
        let mut joined = left.clone();
        joined.connected = true;
        joined.connected_since_unix_ms = 40;
        let mut elsewhere = record();
        elsewhere.node_id = "other".into();
        let merged = merge(
            vec![left],
            "a",
            vec![
                SharedAgent {
                    replica: "b".into(),
                    record: joined,
                },
                SharedAgent {
                    replica: "b".into(),
                    record: elsewhere,
                },
            ],
        );
        let shown: Vec<(&str, &str, bool)> = merged
            .iter()
            .map(|a| {
                (
                    a.record.node_id.as_str(),
                    a.replica.as_str(),
                    a.record.connected,
                )
            })
            .collect();
        assert_eq!(shown, vec![("moved", "b", true), ("other", "b", true)]);
    }

    /// A scripted directory: records what is published, fails on demand,
    /// and replaces its lease on demand.
    #[derive(Default)]
    struct FakeDirectory {
        published: Mutex<Vec<Vec<AgentChange>>>,
        failing: std::sync::atomic::AtomicBool,
        epoch: std::sync::atomic::AtomicU64,
        withdrawn: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl AgentDirectory for FakeDirectory {
        async fn publish(&self, changes: &[AgentChange]) -> Result<u64, StoreError> {
            use std::sync::atomic::Ordering::SeqCst;
            if self.failing.load(SeqCst) {
                return Err(StoreError::Degraded("etcd away".into()));
            }
            self.published.lock().unwrap().push(changes.to_vec());
            Ok(self.epoch.load(SeqCst).max(1))
        }
        async fn renew(&self) -> Result<u64, StoreError> {
            Ok(self.epoch.load(std::sync::atomic::Ordering::SeqCst).max(1))
        }
        fn renew_every(&self) -> Duration {
            Duration::from_secs(1)
        }
        async fn others(&self, _: Option<&str>) -> Result<Vec<SharedAgent>, StoreError> {
            Ok(Vec::new())
        }
        async fn withdraw(&self) -> Result<(), StoreError> {
            self.withdrawn
                .store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn replication_retries_and_republishes_after_a_new_lease() {
        use std::sync::atomic::Ordering::SeqCst;
        let reg = Arc::new(AgentRegistry::default());
        let dir = Arc::new(FakeDirectory::default());
        let stop = CancellationToken::new();
        let a = reg.connect(&node("a"), "", None);
        let task = tokio::spawn(replicate(
            Arc::clone(&reg),
            Arc::clone(&dir) as Arc<dyn AgentDirectory>,
            "r1".into(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(dir.published.lock().unwrap().len(), 1, "the initial state");

        // Failing writes are retried with the latest state.
        dir.failing.store(true, SeqCst);
        reg.record_ack(&a, 3, "h3");
        tokio::time::sleep(Duration::from_secs(2)).await;
        reg.record_ack(&a, 4, "h4");
        dir.failing.store(false, SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let last = dir.published.lock().unwrap().last().cloned().unwrap();
        match &last[..] {
            [AgentChange::Put(shared)] => assert_eq!(shared.record.acked_version, 4),
            other => panic!("{other:?}"),
        }

        // A replaced lease took every record along: all are written again.
        let before = dir.published.lock().unwrap().len();
        dir.epoch.store(2, SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        {
            let published = dir.published.lock().unwrap();
            assert!(published.len() > before, "nothing republished");
            assert_eq!(keys(published.last().unwrap()), vec![("a".into(), true)]);
        }

        stop.cancel();
        task.await.unwrap();
        assert!(dir.withdrawn.load(SeqCst));
    }
}
