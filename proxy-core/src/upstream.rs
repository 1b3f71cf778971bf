//! Upstream HTTP/1.1 connections, pooled per worker thread.
//!
//! Each worker keeps its own keep-alive pool keyed by endpoint address in a
//! thread-local: a request checks out a connection, and its response body
//! returns it when it ends. Nothing is shared between workers, so the pool
//! takes no lock and the connection's task runs on the same thread as the
//! request. A pooled connection the upstream closed meanwhile is skipped;
//! a request that a connection refused before sending anything is sent on
//! the next one (hyper hands the request back), so keep-alive races never
//! reach the client. Idle connections are closed after 90 s.
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

/// Body of an upstream request: the client's body, or nothing (retried
/// requests are exactly those with an empty body).
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
    /// No connection could be made (refused, unreachable, timed out):
    /// nothing was sent.
    Connect(String),
    /// The connection failed after (possibly) sending the request.
    Protocol(hyper::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect: {e}"),
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

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, Failure> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Failure::Connect(e.to_string())),
        Err(_) => {
            return Err(Failure::Connect(format!(
                "no connection within {} ms",
                timeout.as_millis()
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(Failure::Protocol)?;
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
    let mut sender = connect(addr, connect_timeout).await?;
    sender.ready().await.map_err(Failure::Protocol)?;
    match sender.try_send_request(req).await {
        Ok(resp) => Ok((resp, lease(sender, addr))),
        Err(e) => Err(Failure::Protocol(e.into_error())),
    }
}

fn lease(sender: Sender, addr: SocketAddr) -> Lease {
    Lease {
        sender: Some(sender),
        addr,
    }
}
