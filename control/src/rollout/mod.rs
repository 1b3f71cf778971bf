//! Progressive rollouts (docs/rollouts.md): a candidate version goes to a
//! cohort that grows step by step on evidence — ACKs, NACKs, the data
//! plane's health, disconnects — and rolls back by itself on failure.
//!
//! - [`selector`], [`spec`]: the plan, checked at the edge.
//! - [`model`]: the rollout and its states, stored and shown.
//! - [`engine`]: the decisions, pure functions of the evidence and the clock.
//! - [`driver`]: the task that applies them, stores them and publishes the
//!   cohorts to the watch streams ([`crate::targets`]).
//! - [`service`]: what the Admin handlers call.

pub mod driver;
pub mod engine;
pub mod model;
pub mod selector;
pub mod service;
pub mod spec;
