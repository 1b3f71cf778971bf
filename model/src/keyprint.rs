//! A private key's fingerprint and the placeholder shown instead of the key
//! (`redacted:sha256:<64 hex>`): SHA-256 of the key's DER bytes (of its
//! PEM text when that does not parse). A leaf of the crate, so a `Debug`
//! anywhere can show a key this way.

use sha2::{Digest, Sha256};

/// What every redacted key starts with.
pub const REDACTED_PREFIX: &str = "redacted:sha256:";

/// The fingerprint of a PEM private key: 64 hex digits.
pub fn key_fingerprint(pem: &str) -> String {
    let digest = match vane_tls::pem::private_key(pem.as_bytes()) {
        Ok(der) => Sha256::digest(der.secret_der()),
        Err(_) => Sha256::digest(pem.trim().as_bytes()),
    };
    hex::encode(digest)
}

/// The placeholder shown for `pem`.
pub fn redacted(pem: &str) -> String {
    format!("{REDACTED_PREFIX}{}", key_fingerprint(pem))
}

/// Whether `text` is a placeholder rather than a key.
pub fn is_redacted(text: &str) -> bool {
    text.trim().starts_with(REDACTED_PREFIX)
}
