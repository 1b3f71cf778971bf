//! The data plane's Prometheus metrics. Label sets are resolved to counter
//! handles when a snapshot is compiled, so the request path only increments
//! atomics: no label hashing, no map lookups, no locks.
//!
//! Label sets of routes and clusters that a new snapshot no longer has are
//! removed from the families, so `/metrics` stays bounded under churn.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cluster::transport::TransportStats;
use crate::histogram::LatencyHistogram;

/// Status classes counted per route.
pub(crate) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    listener: String,
    route: String,
    cluster: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    listener: String,
    route: String,
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClusterLabels {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamErrorLabels {
    cluster: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RateLimitedLabels {
    listener: String,
    route: String,
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpgradeLabels {
    listener: String,
    protocol: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HandshakeLabels {
    listener: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CertificateLabels {
    listener: String,
    secret: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClosedLabels {
    listener: String,
    reason: String,
}

/// Handles of one route on one listener.
#[derive(Debug, Clone)]
pub(crate) struct RouteStats {
    /// Requests by status class (index = first digit - 1).
    pub(crate) requests: [Counter; 5],
    /// Time to the response headers (or to the local error).
    pub(crate) duration: LatencyHistogram,
    /// Requests refused by the route's rate limit.
    pub(crate) rate_limited: Counter,
}

impl RouteStats {
    /// Counts a response with `status`.
    #[inline]
    pub(crate) fn count(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[class].inc();
    }
}

/// Handles of one cluster.
#[derive(Debug, Clone)]
pub(crate) struct ClusterStats {
    pub(crate) connect_errors: Counter,
    pub(crate) timeouts: Counter,
    pub(crate) protocol_errors: Counter,
    /// Response bodies cut by the route's timeout after the head was sent.
    pub(crate) response_timeouts: Counter,
    /// Response bodies cut by the route's idle timeout.
    pub(crate) response_idle: Counter,
    pub(crate) retries: Counter,
    pub(crate) budget_exhausted: Counter,
    pub(crate) ejections: Counter,
    pub(crate) ejected: Gauge,
    /// Picks made in panic mode (every endpoint ejected).
    pub(crate) panic: Counter,
}

/// Handles of one listener.
#[derive(Debug, Clone)]
pub(crate) struct ListenerStats {
    /// Connections open now.
    pub(crate) connections_active: Gauge,
    /// Connections accepted.
    pub(crate) connections_total: Counter,
    /// Connections refused because the proxy is at its connection limit.
    pub(crate) connections_refused: Counter,
    /// Connections closed by the proxy, by reason.
    pub(crate) closed: ClosedStats,
    /// HTTP/1.1 upgrades asked for, by protocol and result.
    pub(crate) upgrades: UpgradeStats,
    /// Upgraded connections (tunnels) open now.
    pub(crate) tunnels_active: Gauge,
    /// TLS handshakes, for `https` and `tls` listeners.
    pub(crate) tls: TlsStats,
}

/// TLS handshakes of one listener, by result (the label `result`).
#[derive(Debug, Clone)]
pub(crate) struct TlsStats {
    /// `ok`: the handshake completed.
    pub(crate) ok: Counter,
    /// `client_cert_refused`: the listener requires client certificates
    /// and the client sent none, or one its CA did not sign.
    pub(crate) client_cert_refused: Counter,
    /// `timeout`: not complete within the header-read timeout.
    pub(crate) timeout: Counter,
    /// `error`: any other failure (not TLS, no common version or cipher,
    /// the client gave up).
    pub(crate) error: Counter,
}

/// Upgrade requests of one listener (labels `protocol`: `websocket` or
/// `other`, so a client cannot grow the label set; `result`).
#[derive(Debug, Clone)]
pub(crate) struct UpgradeStats {
    /// `websocket`, `switched`: the upstream answered 101; a tunnel opened.
    pub(crate) websocket_switched: Counter,
    /// `websocket`, `declined`: the upstream answered something else (or
    /// failed), which was proxied as a normal response.
    pub(crate) websocket_declined: Counter,
    /// Any other protocol, switched.
    pub(crate) other_switched: Counter,
    /// Any other protocol, declined.
    pub(crate) other_declined: Counter,
}

impl UpgradeStats {
    /// The counter of an upgrade to a WebSocket or not, switched or not.
    pub(crate) fn counter(&self, websocket: bool, switched: bool) -> &Counter {
        match (websocket, switched) {
            (true, true) => &self.websocket_switched,
            (true, false) => &self.websocket_declined,
            (false, true) => &self.other_switched,
            (false, false) => &self.other_declined,
        }
    }
}

/// Connections a listener closed itself, by reason (the label `reason`).
#[derive(Debug, Clone)]
pub(crate) struct ClosedStats {
    /// `header_timeout`: a request head (or the HTTP/2 preface) was not
    /// complete within the header-read timeout.
    pub(crate) header_timeout: Counter,
    /// `idle`: no request for the idle timeout.
    pub(crate) idle: Counter,
    /// `header_too_large`: a request head over the size or count limit
    /// (answered 431 over HTTP/1).
    pub(crate) header_too_large: Counter,
    /// `malformed`: a request that does not parse (answered 400 over
    /// HTTP/1).
    pub(crate) malformed: Counter,
    /// `tunnel_idle`: an upgraded connection (a WebSocket, say) carried no
    /// byte either way for the idle timeout.
    pub(crate) tunnel_idle: Counter,
}

#[derive(Debug, Default)]
struct Keys {
    requests: HashSet<RequestLabels>,
    routes: HashSet<RouteLabels>,
    clusters: HashSet<ClusterLabels>,
    upstream_errors: HashSet<UpstreamErrorLabels>,
    rate_limited: HashSet<RateLimitedLabels>,
    certificates: HashSet<CertificateLabels>,
}

/// Every metric family of the data plane.
#[derive(Debug)]
pub(crate) struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, LatencyHistogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    retries: Family<ClusterLabels, Counter>,
    budget_exhausted: Family<ClusterLabels, Counter>,
    ejections: Family<ClusterLabels, Counter>,
    ejected: Family<ClusterLabels, Gauge>,
    panic: Family<ClusterLabels, Counter>,
    tls_failures: Family<ClusterLabels, Counter>,
    h2_opened: Family<ClusterLabels, Counter>,
    h2_active: Family<ClusterLabels, Gauge>,
    rate_limited: Family<RateLimitedLabels, Counter>,
    connections_active: Family<ListenerLabels, Gauge>,
    connections_total: Family<ListenerLabels, Counter>,
    connections_refused: Family<ListenerLabels, Counter>,
    connections_closed: Family<ClosedLabels, Counter>,
    upgrades: Family<UpgradeLabels, Counter>,
    tunnels_active: Family<ListenerLabels, Gauge>,
    tls_handshakes: Family<HandshakeLabels, Counter>,
    certificate_expiry: Family<CertificateLabels, Gauge>,
    /// Admin-endpoint connections closed at once: over the admin cap.
    pub(crate) admin_refused: Counter,
    /// Admin-endpoint connections closed for not completing a request in
    /// time (or idle).
    pub(crate) admin_timeouts: Counter,
    /// Version the data plane runs (activated, not just received).
    pub(crate) config_version: Gauge,
    /// Snapshots activated by the data plane.
    pub(crate) activations: Counter,
    /// Listeners the data plane runs.
    pub(crate) listeners: Gauge,
    /// The label sets the running build uses (and the one being compiled).
    live: Mutex<Keys>,
    building: Mutex<Keys>,
}

impl Metrics {
    /// Empty families.
    pub(crate) fn new() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::default(),
            upstream_errors: Family::default(),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            ejections: Family::default(),
            ejected: Family::default(),
            panic: Family::default(),
            tls_failures: Family::default(),
            h2_opened: Family::default(),
            h2_active: Family::default(),
            rate_limited: Family::default(),
            connections_active: Family::default(),
            connections_total: Family::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            upgrades: Family::default(),
            tunnels_active: Family::default(),
            tls_handshakes: Family::default(),
            certificate_expiry: Family::default(),
            admin_refused: Counter::default(),
            admin_timeouts: Counter::default(),
            config_version: Gauge::default(),
            activations: Counter::default(),
            listeners: Gauge::default(),
            live: Mutex::new(Keys::default()),
            building: Mutex::new(Keys::default()),
        }
    }

    /// Registers every family in `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "vane_proxy_requests",
            "HTTP requests by listener, route, cluster and status class",
            self.requests.clone(),
        );
        registry.register(
            "vane_proxy_request_duration_seconds",
            "Time from request to response headers (or local error), by listener, route and cluster",
            self.duration.clone(),
        );
        registry.register(
            "vane_proxy_upstream_errors",
            "Upstream failures by cluster and kind (connect, timeout: no response head \
             within the route's timeout, protocol, response_timeout: a response body cut by \
             the route's timeout, response_idle: cut by its idle timeout)",
            self.upstream_errors.clone(),
        );
        registry.register(
            "vane_proxy_upstream_retries",
            "Retries sent to a cluster",
            self.retries.clone(),
        );
        registry.register(
            "vane_proxy_retry_budget_exhausted",
            "Retries not sent because the cluster's retry budget was spent",
            self.budget_exhausted.clone(),
        );
        registry.register(
            "vane_proxy_outlier_ejections",
            "Endpoints ejected by passive outlier detection",
            self.ejections.clone(),
        );
        registry.register(
            "vane_proxy_outlier_ejected_endpoints",
            "Endpoints currently ejected",
            self.ejected.clone(),
        );
        registry.register(
            "vane_proxy_cluster_panic",
            "Endpoint picks made in panic mode: every endpoint of the cluster was ejected, \
             so the pick balanced over all of them",
            self.panic.clone(),
        );
        registry.register(
            "vane_proxy_upstream_tls_handshake_failures",
            "TLS handshakes with a cluster's endpoints that failed (certificate not trusted, \
             name mismatch, protocol error)",
            self.tls_failures.clone(),
        );
        registry.register(
            "vane_proxy_upstream_h2_connections",
            "HTTP/2 connections opened to a cluster's endpoints",
            self.h2_opened.clone(),
        );
        registry.register(
            "vane_proxy_upstream_h2_connections_active",
            "HTTP/2 connections to a cluster's endpoints open now",
            self.h2_active.clone(),
        );
        registry.register(
            "vane_proxy_rate_limited",
            "Requests refused with 429 by a rate limit",
            self.rate_limited.clone(),
        );
        registry.register(
            "vane_proxy_connections_active",
            "Downstream connections open, by listener",
            self.connections_active.clone(),
        );
        registry.register(
            "vane_proxy_connections",
            "Downstream connections accepted, by listener",
            self.connections_total.clone(),
        );
        registry.register(
            "vane_proxy_connections_refused",
            "Downstream connections closed at once because the proxy was at --max-connections",
            self.connections_refused.clone(),
        );
        registry.register(
            "vane_proxy_connections_closed",
            "Downstream connections the proxy closed itself, by listener and reason \
             (header_timeout, idle, header_too_large, malformed, tunnel_idle)",
            self.connections_closed.clone(),
        );
        registry.register(
            "vane_proxy_upgrades",
            "HTTP/1.1 Upgrade requests by listener, protocol (websocket, other) and result \
             (switched: the upstream answered 101 and a tunnel opened; declined: it did not)",
            self.upgrades.clone(),
        );
        registry.register(
            "vane_proxy_tunnels_active",
            "Upgraded connections (WebSockets and other protocols) open, by listener",
            self.tunnels_active.clone(),
        );
        registry.register(
            "vane_proxy_tls_handshakes",
            "TLS handshakes on https and tls listeners, by listener and result \
             (ok, client_cert_refused, timeout, error)",
            self.tls_handshakes.clone(),
        );
        registry.register(
            "vane_proxy_certificate_expiry_timestamp_seconds",
            "When each certificate a TLS listener serves expires (its leaf's notAfter, \
             seconds since the Unix epoch), by listener and secret",
            self.certificate_expiry.clone(),
        );
        registry.register(
            "vane_proxy_admin_connections_refused",
            "Admin-endpoint connections closed at once because the admin endpoint was at its connection cap",
            self.admin_refused.clone(),
        );
        registry.register(
            "vane_proxy_admin_connections_timed_out",
            "Admin-endpoint connections closed because a request was not complete (or the connection idle) within --header-read-timeout",
            self.admin_timeouts.clone(),
        );
        registry.register(
            "vane_proxy_config_version",
            "Version of the configuration the data plane runs (0: defaults or none)",
            self.config_version.clone(),
        );
        registry.register(
            "vane_proxy_config_activations",
            "Snapshots activated by the data plane (routing compiled, listeners reconciled)",
            self.activations.clone(),
        );
        registry.register(
            "vane_proxy_listeners",
            "Listeners accepting connections",
            self.listeners.clone(),
        );
    }

    fn note<K: Clone + Eq + Hash>(&self, pick: impl FnOnce(&mut Keys) -> &mut HashSet<K>, k: &K) {
        let mut b = self.building.lock().unwrap_or_else(|p| p.into_inner());
        pick(&mut b).insert(k.clone());
    }

    /// Handles of `route` of `listener`, sending to `cluster`.
    pub(crate) fn route_stats(
        &self,
        listener: &str,
        route: &str,
        cluster: &str,
        limit: Option<&str>,
    ) -> RouteStats {
        let requests = CLASSES.map(|class| {
            let k = RequestLabels {
                listener: listener.to_owned(),
                route: route.to_owned(),
                cluster: cluster.to_owned(),
                class: class.to_owned(),
            };
            self.note(|b| &mut b.requests, &k);
            self.requests.get_or_create_owned(&k)
        });
        let rk = RouteLabels {
            listener: listener.to_owned(),
            route: route.to_owned(),
            cluster: cluster.to_owned(),
        };
        self.note(|b| &mut b.routes, &rk);
        let limited = RateLimitedLabels {
            listener: listener.to_owned(),
            route: route.to_owned(),
            limit: limit.unwrap_or_default().to_owned(),
        };
        let rate_limited = if limit.is_some() {
            self.note(|b| &mut b.rate_limited, &limited);
            self.rate_limited.get_or_create_owned(&limited)
        } else {
            // Never incremented: a detached counter keeps the type simple.
            Counter::default()
        };
        RouteStats {
            requests,
            duration: self.duration.get_or_create_owned(&rk),
            rate_limited,
        }
    }

    /// Handles of requests of `listener` that match no route.
    pub(crate) fn no_route(&self, listener: &str) -> Counter {
        let k = RequestLabels {
            listener: listener.to_owned(),
            route: String::new(),
            cluster: String::new(),
            class: "4xx".to_owned(),
        };
        self.note(|b| &mut b.requests, &k);
        self.requests.get_or_create_owned(&k)
    }

    /// Handles of `cluster`.
    pub(crate) fn cluster_stats(&self, cluster: &str) -> ClusterStats {
        let ck = ClusterLabels {
            cluster: cluster.to_owned(),
        };
        self.note(|b| &mut b.clusters, &ck);
        let err = |kind: &str| {
            let k = UpstreamErrorLabels {
                cluster: cluster.to_owned(),
                kind: kind.to_owned(),
            };
            self.note(|b| &mut b.upstream_errors, &k);
            self.upstream_errors.get_or_create_owned(&k)
        };
        ClusterStats {
            connect_errors: err("connect"),
            timeouts: err("timeout"),
            protocol_errors: err("protocol"),
            response_timeouts: err("response_timeout"),
            response_idle: err("response_idle"),
            retries: self.retries.get_or_create_owned(&ck),
            budget_exhausted: self.budget_exhausted.get_or_create_owned(&ck),
            ejections: self.ejections.get_or_create_owned(&ck),
            ejected: self.ejected.get_or_create_owned(&ck),
            panic: self.panic.get_or_create_owned(&ck),
        }
    }

    /// Connection metric handles of `cluster`.
    pub(crate) fn transport_stats(&self, cluster: &str) -> TransportStats {
        let ck = ClusterLabels {
            cluster: cluster.to_owned(),
        };
        self.note(|b| &mut b.clusters, &ck);
        TransportStats {
            tls_failures: self.tls_failures.get_or_create_owned(&ck),
            h2_opened: self.h2_opened.get_or_create_owned(&ck),
            h2_active: self.h2_active.get_or_create_owned(&ck),
        }
    }

    /// Handles of listener `name` (kept for the process's life: listeners
    /// are few, and a draining listener still counts its connections);
    /// `tls`: it terminates TLS (else its handshake counters are detached,
    /// so plaintext listeners show no handshake series).
    pub(crate) fn listener_stats(&self, name: &str, tls: bool) -> ListenerStats {
        let k = ListenerLabels {
            listener: name.to_owned(),
        };
        ListenerStats {
            connections_active: self.connections_active.get_or_create_owned(&k),
            connections_total: self.connections_total.get_or_create_owned(&k),
            connections_refused: self.connections_refused.get_or_create_owned(&k),
            closed: ClosedStats {
                header_timeout: self.closed(name, "header_timeout"),
                idle: self.closed(name, "idle"),
                header_too_large: self.closed(name, "header_too_large"),
                malformed: self.closed(name, "malformed"),
                tunnel_idle: self.closed(name, "tunnel_idle"),
            },
            upgrades: UpgradeStats {
                websocket_switched: self.upgrade(name, "websocket", "switched"),
                websocket_declined: self.upgrade(name, "websocket", "declined"),
                other_switched: self.upgrade(name, "other", "switched"),
                other_declined: self.upgrade(name, "other", "declined"),
            },
            tunnels_active: self.tunnels_active.get_or_create_owned(&k),
            tls: TlsStats {
                ok: self.handshake(name, "ok", tls),
                client_cert_refused: self.handshake(name, "client_cert_refused", tls),
                timeout: self.handshake(name, "timeout", tls),
                error: self.handshake(name, "error", tls),
            },
        }
    }

    fn handshake(&self, listener: &str, result: &str, tls: bool) -> Counter {
        if !tls {
            return Counter::default();
        }
        self.tls_handshakes.get_or_create_owned(&HandshakeLabels {
            listener: listener.to_owned(),
            result: result.to_owned(),
        })
    }

    /// The expiry gauge of the certificate of `secret` on `listener`.
    pub(crate) fn certificate_expiry(&self, listener: &str, secret: &str) -> Gauge {
        let k = CertificateLabels {
            listener: listener.to_owned(),
            secret: secret.to_owned(),
        };
        self.note(|b| &mut b.certificates, &k);
        self.certificate_expiry.get_or_create_owned(&k)
    }

    fn upgrade(&self, listener: &str, protocol: &str, result: &str) -> Counter {
        self.upgrades.get_or_create_owned(&UpgradeLabels {
            listener: listener.to_owned(),
            protocol: protocol.to_owned(),
            result: result.to_owned(),
        })
    }

    fn closed(&self, listener: &str, reason: &str) -> Counter {
        self.connections_closed.get_or_create_owned(&ClosedLabels {
            listener: listener.to_owned(),
            reason: reason.to_owned(),
        })
    }

    /// The build that was being compiled is now the running one: drop label
    /// sets only the previous build used.
    pub(crate) fn commit_build(&self) {
        let next = std::mem::take(&mut *self.building.lock().unwrap_or_else(|p| p.into_inner()));
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut *live, next);
        self.remove_unused(&old, &live);
    }

    /// The build that was being compiled will not run (its snapshot was
    /// refused or superseded after it was compiled): drop the label sets
    /// only it used, so they do not linger in `/metrics`.
    pub(crate) fn discard_build(&self) {
        let discarded =
            std::mem::take(&mut *self.building.lock().unwrap_or_else(|p| p.into_inner()));
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        self.remove_unused(&discarded, &live);
    }

    /// Removes from the families every label set of `gone` not in `kept`.
    fn remove_unused(&self, gone: &Keys, kept: &Keys) {
        for k in gone.requests.difference(&kept.requests) {
            self.requests.remove(k);
        }
        for k in gone.routes.difference(&kept.routes) {
            self.duration.remove(k);
        }
        for k in gone.clusters.difference(&kept.clusters) {
            self.retries.remove(k);
            self.budget_exhausted.remove(k);
            self.ejections.remove(k);
            self.ejected.remove(k);
            self.panic.remove(k);
            self.tls_failures.remove(k);
            self.h2_opened.remove(k);
            self.h2_active.remove(k);
        }
        for k in gone.upstream_errors.difference(&kept.upstream_errors) {
            self.upstream_errors.remove(k);
        }
        for k in gone.rate_limited.difference(&kept.rate_limited) {
            self.rate_limited.remove(k);
        }
        for k in gone.certificates.difference(&kept.certificates) {
            self.certificate_expiry.remove(k);
        }
    }
}
