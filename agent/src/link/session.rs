//! One open watch stream: what the state machine knows of it (which server,
//! since when, whether it delivered or confirmed anything, whether its
//! server reaches its store, the answer waiting to go out, when the data
//! plane's health is due) and the handles
//! its steps read and write through.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use vane_proto as pb;

use super::transport::Inbound;

/// A stream that stays up this long counts as having delivered, even if the
/// agent was already current and the server had nothing to send.
pub(crate) const HEALTHY_STREAM_AFTER: Duration = Duration::from_secs(10);

/// The server sends the head as soon as a stream opens unless the agent
/// already runs it. A new stream that stays silent this long therefore
/// confirms what the agent runs. Until then the open stream is only a
/// provisional confirmation: staleness keeps counting from the last real one.
pub(crate) const QUIET_CONFIRM_AFTER: Duration = Duration::from_secs(2);

/// Health requests (a change of the data plane's health, sent on its own)
/// go at most this often: the first change after a quiet spell goes at
/// once, a flapping data plane costs the server one request per second at
/// most (latest wins in between).
pub(crate) const HEALTH_MIN_GAP: Duration = Duration::from_secs(1);

/// Requests queued on a stream at most: the hello, then one answer per
/// response (each is sent before the next response is read) and heartbeats,
/// which are dropped rather than queued when the queue is full.
pub(crate) const REQUEST_QUEUE: usize = 4;

/// An open watch stream.
pub(crate) struct Session {
    /// Index of its server in the configuration.
    pub(crate) server: usize,
    pub(crate) opened_at: Instant,
    /// Whether it delivered: a response, or a quiet life of
    /// [`HEALTHY_STREAM_AFTER`]. The backoff starts over when it ends.
    pub(crate) delivered: bool,
    /// Whether the control plane confirmed what runs on it: an answered
    /// response, or a quiet start of [`QUIET_CONFIRM_AFTER`].
    pub(crate) confirmed: bool,
    /// The answer (ACK or NACK) to the last response, sent before anything
    /// else is read, so the server hears it only after the link status says
    /// what it means.
    pub(crate) pending: Option<pb::WatchRequest>,
    /// The last response was refused (NACK): what runs is not what the
    /// server sent, so nothing confirms it until the next ACK.
    pub(crate) refused: bool,
    /// The server said it cannot reach its store: nothing on this stream
    /// confirms what runs until it says it can again.
    pub(crate) store_unreachable: bool,
    /// Leave this stream (for another server) once the pending answer and
    /// the held response are dealt with.
    pub(crate) leaving: bool,
    /// A response that changed what the stream says of the store, held
    /// while the machine takes that change in: the step applies it next.
    pub(crate) held: Option<pb::WatchResponse>,
    /// The data plane's health changed since it was last sent: a health
    /// request goes at this instant (never sooner than [`HEALTH_MIN_GAP`]
    /// after the previous one).
    pub(crate) health_due: Option<Instant>,
    /// When the last health request went.
    pub(crate) health_sent_at: Option<Instant>,
    pub(crate) inbound: Inbound,
    /// Bounded ([`REQUEST_QUEUE`]): a server that stops reading cannot make
    /// the agent queue without end.
    pub(crate) requests: mpsc::Sender<pb::WatchRequest>,
    pub(crate) heartbeats: Interval,
}

impl Session {
    /// A stream to `server` opened at `opened_at`, with heartbeats due every
    /// `heartbeat_interval` from then on.
    pub(crate) fn new(
        server: usize,
        inbound: Inbound,
        requests: mpsc::Sender<pb::WatchRequest>,
        heartbeat_interval: Duration,
        opened_at: Instant,
    ) -> Self {
        let mut heartbeats =
            tokio::time::interval_at(opened_at + heartbeat_interval, heartbeat_interval);
        // A late tick is sent late, not made up for with a burst.
        heartbeats.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            server,
            opened_at,
            delivered: false,
            confirmed: false,
            pending: None,
            refused: false,
            store_unreachable: false,
            leaving: false,
            held: None,
            health_due: None,
            health_sent_at: None,
            inbound,
            requests,
            heartbeats,
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("server", &self.server)
            .field("opened_at", &self.opened_at)
            .field("delivered", &self.delivered)
            .field("confirmed", &self.confirmed)
            .field("pending", &self.pending.is_some())
            .field("refused", &self.refused)
            .field("store_unreachable", &self.store_unreachable)
            .field("leaving", &self.leaving)
            .field("held", &self.held.is_some())
            .field("health_due", &self.health_due)
            .finish_non_exhaustive()
    }
}
