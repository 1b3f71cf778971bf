//! A failed TLS handshake in one line: the rustls error behind an error
//! (wherever tonic, hyper or `io::Error` put it), with a hint naming the
//! setting that usually causes it.

/// How the hints name the client's settings: each client words where the
/// server's host name comes from and how to ask for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hints {
    /// Where the host name checked against the certificate comes from
    /// (`"the URL"`, `"--server"`).
    pub host_in: &'static str,
    /// What to say when the server does not seem to speak TLS.
    pub not_tls: &'static str,
}

impl Hints {
    /// The agent's words (its server is a URL in its configuration).
    pub const AGENT: Self = Self {
        host_in: "the URL",
        not_tls: "is the server speaking TLS? (https:// URL)",
    };
    /// vanectl's words (its server is `--server`).
    pub const VANECTL: Self = Self {
        host_in: "--server",
        not_tls: "is the server speaking TLS?",
    };
}

/// The TLS failure behind an error, if there is one, in words: a rustls
/// error anywhere in the chain of sources. tonic and hyper wrap it in
/// `io::Error`s, whose `source()` skips the error they hold, and an alert
/// the server sends after the handshake (a refused client certificate under
/// TLS 1.3) reaches us as the text of rustls's error only.
pub fn tls_failure(error: &(dyn std::error::Error + 'static), hints: Hints) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(&tls.to_string(), hints));
        }
        let held = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref().map(|inner| (io.kind(), inner)));
        next = match held {
            Some((std::io::ErrorKind::InvalidData, inner))
                if is_rustls_text(&inner.to_string()) =>
            {
                return Some(describe(&inner.to_string(), hints));
            }
            Some((_, inner)) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// Whether `text` is how rustls words a handshake or alert failure.
pub fn is_rustls_text(text: &str) -> bool {
    [
        "received fatal alert: ",
        "invalid peer certificate",
        "peer sent no certificates",
        "peer is incompatible",
        "peer misbehaved",
        "received corrupt message",
        "certificate expired",
        "certificate not valid",
    ]
    .iter()
    .any(|p| text.starts_with(p))
}

/// rustls's words, with what they usually mean for a Vane client.
pub fn describe(rustls_text: &str, hints: Hints) -> String {
    let t = rustls_text;
    let alert = t.strip_prefix("received fatal alert: ");
    let host = format!(
        "the server's certificate does not name the host in {}",
        hints.host_in
    );
    let hint = if t.contains("UnknownIssuer") || t.contains("BadSignature") {
        Some("the server's certificate is not signed by the CA given (--ca)")
    } else if alert.is_none() && (t.contains("Expired") || t.starts_with("certificate expired")) {
        Some("the server's certificate has expired")
    } else if t.contains("NotValidForName") || t.starts_with("certificate not valid for name") {
        Some(host.as_str())
    } else {
        match alert {
            Some("CertificateRequired") => {
                Some("the server requires a client certificate (--cert, --key)")
            }
            Some("CertificateExpired") => {
                Some("the server refused the client certificate (--cert): it has expired")
            }
            Some("UnknownCA" | "BadCertificate" | "CertificateUnknown" | "DecryptError") => Some(
                "the server refused the client certificate (--cert): not signed by a CA it trusts",
            ),
            _ if t.starts_with("received corrupt message") => Some(hints.not_tls),
            _ => None,
        }
    };
    match hint {
        Some(h) => format!("TLS handshake failed: {t} ({h})"),
        None => format!("TLS handshake failed: {t}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
        tls_failure(e, Hints::VANECTL)
    }

    #[test]
    fn tls_failures_are_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped =
            std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, tls));
        assert_eq!(
            failure(&wrapped).unwrap(),
            "TLS handshake failed: invalid peer certificate: UnknownIssuer \
             (the server's certificate is not signed by the CA given (--ca))"
        );
        let expired = rustls::Error::InvalidCertificate(rustls::CertificateError::Expired);
        assert!(failure(&expired).unwrap().contains("has expired"));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(failure(&plain), None);
        let other = std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too big");
        assert_eq!(failure(&other), None);
    }

    #[test]
    fn alerts_after_the_handshake_arrive_as_text() {
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: CertificateExpired",
        );
        assert_eq!(
            failure(&alert).unwrap(),
            "TLS handshake failed: received fatal alert: CertificateExpired \
             (the server refused the client certificate (--cert): it has expired)"
        );
        let required = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRequired",
        );
        assert!(
            failure(&required)
                .unwrap()
                .contains("requires a client certificate")
        );
    }

    #[test]
    fn hints_name_each_clients_settings() {
        let name = "certificate not valid for name \"x\"";
        assert!(describe(name, Hints::AGENT).contains("host in the URL"));
        assert!(describe(name, Hints::VANECTL).contains("host in --server"));
        let corrupt = "received corrupt message of type InvalidContentType";
        assert!(describe(corrupt, Hints::AGENT).ends_with("(https:// URL))"));
    }
}
