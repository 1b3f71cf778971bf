//! The link's errors and how each is retried: classified once, as data, so
//! the state machine decides the pause from the class and never from the
//! text.

use vane_tls::{Hints, tls_failure};

/// How the state machine retries after an error: the reconnect pacing's
/// classes.
pub(crate) use crate::pacing::Retry;

/// Errors of the link.
#[derive(Debug)]
pub(crate) enum LinkError {
    /// Connecting failed (refused, unreachable, timeout).
    Connect(String),
    /// The TLS handshake failed (unknown CA, expired or misnamed
    /// certificate, client certificate refused, plaintext server).
    Tls(String),
    /// The server ended the stream with a status.
    Status(tonic::Status),
    /// The server closed the stream cleanly, or the request side closed.
    Closed,
    /// The server said it cannot reach its store, and another server is
    /// configured: the agent leaves it for the next.
    StoreUnreachable,
}

impl LinkError {
    /// How to retry after this error: TLS failures, `UNAUTHENTICATED`,
    /// `PERMISSION_DENIED` and `INVALID_ARGUMENT` are configuration errors.
    pub(crate) fn retry(&self) -> Retry {
        match self {
            LinkError::Tls(_) => Retry::AtCap,
            LinkError::Status(s) => Retry::after_status(s.code()),
            LinkError::Connect(_) | LinkError::Closed | LinkError::StoreUnreachable => {
                Retry::Backoff
            }
        }
    }

    /// A status from the stream: a TLS failure when rustls is behind it (a
    /// server that refuses the client certificate says so after a TLS 1.3
    /// handshake has completed on the client side, i.e. on the first read).
    pub(crate) fn from_status(status: tonic::Status) -> Self {
        match std::error::Error::source(&status).and_then(|e| tls_failure(e, Hints::AGENT)) {
            Some(tls) => LinkError::Tls(tls),
            None => LinkError::Status(status),
        }
    }

    /// A failed connect: TLS when rustls is behind it.
    pub(crate) fn from_connect(e: &tonic::transport::Error) -> Self {
        match tls_failure(e, Hints::AGENT) {
            Some(tls) => LinkError::Tls(tls),
            None => LinkError::Connect(error_chain(e)),
        }
    }
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Connect(e) => write!(f, "connect failed: {e}"),
            LinkError::Tls(e) => f.write_str(e),
            LinkError::Status(s) => write!(f, "stream failed: {:?}: {}", s.code(), s.message()),
            LinkError::Closed => f.write_str("stream closed by the server"),
            LinkError::StoreUnreachable => {
                f.write_str("the server cannot reach its store; trying another server")
            }
        }
    }
}

/// An error and its causes on one line (tonic's transport errors hide the
/// useful part, e.g. "Connection refused", in their sources).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_and_refusals_are_configuration_errors() {
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: BadCertificate",
        );
        let tls = LinkError::from_status(tonic::Status::from_error(Box::new(alert)));
        assert!(matches!(tls, LinkError::Tls(_)), "{tls:?}");
        assert_eq!(tls.retry(), Retry::AtCap);
        assert!(
            tls.to_string().starts_with("TLS handshake failed: "),
            "{tls}"
        );
        for status in [
            tonic::Status::unauthenticated("no credentials"),
            tonic::Status::permission_denied("identity \"x\" may not watch group \"edge\""),
            tonic::Status::invalid_argument("node: id is required"),
        ] {
            let e = LinkError::from_status(status);
            assert_eq!(e.retry(), Retry::AtCap, "{e}");
        }
        for e in [
            LinkError::from_status(tonic::Status::unavailable("restarting")),
            LinkError::from_status(tonic::Status::internal("replica going away")),
            LinkError::Connect("refused".into()),
            LinkError::Closed,
            LinkError::StoreUnreachable,
        ] {
            assert_eq!(e.retry(), Retry::Backoff, "{e}");
        }
    }

    #[test]
    fn the_chain_keeps_each_cause_once() {
        #[derive(Debug)]
        struct Wrap(&'static str, Option<Box<Wrap>>);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|w| w as _)
            }
        }
        let e = Wrap(
            "transport error",
            Some(Box::new(Wrap(
                "tcp connect error: Connection refused",
                Some(Box::new(Wrap("Connection refused", None))),
            ))),
        );
        // The last cause is already in the text of the one before.
        assert_eq!(
            error_chain(&e),
            "transport error: tcp connect error: Connection refused"
        );
    }
}
