//! Rendering vanectl's results: aligned tables and sentences for people, YAML
//! and JSON for scripts. Pure functions of the server's answers (and of "now"
//! for relative times), so every format is unit-tested.
//!
//! The JSON field names are a contract (tests and scripts read them); the
//! table layout is not.
//!
//! # Layout
//! - `views`: what is shown of each answer (the JSON contract).
//! - `render`: one renderer per command.
//! - `rollout`: the rollout view and its renderers.
//! - `xds`: `get --as xds`, the xDS resources of a version.
//! - `format`: tables, encodings, hashes, sizes and times.
//! - `compare`: `diff -f` and the diff and summary of `push --dry-run`.

mod compare;
mod format;
mod render;
mod rollout;
mod views;
mod xds;

pub(crate) use compare::{FileDiffView, FileSide, dry_run, file_diff};
pub(crate) use format::{encode, one_line, rfc3339_seconds, table, unix_ms};
pub(crate) use render::{audit, diff, get, history, pruned_note, push, status, whoami};
pub(crate) use rollout::{RolloutView, rollout, rollout_started};
pub(crate) use views::{
    AgentView, AuditView, DiffView, PushView, VersionView, WhoAmIView, state_name,
};
pub(crate) use xds::{XdsView, xds};

#[cfg(test)]
mod tests;
