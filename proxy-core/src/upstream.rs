//! Upstream connections, pooled per worker thread: HTTP/1.1 and HTTP/2,
//! plaintext or TLS, as each cluster's [`Transport`] says.
//!
//! Each worker keeps its own pools in thread-locals, keyed by endpoint
//! address and the transport's pool key (a hash of the protocol and the TLS
//! setting, so a changed CA or SNI never reuses a connection made under the
//! old one): nothing is shared between workers, so the pools take no lock
//! and a connection's task runs on the same thread as its requests.
//!
//! - HTTP/1.1: a request checks out a keep-alive connection, and its
//!   response body returns it when it ends. A pooled connection the
//!   upstream closed meanwhile is skipped; a request that a connection
//!   refused before sending anything is sent on the next one (hyper hands
//!   the request back), so keep-alive races never reach the client.
//! - HTTP/2 (`http2`: prior knowledge in plaintext, ALPN `h2` over TLS;
//!   `auto`: whatever ALPN picked): one multiplexed connection per endpoint
//!   and worker, shared by every request; a closed one is replaced by the
//!   next request. Its task ends when the upstream closes it or when the
//!   pool forgets it (closed, or unused for the idle timeout) and its last
//!   stream ends. Request and response trailers pass through (gRPC).
//!
//! A request that reached no upstream at all (the connect, the TLS
//! handshake or the HTTP/2 preface failed) comes back to the caller
//! ([`Failure::NotSent`]) to be sent elsewhere. Idle connections are
//! closed after 90 s.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use vane_model::UpstreamProtocol;

use crate::cluster::transport::{ALPN_H2, Transport, TransportStats};

/// Body of an upstream request: the client's body, or nothing (requests
/// sent again after an upstream answered are exactly those with an empty
/// body).
pub(crate) type UpstreamBody = Either<Incoming, Empty<Bytes>>;

type H1 = http1::SendRequest<UpstreamBody>;
type H2 = http2::SendRequest<UpstreamBody>;

/// Endpoint address and transport pool key.
type PoolKey = (SocketAddr, u64);

/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Most idle connections kept per endpoint on one worker.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;
/// How often a worker drops expired and closed idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// HTTP/2 PING interval, and how long its answer may take: a dead shared
/// connection is found and replaced rather than failing every request.
const H2_PING_EVERY: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

struct Idle {
    sender: H1,
    since: Instant,
}

/// A worker's HTTP/2 connection to one endpoint, shared by its requests.
struct Shared {
    sender: H2,
    /// Last handed out.
    used: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<PoolKey, Vec<Idle>>> = RefCell::new(HashMap::new());
    static H2S: RefCell<HashMap<PoolKey, Shared>> = RefCell::new(HashMap::new());
}

/// Why an upstream exchange failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing reached the upstream: no connection could be made (refused,
    /// unreachable, no answer within the connect timeout, a failed TLS
    /// handshake), or the new connection failed before a byte of the
    /// request was written. The request comes back untouched, body
    /// included, so another endpoint can take it: a retry is safe for any
    /// method.
    NotSent {
        /// What went wrong.
        reason: String,
        /// The request, as it was handed to [`send`].
        request: Box<Request<UpstreamBody>>,
    },
    /// The connection failed after the request was (possibly) written: the
    /// upstream may have acted on it.
    Protocol(hyper::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotSent { reason, .. } => write!(f, "not sent: {reason}"),
            Failure::Protocol(e) => write!(f, "{e}"),
        }
    }
}

/// A connection lent to one exchange; an HTTP/1.1 one goes back to the
/// worker's pool once the response body has been read to its end, and is
/// closed if it is dropped before. (An HTTP/2 connection is shared, never
/// lent: its lease holds nothing.)
#[derive(Debug)]
pub(crate) struct Lease {
    sender: Option<H1>,
    key: PoolKey,
}

impl Lease {
    /// The response is complete: the connection can serve another request.
    pub(crate) fn release(&mut self) {
        if let Some(sender) = self.sender.take()
            && !sender.is_closed()
        {
            put(self.key, sender);
        }
    }
}

fn take(key: PoolKey) -> Option<H1> {
    IDLE.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.get_mut(&key)?;
        // Most recently used first: fewer, warmer connections.
        while let Some(i) = idle.pop() {
            if !i.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT {
                return Some(i.sender);
            }
        }
        None
    })
}

fn put(key: PoolKey, sender: H1) {
    IDLE.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.entry(key).or_default();
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    });
}

/// The worker's open HTTP/2 connection to `key`, if any.
fn shared_h2(key: PoolKey) -> Option<H2> {
    H2S.with(|pool| {
        let mut pool = pool.borrow_mut();
        let shared = pool.get_mut(&key)?;
        if shared.sender.is_closed() {
            pool.remove(&key);
            return None;
        }
        shared.used = Instant::now();
        Some(shared.sender.clone())
    })
}

fn share_h2(key: PoolKey, sender: H2) {
    H2S.with(|pool| {
        pool.borrow_mut().insert(
            key,
            Shared {
                sender,
                used: Instant::now(),
            },
        );
    });
}

/// Drops this worker's expired and closed idle connections every 30 s
/// until `stop`.
pub(crate) async fn sweeper(stop: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        IDLE.with(|pool| {
            let mut pool = pool.borrow_mut();
            for idle in pool.values_mut() {
                idle.retain(|i| !i.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT);
            }
            pool.retain(|_, idle| !idle.is_empty());
        });
        // A forgotten HTTP/2 connection still serves its open streams;
        // it closes when the last one ends.
        H2S.with(|pool| {
            pool.borrow_mut()
                .retain(|_, s| !s.sender.is_closed() && s.used.elapsed() < IDLE_TIMEOUT);
        });
    }
}

/// A new connection, ready for requests.
enum Conn {
    H1(H1),
    H2(H2),
}

/// Connects to `addr` as `transport` says, TLS handshake and HTTP/2
/// preface included, all within `timeout`.
async fn connect(
    addr: SocketAddr,
    transport: &Transport,
    timeout: Duration,
) -> Result<Conn, String> {
    match tokio::time::timeout(timeout, connect_now(addr, transport)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "connect: no connection within {} ms",
            timeout.as_millis()
        )),
    }
}

async fn connect_now(addr: SocketAddr, transport: &Transport) -> Result<Conn, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let Some(tls) = &transport.tls else {
        let h2 = transport.protocol != UpstreamProtocol::Http1;
        return handshake(TokioIo::new(stream), h2, addr, &transport.stats).await;
    };
    let stream = match TlsConnector::from(tls.config.clone())
        .connect(tls.server_name(addr.ip()), stream)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            transport.stats.tls_failures.inc();
            tracing::warn!(%addr, error = %e, "TLS handshake with an upstream failed");
            return Err(format!("TLS handshake: {e}"));
        }
    };
    let h2 = match transport.protocol {
        UpstreamProtocol::Http1 => false,
        // Asked for by ALPN; an endpoint that does not answer `h2` is still
        // spoken to in HTTP/2, as the cluster says (prior knowledge).
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Auto => stream.get_ref().1.alpn_protocol() == Some(ALPN_H2),
    };
    handshake(TokioIo::new(stream), h2, addr, &transport.stats).await
}

/// A connection for an HTTP/1.1 upgrade, never pooled: plaintext or TLS
/// (offering only `http/1.1` by ALPN), as the cluster says.
pub(crate) enum UpgradeIo {
    /// Plaintext.
    Plain(TokioIo<TcpStream>),
    /// TLS.
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

/// Connects to `addr` for an upgrade, within `timeout`. A cluster spoken to
/// in HTTP/2 without TLS (prior knowledge) cannot take an HTTP/1.1
/// upgrade: an error, and nothing was sent.
pub(crate) async fn connect_for_upgrade(
    addr: SocketAddr,
    transport: &Transport,
    timeout: Duration,
) -> Result<UpgradeIo, String> {
    if transport.tls.is_none() && transport.protocol == UpstreamProtocol::Http2 {
        return Err("the cluster speaks HTTP/2 only: no HTTP/1.1 upgrade".to_owned());
    }
    let connect = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &transport.tls else {
            return Ok(UpgradeIo::Plain(TokioIo::new(stream)));
        };
        match TlsConnector::from(tls.config_http1.clone())
            .connect(tls.server_name(addr.ip()), stream)
            .await
        {
            Ok(s) => Ok(UpgradeIo::Tls(Box::new(TokioIo::new(s)))),
            Err(e) => {
                transport.stats.tls_failures.inc();
                tracing::warn!(%addr, error = %e, "TLS handshake with an upstream failed");
                Err(format!("TLS handshake: {e}"))
            }
        }
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "connect: no connection within {} ms",
            timeout.as_millis()
        )),
    }
}

/// The HTTP handshake over a connected stream; its connection's task runs
/// on this worker, next to its requests.
async fn handshake<T>(
    io: T,
    h2: bool,
    addr: SocketAddr,
    stats: &TransportStats,
) -> Result<Conn, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if !h2 {
        // An HTTP/1 handshake writes nothing: its failure sent nothing either.
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
            }
        });
        return Ok(Conn::H1(sender));
    }
    // The preface and SETTINGS go out before any request.
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_EVERY)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .handshake(io)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    stats.h2_opened.inc();
    let active = stats.h2_active.clone();
    active.inc();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended with an error");
        }
        active.dec();
    });
    Ok(Conn::H2(sender))
}

/// Sends `req` (origin-form URI, `Host` set) to `addr` through
/// `transport`, on a pooled connection or a new one made within
/// `connect_timeout`.
pub(crate) async fn send(
    addr: SocketAddr,
    transport: &Transport,
    connect_timeout: Duration,
    mut req: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Lease), Failure> {
    let key = (addr, transport.key);
    let tls = transport.tls.is_some();
    if transport.protocol != UpstreamProtocol::Http1
        && let Some(sender) = shared_h2(key)
    {
        return send_h2(sender, key, tls, req).await;
    }
    while let Some(mut sender) = take(key) {
        // The previous exchange may still be winding down on the
        // connection's task; a closed connection fails here.
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, lease(sender, key))),
            Err(mut e) => match e.take_message() {
                // Not sent: the upstream closed this idle connection just
                // now. Try the next one.
                Some(r) => req = r,
                None => return Err(Failure::Protocol(e.into_error())),
            },
        }
    }
    let not_sent = |reason: String, request| Failure::NotSent {
        reason,
        request: Box::new(request),
    };
    let mut sender = match connect(addr, transport, connect_timeout).await {
        Ok(Conn::H1(s)) => s,
        Ok(Conn::H2(s)) => {
            share_h2(key, s.clone());
            return send_h2(s, key, tls, req).await;
        }
        Err(reason) => return Err(not_sent(reason, req)),
    };
    if let Err(e) = sender.ready().await {
        return Err(not_sent(format!("connection closed before use: {e}"), req));
    }
    match sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, lease(sender, key))),
        Err(mut e) => match e.take_message() {
            // hyper hands the request back when the connection failed
            // before it began writing it (refused or reset at once).
            Some(r) => Err(not_sent(
                format!(
                    "connection failed before the request was written: {}",
                    e.into_error()
                ),
                r,
            )),
            None => Err(Failure::Protocol(e.into_error())),
        },
    }
}

/// One exchange on a shared HTTP/2 connection.
async fn send_h2(
    mut sender: H2,
    key: PoolKey,
    tls: bool,
    req: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Lease), Failure> {
    match sender.try_send_request(to_h2(req, tls)).await {
        Ok(resp) => Ok((resp, Lease { sender: None, key })),
        Err(mut e) => match e.take_message() {
            Some(r) => Err(Failure::NotSent {
                reason: format!(
                    "HTTP/2 connection failed before the request was sent: {}",
                    e.into_error()
                ),
                request: Box::new(to_h1(r)),
            }),
            None => Err(Failure::Protocol(e.into_error())),
        },
    }
}

/// An origin-form request with `Host`, in HTTP/2's form: the host moves to
/// the URI's authority (`:authority`), the scheme is the connection's. A
/// `Host` that is not a valid authority stays a header (and the request
/// goes out with the `http` scheme and no `:authority`).
fn to_h2(mut req: Request<UpstreamBody>, tls: bool) -> Request<UpstreamBody> {
    let authority = req
        .headers()
        .get(HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok());
    let Some(authority) = authority else {
        return req;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
        req.headers_mut().remove(HOST);
        *req.version_mut() = Version::HTTP_2;
    }
    req
}

/// [`to_h2`] undone, for a request handed back to be sent elsewhere.
fn to_h1(mut req: Request<UpstreamBody>) -> Request<UpstreamBody> {
    if let Some(a) = req.uri().authority()
        && !req.headers().contains_key(HOST)
        && let Ok(v) = http::HeaderValue::from_str(a.as_str())
    {
        req.headers_mut().insert(HOST, v);
    }
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
    *req.version_mut() = Version::HTTP_11;
    req
}

fn lease(sender: H1, key: PoolKey) -> Lease {
    Lease {
        sender: Some(sender),
        key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn post(addr: SocketAddr) -> Request<UpstreamBody> {
        Request::builder()
            .method("POST")
            .uri("/x")
            .header("host", addr.to_string())
            .header("content-length", "0")
            .body(Either::Right(Empty::new()))
            .unwrap()
    }

    /// A port nothing listens on (bound, then closed).
    async fn dead_addr() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn a_refused_connect_sent_nothing_and_hands_the_request_back() {
        let addr = dead_addr().await;
        match send(
            addr,
            &Transport::plain_http1(),
            Duration::from_secs(1),
            post(addr),
        )
        .await
        {
            Err(Failure::NotSent {
                reason, request, ..
            }) => {
                assert!(reason.starts_with("connect:"), "{reason}");
                assert_eq!(request.method(), "POST");
                assert_eq!(request.uri(), "/x");
            }
            other => panic!("expected NotSent, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_connection_that_dies_after_reading_the_request_is_not_unsent() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before the request arrived");
                seen.extend_from_slice(&buf[..n]);
            }
            // The request arrived; the upstream dies without answering.
            s.shutdown().await.unwrap();
            seen
        });
        match send(
            addr,
            &Transport::plain_http1(),
            Duration::from_secs(1),
            post(addr),
        )
        .await
        {
            Err(Failure::Protocol(_)) => {}
            other => panic!("expected Protocol, got {other:?}"),
        }
        let seen = server.await.unwrap();
        assert!(seen.starts_with(b"POST /x HTTP/1.1"), "{seen:?}");
    }

    #[test]
    fn the_http2_form_carries_the_host_as_authority_and_comes_back() {
        let req = to_h2(post("10.0.0.1:80".parse().unwrap()), true);
        assert_eq!(req.uri(), "https://10.0.0.1:80/x");
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(req.headers().get(HOST).is_none());
        let back = to_h1(req);
        assert_eq!(back.uri(), "/x");
        assert_eq!(back.headers()[HOST], "10.0.0.1:80");
        assert_eq!(back.version(), Version::HTTP_11);
        // A host that is no authority stays a header.
        let mut odd = post("10.0.0.1:80".parse().unwrap());
        odd.headers_mut()
            .insert(HOST, http::HeaderValue::from_static("a b"));
        let odd = to_h2(odd, false);
        assert_eq!(odd.uri(), "/x");
        assert_eq!(odd.headers()[HOST], "a b");
    }
}
