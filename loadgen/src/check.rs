//! Checking a response as `vane-agent` does before it ACKs: decode (or
//! rebuild from the base and a delta), validate, hash the canonical form,
//! compare with the hash the response claims; and why a response is
//! refused.

use std::sync::Arc;

use bytes::Bytes;
use vane_model::Snapshot;

/// A checked version, as agents run it.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) version: u64,
    pub(crate) hash: String,
    /// The content, when it was checked (not when the fleet checks nothing).
    pub(crate) snapshot: Option<Arc<Snapshot>>,
}

/// Why a response was not ACKed.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) want_full: bool,
    pub(crate) reason: String,
}

impl Refusal {
    pub(crate) fn want_full(reason: impl Into<String>) -> Self {
        Self {
            want_full: true,
            reason: reason.into(),
        }
    }

    pub(crate) fn refuse(reason: impl Into<String>) -> Self {
        Self {
            want_full: false,
            reason: reason.into(),
        }
    }
}

/// What a response carries.
pub(crate) enum Body {
    Full(Bytes),
    Delta(Bytes),
}

/// Decodes (or rebuilds from `base` and a delta), validates and hashes; the
/// content must hash to `hash`.
pub(crate) fn verify(
    version: u64,
    hash: &str,
    body: Body,
    base: Option<&Snapshot>,
) -> Result<Verified, Refusal> {
    let from_delta = matches!(body, Body::Delta(_));
    let decoded = match body {
        Body::Full(bytes) => Snapshot::decode(&bytes),
        Body::Delta(delta) => {
            let base =
                base.ok_or_else(|| Refusal::want_full("delta: the base is not known here"))?;
            let full = vane_model::delta::apply_encoded(base, &delta)
                .map_err(|e| Refusal::want_full(format!("delta does not apply: {e}")))?;
            Snapshot::decode(&full)
        }
    };
    let snapshot = decoded.map_err(|e| Refusal::refuse(e.to_string()))?;
    let actual = snapshot.content_hash().to_hex();
    if actual != hash {
        let reason = format!(
            "hash mismatch: version {version} claims hash {hash} but its content hashes to {actual}"
        );
        // A rebuilt snapshot that hashes wrong asks for the full one; a full
        // one that hashes wrong is refused.
        return Err(if from_delta {
            Refusal::want_full(reason)
        } else {
            Refusal::refuse(reason)
        });
    }
    Ok(Verified {
        version,
        hash: actual,
        snapshot: Some(Arc::new(snapshot)),
    })
}
