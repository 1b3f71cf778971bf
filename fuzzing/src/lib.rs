//! The bodies of Vane's fuzz targets: each takes arbitrary bytes, hands them
//! to one of the places where hostile input enters (a snapshot file, a wire
//! message, a delta, the agent's disk cache) and checks what must hold of
//! the answer. A broken invariant is a panic, which libFuzzer reports as a
//! crash and the corpus test as a failure.
//!
//! # Layout
//! - [`invariants`]: what holds of every snapshot that passed validation
//!   (encode/decode, canonical YAML and JSON re-parse to the same hash).
//! - [`fixtures`]: the snapshots targets start from (the running version of
//!   the agent, the bases of deltas).
//! - [`seeds`]: real inputs for every target, written into the corpora.
//! - The targets themselves, one function per entry of [`TARGETS`].
//!
//! The same functions run in two places: the cargo-fuzz crate in `fuzz/`
//! (nightly, outside the workspace build; `cargo xtask fuzz`) and
//! `tests/corpus.rs`, which replays every committed corpus file and every
//! seed on stable, so `cargo xtask test` re-checks each input fuzzing kept.
//! Panicking is this crate's job; it is never linked into a shipped binary.

pub mod fixtures;
pub mod invariants;
pub mod seeds;

mod cache;
mod delta;
mod http;
mod snapshot;
mod stream;
mod wire;

pub use cache::disk_cache;
pub use delta::delta_apply;
pub use http::http_request;
pub use snapshot::{snapshot_file, snapshot_proto};
pub use stream::{replay as watch_stream_replay, step as watch_stream_step, watch_stream};
pub use wire::{admin_request, watch_request, watch_response};

/// One fuzz target: its name (the file `fuzz/fuzz_targets/<name>.rs` and the
/// corpus directory `fuzz/corpus/<name>`) and its body.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The target's name.
    pub name: &'static str,
    /// Runs one input; panics when an invariant breaks.
    pub run: fn(&[u8]),
}

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "snapshot_file",
        run: snapshot_file,
    },
    Target {
        name: "snapshot_proto",
        run: snapshot_proto,
    },
    Target {
        name: "admin_request",
        run: admin_request,
    },
    Target {
        name: "watch_request",
        run: watch_request,
    },
    Target {
        name: "watch_stream",
        run: watch_stream,
    },
    Target {
        name: "watch_response",
        run: watch_response,
    },
    Target {
        name: "delta_apply",
        run: delta_apply,
    },
    Target {
        name: "disk_cache",
        run: disk_cache,
    },
    Target {
        name: "http_request",
        run: http_request,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
