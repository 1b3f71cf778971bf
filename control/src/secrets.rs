//! Private keys on their way out of the control server: who may see them
//! in clear (role `admin`, asking), what everyone else sees (placeholders,
//! `redacted:sha256:<hex>`), and the one rule for every channel that sends
//! them (agents' watch streams, the HTTP long-poll API, `get
//! --show-secrets`): never in plaintext to a peer that is not on loopback.

use std::net::SocketAddr;

use tonic::Status;
use vane_model::Snapshot;
use vane_proto as pb;

use crate::accept::ConnInfo;

/// Why private keys may not go to a peer, or `None` when they may: over
/// TLS always; in plaintext only to a loopback peer (tests, demos, a
/// sidecar on the same host). An unknown peer is not known to be local.
pub fn plaintext_refusal(peer: Option<SocketAddr>, tls: bool) -> Option<String> {
    if tls {
        return None;
    }
    match peer {
        // `to_canonical`: an IPv4 peer seen on an IPv6 socket
        // (`::ffff:127.0.0.1`) is the IPv4 address.
        Some(peer) if peer.ip().to_canonical().is_loopback() => None,
        Some(peer) => Some(format!(
            "this server serves plaintext and {peer} is not on loopback: private keys are never sent unencrypted over a network; serve with TLS (--tls-cert/--tls-key), or give keys as files on the agent's host (private_key_file)"
        )),
        None => Some(
            "the connection's peer is unknown and it is not TLS: private keys are never sent unencrypted over a network; serve with TLS (--tls-cert/--tls-key)"
                .to_owned(),
        ),
    }
}

/// [`plaintext_refusal`] for a connection as the accept loop describes it.
pub(crate) fn refusal_for(conn: Option<&ConnInfo>) -> Option<String> {
    plaintext_refusal(conn.map(|c| c.remote), conn.is_some_and(|c| c.tls))
}

/// Why `caller` gets no private keys whatever the transport: a caller let
/// in by `anonymous_watch` has proven nothing, so keys are not for it.
pub(crate) fn anonymous_refusal(
    auth: &crate::auth::Auth,
    caller: &crate::auth::Caller,
) -> Option<String> {
    auth.is_anonymous_grant(caller).then(|| {
        "the caller is anonymous (let in by the policy's anonymous_watch): private keys go only to an identity; present a client certificate or a bearer token"
            .to_owned()
    })
}

/// The status a channel ends with (or a call gets) when `snapshot` of
/// `group` holds private keys it may not send: `FAILED_PRECONDITION`.
pub(crate) fn refused(group: &str, version: u64, why: &str) -> Status {
    Status::failed_precondition(format!(
        "version {version} of group {group:?} holds private keys, and {why}"
    ))
}

/// Whether the encoded canonical snapshot holds a private key in clear.
/// Decoding only (no validation): stored content is canonical and valid,
/// where a non-empty `private_key` is an inline key.
pub fn encoded_has_keys(encoded: &[u8]) -> bool {
    use prost::Message as _;
    pb::Snapshot::decode(encoded).is_ok_and(|s| {
        s.secrets
            .iter()
            .any(|s| !s.private_key.is_empty() && !vane_model::redact::is_redacted(&s.private_key))
    })
}

/// A snapshot as a caller who may not see keys gets it: its wire form with
/// every inline key replaced by its placeholder, the content hash of that,
/// and whether anything was replaced.
pub(crate) fn redacted(mut snapshot: Snapshot) -> (pb::Snapshot, Option<String>) {
    if vane_model::redact::redact_snapshot(&mut snapshot) == 0 {
        return (snapshot.to_proto(), None);
    }
    let hash = snapshot.content_hash().to_hex();
    (snapshot.to_proto(), Some(hash))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    fn at(ip: IpAddr) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip, 40_000))
    }

    #[test]
    fn keys_go_over_tls_to_anyone_and_in_plaintext_to_loopback_only() {
        let remote = at(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        let remote6 = at("2001:db8::1".parse().unwrap());
        // TLS: any peer, known or not.
        for peer in [remote, remote6, None, at(Ipv4Addr::LOCALHOST.into())] {
            assert_eq!(plaintext_refusal(peer, true), None, "{peer:?}");
        }
        // Plaintext to loopback, in every spelling of it.
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            IpAddr::V4(Ipv4Addr::new(127, 255, 255, 254)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
        ] {
            assert_eq!(plaintext_refusal(at(ip), false), None, "{ip}");
        }
        // Plaintext anywhere else, or to a peer nobody knows: refused,
        // saying what to do.
        for peer in [
            remote,
            remote6,
            at(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1))),
            at(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            at(Ipv4Addr::new(128, 0, 0, 1).to_ipv6_mapped().into()),
            None,
        ] {
            let why = plaintext_refusal(peer, false).unwrap();
            assert!(why.contains("--tls-cert/--tls-key"), "{why}");
            if let Some(peer) = peer {
                assert!(why.contains(&peer.to_string()), "{why}");
            }
        }
        let conn = ConnInfo {
            remote: remote.unwrap(),
            identity: None,
            tls: false,
        };
        assert!(refusal_for(Some(&conn)).is_some());
        assert!(refusal_for(Some(&ConnInfo { tls: true, ..conn })).is_none());
        assert!(refusal_for(None).is_some());
        let status = refused("edge", 3, "why");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            status.message(),
            "version 3 of group \"edge\" holds private keys, and why"
        );
    }
}
