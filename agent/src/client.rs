//! The watch loop: hold one stream to a control server, feed every response
//! through the apply path, answer ACK or NACK; when the stream breaks, keep
//! serving and reconnect behind backoff and the circuit breaker, rotating
//! across servers.
//!
//! States: `Gate` (ask the breaker) -> `Connect` -> `Streaming` -> on any end,
//! classify the error -> `Backoff` (sleep) -> `Gate`. Shutdown is observed in
//! every state that waits. While streaming, a heartbeat goes out every
//! `heartbeat_interval` so the server can close streams of vanished agents.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use vane_proto as pb;

use crate::apply::{Applier, ApplyOutcome, Candidate, Rejection, code};
use crate::backoff::Backoff;
use crate::breaker::{Breaker, Permit};
use crate::config::AgentConfig;
use crate::state::{Current, Source};
use vane_tls::{Hints, tls_failure};

/// A stream that stays up this long counts as having delivered, even if the
/// agent was already current and the server had nothing to send.
const HEALTHY_STREAM_AFTER: Duration = Duration::from_secs(10);

/// The server sends the head as soon as a stream opens unless the agent
/// already runs it. A new stream that stays silent this long therefore
/// confirms what the agent runs. Until then the open stream is only a
/// provisional confirmation: staleness keeps counting from the last real one.
const QUIET_CONFIRM_AFTER: Duration = Duration::from_secs(2);

/// Largest response accepted from a server.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// How a stream ended.
#[derive(Debug)]
enum End {
    /// We were asked to stop.
    Shutdown,
    /// The stream could not be opened or broke.
    Broken {
        /// Whether the stream was established (the server answered).
        established: bool,
        /// Whether it delivered (a response, or a long quiet life).
        delivered: bool,
        /// What happened.
        error: LinkError,
    },
}

/// Errors of the link, classified for the retry policy.
#[derive(Debug)]
pub(crate) enum LinkError {
    /// Connecting failed (refused, unreachable, timeout).
    Connect(String),
    /// The TLS handshake failed (unknown CA, expired or misnamed
    /// certificate, client certificate refused, plaintext server).
    Tls(String),
    /// The server ended the stream with a status.
    Status(tonic::Status),
    /// The server closed the stream cleanly.
    Closed,
}

impl LinkError {
    /// Errors a fast retry cannot fix: the agent is misconfigured or not
    /// allowed. Retried at the backoff cap, logged as configuration errors.
    fn is_config_error(&self) -> bool {
        match self {
            LinkError::Tls(_) => true,
            LinkError::Status(s) => matches!(
                s.code(),
                tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
                    | tonic::Code::InvalidArgument
            ),
            LinkError::Connect(_) | LinkError::Closed => false,
        }
    }

    /// A status from the stream: a TLS failure when rustls is behind it (a
    /// server that refuses the client certificate says so after a TLS 1.3
    /// handshake has completed on the client side, i.e. on the first read).
    fn from_status(status: tonic::Status) -> Self {
        match std::error::Error::source(&status).and_then(|e| tls_failure(e, Hints::AGENT)) {
            Some(tls) => LinkError::Tls(tls),
            None => LinkError::Status(status),
        }
    }

    /// A failed connect: TLS when rustls is behind it.
    fn from_connect(e: &tonic::transport::Error) -> Self {
        match tls_failure(e, Hints::AGENT) {
            Some(tls) => LinkError::Tls(tls),
            None => LinkError::Connect(error_chain(e)),
        }
    }
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Connect(e) => write!(f, "connect failed: {e}"),
            LinkError::Tls(e) => f.write_str(e),
            LinkError::Status(s) => write!(f, "stream failed: {:?}: {}", s.code(), s.message()),
            LinkError::Closed => f.write_str("stream closed by the server"),
        }
    }
}

/// Everything the loop needs.
pub(crate) struct Runtime {
    pub(crate) config: Arc<AgentConfig>,
    pub(crate) applier: Arc<Applier>,
    /// One per `config.servers`, same order (from [`endpoints`]).
    pub(crate) endpoints: Vec<Endpoint>,
}

/// The endpoint of every server, TLS set up for `https://` ones. Built once
/// at start, so that a URL or certificate tonic refuses is reported then.
pub(crate) fn endpoints(config: &AgentConfig) -> Result<Vec<Endpoint>, String> {
    config
        .servers
        .iter()
        .map(|server| {
            let endpoint = Endpoint::from_shared(server.clone())
                .map_err(|e| format!("servers: {server:?}: {}", error_chain(&e)))?
                .connect_timeout(config.connect_timeout)
                .http2_keep_alive_interval(config.keepalive_interval)
                .keep_alive_timeout(config.keepalive_timeout)
                .keep_alive_while_idle(true)
                .tcp_nodelay(true);
            if !server.starts_with("https://") {
                return Ok(endpoint);
            }
            endpoint
                .tls_config(config.tls.tonic_config(config.connect_timeout))
                .map_err(|e| format!("tls: for {server:?}: {}", error_chain(&e)))
        })
        .collect()
}

/// Runs until `shutdown` turns true.
pub(crate) async fn run(rt: Arc<Runtime>, mut shutdown: watch::Receiver<bool>) {
    let config = rt.config.clone();
    let shared = rt.applier.shared.clone();
    let mut backoff = Backoff::new(config.backoff);
    let mut breaker = Breaker::new(config.breaker);
    let mut server_index = 0usize;
    loop {
        if *shutdown.borrow() {
            return;
        }
        match breaker.acquire(Instant::now()) {
            Permit::WaitUntil(until) => {
                shared.link().breaker = breaker.state();
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => continue,
                    _ = shutdown.changed() => return,
                }
            }
            Permit::Attempt | Permit::Probe => {}
        }
        shared.link().breaker = breaker.state();
        let index = server_index % config.servers.len();
        let server = config.servers[index].clone();
        let endpoint = rt.endpoints[index].clone();
        let end = stream_once(&rt, &server, endpoint, &mut shutdown).await;
        let End::Broken {
            established,
            delivered,
            error,
        } = end
        else {
            return;
        };
        shared.unconfirm();
        {
            let mut link = shared.link();
            link.connected = false;
            link.last_error = Some(format!("{server}: {error}"));
        }
        shared.metrics.reconnects.inc();
        if established {
            breaker.on_success();
        } else {
            breaker.on_failure(Instant::now());
        }
        shared.link().breaker = breaker.state();
        if delivered {
            backoff.reset();
        }
        let delay = if error.is_config_error() {
            tracing::error!(%server, %error, "configuration error; retrying at the backoff cap");
            backoff.cap()
        } else {
            let d = backoff.next_delay();
            tracing::warn!(%server, %error, delay_ms = d.as_millis() as u64, "watch stream lost; reconnecting");
            d
        };
        // Try the next server on the next attempt; a stream that delivered
        // and then broke may be a restart of the same server, which the next
        // rotation will come back to.
        server_index = server_index.wrapping_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A heartbeat: no node and no nonce, so the server takes it for a sign of
/// life and nothing else (it answers only requests that carry the nonce of
/// its last response). What runs is reported all the same.
fn heartbeat(rt: &Runtime) -> pb::WatchRequest {
    pb::WatchRequest {
        node: None,
        ..request(rt, String::new(), None, false)
    }
}

/// A request naming what runs now. `want_full` asks for the full snapshot
/// after a delta that could not be used.
fn request(
    rt: &Runtime,
    nonce: String,
    error: Option<pb::ErrorDetail>,
    want_full: bool,
) -> pb::WatchRequest {
    let current = rt.applier.shared.current.load();
    let c = &rt.config;
    pb::WatchRequest {
        node: Some(pb::Node {
            id: c.node_id.clone(),
            group: c.group.clone(),
            labels: c.labels.clone(),
            agent_build: c.agent_build.clone(),
        }),
        // Defaults are not a control-plane version: report none.
        version_info: if current.source == Source::Defaults {
            0
        } else {
            current.version
        },
        hash: if current.source == Source::Defaults {
            String::new()
        } else {
            current.hash.clone()
        },
        response_nonce: nonce,
        error_detail: error,
        want_full,
        accept_delta: true,
    }
}

async fn stream_once(
    rt: &Arc<Runtime>,
    server: &str,
    endpoint: Endpoint,
    shutdown: &mut watch::Receiver<bool>,
) -> End {
    let config = &rt.config;
    let shared = rt.applier.shared.clone();
    let broken = |established, delivered, error| End::Broken {
        established,
        delivered,
        error,
    };
    let channel = tokio::select! {
        r = endpoint.connect() => match r {
            Ok(c) => c,
            Err(e) => return broken(false, false, LinkError::from_connect(&e)),
        },
        _ = shutdown.changed() => return End::Shutdown,
    };
    let mut client = pb::config_discovery_client::ConfigDiscoveryClient::new(channel)
        .max_decoding_message_size(MAX_RESPONSE_BYTES);
    // Bounded: at most one answer per response is ever queued.
    let (tx, rx) = mpsc::channel::<pb::WatchRequest>(4);
    if tx
        .send(request(rt, String::new(), None, false))
        .await
        .is_err()
    {
        return broken(false, false, LinkError::Closed);
    }
    let mut call = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &config.token {
        call.metadata_mut().insert("authorization", token.header());
    }
    let opened = tokio::select! {
        r = tokio::time::timeout(config.connect_timeout, client.watch(call)) => r,
        _ = shutdown.changed() => return End::Shutdown,
    };
    let mut inbound = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return broken(false, false, LinkError::from_status(status)),
        Err(_) => {
            return broken(
                false,
                false,
                LinkError::Connect("timed out waiting for the stream to open".into()),
            );
        }
    };
    {
        let mut link = shared.link();
        link.connected = true;
        link.server = Some(server.to_owned());
    }
    tracing::info!(%server, "watch stream established");
    let opened_at = Instant::now();
    let mut delivered = false;
    // Whether the control plane has confirmed what we run on this stream
    // (an ACKed response, or a silent start: see QUIET_CONFIRM_AFTER).
    let mut confirmed = false;
    let mut heartbeats = tokio::time::interval_at(
        opened_at + config.heartbeat_interval,
        config.heartbeat_interval,
    );
    heartbeats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            m = inbound.message() => m,
            _ = heartbeats.tick() => {
                // A full queue already holds a request the server will
                // see, which says as much as a heartbeat would.
                match tx.try_send(heartbeat(rt)) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return broken(true, delivered, LinkError::Closed);
                    }
                }
                continue;
            }
            _ = tokio::time::sleep_until(opened_at + QUIET_CONFIRM_AFTER), if !confirmed => {
                confirmed = true;
                shared.confirm_current();
                continue;
            }
            _ = tokio::time::sleep_until(opened_at + HEALTHY_STREAM_AFTER), if !delivered => {
                delivered = true;
                continue;
            }
            _ = shutdown.changed() => return End::Shutdown,
        };
        let response = match message {
            Ok(Some(r)) => r,
            Ok(None) => return broken(true, delivered, LinkError::Closed),
            Err(status) => return broken(true, delivered, LinkError::from_status(status)),
        };
        delivered = true;
        confirmed = true;
        // The apply runs on a blocking thread that cannot be cancelled; on
        // shutdown we stop waiting for it (it finishes on its own, and its
        // ACK is never sent).
        let answer = tokio::select! {
            a = handle_response(rt, response) => a,
            _ = shutdown.changed() => return End::Shutdown,
        };
        if tx.send(answer).await.is_err() {
            return broken(true, delivered, LinkError::Closed);
        }
    }
}

/// What a response carries, once checked against this agent.
enum Body {
    /// The full snapshot.
    Full(bytes::Bytes),
    /// A delta from the version this agent runs (already checked).
    Delta(bytes::Bytes),
}

/// Applies one response and builds its ACK or NACK.
async fn handle_response(rt: &Arc<Runtime>, response: pb::WatchResponse) -> pb::WatchRequest {
    let pb::WatchResponse {
        group,
        version,
        hash,
        nonce,
        body,
        base_version,
        base_hash,
        created_at_unix_ms: _,
    } = response;
    let shared = rt.applier.shared.clone();
    let delta_response = matches!(body, Some(pb::watch_response::Body::Delta(_)));
    let checked = if body.is_some() && group != rt.config.group {
        Err(Rejection::new(
            code::INVALID_ARGUMENT,
            format!(
                "group: response is for group {group:?}, this agent follows {:?}",
                rt.config.group
            ),
        ))
    } else {
        match body {
            Some(pb::watch_response::Body::Snapshot(bytes)) => Ok(Body::Full(bytes)),
            Some(pb::watch_response::Body::Delta(delta)) => {
                let running = shared.current.load();
                if running.source != Source::Defaults
                    && running.version == base_version
                    && running.hash == base_hash
                {
                    Ok(Body::Delta(delta))
                } else {
                    Err(base_mismatch(base_version, &running))
                }
            }
            None => Err(Rejection::new(
                code::INVALID_ARGUMENT,
                "body: response carries no snapshot",
            )),
        }
    };
    let outcome = match checked {
        Err(rejection) => ApplyOutcome::Rejected(rejection),
        Ok(body) => {
            let applier = rt.applier.clone();
            // Rebuilding from a delta, decoding, hashing, the embedder's
            // hooks and the fsync of the cache are blocking work.
            let apply = move || {
                let body = match body {
                    Body::Full(bytes) => bytes,
                    Body::Delta(delta) => {
                        let running = applier.shared.current.load_full();
                        match vane_model::delta::apply_encoded(&running.snapshot, &delta) {
                            Ok(full) => bytes::Bytes::from(full),
                            Err(e) => {
                                let mut r = Rejection::new(
                                    code::FAILED_PRECONDITION,
                                    format!(
                                        "delta does not apply to version {}: {e}",
                                        running.version
                                    ),
                                );
                                r.hash_mismatch = true;
                                return ApplyOutcome::Rejected(r);
                            }
                        }
                    }
                };
                applier.apply(Candidate {
                    version,
                    hash,
                    body,
                    origin: Source::Live,
                })
            };
            match tokio::task::spawn_blocking(apply).await {
                Ok(o) => o,
                Err(e) => ApplyOutcome::Rejected(Rejection::new(
                    code::INTERNAL,
                    format!("apply failed: {e}"),
                )),
            }
        }
    };
    match outcome {
        ApplyOutcome::Applied | ApplyOutcome::AlreadyCurrent => {
            tracing::info!(version, delta = delta_response, "applied; ACK");
            shared.confirm_current();
            request(rt, nonce, None, false)
        }
        // A delta this agent could not turn into exactly the version's
        // content: nothing is wrong with the version itself, so this is no
        // refusal to report; ask for the whole snapshot instead.
        ApplyOutcome::Rejected(rejection) if delta_response && rejection.hash_mismatch => {
            tracing::info!(version, reason = %rejection.reason, "cannot use the delta; asking for the full snapshot");
            request(
                rt,
                nonce,
                Some(pb::ErrorDetail {
                    code: code::FAILED_PRECONDITION,
                    message: rejection.reason,
                }),
                true,
            )
        }
        ApplyOutcome::Rejected(rejection) => {
            tracing::warn!(version, reason = %rejection.reason, "refused; NACK, keeping the running config");
            shared.unconfirm();
            {
                let mut link = shared.link();
                link.last_nack = Some((version, rejection.reason.clone()));
                link.last_error = Some(format!("NACK of version {version}: {}", rejection.reason));
            }
            request(
                rt,
                nonce,
                Some(pb::ErrorDetail {
                    code: rejection.code,
                    message: rejection.reason,
                }),
                false,
            )
        }
    }
}

/// The refusal of a delta whose base is not what this agent runs.
fn base_mismatch(base_version: u64, running: &Current) -> Rejection {
    let mut r = Rejection::new(
        code::FAILED_PRECONDITION,
        format!(
            "delta: its base is version {base_version}, this agent runs version {} ({})",
            running.version,
            if running.source == Source::Defaults {
                "its defaults"
            } else {
                running.source.as_str()
            }
        ),
    );
    // Like a rebuilt snapshot that does not hash right: not the version's
    // fault, and the full snapshot fixes it.
    r.hash_mismatch = true;
    r
}

/// An error and its causes on one line (tonic's transport errors hide the
/// useful part, e.g. "Connection refused", in their sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_and_refusals_are_configuration_errors() {
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: BadCertificate",
        );
        let tls = LinkError::from_status(tonic::Status::from_error(Box::new(alert)));
        assert!(matches!(tls, LinkError::Tls(_)), "{tls:?}");
        assert!(tls.is_config_error());
        assert!(
            tls.to_string().starts_with("TLS handshake failed: "),
            "{tls}"
        );
        for status in [
            tonic::Status::unauthenticated("no credentials"),
            tonic::Status::permission_denied("identity \"x\" may not watch group \"edge\""),
        ] {
            let e = LinkError::from_status(status);
            assert!(e.is_config_error(), "{e}");
        }
        let e = LinkError::from_status(tonic::Status::unavailable("restarting"));
        assert!(!e.is_config_error());
        assert!(!LinkError::Connect("refused".into()).is_config_error());
    }
}
