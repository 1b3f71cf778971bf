//! The body of a response the proxy sends downstream: the upstream's body
//! streamed through, or a small local error text. The upstream variant holds
//! the in-flight guard of its endpoint, so `least_request` counts a request
//! until its response body is done, not just until its headers arrive, and
//! the lease of its upstream connection, which goes back to the pool when
//! the body has been read to its end (an upgrade's connection, never
//! pooled, has none).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::conn::RequestGuard;
use crate::cluster::outlier::InFlight;
use crate::upstream::Lease;

#[derive(Debug)]
enum Kind {
    Upstream {
        body: Incoming,
        _in_flight: Option<InFlight>,
        lease: Option<Lease>,
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
    /// The upstream's body, streamed.
    pub(crate) fn upstream(body: Incoming, in_flight: Option<InFlight>, mut lease: Lease) -> Self {
        if body.is_end_stream() {
            // Nothing to read (HEAD, 204, empty): the connection is free now.
            lease.release();
        }
        Self {
            kind: Kind::Upstream {
                body,
                _in_flight: in_flight,
                lease: Some(lease),
            },
            _request: None,
        }
    }

    /// The upstream's body, from a connection that is not pooled.
    pub(crate) fn unpooled(body: Incoming, in_flight: Option<InFlight>) -> Self {
        Self {
            kind: Kind::Upstream {
                body,
                _in_flight: in_flight,
                lease: None,
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Upstream { body, lease, .. } => {
                let frame = Pin::new(&mut *body).poll_frame(cx);
                if let Some(lease) = lease {
                    match &frame {
                        Poll::Ready(None) => lease.release(),
                        Poll::Ready(Some(Ok(_))) if body.is_end_stream() => lease.release(),
                        _ => {}
                    }
                }
                frame
            }
            Kind::Local(text) => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body, .. } => body.is_end_stream(),
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
