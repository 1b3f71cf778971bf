//! Vane's domain model: what a configuration snapshot is, how it is validated,
//! hashed, read from a file and rendered back.
//!
//! # Layout
//! - [`spec`]: the unvalidated, serde-facing shape of a snapshot file (and of
//!   the wire message). Every field is optional or a plain string here.
//! - [`snapshot`]: the validated domain types ([`Snapshot`] and friends) that
//!   the control server, the agent and the proxy work with.
//! - [`validate`]: `spec -> Snapshot`, collecting every error with its field
//!   path (`route_tables[0].routes[2].cluster: unknown cluster "paymnets"`).
//! - [`flags`]: feature flags in flagd's model: their checks, their
//!   evaluation and the flagd configuration document.
//! - [`secrets`]: TLS in the domain (certificates and CA bundles, TLS
//!   listeners by SNI name, TLS and HTTP/2 to upstreams); their checks in
//!   [`tls_check`], private keys out of sight in [`redact`].
//! - [`file`]: reading YAML or JSON snapshot files.
//! - [`proto`]: the protobuf edge (`TryFrom<pb::Snapshot>`, encoding).
//! - [`canonical`]: the canonical encoding, its SHA-256 hash, canonical YAML
//!   and unified diffs between versions.
//! - [`delta`]: the changes between two versions (what a delta response
//!   carries) and their application to the running version.
//!
//! Every conversion into the domain goes through one function,
//! [`validate::validate`], so a file, a push and a watch response are held to
//! exactly the same rules.

pub mod canonical;
pub mod delta;
pub mod error;
pub mod file;
pub mod flags;
pub mod keyprint;
pub mod limits;
pub mod names;
pub mod proto;
pub mod redact;
pub mod secrets;
pub mod snapshot;
pub mod spec;
pub mod tls_check;
pub mod validate;

pub use canonical::{ContentHash, unified_diff};
pub use error::{FieldError, FileError, ValidationError};
pub use file::{Format, parse_file};
pub use flags::{Flag, FlagState, FlagType};
pub use snapshot::*;
pub use spec::{FlagSpec, SnapshotSpec};
pub use validate::{DEFAULT_MAX_SNAPSHOT_BYTES, check_size, validate};
