//! Private keys out of sight: what `vanectl get`, `diff` and `history`, the
//! agent's status and the sidecar's output show instead of a key, and how a
//! push that carries such a placeholder (a `get -o yaml` edited and pushed
//! back) gets the key it stands for.
//!
//! A redacted key is `redacted:sha256:<64 hex>`: SHA-256 of the key's DER
//! bytes (of its PEM text when that does not parse). It identifies the key,
//! so a diff shows that a key changed, and reveals nothing of it.

use crate::error::FieldError;
pub use crate::keyprint::{REDACTED_PREFIX, is_redacted, key_fingerprint, redacted};
use crate::secrets::{PemSource, SecretKind};
use crate::snapshot::Snapshot;
use crate::spec::SnapshotSpec;

/// Replaces every inline private key of `spec` by its placeholder; returns
/// how many were replaced.
pub fn redact_spec(spec: &mut SnapshotSpec) -> usize {
    let mut n = 0;
    for s in &mut spec.secrets {
        if let Some(key) = &mut s.private_key
            && !is_redacted(key)
        {
            *key = redacted(key);
            n += 1;
        }
    }
    n
}

/// Puts back every placeholder of `spec` whose key is in `known` (the
/// keys of the versions the caller may draw on, typically the head's); a
/// placeholder of any other key is an error naming its field.
pub fn resolve_redacted(
    spec: &mut SnapshotSpec,
    known: &[&SnapshotSpec],
) -> Result<usize, FieldError> {
    let mut n = 0;
    for (i, s) in spec.secrets.iter_mut().enumerate() {
        let Some(key) = &mut s.private_key else {
            continue;
        };
        if !is_redacted(key) {
            continue;
        }
        let wanted = key.trim().trim_start_matches(REDACTED_PREFIX).to_owned();
        let found = known
            .iter()
            .flat_map(|k| k.secrets.iter())
            .filter_map(|k| k.private_key.as_deref())
            .find(|k| !is_redacted(k) && key_fingerprint(k) == wanted);
        match found {
            Some(clear) => {
                *key = clear.to_owned();
                n += 1;
            }
            None => {
                return Err(FieldError::new(
                    format!("secrets[{i}].private_key"),
                    format!(
                        "redacted key sha256:{} is not one this group holds; give the PEM key",
                        short(&wanted)
                    ),
                ));
            }
        }
    }
    Ok(n)
}

/// Replaces every inline private key of a validated snapshot by its
/// placeholder; returns how many were replaced. What the control server
/// sends a caller who may not see keys: its canonical YAML shows
/// `private_key: redacted:sha256:<hex>` and its [`Snapshot::content_hash`]
/// is the hash of what was sent (the version's own hash covers the keys).
pub fn redact_snapshot(snapshot: &mut Snapshot) -> usize {
    let mut n = 0;
    for s in &mut snapshot.secrets {
        if let SecretKind::Certificate {
            key: PemSource::Inline(key),
            ..
        } = &mut s.kind
            && !is_redacted(key)
        {
            *key = redacted(key);
            n += 1;
        }
    }
    n
}

fn short(hex: &str) -> &str {
    hex.get(..16).unwrap_or(hex)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::spec::SecretSpec;

    fn spec(key: &str) -> SnapshotSpec {
        SnapshotSpec {
            secrets: vec![SecretSpec {
                name: "site".into(),
                certificate_chain: Some("chain".into()),
                private_key: Some(key.into()),
                ..SecretSpec::default()
            }],
            ..SnapshotSpec::default()
        }
    }

    #[test]
    fn a_redacted_spec_resolves_back_from_the_head() {
        let head = spec("not really a key");
        let mut shown = head.clone();
        assert_eq!(redact_spec(&mut shown), 1);
        assert!(
            !shown
                .secrets
                .iter()
                .any(|s| s.private_key.as_deref().is_some_and(|k| !is_redacted(k)))
        );
        let placeholder = shown.secrets[0].private_key.clone().unwrap();
        assert!(placeholder.starts_with(REDACTED_PREFIX), "{placeholder}");
        assert!(!placeholder.contains("really"));
        // Redacting twice changes nothing.
        assert_eq!(redact_spec(&mut shown), 0);
        assert_eq!(resolve_redacted(&mut shown, &[&head]).unwrap(), 1);
        assert_eq!(shown, head);
    }

    #[test]
    fn debug_shows_a_key_as_its_fingerprint() {
        let shown = format!("{:?}", spec("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n"));
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(shown.contains(REDACTED_PREFIX), "{shown}");
    }

    #[test]
    fn an_unknown_placeholder_names_its_field() {
        let mut pushed = spec(&format!("{REDACTED_PREFIX}{}", "ab".repeat(32)));
        let e = resolve_redacted(&mut pushed, &[&spec("other")]).unwrap_err();
        assert_eq!(e.path, "secrets[0].private_key");
        assert!(e.reason.contains("abababababababab"), "{e}");
    }
}
