//! Vane's wire contract: types and gRPC stubs generated from `proto/vane/v1/*.proto`.
//!
//! Nothing here is validated: convert into `vane_model` domain types at the
//! edge (`TryFrom`), and never let these types flow into the data plane.

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("vane.v1");
}

pub mod codec;

pub use v1::*;
