//! Feature flags: the typed `flags` section of a snapshot, in flagd's flag
//! definition model (`state`, `variants`, `defaultVariant`, `targeting`,
//! `metadata`), so that OpenFeature's flagd providers evaluate Vane's flags
//! exactly as they evaluate a flagd flag file.
//!
//! - [`check`]: the rules a definition must pass (called by
//!   [`crate::validate`], errors with field paths like every section);
//! - [`eval`]: evaluating a flag for an evaluation context, as flagd does
//!   (what the control server answers OFREP requests with);
//! - [`flagd`]: the flagd flag configuration JSON that flagd's sync
//!   protocol carries.
//!
//! A snapshot's plain `values` are flags too: each value that is a boolean,
//! string, number or object is served as a static flag of the same key with
//! one variant, [`STATIC_VARIANT`]. A key may not be both a flag and a value.

pub(crate) mod check;
pub mod eval;
pub mod flagd;
mod lookup;
mod types;

pub use types::{Flag, FlagState, FlagType, STATIC_VARIANT};

#[cfg(test)]
mod tests;
