//! Choosing a listener's certificate by the SNI name a client sends: an
//! exact name wins over a wildcard, and a client that sends no name, or one
//! no certificate lists, gets the listener's first certificate.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use vane_model::ServerName;

/// Server names and what each is answered with. Generic so the choice can
/// be tested without keys; the listener's is [`SniResolver`].
#[derive(Debug)]
pub(super) struct SniTable<T> {
    exact: Vec<(ServerName, T)>,
    wildcard: Vec<(ServerName, T)>,
    default: T,
}

impl<T> SniTable<T> {
    /// `default` for no name or an unknown one; `names` in any order (the
    /// snapshot's validation made them unique per listener).
    pub(super) fn new(default: T, names: impl IntoIterator<Item = (ServerName, T)>) -> Self {
        let (exact, wildcard) = names
            .into_iter()
            .partition(|(n, _)| matches!(n, ServerName::Exact(_)));
        Self {
            exact,
            wildcard,
            default,
        }
    }

    /// The entry for `sni`. A linear scan: a listener lists a handful of
    /// names, and the handshake around it costs far more.
    pub(super) fn pick(&self, sni: Option<&str>) -> &T {
        let Some(sni) = sni else {
            return &self.default;
        };
        self.exact
            .iter()
            .chain(&self.wildcard)
            .find(|(n, _)| n.matches(sni))
            .map_or(&self.default, |(_, t)| t)
    }
}

/// rustls asks this for the certificate of each handshake.
pub(super) type SniResolver = SniTable<Arc<CertifiedKey>>;

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(client_hello.server_name()).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(n: &str) -> ServerName {
        ServerName::Exact(n.into())
    }

    fn wild(suffix: &str) -> ServerName {
        ServerName::Wildcard(suffix.into())
    }

    #[test]
    fn an_exact_name_beats_a_wildcard_and_the_first_is_the_default() {
        // The wildcard is listed first: order does not decide, exactness does.
        let t = SniTable::new(
            "default",
            [
                (wild(".example.test"), "wildcard"),
                (exact("api.example.test"), "api"),
                (exact("example.test"), "apex"),
                (exact("other.test"), "other"),
            ],
        );
        assert_eq!(*t.pick(Some("api.example.test")), "api");
        assert_eq!(*t.pick(Some("API.Example.test")), "api");
        assert_eq!(*t.pick(Some("www.example.test")), "wildcard");
        assert_eq!(*t.pick(Some("example.test")), "apex");
        assert_eq!(*t.pick(Some("other.test")), "other");
        // A wildcard covers one label only.
        assert_eq!(*t.pick(Some("a.b.example.test")), "default");
        assert_eq!(*t.pick(Some("unknown.test")), "default");
        assert_eq!(*t.pick(None), "default");
    }
}
