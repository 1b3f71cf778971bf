//! The apply path: the one way a snapshot becomes the running configuration,
//! at startup from the cache or the defaults and on every live update.
//!
//! Order (each step may refuse; nothing changes until the swap):
//! version check -> size -> decode + validate -> hash over the content ->
//! embedder's validator -> embedder's sink -> ONE swap -> persist the cache
//! (live only) -> the caller ACKs. A refusal carries a reason an operator can
//! act on; it becomes the NACK's `error_detail` and the old config stays.
//!
//! A delta response takes this same path (`Applier::apply_delta`): its
//! base must be what runs, then the delta is applied once to the running
//! version's encoding (the bytes this path accepted for it, kept beside it:
//! exactly what the control server computed the delta from) and the result
//! is turned into the domain once, never encoded and decoded back. Its
//! version, size, validation, hash, hooks, swap and cache are then checked
//! exactly like a full snapshot's; its encoding is what the cache stores and
//! the base of the next delta.
//!
//! One exception to "ACK after the cache write": when the cache cannot be
//! written (disk full), the new config already runs, so the agent still ACKs
//! and reports the error in `last_error`; only a restart would lose it.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use prost::Message;
use vane_model::Snapshot;

use crate::cache::{CachedSnapshot, DiskCache};
use crate::state::{Current, Shared, Source};

/// google.rpc.Code values used in NACKs.
pub mod code {
    /// The snapshot does not decode, validate or match its hash.
    pub const INVALID_ARGUMENT: i32 = 3;
    /// The snapshot is valid but cannot be applied here (older version,
    /// refused by the embedder).
    pub const FAILED_PRECONDITION: i32 = 9;
    /// Applying failed for a local reason (the apply task itself failed).
    pub const INTERNAL: i32 = 13;
}

/// A hook through which the embedding program refuses a snapshot it cannot
/// apply (a port already in use, a check command that fails). Runs on a
/// blocking thread; the `Err` text becomes the NACK reason.
pub trait Validator: Send + Sync + 'static {
    /// Checks `candidate` (with its version and hash) against what runs.
    fn validate(&self, candidate: &Current, running: &Current) -> Result<(), String>;
}

impl<F> Validator for F
where
    F: Fn(&Current, &Current) -> Result<(), String> + Send + Sync + 'static,
{
    fn validate(&self, candidate: &Current, running: &Current) -> Result<(), String> {
        self(candidate, running)
    }
}

/// A hook run right before the swap with the configuration about to run
/// (e.g. the sidecar writes its output file). A failure refuses the snapshot.
pub trait Sink: Send + Sync + 'static {
    /// Commits `next` to the embedder's side.
    fn commit(&self, next: &Current) -> Result<(), String>;
}

impl<F> Sink for F
where
    F: Fn(&Current) -> Result<(), String> + Send + Sync + 'static,
{
    fn commit(&self, next: &Current) -> Result<(), String> {
        self(next)
    }
}

/// A snapshot offered to the apply path.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Version claimed by the control plane (0 only for defaults).
    pub version: u64,
    /// Hash claimed by the control plane.
    pub hash: String,
    /// Encoded `vane.v1.Snapshot`.
    pub body: Bytes,
    /// Where it comes from.
    pub origin: Source,
}

/// What the apply path did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The candidate is now running.
    Applied,
    /// The candidate is exactly what runs already (same version and hash):
    /// nothing was re-applied; ACK it.
    AlreadyCurrent,
    /// Refused; the old configuration keeps running.
    Rejected(Rejection),
}

/// Why a candidate was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// A google.rpc.Code value (see [`code`]).
    pub code: i32,
    /// What an operator reads.
    pub reason: String,
    /// The content does not hash to the candidate's claimed hash. For a
    /// snapshot rebuilt from a delta this means the rebuild went wrong (not
    /// that the version is bad), and the agent asks for the full snapshot.
    pub hash_mismatch: bool,
}

impl Rejection {
    /// A refusal with `code` (see [`code`]) and `reason`.
    pub fn new(code: i32, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            hash_mismatch: false,
        }
    }
}

/// A delta offered to the apply path: the changes from `base_version`
/// (with `base_hash`), which this agent must run, to `version`.
#[derive(Debug, Clone)]
pub(crate) struct DeltaCandidate {
    /// Version claimed by the control plane.
    pub(crate) version: u64,
    /// Hash claimed for the rebuilt content.
    pub(crate) hash: String,
    /// The version the delta starts from.
    pub(crate) base_version: u64,
    /// That version's hash.
    pub(crate) base_hash: String,
    /// Encoded `vane.v1.SnapshotDelta`.
    pub(crate) delta: Bytes,
}

/// The encoding of the running configuration, as this path accepted it.
struct Wire {
    /// The version it is the encoding of.
    version: u64,
    /// That version's hash.
    hash: String,
    /// Encoded `vane.v1.Snapshot`.
    body: Bytes,
}

/// Runs the apply path against the shared state.
pub(crate) struct Applier {
    pub(crate) shared: Arc<Shared>,
    validator: Option<Arc<dyn Validator>>,
    sink: Option<Arc<dyn Sink>>,
    pub(crate) cache: Option<DiskCache>,
    max_snapshot_bytes: usize,
    /// What runs, encoded: the base a delta applies to. Written only by the
    /// apply path's swap (a blocking thread at a time), read by the next
    /// delta, so a std `Mutex` held for a clone of `Bytes` is enough.
    wire: Mutex<Option<Wire>>,
}

impl Applier {
    /// An apply path over `shared`, with the embedder's hooks and the cache.
    pub(crate) fn new(
        shared: Arc<Shared>,
        validator: Option<Arc<dyn Validator>>,
        sink: Option<Arc<dyn Sink>>,
        cache: Option<DiskCache>,
        max_snapshot_bytes: usize,
    ) -> Self {
        Self {
            shared,
            validator,
            sink,
            cache,
            max_snapshot_bytes,
            wire: Mutex::new(None),
        }
    }

    /// Applies `candidate`, or refuses it leaving everything as it was.
    pub(crate) fn apply(&self, candidate: Candidate) -> ApplyOutcome {
        let running = self.shared.current.load_full();
        self.count(self.try_apply(&running, candidate))
    }

    /// Applies a delta to what runs, or refuses it leaving everything as it
    /// was. A delta this agent cannot turn into the version (its base is not
    /// what runs, it does not apply, the result does not hash right) is
    /// refused with `hash_mismatch` set: the full snapshot fixes it.
    pub(crate) fn apply_delta(&self, d: DeltaCandidate) -> ApplyOutcome {
        let running = self.shared.current.load_full();
        if running.source == Source::Defaults
            || running.version != d.base_version
            || running.hash != d.base_hash
        {
            // Not counted as a NACK: nothing is wrong with the version.
            return ApplyOutcome::Rejected(base_mismatch(d.base_version, &running));
        }
        let rebuilt =
            match vane_model::delta::apply_to_encoded(&self.running_body(&running), &d.delta) {
                Ok(rebuilt) => rebuilt,
                Err(e) => {
                    let mut r = Rejection::new(
                        code::FAILED_PRECONDITION,
                        format!("delta does not apply to version {}: {e}", running.version),
                    );
                    r.hash_mismatch = true;
                    return ApplyOutcome::Rejected(r);
                }
            };
        self.count(self.try_apply_rebuilt(&running, d.version, d.hash, rebuilt))
    }

    /// Counts what the path decided.
    fn count(&self, outcome: ApplyOutcome) -> ApplyOutcome {
        match &outcome {
            ApplyOutcome::Applied => {
                self.shared.metrics.applies.inc();
            }
            ApplyOutcome::Rejected(_) => {
                self.shared.metrics.nacks.inc();
            }
            ApplyOutcome::AlreadyCurrent => {}
        }
        outcome
    }

    fn try_apply(&self, running: &Arc<Current>, c: Candidate) -> ApplyOutcome {
        if let Some(outcome) = check_version(running, c.version, &c.hash, c.origin) {
            return outcome;
        }
        let snapshot = match check_content(&c, self.max_snapshot_bytes) {
            Ok(s) => s,
            Err(rejection) => return ApplyOutcome::Rejected(rejection),
        };
        self.swap(running, c, snapshot)
    }

    /// The rest of the path for a snapshot rebuilt from a delta: the same
    /// checks as [`check_content`] in the same order, on the message itself.
    fn try_apply_rebuilt(
        &self,
        running: &Arc<Current>,
        version: u64,
        hash: String,
        rebuilt: vane_proto::Snapshot,
    ) -> ApplyOutcome {
        if let Some(outcome) = check_version(running, version, &hash, Source::Live) {
            return outcome;
        }
        if let Err(r) = check_size(rebuilt.encoded_len(), self.max_snapshot_bytes) {
            return ApplyOutcome::Rejected(r);
        }
        // Encoded once, for the cache and as the base of the next delta;
        // then turned into the domain once, consuming the message.
        let body = Bytes::from(rebuilt.encode_to_vec());
        let snapshot = match Snapshot::try_from(rebuilt) {
            Ok(s) => s,
            Err(e) => return reject(code::INVALID_ARGUMENT, e.to_string()),
        };
        if let Err(r) = check_hash(version, &hash, &snapshot) {
            return ApplyOutcome::Rejected(r);
        }
        let c = Candidate {
            version,
            hash,
            body,
            origin: Source::Live,
        };
        self.swap(running, c, snapshot)
    }

    /// The embedder's hooks, the one swap, the cache: `snapshot` is the
    /// checked content of `c`.
    fn swap(&self, running: &Current, c: Candidate, snapshot: Snapshot) -> ApplyOutcome {
        let next = Current {
            version: c.version,
            hash: c.hash,
            source: c.origin,
            snapshot: Arc::new(snapshot),
            applied_at: SystemTime::now(),
        };
        if let Some(v) = &self.validator
            && let Err(reason) = v.validate(&next, running)
        {
            return reject(code::FAILED_PRECONDITION, reason);
        }
        if let Some(sink) = &self.sink
            && let Err(reason) = sink.commit(&next)
        {
            return reject(code::FAILED_PRECONDITION, reason);
        }
        let persist = (c.origin == Source::Live).then(|| CachedSnapshot {
            version: next.version,
            hash: next.hash.clone(),
            body: c.body.clone(),
        });
        // A copy, since the body of a live response is a slice of the
        // stream's receive buffer, which keeping it would keep whole.
        let wire = Wire {
            version: next.version,
            hash: next.hash.clone(),
            body: Bytes::copy_from_slice(&c.body),
        };
        self.shared.install(next);
        *self.wire() = Some(wire);
        if let (Some(cache), Some(record)) = (&self.cache, persist)
            && let Err(e) = cache.store(&record)
        {
            // The new config already runs; only restarts lose it. Say so.
            tracing::warn!(error = %e, "could not persist the disk cache");
            self.shared.record_error(e.to_string());
        }
        ApplyOutcome::Applied
    }

    /// The encoding of `running`: the bytes it was accepted with, or, should
    /// they ever not be at hand, its canonical encoding made afresh.
    fn running_body(&self, running: &Current) -> Bytes {
        match &*self.wire() {
            Some(w) if w.version == running.version && w.hash == running.hash => w.body.clone(),
            _ => Bytes::from(running.snapshot.encode()),
        }
    }

    fn wire(&self) -> MutexGuard<'_, Option<Wire>> {
        // Plain data, replaced whole: a panic elsewhere cannot leave it half
        // written, so a poisoned lock is still usable.
        self.wire.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The checks against what runs: no version 0 from the control plane, never
/// back, and the same version only with the same content (then there is
/// nothing to apply). `None`: go on.
fn check_version(
    running: &Current,
    version: u64,
    hash: &str,
    origin: Source,
) -> Option<ApplyOutcome> {
    if version == 0 && origin != Source::Defaults {
        return Some(reject(
            code::INVALID_ARGUMENT,
            "version: 0 is not a valid version",
        ));
    }
    let nothing_loaded = running.version == 0;
    if !nothing_loaded && version < running.version {
        return Some(reject(
            code::FAILED_PRECONDITION,
            format!(
                "version {version} is older than the running version {}; refusing to go back",
                running.version
            ),
        ));
    }
    if !nothing_loaded && version == running.version {
        if hash != running.hash {
            return Some(reject(
                code::FAILED_PRECONDITION,
                format!(
                    "version {version} already runs with hash {}; refusing different content (hash {hash}) under the same version",
                    running.hash
                ),
            ));
        }
        // Nothing to apply. The stream task confirms it, which also
        // marks cached content as live.
        return Some(ApplyOutcome::AlreadyCurrent);
    }
    None
}

/// The checks of the apply path that depend on the candidate alone, not on
/// what runs: size, decode + validation, and the hash recomputed over the
/// content. Public so the fuzz targets (`vane-fuzzing`) run exactly these.
pub fn check_content(c: &Candidate, max_snapshot_bytes: usize) -> Result<Snapshot, Rejection> {
    check_size(c.body.len(), max_snapshot_bytes)?;
    let snapshot = Snapshot::decode(&c.body)
        .map_err(|e| Rejection::new(code::INVALID_ARGUMENT, e.to_string()))?;
    check_hash(c.version, &c.hash, &snapshot)?;
    Ok(snapshot)
}

fn check_size(encoded: usize, max_snapshot_bytes: usize) -> Result<(), Rejection> {
    if encoded > max_snapshot_bytes {
        return Err(Rejection::new(
            code::INVALID_ARGUMENT,
            format!(
                "snapshot: encoded size {encoded} bytes exceeds the agent's limit of {max_snapshot_bytes} bytes"
            ),
        ));
    }
    Ok(())
}

/// The hash recomputed over the content must be the one claimed.
fn check_hash(version: u64, claimed: &str, snapshot: &Snapshot) -> Result<(), Rejection> {
    let actual = snapshot.content_hash().to_hex();
    if actual != claimed {
        let mut rejection = Rejection::new(
            code::INVALID_ARGUMENT,
            format!(
                "hash mismatch: version {version} claims hash {claimed} but its content hashes to {actual}"
            ),
        );
        rejection.hash_mismatch = true;
        return Err(rejection);
    }
    Ok(())
}

/// The refusal of a delta whose base is not what this agent runs.
fn base_mismatch(base_version: u64, running: &Current) -> Rejection {
    let mut r = Rejection::new(
        code::FAILED_PRECONDITION,
        format!(
            "delta: its base is version {base_version}, this agent runs version {} ({})",
            running.version,
            if running.source == Source::Defaults {
                "its defaults"
            } else {
                running.source.as_str()
            }
        ),
    );
    // Like a rebuilt snapshot that does not hash right: not the version's
    // fault, and the full snapshot fixes it.
    r.hash_mismatch = true;
    r
}

fn reject(code: i32, reason: impl Into<String>) -> ApplyOutcome {
    ApplyOutcome::Rejected(Rejection::new(code, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use vane_model::{Format, parse_file, validate};

    const EXAMPLE: &str = include_str!("../../examples/snapshot.yaml");

    fn example(weight: u32) -> Snapshot {
        let mut s = validate(parse_file(EXAMPLE.as_bytes(), Format::Yaml).unwrap()).unwrap();
        s.clusters[0].endpoints[0].weight = weight;
        s
    }

    fn live(version: u64, s: &Snapshot) -> Candidate {
        Candidate {
            version,
            hash: s.content_hash().to_hex(),
            body: Bytes::from(s.encode()),
            origin: Source::Live,
        }
    }

    fn applier(validator: Option<Arc<dyn Validator>>) -> Applier {
        Applier::new(
            Arc::new(Shared::new(Duration::from_secs(300))),
            validator,
            None,
            None,
            vane_model::DEFAULT_MAX_SNAPSHOT_BYTES,
        )
    }

    fn rejected(o: ApplyOutcome) -> Rejection {
        match o {
            ApplyOutcome::Rejected(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn applies_and_refuses_per_the_rules() {
        let a = applier(None);
        assert_eq!(a.apply(live(2, &example(1))), ApplyOutcome::Applied);
        assert_eq!(a.shared.current.load().version, 2);
        // Same version and hash: idempotent.
        assert_eq!(a.apply(live(2, &example(1))), ApplyOutcome::AlreadyCurrent);
        // Same version, other content.
        let r = rejected(a.apply(live(2, &example(5))));
        assert!(r.reason.contains("same version"), "{}", r.reason);
        // Older version.
        let r = rejected(a.apply(live(1, &example(5))));
        assert!(r.reason.contains("older than the running version 2"));
        // Hash mismatch.
        let mut c = live(3, &example(5));
        c.hash = example(1).content_hash().to_hex();
        let r = rejected(a.apply(c));
        assert!(r.reason.starts_with("hash mismatch"), "{}", r.reason);
        assert!(r.hash_mismatch);
        // Garbage body.
        let mut c = live(3, &example(5));
        c.body = Bytes::from_static(b"\xff\xff\xff");
        let r = rejected(a.apply(c));
        assert_eq!(r.code, code::INVALID_ARGUMENT);
        // None of that moved anything.
        let cur = a.shared.current.load();
        assert_eq!(cur.version, 2);
        assert_eq!(cur.hash, example(1).content_hash().to_hex());
        assert_eq!(a.apply(live(3, &example(5))), ApplyOutcome::Applied);
    }

    #[test]
    fn validator_refusal_keeps_the_old_config() {
        let v: Arc<dyn Validator> = Arc::new(|c: &Current, _: &Current| {
            if c.snapshot.clusters[0].endpoints[0].weight > 3 {
                Err("port 9001 is in use".to_string())
            } else {
                Ok(())
            }
        });
        let a = applier(Some(v));
        assert_eq!(a.apply(live(1, &example(1))), ApplyOutcome::Applied);
        let r = rejected(a.apply(live(2, &example(4))));
        assert_eq!(r.reason, "port 9001 is in use");
        assert_eq!(a.shared.current.load().version, 1);
    }

    #[test]
    fn cache_candidates_are_promoted_to_live_when_confirmed() {
        let a = applier(None);
        let mut c = live(4, &example(1));
        c.origin = Source::Cache;
        assert_eq!(a.apply(c), ApplyOutcome::Applied);
        assert_eq!(a.shared.current.load().source, Source::Cache);
        assert_eq!(a.apply(live(4, &example(1))), ApplyOutcome::AlreadyCurrent);
        assert_eq!(a.shared.current.load().source, Source::Cache);
        a.shared.promote_cached();
        assert_eq!(a.shared.current.load().source, Source::Live);
    }

    /// A delta from `base` (running as `base_version`) to `target`.
    fn delta(
        version: u64,
        target: &Snapshot,
        (base_version, base): (u64, &Snapshot),
    ) -> DeltaCandidate {
        let delta = vane_model::delta::diff_encoded(&base.encode(), &target.encode()).unwrap();
        DeltaCandidate {
            version,
            hash: target.content_hash().to_hex(),
            base_version,
            base_hash: base.content_hash().to_hex(),
            delta: Bytes::from(delta),
        }
    }

    fn running(a: &Applier) -> (u64, Snapshot) {
        let cur = a.shared.current.load();
        (cur.version, (*cur.snapshot).clone())
    }

    #[test]
    fn deltas_apply_to_the_running_encoding_and_chain() {
        let a = applier(None);
        assert_eq!(a.apply(live(1, &example(1))), ApplyOutcome::Applied);
        assert_eq!(
            a.apply_delta(delta(2, &example(2), (1, &example(1)))),
            ApplyOutcome::Applied
        );
        assert_eq!(running(&a), (2, example(2)));
        // What the next delta applies to is the target's own encoding.
        let kept = a.wire().as_ref().map(|w| (w.version, w.body.clone()));
        assert_eq!(kept, Some((2, Bytes::from(example(2).encode()))));
        assert_eq!(
            a.apply_delta(delta(3, &example(3), (2, &example(2)))),
            ApplyOutcome::Applied
        );
        assert_eq!(running(&a), (3, example(3)));
        // Without the kept bytes, the running snapshot's encoding serves.
        *a.wire() = None;
        assert_eq!(
            a.apply_delta(delta(4, &example(4), (3, &example(3)))),
            ApplyOutcome::Applied
        );
        assert_eq!(running(&a), (4, example(4)));
        // The same version again is acknowledged without applying.
        assert_eq!(
            a.apply_delta(delta(4, &example(4), (4, &example(4)))),
            ApplyOutcome::AlreadyCurrent
        );
        assert_eq!(a.shared.metrics.applies.get(), 4);
    }

    #[test]
    fn deltas_this_agent_cannot_use_change_nothing_and_ask_for_the_full_snapshot() {
        let a = applier(None);
        // On the defaults (nothing from the control plane yet): no base.
        let r = rejected(a.apply_delta(delta(2, &example(2), (1, &example(1)))));
        assert!(r.hash_mismatch);
        assert!(
            r.reason
                .contains("this agent runs version 0 (its defaults)"),
            "{}",
            r.reason
        );

        assert_eq!(a.apply(live(1, &example(1))), ApplyOutcome::Applied);
        // Another base.
        let r = rejected(a.apply_delta(delta(3, &example(3), (2, &example(2)))));
        assert!(r.hash_mismatch);
        assert!(
            r.reason
                .contains("its base is version 2, this agent runs version 1")
        );
        // The right base version with another hash.
        let mut d = delta(2, &example(2), (1, &example(1)));
        d.base_hash = example(5).content_hash().to_hex();
        assert!(rejected(a.apply_delta(d)).hash_mismatch);
        // Not a delta at all, or one that does not apply: half a snapshot
        // is never applied.
        let mut d = delta(2, &example(2), (1, &example(1)));
        d.delta = Bytes::from_static(b"\xff\xff");
        let r = rejected(a.apply_delta(d));
        assert!(r.hash_mismatch);
        assert!(
            r.reason
                .starts_with("delta does not apply to version 1: delta: "),
            "{}",
            r.reason
        );
        let mut d = delta(2, &example(2), (1, &example(1)));
        d.delta = Bytes::from(
            vane_proto::SnapshotDelta {
                removed_clusters: vec!["nope".into()],
                ..Default::default()
            }
            .encode_to_vec(),
        );
        let r = rejected(a.apply_delta(d));
        assert!(
            r.reason
                .contains(r#"removed_clusters[0]: no cluster "nope""#),
            "{}",
            r.reason
        );
        // Rebuilt, but not to the announced content.
        let mut d = delta(2, &example(2), (1, &example(1)));
        d.hash = example(3).content_hash().to_hex();
        let r = rejected(a.apply_delta(d));
        assert!(r.hash_mismatch);
        assert!(
            r.reason.starts_with("hash mismatch: version 2 claims hash"),
            "{}",
            r.reason
        );

        assert_eq!(running(&a), (1, example(1)));
        // Only the rebuilt snapshot that reached the checks of the version
        // counts as a refusal.
        assert_eq!(a.shared.metrics.nacks.get(), 1);
    }

    #[test]
    fn a_rebuilt_version_is_held_to_every_rule_of_a_full_one() {
        let a = applier(None);
        assert_eq!(a.apply(live(5, &example(1))), ApplyOutcome::Applied);
        // Never back, even from the running base.
        let r = rejected(a.apply_delta(delta(4, &example(2), (5, &example(1)))));
        assert!(!r.hash_mismatch);
        assert!(
            r.reason.contains("older than the running version 5"),
            "{}",
            r.reason
        );
        // Content that does not validate is refused as a version: NACK.
        let mut target = example(1).to_proto();
        target.clusters.retain(|c| c.name != "web");
        let d = DeltaCandidate {
            version: 6,
            hash: "0".repeat(64),
            base_version: 5,
            base_hash: example(1).content_hash().to_hex(),
            delta: Bytes::from(
                vane_model::delta::diff(&example(1).to_proto(), &target).encode_to_vec(),
            ),
        };
        let r = rejected(a.apply_delta(d));
        assert_eq!(r.code, code::INVALID_ARGUMENT);
        assert!(!r.hash_mismatch);
        assert!(
            r.reason.contains(r#"unknown cluster "web""#),
            "{}",
            r.reason
        );
        // The size limit counts the rebuilt version, not the delta.
        let small = Applier::new(a.shared.clone(), None, None, None, 64);
        let r = rejected(small.apply_delta(delta(6, &example(2), (5, &example(1)))));
        assert!(
            r.reason.contains("exceeds the agent's limit of 64 bytes"),
            "{}",
            r.reason
        );
        assert_eq!(running(&a), (5, example(1)));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Msg {
            Good { version: u64, weight: u32 },
            BadHash { version: u64, weight: u32 },
            Garbage { version: u64 },
        }

        fn msg() -> impl Strategy<Value = Msg> {
            prop_oneof![
                (0u64..12, 1u32..4).prop_map(|(version, weight)| Msg::Good { version, weight }),
                (0u64..12, 1u32..4).prop_map(|(version, weight)| Msg::BadHash { version, weight }),
                (0u64..12).prop_map(|version| Msg::Garbage { version }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            /// For any sequence of server messages the applied version never
            /// decreases, and every ACK names exactly the running version and
            /// hash (what the stream task sends back).
            #[test]
            fn version_never_decreases(msgs in proptest::collection::vec(msg(), 1..25)) {
                let a = applier(None);
                let mut last = 0u64;
                for m in msgs {
                    let c = match m {
                        Msg::Good { version, weight } => live(version, &example(weight)),
                        Msg::BadHash { version, weight } => {
                            let mut c = live(version, &example(weight));
                            c.hash = "0".repeat(64);
                            c
                        }
                        Msg::Garbage { version } => Candidate {
                            version,
                            hash: "1".repeat(64),
                            body: Bytes::from_static(b"\x0a\x03abc"),
                            origin: Source::Live,
                        },
                    };
                    let claimed = (c.version, c.hash.clone());
                    let before = a.shared.current.load_full();
                    let outcome = a.apply(c);
                    let after = a.shared.current.load_full();
                    prop_assert!(after.version >= last);
                    last = after.version;
                    match outcome {
                        ApplyOutcome::Applied | ApplyOutcome::AlreadyCurrent => {
                            // The ACK names (version, hash) of what now runs.
                            prop_assert_eq!((after.version, after.hash.clone()), claimed);
                        }
                        ApplyOutcome::Rejected(_) => {
                            prop_assert_eq!(after.version, before.version);
                            prop_assert_eq!(&after.hash, &before.hash);
                        }
                    }
                }
            }
        }
    }
}
