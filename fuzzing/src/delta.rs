//! Target `delta_apply`: a `vane.v1.SnapshotDelta` applied to a base, as
//! the agent rebuilds a version from a delta response.

use bytes::Bytes;
use prost::Message;
use vane_agent::apply::check_content;
use vane_agent::{Candidate, Source};
use vane_model::delta::{apply, apply_encoded, apply_to_encoded, diff};
use vane_model::{DEFAULT_MAX_SNAPSHOT_BYTES, Snapshot};

use crate::fixtures::delta_bases;
use crate::invariants::check_snapshot;

/// First bytes from this value up choose an inline base (see
/// [`delta_apply`]); below it, one of [`delta_bases`].
pub(crate) const INLINE_BASE: u8 = 0xc0;

/// A delta applied to a base. The first byte picks the base: below
/// [`INLINE_BASE`], one of [`delta_bases`] (by the byte modulo their
/// number) and the rest is the delta; from it up, the next two bytes
/// (big-endian) are the length of an encoded base snapshot, followed by it
/// and then the delta (a base that is not a valid snapshot ends the run).
///
/// Applying never panics. When it gives bytes, the agent decodes them like
/// any snapshot; when they are a valid snapshot, the apply path accepts it
/// under its own hash and refuses it under any other, it keeps every
/// [`check_snapshot`] property, and the server's `diff` from the base to it
/// applies back to exactly it.
pub fn delta_apply(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let owned;
    let (base, delta): (&Snapshot, &[u8]) = if which < INLINE_BASE {
        let bases = delta_bases();
        (bases[usize::from(which) % bases.len()], rest)
    } else {
        let Some((len, rest)) = rest.split_first_chunk::<2>() else {
            return;
        };
        let len = usize::from(u16::from_be_bytes(*len));
        if rest.len() < len {
            return;
        }
        let (base, delta) = rest.split_at(len);
        let Ok(base) = Snapshot::decode(base) else {
            return;
        };
        owned = base;
        (&owned, delta)
    };
    // The agent applies a delta to the bytes of the version it runs
    // (`apply_to_encoded`); the server-side helper (`apply_encoded`) starts
    // from the domain snapshot. Both must rebuild the same bytes, or fail
    // together.
    let by_agent = apply_to_encoded(&base.encode(), delta).map(|m| m.encode_to_vec());
    let by_model = apply_encoded(base, delta);
    assert_eq!(
        by_agent.as_ref().ok(),
        by_model.as_ref().ok(),
        "the agent's and the model's application of a delta differ"
    );
    let rebuilt = match by_agent {
        Ok(bytes) => bytes,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "a delta error without a reason");
            return;
        }
    };
    let Ok(target) = Snapshot::decode(&rebuilt) else {
        // The agent refuses it as it would a bad full snapshot.
        return;
    };
    let hash = target.content_hash().to_hex();
    let body = Bytes::from(rebuilt);
    let claimed = |hash: String| Candidate {
        version: 2,
        hash,
        body: body.clone(),
        origin: Source::Live,
    };
    match check_content(&claimed(hash.clone()), DEFAULT_MAX_SNAPSHOT_BYTES) {
        Ok(s) => assert_eq!(s.content_hash().to_hex(), hash),
        Err(r) => panic!("the apply path refuses a rebuilt snapshot under its own hash: {r:?}"),
    }
    let base_hash = base.content_hash().to_hex();
    if base_hash != hash {
        match check_content(&claimed(base_hash), DEFAULT_MAX_SNAPSHOT_BYTES) {
            Ok(_) => panic!("the apply path accepts a rebuilt snapshot under another hash"),
            Err(r) => assert!(
                r.hash_mismatch,
                "refused, but not as a hash mismatch: {r:?}"
            ),
        }
    }
    check_snapshot(&target);
    let (from, to) = (base.to_proto(), target.to_proto());
    let server_delta = diff(&from, &to);
    match apply(from, server_delta) {
        Ok(again) => assert!(
            again == to,
            "apply(base, diff(base, target)) is not the target"
        ),
        Err(e) => panic!("the server's own delta does not apply: {e}"),
    }
    // Through the wire encoding too, as agents receive it.
    let encoded = diff(&base.to_proto(), &to).encode_to_vec();
    match apply_encoded(base, &encoded) {
        Ok(bytes) => assert!(
            bytes == to.encode_to_vec(),
            "the encoded delta rebuilds other bytes"
        ),
        Err(e) => panic!("the server's own encoded delta does not apply: {e}"),
    }
}
