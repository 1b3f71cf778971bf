//! The sockets of an admin endpoint (metrics, health, status), bounded
//! against hostile or forgetful clients: a cap on open connections (more
//! are accepted and closed at once), and a deadline per connection, so that
//! neither a slowloris client nor an idle one can hold the port open (or
//! stall a graceful shutdown, which waits for open connections). Used by
//! `vane-control --admin-listen`, the `vane-agent` sidecar and `vane-proxy`,
//! which also take their termination signals from here ([`Termination`]).
//!
//! The deadline is enforced in the socket itself ([`Guarded`]), which works
//! under `axum::serve` whatever the protocol: it starts at the accept and
//! is pushed back by `timeout` each time the server writes (it is answering
//! a request that arrived). A client must therefore send a whole request
//! within `timeout` of connecting or of its previous answer, and a write
//! the client does not read for `timeout` ends the connection too. Reads
//! never push it back: trickling bytes buys a slowloris client nothing.
//!
//! Beside the sockets, what the three binaries share around them:
//! [`exposition`] (`/metrics` in the format the scraper asks for),
//! [`process`] (the `process_*` and `vane_build_info` series) and [`logs`]
//! (the logger and `--log-level`).
//!
//! The one exception is explicit: a handler that long-polls (the sidecar's
//! `GET /config?wait=…`) takes the connection's [`ConnHold`] (axum
//! `ConnectInfo`, see [`ConnHold`]) and holds the deadline off for a bounded
//! time while it waits; the hold ends when the handler drops it.

pub mod exposition;
pub mod logs;
pub mod process;
mod signal;

pub use signal::Termination;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Connections an admin endpoint serves at once unless configured: scrapes
/// and health checks need a handful; the cap keeps a flood of them from
/// taking file descriptors the process needs for its real work.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// A listener whose connections are capped and carry a deadline; serve it
/// with `axum::serve`.
pub struct GuardedListener {
    listener: TcpListener,
    limit: Arc<Semaphore>,
    max: usize,
    timeout: Duration,
    refused: Counter,
    timed_out: Counter,
}

impl GuardedListener {
    /// At most `max` connections open on `listener`, each closed when the
    /// client does not complete a request within `timeout` (see the module
    /// doc); the two counters count both kinds of close.
    pub fn new(
        listener: TcpListener,
        max: usize,
        timeout: Duration,
        refused: Counter,
        timed_out: Counter,
    ) -> Self {
        Self {
            listener,
            limit: Arc::new(Semaphore::new(max.max(1))),
            max,
            timeout,
            refused,
            timed_out,
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // The peer giving up before the accept is nobody's
                    // problem; anything else (out of file descriptors) is
                    // logged, and retried after a pause instead of a spin.
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) {
                        tracing::warn!(error = %e, "admin endpoint: accept failed; pausing");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            };
            let Ok(permit) = self.limit.clone().try_acquire_owned() else {
                // Closed at once, like the data plane's listeners: the
                // client learns at once, and the backlog stays short.
                self.refused.inc();
                tracing::debug!(%peer, max = self.max, "admin endpoint at its connection cap; closing");
                continue;
            };
            let io = Guarded {
                stream,
                deadline: Box::pin(tokio::time::sleep(self.timeout)),
                timeout: self.timeout,
                timed_out: Some(self.timed_out.clone()),
                hold: ConnHold::for_peer(peer),
                _permit: permit,
            };
            return (io, peer);
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An admin connection's socket with its deadline and its slot under the
/// cap (released when hyper drops the connection).
pub struct Guarded {
    stream: TcpStream,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    /// Taken when the deadline first passes, so it is counted once.
    timed_out: Option<Counter>,
    /// A handler's hold on the deadline (a long poll), if any.
    hold: ConnHold,
    _permit: OwnedSemaphorePermit,
}

/// A connection's deadline exception, for handlers that wait on purpose
/// (a long poll): while a [`Held`] from [`ConnHold::hold_for`] lives, the
/// connection is not closed for being quiet before its end. Serve with
/// `app.into_make_service_with_connect_info::<ConnHold>()` and extract
/// `ConnectInfo<ConnHold>`.
#[derive(Debug, Clone, Default)]
pub struct ConnHold(Arc<Mutex<Option<Instant>>>, Option<SocketAddr>);

impl ConnHold {
    fn for_peer(peer: SocketAddr) -> Self {
        Self(Arc::default(), Some(peer))
    }

    /// The client's address (None only for a hold made outside a listener).
    pub fn peer(&self) -> Option<SocketAddr> {
        self.1
    }

    /// Holds the deadline off for `d` from now (the caller bounds `d`), until
    /// the returned guard is dropped.
    #[must_use = "the hold ends when the guard is dropped"]
    pub fn hold_for(&self, d: Duration) -> Held {
        *self.slot() = Some(Instant::now() + d);
        Held(self.clone())
    }

    /// When the current hold ends, if one is held.
    fn until(&self) -> Option<Instant> {
        *self.slot()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // A plain value replaced whole: a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How long the connection stays exempt once a hold ends: the handler has
/// returned and its answer is still to be written, which must not fail on a
/// deadline that passed while it waited (nothing polled the socket then).
const RELEASE_GRACE: Duration = Duration::from_secs(5);

/// The guard of [`ConnHold::hold_for`]: dropping it ends the hold, after
/// [`RELEASE_GRACE`] for writing the answer (each write then pushes the
/// deadline back as usual).
#[derive(Debug)]
pub struct Held(ConnHold);

impl Drop for Held {
    fn drop(&mut self) {
        *self.0.slot() = Some(Instant::now() + RELEASE_GRACE);
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, GuardedListener>>
    for ConnHold
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, GuardedListener>) -> Self {
        stream.io().hold.clone()
    }
}

impl Guarded {
    /// Called when the socket would block: the connection's error once the
    /// deadline has passed (the sleep's waker is registered otherwise).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.deadline.as_mut().poll(cx).is_pending() {
            return None;
        }
        // A handler holds the connection open on purpose: wait until its
        // hold ends (polled again so the sleep's waker is registered).
        if let Some(until) = self.hold.until()
            && until > Instant::now()
        {
            self.deadline.as_mut().reset(until);
            if self.deadline.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
        if let Some(c) = self.timed_out.take() {
            c.inc();
        }
        Some(io::Error::new(
            io::ErrorKind::TimedOut,
            "admin connection: no complete request within the timeout",
        ))
    }

    /// The server wrote: it is answering, so the client gets another period.
    fn answered(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.timeout);
    }

    fn written(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.answered();
                Poll::Ready(Ok(n))
            }
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.written(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.written(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_flush(cx) {
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn guarded(max: usize, timeout: Duration) -> (GuardedListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let g = GuardedListener::new(l, max, timeout, Counter::default(), Counter::default());
        (g, addr)
    }

    #[tokio::test]
    async fn reads_never_extend_the_deadline_and_writes_do() {
        let (mut g, addr) = guarded(4, Duration::from_millis(300)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut io, _) = g.accept().await;
        let started = Instant::now();
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            // Bytes keep coming, yet the read side times out.
            loop {
                match io.read(&mut buf).await {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof),
                    Ok(_) => {}
                    Err(e) => return Ok((e.kind(), io)),
                }
            }
        });
        for _ in 0..20 {
            if client.write_all(b"G").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (kind, mut io) = server.await.unwrap().unwrap();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        // Once expired, a write pushes the deadline back (an answer).
        io.answered();
        assert!(io.deadline.deadline() > Instant::now());
    }

    #[tokio::test]
    async fn a_hold_defers_the_deadline_until_it_is_dropped() {
        let (mut g, addr) = guarded(4, Duration::from_millis(200)).await;
        let _client = TcpStream::connect(addr).await.unwrap();
        let (mut io, _) = g.accept().await;
        let held = io.hold.clone().hold_for(Duration::from_millis(800));
        let started = Instant::now();
        let mut buf = [0u8; 1];
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(750), "closed early: {took:?}");
        drop(held);
        // The answer gets a short grace to be written, no more.
        let until = io.hold.until().unwrap();
        assert!(until > Instant::now() && until <= Instant::now() + RELEASE_GRACE);
    }

    #[tokio::test]
    async fn over_the_cap_connections_are_closed_at_once() {
        let (mut g, addr) = guarded(1, Duration::from_secs(30)).await;
        let _first = TcpStream::connect(addr).await.unwrap();
        let (held, _) = g.accept().await;
        let accept = tokio::spawn(async move { g.accept().await.1 });
        // Over the cap: accepted and closed at once.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
            .await
            .expect("closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // A slot frees up: the next connection is served.
        drop(held);
        let third = TcpStream::connect(addr).await.unwrap();
        let peer = tokio::time::timeout(Duration::from_secs(5), accept)
            .await
            .expect("accepted once a slot is free")
            .unwrap();
        assert_eq!(peer, third.local_addr().unwrap());
    }
}
