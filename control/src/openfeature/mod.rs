//! OpenFeature on the main port: a group's flags (its snapshot's `flags`,
//! and its `values` as static flags; see `vane_model::flags`) for
//! OpenFeature SDKs, two ways (docs/openfeature.md):
//!
//! - **flagd sync** ([`FlagSyncService`]): `flagd.sync.v1.FlagSyncService`,
//!   so flagd's providers in in-process mode evaluate the flags themselves
//!   and follow every version. The selector names the group. These clients
//!   cannot ACK: the registry shows them `UNACKED` at the version last sent.
//! - **OFREP** (`ofrep`): the OpenFeature Remote Evaluation Protocol,
//!   `POST /ofrep/v1/evaluate/flags[/{key}]`, evaluated here.
//!
//! Both share everything with the watch service, like the HTTP long-poll
//! API: credentials, policy (role `agent` on the group), heads, rollout
//! cohorts, the registry and the per-identity stream cap.
//!
//! # Layout
//! - `flagset`: [`FlagSet`], one version's flags decoded once and shared.
//! - `sync`: the flagd sync service.
//! - `ofrep`: the OFREP handlers and their bodies.

pub mod flagset;
pub mod ofrep;
mod sync;

pub use flagset::{Decoded, FlagSet};
pub use sync::{CLIENT, FlagSyncService};
