//! Compiling a snapshot into what the request path reads: one immutable
//! [`Compiled`] value behind one `ArcSwap`, built aside from the running one
//! and swapped in whole. Runtime state that must outlive a snapshot (pools,
//! cursors, ejections, budgets, token buckets) is carried over from the
//! running build when the cluster or limit is unchanged. TLS listeners'
//! server configurations are built before (`crate::tls::build`, which can
//! fail: it reads files) and handed in.

use std::collections::HashMap;
use std::sync::Arc;

use vane_agent::Current;
use vane_model::ListenerTarget;

use crate::cluster::ClusterRt;
use crate::cluster::transport::Transport;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::route::{RouteRt, RouteTableRt};
use crate::tls::{ServerTls, TlsBuild};

/// What a listener of the running build sends traffic to.
#[derive(Debug, Clone)]
pub(crate) enum ListenerRoutes {
    /// HTTP: a route table, compiled for this listener (its metric labels).
    Http(Arc<RouteTableRt>),
    /// TCP: a cluster.
    Tcp(Arc<ClusterRt>),
}

/// The data plane's whole configuration: built once per snapshot, read
/// lock-free by every request.
#[derive(Debug)]
pub(crate) struct Compiled {
    /// The snapshot this was compiled from, with version, hash and source.
    pub(crate) current: Arc<Current>,
    /// Whether a configuration (live, cached or defaults) is loaded.
    pub(crate) ready: bool,
    /// By listener name.
    pub(crate) listeners: HashMap<String, ListenerRoutes>,
    /// By cluster name.
    pub(crate) clusters: HashMap<String, Arc<ClusterRt>>,
    /// By rate-limit name.
    pub(crate) limits: HashMap<String, Arc<RateLimiter>>,
    /// TLS of `https` and `tls` listeners, by listener name: what each
    /// accepted connection's handshake loads, so a new certificate reaches
    /// the next handshake.
    pub(crate) tls: HashMap<String, Arc<ServerTls>>,
}

impl Compiled {
    /// Nothing loaded yet: no listeners, not ready.
    pub(crate) fn empty(current: Arc<Current>) -> Self {
        Self {
            current,
            ready: false,
            listeners: HashMap::new(),
            clusters: HashMap::new(),
            limits: HashMap::new(),
            tls: HashMap::new(),
        }
    }

    /// Shows the expiry dates of the certificates this build serves: called
    /// when it starts running.
    pub(crate) fn publish_tls(&self) {
        for t in self.tls.values() {
            t.publish();
        }
    }
}

/// Compiles `current` with its listeners' TLS `tls`, keeping the runtime
/// state of `previous`.
///
/// Fails only on what validation cannot see: a cluster's TLS secret that
/// is a file on this host, missing or bad (the error names the cluster and
/// the field). The snapshot passed validation, so every reference
/// resolves. (A reference that somehow does not is skipped with an error
/// log rather than taking the data plane down.)
pub(crate) fn compile(
    current: Arc<Current>,
    previous: &Compiled,
    metrics: &Metrics,
    tls: HashMap<String, TlsBuild>,
) -> Result<Compiled, String> {
    let snapshot = current.snapshot.clone();
    let limits: HashMap<String, Arc<RateLimiter>> = snapshot
        .rate_limits
        .iter()
        .map(|l| {
            let kept = previous
                .limits
                .get(&l.name)
                .filter(|old| old.same_as(l.requests_per_second, l.burst))
                .cloned();
            let limiter = kept.unwrap_or_else(|| {
                Arc::new(RateLimiter::new(&l.name, l.requests_per_second, l.burst))
            });
            (l.name.clone(), limiter)
        })
        .collect();
    let clusters: HashMap<String, Arc<ClusterRt>> = snapshot
        .clusters
        .iter()
        .map(|c| {
            let prev = previous.clusters.get(&c.name).map(|p| &**p);
            let transport = Transport::build(c, &snapshot, metrics.transport_stats(&c.name))?;
            let built = ClusterRt::build(c, transport, prev, metrics);
            Ok((c.name.clone(), Arc::new(built)))
        })
        .collect::<Result<_, String>>()?;
    let mut listeners = HashMap::new();
    for l in &snapshot.listeners {
        let routes = match &l.target {
            ListenerTarget::Cluster(c) => match clusters.get(c) {
                Some(c) => ListenerRoutes::Tcp(c.clone()),
                None => {
                    tracing::error!(listener = %l.name, cluster = %c, "unknown cluster; listener skipped");
                    continue;
                }
            },
            ListenerTarget::RouteTable(t) => {
                let Some(table) = snapshot.route_table(t) else {
                    tracing::error!(listener = %l.name, route_table = %t, "unknown route table; listener skipped");
                    continue;
                };
                let routes = table
                    .routes
                    .iter()
                    .filter_map(|r| {
                        let Some(cluster) = clusters.get(&r.cluster) else {
                            tracing::error!(route = %r.name, cluster = %r.cluster, "unknown cluster; route skipped");
                            return None;
                        };
                        let limit = r.rate_limit.as_ref().and_then(|n| limits.get(n)).cloned();
                        let stats = metrics.route_stats(
                            &l.name,
                            &r.name,
                            &r.cluster,
                            r.rate_limit.as_deref(),
                        );
                        Some(Arc::new(RouteRt::new(r, cluster.clone(), limit, stats)))
                    })
                    .collect();
                ListenerRoutes::Http(Arc::new(RouteTableRt {
                    routes,
                    no_route: metrics.no_route(&l.name),
                }))
            }
        };
        listeners.insert(l.name.clone(), routes);
    }
    let tls = tls
        .into_iter()
        .map(|(name, build)| {
            let server = ServerTls::new(build, |secret| metrics.certificate_expiry(&name, secret));
            (name, Arc::new(server))
        })
        .collect();
    Ok(Compiled {
        ready: !current.hash.is_empty(),
        current,
        listeners,
        clusters,
        limits,
        tls,
    })
}
