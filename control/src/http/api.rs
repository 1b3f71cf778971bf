//! The HTTP API's state ([`HttpApi`]: what it shares with the watch
//! service, and its caps) and what every call does first ([`Call`]: the
//! group, the caller's credentials, authorization).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use tokio::sync::Semaphore;
use tonic::Status;

use crate::accept::ConnInfo;
use crate::auth::{Action, Caller};
use crate::http::errors::ApiError;
use crate::watch::admission::Credentials;
use crate::watch::{DiscoveryService, Parts};

/// Polls held at once, across every caller, unless configured.
pub const DEFAULT_MAX_HELD_POLLS: usize = 20_000;

/// The HTTP API: its routes go next to the gRPC services (see
/// [`HttpApi::routes`]).
pub struct HttpApi {
    pub(super) parts: Parts,
    pub(super) held: Arc<Semaphore>,
    pub(super) max_held: usize,
    pub(super) request_timeout: Duration,
}

impl std::fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpApi")
            .field("max_held", &self.max_held)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl HttpApi {
    /// The API beside `discovery`, sharing its hub, cohorts, registry,
    /// policy and per-identity cap.
    pub fn beside(discovery: &DiscoveryService) -> Self {
        Self {
            parts: discovery.parts(),
            held: Arc::new(Semaphore::new(DEFAULT_MAX_HELD_POLLS)),
            max_held: DEFAULT_MAX_HELD_POLLS,
            request_timeout: Duration::from_secs(60),
        }
    }

    /// At most `max_held_polls` polls held at once; holds end a second
    /// before `request_timeout` (the server's cut-off for every request).
    #[must_use]
    pub fn with_limits(mut self, max_held_polls: usize, request_timeout: Duration) -> Self {
        self.held = Arc::new(Semaphore::new(max_held_polls.min(Semaphore::MAX_PERMITS)));
        self.max_held = max_held_polls;
        self.request_timeout = request_timeout;
        self
    }

    /// Who is calling, and whether they may follow `group`; a refusal is
    /// logged and audited as `action`.
    pub(super) fn authorize(&self, call: &Call, action: &str) -> Result<Caller, ApiError> {
        let authorization = call
            .credentials
            .authorization
            .as_ref()
            .map(http::HeaderValue::as_bytes);
        let caller = self
            .parts
            .auth
            .caller(call.credentials.conn.as_ref(), authorization)
            .map_err(|status| {
                let anonymous = Caller {
                    identity: String::new(),
                    source: crate::auth::Source::None,
                    peer: call.peer(),
                };
                self.refused(&anonymous, action, &call.group, &status);
                ApiError::from_status(&status)
            })?;
        self.parts
            .auth
            .authorize(&caller, Action::Watch, &call.group)
            .map_err(|status| {
                self.refused(&caller, action, &call.group, &status);
                ApiError::from_status(&status)
            })?;
        Ok(caller)
    }

    /// Logs and audits a refused call.
    pub(super) fn refused(&self, caller: &Caller, action: &str, group: &str, status: &Status) {
        tracing::info!(identity = %caller.identity, peer = %caller.peer, group, action, code = ?status.code(), reason = status.message(), "http call refused");
        if let Some(audit) = &self.parts.audit {
            audit.refused(caller, action, group, "", status);
        }
    }

    /// Whether `group` is known: it has a version (or a corrupt one), or
    /// some client (a stream, an xDS client or a held poll) waits for its
    /// first. Anything else is a 404, so a misspelt group is an error
    /// rather than a poll that never ends.
    pub(super) fn known(&self, group: &str) -> bool {
        let hub = &self.parts.hub;
        hub.head(group).is_some() || hub.watched(group) || hub.corrupt().head(group).is_some()
    }
}

/// One call: its group, its request head and what it proved of its caller.
pub(super) struct Call {
    pub(super) group: String,
    pub(super) parts: http::request::Parts,
    pub(super) credentials: Credentials,
}

impl Call {
    /// Checks the group, and takes the caller's credentials from the
    /// connection (our accept loop's `ConnInfo`) and the headers.
    pub(super) fn new(
        group: Result<Path<String>, axum::extract::rejection::PathRejection>,
        parts: http::request::Parts,
    ) -> Result<Self, ApiError> {
        let Path(group) = group.map_err(|e| ApiError::invalid("group", e.body_text()))?;
        vane_model::names::check_group(&group).map_err(|e| ApiError::invalid("group", e))?;
        let credentials = Credentials {
            conn: parts.extensions.get::<ConnInfo>().cloned(),
            authorization: parts.headers.get(http::header::AUTHORIZATION).cloned(),
        };
        Ok(Self {
            group,
            parts,
            credentials,
        })
    }

    pub(super) fn peer(&self) -> String {
        self.credentials
            .conn
            .as_ref()
            .map(|c| c.remote.to_string())
            .unwrap_or_default()
    }
}
