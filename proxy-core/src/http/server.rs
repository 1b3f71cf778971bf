//! Serving one downstream HTTP connection: HTTP/1.1 or h2c (prior
//! knowledge), detected on the first bytes, with graceful draining: on the
//! listener's drain signal HTTP/1 finishes the request in flight and closes,
//! HTTP/2 sends GOAWAY and finishes its open streams; on the hard signal
//! (the drain timeout passed) the connection is dropped.
//!
//! Idle connections are closed (gracefully) once a whole idle timeout
//! (`--idle-timeout`) passes with no request started and none in flight. This is also what
//! bounds a client that never finishes sending its headers. It is one timer
//! per connection rather than hyper's header-read timeout, which arms a
//! boxed timer for every request: about 2 µs per request in profiles.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

use super::forward::{Activity, ConnCtx, handle};
use crate::listeners::{ConnSignals, ListenerRt};

/// The connection builder shared by every HTTP listener.
pub(crate) fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        // See the module doc: idle (and slow-header) connections are
        // bounded per connection instead.
        .header_read_timeout(None::<std::time::Duration>);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024);
    b
}

/// Serves `stream` until the client closes it or the listener drains it.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerRt>,
    signals: ConnSignals,
) {
    let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let shared = listener.shared.clone();
    let ctx = Arc::new(ConnCtx {
        listener,
        peer_ip,
        activity: Activity::default(),
    });
    let watch = ctx.clone();
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
    });
    if signals.graceful.is_cancelled() {
        // Accepted just as the listener began to drain: the client sent
        // this connection a request in good faith. Serve one request, then
        // close (draining it now would close it unanswered).
        let mut once = shared.http.clone();
        once.http1().keep_alive(false);
        let conn = once.serve_connection(TokioIo::new(stream), service);
        tokio::select! {
            r = conn => if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "downstream connection ended with an error");
            },
            () = signals.hard.cancelled() => {}
        }
        return;
    }
    let conn = shared.http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // A connection is closed after between one and two idle periods.
    let period = shared.config.idle_timeout;
    let mut idle = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut seen = 0;
    let mut closing = false;
    // Set when the connection is being closed for idleness: a client that
    // never finishes its headers does not end the graceful shutdown, so
    // the connection is dropped one period later if still idle.
    let mut idle_since: Option<u64> = None;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            () = signals.graceful.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = signals.hard.cancelled() => break Ok(()),
            _ = idle.tick(), if !closing || idle_since.is_some() => {
                let started = watch.activity.started();
                let quiet = started == seen && watch.activity.in_flight() == 0;
                match idle_since {
                    Some(at) if quiet && at == started => break Ok(()),
                    Some(_) => idle_since = Some(started),
                    None if quiet => {
                        closing = true;
                        idle_since = Some(started);
                        conn.as_mut().graceful_shutdown();
                    }
                    None => {}
                }
                seen = started;
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "downstream connection ended with an error");
    }
}
