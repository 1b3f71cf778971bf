//! The apply path: the one way a snapshot becomes the running configuration,
//! at startup from the cache or the defaults and on every live update.
//!
//! Order (each step may refuse; nothing changes until the swap):
//! version check -> size -> decode + validate -> hash over the content ->
//! embedder's validator -> embedder's sink -> ONE swap -> persist the cache
//! (live only) -> the caller ACKs. A refusal carries a reason an operator can
//! act on; it becomes the NACK's `error_detail` and the old config stays.
//!
//! A delta response takes this same path: the stream task rebuilds the full
//! candidate from the running snapshot and the delta first
//! (`vane_model::delta::apply_encoded`), so its version, hash, validation,
//! hooks, swap and cache are checked exactly like a full snapshot's.
//!
//! One exception to "ACK after the cache write": when the cache cannot be
//! written (disk full), the new config already runs, so the agent still ACKs
//! and reports the error in `last_error`; only a restart would lose it.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
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

/// Runs the apply path against the shared state.
pub(crate) struct Applier {
    pub(crate) shared: Arc<Shared>,
    pub(crate) validator: Option<Arc<dyn Validator>>,
    pub(crate) sink: Option<Arc<dyn Sink>>,
    pub(crate) cache: Option<DiskCache>,
    pub(crate) max_snapshot_bytes: usize,
}

impl Applier {
    /// Applies `candidate`, or refuses it leaving everything as it was.
    pub(crate) fn apply(&self, candidate: Candidate) -> ApplyOutcome {
        let outcome = self.try_apply(candidate);
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

    fn try_apply(&self, c: Candidate) -> ApplyOutcome {
        let running = self.shared.current.load_full();
        if c.version == 0 && c.origin != Source::Defaults {
            return reject(code::INVALID_ARGUMENT, "version: 0 is not a valid version");
        }
        let nothing_loaded = running.version == 0;
        if !nothing_loaded && c.version < running.version {
            return reject(
                code::FAILED_PRECONDITION,
                format!(
                    "version {} is older than the running version {}; refusing to go back",
                    c.version, running.version
                ),
            );
        }
        if !nothing_loaded && c.version == running.version {
            if c.hash != running.hash {
                return reject(
                    code::FAILED_PRECONDITION,
                    format!(
                        "version {} already runs with hash {}; refusing different content (hash {}) under the same version",
                        c.version, running.hash, c.hash
                    ),
                );
            }
            // Nothing to apply. The stream task confirms it, which also
            // marks cached content as live.
            return ApplyOutcome::AlreadyCurrent;
        }
        let snapshot = match check_content(&c, self.max_snapshot_bytes) {
            Ok(s) => s,
            Err(rejection) => return ApplyOutcome::Rejected(rejection),
        };
        let next = Current {
            version: c.version,
            hash: c.hash,
            source: c.origin,
            snapshot: Arc::new(snapshot),
            applied_at: SystemTime::now(),
        };
        if let Some(v) = &self.validator
            && let Err(reason) = v.validate(&next, &running)
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
        self.shared.install(next);
        if let (Some(cache), Some(record)) = (&self.cache, persist)
            && let Err(e) = cache.store(&record)
        {
            // The new config already runs; only restarts lose it. Say so.
            tracing::warn!(error = %e, "could not persist the disk cache");
            self.shared.link().last_error = Some(e.to_string());
        }
        ApplyOutcome::Applied
    }
}

/// The checks of the apply path that depend on the candidate alone, not on
/// what runs: size, decode + validation, and the hash recomputed over the
/// content. Public so the fuzz targets (`vane-fuzzing`) run exactly these.
pub fn check_content(c: &Candidate, max_snapshot_bytes: usize) -> Result<Snapshot, Rejection> {
    if c.body.len() > max_snapshot_bytes {
        return Err(Rejection::new(
            code::INVALID_ARGUMENT,
            format!(
                "snapshot: encoded size {} bytes exceeds the agent's limit of {max_snapshot_bytes} bytes",
                c.body.len(),
            ),
        ));
    }
    let snapshot = Snapshot::decode(&c.body)
        .map_err(|e| Rejection::new(code::INVALID_ARGUMENT, e.to_string()))?;
    let actual = snapshot.content_hash().to_hex();
    if actual != c.hash {
        let mut rejection = Rejection::new(
            code::INVALID_ARGUMENT,
            format!(
                "hash mismatch: version {} claims hash {} but its content hashes to {actual}",
                c.version, c.hash
            ),
        );
        rejection.hash_mismatch = true;
        return Err(rejection);
    }
    Ok(snapshot)
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
        Applier {
            shared: Arc::new(Shared::new(Duration::from_secs(300))),
            validator,
            sink: None,
            cache: None,
            max_snapshot_bytes: vane_model::DEFAULT_MAX_SNAPSHOT_BYTES,
        }
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
        a.shared.confirm_current();
        assert_eq!(a.shared.current.load().source, Source::Live);
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
