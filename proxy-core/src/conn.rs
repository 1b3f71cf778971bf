//! A running listener as its connections see it ([`ListenerRt`]: name,
//! address, protocol, metrics, the routes and TLS it serves) and the signals it
//! sends them ([`ConnSignals`]). This is the bottom of the serving code:
//! HTTP and TCP connections are handed these, and the listener manager
//! above creates them; nothing here knows about sockets or snapshots.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;
use vane_model::Protocol;

use crate::cluster::ClusterRt;
use crate::compile::{Compiled, ListenerRoutes};
use crate::metrics::ListenerStats;
use crate::route::RouteTableRt;
use crate::shared::Shared;
use crate::tls::ServerTls;

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
    /// routes and TLS it had (`frozen`) instead of following new snapshots.
    draining: AtomicBool,
    frozen: OnceLock<ListenerRoutes>,
    frozen_tls: OnceLock<Arc<ServerTls>>,
}

impl ListenerRt {
    /// A listener that follows the compiled configuration.
    pub(crate) fn new(
        name: String,
        address: SocketAddr,
        protocol: Protocol,
        shared: Arc<Shared>,
        stats: ListenerStats,
    ) -> Self {
        Self {
            name,
            address,
            protocol,
            shared,
            stats,
            draining: AtomicBool::new(false),
            frozen: OnceLock::new(),
            frozen_tls: OnceLock::new(),
        }
    }

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

    /// The TLS a new connection's handshake runs with: the running
    /// build's, so a pushed certificate reaches the next handshake.
    pub(crate) fn server_tls(&self, compiled: &Compiled) -> Option<Arc<ServerTls>> {
        if self.draining.load(Ordering::Acquire) {
            self.frozen_tls.get().cloned()
        } else {
            compiled.tls.get(&self.name).cloned()
        }
    }

    /// Stops following snapshots: keeps `routes` and `tls` of `compiled`
    /// (the running build, if the listener is still in it) for the
    /// connections that drain.
    pub(crate) fn freeze(&self, compiled: Option<&Compiled>) {
        if let Some(c) = compiled {
            if let Some(r) = c.listeners.get(&self.name) {
                let _ = self.frozen.set(r.clone());
            }
            if let Some(t) = c.tls.get(&self.name) {
                let _ = self.frozen_tls.set(t.clone());
            }
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
