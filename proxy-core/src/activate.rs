//! The data plane's half of the agent's apply path: the one way a snapshot
//! becomes what the listeners serve, at startup (cache or defaults) and on
//! every live update.
//!
//! The agent runs, for each candidate: its own checks -> our validator ->
//! our sink -> its swap -> its cache write -> ACK. So:
//!
//! 1. [`Activation::validate`] binds the addresses the candidate adds
//!    (`Listeners::prepare`; a failure is a NACK and releases what it bound)
//!    and compiles the candidate aside, against the running build so runtime
//!    state carries over. The compiled form waits in a one-entry slot keyed
//!    by (version, hash).
//! 2. [`Activation::commit`] takes exactly that candidate's compiled form
//!    from the slot and switches the data plane to it: one store of the
//!    `ArcSwap<Compiled>` requests read, then the listeners it adds start
//!    and those it removes drain.
//!
//! When the sink returns, every request is routed by the candidate and its
//! listeners accept, so the agent's ACK, which comes after, means what it
//! says: this version serves. A candidate that was validated but never
//! committed (refused later, or superseded by a newer one) is dropped from
//! the slot by the next validation, releasing its stashed sockets and the
//! metric label sets only it used.
//!
//! The only change that reaches the data plane without the sink is the
//! agent confirming cached content as live: the same content, so only the
//! provenance `/config_dump` reports changes ([`Activation::follow`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use vane_agent::Current;

use crate::compile::{Compiled, compile};
use crate::listeners::Listeners;
use crate::shared::Shared;
use crate::tls::TlsBuild;

/// What the validator and the sink answer once the proxy is shutting down.
const SHUTTING_DOWN: &str = "vane-proxy is shutting down";

/// A candidate the validator accepted and compiled, waiting for its sink.
struct Pending {
    version: u64,
    hash: String,
    compiled: Compiled,
}

impl Pending {
    fn is(&self, c: &Current) -> bool {
        self.version == c.version && self.hash == c.hash
    }
}

/// The validator-to-sink hand-over.
#[derive(Default)]
struct Slot {
    pending: Option<Pending>,
    /// Set at shutdown: no candidate is taken any more, so nothing starts
    /// listeners behind the drain.
    closed: bool,
}

/// Switches the data plane from one snapshot to the next.
pub(crate) struct Activation {
    shared: Arc<Shared>,
    listeners: Arc<Listeners>,
    /// Held by the validator and by the sink for their whole run, so that
    /// even an agent applying two candidates at once could not interleave
    /// them.
    slot: Mutex<Slot>,
    /// The snapshot the data plane runs (routing swapped, listeners
    /// reconciled), with its provenance: what `/config_dump` reports.
    active: ArcSwap<Current>,
}

impl Activation {
    /// Nothing active yet: `empty` stands for "no configuration".
    pub(crate) fn new(shared: Arc<Shared>, listeners: Arc<Listeners>, empty: Arc<Current>) -> Self {
        Self {
            shared,
            listeners,
            slot: Mutex::new(Slot::default()),
            active: ArcSwap::new(empty),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        // A panic while holding the slot leaves at worst a stale pending
        // build, which the next validation replaces.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The agent's validator: binds the candidate's new addresses and
    /// compiles it aside. An error is the NACK reason.
    pub(crate) fn validate(&self, candidate: &Current) -> Result<(), String> {
        let mut slot = self.slot();
        if slot.closed {
            return Err(SHUTTING_DOWN.to_owned());
        }
        if let Some(stale) = slot.pending.take() {
            self.discard(stale);
        }
        // TLS first: it reads files and may refuse the candidate, and
        // nothing is bound for it yet.
        let tls = crate::tls::build(&candidate.snapshot)?;
        self.listeners.prepare(candidate)?;
        slot.pending = Some(self.compile(candidate, tls)?);
        Ok(())
    }

    /// The agent's sink, run right before its swap: switches the data plane
    /// to `next`, compiled by the validator.
    pub(crate) fn commit(&self, next: &Current) -> Result<(), String> {
        let mut slot = self.slot();
        let pending = slot.pending.take();
        if slot.closed {
            if let Some(p) = pending {
                self.discard(p);
            }
            return Err(SHUTTING_DOWN.to_owned());
        }
        let compiled = match pending {
            Some(p) if p.is(next) => p.compiled,
            other => {
                // The agent always validates before it commits; should that
                // ever change, the candidate is still checked and compiled
                // here, before anything is swapped, rather than run half-made.
                if let Some(p) = other {
                    self.discard(p);
                }
                tracing::warn!(
                    version = next.version,
                    "a candidate reached the sink without being validated; validating it now"
                );
                let tls = crate::tls::build(&next.snapshot)?;
                self.listeners.prepare(next)?;
                self.compile(next, tls)?.compiled
            }
        };
        self.switch(compiled);
        Ok(())
    }

    /// Follows the agent's running configuration (its `subscribe()`
    /// channel). The sink has already switched to every version the agent
    /// installs; what is left is cached content the control plane confirmed,
    /// which the agent re-installs as `live`: same content, new provenance.
    pub(crate) fn follow(&self, agent: Arc<Current>) {
        let active = self.active.load_full();
        if active.version != agent.version || active.hash != agent.hash {
            if agent.version > active.version {
                // Cannot happen while the agent calls its sink before its
                // swap; said loudly, since the data plane would lag behind
                // what the agent ACKs.
                tracing::error!(
                    agent_version = agent.version,
                    data_plane_version = active.version,
                    "the agent runs a version the data plane was not switched to"
                );
            }
            return;
        }
        if active.source == agent.source {
            return;
        }
        // Compare-and-swap: a sink that switched to a newer version in the
        // meantime wins over this late notification.
        let prev = self.active.compare_and_swap(&active, agent.clone());
        if !Arc::ptr_eq(&prev, &active) {
            return;
        }
        self.shared.metrics.activations.inc();
        tracing::info!(
            version = agent.version,
            hash = %agent.hash,
            source = agent.source.as_str(),
            "configuration active"
        );
    }

    /// The snapshot the data plane runs.
    pub(crate) fn active(&self) -> Arc<Current> {
        self.active.load_full()
    }

    /// Refuses every later candidate and drops a pending one: called when
    /// shutdown begins, before the listeners drain.
    pub(crate) fn close(&self) {
        let mut slot = self.slot();
        slot.closed = true;
        if let Some(p) = slot.pending.take() {
            self.discard(p);
        }
    }

    /// Compiles `candidate` aside with its listeners' TLS `tls`. On failure
    /// (a cluster's TLS secret file missing or bad) what was prepared for it
    /// is released: the sockets its listeners bound and the metric label
    /// sets only it used.
    fn compile(
        &self,
        candidate: &Current,
        tls: HashMap<String, TlsBuild>,
    ) -> Result<Pending, String> {
        let running = self.shared.compiled.load_full();
        match compile(
            Arc::new(candidate.clone()),
            &running,
            &self.shared.metrics,
            tls,
        ) {
            Ok(compiled) => Ok(Pending {
                version: candidate.version,
                hash: candidate.hash.clone(),
                compiled,
            }),
            Err(e) => {
                self.listeners.unstash(candidate.version);
                self.shared.metrics.discard_build();
                Err(e)
            }
        }
    }

    /// Drops a candidate that will not run.
    fn discard(&self, p: Pending) {
        tracing::debug!(
            version = p.version,
            "dropping a candidate that was validated but not applied"
        );
        self.listeners.unstash(p.version);
        drop(p.compiled);
        self.shared.metrics.discard_build();
    }

    /// The one swap, and what follows from it.
    fn switch(&self, next: Compiled) {
        let shared = &self.shared;
        let current = next.current.clone();
        let running = shared.compiled.load_full();
        self.listeners.freeze_removed(&current, &running);
        next.publish_tls();
        shared.compiled.store(Arc::new(next));
        if current.version != running.current.version || current.hash != running.current.hash {
            // A version is judged on its own answers only.
            shared.health.window.clear(crate::clock::now_millis());
        }
        shared.metrics.commit_build();
        self.listeners.reconcile(&current, shared);
        shared
            .metrics
            .config_version
            .set(i64::try_from(current.version).unwrap_or(i64::MAX));
        self.active.store(current.clone());
        shared.metrics.activations.inc();
        tracing::info!(
            version = current.version,
            hash = %current.hash,
            source = current.source.as_str(),
            "configuration active"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, SystemTime};

    use tokio::sync::Semaphore;
    use vane_agent::Source;
    use vane_model::{Format, Snapshot, parse_file, validate};

    use crate::compile::ListenerRoutes;
    use crate::metrics::Metrics;
    use crate::shared::Settings;
    use crate::workers::Workers;

    /// Listener `web` on `web` routing `/x` to cluster `target` (`a` or `b`).
    fn snapshot(web: SocketAddr, target: &str) -> Snapshot {
        let yaml = format!(
            r#"
listeners:
  - {{ name: web, address: "{web}", protocol: http, route_table: main }}
route_tables:
  - name: main
    routes:
      - {{ name: x, match: {{ path_prefix: /x }}, cluster: {target} }}
clusters:
  - {{ name: a, lb: least_request, endpoints: [ {{ address: "127.0.0.1:9001" }} ] }}
  - {{ name: b, endpoints: [ {{ address: "127.0.0.1:9002" }} ] }}
"#
        );
        validate(parse_file(yaml.as_bytes(), Format::Yaml).unwrap()).unwrap()
    }

    fn current(version: u64, snapshot: Snapshot, source: Source) -> Current {
        Current {
            version,
            hash: snapshot.content_hash().to_hex(),
            source,
            snapshot: Arc::new(snapshot),
            applied_at: SystemTime::now(),
        }
    }

    fn free_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    fn bindable(addr: SocketAddr) -> bool {
        std::net::TcpListener::bind(addr).is_ok()
    }

    /// The cluster `/x` goes to in the running build.
    fn x_goes_to(shared: &Shared) -> String {
        let compiled = shared.compiled.load();
        match compiled.listeners.get("web") {
            Some(ListenerRoutes::Http(t)) => t.routes[0].cluster.name.clone(),
            other => panic!("no HTTP routes for web: {other:?}"),
        }
    }

    struct Rig {
        shared: Arc<Shared>,
        listeners: Arc<Listeners>,
        activation: Activation,
    }

    impl Rig {
        fn new() -> Self {
            let empty = Arc::new(Current {
                version: 0,
                hash: String::new(),
                source: Source::Defaults,
                snapshot: Arc::new(Snapshot::default()),
                applied_at: SystemTime::now(),
            });
            let shared = Arc::new(Shared {
                compiled: ArcSwap::from_pointee(Compiled::empty(empty.clone())),
                metrics: Metrics::new(),
                http: crate::http::server::builder(),
                connection_limit: Arc::new(Semaphore::new(16)),
                refusal_logged_ms: AtomicU64::new(0),
                config: Settings {
                    drain_timeout: Duration::from_millis(100),
                    idle_timeout: Duration::from_secs(1),
                    header_read_timeout: Duration::from_secs(1),
                    max_connections: 16,
                },
                workers: Workers::start(1).unwrap(),
                health: Arc::new(crate::health::ProxyHealth::new(
                    crate::health::HealthConfig::default(),
                )),
            });
            let listeners = Arc::new(Listeners::new(tokio::runtime::Handle::current()));
            let activation = Activation::new(shared.clone(), listeners.clone(), empty);
            Self {
                shared,
                listeners,
                activation,
            }
        }

        async fn stop(self) {
            self.listeners
                .shutdown(&self.shared, Duration::from_millis(100))
                .await;
            self.shared.workers.stop().await;
        }
    }

    #[tokio::test]
    async fn the_sink_switches_to_what_the_validator_compiled() {
        let rig = Rig::new();
        let web = free_port();
        let v1 = current(1, snapshot(web, "a"), Source::Live);
        rig.activation.validate(&v1).unwrap();
        // Validated: bound, compiled aside, but nothing switched yet.
        assert!(!bindable(web));
        assert!(!rig.shared.compiled.load().ready);
        assert_eq!(rig.activation.active().version, 0);
        assert!(rig.listeners.addresses().is_empty());

        rig.activation.commit(&v1).unwrap();
        // When the sink returns (before the agent swaps and ACKs), the data
        // plane runs v1: routes and listeners.
        assert_eq!(rig.shared.compiled.load().current.version, 1);
        assert_eq!(x_goes_to(&rig.shared), "a");
        assert_eq!(rig.listeners.addresses(), vec![("web".to_owned(), web)]);
        assert_eq!(rig.activation.active().version, 1);
        let state_a = rig.shared.compiled.load().clusters["a"].state.clone();

        let v2 = current(2, snapshot(web, "b"), Source::Live);
        rig.activation.validate(&v2).unwrap();
        assert_eq!(x_goes_to(&rig.shared), "a", "the validator swaps nothing");
        rig.activation.commit(&v2).unwrap();
        assert_eq!(x_goes_to(&rig.shared), "b");
        assert_eq!(rig.activation.active().version, 2);
        // Runtime state of a kept cluster survives the switch.
        assert!(Arc::ptr_eq(
            &state_a,
            &rig.shared.compiled.load().clusters["a"].state
        ));
        rig.stop().await;
    }

    #[tokio::test]
    async fn a_candidate_that_is_not_committed_is_dropped_with_its_sockets() {
        let rig = Rig::new();
        let (first, second) = (free_port(), free_port());
        let v1 = current(1, snapshot(first, "a"), Source::Live);
        let v2 = current(2, snapshot(second, "b"), Source::Live);
        rig.activation.validate(&v1).unwrap();
        assert!(!bindable(first));
        // v1 never reaches the sink (refused after validation, or overtaken):
        // validating v2 drops v1's compiled form and releases its socket.
        rig.activation.validate(&v2).unwrap();
        assert!(bindable(first), "v1's socket was released");
        assert!(!bindable(second));
        rig.activation.commit(&v2).unwrap();
        assert_eq!(x_goes_to(&rig.shared), "b");
        assert_eq!(rig.listeners.addresses(), vec![("web".to_owned(), second)]);

        // A sink call for a candidate other than the one validated never
        // runs the pending build: it is dropped, and the candidate is
        // checked and compiled there instead.
        let third = free_port();
        let v3 = current(3, snapshot(third, "a"), Source::Live);
        let v4 = current(4, snapshot(second, "a"), Source::Live);
        rig.activation.validate(&v3).unwrap();
        rig.activation.commit(&v4).unwrap();
        assert!(bindable(third), "v3's socket was released");
        assert_eq!(rig.shared.compiled.load().current.version, 4);
        assert_eq!(x_goes_to(&rig.shared), "a");
        rig.stop().await;
    }

    #[tokio::test]
    async fn confirmed_cached_content_changes_only_the_provenance() {
        let rig = Rig::new();
        let web = free_port();
        let cached = current(5, snapshot(web, "a"), Source::Cache);
        rig.activation.validate(&cached).unwrap();
        rig.activation.commit(&cached).unwrap();
        let build = rig.shared.compiled.load_full();
        let mut live = cached.clone();
        live.source = Source::Live;
        rig.activation.follow(Arc::new(live));
        assert_eq!(rig.activation.active().source, Source::Live);
        assert!(
            Arc::ptr_eq(&build, &rig.shared.compiled.load_full()),
            "no new build"
        );
        // A notification older than what the sink switched to changes nothing.
        let v6 = current(6, snapshot(web, "b"), Source::Live);
        rig.activation.validate(&v6).unwrap();
        rig.activation.commit(&v6).unwrap();
        rig.activation.follow(Arc::new(cached));
        assert_eq!(rig.activation.active().version, 6);
        assert_eq!(rig.activation.active().source, Source::Live);
        rig.stop().await;
    }

    #[tokio::test]
    async fn nothing_is_taken_after_close() {
        let rig = Rig::new();
        let web = free_port();
        let v1 = current(1, snapshot(web, "a"), Source::Live);
        rig.activation.validate(&v1).unwrap();
        rig.activation.close();
        assert!(bindable(web), "the pending candidate's socket was released");
        assert_eq!(rig.activation.commit(&v1).unwrap_err(), SHUTTING_DOWN);
        assert_eq!(rig.activation.validate(&v1).unwrap_err(), SHUTTING_DOWN);
        assert!(!rig.shared.compiled.load().ready);
        rig.stop().await;
    }
}
