//! HTTP/1.1 `Upgrade` passthrough (WebSocket and any other protocol): the
//! request goes to the upstream with its `Upgrade` header and
//! `Connection: upgrade` (every other hop-by-hop header is still removed),
//! on a connection of its own, never pooled. A `101 Switching Protocols`
//! answer is passed to the client and leaves a [`Tunnel`] for the
//! connection to run (see [`super::tunnel`]); any other answer is proxied
//! as a normal response, and the client's connection stays HTTP.
//!
//! Connect failures are tried on another endpoint (at most
//! [`MAX_CONNECT_ATTEMPTS`] in all, as for TCP listeners: nothing was
//! sent); nothing else is retried, since the upstream may have acted on
//! the handshake. The route's deadline covers the wait for the answer head
//! only, never the tunnel, which the route's idle timeout bounds instead.
//! A TLS cluster's upgrades go over TLS (ALPN `http/1.1` only); a
//! plaintext HTTP/2 cluster cannot take one (502).

use std::net::SocketAddr;

use http::header::{CONNECTION, HOST, HeaderMap, HeaderValue, UPGRADE};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::Builder;
use hyper::upgrade::OnUpgrade;

use super::body::{BodyLimits, ProxyBody};
use super::conn::ConnCtx;
use super::headers::strip_hop_by_hop;
use super::local::LocalError;
use super::tunnel::Tunnel;
use crate::clock;
use crate::cluster::UpstreamErrorKind;
use crate::cluster::outlier::InFlight;
use crate::cluster::transport::Transport;
use crate::route::RouteRt;
use crate::upstream::{self, Failure, UpgradeIo, UpstreamBody};

/// Most endpoints tried for one upgrade when connecting fails.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// An upgrade a client asked for.
#[derive(Debug)]
pub(crate) struct Asked {
    /// The `Upgrade` header as the client sent it.
    protocol: HeaderValue,
    /// Whether it names `websocket` (for the metrics' `protocol` label).
    websocket: bool,
    /// The client's connection, handed over after a 101.
    downstream: OnUpgrade,
}

/// Whether the `Connection` headers name the `upgrade` option.
fn connection_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// The upgrade `req` asks for: an HTTP/1.1 request with `Connection:
/// upgrade` and an `Upgrade` header (RFC 9110 §7.8). HTTP/2 has no
/// `Upgrade`; an `Upgrade` header without the `Connection` option is a
/// hop-by-hop header like any other, and is dropped.
pub(crate) fn asked(req: &mut Request<Incoming>) -> Option<Asked> {
    if req.version() != Version::HTTP_11 || !connection_upgrade(req.headers()) {
        return None;
    }
    let protocol = req.headers().get(UPGRADE)?.clone();
    let websocket = protocol.to_str().is_ok_and(|p| {
        p.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
    });
    Some(Asked {
        protocol,
        websocket,
        downstream: hyper::upgrade::on(req),
    })
}

/// Forwards an upgrade request whose head has been rewritten already
/// (hop-by-hop headers removed, `x-forwarded-for` and `Host` set).
pub(crate) async fn forward(
    ctx: &ConnCtx,
    route: &RouteRt,
    parts: Parts,
    body: Incoming,
    asked: Asked,
    deadline: Option<tokio::time::Instant>,
) -> Response<ProxyBody> {
    let cluster = &route.cluster;
    let stats = &ctx.listener.stats.upgrades;
    let declined = || stats.counter(asked.websocket, false).inc();
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // A body can be sent once only: then so is the request.
    let attempts = if body.is_end_stream() {
        cluster.endpoints.len().clamp(1, MAX_CONNECT_ATTEMPTS)
    } else {
        1
    };
    let mut body = Some(body);
    let mut avoid: Vec<usize> = Vec::new();
    for attempt in 1..=attempts {
        let Some(i) = cluster.pick(clock::now_millis(), &avoid) else {
            declined();
            return LocalError::NoHealthyEndpoint.response();
        };
        let endpoint = &cluster.endpoints[i];
        let mut head = parts.clone();
        head.uri = Uri::from(path.clone());
        if !head.headers.contains_key(HOST) {
            head.headers.insert(HOST, endpoint.host.clone());
        }
        head.headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        head.headers.insert(UPGRADE, asked.protocol.clone());
        let up_body: UpstreamBody = match body.take() {
            Some(b) if !b.is_end_stream() => Either::Left(b),
            _ => Either::Right(Empty::new()),
        };
        let in_flight = cluster
            .tracks_in_flight()
            .then(|| InFlight::new(&endpoint.state));
        let call = exchange(
            endpoint.address,
            &cluster.transport,
            cluster.connect_timeout,
            Request::from_parts(head, up_body),
        );
        // Without a route timeout, the wait for the head is still bounded:
        // by the idle timeout, as a stream's pauses are.
        let head_by = deadline.unwrap_or_else(|| tokio::time::Instant::now() + route.idle_timeout);
        let outcome = tokio::time::timeout_at(head_by, call).await;
        let now_ms = clock::now_millis();
        let mut resp = match outcome {
            Err(_) => {
                cluster.record(i, false, now_ms);
                cluster.upstream_error(UpstreamErrorKind::Timeout).inc();
                declined();
                return LocalError::UpstreamTimeout.response();
            }
            Ok(Err(e)) => {
                cluster.record(i, false, now_ms);
                let kind = match e {
                    Failure::NotSent { .. } => UpstreamErrorKind::Connect,
                    Failure::Protocol(_) => UpstreamErrorKind::Protocol,
                };
                cluster.upstream_error(kind).inc();
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = %e, "upstream upgrade request failed");
                if kind == UpstreamErrorKind::Connect && attempt < attempts {
                    avoid.push(i);
                    continue;
                }
                declined();
                return LocalError::UpstreamFailed.response();
            }
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        cluster.record(i, !status.is_server_error(), now_ms);
        if status == StatusCode::SWITCHING_PROTOCOLS {
            stats.counter(asked.websocket, true).inc();
            let upstream = hyper::upgrade::on(&mut resp);
            let (mut head, _) = resp.into_parts();
            let protocol = head.headers.get(UPGRADE).cloned();
            strip_hop_by_hop(&mut head.headers);
            head.headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(p) = protocol {
                head.headers.insert(UPGRADE, p);
            }
            ctx.leave_tunnel(Tunnel {
                downstream: asked.downstream,
                upstream,
                in_flight,
                idle: route.idle_timeout,
            });
            return Response::from_parts(head, ProxyBody::empty());
        }
        // Declined: an ordinary answer, and the client's connection stays
        // an HTTP one.
        declined();
        let (mut head, body) = resp.into_parts();
        strip_hop_by_hop(&mut head.headers);
        head.version = Version::HTTP_11;
        let limits = BodyLimits {
            deadline,
            idle: route.idle_timeout,
            cluster: route.cluster.clone(),
        };
        return Response::from_parts(head, ProxyBody::unpooled(body, in_flight, limits));
    }
    // Every attempt failed to connect (the loop returns otherwise).
    declined();
    LocalError::UpstreamFailed.response()
}

/// Sends `req` on a new connection to `addr` that can be upgraded.
async fn exchange(
    addr: SocketAddr,
    transport: &Transport,
    connect_timeout: std::time::Duration,
    req: Request<UpstreamBody>,
) -> Result<Response<Incoming>, Failure> {
    match upstream::connect_for_upgrade(addr, transport, connect_timeout).await {
        Ok(UpgradeIo::Plain(io)) => upgrade_on(io, addr, req).await,
        Ok(UpgradeIo::Tls(io)) => upgrade_on(*io, addr, req).await,
        Err(reason) => Err(Failure::NotSent {
            reason,
            request: Box::new(req),
        }),
    }
}

/// The HTTP/1.1 exchange of an upgrade over `io`.
async fn upgrade_on<T>(
    io: T,
    addr: SocketAddr,
    req: Request<UpstreamBody>,
) -> Result<Response<Incoming>, Failure>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = Builder::new()
        .handshake(io)
        .await
        .map_err(Failure::Protocol)?;
    // `with_upgrades`: after a 101 the connection's task ends by handing
    // the socket to the response's `OnUpgrade`.
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream upgrade connection ended with an error");
        }
    });
    sender.send_request(req).await.map_err(Failure::Protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upgrade_option_is_found_among_others() {
        let mut h = HeaderMap::new();
        assert!(!connection_upgrade(&h));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(connection_upgrade(&h));
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!connection_upgrade(&h));
        h.append(CONNECTION, HeaderValue::from_static("upgrade"));
        assert!(connection_upgrade(&h));
        h.insert(CONNECTION, HeaderValue::from_static("upgrade-insecure"));
        assert!(!connection_upgrade(&h));
    }
}
