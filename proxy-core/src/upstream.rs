//! Upstream HTTP/1.1 connections, pooled per worker thread.
//!
//! Each worker keeps its own keep-alive pool keyed by endpoint address in a
//! thread-local: a request checks out a connection, and its response body
//! returns it when it ends. Nothing is shared between workers, so the pool
//! takes no lock and the connection's task runs on the same thread as the
//! request. A pooled connection the upstream closed meanwhile is skipped;
//! a request that a connection refused before sending anything is sent on
//! the next one (hyper hands the request back), so keep-alive races never
//! reach the client. A request that reached no upstream at all comes back
//! to the caller ([`Failure::NotSent`]) to be sent elsewhere. Idle connections are closed after 90 s.
//!
//! Connections are keyed by address only, so they survive any snapshot
//! change that keeps the endpoint (whatever cluster it moves to).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Body of an upstream request: the client's body, or nothing (requests
/// sent again after an upstream answered are exactly those with an empty
/// body).
pub(crate) type UpstreamBody = Either<Incoming, Empty<Bytes>>;

type Sender = SendRequest<UpstreamBody>;

/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Most idle connections kept per endpoint on one worker.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;
/// How often a worker drops expired and closed idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

struct Idle {
    sender: Sender,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::new(HashMap::new());
}

/// Why an upstream exchange failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing reached the upstream: no connection could be made (refused,
    /// unreachable, no answer within the connect timeout), or the new
    /// connection failed before a byte of the request was written. The
    /// request comes back untouched, body included, so another endpoint
    /// can take it: a retry is safe for any method.
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

/// A connection lent to one exchange; back in the worker's pool once the
/// response body has been read to its end, closed if it is dropped before.
#[derive(Debug)]
pub(crate) struct Lease {
    sender: Option<Sender>,
    addr: SocketAddr,
}

impl Lease {
    /// The response is complete: the connection can serve another request.
    pub(crate) fn release(&mut self) {
        if let Some(sender) = self.sender.take()
            && !sender.is_closed()
        {
            put(self.addr, sender);
        }
    }
}

fn take(addr: SocketAddr) -> Option<Sender> {
    IDLE.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.get_mut(&addr)?;
        // Most recently used first: fewer, warmer connections.
        while let Some(i) = idle.pop() {
            if !i.sender.is_closed() && i.since.elapsed() < IDLE_TIMEOUT {
                return Some(i.sender);
            }
        }
        None
    })
}

fn put(addr: SocketAddr, sender: Sender) {
    IDLE.with(|pool| {
        let mut pool = pool.borrow_mut();
        let idle = pool.entry(addr).or_default();
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
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
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, String> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("connect: {e}")),
        Err(_) => {
            return Err(format!(
                "connect: no connection within {} ms",
                timeout.as_millis()
            ));
        }
    };
    let _ = stream.set_nodelay(true);
    // An HTTP/1 handshake writes nothing: its failure sent nothing either.
    let (sender, conn) = Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // The connection's task runs on this worker, next to its requests.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sends `req` (origin-form URI, `Host` set) to `addr` on a pooled
/// connection, or a new one made within `connect_timeout`.
pub(crate) async fn send(
    addr: SocketAddr,
    connect_timeout: Duration,
    mut req: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Lease), Failure> {
    while let Some(mut sender) = take(addr) {
        // The previous exchange may still be winding down on the
        // connection's task; a closed connection fails here.
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => return Ok((resp, lease(sender, addr))),
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
    let mut sender = match connect(addr, connect_timeout).await {
        Ok(s) => s,
        Err(reason) => return Err(not_sent(reason, req)),
    };
    if let Err(e) = sender.ready().await {
        return Err(not_sent(format!("connection closed before use: {e}"), req));
    }
    match sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, lease(sender, addr))),
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

fn lease(sender: Sender, addr: SocketAddr) -> Lease {
    Lease {
        sender: Some(sender),
        addr,
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
        match send(addr, Duration::from_secs(1), post(addr)).await {
            Err(Failure::NotSent { reason, request }) => {
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
        match send(addr, Duration::from_secs(1), post(addr)).await {
            Err(Failure::Protocol(_)) => {}
            other => panic!("expected Protocol, got {other:?}"),
        }
        let seen = server.await.unwrap();
        assert!(seen.starts_with(b"POST /x HTTP/1.1"), "{seen:?}");
    }
}
