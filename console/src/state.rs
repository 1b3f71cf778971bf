//! The console's state: the Admin service it calls, the [`Gate`] it asks
//! which buttons to show, and whether it listens on loopback only.

use std::sync::Arc;

use vane_proto::admin_server::Admin;

/// The one question the console asks the server directly: whether the
/// caller of a request may act (roll back, steer a rollout) on a group, as
/// the server's policy says. Only decides which buttons the page shows;
/// never audited.
pub trait Gate: Send + Sync + 'static {
    /// Whether the caller of the request with head `parts` may roll back
    /// `group` and pause, resume, promote or abort its rollout.
    fn may_operate(&self, parts: &http::request::Parts, group: &str) -> bool;
}

/// The console over an Admin service.
pub struct Console<A> {
    pub(crate) admin: A,
    pub(crate) gate: Arc<dyn Gate>,
    /// Whether it listens on loopback only: then API requests must name a
    /// loopback `Host` (DNS rebinding).
    pub(crate) loopback: bool,
}

impl<A> std::fmt::Debug for Console<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("loopback", &self.loopback)
            .finish_non_exhaustive()
    }
}

impl<A: Admin> Console<A> {
    /// The console calling `admin` for everything it shows and does, and
    /// `gate` for which buttons to show.
    pub fn new(admin: A, gate: impl Gate) -> Self {
        Self {
            admin,
            gate: Arc::new(gate),
            loopback: false,
        }
    }

    /// Whether the console's listener is on a loopback address (default:
    /// false). When it is, API requests whose `Host` is not a loopback
    /// name are refused: a foreign page whose DNS name was rebound to
    /// 127.0.0.1 cannot read or act through it.
    #[must_use]
    pub fn on_loopback(mut self, loopback: bool) -> Self {
        self.loopback = loopback;
        self
    }
}
