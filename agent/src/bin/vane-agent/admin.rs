//! The sidecar's admin endpoint: `GET /status` (JSON), `/healthz`, `/metrics`.
//!
//! At most [`MAX_CONNECTIONS`] connections are open at once (more are
//! accepted and closed at once), and each must send a whole request within
//! [`REQUEST_TIMEOUT`] of connecting or of its previous answer, or it is
//! closed, so idle and slowloris clients cannot hold the port (or stall the
//! graceful shutdown, which waits for open connections).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use vane_agent::AgentHandle;

/// Most admin connections open at once: scrapes and health checks need a
/// handful.
const MAX_CONNECTIONS: usize = 256;
/// How long a client has to send a whole request, after connecting or after
/// its previous answer (so also the keep-alive idle timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct AppState {
    agent: AgentHandle,
    registry: Arc<Registry>,
}

pub(crate) async fn serve(
    listener: TcpListener,
    agent: AgentHandle,
    mut stop: watch::Receiver<bool>,
) {
    let mut registry = Registry::default();
    agent.register_metrics(&mut registry);
    let (refused, timed_out) = (Counter::default(), Counter::default());
    registry.register(
        "vane_agent_admin_connections_refused",
        "Admin-endpoint connections closed at once because the endpoint was at its connection cap",
        refused.clone(),
    );
    registry.register(
        "vane_agent_admin_connections_timed_out",
        "Admin-endpoint connections closed because a request was not complete (or the connection idle) in time",
        timed_out.clone(),
    );
    let state = AppState {
        agent,
        registry: Arc::new(registry),
    };
    let app = Router::new()
        .route("/status", get(status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(state);
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let listener = GuardedListener {
        listener,
        limit: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        refused,
        timed_out,
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn status(State(s): State<AppState>) -> impl IntoResponse {
    axum::Json(s.agent.status())
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    // Refreshes the staleness and health gauges.
    let _ = s.agent.health();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        vane_agent::status::render_metrics(&s.registry),
    )
}

// The guard below is the same as vane-proxy's admin guard
// (proxy-core/src/admin/guard.rs); vane-proxy-core depends on this crate,
// not the other way round, so the sidecar keeps its own copy.

/// The admin listener: capped connections, each with a deadline.
struct GuardedListener {
    listener: TcpListener,
    limit: Arc<Semaphore>,
    refused: Counter,
    timed_out: Counter,
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: log and pause
                    // instead of spinning. A peer that gave up is no news.
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
                // Closed at once: the client learns now, the backlog stays short.
                self.refused.inc();
                tracing::debug!(%peer, "admin endpoint at its connection cap; closing");
                continue;
            };
            let io = Guarded {
                stream,
                deadline: Box::pin(tokio::time::sleep(REQUEST_TIMEOUT)),
                timed_out: Some(self.timed_out.clone()),
                _permit: permit,
            };
            return (io, peer);
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An admin connection's socket. Its deadline starts at the accept and is
/// pushed back by [`REQUEST_TIMEOUT`] whenever the server writes (it is
/// answering a request that arrived); reads never push it back, so
/// trickling bytes buys a slowloris client nothing. When it passes, the
/// blocked read or write fails and hyper closes the connection.
struct Guarded {
    stream: TcpStream,
    deadline: Pin<Box<Sleep>>,
    /// Taken when the deadline first passes, so it is counted once.
    timed_out: Option<Counter>,
    _permit: OwnedSemaphorePermit,
}

impl Guarded {
    /// When the socket would block: the error once the deadline has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.deadline.as_mut().poll(cx).is_pending() {
            return None;
        }
        if let Some(c) = self.timed_out.take() {
            c.inc();
        }
        Some(io::Error::new(
            io::ErrorKind::TimedOut,
            "admin connection: no complete request within the timeout",
        ))
    }

    fn written(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.deadline
                    .as_mut()
                    .reset(Instant::now() + REQUEST_TIMEOUT);
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
