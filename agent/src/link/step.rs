//! The steps of the link: for each [`State`], the one thing it waits for
//! (a timer, a connect, the next response, a heartbeat tick, a change of
//! the data plane's health, the moment that change is due) and the
//! [`Event`] that ends the wait. Every wait also watches for shutdown. The
//! steps change nothing themselves; the machine's transition does. (They
//! only move the session's queued answer to the wire, and hold a response
//! that changes what the stream says of the store until the machine has
//! taken that change in.)

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use vane_proto as pb;

use crate::apply::Applier;
use crate::config::AgentConfig;
use crate::report::HealthReport;

use super::error::LinkError;
use super::machine::{Event, State};
use super::respond::{self, Answered, StoreReach};
use super::session::{HEALTHY_STREAM_AFTER, QUIET_CONFIRM_AFTER, REQUEST_QUEUE, Session};
use super::transport::Transport;

/// What the steps need: the settings, the apply path, the way to the
/// servers and the shutdown signal.
pub(crate) struct Steps<T> {
    pub(crate) config: Arc<AgentConfig>,
    pub(crate) applier: Arc<Applier>,
    pub(crate) transport: T,
    /// Turns true (or its sender goes away) when the agent stops.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The embedder's latest data-plane health report; marked seen each
    /// time it is put on a request.
    pub(crate) health: watch::Receiver<Option<HealthReport>>,
}

impl<T: Transport> Steps<T> {
    /// Waits for what `state` waits for and says what happened.
    pub(crate) async fn step(&mut self, state: &mut State) -> Event {
        if *self.shutdown.borrow() {
            return Event::Shutdown;
        }
        match state {
            State::Idle => Event::Ready,
            State::BreakerOpen { until } | State::Backoff { until } => {
                let until = *until;
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => Event::Ready,
                    _ = self.shutdown.changed() => Event::Shutdown,
                }
            }
            State::Connecting { server } => self.connect(*server).await,
            State::Streaming(session) => self.stream(session).await,
            State::Stopped => Event::Shutdown,
        }
    }

    /// Opens a watch on `server`, saying who this agent is and what it runs.
    async fn connect(&mut self, server: usize) -> Event {
        let (requests, outbound) = mpsc::channel(REQUEST_QUEUE);
        let mut hello = respond::hello(&self.config, &self.applier.shared.current.load());
        hello.health = self.health_now();
        if requests.try_send(hello).is_err() {
            return Event::Failed(LinkError::Closed);
        }
        let opened = tokio::select! {
            opened = self.transport.open(server, outbound) => opened,
            _ = self.shutdown.changed() => return Event::Shutdown,
        };
        match opened {
            Ok(inbound) => Event::Opened(Box::new(Session::new(
                server,
                inbound,
                requests,
                self.config.heartbeat_interval,
                Instant::now(),
            ))),
            Err(error) => Event::Failed(error),
        }
    }

    /// On an open stream: sends the pending answer, else applies the held
    /// response, else leaves the stream if the machine decided so, else
    /// waits for the next response (a store notice, or a version to apply),
    /// a heartbeat tick or one of the stream's milestones.
    async fn stream(&mut self, session: &mut Session) -> Event {
        if let Some(mut answer) = session.pending.take() {
            answer.health = self.health_now();
            return tokio::select! {
                sent = session.requests.send(answer) => match sent {
                    Ok(()) => Event::Sent,
                    Err(_) => Event::Failed(LinkError::Closed),
                },
                _ = self.shutdown.changed() => Event::Shutdown,
            };
        }
        if let Some(response) = session.held.take() {
            return self.respond(response).await;
        }
        if session.leaving {
            return Event::Failed(LinkError::StoreUnreachable);
        }
        let quiet = session.opened_at + QUIET_CONFIRM_AFTER;
        let healthy = session.opened_at + HEALTHY_STREAM_AFTER;
        // Only waited for while one is due (the value is unused otherwise).
        let health_due = session.health_due.unwrap_or(quiet);
        let message = tokio::select! {
            message = session.inbound.next() => Some(message),
            _ = session.heartbeats.tick() => {
                let mut beat = respond::heartbeat(&self.config, &self.applier.shared.current.load());
                beat.health = respond::health(self.health.borrow_and_update().as_ref());
                // A full queue already holds a request the server will
                // see, which says as much as a heartbeat would; but not the
                // latest health, perhaps: let that go on its own, once
                // there is room.
                return match session.requests.try_send(beat) {
                    Ok(()) => Event::Sent,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.health.mark_changed();
                        Event::Sent
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => Event::Failed(LinkError::Closed),
                };
            }
            _ = tokio::time::sleep_until(quiet), if !session.confirmed => {
                return Event::QuietConfirmed;
            }
            _ = tokio::time::sleep_until(healthy), if !session.delivered => {
                return Event::Healthy;
            }
            () = health_changed(&mut self.health), if session.health_due.is_none() => {
                return Event::HealthChanged;
            }
            _ = tokio::time::sleep_until(health_due), if session.health_due.is_some() => None,
            _ = self.shutdown.changed() => return Event::Shutdown,
        };
        let Some(message) = message else {
            return self.send_health(session).await;
        };
        let response = match message {
            Some(Ok(response)) => response,
            Some(Err(error)) => return Event::Failed(error),
            None => return Event::Failed(LinkError::Closed),
        };
        let reach = StoreReach::of(&response);
        if respond::is_notice(&response) {
            return Event::Store(reach);
        }
        if reach.is_reachable() == session.store_unreachable {
            // The machine hears of the store first, so that the answer to
            // this response is judged by what is true now.
            session.held = Some(response);
            return Event::Store(reach);
        }
        self.respond(response).await
    }

    /// The latest data-plane health, as a request carries it; marks it
    /// seen, so only a later change wakes the stream again.
    fn health_now(&mut self) -> Option<pb::Health> {
        respond::health(self.health.borrow_and_update().as_ref())
    }

    /// Sends the latest data-plane health on its own, in a heartbeat's shape
    /// (no node, no nonce): the server records it and takes it for nothing
    /// else (not an ACK of anything). Waits for room in the queue like an
    /// answer does: a change must not be lost to a full queue.
    async fn send_health(&mut self, session: &mut Session) -> Event {
        let mut beat = respond::heartbeat(&self.config, &self.applier.shared.current.load());
        beat.health = self.health_now();
        tokio::select! {
            sent = session.requests.send(beat) => match sent {
                Ok(()) => Event::HealthSent,
                Err(_) => Event::Failed(LinkError::Closed),
            },
            _ = self.shutdown.changed() => Event::Shutdown,
        }
    }

    /// Applies one response and builds its answer.
    async fn respond(&mut self, response: vane_proto::WatchResponse) -> Event {
        // The apply runs on a blocking thread that cannot be cancelled; on
        // shutdown we stop waiting for it (it finishes on its own, and its
        // answer is never sent).
        tokio::select! {
            Answered { verdict, answer } = respond::respond(&self.config, &self.applier, response) => {
                Event::Answered { verdict, answer: Box::new(answer) }
            }
            _ = self.shutdown.changed() => Event::Shutdown,
        }
    }
}

/// The next change of the data plane's health; never, once its sender is
/// gone (it lives as long as the agent, so only at the very end).
async fn health_changed(health: &mut watch::Receiver<Option<HealthReport>>) {
    if health.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
