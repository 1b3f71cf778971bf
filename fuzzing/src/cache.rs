//! Target `disk_cache`: the bytes of the agent's cache file, written by an
//! attacker with access to the cache directory.

use prost::Message;
use vane_agent::apply::check_content;
use vane_agent::cache::{CachedSnapshot, decode};
use vane_agent::{Candidate, Source};
use vane_model::DEFAULT_MAX_SNAPSHOT_BYTES;
use vane_proto as pb;

use crate::invariants::check_snapshot;

/// A cache file's bytes through the agent's loader (`cache::decode`, what
/// `DiskCache::load` runs on the file) and then the apply path's content
/// checks, as at startup: the result is an error, or a valid snapshot whose
/// content hashes to the hash the file claims. What loads also survives
/// being stored and loaded again unchanged.
pub fn disk_cache(data: &[u8]) {
    let cached = match decode(data) {
        Ok(cached) => cached,
        Err(reason) => {
            assert!(!reason.is_empty(), "a corrupt cache without a reason");
            return;
        }
    };
    assert!(cached.version != 0 && !cached.hash.is_empty());
    assert_eq!(
        decode(&stored_form(&cached)).as_ref(),
        Ok(&cached),
        "a loaded cache does not survive store and load"
    );
    let candidate = Candidate {
        version: cached.version,
        hash: cached.hash.clone(),
        body: cached.body,
        origin: Source::Cache,
    };
    match check_content(&candidate, DEFAULT_MAX_SNAPSHOT_BYTES) {
        Ok(s) => {
            assert_eq!(
                s.content_hash().to_hex(),
                cached.hash,
                "a cache file was accepted with content that does not hash as it claims"
            );
            check_snapshot(&s);
        }
        Err(rejection) => assert!(!rejection.reason.is_empty()),
    }
}

/// The file `DiskCache::store` writes for `cached`.
pub(crate) fn stored_form(cached: &CachedSnapshot) -> Vec<u8> {
    pb::StoredVersion {
        info: Some(pb::VersionInfo {
            version: cached.version,
            hash: cached.hash.clone(),
            size_bytes: cached.body.len() as u64,
            ..pb::VersionInfo::default()
        }),
        snapshot: cached.body.clone(),
    }
    .encode_to_vec()
}
