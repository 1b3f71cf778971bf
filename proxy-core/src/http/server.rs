//! Serving one downstream HTTP connection: HTTP/1.1 or HTTP/2 (h2c with
//! prior knowledge, or h2 negotiated by ALPN on a TLS listener, whose
//! plaintext side this is handed), detected on the first bytes, with graceful draining: on the
//! listener's drain signal HTTP/1 finishes the request in flight and closes,
//! HTTP/2 sends GOAWAY and finishes its open streams; on the hard signal
//! (the drain timeout passed) the connection is dropped.
//!
//! An HTTP/1.1 upgrade the upstream accepted (`101`, see
//! [`super::upgrade`]) turns the connection into a tunnel once hyper lets go
//! of it; the tunnel runs here, in the connection's task, so the listener's
//! drain waits for it and its hard stop ends it (see [`super::tunnel`]).
//!
//! # Limits against hostile clients
//! - Header read timeout (`--header-read-timeout`): a new connection must
//!   deliver its first HTTP/1 request head, or the whole HTTP/2 preface,
//!   within the timeout of being accepted, and every later HTTP/1 head must
//!   be complete within the timeout of its first byte; otherwise the
//!   connection is dropped (counted as `header_timeout`). This is what stops
//!   a slowloris client, and one that connects and sends nothing.
//! - Idle timeout (`--idle-timeout`): a connection with no request started
//!   and none in flight for that long is closed gracefully (`idle`).
//! - Request heads: at most [`MAX_HEADER_BYTES`] and [`MAX_HEADERS`]
//!   headers; HTTP/1 gets `431` and a close, HTTP/2 a stream reset.
//! - HTTP/2: at most [`MAX_CONCURRENT_STREAMS`] streams per connection, a
//!   keep-alive ping every [`H2_KEEPALIVE`] (the connection is closed when
//!   the answer does not come within as long), and the rapid-reset caps.
//!
//! Both timeouts run on one timer per connection that ticks at half the
//! shorter of the two, rather than hyper's header-read timeout, which arms a
//! boxed timer for every request (about 2 µs per request in profiles), also
//! runs while a keep-alive connection waits for its next request (so it
//! would close idle keep-alive connections after the header timeout, not
//! the idle timeout), and does not cover the protocol detection (a client
//! that sends nothing, or half of the HTTP/2 preface). The connection's
//! reads are watched through [`Watched`] instead: a few relaxed atomic
//! operations per read.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use http::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::MissedTickBehavior;

use super::conn::{Activity, ConnCtx};
use super::forward::handle;
use super::tunnel;
use crate::clock;
use crate::conn::{ConnSignals, ListenerRt};

/// Largest request head: the HTTP/1 read buffer (a head that does not fit
/// is answered 431) and the HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`.
/// Envoy's default is 60 KiB, nginx's 32 KiB.
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most header fields in an HTTP/1 request head (hyper's default, explicit).
pub(crate) const MAX_HEADERS: usize = 100;
/// Most concurrent streams per HTTP/2 connection. Each stream is a request
/// that may hold an upstream HTTP/1 connection, so this also caps how many
/// upstream connections one client connection can open (Go: 250, nginx: 128).
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 keep-alive: a ping after this long without a frame from the
/// client, and the connection is closed if the answer takes as long again.
pub(crate) const H2_KEEPALIVE: Duration = Duration::from_secs(20);
/// Streams the client reset before the server accepted them, pending at
/// once (CVE-2023-44487, "rapid reset"); more is a GOAWAY.
pub(crate) const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server reset because of the client's protocol errors
/// (CVE-2025-8671, "MadeYouReset"); more is a GOAWAY.
pub(crate) const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// The HTTP/2 client preface, which the protocol detection looks for.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The connection builder shared by every HTTP listener.
pub(crate) fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        // See the module doc: slow heads are bounded per connection.
        .header_read_timeout(None::<Duration>)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS);
    b
}

/// Serves `stream` (a TCP connection, or the plaintext side of a TLS one)
/// until the client closes it or the listener drains it.
pub(crate) async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    listener: Arc<ListenerRt>,
    signals: ConnSignals,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let shared = listener.shared.clone();
    let ctx = Arc::new(ConnCtx {
        listener,
        peer_ip,
        activity: Activity::default(),
        tunnel: Mutex::new(None),
    });
    // The header-read clock starts at the accept.
    ctx.activity.head_started();
    let io = TokioIo::new(Watched::new(stream, ctx.clone()));
    let watch = ctx.clone();
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
    });
    let stats = watch.listener.stats.closed.clone();
    let settings = &shared.config;
    let (idle_ms, head_ms) = (
        millis(settings.idle_timeout),
        millis(settings.header_read_timeout),
    );
    let check = (settings.idle_timeout.min(settings.header_read_timeout) / 2)
        .max(Duration::from_millis(50));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + check, check);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let drained = signals.graceful.is_cancelled();
    let mut once;
    let http = if drained {
        // Accepted just as the listener began to drain: the client sent
        // this connection a request in good faith. Serve one request, then
        // close (draining it now would close it unanswered).
        once = shared.http.clone();
        once.http1().keep_alive(false);
        &once
    } else {
        &shared.http
    };
    let conn = http.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let graceful = signals.graceful.cancelled();
    let hard = signals.hard.cancelled();
    tokio::pin!(graceful, hard);
    // The signals and the timer are polled only after they woke the task
    // (see [`SideWake`]), not on every read and write of the connection.
    let side = Arc::new(SideWake::default());
    let side_waker = Waker::from(side.clone());
    let mut closing = drained;
    let mut seen = 0;
    let mut active_at = clock::now_millis();
    let result = loop {
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Done(r));
            }
            side.register(cx.waker());
            if side.fired.swap(false, Ordering::AcqRel) {
                let mut scx = Context::from_waker(&side_waker);
                if hard.as_mut().poll(&mut scx).is_ready() {
                    return Poll::Ready(Event::Hard);
                }
                if !closing && graceful.as_mut().poll(&mut scx).is_ready() {
                    return Poll::Ready(Event::Graceful);
                }
                if tick.poll_tick(&mut scx).is_ready() {
                    return Poll::Ready(Event::Tick);
                }
            }
            Poll::Pending
        })
        .await;
        // Whatever did not fire is polled again next time (to stay armed).
        side.fired.store(true, Ordering::Release);
        match event {
            Event::Done(r) => break r,
            Event::Graceful => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            Event::Hard => break Ok(()),
            Event::Tick => {
                let now = clock::now_millis();
                let activity = &watch.activity;
                if activity.head_pending_for(now) >= head_ms {
                    // A head that never completes does not end a graceful
                    // shutdown either: drop the connection.
                    stats.header_timeout.inc();
                    tracing::debug!(%peer, "request head not complete within the header-read timeout; closing");
                    break Ok(());
                }
                let started = activity.started();
                if started != seen || activity.in_flight() > 0 {
                    seen = started;
                    active_at = now;
                }
                let quiet = now.saturating_sub(active_at);
                if quiet >= idle_ms && !closing {
                    closing = true;
                    stats.idle.inc();
                    conn.as_mut().graceful_shutdown();
                } else if quiet >= 2 * idle_ms && closing {
                    // Asked to close and still quiet a period later (a
                    // peer that never finishes its side): drop it.
                    break Ok(());
                }
            }
        }
    };
    if let Err(e) = result {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            // hyper answered these itself (431 or 400) before closing.
            if h.is_parse_too_large() {
                stats.header_too_large.inc();
            } else if h.is_parse() {
                stats.malformed.inc();
            }
        }
        tracing::debug!(%peer, error = %e, "downstream connection ended with an error");
        return;
    }
    // An upgrade the upstream accepted: hyper has let go of the
    // connection, which now carries the tunnel in this same task, so the
    // listener's drain still waits for it and its hard stop ends it.
    if let Some(t) = watch.take_tunnel()
        && !signals.hard.is_cancelled()
    {
        let ended = tunnel::run(t, &signals.hard, &watch.listener.stats).await;
        tracing::debug!(%peer, ?ended, "tunnel ended");
    }
}

/// What ended one wait of a connection's loop.
enum Event<E> {
    /// The connection is done.
    Done(Result<(), E>),
    /// The listener drains.
    Graceful,
    /// The drain timeout passed.
    Hard,
    /// The connection's timer ticked.
    Tick,
}

/// The waker the connection's signals and timer are polled with: it notes
/// that one of them fired and wakes the connection's task, so the loop
/// polls them only then. Polling them on every wake-up (every read and
/// write) would take each cancellation token's lock, which every
/// connection of the listener, on every worker, shares.
#[derive(Debug)]
struct SideWake {
    fired: AtomicBool,
    /// The connection's task (only that task and the wakers of its own
    /// signals touch it: uncontended).
    task: Mutex<Option<Waker>>,
}

impl Default for SideWake {
    fn default() -> Self {
        Self {
            // Poll everything once, to arm it.
            fired: AtomicBool::new(true),
            task: Mutex::new(None),
        }
    }
}

impl SideWake {
    fn register(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if !task.as_ref().is_some_and(|t| t.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            t.wake_by_ref();
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the first bytes of a connection said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detected {
    /// So far a prefix of the HTTP/2 preface: this many bytes of it.
    Preface(usize),
    /// HTTP/1: its request heads are timed.
    Http1,
    /// HTTP/2: its frames are bounded by the HTTP/2 settings and the idle
    /// timeout instead (a client may keep it open without requests).
    Http2,
}

impl Detected {
    /// The decision once `new` bytes follow: the same as hyper's version
    /// detection, HTTP/2 when the first 24 bytes are the preface, HTTP/1 at
    /// the first byte that differs.
    fn after(self, new: &[u8]) -> Self {
        let Detected::Preface(have) = self else {
            return self;
        };
        let take = new.len().min(H2_PREFACE.len() - have);
        if new[..take] != H2_PREFACE[have..have + take] {
            Detected::Http1
        } else if have + take == H2_PREFACE.len() {
            Detected::Http2
        } else {
            Detected::Preface(have + take)
        }
    }
}

/// The client's socket, watched on the way in: marks when the first byte of
/// a request head arrives, for the header-read timeout (see the module
/// doc). Writes go straight through.
struct Watched<S> {
    stream: S,
    ctx: Arc<ConnCtx>,
    detected: Detected,
}

impl<S> Watched<S> {
    fn new(stream: S, ctx: Arc<ConnCtx>) -> Self {
        Self {
            stream,
            ctx,
            detected: Detected::Preface(0),
        }
    }

    /// `new` bytes were read.
    fn received(&mut self, new: &[u8]) {
        if let Detected::Preface(_) = self.detected {
            self.detected = self.detected.after(new);
            if self.detected == Detected::Http2 {
                // The preface was the "head" a new HTTP/2 connection owed.
                self.ctx.activity.head_done();
                return;
            }
        }
        if self.detected != Detected::Http2 && self.ctx.activity.in_flight() == 0 {
            // Bytes with no request in flight start the next head (when
            // a request is in flight they are its body, or pipelined).
            self.ctx.activity.head_started();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.received(&buf.filled()[before..]);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_is_detected_like_hyper_does() {
        let start = Detected::Preface(0);
        assert_eq!(start.after(b"GET / HTTP/1.1\r\n"), Detected::Http1);
        assert_eq!(start.after(b"P"), Detected::Preface(1));
        // The preface a byte at a time stays undecided to its last byte.
        let mut d = start;
        for (i, b) in H2_PREFACE.iter().enumerate() {
            assert_eq!(d, Detected::Preface(i));
            d = d.after(std::slice::from_ref(b));
        }
        assert_eq!(d, Detected::Http2);
        // The preface with frames after it in one read.
        let mut read = H2_PREFACE.to_vec();
        read.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
        assert_eq!(start.after(&read), Detected::Http2);
        // A prefix, then garbage: HTTP/1 (which then fails to parse).
        assert_eq!(Detected::Preface(4).after(b" * HTTP/1.1"), Detected::Http1);
        assert_eq!(Detected::Preface(3).after(b"X"), Detected::Http1);
        assert_eq!(Detected::Http1.after(H2_PREFACE), Detected::Http1);
    }
}
