//! One version's flags ([`FlagSet`]): the snapshot decoded for evaluation
//! and the flagd configuration rendered, once per version, shared by every
//! sync stream and OFREP call.

use std::sync::Arc;

use bytes::Bytes;
use vane_model::Snapshot;

/// One version's flags, decoded once (by the first client that needs them)
/// and shared by every stream and evaluation of that version.
#[derive(Debug)]
pub struct FlagSet {
    /// The snapshot, for evaluation.
    pub snapshot: Snapshot,
    /// The flagd flag configuration JSON that sync clients receive.
    pub configuration: String,
    /// The flag set's metadata (`flagSetId`, `version`), which flagd's
    /// providers merge under each flag's own; OFREP answers do the same.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Whether a targeting rule reads `$flagd.timestamp`: its answers
    /// change with time, so bulk answers carry no ETag.
    pub time_dependent: bool,
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
        let configuration = snapshot.flagd_configuration(metadata.clone()).to_string();
        let time_dependent = snapshot.flags.values().any(|f| {
            f.targeting
                .as_ref()
                .is_some_and(|r| r.source().to_string().contains("$flagd.timestamp"))
        });
        Ok::<_, String>(Arc::new(FlagSet {
            snapshot,
            configuration,
            metadata,
            time_dependent,
        }))
    })
    .await;
    match done {
        Ok(Ok(set)) => Ok(set),
        Ok(Err(reason)) => Err(reason.into()),
        Err(e) => Err(format!("decoding its flags failed: {e}").into()),
    }
}
