//! The listener manager: which sockets the data plane accepts on, and how
//! they follow the snapshot.
//!
//! A listener is identified by (name, address, protocol). When a snapshot
//! changes, listeners whose identity is unchanged are left alone (their
//! connections keep going; route changes reach them through the compiled
//! configuration); new ones start accepting; removed ones stop accepting and
//! drain their connections, bounded by the drain timeout.
//!
//! Binding happens in the agent's validator ([`Listeners::prepare`]), before
//! the agent swaps anything in: a snapshot with an address that cannot be
//! bound is refused (NACKed) whole, and sockets bound for it are released.
//! Sockets of an accepted candidate wait in a stash until the agent's sink
//! switches the data plane to it ([`Listeners::reconcile`], called from
//! `activate`) and starts their accept loops; a candidate that never gets
//! there gives its sockets back ([`Listeners::unstash`]). When a new
//! listener takes over the address of one that is going away (renamed, or
//! its protocol changed), the sockets are shared (`dup`), never closed and
//! rebound, so no connection attempt in between is refused.
//!
//! Each worker accepts on its own socket of a `SO_REUSEPORT` group bound to
//! the listener's address, so the kernel spreads connections evenly over
//! the workers (one shared socket lets whichever worker wakes first take
//! nearly all of a burst). The validator binds the first socket of the
//! group, which is what proves the address is free; activation adds one per
//! remaining worker.
//!
//! Layout: `socket` binds and duplicates sockets, `accept` runs the accept
//! loops and hands connections to the HTTP and TCP serving code; this file
//! keeps the table of listeners and follows the snapshot.

mod accept;
mod socket;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vane_agent::Current;
use vane_model::{Listener, Protocol};

use crate::compile::Compiled;
use crate::conn::{ConnSignals, ListenerRt};
use crate::shared::Shared;
use accept::{AcceptGroup, AcceptLoop};
use socket::{SocketSet, bind, describe, dup_set};

/// After the drain timeout, how long connections get to notice the hard stop.
const HARD_STOP_GRACE: Duration = Duration::from_secs(1);

/// What makes a listener the same listener across snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ListenerKey {
    name: String,
    address: SocketAddr,
    protocol: Protocol,
}

impl ListenerKey {
    fn of(l: &Listener) -> Self {
        Self {
            name: l.name.clone(),
            address: l.address,
            protocol: l.protocol(),
        }
    }
}

struct Running {
    rt: Arc<ListenerRt>,
    /// The manager's copies of the sockets (workers accept on duplicates),
    /// for address takeovers.
    sockets: SocketSet,
    stop_accepting: CancellationToken,
    signals: ConnSignals,
    connections: TaskTracker,
    id: u64,
}

struct Stashed {
    key: ListenerKey,
    sockets: SocketSet,
    /// The candidate version it was bound for.
    version: u64,
}

#[derive(Default)]
struct Table {
    running: HashMap<ListenerKey, Running>,
    stash: Vec<Stashed>,
    /// Sockets of stopped listeners whose accept loops may still hold them.
    closing: HashMap<u64, (SocketAddr, SocketSet)>,
    next_id: u64,
}

impl Table {
    /// Duplicates of the sockets already bound to `address`, if any (the
    /// fullest set: a running listener's has one per worker).
    fn dup_of(&self, address: SocketAddr) -> Option<io::Result<SocketSet>> {
        self.running
            .values()
            .map(|r| (r.rt.address, &r.sockets))
            .chain(self.stash.iter().map(|s| (s.key.address, &s.sockets)))
            .chain(self.closing.values().map(|(a, s)| (*a, s)))
            .filter(|(a, _)| *a == address)
            .max_by_key(|(_, s)| s.len())
            .map(|(_, s)| dup_set(s))
    }

    /// Sockets for `address`: shared with a listener that holds them, or
    /// the first of a new group.
    fn obtain(&self, address: SocketAddr) -> io::Result<SocketSet> {
        match self.dup_of(address) {
            Some(dup) => dup,
            None => Ok(vec![bind(address)?]),
        }
    }
}

/// Every listener of the data plane.
pub(crate) struct Listeners {
    table: Mutex<Table>,
    /// Accept loops and drains, so shutdown can wait for them.
    tasks: TaskTracker,
    /// The control side's runtime, where drains run. Named rather than
    /// taken from the calling thread: listeners are reconciled by the
    /// agent's sink, on whatever thread the agent runs its apply path.
    control: Handle,
}

impl Listeners {
    /// No listeners; drains will run on `control`.
    pub(crate) fn new(control: Handle) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            tasks: TaskTracker::new(),
            control,
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // Plain data; a panic elsewhere cannot leave it half-updated in a
        // way that matters more than stopping the data plane would.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The agent's validator: binds every address `candidate` adds. On any
    /// failure nothing stays bound and the error names each listener.
    pub(crate) fn prepare(&self, candidate: &Current) -> Result<(), String> {
        let mut table = self.table();
        let mut bound = Vec::new();
        let mut errors = Vec::new();
        for l in &candidate.snapshot.listeners {
            let key = ListenerKey::of(l);
            if table.running.contains_key(&key) || table.stash.iter().any(|s| s.key == key) {
                continue;
            }
            match table.obtain(l.address) {
                Ok(sockets) => bound.push(Stashed {
                    key,
                    sockets,
                    version: candidate.version,
                }),
                Err(e) => errors.push(format!(
                    "listeners[{}] {}: cannot bind: {}",
                    l.name,
                    l.address,
                    describe(&e)
                )),
            }
        }
        if !errors.is_empty() {
            // `bound` is dropped here: those sockets are released.
            return Err(errors.join("; "));
        }
        table.stash.extend(bound);
        Ok(())
    }

    /// Releases the sockets stashed for candidate `version`, which will not
    /// run (refused after validation, or superseded before its sink ran).
    /// Sockets shared with another listener stay open through its copies.
    pub(crate) fn unstash(&self, version: u64) {
        self.table().stash.retain(|s| s.version != version);
    }

    /// Before the new build is swapped in: listeners it removes keep the
    /// routes they have, so their draining connections never see a gap.
    pub(crate) fn freeze_removed(&self, next: &Current, running: &Compiled) {
        let table = self.table();
        for (key, r) in &table.running {
            if !next
                .snapshot
                .listeners
                .iter()
                .any(|l| ListenerKey::of(l) == *key)
            {
                r.rt.freeze(Some(running));
            }
        }
    }

    /// After the swap: start the listeners `current` adds, stop (and drain)
    /// those it removes, release stashed sockets nobody will use.
    pub(crate) fn reconcile(self: &Arc<Self>, current: &Current, shared: &Arc<Shared>) {
        let mut table = self.table();
        let desired: Vec<(ListenerKey, &Listener)> = current
            .snapshot
            .listeners
            .iter()
            .map(|l| (ListenerKey::of(l), l))
            .collect();
        for (key, l) in &desired {
            if table.running.contains_key(key) {
                continue;
            }
            let socket = match table.stash.iter().position(|s| s.key == *key) {
                Some(i) => Ok(table.stash.swap_remove(i).sockets),
                // Only when snapshots raced past each other; the address is
                // normally in the stash.
                None => table.obtain(key.address),
            };
            let sockets = match socket {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(listener = %l.name, address = %l.address, error = %describe(&e),
                        "cannot bind a listener of an accepted snapshot");
                    continue;
                }
            };
            match self.start(&mut table, key.clone(), sockets, shared) {
                Ok(()) => tracing::info!(listener = %l.name, address = %l.address,
                    protocol = l.protocol().as_str(), "listener started"),
                Err(e) => {
                    tracing::error!(listener = %l.name, address = %l.address, error = %describe(&e),
                    "cannot start a listener")
                }
            }
        }
        let removed: Vec<ListenerKey> = table
            .running
            .keys()
            .filter(|k| !desired.iter().any(|(d, _)| d == *k))
            .cloned()
            .collect();
        for key in removed {
            if let Some(r) = table.running.remove(&key) {
                tracing::info!(listener = %key.name, address = %key.address, "listener removed; draining");
                self.stop(&mut table, r, shared.config.drain_timeout);
            }
        }
        let version = current.version;
        table.stash.retain(|s| s.version > version);
        shared
            .metrics
            .listeners
            .set(i64::try_from(table.running.len()).unwrap_or(i64::MAX));
    }

    fn start(
        self: &Arc<Self>,
        table: &mut Table,
        key: ListenerKey,
        mut sockets: SocketSet,
        shared: &Arc<Shared>,
    ) -> io::Result<()> {
        // One socket per worker: complete the group.
        let workers = shared.workers.len();
        while sockets.len() < workers {
            let extra = match bind(key.address) {
                Ok(s) => s,
                Err(e) => {
                    // Accepting on a shared socket still works, only less
                    // evenly spread.
                    tracing::warn!(listener = %key.name, address = %key.address, error = %describe(&e),
                        "cannot bind a per-worker socket; workers share one");
                    sockets[0].try_clone()?
                }
            };
            sockets.push(extra);
        }
        let dups = dup_set(&sockets)?;
        let rt = Arc::new(ListenerRt::new(
            key.name.clone(),
            key.address,
            key.protocol,
            shared.clone(),
            shared
                .metrics
                .listener_stats(&key.name, key.protocol.is_tls()),
        ));
        let id = table.next_id;
        table.next_id += 1;
        let running = Running {
            rt: rt.clone(),
            sockets,
            stop_accepting: CancellationToken::new(),
            signals: ConnSignals {
                graceful: CancellationToken::new(),
                hard: CancellationToken::new(),
            },
            connections: TaskTracker::new(),
            id,
        };
        let owner = self.clone();
        let group = AcceptGroup::new(workers, move || owner.closed(id));
        for (dup, handle) in dups.into_iter().zip(shared.workers.handles()) {
            let accept = AcceptLoop {
                rt: rt.clone(),
                stop: running.stop_accepting.clone(),
                signals: running.signals.clone(),
                connections: running.connections.clone(),
                group: group.clone(),
            };
            handle.spawn(self.tasks.track_future(accept.run(dup)));
        }
        table.running.insert(key, running);
        Ok(())
    }

    fn stop(&self, table: &mut Table, r: Running, drain: Duration) {
        r.rt.freeze(None);
        table.closing.insert(r.id, (r.rt.address, r.sockets));
        r.stop_accepting.cancel();
        r.signals.graceful.cancel();
        r.connections.close();
        let name = r.rt.name.clone();
        let (connections, hard) = (r.connections, r.signals.hard);
        let drain = self.tasks.track_future(async move {
            if tokio::time::timeout(drain, connections.wait())
                .await
                .is_err()
            {
                tracing::warn!(listener = %name, open = connections.len(),
                    "drain timeout passed; closing the remaining connections");
                hard.cancel();
                let _ = tokio::time::timeout(HARD_STOP_GRACE, connections.wait()).await;
            }
            tracing::info!(listener = %name, "listener drained");
        });
        self.control.spawn(drain);
    }

    /// Stops every listener and waits (bounded by `drain` plus a grace) for
    /// their connections to finish.
    pub(crate) async fn shutdown(&self, shared: &Shared, drain: Duration) {
        {
            let compiled = shared.compiled.load_full();
            let mut table = self.table();
            let all: Vec<ListenerKey> = table.running.keys().cloned().collect();
            for key in all {
                if let Some(r) = table.running.remove(&key) {
                    // Requests still arriving on open connections keep
                    // their routes while they drain.
                    r.rt.freeze(Some(&compiled));
                    self.stop(&mut table, r, drain);
                }
            }
            table.stash.clear();
        }
        self.tasks.close();
        if tokio::time::timeout(drain + 2 * HARD_STOP_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some listeners did not finish draining in time");
        }
    }

    /// Addresses of the running listeners, by name.
    pub(crate) fn addresses(&self) -> Vec<(String, SocketAddr)> {
        let table = self.table();
        let mut v: Vec<_> = table
            .running
            .keys()
            .map(|k| (k.name.clone(), k.address))
            .collect();
        v.sort();
        v
    }

    fn closed(&self, id: u64) {
        self.table().closing.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;
    use vane_agent::Source;
    use vane_model::{ListenerTarget, Snapshot};

    fn candidate(version: u64, listeners: &[(&str, SocketAddr)]) -> Current {
        Current {
            version,
            hash: format!("h{version}"),
            source: Source::Live,
            snapshot: Arc::new(Snapshot {
                listeners: listeners
                    .iter()
                    .map(|(n, a)| Listener {
                        name: (*n).to_owned(),
                        address: *a,
                        target: ListenerTarget::Cluster("c".into()),
                        tls: None,
                    })
                    .collect(),
                ..Snapshot::default()
            }),
            applied_at: SystemTime::now(),
        }
    }

    /// A manager whose drains would run on a runtime of its own (these
    /// tests never drain).
    fn manager() -> (Listeners, tokio::runtime::Runtime) {
        let control = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        (Listeners::new(control.handle().clone()), control)
    }

    fn free_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn a_refused_candidate_releases_what_it_bound() {
        let (ls, _control) = manager();
        let free = free_port();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = taken.local_addr().unwrap();
        let err = ls
            .prepare(&candidate(1, &[("a", free), ("web", busy)]))
            .unwrap_err();
        assert_eq!(
            err,
            format!("listeners[web] {busy}: cannot bind: Address already in use")
        );
        assert!(ls.table().stash.is_empty());
        // `free` was released: it can be bound again.
        drop(std::net::TcpListener::bind(free).unwrap());
    }

    #[test]
    fn a_renamed_listener_shares_the_socket() {
        let (ls, _control) = manager();
        let addr = free_port();
        ls.prepare(&candidate(1, &[("a", addr)])).unwrap();
        // Not activated yet, and a newer candidate renames it: the same
        // socket is shared, not bound twice.
        ls.prepare(&candidate(2, &[("b", addr)])).unwrap();
        assert_eq!(ls.table().stash.len(), 2);
        // Version 2 consumed nothing yet; dropping version-1 leftovers keeps
        // version 2's socket.
        ls.unstash(1);
        assert_eq!(ls.table().stash.len(), 1);
        assert!(std::net::TcpListener::bind(addr).is_err(), "still bound");
        // Version 2 will not run either: the address is free again.
        ls.unstash(2);
        assert!(ls.table().stash.is_empty());
        drop(std::net::TcpListener::bind(addr).unwrap());
    }
}
