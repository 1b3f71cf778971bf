//! What a watch stream must pass before and while it runs: the limits on
//! what an agent may send, the check of the first request (the node), the
//! cap on streams per identity, and the caller's standing, checked again
//! when the policy or the tokens change.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use vane_proto as pb;

use crate::accept::ConnInfo;
use crate::agents::NodeInfo;
use crate::audit::AuditLog;
use crate::auth::{Action, Auth, Caller};

/// How long a new stream may take to send its first request.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest node id, label key or value, and agent build accepted.
pub const MAX_NODE_FIELD_LEN: usize = 256;
/// Most labels a node may carry.
pub const MAX_LABELS: usize = 64;
/// NACK reasons longer than this are cut, so an agent cannot make the
/// registry hold arbitrary amounts of text.
pub const MAX_NACK_REASON_LEN: usize = 4096;
/// How long a stream may stay silent (no heartbeat, ACK or NACK) before the
/// server closes it, unless configured.
pub const DEFAULT_IDLE_STREAM_TIMEOUT: Duration = Duration::from_secs(300);
/// Most agents (node ids) the registry tracks unless configured.
pub const DEFAULT_MAX_AGENTS: usize = 100_000;
/// Watch streams one identity may hold open unless configured (as many as
/// connections per certificate identity).
pub const DEFAULT_MAX_STREAMS_PER_IDENTITY: usize = 10_000;

/// Largest request accepted on a watch stream (a first request with 64
/// labels, or a NACK with a long reason, is well below it).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Open watch streams per identity, capped.
#[derive(Debug)]
pub(crate) struct StreamsPerIdentity {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl StreamsPerIdentity {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            open: std::sync::Mutex::default(),
        }
    }

    /// A slot for one more stream of `identity`, or the refusal.
    pub(crate) fn acquire(self: &Arc<Self>, identity: &str) -> Result<StreamSlot, Status> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(identity.to_owned()).or_insert(0);
        if *count >= self.max {
            return Err(Status::resource_exhausted(format!(
                "identity {identity:?} holds its maximum of {} watch streams (--max-streams-per-identity)",
                self.max
            )));
        }
        *count += 1;
        Ok(StreamSlot {
            streams: Arc::clone(self),
            identity: identity.to_owned(),
        })
    }
}

/// One open stream of an identity; released when dropped.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    streams: Arc<StreamsPerIdentity>,
    identity: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.identity) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.identity);
            }
        }
    }
}

/// Reads a stream's first request (Vane's watch and xDS alike) within
/// [`FIRST_REQUEST_TIMEOUT`], or says why there is none.
pub(crate) async fn first_request<T>(
    shutdown: &tokio_util::sync::CancellationToken,
    inbound: &mut tonic::Streaming<T>,
) -> Result<T, Status> {
    tokio::select! {
        () = shutdown.cancelled() => Err(Status::unavailable("the server is shutting down")),
        first = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, inbound.message()) => match first {
            // Not InvalidArgument: agents give up on that, and a slow first
            // request is worth retrying.
            Err(_) => Err(Status::deadline_exceeded(format!(
                "node: no first request within {}s",
                FIRST_REQUEST_TIMEOUT.as_secs()
            ))),
            Ok(Err(status)) => Err(status),
            Ok(Ok(None)) => Err(Status::invalid_argument(
                "node: the stream ended before its first request",
            )),
            Ok(Ok(Some(first))) => Ok(first),
        },
    }
}

/// Checks the node of a stream's first request (public for the fuzz
/// targets). The error names the field.
pub fn check_first_request(first: &pb::WatchRequest) -> Result<NodeInfo, String> {
    let Some(node) = &first.node else {
        return Err("node: required on the first request".into());
    };
    check_text("node.id", &node.id)?;
    vane_model::names::check_group(&node.group).map_err(|e| format!("node.group: {e}"))?;
    if node.labels.len() > MAX_LABELS {
        return Err(format!(
            "node.labels: {} labels, over the limit of {MAX_LABELS}",
            node.labels.len()
        ));
    }
    for (k, v) in &node.labels {
        check_text("node.labels key", k)?;
        if v.len() > MAX_NODE_FIELD_LEN {
            return Err(format!(
                "node.labels[{k:?}]: is {} bytes long, over the limit of {MAX_NODE_FIELD_LEN}",
                v.len()
            ));
        }
    }
    if node.agent_build.len() > MAX_NODE_FIELD_LEN {
        return Err(format!(
            "node.agent_build: is {} bytes long, over the limit of {MAX_NODE_FIELD_LEN}",
            node.agent_build.len()
        ));
    }
    Ok(NodeInfo {
        id: node.id.clone(),
        group: node.group.clone(),
        labels: node.labels.clone(),
        agent_build: node.agent_build.clone(),
        client: "vane-agent".to_owned(),
    })
}

fn check_text(field: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        Err(format!("{field}: must not be empty"))
    } else if s.len() > MAX_NODE_FIELD_LEN {
        Err(format!(
            "{field}: is {} bytes long, over the limit of {MAX_NODE_FIELD_LEN}",
            s.len()
        ))
    } else if s.chars().any(char::is_control) {
        Err(format!("{field}: must not contain control characters"))
    } else {
        Ok(())
    }
}

/// What a request proved about its caller: the connection (with the client
/// certificate's identity) and the `authorization` header, kept so a stream
/// can be authorized again against a reloaded policy or token file.
#[derive(Debug, Clone)]
pub(crate) struct Credentials {
    pub(crate) conn: Option<ConnInfo>,
    pub(crate) authorization: Option<http::HeaderValue>,
}

impl Credentials {
    /// The credentials of a tonic request: our accept loop's `ConnInfo`
    /// (else only the TCP peer, outside it) and the `authorization` metadata.
    pub(crate) fn of_request<T>(request: &tonic::Request<T>) -> Self {
        let tcp_only = request.remote_addr().map(|remote| ConnInfo {
            remote,
            identity: None,
            tls: false,
        });
        Self {
            conn: request.extensions().get::<ConnInfo>().cloned().or(tcp_only),
            authorization: request
                .metadata()
                .get("authorization")
                .and_then(|v| http::HeaderValue::from_bytes(v.as_bytes()).ok()),
        }
    }

    /// The peer's address ("" when unknown).
    pub(crate) fn peer(&self) -> String {
        self.conn
            .as_ref()
            .map(|c| c.remote.to_string())
            .unwrap_or_default()
    }

    /// Who the caller is; on refusal, the anonymous caller to audit too.
    pub(crate) fn caller(&self, auth: &Auth) -> Result<Caller, (Caller, Status)> {
        auth.caller(
            self.conn.as_ref(),
            self.authorization.as_ref().map(http::HeaderValue::as_bytes),
        )
        .map_err(|status| {
            let anonymous = Caller {
                identity: String::new(),
                source: crate::auth::Source::None,
                peer: self.peer(),
            };
            (anonymous, status)
        })
    }
}

/// A stream's standing: who opened it and how, to be checked again.
#[derive(Debug)]
pub(crate) struct Access {
    pub(crate) auth: Auth,
    pub(crate) audit: Option<Arc<AuditLog>>,
    pub(crate) credentials: Credentials,
    /// The caller as established when the stream opened.
    pub(crate) caller: Caller,
}

impl Access {
    /// Whether the caller may still watch `group` under the policy and
    /// tokens now in force; the status to end the stream with if not.
    pub(crate) fn recheck(&self, group: &str) -> Result<(), Status> {
        let authorization = self
            .credentials
            .authorization
            .as_ref()
            .map(http::HeaderValue::as_bytes);
        let result = self
            .auth
            .caller(self.credentials.conn.as_ref(), authorization)
            .and_then(|caller| self.auth.authorize(&caller, Action::Watch, group));
        result.map_err(|status| {
            let status = Status::new(
                status.code(),
                format!(
                    "{} (access withdrawn while the stream was open)",
                    status.message()
                ),
            );
            if let Some(audit) = &self.audit {
                audit.refused(&self.caller, "watch", group, "", &status);
            }
            status
        })
    }
}

/// An agent's NACK reason as recorded: trimmed, never empty, at most
/// [`MAX_NACK_REASON_LEN`] bytes.
pub(crate) fn nack_reason(message: &str) -> String {
    let message = message.trim();
    if message.is_empty() {
        return "(no reason given)".into();
    }
    let mut reason = message.to_owned();
    if crate::text::cut(&mut reason, MAX_NACK_REASON_LEN) {
        reason.push('…');
    }
    reason
}
