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
//! - this file: [`FlagSet`], one version's flags decoded once and shared.
//! - `sync`: the flagd sync service.
//! - `ofrep`: the OFREP handlers and their bodies.

use std::sync::Arc;

use bytes::Bytes;
use vane_model::Snapshot;

pub mod ofrep;
mod sync;

pub use sync::{CLIENT, FlagSyncService};

/// One version's flags, decoded once (by the first client that needs them)
/// and shared by every stream and evaluation of that version.
#[derive(Debug)]
pub struct FlagSet {
    /// The snapshot, for evaluation.
    pub snapshot: Snapshot,
    /// The flagd flag configuration JSON that sync clients receive.
    pub configuration: String,
}

/// A version's flags, or why it has none.
pub type Decoded = Result<Arc<FlagSet>, Arc<str>>;

/// Decodes an encoded canonical snapshot on the blocking pool.
pub(crate) async fn decode(group: String, version: u64, snapshot: Bytes) -> Decoded {
    let done = tokio::task::spawn_blocking(move || {
        let snapshot = Snapshot::decode(&snapshot)
            .map_err(|e| format!("the stored content does not decode: {e}"))?;
        let mut metadata = serde_json::Map::new();
        metadata.insert("flagSetId".to_owned(), group.into());
        metadata.insert("version".to_owned(), version.to_string().into());
        let configuration = snapshot.flagd_configuration(metadata).to_string();
        Ok::<_, String>(Arc::new(FlagSet {
            snapshot,
            configuration,
        }))
    })
    .await;
    match done {
        Ok(Ok(set)) => Ok(set),
        Ok(Err(reason)) => Err(reason.into()),
        Err(e) => Err(format!("decoding its flags failed: {e}").into()),
    }
}
