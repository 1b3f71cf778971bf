//! A cluster as the data plane runs it: endpoints with their runtime state,
//! the load-balancing tables, the retry budget and the upstream connection
//! pool. Built when a snapshot is compiled; runtime state is carried over
//! from the previous build (see [`ClusterRt::build`]).

pub(crate) mod budget;
pub(crate) mod lb;
pub(crate) mod outlier;
pub(crate) mod transport;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::HeaderValue;
use prometheus_client::metrics::counter::Counter;
use vane_model::{Cluster, LbPolicy, OutlierDetection};

use crate::metrics::{ClusterStats, Metrics};
use budget::RetryBudget;
use outlier::EndpointState;
use transport::Transport;

/// One endpoint as the data plane runs it.
#[derive(Debug)]
pub(crate) struct EndpointRt {
    /// Where to connect.
    pub(crate) address: SocketAddr,
    /// Relative weight.
    pub(crate) weight: u32,
    /// `ip:port`, the `Host` of requests that arrive without one.
    pub(crate) host: HeaderValue,
    /// Runtime state, shared with the builds before and after this one.
    pub(crate) state: Arc<EndpointState>,
}

/// Runtime state of a cluster that outlives a snapshot: kept while a cluster
/// of that name exists. (Upstream connections are pooled per worker by
/// endpoint address, see [`crate::upstream`].)
#[derive(Default)]
pub(crate) struct ClusterState {
    /// Round-robin position.
    cursor: AtomicUsize,
    /// Retry budget.
    pub(crate) budget: RetryBudget,
    /// Serialises ejection decisions so the caps hold exactly. Taken only
    /// when an endpoint's failure streak reaches the threshold, never on the
    /// request path of a healthy cluster.
    eject_lock: Mutex<()>,
}

/// The load-balancing table.
#[derive(Debug)]
enum Policy {
    RoundRobin { schedule: Box<[u32]> },
    LeastRequest,
    Random,
}

/// A cluster as the data plane runs it.
pub(crate) struct ClusterRt {
    /// The cluster's name.
    pub(crate) name: String,
    /// Endpoints in configuration order.
    pub(crate) endpoints: Box<[EndpointRt]>,
    /// Cumulative weights (weighted random draws).
    cumulative: Box<[u64]>,
    policy: Policy,
    /// Ejection policy.
    pub(crate) outlier: OutlierDetection,
    /// TCP connect timeout of one attempt (the TLS handshake included).
    pub(crate) connect_timeout: Duration,
    /// Plaintext or TLS, HTTP/1.1 or HTTP/2.
    pub(crate) transport: Transport,
    /// State kept across snapshots.
    pub(crate) state: Arc<ClusterState>,
    /// Metric handles.
    pub(crate) stats: ClusterStats,
}

impl std::fmt::Debug for ClusterRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRt")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl ClusterRt {
    /// Builds `cluster` reached through `transport`, carrying over the
    /// state of `previous` (the cluster of the same name in the running
    /// build): the cursor and the budget, and each endpoint's state by
    /// address.
    pub(crate) fn build(
        cluster: &Cluster,
        transport: Transport,
        previous: Option<&ClusterRt>,
        metrics: &Metrics,
    ) -> Self {
        let state = previous.map(|p| p.state.clone()).unwrap_or_default();
        let endpoints: Box<[EndpointRt]> = cluster
            .endpoints
            .iter()
            .map(|e| {
                let kept = previous.and_then(|p| {
                    p.endpoints
                        .iter()
                        .find(|old| old.address == e.address)
                        .map(|old| old.state.clone())
                });
                EndpointRt {
                    address: e.address,
                    weight: e.weight,
                    host: host(e.address),
                    state: kept.unwrap_or_default(),
                }
            })
            .collect();
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let policy = match cluster.lb {
            LbPolicy::RoundRobin => Policy::RoundRobin {
                schedule: lb::schedule(&weights),
            },
            LbPolicy::LeastRequest => Policy::LeastRequest,
            LbPolicy::Random => Policy::Random,
        };
        Self {
            name: cluster.name.clone(),
            cumulative: lb::cumulative(&weights),
            endpoints,
            policy,
            outlier: cluster.outlier,
            connect_timeout: cluster.connect_timeout,
            transport,
            state,
            stats: metrics.cluster_stats(&cluster.name),
        }
    }

    /// Whether the policy reads in-flight counts (only `least_request`
    /// pays for keeping them).
    #[inline]
    pub(crate) fn tracks_in_flight(&self) -> bool {
        matches!(self.policy, Policy::LeastRequest)
    }

    /// Picks an endpoint available at `now_ms`, avoiding those in `avoid`
    /// (the ones this request already tried) while another is available.
    ///
    /// Panic mode: when outlier detection has ejected every endpoint, the
    /// pick ignores ejections and balances over all of them (counted in
    /// `vane_proxy_cluster_panic_total`). Ejection exists to move traffic
    /// to healthier endpoints; with none left, refusing every request
    /// would turn a partial outage into a total one (Envoy does the same
    /// below its panic threshold). `None` only for a cluster without
    /// endpoints.
    pub(crate) fn pick(&self, now_ms: u64, avoid: &[usize]) -> Option<usize> {
        if let Some(i) = self.choose(avoid, &|i| self.endpoints[i].state.available(now_ms)) {
            return Some(i);
        }
        if self.endpoints.is_empty() {
            return None;
        }
        self.stats.panic.inc();
        tracing::debug!(cluster = %self.name, "every endpoint is ejected: balancing over all of them (panic mode)");
        self.choose(avoid, &|_| true)
    }

    /// Picks among the endpoints for which `usable` holds, avoiding
    /// `avoid` while another is usable.
    fn choose<F: Fn(usize) -> bool>(&self, avoid: &[usize], usable: &F) -> Option<usize> {
        let ok = |i: usize| !avoid.contains(&i) && usable(i);
        let n = self.endpoints.len();
        if n == 1 {
            return usable(0).then_some(0);
        }
        let found = match &self.policy {
            Policy::RoundRobin { schedule } => {
                // An unavailable endpoint's slot is skipped by taking the
                // next ticket (not by looking at the next slot, which would
                // hand all of its share to its neighbour); bounded, then scan.
                (0..schedule.len().min(2 * n))
                    .map(|_| {
                        let ticket = self.state.cursor.fetch_add(1, Ordering::Relaxed);
                        schedule[ticket % schedule.len()] as usize
                    })
                    .find(|i| ok(*i))
            }
            Policy::Random => self.draw(&ok),
            Policy::LeastRequest => self.draw(&ok).map(|a| {
                // Two distinct candidates: comparing an endpoint with itself
                // would waste the choice.
                let other = |i: usize| i != a && ok(i);
                match self.draw(&other).or_else(|| self.scan(&other)) {
                    Some(b) if self.less_loaded(b, a) => b,
                    _ => a,
                }
            }),
        };
        found.or_else(|| self.scan(&ok)).or_else(|| match avoid {
            // Every usable endpoint was tried: start another round, avoiding
            // only the last one.
            [_, .., last] => self.choose(std::slice::from_ref(last), usable),
            // Only the endpoint just tried is left: better it than nothing.
            [last] => Some(*last).filter(|i| *i < n && usable(*i)),
            [] => None,
        })
    }

    fn draw(&self, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        (0..DRAWS_PER_PICK)
            .map(|_| lb::weighted(&self.cumulative))
            .find(|i| ok(*i))
    }

    /// Any acceptable endpoint, starting at a random position so a fallback
    /// does not pile onto the first endpoint.
    fn scan(&self, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.endpoints.len();
        let start = lb::below(n as u64) as usize;
        (0..n).map(|k| (start + k) % n).find(|i| ok(*i))
    }

    /// Whether `a` has fewer requests in flight per unit of weight than `b`.
    fn less_loaded(&self, a: usize, b: usize) -> bool {
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        let la = u64::from(ea.state.in_flight()) * u64::from(eb.weight);
        let lb = u64::from(eb.state.in_flight()) * u64::from(ea.weight);
        la < lb
    }

    /// Records the outcome of a request to endpoint `i` at `now_ms`: a
    /// failure (connect error, timeout, 5xx) may eject it.
    pub(crate) fn record(&self, i: usize, success: bool, now_ms: u64) {
        let endpoint = &self.endpoints[i];
        if success {
            endpoint.state.record_success();
            return;
        }
        if !endpoint
            .state
            .record_failure(self.outlier.consecutive_failures)
        {
            return;
        }
        let _guard = self
            .state
            .eject_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if endpoint.state.ejected_until(now_ms).is_some() {
            return;
        }
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| !e.state.available(now_ms))
            .count();
        let cap = outlier::max_ejected(self.endpoints.len(), self.outlier.max_ejection_percent);
        if ejected >= cap {
            endpoint.state.reset_streak();
            tracing::debug!(cluster = %self.name, endpoint = %endpoint.address, ejected, cap,
                "not ejecting: the cluster is at its ejection cap");
            return;
        }
        let length = endpoint.state.eject(now_ms, &self.outlier);
        self.stats.ejections.inc();
        tracing::warn!(cluster = %self.name, endpoint = %endpoint.address,
            ejection_ms = length.as_millis() as u64, "endpoint ejected by outlier detection");
    }

    /// Endpoints ejected at `now_ms`.
    pub(crate) fn ejected_count(&self, now_ms: u64) -> usize {
        self.endpoints
            .iter()
            .filter(|e| !e.state.available(now_ms))
            .count()
    }

    /// Counts an upstream error of `kind`.
    pub(crate) fn upstream_error(&self, kind: UpstreamErrorKind) -> &Counter {
        match kind {
            UpstreamErrorKind::Connect => &self.stats.connect_errors,
            UpstreamErrorKind::Timeout => &self.stats.timeouts,
            UpstreamErrorKind::Protocol => &self.stats.protocol_errors,
            UpstreamErrorKind::ResponseTimeout => &self.stats.response_timeouts,
            UpstreamErrorKind::ResponseIdle => &self.stats.response_idle,
        }
    }
}

/// Weighted draws before falling back to a scan.
const DRAWS_PER_PICK: usize = 4;

/// What went wrong talking to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamErrorKind {
    /// No connection could be made (refused, timed out), or it failed
    /// before the request was written: nothing was sent, a retry is safe.
    Connect,
    /// No response headers before the route's deadline.
    Timeout,
    /// The connection failed after the request was (maybe) sent: a reset,
    /// a malformed response. Not retried.
    Protocol,
    /// The response body was cut by the route's timeout (after its head
    /// was sent on).
    ResponseTimeout,
    /// The response body was cut after a pause longer than the route's
    /// idle timeout.
    ResponseIdle,
}

fn host(addr: SocketAddr) -> HeaderValue {
    // A socket address always renders as a valid header value; the
    // fallback keeps this total anyway.
    HeaderValue::from_str(&addr.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("upstream"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vane_model::Endpoint;

    fn cluster(lb: LbPolicy, weights: &[u32]) -> Cluster {
        Cluster {
            name: "c".into(),
            lb,
            connect_timeout: Duration::from_millis(100),
            endpoints: weights
                .iter()
                .enumerate()
                .map(|(i, w)| Endpoint {
                    address: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                    weight: *w,
                })
                .collect(),
            outlier: OutlierDetection {
                consecutive_failures: 2,
                base_ejection: Duration::from_millis(100),
                max_ejection: Duration::from_secs(1),
                max_ejection_percent: 50,
            },
            protocol: vane_model::UpstreamProtocol::Http1,
            tls: None,
        }
    }

    fn distribution(c: &ClusterRt, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; c.endpoints.len()];
        for _ in 0..picks {
            counts[c.pick(0, &[]).unwrap()] += 1;
        }
        counts
    }

    #[tokio::test]
    async fn policies_follow_weights() {
        let m = Metrics::new();
        let rr = ClusterRt::build(
            &cluster(LbPolicy::RoundRobin, &[1, 3]),
            Transport::plain_http1(),
            None,
            &m,
        );
        assert_eq!(distribution(&rr, 400), vec![100, 300]);
        for lb in [LbPolicy::Random, LbPolicy::LeastRequest] {
            let c = ClusterRt::build(&cluster(lb, &[1, 3]), Transport::plain_http1(), None, &m);
            let d = distribution(&c, 20_000);
            let share = d[1] as f64 / 20_000.0;
            assert!((0.70..0.80).contains(&share), "{lb:?}: {d:?}");
        }
    }

    #[tokio::test]
    async fn least_request_prefers_the_idle_endpoint() {
        let m = Metrics::new();
        let c = ClusterRt::build(
            &cluster(LbPolicy::LeastRequest, &[1, 1]),
            Transport::plain_http1(),
            None,
            &m,
        );
        c.endpoints[0].state.active.store(10, Ordering::Relaxed);
        let d = distribution(&c, 10_000);
        // The two candidates are distinct: the idle endpoint always wins.
        assert_eq!(d[1], 10_000, "{d:?}");
    }

    #[tokio::test]
    async fn ejection_respects_caps_and_expires() {
        let m = Metrics::new();
        let c = ClusterRt::build(
            &cluster(LbPolicy::RoundRobin, &[1, 1, 1, 1]),
            Transport::plain_http1(),
            None,
            &m,
        );
        let now = 10_000;
        for i in 0..4 {
            c.record(i, false, now);
            c.record(i, false, now);
        }
        // 50% of 4: two out.
        assert_eq!(c.ejected_count(now), 2);
        assert_eq!(c.stats.ejections.get(), 2);
        let mut counts = [0; 4];
        for _ in 0..100 {
            let i = c.pick(now, &[]).unwrap();
            assert!(c.endpoints[i].state.available(now));
            counts[i] += 1;
        }
        // The ejected endpoints' share is spread, not handed to a neighbour.
        assert_eq!(counts, [0, 0, 50, 50]);
        // Back after the base interval.
        assert_eq!(c.ejected_count(now + 100), 0);
    }

    #[tokio::test]
    async fn state_survives_a_rebuild_by_address() {
        let m = Metrics::new();
        let spec = cluster(LbPolicy::RoundRobin, &[1, 1]);
        let c = ClusterRt::build(&spec, Transport::plain_http1(), None, &m);
        c.record(1, false, 5_000);
        c.record(1, false, 5_000);
        assert_eq!(c.ejected_count(5_000), 1);
        let mut changed = spec.clone();
        changed.endpoints[0].weight = 7;
        changed.endpoints.remove(0);
        let d = ClusterRt::build(&changed, Transport::plain_http1(), Some(&c), &m);
        assert!(
            Arc::ptr_eq(&c.state, &d.state),
            "the pool and budget are kept"
        );
        // The ejected endpoint is still ejected; it is the only one left,
        // so it is picked in panic mode until it returns.
        assert_eq!(d.ejected_count(5_000), 1);
        assert_eq!(d.pick(5_000, &[]), Some(0));
        assert_eq!(d.stats.panic.get(), 1);
        assert_eq!(d.pick(5_100, &[]), Some(0));
        assert_eq!(d.stats.panic.get(), 1, "back in rotation: no panic");
    }

    #[tokio::test]
    async fn a_retry_avoids_the_failed_endpoint() {
        let m = Metrics::new();
        for lb in [
            LbPolicy::RoundRobin,
            LbPolicy::Random,
            LbPolicy::LeastRequest,
        ] {
            let c = ClusterRt::build(&cluster(lb, &[1, 1]), Transport::plain_http1(), None, &m);
            for _ in 0..100 {
                assert_eq!(c.pick(0, &[0]), Some(1), "{lb:?}");
            }
            let c = ClusterRt::build(&cluster(lb, &[1, 1, 1]), Transport::plain_http1(), None, &m);
            for _ in 0..100 {
                // Every endpoint tried so far is avoided, not just the last.
                assert_eq!(c.pick(0, &[0, 2]), Some(1), "{lb:?}");
                // All tried: another round, avoiding only the last one.
                let again = c.pick(0, &[0, 2, 1]);
                assert!(matches!(again, Some(0 | 2)), "{lb:?}: {again:?}");
            }
        }
    }

    #[tokio::test]
    async fn panic_mode_balances_over_every_ejected_endpoint() {
        for lb in [
            LbPolicy::RoundRobin,
            LbPolicy::Random,
            LbPolicy::LeastRequest,
        ] {
            // Metrics are shared by cluster name: one registry per policy.
            let m = Metrics::new();
            let mut spec = cluster(lb, &[1, 1, 1, 1]);
            spec.outlier.max_ejection_percent = 100;
            let c = ClusterRt::build(&spec, Transport::plain_http1(), None, &m);
            let now = 10_000;
            for i in 0..4 {
                c.record(i, false, now);
                c.record(i, false, now);
            }
            // At 100% every endpoint may go out.
            assert_eq!(c.ejected_count(now), 4, "{lb:?}");
            let mut counts = [0; 4];
            for _ in 0..4000 {
                counts[c.pick(now, &[]).unwrap()] += 1;
            }
            // Spread over all of them, each pick counted.
            assert!(counts.iter().all(|n| *n > 800), "{lb:?}: {counts:?}");
            assert_eq!(c.stats.panic.get(), 4000, "{lb:?}");
            // A retry in panic mode still avoids the endpoint that failed.
            assert_eq!(c.pick(now, &[0, 1, 2]), Some(3), "{lb:?}");
            // Once the ejections end, picks are ordinary again.
            let later = now + 100;
            assert_eq!(c.ejected_count(later), 0, "{lb:?}");
            let before = c.stats.panic.get();
            c.pick(later, &[]).unwrap();
            assert_eq!(c.stats.panic.get(), before, "{lb:?}");
        }
    }
}
