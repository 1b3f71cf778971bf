//! What one downstream HTTP connection knows about itself ([`ConnCtx`]):
//! its listener, its client's address, and its [`Activity`] (requests
//! started and in flight, and when the request head being received began),
//! which the connection's timer reads for the idle and header-read
//! timeouts. A [`RequestGuard`] counts one request from its head to the end
//! of its response body. An upgrade the upstream accepted leaves its
//! [`Tunnel`] here for the connection to run once hyper lets go of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::header::HeaderValue;

use super::tunnel::Tunnel;
use crate::clock;
use crate::conn::ListenerRt;

/// What a connection knows about itself, shared by its requests.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    /// The listener that accepted it.
    pub(crate) listener: Arc<ListenerRt>,
    /// The client's IP, ready for `x-forwarded-for`.
    pub(crate) peer_ip: HeaderValue,
    /// Requests on this connection, for its idle timeout.
    pub(crate) activity: Activity,
    /// The tunnel an accepted upgrade left (at most one: hyper serves no
    /// request after it). A std mutex: set once, taken once, never held
    /// across an await.
    pub(crate) tunnel: Mutex<Option<Tunnel>>,
}

impl ConnCtx {
    /// Leaves `tunnel` for the connection to run after its 101.
    pub(crate) fn leave_tunnel(&self, tunnel: Tunnel) {
        *self.tunnel.lock().unwrap_or_else(|p| p.into_inner()) = Some(tunnel);
    }

    /// The tunnel an upgrade left, if any.
    pub(crate) fn take_tunnel(&self) -> Option<Tunnel> {
        self.tunnel.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Requests started on one connection and requests in flight on it, and
/// when the request head being received began. Only that connection's
/// tasks touch these (same worker thread), so the atomics are never
/// contended.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    started: AtomicU64,
    in_flight: AtomicU64,
    /// Clock milliseconds + 1 when the first byte of the head being
    /// received arrived (or the connection was accepted); 0: no head
    /// pending.
    head_since: AtomicU64,
}

impl Activity {
    /// A request head began (the first call counts until [`Self::head_done`]).
    pub(crate) fn head_started(&self) {
        if self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since
                .store(clock::now_millis() + 1, Ordering::Relaxed);
        }
    }

    /// The head being received is complete (or none is expected).
    pub(crate) fn head_done(&self) {
        self.head_since.store(0, Ordering::Relaxed);
    }

    /// How long the head being received has been pending at `now` (clock
    /// milliseconds); 0 when none is.
    pub(crate) fn head_pending_for(&self, now: u64) -> u64 {
        match self.head_since.load(Ordering::Relaxed) {
            0 => 0,
            since => (now + 1).saturating_sub(since),
        }
    }

    /// Requests started so far.
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Requests whose response headers are not sent yet.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a request as in flight on its connection until its response
/// body has been sent (it rides along in the body).
#[derive(Debug)]
pub(crate) struct RequestGuard(Arc<ConnCtx>);

impl RequestGuard {
    /// A request's head is complete: it starts, and is in flight.
    pub(crate) fn new(ctx: Arc<ConnCtx>) -> Self {
        ctx.activity.head_done();
        ctx.activity.started.fetch_add(1, Ordering::Relaxed);
        ctx.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(ctx)
    }

    /// The connection the request arrived on.
    pub(crate) fn ctx(&self) -> &ConnCtx {
        &self.0
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
