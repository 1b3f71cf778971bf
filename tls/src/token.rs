//! Bearer tokens: checked once (trimmed, not empty, visible ASCII only), sent
//! as `authorization: Bearer <token>` on every call, never printed.

use std::fmt;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;

/// A bearer token. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(MetadataValue<Ascii>);

impl BearerToken {
    /// The token, with surrounding whitespace (a token file's final
    /// newline) removed. Refused when empty or when it holds characters a
    /// header cannot carry (spaces, control characters, non-ASCII).
    pub fn new(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.is_empty() {
            return Err("the token is empty".into());
        }
        if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "the token holds {c:?}; only visible ASCII characters are allowed"
            ));
        }
        MetadataValue::try_from(format!("Bearer {token}"))
            .map(Self)
            .map_err(|e| format!("the token cannot be sent as a header: {e}"))
    }

    /// The `authorization` metadata value.
    pub fn header(&self) -> MetadataValue<Ascii> {
        self.0.clone()
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Sends `authorization: Bearer <token>` with every call (nothing when
/// there is no token).
#[derive(Clone, Debug, Default)]
pub struct BearerInterceptor(pub Option<BearerToken>);

impl Interceptor for BearerInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.header());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tokens_are_trimmed_and_checked() {
        let t = BearerToken::new("  s3cr3t-token\n").unwrap();
        assert_eq!(t.header().to_str().unwrap(), "Bearer s3cr3t-token");
        assert_eq!(format!("{t:?}"), "BearerToken(<redacted>)");
        assert_eq!(BearerToken::new("\n").unwrap_err(), "the token is empty");
        assert!(BearerToken::new("a b").unwrap_err().contains("' '"));
        assert!(BearerToken::new("é").is_err());
    }

    #[test]
    fn the_interceptor_adds_the_token() {
        let mut auth = BearerInterceptor(Some(BearerToken::new("x").unwrap()));
        let request = auth.call(tonic::Request::new(())).unwrap();
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer x");
        let mut none = BearerInterceptor(None);
        let request = none.call(tonic::Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }
}
