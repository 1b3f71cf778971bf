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
//! Sockets of an accepted candidate wait in a stash until the activation
//! task ([`Listeners::reconcile`]) starts their accept loops. When a new
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

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vane_agent::Current;
use vane_model::{Listener, Protocol};

use crate::cluster::ClusterRt;
use crate::compile::{Compiled, ListenerRoutes};
use crate::metrics::ListenerStats;
use crate::proxy::Shared;
use crate::route::RouteTableRt;

/// Pending connections the kernel queues per listener.
const BACKLOG: i32 = 1024;
/// After the drain timeout, how long connections get to notice the hard stop.
const HARD_STOP_GRACE: Duration = Duration::from_secs(1);
/// Shortest interval between two "at --max-connections" warnings.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

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

/// A running listener, as its connections see it.
#[derive(Debug)]
pub(crate) struct ListenerRt {
    /// The listener's name (its key in the compiled configuration).
    pub(crate) name: String,
    /// The bound address.
    pub(crate) address: SocketAddr,
    /// HTTP or TCP.
    pub(crate) protocol: Protocol,
    /// Data-plane state.
    pub(crate) shared: Arc<Shared>,
    /// Connection metrics.
    pub(crate) stats: ListenerStats,
    /// Set when the listener is removed: its connections then keep the
    /// routes it had (`frozen`) instead of following new snapshots.
    draining: AtomicBool,
    frozen: OnceLock<ListenerRoutes>,
}

impl ListenerRt {
    fn routes<'a>(&'a self, compiled: &'a Compiled) -> Option<&'a ListenerRoutes> {
        if self.draining.load(Ordering::Acquire) {
            self.frozen.get()
        } else {
            compiled.listeners.get(&self.name)
        }
    }

    /// The route table for a request on this listener.
    #[inline]
    pub(crate) fn http_routes<'a>(&'a self, compiled: &'a Compiled) -> Option<&'a RouteTableRt> {
        match self.routes(compiled)? {
            ListenerRoutes::Http(t) => Some(t),
            ListenerRoutes::Tcp(_) => None,
        }
    }

    /// The cluster for a connection on this listener.
    pub(crate) fn tcp_cluster<'a>(&'a self, compiled: &'a Compiled) -> Option<&'a Arc<ClusterRt>> {
        match self.routes(compiled)? {
            ListenerRoutes::Tcp(c) => Some(c),
            ListenerRoutes::Http(_) => None,
        }
    }

    /// Stops following snapshots: keeps `routes` for the connections that
    /// drain.
    fn freeze(&self, routes: Option<ListenerRoutes>) {
        if let Some(r) = routes {
            let _ = self.frozen.set(r);
        }
        self.draining.store(true, Ordering::Release);
    }
}

/// Signals a listener sends its connections.
#[derive(Debug, Clone)]
pub(crate) struct ConnSignals {
    /// Finish what is in flight, then close.
    pub(crate) graceful: CancellationToken,
    /// Close now.
    pub(crate) hard: CancellationToken,
}

/// The sockets of one address: one per worker once started (index =
/// worker), just the first one while stashed.
type SocketSet = Vec<std::net::TcpListener>;

fn dup_set(set: &SocketSet) -> io::Result<SocketSet> {
    set.iter().map(std::net::TcpListener::try_clone).collect()
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

/// Binds a nonblocking listening socket with `SO_REUSEADDR` (so a restart
/// is not refused by connections in TIME_WAIT) and `SO_REUSEPORT` (one
/// socket per worker). A port held by another program without
/// `SO_REUSEPORT` (or by another user) still fails with "address in use".
fn bind(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// An OS error without the `(os error N)` suffix: what an operator reads.
fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Every listener of the data plane.
pub(crate) struct Listeners {
    table: Mutex<Table>,
    /// Accept loops and drains, so shutdown can wait for them.
    tasks: TaskTracker,
}

impl Listeners {
    /// No listeners.
    pub(crate) fn new() -> Self {
        Self {
            table: Mutex::new(Table::default()),
            tasks: TaskTracker::new(),
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
                r.rt.freeze(running.listeners.get(&key.name).cloned());
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
        let rt = Arc::new(ListenerRt {
            name: key.name.clone(),
            address: key.address,
            protocol: key.protocol,
            shared: shared.clone(),
            stats: shared.metrics.listener_stats(&key.name),
            draining: AtomicBool::new(false),
            frozen: OnceLock::new(),
        });
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
        let loops = Arc::new(AtomicUsize::new(workers));
        for (dup, handle) in dups.into_iter().zip(shared.workers.handles()) {
            let accept = accept_loop(
                dup,
                rt.clone(),
                running.stop_accepting.clone(),
                running.signals.clone(),
                running.connections.clone(),
                self.clone(),
                id,
                loops.clone(),
            );
            handle.spawn(self.tasks.track_future(accept));
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
        self.tasks.spawn(async move {
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
                    r.rt.freeze(compiled.listeners.get(&key.name).cloned());
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

#[allow(clippy::too_many_arguments)] // One call site; a struct would only rename them.
async fn accept_loop(
    socket: std::net::TcpListener,
    rt: Arc<ListenerRt>,
    stop: CancellationToken,
    signals: ConnSignals,
    connections: TaskTracker,
    owner: Arc<Listeners>,
    id: u64,
    loops: Arc<AtomicUsize>,
) {
    let listener = match TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %rt.name, error = %e, "cannot register a listener with a worker");
            if loops.fetch_sub(1, Ordering::AcqRel) == 1 {
                owner.closed(id);
            }
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Per-connection errors (the peer reset before we accepted)
                // are nobody's problem; running out of file descriptors is:
                // say so and back off instead of spinning.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) {
                    tracing::warn!(listener = %rt.name, error = %e, "accept failed; pausing");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
                continue;
            }
        };
        let Ok(permit) = rt.shared.connection_limit.clone().try_acquire_owned() else {
            // Over the cap: accept and close at once (see `refuse`).
            refuse(&rt, stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        rt.stats.connections_total.inc();
        rt.stats.connections_active.inc();
        let rt = rt.clone();
        let signals = signals.clone();
        connections.spawn(async move {
            let stats = rt.stats.connections_active.clone();
            match rt.protocol {
                Protocol::Http => crate::http::server::serve(stream, peer, rt, signals).await,
                Protocol::Tcp => crate::tcp::serve(stream, peer, rt, signals).await,
            }
            stats.dec();
            drop(permit);
        });
    }
    drop(listener);
    // The last loop to stop releases the manager's copy of the socket.
    if loops.fetch_sub(1, Ordering::AcqRel) == 1 {
        owner.closed(id);
    }
}

/// Closes a connection accepted over `--max-connections`.
///
/// Accepting and closing, rather than leaving connections in the kernel's
/// backlog: the client learns at once that this instance is full and can
/// retry another one, instead of waiting on a connection nobody serves
/// (and, once the backlog is full, on SYN retransmissions seconds apart);
/// the refusal is counted and logged; and the backlog never fills with
/// connections whose clients gave up long before they would be served.
fn refuse(rt: &ListenerRt, stream: tokio::net::TcpStream) {
    rt.stats.connections_refused.inc();
    drop(stream);
    // Logged at most once per REFUSAL_LOG_EVERY: a flood must not become a
    // log flood.
    let now = crate::clock::now_millis().max(1);
    let last = &rt.shared.refusal_logged_ms;
    let prev = last.load(Ordering::Relaxed);
    if (prev == 0 || now.saturating_sub(prev) >= REFUSAL_LOG_EVERY.as_millis() as u64)
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(listener = %rt.name, max_connections = rt.shared.config.max_connections,
            refused = rt.stats.connections_refused.get(),
            "at --max-connections: closing new connections at once");
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
                    })
                    .collect(),
                ..Snapshot::default()
            }),
            applied_at: SystemTime::now(),
        }
    }

    fn free_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn a_refused_candidate_releases_what_it_bound() {
        let ls = Listeners::new();
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
        let ls = Listeners::new();
        let addr = free_port();
        ls.prepare(&candidate(1, &[("a", addr)])).unwrap();
        // Not activated yet, and a newer candidate renames it: the same
        // socket is shared, not bound twice.
        ls.prepare(&candidate(2, &[("b", addr)])).unwrap();
        assert_eq!(ls.table().stash.len(), 2);
        // Version 2 consumed nothing yet; dropping version-1 leftovers keeps
        // version 2's socket.
        ls.table().stash.retain(|s| s.version > 1);
        assert_eq!(ls.table().stash.len(), 1);
        assert!(std::net::TcpListener::bind(addr).is_err(), "still bound");
    }
}
