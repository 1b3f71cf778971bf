//! The state every listener and connection of the data plane shares: the
//! compiled configuration requests read, the metrics, the HTTP connection
//! settings, the connection cap, the worker threads and the window of
//! answers the proxy's health is judged on. It sits below
//! everything that serves traffic and knows nothing of how it is filled in
//! (that is `activate`'s job).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::sync::Semaphore;

use crate::compile::Compiled;
use crate::health::ProxyHealth;
use crate::metrics::Metrics;
use crate::workers::Workers;

/// Settings the data plane reads.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) drain_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_connections: usize,
}

/// State every listener and connection shares.
pub(crate) struct Shared {
    /// The running configuration, compiled. The one thing requests read,
    /// and swapped in exactly one place (`activate`).
    pub(crate) compiled: ArcSwap<Compiled>,
    pub(crate) metrics: Metrics,
    /// HTTP/1.1 + h2c connection settings.
    pub(crate) http: auto::Builder<TokioExecutor>,
    /// Caps open downstream connections.
    pub(crate) connection_limit: Arc<Semaphore>,
    /// When a refusal at the connection limit was last logged (clock
    /// milliseconds; 0: never): a flood must not become a log flood.
    pub(crate) refusal_logged_ms: AtomicU64,
    pub(crate) config: Settings,
    /// The data-plane threads.
    pub(crate) workers: Workers,
    /// The window of answers the proxy's health is judged on.
    pub(crate) health: Arc<ProxyHealth>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("version", &self.compiled.load().current.version)
            .finish_non_exhaustive()
    }
}
