//! The link's state machine: where the agent's connection to the control
//! plane is ([`State`]), what can happen to it ([`Event`]), and the one
//! function that moves it, [`Machine::transition`]. The transition owns the
//! reconnect pacing (backoff, circuit breaker, server rotation) and is the
//! one writer of the link status that `health()` reports; it does no I/O and
//! never waits, so tests drive it event by event on a paused clock. The
//! waiting and the I/O are the steps' (`step.rs`).

use std::sync::Arc;

use tokio::time::Instant;
use vane_proto as pb;

use crate::breaker::Permit;
use crate::pacing::{Failure, Pacing, Pause};
use crate::state::Shared;

use super::error::{LinkError, Retry};
use super::respond::{StoreReach, Verdict};
use super::session::{HEALTH_MIN_GAP, Session};

/// Where the link is.
#[derive(Debug)]
pub(crate) enum State {
    /// Between attempts: the breaker is asked whether one may go now.
    Idle,
    /// The breaker is open: no attempt before `until`.
    BreakerOpen {
        /// When the breaker lets one probe through.
        until: Instant,
    },
    /// Connecting to a server and opening the watch.
    Connecting {
        /// Index of the server in the configuration.
        server: usize,
    },
    /// A watch stream is open.
    Streaming(Box<Session>),
    /// The last attempt or stream failed: no attempt before `until`.
    Backoff {
        /// When the next attempt may go.
        until: Instant,
    },
    /// Shutdown was asked: the loop ends.
    Stopped,
}

impl State {
    /// The state's name, for logs and tests.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::BreakerOpen { .. } => "breaker_open",
            State::Connecting { .. } => "connecting",
            State::Streaming(_) => "streaming",
            State::Backoff { .. } => "backoff",
            State::Stopped => "stopped",
        }
    }
}

/// What a step observed.
#[derive(Debug)]
pub(crate) enum Event {
    /// A wait ended (backoff, breaker), or there was nothing to wait for.
    Ready,
    /// The watch stream is open.
    Opened(Box<Session>),
    /// Connecting failed, or the open stream broke or ended.
    Failed(LinkError),
    /// A response went through the apply path; its answer is ready.
    Answered {
        /// What the answer means for the link status.
        verdict: Verdict,
        /// The ACK or NACK itself, sent next (boxed: it is the largest
        /// thing an event carries).
        answer: Box<pb::WatchRequest>,
    },
    /// The server said whether it reaches its store (a notice, or a
    /// response that says otherwise than the stream did so far).
    Store(StoreReach),
    /// A queued answer or a heartbeat went out.
    Sent,
    /// The embedder reported another data-plane health.
    HealthChanged,
    /// A request carrying the latest data-plane health went out on its own.
    HealthSent,
    /// The new stream stayed quiet for `QUIET_CONFIRM_AFTER`: what runs is
    /// current.
    QuietConfirmed,
    /// The stream stayed up for `HEALTHY_STREAM_AFTER`: it delivered.
    Healthy,
    /// Shutdown was asked.
    Shutdown,
}

/// What a transition changes in the link status beyond what the new state
/// itself says (connected, server, breaker).
#[derive(Debug, Default)]
struct Note {
    confirmation: Option<Confirmation>,
    error: Option<String>,
    nack: Option<(u64, String)>,
    /// The server (URL) that said it cannot reach its store.
    cut_off: Option<String>,
    /// A stream or attempt ended and will be retried.
    reconnect: bool,
}

/// Whether the control plane confirms what runs, from this transition on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Confirmation {
    Confirm,
    Unconfirm,
    /// Confirmation ended at that instant at the latest: the server's view
    /// of the group is as old as its last contact with its store.
    UnconfirmSince(Instant),
}

/// The reconnect pacing and the link status: everything a transition reads
/// or changes besides the state itself.
pub(crate) struct Machine {
    shared: Arc<Shared>,
    /// The configured server URLs, for the status and the logs.
    servers: Vec<String>,
    /// The server the next attempt goes to.
    next_server: usize,
    /// The backoff and the breaker: how long each pause is.
    pacing: Pacing,
}

impl Machine {
    pub(crate) fn new(shared: Arc<Shared>, servers: Vec<String>, pacing: Pacing) -> Self {
        Self {
            shared,
            servers,
            next_server: 0,
            pacing,
        }
    }

    /// Moves `state` on `event` at `now`, and records in the link status
    /// what the move means. The only place either changes.
    pub(crate) fn transition(&mut self, state: State, event: Event, now: Instant) -> State {
        let mut note = Note::default();
        let next = match (state, event) {
            (_, Event::Shutdown) => State::Stopped,
            (State::Idle, Event::Ready) => self.gate(now),
            (State::BreakerOpen { .. } | State::Backoff { .. }, Event::Ready) => State::Idle,
            (State::Connecting { .. }, Event::Opened(session)) => {
                // A stream is what the breaker counts as success: it closes
                // now, whether this was a normal attempt or its probe.
                self.pacing.opened();
                tracing::info!(server = %self.url(session.server), "watch stream established");
                State::Streaming(session)
            }
            (State::Connecting { server }, Event::Failed(error)) => {
                self.fail(server, Failure::Connect, error, now, &mut note)
            }
            (State::Streaming(session), Event::Failed(error)) => {
                let failure = Failure::Stream {
                    delivered: session.delivered,
                };
                self.fail(session.server, failure, error, now, &mut note)
            }
            (State::Streaming(mut session), Event::Answered { verdict, answer }) => {
                session.delivered = true;
                session.confirmed = true;
                session.pending = Some(*answer);
                match verdict {
                    Verdict::Ack => {
                        session.refused = false;
                        // A server cut off from its store may not send the
                        // head: applying what it sends confirms nothing.
                        if !session.store_unreachable {
                            note.confirmation = Some(Confirmation::Confirm);
                        }
                    }
                    Verdict::WantFull => {}
                    Verdict::Nack { version, reason } => {
                        session.refused = true;
                        note.confirmation = Some(Confirmation::Unconfirm);
                        note.error = Some(format!("NACK of version {version}: {reason}"));
                        note.nack = Some((version, reason));
                    }
                }
                State::Streaming(session)
            }
            (State::Streaming(mut session), Event::QuietConfirmed) => {
                session.confirmed = true;
                if !session.store_unreachable {
                    note.confirmation = Some(Confirmation::Confirm);
                }
                State::Streaming(session)
            }
            (State::Streaming(session), Event::Store(reach)) => {
                self.store(session, reach, now, &mut note)
            }
            (State::Streaming(mut session), Event::Healthy) => {
                session.delivered = true;
                State::Streaming(session)
            }
            (State::Streaming(session), Event::Sent) => State::Streaming(session),
            (State::Streaming(mut session), Event::HealthChanged) => {
                // Due at once, unless one went less than the gap ago; a
                // change while one is due already rides on that one.
                if session.health_due.is_none() {
                    let earliest = session
                        .health_sent_at
                        .map_or(now, |at| (at + HEALTH_MIN_GAP).max(now));
                    session.health_due = Some(earliest);
                }
                State::Streaming(session)
            }
            (State::Streaming(mut session), Event::HealthSent) => {
                session.health_due = None;
                session.health_sent_at = Some(now);
                State::Streaming(session)
            }
            (state, event) => {
                // Steps only report what their state can observe; anything
                // else is a bug, and the safest reading is "nothing happened".
                tracing::error!(
                    state = state.name(),
                    ?event,
                    "the link ignored an unexpected event"
                );
                state
            }
        };
        self.publish(&next, note, now);
        next
    }

    /// Asks the breaker whether an attempt may go now.
    fn gate(&mut self, now: Instant) -> State {
        match self.pacing.permit(now) {
            Permit::Attempt => State::Connecting {
                server: self.next_server,
            },
            Permit::Probe => {
                tracing::info!(server = %self.url(self.next_server), "circuit breaker half-open: one probe");
                State::Connecting {
                    server: self.next_server,
                }
            }
            Permit::WaitUntil(until) => State::BreakerOpen { until },
        }
    }

    /// The server of `session` said whether it reaches its store.
    fn store(
        &mut self,
        mut session: Box<Session>,
        reach: StoreReach,
        now: Instant,
        note: &mut Note,
    ) -> State {
        let url = self.url(session.server).to_owned();
        match reach {
            StoreReach::Unreachable(for_) => {
                if !session.store_unreachable {
                    tracing::warn!(server = %url, unreachable_for = ?for_, "the control server cannot reach its store; what it sends confirms nothing");
                }
                session.store_unreachable = true;
                note.confirmation = Some(Confirmation::UnconfirmSince(
                    now.checked_sub(for_).unwrap_or(now),
                ));
                note.cut_off = Some(url.clone());
                note.error = Some(format!("{url}: cannot reach its store"));
                // With another server to go to, leave (after answering what
                // was applied); with one, stay: it still streams what it has.
                session.leaving = self.servers.len() > 1;
            }
            StoreReach::Reachable => {
                if session.store_unreachable {
                    tracing::info!(server = %url, "the control server reaches its store again");
                    session.store_unreachable = false;
                    // Nothing newer to send: what runs is current, unless
                    // it is what the agent kept after a refusal.
                    if !session.refused {
                        note.confirmation = Some(Confirmation::Confirm);
                    }
                }
            }
        }
        State::Streaming(session)
    }

    /// An attempt or a stream to `server` failed: pace the next attempt.
    fn fail(
        &mut self,
        server: usize,
        failure: Failure,
        error: LinkError,
        now: Instant,
        note: &mut Note,
    ) -> State {
        let url = self.url(server).to_owned();
        let retry = error.retry();
        let pause = self.pacing.failed(now, failure, retry);
        let delay_ms = (pause.until() - now).as_millis() as u64;
        match (retry, pause) {
            (Retry::AtCap, _) => {
                tracing::error!(server = %url, %error, delay_ms, "configuration error; retrying at the backoff cap");
            }
            (Retry::Backoff, Pause::BreakerOpen(_)) => {
                tracing::warn!(server = %url, %error, delay_ms, "circuit breaker open; probing again after the pause");
            }
            (Retry::Backoff, Pause::Backoff(_)) => {
                tracing::warn!(server = %url, %error, delay_ms, "watch stream lost; reconnecting");
            }
        }
        // Try the next server on the next attempt; a stream that delivered
        // and then broke may be a restart of the same server, which the next
        // rotation will come back to.
        self.next_server = (server + 1) % self.servers.len().max(1);
        note.confirmation = Some(Confirmation::Unconfirm);
        note.error = Some(format!("{url}: {error}"));
        note.reconnect = true;
        match pause {
            Pause::Backoff(until) => State::Backoff { until },
            Pause::BreakerOpen(until) => State::BreakerOpen { until },
        }
    }

    /// Writes the link status: what `state` says, then what `note` adds.
    fn publish(&self, state: &State, note: Note, now: Instant) {
        if note.reconnect {
            self.shared.metrics.reconnects.inc();
        }
        if note.confirmation == Some(Confirmation::Confirm) {
            self.shared.promote_cached();
        }
        let server = match state {
            State::Streaming(session) => Some(self.url(session.server).to_owned()),
            _ => None,
        };
        let breaker = self.pacing.breaker();
        self.shared.update_link(|link| {
            link.connected = server.is_some();
            // The server of the current stream, else of the last one.
            if server.is_some() {
                link.server = server;
            }
            link.breaker = breaker;
            match note.confirmation {
                Some(Confirmation::Confirm) => link.confirm(now),
                Some(Confirmation::Unconfirm) => link.unconfirm(now),
                Some(Confirmation::UnconfirmSince(at)) => link.unconfirm_since(at),
                None => {}
            }
            if let Some(url) = note.cut_off {
                link.cut_off = Some(url);
            }
            if let Some(error) = note.error {
                link.last_error = Some(error);
            }
            if let Some(nack) = note.nack {
                link.last_nack = Some(nack);
            }
        });
    }

    fn url(&self, server: usize) -> &str {
        self.servers.get(server).map_or("", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use tokio::sync::mpsc;

    use super::*;
    use crate::backoff::BackoffConfig;
    use crate::breaker::{BreakerConfig, BreakerState};
    use crate::state::{Current, HealthState, Source};

    const SERVERS: [&str; 2] = ["http://a:1", "http://b:2"];

    fn machine(threshold: u32) -> Machine {
        let backoff = BackoffConfig {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        };
        Machine::new(
            Arc::new(Shared::new(Duration::from_secs(300))),
            SERVERS.iter().map(|s| (*s).to_owned()).collect(),
            Pacing::new(
                backoff.build().unwrap(),
                BreakerConfig {
                    failure_threshold: threshold,
                    open_for: Duration::from_secs(10),
                },
            ),
        )
    }

    fn session(server: usize) -> Box<Session> {
        let (requests, _) = mpsc::channel(4);
        Box::new(Session::new(
            server,
            futures::stream::pending().boxed(),
            requests,
            Duration::from_secs(30),
            Instant::now(),
        ))
    }

    fn refused() -> LinkError {
        LinkError::Connect("connection refused".into())
    }

    /// Idle → Connecting, the attempt fails → Backoff; returns the pause.
    fn failed_attempt(m: &mut Machine, error: LinkError) -> Duration {
        let now = Instant::now();
        let s = m.transition(State::Idle, Event::Ready, now);
        let State::Connecting { server } = s else {
            panic!("expected an attempt, got {s:?}");
        };
        match m.transition(State::Connecting { server }, Event::Failed(error), now) {
            State::Backoff { until } => until - now,
            other => panic!("expected backoff, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_connect_backs_off_under_a_doubling_ceiling_and_rotates() {
        let mut m = machine(100);
        let now = Instant::now();
        assert!(matches!(
            m.transition(State::Idle, Event::Ready, now),
            State::Connecting { server: 0 }
        ));
        let s = m.transition(
            State::Connecting { server: 0 },
            Event::Failed(refused()),
            now,
        );
        let State::Backoff { until } = s else {
            panic!("expected backoff, got {s:?}");
        };
        assert!(
            until - now <= Duration::from_millis(100),
            "first ceiling is the base"
        );
        let h = m.shared.health();
        assert!(!h.connected);
        assert_eq!(h.reconnects, 1);
        assert_eq!(
            h.last_error.as_deref(),
            Some("http://a:1: connect failed: connection refused")
        );
        // The wait ends: back to Idle, and the next attempt goes to the
        // next server.
        let s = m.transition(s, Event::Ready, until);
        assert!(matches!(s, State::Idle), "{s:?}");
        assert!(matches!(
            m.transition(s, Event::Ready, until),
            State::Connecting { server: 1 }
        ));
        // Ceilings double: 200 ms, 400 ms, ... up to the 10 s cap.
        for n in 1..12u32 {
            let ceiling = Duration::from_millis(100 * 2u64.pow(n)).min(Duration::from_secs(10));
            assert_eq!(m.pacing.backoff().ceiling(), ceiling);
            let pause = failed_attempt(&mut m, refused());
            assert!(pause <= ceiling, "{pause:?} > {ceiling:?}");
        }
        assert_eq!(m.shared.health().reconnects, 12);
    }

    #[tokio::test(start_paused = true)]
    async fn configuration_errors_wait_the_cap_and_leave_the_sequence_alone() {
        let mut m = machine(100);
        let errors = [
            LinkError::Status(tonic::Status::unauthenticated("no credentials")),
            LinkError::Status(tonic::Status::permission_denied("not in group edge")),
            LinkError::Status(tonic::Status::invalid_argument("node: id is required")),
            LinkError::Tls("TLS handshake failed: UnknownIssuer".into()),
        ];
        for error in errors {
            assert_eq!(failed_attempt(&mut m, error), Duration::from_secs(10));
        }
        assert_eq!(
            m.pacing.backoff().attempts(),
            0,
            "the cap is not a step of the sequence"
        );
        let error = m.shared.health().last_error.unwrap();
        assert!(error.contains("UnknownIssuer"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_after_its_threshold_and_half_opens_after_one_period() {
        let mut m = machine(3);
        for _ in 0..2 {
            failed_attempt(&mut m, refused());
        }
        // The third failed connect opens the breaker: the pause is its
        // period, in [open_for/2, open_for] from the attempt's start.
        let opened_at = Instant::now();
        let s = m.transition(State::Idle, Event::Ready, opened_at);
        assert!(matches!(s, State::Connecting { .. }), "{s:?}");
        let s = m.transition(s, Event::Failed(refused()), opened_at);
        let State::BreakerOpen { until } = s else {
            panic!("three failures open the breaker, got {s:?}");
        };
        let open = until - opened_at;
        assert!(
            open >= Duration::from_secs(5) && open <= Duration::from_secs(10),
            "open for 5 to 10 s: {open:?}"
        );
        assert_eq!(m.shared.health().breaker, BreakerState::Open { until });

        // Asked again before the period is over: still no attempt.
        tokio::time::advance(open - Duration::from_millis(1)).await;
        let s = m.transition(s, Event::Ready, Instant::now());
        let s = m.transition(s, Event::Ready, Instant::now());
        assert!(matches!(s, State::BreakerOpen { .. }), "{s:?}");

        // After it: one probe, and the status says so.
        tokio::time::advance(Duration::from_millis(1)).await;
        let s = m.transition(s, Event::Ready, Instant::now());
        let s = m.transition(s, Event::Ready, Instant::now());
        let State::Connecting { server } = s else {
            panic!("the probe should go, got {s:?}");
        };
        assert_eq!(m.shared.health().breaker, BreakerState::HalfOpen);

        // The probe fails: open again at once, for one more period.
        let failed_at = Instant::now();
        let s = m.transition(s, Event::Failed(refused()), failed_at);
        let State::BreakerOpen { until } = s else {
            panic!("a failed probe opens the breaker again, got {s:?}");
        };
        assert!(until - failed_at <= Duration::from_secs(10));
        assert!(matches!(
            m.shared.health().breaker,
            BreakerState::Open { .. }
        ));

        // The next probe opens a stream: the breaker closes.
        tokio::time::advance(until - failed_at).await;
        let s = m.transition(s, Event::Ready, Instant::now());
        let State::Connecting { server: probe } = m.transition(s, Event::Ready, Instant::now())
        else {
            panic!("a second probe should go");
        };
        assert_ne!(probe, server, "probes rotate too");
        let s = m.transition(
            State::Connecting { server: probe },
            Event::Opened(session(probe)),
            Instant::now(),
        );
        assert!(matches!(s, State::Streaming(_)));
        let h = m.shared.health();
        assert_eq!(h.breaker, BreakerState::Closed);
        assert!(h.connected);
        assert_eq!(h.server.as_deref(), Some(SERVERS[probe]));
    }

    /// The agent's defaults through a 40 s outage (every connect refused),
    /// event by event on the paused clock: the server that answers again
    /// waits at most `open_for` (3 s) for the next attempt, however long
    /// the outage; meanwhile the breaker opens and attempts slow to one per
    /// 1.5 to 3 s.
    #[tokio::test(start_paused = true)]
    async fn after_a_forty_second_outage_the_next_attempt_comes_within_open_for() {
        let bound = BreakerConfig::default().open_for;
        for _ in 0..50 {
            let mut m = Machine::new(
                Arc::new(Shared::new(Duration::from_secs(300))),
                vec![SERVERS[0].to_owned()],
                Pacing::new(
                    BackoffConfig::default().build().unwrap(),
                    BreakerConfig::default(),
                ),
            );
            let mut s = m.transition(
                State::Connecting { server: 0 },
                Event::Opened(session(0)),
                Instant::now(),
            );
            s = m.transition(s, Event::Healthy, Instant::now());
            let outage = Instant::now();
            let back = outage + Duration::from_secs(40);
            s = m.transition(s, Event::Failed(LinkError::Closed), outage);
            let mut attempts = Vec::new();
            let mut saw_open = false;
            let reconnected = loop {
                s = match s {
                    State::Backoff { until } | State::BreakerOpen { until } => {
                        tokio::time::sleep_until(until).await;
                        m.transition(s, Event::Ready, Instant::now())
                    }
                    State::Idle => m.transition(s, Event::Ready, Instant::now()),
                    State::Connecting { .. } if Instant::now() < back => {
                        attempts.push(Instant::now());
                        let s = m.transition(s, Event::Failed(refused()), Instant::now());
                        saw_open |= matches!(m.shared.health().breaker, BreakerState::Open { .. });
                        s
                    }
                    State::Connecting { .. } => {
                        let s = m.transition(s, Event::Opened(session(0)), Instant::now());
                        assert!(matches!(s, State::Streaming(_)), "{s:?}");
                        break Instant::now();
                    }
                    other => panic!("unexpected {other:?}"),
                };
            };
            assert!(saw_open, "40 s of refused connects open the breaker");
            assert!(
                reconnected - back <= bound,
                "reconnected {:?} after the server answered again",
                reconnected - back
            );
            let h = m.shared.health();
            assert!(h.connected && h.breaker == BreakerState::Closed);
            let gaps: Vec<Duration> = attempts.windows(2).map(|p| p[1] - p[0]).collect();
            assert!(gaps.iter().all(|g| *g <= bound), "{gaps:?}");
            assert!(gaps[4..].iter().all(|g| *g >= bound / 2), "{gaps:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_delivered_resets_the_backoff_and_one_that_did_not_does_not() {
        let mut m = machine(100);
        for _ in 0..5 {
            failed_attempt(&mut m, refused());
        }
        assert_eq!(m.pacing.backoff().attempts(), 5);
        let now = Instant::now();

        // Opened, then broken before anything came: no reset.
        let s = m.transition(
            State::Connecting { server: 0 },
            Event::Opened(session(0)),
            now,
        );
        let s = m.transition(s, Event::Failed(LinkError::Closed), now);
        assert!(matches!(s, State::Backoff { .. }));
        assert_eq!(m.pacing.backoff().attempts(), 6);
        assert_eq!(
            m.shared.health().breaker,
            BreakerState::Closed,
            "an opened stream is a success for the breaker"
        );

        // A response delivered: the pause after it is from the start again.
        let s = m.transition(
            State::Connecting { server: 0 },
            Event::Opened(session(0)),
            now,
        );
        let s = m.transition(
            s,
            Event::Answered {
                verdict: Verdict::Ack,
                answer: Box::default(),
            },
            now,
        );
        let State::Backoff { until } = m.transition(s, Event::Failed(LinkError::Closed), now)
        else {
            panic!("expected backoff");
        };
        assert!(until - now <= Duration::from_millis(100));
        assert_eq!(m.pacing.backoff().attempts(), 1);

        // A long quiet life counts as delivered too.
        failed_attempt(&mut m, refused());
        let s = m.transition(
            State::Connecting { server: 1 },
            Event::Opened(session(1)),
            now,
        );
        let s = m.transition(s, Event::Healthy, now);
        let State::Backoff { until } = m.transition(s, Event::Failed(LinkError::Closed), now)
        else {
            panic!("expected backoff");
        };
        assert!(until - now <= Duration::from_millis(100));
        assert_eq!(m.pacing.backoff().attempts(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_recorded_before_they_go_out() {
        let mut m = machine(100);
        let mut cached = Current::empty();
        (cached.version, cached.hash, cached.source) = (4, "ab".into(), Source::Cache);
        m.shared.install(cached);
        let now = Instant::now();
        let s = m.transition(
            State::Connecting { server: 1 },
            Event::Opened(session(1)),
            now,
        );

        // A NACK: recorded, unconfirmed, and queued to be sent next.
        let nack = Event::Answered {
            verdict: Verdict::Nack {
                version: 5,
                reason: "port in use".into(),
            },
            answer: Box::new(pb::WatchRequest {
                response_nonce: "n5".into(),
                ..Default::default()
            }),
        };
        let s = m.transition(s, nack, now);
        let State::Streaming(session) = &s else {
            panic!("still streaming");
        };
        assert_eq!(
            session.pending.as_ref().map(|a| a.response_nonce.as_str()),
            Some("n5")
        );
        let h = m.shared.health();
        assert_eq!(h.last_nack, Some((5, "port in use".into())));
        assert_eq!(
            h.last_error.as_deref(),
            Some("NACK of version 5: port in use")
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(m.shared.health().staleness, Duration::from_secs(3));
        assert_eq!(m.shared.health().source, Source::Cache);

        // An ACK confirms, and cached content is now known to be live.
        let s = m.transition(s, Event::Sent, Instant::now());
        let ack = Event::Answered {
            verdict: Verdict::Ack,
            answer: Box::default(),
        };
        let s = m.transition(s, ack, Instant::now());
        let h = m.shared.health();
        assert_eq!(h.staleness, Duration::ZERO);
        assert_eq!(h.source, Source::Live);
        assert_eq!(h.state, HealthState::Healthy);

        // The stream ends: unconfirmed again, staleness counts from here.
        let s = m.transition(s, Event::Failed(LinkError::Closed), Instant::now());
        assert!(matches!(s, State::Backoff { .. }));
        tokio::time::advance(Duration::from_secs(7)).await;
        let h = m.shared.health();
        assert_eq!(h.staleness, Duration::from_secs(7));
        assert!(!h.connected);
        assert_eq!(
            h.server.as_deref(),
            Some(SERVERS[1]),
            "the last stream's server"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_start_confirms_and_want_full_changes_nothing() {
        let mut m = machine(100);
        let now = Instant::now();
        let s = m.transition(
            State::Connecting { server: 0 },
            Event::Opened(session(0)),
            now,
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(m.shared.health().staleness, Duration::from_secs(2));
        let s = m.transition(s, Event::QuietConfirmed, Instant::now());
        assert_eq!(m.shared.health().staleness, Duration::ZERO);
        let s = m.transition(
            s,
            Event::Answered {
                verdict: Verdict::WantFull,
                answer: Box::default(),
            },
            Instant::now(),
        );
        let h = m.shared.health();
        assert_eq!(h.staleness, Duration::ZERO);
        assert!(h.last_nack.is_none() && h.last_error.is_none());
        assert!(matches!(s, State::Streaming(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_cut_off_from_its_store_confirms_nothing_until_it_is_back() {
        // One server: there is nowhere else to go, so the agent stays.
        let mut m = Machine::new(
            Arc::new(Shared::new(Duration::from_secs(5))),
            vec![SERVERS[0].to_owned()],
            Pacing::new(
                BackoffConfig::default().build().unwrap(),
                BreakerConfig::default(),
            ),
        );
        let mut live = Current::empty();
        (live.version, live.hash, live.source) = (3, "ab".into(), Source::Live);
        m.shared.install(live);
        let s = m.transition(
            State::Connecting { server: 0 },
            Event::Opened(session(0)),
            Instant::now(),
        );
        let s = m.transition(s, Event::QuietConfirmed, Instant::now());
        assert_eq!(m.shared.health().staleness, Duration::ZERO);

        // The server has not reached its store for 3 s: its view is that
        // old, and neither the open stream nor an ACK confirms anything.
        let s = m.transition(
            s,
            Event::Store(StoreReach::Unreachable(Duration::from_secs(3))),
            Instant::now(),
        );
        let State::Streaming(session) = &s else {
            panic!("one server: the agent stays, got {s:?}");
        };
        assert!(session.store_unreachable && !session.leaving);
        assert_eq!(m.shared.health().staleness, Duration::from_secs(3));
        assert_eq!(m.shared.health().state, HealthState::Healthy);
        let ack = Event::Answered {
            verdict: Verdict::Ack,
            answer: Box::default(),
        };
        let s = m.transition(s, ack, Instant::now());
        let s = m.transition(s, Event::Sent, Instant::now());
        let s = m.transition(s, Event::QuietConfirmed, Instant::now());
        tokio::time::advance(Duration::from_secs(2)).await;
        let h = m.shared.health();
        assert_eq!(h.staleness, Duration::from_secs(5));
        assert_eq!(h.state, HealthState::Healthy, "not past the threshold yet");
        assert!(h.connected);

        // Past the threshold: degraded, and the reason names the server.
        tokio::time::advance(Duration::from_millis(1)).await;
        let h = m.shared.health();
        assert_eq!(
            h.state,
            HealthState::Degraded {
                reason: "control server http://a:1 cannot reach its store".into()
            }
        );
        assert_eq!(
            h.last_error.as_deref(),
            Some("http://a:1: cannot reach its store")
        );

        // It reaches its store again with nothing newer: current again.
        let s = m.transition(s, Event::Store(StoreReach::Reachable), Instant::now());
        let h = m.shared.health();
        assert_eq!(
            (h.staleness, h.state),
            (Duration::ZERO, HealthState::Healthy)
        );

        // After a refusal, "reachable" does not confirm the old version.
        let s = m.transition(
            s,
            Event::Store(StoreReach::Unreachable(Duration::ZERO)),
            Instant::now(),
        );
        let nack = Event::Answered {
            verdict: Verdict::Nack {
                version: 4,
                reason: "port in use".into(),
            },
            answer: Box::default(),
        };
        let s = m.transition(s, nack, Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        let s = m.transition(s, Event::Store(StoreReach::Reachable), Instant::now());
        assert_eq!(m.shared.health().staleness, Duration::from_secs(1));
        assert!(matches!(s, State::Streaming(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn with_another_server_the_agent_leaves_one_cut_off_from_its_store() {
        let mut m = machine(100);
        let now = Instant::now();
        let s = m.transition(
            State::Connecting { server: 0 },
            Event::Opened(session(0)),
            now,
        );
        let s = m.transition(s, Event::QuietConfirmed, now);
        let s = m.transition(s, Event::Healthy, now);
        let s = m.transition(
            s,
            Event::Store(StoreReach::Unreachable(Duration::from_secs(1))),
            now,
        );
        let State::Streaming(session) = &s else {
            panic!("the step leaves, not the transition: {s:?}");
        };
        assert!(session.leaving);
        // The step reports the leaving as the stream's end: the next
        // attempt goes to the other server, paced from the start (the
        // stream had delivered).
        let State::Backoff { until } =
            m.transition(s, Event::Failed(LinkError::StoreUnreachable), now)
        else {
            panic!("expected backoff");
        };
        assert!(until - now <= Duration::from_millis(100));
        assert_eq!(m.next_server, 1);
        let h = m.shared.health();
        assert_eq!(h.staleness, Duration::from_secs(1));
        assert!(!h.connected);
        assert_eq!(
            h.last_error.as_deref(),
            Some("http://a:1: the server cannot reach its store; trying another server")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_health_change_is_due_at_once_then_no_sooner_than_the_gap() {
        let mut m = machine(100);
        let t0 = Instant::now();
        let s = m.transition(
            State::Connecting { server: 0 },
            Event::Opened(session(0)),
            t0,
        );
        let due = |s: &State| match s {
            State::Streaming(session) => session.health_due,
            other => panic!("still streaming: {other:?}"),
        };
        let s = m.transition(s, Event::HealthChanged, t0);
        assert_eq!(due(&s), Some(t0), "the first change goes at once");
        let sent = t0 + Duration::from_millis(5);
        let s = m.transition(s, Event::HealthSent, sent);
        assert_eq!(due(&s), None);

        // Another change 200 ms later waits for the gap; one more while it
        // waits rides on the same request.
        let s = m.transition(s, Event::HealthChanged, sent + Duration::from_millis(200));
        assert_eq!(due(&s), Some(sent + HEALTH_MIN_GAP));
        let s = m.transition(s, Event::HealthChanged, sent + Duration::from_millis(900));
        assert_eq!(due(&s), Some(sent + HEALTH_MIN_GAP));
        let s = m.transition(s, Event::HealthSent, sent + HEALTH_MIN_GAP);

        // After a quiet spell longer than the gap: at once again.
        let later = sent + Duration::from_secs(60);
        let s = m.transition(s, Event::HealthChanged, later);
        assert_eq!(due(&s), Some(later));
        // The stream breaking forgets it: the next hello carries the latest.
        let s = m.transition(s, Event::Failed(LinkError::Closed), later);
        assert!(matches!(s, State::Backoff { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_every_state() {
        let until = Instant::now() + Duration::from_secs(60);
        let states = [
            State::Idle,
            State::BreakerOpen { until },
            State::Connecting { server: 0 },
            State::Streaming(session(0)),
            State::Backoff { until },
        ];
        for state in states {
            let mut m = machine(100);
            let name = state.name();
            let s = m.transition(state, Event::Shutdown, Instant::now());
            assert!(matches!(s, State::Stopped), "{name}");
            assert!(!m.shared.health().connected, "{name}");
        }
    }
}
