//! The control server's Prometheus metrics and the admin HTTP endpoint that
//! serves them (`vane-control --admin-listen ADDR`: `GET /metrics`,
//! `GET /healthz`, `GET /readyz`).
//!
//! Two kinds of figures:
//! - events, counted where they happen: responses and bytes sent per group
//!   and kind (full or delta), ACKs, NACKs, delta fallbacks, push-to-ACK
//!   time, open streams. Each watch stream takes its group's handles once
//!   ([`Metrics::stream`]), so counting is an atomic add (the histogram a
//!   short per-group lock), never a lookup in a shared map;
//! - states, computed at scrape time from the agent registry and the hub:
//!   agents per group and state (synced, stale, nacked, not sent),
//!   connected agents, head versions, versions published, corrupt heads
//!   (`vane_control_corrupt_versions`). Nothing has to be
//!   kept in step with the registry, and a scrape costs one pass over it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::agents::{AgentRegistry, AgentState};
use crate::hub::Hub;

/// Labels of a per-group metric.
type GroupLabels = Vec<(&'static str, String)>;

/// Most distinct `group` label values the per-stream families take:
/// agents name their group, and a caller allowed to watch many group names
/// must not grow the series without bound. Past the cap, new groups'
/// streams are counted under [`OTHER_GROUPS`].
pub const MAX_GROUP_LABELS: usize = 1000;
/// The `group` label of streams of groups beyond [`MAX_GROUP_LABELS`].
pub const OTHER_GROUPS: &str = "_other";

/// Upper bounds of the push-to-ACK buckets, in seconds: from a millisecond
/// (a local agent on an idle server) to a minute (a fleet behind a slow link).
const PUSH_TO_ACK_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

fn push_to_ack_histogram() -> Histogram {
    Histogram::new(PUSH_TO_ACK_BUCKETS)
}

fn group_labels(group: &str) -> GroupLabels {
    vec![("group", group.to_owned())]
}

fn kind_labels(group: &str, kind: &'static str) -> GroupLabels {
    vec![("group", group.to_owned()), ("kind", kind.to_owned())]
}

/// Every metric of the watch streams.
#[derive(Debug)]
pub struct Metrics {
    push_to_ack: Family<GroupLabels, Histogram, fn() -> Histogram>,
    responses: Family<GroupLabels, Counter>,
    bytes_sent: Family<GroupLabels, Counter>,
    acks: Family<GroupLabels, Counter>,
    nacks: Family<GroupLabels, Counter>,
    delta_fallbacks: Family<GroupLabels, Counter>,
    streams: Family<GroupLabels, Gauge>,
    streams_opened: Counter,
    /// HTTP long polls being held (`crate::http`).
    http_held: Gauge,
    /// HTTP polls answered, per result (the status code).
    http_polls: Family<GroupLabels, Counter>,
    ofrep: Family<GroupLabels, Counter>,
    /// The group label values taken so far (at most [`MAX_GROUP_LABELS`]).
    groups: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            push_to_ack: Family::new_with_constructor(push_to_ack_histogram),
            responses: Family::default(),
            bytes_sent: Family::default(),
            acks: Family::default(),
            nacks: Family::default(),
            delta_fallbacks: Family::default(),
            streams: Family::default(),
            streams_opened: Counter::default(),
            http_held: Gauge::default(),
            http_polls: Family::default(),
            ofrep: Family::default(),
            groups: std::sync::Mutex::default(),
        }
    }
}

impl Metrics {
    /// Fresh metrics, not registered anywhere.
    pub fn new() -> Self {
        Self::default()
    }

    /// The handles one stream of `group` counts with. Counts it as open
    /// until the returned value is dropped.
    pub fn stream(&self, group: &str) -> StreamMetrics {
        let group = self.group_label(group);
        let group = group.as_str();
        let g = group_labels(group);
        let streams = self.streams.get_or_create_owned(&g);
        streams.inc();
        self.streams_opened.inc();
        StreamMetrics {
            push_to_ack: self.push_to_ack.get_or_create_owned(&g),
            full_responses: self
                .responses
                .get_or_create_owned(&kind_labels(group, "full")),
            delta_responses: self
                .responses
                .get_or_create_owned(&kind_labels(group, "delta")),
            full_bytes: self
                .bytes_sent
                .get_or_create_owned(&kind_labels(group, "full")),
            delta_bytes: self
                .bytes_sent
                .get_or_create_owned(&kind_labels(group, "delta")),
            acks: self.acks.get_or_create_owned(&g),
            nacks: self.nacks.get_or_create_owned(&g),
            delta_fallbacks: self.delta_fallbacks.get_or_create_owned(&g),
            streams,
        }
    }

    /// `group`, or [`OTHER_GROUPS`] once [`MAX_GROUP_LABELS`] others are taken.
    fn group_label(&self, group: &str) -> String {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if groups.contains(group) {
            return group.to_owned();
        }
        if groups.len() < MAX_GROUP_LABELS {
            groups.insert(group.to_owned());
            return group.to_owned();
        }
        OTHER_GROUPS.to_owned()
    }

    /// Counts one HTTP poll as held until the returned value is dropped.
    pub fn http_held(&self) -> HeldPoll {
        self.http_held.inc();
        HeldPoll(self.http_held.clone())
    }

    /// Counts one HTTP poll answered with `status` (200, 304, 4xx, 503).
    pub fn http_polled(&self, status: u16) {
        self.http_polls
            .get_or_create(&vec![("result", status.to_string())])
            .inc();
    }

    /// An OFREP call (`kind` `flag` or `bulk`) answered with `status`.
    pub fn ofrep_evaluated(&self, kind: &str, status: u16) {
        self.ofrep
            .get_or_create(&vec![
                ("kind", kind.to_owned()),
                ("result", status.to_string()),
            ])
            .inc();
    }

    /// A registry holding these metrics and the scrape-time figures of
    /// `agents` and `hub`.
    pub fn registry(self: &Arc<Self>, hub: Arc<Hub>, agents: Arc<AgentRegistry>) -> Registry {
        let mut r = Registry::default();
        r.register(
            "vane_control_push_to_ack_seconds",
            "Time from a version's publication to an agent's ACK of it, per group (versions pushed while the agent's stream was open)",
            self.push_to_ack.clone(),
        );
        r.register(
            "vane_control_watch_responses",
            "Watch responses sent, per group and kind (full snapshot or delta)",
            self.responses.clone(),
        );
        r.register(
            "vane_control_watch_bytes_sent",
            "Bytes of snapshot or delta bodies sent on watch streams, per group and kind",
            self.bytes_sent.clone(),
        );
        r.register(
            "vane_control_acks",
            "ACKs received, per group",
            self.acks.clone(),
        );
        r.register(
            "vane_control_nacks",
            "NACKs received (refused versions), per group; delta fallbacks not included",
            self.nacks.clone(),
        );
        r.register(
            "vane_control_delta_fallbacks",
            "Deltas an agent could not apply and answered with want_full, per group",
            self.delta_fallbacks.clone(),
        );
        r.register(
            "vane_control_watch_streams",
            "Watch streams open, per group",
            self.streams.clone(),
        );
        r.register(
            "vane_control_watch_streams_opened",
            "Watch streams opened since start",
            self.streams_opened.clone(),
        );
        r.register(
            "vane_control_ofrep_evaluations",
            "OFREP calls answered, by kind (flag, bulk) and HTTP status",
            self.ofrep.clone(),
        );
        r.register(
            "vane_control_http_held_polls",
            "HTTP long polls (GET /v1/groups/{group}/snapshot or /values) held open now",
            self.http_held.clone(),
        );
        r.register(
            "vane_control_http_polls",
            "HTTP polls answered since start, per result (status code: 200, 304, 400, 401, 403, 404, 429, 503)",
            self.http_polls.clone(),
        );
        r.register_collector(Box::new(StateCollector { hub, agents }));
        r
    }
}

/// One held HTTP poll in `vane_control_http_held_polls`.
#[derive(Debug)]
pub struct HeldPoll(Gauge);

impl Drop for HeldPoll {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One stream's handles into [`Metrics`] (shared atomics, cheap to use).
#[derive(Debug)]
pub struct StreamMetrics {
    push_to_ack: Histogram,
    full_responses: Counter,
    delta_responses: Counter,
    full_bytes: Counter,
    delta_bytes: Counter,
    acks: Counter,
    nacks: Counter,
    delta_fallbacks: Counter,
    streams: Gauge,
}

impl StreamMetrics {
    /// A response carrying a full snapshot of `bytes` bytes was sent.
    pub fn sent_full(&self, bytes: usize) {
        self.full_responses.inc();
        self.full_bytes.inc_by(bytes as u64);
    }

    /// A response carrying a delta of `bytes` bytes was sent.
    pub fn sent_delta(&self, bytes: usize) {
        self.delta_responses.inc();
        self.delta_bytes.inc_by(bytes as u64);
    }

    /// An ACK arrived; `since_push` is the time since the version was
    /// published, when it was published while the stream was open.
    pub fn acked(&self, since_push: Option<Duration>) {
        self.acks.inc();
        if let Some(d) = since_push {
            self.push_to_ack.observe(d.as_secs_f64());
        }
    }

    /// A NACK arrived.
    pub fn nacked(&self) {
        self.nacks.inc();
    }

    /// The agent could not apply a delta and asked for the full snapshot.
    pub fn delta_fallback(&self) {
        self.delta_fallbacks.inc();
    }
}

impl Drop for StreamMetrics {
    fn drop(&mut self) {
        self.streams.dec();
    }
}

/// Figures computed at scrape time.
#[derive(Debug)]
struct StateCollector {
    hub: Arc<Hub>,
    agents: Arc<AgentRegistry>,
}

/// Per-group agent counts at one instant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    connected: i64,
    synced: i64,
    stale: i64,
    nacked: i64,
    not_sent: i64,
    unacked: i64,
}

impl StateCollector {
    fn counts(&self) -> Vec<(String, Counts)> {
        let heads: std::collections::HashMap<String, u64> = self
            .hub
            .heads()
            .iter()
            .map(|h| (h.group.clone(), h.version))
            .collect();
        let mut by_group: std::collections::BTreeMap<String, Counts> = heads
            .keys()
            .map(|g| (g.clone(), Counts::default()))
            .collect();
        for a in self.agents.list(None) {
            let head = heads.get(&a.group).copied().unwrap_or(0);
            let c = by_group.entry(a.group.clone()).or_default();
            if a.connected {
                c.connected += 1;
            }
            match a.state(head) {
                AgentState::Synced => c.synced += 1,
                AgentState::Stale => c.stale += 1,
                AgentState::Nacked => c.nacked += 1,
                AgentState::NotSent => c.not_sent += 1,
                AgentState::Unacked => c.unacked += 1,
            }
        }
        by_group.into_iter().collect()
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.counts();
        {
            let mut m = encoder.encode_descriptor(
                "vane_control_agents",
                "Agents listed in status, per group and state (synced, stale, nacked, not_sent, unacked)",
                None,
                MetricType::Gauge,
            )?;
            for (group, c) in &counts {
                for (state, n) in [
                    ("synced", c.synced),
                    ("stale", c.stale),
                    ("nacked", c.nacked),
                    ("not_sent", c.not_sent),
                    ("unacked", c.unacked),
                ] {
                    let labels = vec![("group", group.clone()), ("state", state.to_owned())];
                    ConstGauge::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "vane_control_agents_connected",
                "Agents with an open watch stream, per group",
                None,
                MetricType::Gauge,
            )?;
            for (group, c) in &counts {
                ConstGauge::new(c.connected).encode(m.encode_family(&group_labels(group))?)?;
            }
        }
        let heads = self.hub.heads();
        {
            let mut m = encoder.encode_descriptor(
                "vane_control_head_version",
                "The head version of each group",
                None,
                MetricType::Gauge,
            )?;
            for h in &heads {
                let v = i64::try_from(h.version).unwrap_or(i64::MAX);
                ConstGauge::new(v).encode(m.encode_family(&group_labels(&h.group))?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "vane_control_versions_published",
                "Versions that became a group's head on this server since start (pushes, rollbacks, and the heads loaded at startup)",
                None,
                MetricType::Counter,
            )?;
            for (group, n) in self.hub.published_counts() {
                ConstCounter::new(n).encode(m.encode_family(&group_labels(&group))?)?;
            }
        }
        {
            // A gauge, not a counter: it falls back to 0 once a push or a
            // rollback supersedes each corrupt head, and after a restart it
            // is the same (every head is verified at startup).
            let corrupt = i64::try_from(self.hub.corrupt().heads().len()).unwrap_or(i64::MAX);
            let m = encoder.encode_descriptor(
                "vane_control_corrupt_versions",
                "Corrupt newest versions, one per degraded group (stored content that does not match its hash): never sent to agents; the group is DEGRADED in status until a push or rollback; `vane-control check` lists every corrupt version",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(corrupt).encode(m)?;
        }
        Ok(())
    }
}

/// Renders `registry` in the OpenMetrics text format (`/metrics` converts
/// it for scrapers that ask for the Prometheus text format).
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Most connections the admin endpoint serves at once (more are accepted
/// and closed at once).
pub const ADMIN_MAX_CONNECTIONS: usize = vane_admin_http::DEFAULT_MAX_CONNECTIONS;
/// How long an admin client has to send a whole request, after connecting
/// or after its previous answer (so also the keep-alive idle timeout).
pub const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server is not ready (`None`: ready), asked on every `/readyz`.
pub type Readiness = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Serves `GET /metrics` (the Prometheus text format, or OpenMetrics when
/// `Accept` asks for it, with the `process_*` and `vane_build_info`
/// series), `GET /healthz` (liveness: the process answers)
/// and `GET /readyz` (200, or 503 with the reason from `ready`) on
/// `listener` until `stop`,
/// with at most [`ADMIN_MAX_CONNECTIONS`] connections, each closed when it
/// does not send a whole request within [`ADMIN_REQUEST_TIMEOUT`]: idle
/// and slowloris clients cannot hold the port or stall the shutdown.
pub async fn serve_admin(
    listener: TcpListener,
    mut registry: Registry,
    ready: Readiness,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;

    let (refused, timed_out) = (Counter::default(), Counter::default());
    vane_admin_http::process::register_process_and_build(&mut registry);
    registry.register(
        "vane_control_admin_connections_refused",
        "Admin-endpoint connections closed at once because the endpoint was at its connection cap",
        refused.clone(),
    );
    registry.register(
        "vane_control_admin_connections_timed_out",
        "Admin-endpoint connections closed because a request was not complete (or the connection idle) in time",
        timed_out.clone(),
    );
    let listener = vane_admin_http::GuardedListener::new(
        listener,
        ADMIN_MAX_CONNECTIONS,
        ADMIN_REQUEST_TIMEOUT,
        refused,
        timed_out,
    );
    let registry = Arc::new(registry);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move |headers: axum::http::HeaderMap| {
                let registry = Arc::clone(&registry);
                async move { vane_admin_http::exposition::respond(&headers, render(&registry)) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let why = ready();
                async move {
                    match why {
                        None => (StatusCode::OK, "ready\n".to_owned()),
                        Some(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

/// The address the admin endpoint is bound to, for the startup line.
pub fn admin_line(addr: SocketAddr) -> String {
    format!("vane-control admin listening on {addr}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::NodeInfo;
    use crate::hub::Published;
    use bytes::Bytes;

    fn node(id: &str) -> NodeInfo {
        NodeInfo {
            client: "vane-agent".to_owned(),
            id: id.into(),
            group: "edge".into(),
            labels: Default::default(),
            agent_build: String::new(),
        }
    }

    #[test]
    fn scrape_shows_states_and_events() {
        let hub = Arc::new(Hub::new());
        let agents = Arc::new(AgentRegistry::default());
        let metrics = Arc::new(Metrics::new());
        let registry = metrics.registry(Arc::clone(&hub), Arc::clone(&agents));

        hub.publish(Published::new(
            "edge".into(),
            2,
            "h2".into(),
            0,
            Bytes::new(),
        ));
        let a = agents.connect(&node("a"), "", Some((2, "h2")));
        let b = agents.connect(&node("b"), "", Some((1, "h1")));
        agents.record_sent(&b, 2);
        agents.record_nack(&b, 2, "bad", 9);
        let c = agents.connect(&node("c"), "", Some((1, "h1")));
        agents.disconnect(&c);
        let _ = a;

        let stream = metrics.stream("edge");
        stream.sent_full(100);
        stream.sent_delta(7);
        stream.sent_delta(3);
        stream.acked(Some(Duration::from_millis(3)));
        stream.delta_fallback();

        let text = render(&registry).unwrap();
        for line in [
            r#"vane_control_agents{group="edge",state="synced"} 1"#,
            r#"vane_control_agents{group="edge",state="nacked"} 1"#,
            r#"vane_control_agents{group="edge",state="stale"} 1"#,
            r#"vane_control_agents_connected{group="edge"} 2"#,
            r#"vane_control_head_version{group="edge"} 2"#,
            r#"vane_control_versions_published_total{group="edge"} 1"#,
            r#"vane_control_watch_bytes_sent_total{group="edge",kind="full"} 100"#,
            r#"vane_control_watch_bytes_sent_total{group="edge",kind="delta"} 10"#,
            r#"vane_control_watch_responses_total{group="edge",kind="delta"} 2"#,
            r#"vane_control_push_to_ack_seconds_count{group="edge"} 1"#,
            r#"vane_control_push_to_ack_seconds_bucket{le="0.005",group="edge"} 1"#,
            r#"vane_control_delta_fallbacks_total{group="edge"} 1"#,
            r#"vane_control_watch_streams{group="edge"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        drop(stream);
        let text = render(&registry).unwrap();
        assert!(text.contains(r#"vane_control_watch_streams{group="edge"} 0"#));
    }

    #[test]
    fn group_labels_are_capped() {
        let metrics = Metrics::new();
        for i in 0..MAX_GROUP_LABELS + 5 {
            drop(metrics.stream(&format!("g{i}")));
        }
        // A group seen before the cap keeps its label.
        drop(metrics.stream("g0"));
        let registry =
            Arc::new(metrics).registry(Arc::new(Hub::new()), Arc::new(AgentRegistry::default()));
        let text = render(&registry).unwrap();
        assert!(
            text.contains(r#"vane_control_watch_streams_opened_total "#),
            "{text}"
        );
        assert!(
            text.contains(r#"vane_control_acks_total{group="_other"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"vane_control_acks_total{group="g0"} 0"#),
            "{text}"
        );
        let groups = text
            .lines()
            .filter(|l| l.starts_with("vane_control_acks_total{"))
            .count();
        assert_eq!(groups, MAX_GROUP_LABELS + 1);
    }
}
