//! The body of a response the proxy sends downstream: the upstream's body
//! streamed through, or a small local error text. The upstream variant holds
//! the in-flight guard of its endpoint, so `least_request` counts a request
//! until its response body is done, not just until its headers arrive, and
//! the lease of its upstream connection, which goes back to the pool when
//! the body has been read to its end (an upgrade's connection, never
//! pooled, has none).
//!
//! The upstream variant also enforces the route's timeouts on the body
//! (Envoy's semantics): the whole response must be done by the route's
//! deadline, and no pause between body frames may last the route's idle
//! timeout. A body cut by either ends with an error, which hyper turns into
//! a reset stream (HTTP/2) or a closed connection (HTTP/1.1): the client
//! sees a broken response, never a short one that looks complete. Cuts are
//! counted in `vane_proxy_upstream_errors{kind="response_timeout"|"response_idle"}`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::conn::RequestGuard;
use crate::cluster::outlier::InFlight;
use crate::cluster::{ClusterRt, UpstreamErrorKind};
use crate::upstream::Lease;

/// Why a downstream response body ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The upstream's body failed.
    #[error("upstream response body: {0}")]
    Upstream(#[from] hyper::Error),
    /// The route's timeout passed before the body's end.
    #[error("response not complete within the route's timeout")]
    Timeout,
    /// No frame for the route's idle timeout.
    #[error("no response bytes for the route's idle timeout ({0:?})")]
    Idle(Duration),
}

/// The route's limits on a response body.
#[derive(Debug)]
pub(crate) struct BodyLimits {
    /// The whole response's deadline (`None`: no limit).
    pub(crate) deadline: Option<Instant>,
    /// Longest pause between frames.
    pub(crate) idle: Duration,
    /// The cluster, whose counters count the cuts.
    pub(crate) cluster: Arc<ClusterRt>,
}

/// The running timers of a [`BodyLimits`], armed the first time the body
/// has to wait for the upstream (a body that arrived with its head never
/// arms them).
#[derive(Debug)]
struct Timers {
    deadline: Option<Pin<Box<Sleep>>>,
    idle: Pin<Box<Sleep>>,
    idle_for: Duration,
}

impl Timers {
    fn new(limits: &BodyLimits) -> Box<Self> {
        Box::new(Self {
            deadline: limits
                .deadline
                .map(|d| Box::pin(tokio::time::sleep_until(d))),
            idle: Box::pin(tokio::time::sleep(limits.idle)),
            idle_for: limits.idle,
        })
    }
}

/// Counts and logs a cut body (`limits` is there until the body ends,
/// and a body is only cut before).
fn cut_by(limits: &Option<BodyLimits>, kind: UpstreamErrorKind, e: BodyError) -> BodyError {
    match limits {
        Some(l) => cut(&l.cluster, kind, e),
        None => e,
    }
}

/// Counts and logs a cut body.
fn cut(cluster: &ClusterRt, kind: UpstreamErrorKind, e: BodyError) -> BodyError {
    cluster.upstream_error(kind).inc();
    tracing::debug!(cluster = %cluster.name, error = %e, "response body cut");
    e
}

#[derive(Debug)]
enum Kind {
    Upstream {
        body: Incoming,
        _in_flight: Option<InFlight>,
        lease: Option<Lease>,
        /// The route's limits (`None` for a body complete with its head).
        limits: Option<BodyLimits>,
        timers: Option<Box<Timers>>,
        /// Set once the body failed or was cut: nothing follows.
        done: bool,
    },
    Local(Option<Bytes>),
}

/// A downstream response body.
#[derive(Debug)]
pub(crate) struct ProxyBody {
    kind: Kind,
    /// Keeps the request counted on its connection until the body is sent.
    _request: Option<RequestGuard>,
}

impl ProxyBody {
    /// The upstream's body, streamed within `limits`.
    pub(crate) fn upstream(
        body: Incoming,
        in_flight: Option<InFlight>,
        mut lease: Lease,
        limits: BodyLimits,
    ) -> Self {
        let end = body.is_end_stream();
        if end {
            // Nothing to read (HEAD, 204, empty): the connection is free now.
            lease.release();
        }
        Self {
            kind: Kind::Upstream {
                body,
                _in_flight: in_flight,
                lease: Some(lease),
                limits: (!end).then_some(limits),
                timers: None,
                done: false,
            },
            _request: None,
        }
    }

    /// The upstream's body, from a connection that is not pooled.
    pub(crate) fn unpooled(
        body: Incoming,
        in_flight: Option<InFlight>,
        limits: BodyLimits,
    ) -> Self {
        let end = body.is_end_stream();
        Self {
            kind: Kind::Upstream {
                body,
                _in_flight: in_flight,
                lease: None,
                limits: (!end).then_some(limits),
                timers: None,
                done: false,
            },
            _request: None,
        }
    }

    /// No body (a `101 Switching Protocols`).
    pub(crate) fn empty() -> Self {
        Self {
            kind: Kind::Local(None),
            _request: None,
        }
    }

    /// A local body.
    pub(crate) fn local(text: Bytes) -> Self {
        Self {
            kind: Kind::Local(Some(text)),
            _request: None,
        }
    }

    /// Attaches the request's guard (see [`RequestGuard`]).
    pub(crate) fn hold(&mut self, guard: RequestGuard) {
        self._request = Some(guard);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().kind {
            Kind::Upstream {
                body,
                lease,
                limits,
                timers,
                done,
                ..
            } => {
                if *done {
                    return Poll::Ready(None);
                }
                // The deadline first: a body that streams without pause
                // must still end by it.
                if let Some(t) = timers
                    && let Some(d) = &mut t.deadline
                    && d.as_mut().poll(cx).is_ready()
                {
                    *done = true;
                    return Poll::Ready(Some(Err(cut_by(
                        limits,
                        UpstreamErrorKind::ResponseTimeout,
                        BodyError::Timeout,
                    ))));
                }
                let mut frame = Pin::new(&mut *body).poll_frame(cx);
                // A pooled HTTP/1.1 connection has no task of its own: the
                // body arrives as this drives it.
                if frame.is_pending() && lease.as_mut().is_some_and(|l| l.drive(cx)) {
                    frame = Pin::new(&mut *body).poll_frame(cx);
                }
                match &frame {
                    Poll::Ready(None) => {
                        if let Some(lease) = lease {
                            lease.release();
                        }
                        *timers = None;
                    }
                    Poll::Ready(Some(Ok(_))) => {
                        if body.is_end_stream() {
                            if let Some(lease) = lease {
                                lease.release();
                            }
                            *timers = None;
                        } else if let Some(t) = timers {
                            let next = Instant::now() + t.idle_for;
                            t.idle.as_mut().reset(next);
                        } else if let Some(l) = limits
                            && l.deadline.is_some_and(|d| Instant::now() >= d)
                        {
                            // Not armed yet (the body never waited): the
                            // deadline is read from the clock.
                            *done = true;
                            return Poll::Ready(Some(Err(cut_by(
                                limits,
                                UpstreamErrorKind::ResponseTimeout,
                                BodyError::Timeout,
                            ))));
                        }
                    }
                    Poll::Ready(Some(Err(_))) => *done = true,
                    Poll::Pending => {
                        // The first wait arms the timers (and registers
                        // them by polling: the deadline's was not polled
                        // above).
                        let armed = timers.is_none();
                        if armed && let Some(l) = limits {
                            *timers = Some(Timers::new(l));
                        }
                        if let Some(t) = timers {
                            if armed
                                && let Some(d) = &mut t.deadline
                                && d.as_mut().poll(cx).is_ready()
                            {
                                *done = true;
                                return Poll::Ready(Some(Err(cut_by(
                                    limits,
                                    UpstreamErrorKind::ResponseTimeout,
                                    BodyError::Timeout,
                                ))));
                            }
                            if t.idle.as_mut().poll(cx).is_ready() {
                                *done = true;
                                let e = BodyError::Idle(t.idle_for);
                                return Poll::Ready(Some(Err(cut_by(
                                    limits,
                                    UpstreamErrorKind::ResponseIdle,
                                    e,
                                ))));
                            }
                        }
                    }
                }
                frame.map(|f| f.map(|r| r.map_err(BodyError::from)))
            }
            Kind::Local(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body, done, .. } => *done || body.is_end_stream(),
            Kind::Local(text) => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Local(text) => SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64)),
        }
    }
}
