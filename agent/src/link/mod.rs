//! The agent's link to the control plane: hold one watch stream to a
//! control server, feed every response through the apply path, answer ACK
//! or NACK; when the stream breaks, keep serving and reconnect behind the
//! backoff and the circuit breaker, rotating across servers.
//!
//! The link is a state machine in the manner of kube-rs's `watcher`: a
//! documented [`machine::State`], a step per state that waits for one
//! thing and reports it as a [`machine::Event`] (errors included, as
//! data), and one transition that decides the next state. [`run`] alternates
//! the two until shutdown.
//!
//! ```text
//!                      start
//!                        │
//!                        ▼          breaker open
//!   ┌─────────────────▶ Idle ─────────────────────────▶ BreakerOpen ◀───┐
//!   │                   │  ▲                                │           │
//!   │  breaker closed,  │  └────────── period over ─────────┘           │
//!   │  or its one       │                                               │
//!   │  half-open probe  ▼                                               │
//!   │               Connecting ── fails, and the breaker is open ───────┘
//!   │                   │   └──── fails ──────────────────────────┐
//!   │                   │ stream open: the breaker closes         │
//!   │                   ▼                                         │
//!   │               Streaming ◀──┐                                │
//!   │                   │  │     │ a response: apply, then ACK;   │
//!   │                   │  └─────┘ or NACK (the old version       │
//!   │                   │          stays); or "want full" after   │
//!   │                   │          an unusable delta. A heartbeat │
//!   │                   │          every heartbeat_interval.      │
//!   │                   │          The data plane's health: on    │
//!   │                   │          every request, and on its own  │
//!   │                   │          when it changes (≤ 1 per s).   │
//!   │                   │          Quiet 2 s: confirmed.          │
//!   │                   │          Up 10 s: delivered.            │
//!   │                   │ the stream ends or fails                │
//!   │                   ▼                                         │
//!   └── pause over ── Backoff ◀───────────────────────────────────┘
//!
//!   Backoff's pause: full jitter in [0, min(cap, base·2ⁿ)], and after a
//!   failed connect never longer than the breaker's open_for; exactly the
//!   cap after Unauthenticated, PermissionDenied, InvalidArgument or a TLS
//!   failure; n starts over after a stream that delivered. Failed connects
//!   count towards the breaker: at its threshold it opens for one period,
//!   uniform in [open_for/2, open_for] and counted from the start of the
//!   attempt that failed, then lets one probe through; a failed probe opens
//!   it for another period. So a server that answers again is found within
//!   open_for (3 s by default) whatever the outage's length, while a dead
//!   one sees at most one attempt per agent per open_for/2. The next
//!   attempt goes to the next server.
//!
//!   A server that says it cannot reach its store (store_unreachable on a
//!   response, or a store notice) confirms nothing while it says so; with
//!   another server configured, the agent answers what it applied and
//!   leaves it (Streaming ──▶ Backoff) as after a broken stream.
//!
//!   Shutdown, in every state that waits (BreakerOpen, Connecting,
//!   Streaming, Backoff) ──▶ Stopped
//! ```
//!
//! # Layout
//! - `machine.rs`: the states, the events and the transition: backoff,
//!   breaker, server rotation, and the one write of the link status.
//! - `step.rs`: what each state waits for, and the I/O.
//! - `session.rs`: an open stream (its flags, heartbeat timer, request queue).
//! - `respond.rs`: a response through the apply path, and its answer.
//! - `transport.rs`: opening a watch over gRPC (TLS, token, timeouts).
//! - `error.rs`: the link's errors and how each is retried.

mod error;
mod machine;
mod respond;
mod session;
mod step;
mod transport;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;
use vane_backoff::ExponentialBackoff;

use crate::apply::Applier;
use crate::config::AgentConfig;
use crate::pacing::Pacing;

use machine::{Machine, State};
use step::Steps;
pub(crate) use transport::{Grpc, Transport, endpoints};

/// Runs the link until `shutdown` turns true (or its sender goes away).
pub(crate) async fn run<T: Transport>(
    config: Arc<AgentConfig>,
    applier: Arc<Applier>,
    transport: T,
    backoff: ExponentialBackoff,
    shutdown: watch::Receiver<bool>,
) {
    let mut machine = Machine::new(
        applier.shared.clone(),
        config.servers.clone(),
        Pacing::new(backoff, config.breaker),
    );
    let mut steps = Steps {
        health: applier.shared.reports.subscribe(),
        config,
        applier,
        transport,
        shutdown,
    };
    let mut state = State::Idle;
    while !matches!(state, State::Stopped) {
        let event = steps.step(&mut state).await;
        state = machine.transition(state, event, Instant::now());
    }
}
