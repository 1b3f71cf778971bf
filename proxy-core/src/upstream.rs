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
//!   response body returns it when it ends. The connection has no task of
//!   its own: the request that holds it drives it ([`H1::drive`]), while
//!   it waits for the response head and then from the response body's
//!   `poll_frame`, so the request, the response head and the body are
//!   handled in one task with no wake-up between tasks, and a body that
//!   arrived with its head goes downstream in the same write as the head.
//!   A pooled connection the upstream closed meanwhile is found when it is
//!   next driven and skipped (and the sweeper drops those closed while
//!   idle); a request that a connection refused before sending anything is
//!   sent on the next one (hyper hands the request back), so keep-alive
//!   races never reach the client.
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
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use vane_model::UpstreamProtocol;

use crate::cluster::transport::{ALPN_H2, Transport, TransportStats};

/// Body of an upstream request: the client's body, or nothing (requests
/// sent again after an upstream answered are exactly those with an empty
/// body).
pub(crate) type UpstreamBody = Either<Incoming, Empty<Bytes>>;

type H2 = http2::SendRequest<UpstreamBody>;

/// The byte stream of an upstream HTTP/1.1 connection.
pub(crate) enum UpIo {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpIo::Plain(s) => s.is_write_vectored(),
            UpIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An upstream HTTP/1.1 connection: hyper's request handle and its
/// connection, which whoever holds this drives (no task of its own).
pub(crate) struct H1 {
    sender: http1::SendRequest<UpstreamBody>,
    /// `None` once the connection has ended. Boxed: it is large, and a
    /// connection moves in and out of the pool with every request.
    conn: Option<Box<http1::Connection<TokioIo<UpIo>, UpstreamBody>>>,
    addr: SocketAddr,
}

impl std::fmt::Debug for H1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1")
            .field("addr", &self.addr)
            .field("ended", &self.conn.is_none())
            .finish()
    }
}

impl H1 {
    /// Lets the connection make progress (write the request, read the
    /// response into its body); wakes `cx` when it can make more. Whether
    /// it is still open.
    pub(crate) fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        if let Poll::Ready(r) = Pin::new(conn.as_mut()).poll(cx) {
            if let Err(e) = r {
                tracing::debug!(addr = %self.addr, error = %e, "upstream connection ended with an error");
            }
            self.conn = None;
            return false;
        }
        true
    }

    fn is_closed(&self) -> bool {
        self.conn.is_none() || self.sender.is_closed()
    }

    /// Polls `fut` and, while it waits, the connection.
    fn poll_with<F: Future>(&mut self, fut: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut fut = fut;
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        self.drive(cx);
        fut.poll(cx)
    }

    /// Waits until the connection can take a request (the previous
    /// exchange wound down), or has closed.
    async fn ready(&mut self) -> hyper::Result<()> {
        poll_fn(|cx| {
            if let Poll::Ready(r) = self.sender.poll_ready(cx) {
                return Poll::Ready(r);
            }
            self.drive(cx);
            self.sender.poll_ready(cx)
        })
        .await
    }

    /// Sends `req` and waits for the response head, driving the connection.
    async fn exchange(
        &mut self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<UpstreamBody>>> {
        let mut answer = pin!(self.sender.try_send_request(req));
        poll_fn(|cx| self.poll_with(answer.as_mut(), cx)).await
    }

    /// Polls an idle connection once without a task to wake, so one the
    /// upstream closed notices it; whether it is still open.
    fn still_open(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop())) && !self.sender.is_closed()
    }
}

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
    conn: H1,
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
/// closed if it is dropped before. While lent, its holder drives it
/// ([`Lease::drive`]): the response body arrives through it. (An HTTP/2
/// connection is shared, never lent, and runs in its own task: its lease
/// holds nothing.)
#[derive(Debug)]
pub(crate) struct Lease {
    conn: Option<H1>,
    key: PoolKey,
}

impl Lease {
    /// The response is complete: the connection can serve another request.
    pub(crate) fn release(&mut self) {
        if let Some(conn) = self.conn.take()
            && !conn.is_closed()
        {
            put(self.key, conn);
        }
    }

    /// Drives the lent HTTP/1.1 connection (see [`H1::drive`]); whether
    /// there was one still open to drive.
    pub(crate) fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        self.conn.as_mut().is_some_and(|c| c.drive(cx))
    }
}

fn take(key: PoolKey) -> Option<H1> {
    IDLE.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.get_mut(&key)?;
        // Most recently used first: fewer, warmer connections.
        while let Some(i) = idle.pop() {
            if !i.conn.is_closed() && i.since.elapsed() < IDLE_TIMEOUT {
                return Some(i.conn);
            }
        }
        None
    })
}

fn put(key: PoolKey, conn: H1) {
    IDLE.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.entry(key).or_default();
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(Idle {
                conn,
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
                // Nothing drives an idle connection: look at each once.
                idle.retain_mut(|i| i.since.elapsed() < IDLE_TIMEOUT && i.conn.still_open());
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
        if transport.protocol == UpstreamProtocol::Http1 {
            return handshake_h1(UpIo::Plain(stream), addr).await;
        }
        return handshake_h2(TokioIo::new(stream), addr, &transport.stats).await;
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
    if h2 {
        handshake_h2(TokioIo::new(stream), addr, &transport.stats).await
    } else {
        handshake_h1(UpIo::Tls(Box::new(stream)), addr).await
    }
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

/// The HTTP/1.1 handshake over a connected stream (it writes nothing, so
/// its failure sent nothing either); the connection is driven by the
/// requests that use it.
async fn handshake_h1(io: UpIo, addr: SocketAddr) -> Result<Conn, String> {
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(Conn::H1(H1 {
        sender,
        conn: Some(Box::new(conn)),
        addr,
    }))
}

/// The HTTP/2 handshake over a connected stream; its connection's task
/// runs on this worker, next to its requests.
async fn handshake_h2<T>(io: T, addr: SocketAddr, stats: &TransportStats) -> Result<Conn, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
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
    while let Some(mut conn) = take(key) {
        // The previous exchange may still be winding down on the
        // connection; a closed connection fails here.
        if conn.ready().await.is_err() {
            continue;
        }
        match conn.exchange(req).await {
            Ok(resp) => return Ok((resp, lease(conn, key))),
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
    let mut conn = match connect(addr, transport, connect_timeout).await {
        Ok(Conn::H1(c)) => c,
        Ok(Conn::H2(s)) => {
            share_h2(key, s.clone());
            return send_h2(s, key, tls, req).await;
        }
        Err(reason) => return Err(not_sent(reason, req)),
    };
    if let Err(e) = conn.ready().await {
        return Err(not_sent(format!("connection closed before use: {e}"), req));
    }
    match conn.exchange(req).await {
        Ok(resp) => Ok((resp, lease(conn, key))),
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
        Ok(resp) => Ok((resp, Lease { conn: None, key })),
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

fn lease(conn: H1, key: PoolKey) -> Lease {
    Lease {
        conn: Some(conn),
        key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
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

    /// An upstream that answers each connection's requests `ok`, closing
    /// each connection after `per_conn` answers; counts its connections.
    async fn upstream(per_conn: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let seen = conns.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    for _ in 0..per_conn {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            let n = s.read(&mut chunk).await.unwrap();
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                        buf.drain(..end + 4);
                        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .unwrap();
                    }
                    // Closes the connection.
                });
            }
        });
        (addr, conns)
    }

    /// Reads `body` to its end, driving the lent connection as the
    /// downstream body does, then gives the connection back.
    async fn read_body(mut body: Incoming, mut lease: Lease) -> Vec<u8> {
        use http_body::Body as _;
        let mut out = Vec::new();
        loop {
            let frame = poll_fn(|cx| {
                let f = Pin::new(&mut body).poll_frame(cx);
                if f.is_pending() && lease.drive(cx) {
                    return Pin::new(&mut body).poll_frame(cx);
                }
                f
            })
            .await;
            match frame {
                Some(f) => out.extend_from_slice(&f.unwrap().into_data().unwrap()),
                None => break,
            }
        }
        lease.release();
        out
    }

    fn get(addr: SocketAddr) -> Request<UpstreamBody> {
        Request::builder()
            .uri("/")
            .header("host", addr.to_string())
            .body(Either::Right(Empty::new()))
            .unwrap()
    }

    #[tokio::test]
    async fn a_pooled_connection_is_reused_and_one_the_upstream_closed_is_skipped() {
        let (addr, conns) = upstream(2).await;
        let t = Transport::plain_http1();
        let timeout = Duration::from_secs(1);
        for i in 1..=5 {
            let (resp, lease) = send(addr, &t, timeout, get(addr)).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(
                read_body(resp.into_body(), lease).await,
                b"ok",
                "request {i}"
            );
        }
        // Two requests per connection: the pool reused each connection
        // until the upstream closed it, and no request saw the close.
        assert_eq!(conns.load(Ordering::SeqCst), 3);
        // The last connection answered one request and is still open; the
        // sweeper's look keeps it, and drops it once the upstream closed it.
        let key = (addr, t.key);
        let open = |key| {
            IDLE.with(|p| {
                p.borrow_mut().get_mut(&key).map_or(0, |v| {
                    v.iter_mut()
                        .map(|i| i.conn.still_open())
                        .filter(|o| *o)
                        .count()
                })
            })
        };
        assert_eq!(open(key), 1);
        let (resp, lease) = send(addr, &t, timeout, get(addr)).await.unwrap();
        assert_eq!(read_body(resp.into_body(), lease).await, b"ok");
        let deadline = Instant::now() + Duration::from_secs(5);
        while open(key) > 0 {
            assert!(
                Instant::now() < deadline,
                "the closed connection still looks open"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
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
