//! The bearer-token file (`--tokens`): identities with the SHA-256 of their
//! token. Only hashes are kept, on disk and in memory, so reading the file
//! (or a core dump) does not hand out the tokens.
//!
//! ```yaml
//! tokens:
//!   - identity: ci-deployer
//!     sha256: 2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
//! ```
//!
//! `printf %s "$TOKEN" | sha256sum` gives the hash of a token.

use std::collections::HashMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Most tokens a file may hold.
pub const MAX_TOKENS: usize = 100_000;
/// Longest bearer token accepted in a request; longer ones are refused
/// before hashing.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The parsed token file.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    identity: String,
    sha256: String,
}

impl Tokens {
    /// Parses the token file's text; errors name the field
    /// (`tokens[1].sha256: ...`).
    pub fn parse(text: &str) -> Result<Self, String> {
        // yaml_serde's errors name the path (`bindings[0].role: ...`).
        let file: TokensFile = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
        if file.tokens.len() > MAX_TOKENS {
            return Err(format!(
                "tokens: {} tokens, over the limit of {MAX_TOKENS}",
                file.tokens.len()
            ));
        }
        let mut by_hash = HashMap::with_capacity(file.tokens.len());
        for (i, t) in file.tokens.into_iter().enumerate() {
            if t.identity.is_empty() || t.identity.len() > 256 {
                return Err(format!("tokens[{i}].identity: must be 1 to 256 bytes long"));
            }
            let mut hash = [0u8; 32];
            hex::decode_to_slice(t.sha256.trim(), &mut hash).map_err(|_| {
                format!(
                    "tokens[{i}].sha256: must be 64 hexadecimal digits (the SHA-256 of the token)"
                )
            })?;
            if let Some(other) = by_hash.insert(hash, t.identity.clone())
                && other != t.identity
            {
                return Err(format!(
                    "tokens[{i}].sha256: the same token is also given to {other:?}"
                ));
            }
        }
        Ok(Self { by_hash })
    }

    /// The identity a presented token belongs to.
    pub fn identity(&self, token: &str) -> Option<&str> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&hash).map(String::as_str)
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(s: &str) -> String {
        hex::encode(Sha256::digest(s.as_bytes()))
    }

    #[test]
    fn tokens_map_to_identities() {
        let text = format!(
            "tokens:\n  - identity: ci\n    sha256: {}\n  - identity: bot\n    sha256: {}\n",
            sha("s3cret"),
            sha("other")
        );
        let t = Tokens::parse(&text).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.identity("s3cret"), Some("ci"));
        assert_eq!(t.identity("other"), Some("bot"));
        assert_eq!(t.identity("s3cret "), None);
        assert_eq!(t.identity(""), None);
        assert_eq!(t.identity(&"x".repeat(MAX_TOKEN_LEN + 1)), None);
    }

    #[test]
    fn errors_name_the_field() {
        let e = Tokens::parse("tokens: [{identity: ci, sha256: nothex}]").unwrap_err();
        assert_eq!(
            e,
            "tokens[0].sha256: must be 64 hexadecimal digits (the SHA-256 of the token)"
        );
        let e = Tokens::parse(&format!(
            "tokens: [{{identity: a, sha256: {h}}}, {{identity: b, sha256: {h}}}]",
            h = sha("x")
        ))
        .unwrap_err();
        assert_eq!(e, "tokens[1].sha256: the same token is also given to \"a\"");
        let e = Tokens::parse("tokens: [{identity: a, sha: x}]").unwrap_err();
        assert!(e.starts_with("tokens[0]"), "{e}");
    }
}
