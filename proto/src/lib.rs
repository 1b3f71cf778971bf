//! Vane's wire contract: types and gRPC stubs generated from `proto/vane/v1/*.proto`,
//! and flagd's flag sync service (`proto/flagd/sync/v1/sync.proto`), which
//! OpenFeature's flagd providers speak.
//!
//! Nothing here is validated: convert into `vane_model` domain types at the
//! edge (`TryFrom`), and never let these types flow into the data plane.

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("vane.v1");
}

/// flagd's wire contracts, kept exactly as flagd publishes them.
pub mod flagd {
    /// Flag configuration sync.
    pub mod sync {
        /// `flagd.sync.v1`: `FlagSyncService` (SyncFlags, FetchAllFlags,
        /// GetMetadata), which in-process flagd providers stream flags from.
        #[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
        pub mod v1 {
            tonic::include_proto!("flagd.sync.v1");
        }
    }
}

pub mod codec;

/// The methods of `vane.v1.Admin` (`Push`, `Get`, …), from the proto at
/// build time: a bounded set for metric labels.
pub const ADMIN_METHODS: &[&str] = include!(concat!(env!("OUT_DIR"), "/admin_methods.rs"));

/// The well-known types flagd's messages use (`sync_context` is a
/// `google.protobuf.Struct`).
pub use prost_types;

pub use v1::*;
