//! The HTTP long-poll API on the main port, beside gRPC: any program that
//! speaks HTTP follows a group's versions with `GET
//! /v1/groups/{group}/snapshot` (or `/values`) and reports what it did with
//! `POST /v1/groups/{group}/ack` (docs/http-api.md).
//!
//! It shares everything with the watch service ([`crate::watch`]): the
//! connection (our accept loop, its TLS and its `ConnInfo` identity), bearer
//! tokens, the policy (role `agent` on the group, [`Action::Watch`]), the
//! hub's heads and rollouts' cohorts ([`crate::targets::target`]), the agent
//! registry (nodes with client `http`, each poll a sign of life, expiring
//! [`poll::EXPIRY_MARGIN`] after their last `wait`) and the per-identity
//! cap on streams, which held polls count against. A global cap bounds the
//! polls held at once.
//!
//! # Layout
//! - `params`: the query and `If-None-Match`, checked.
//! - `poll`: the hold and the poll handler.
//! - `ack`: ACK and NACK.
//! - `render`: bodies rendered once per version ([`Bodies`]).
//! - `errors`: the JSON error body and status codes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::sync::Semaphore;
use tonic::Status;

use crate::accept::ConnInfo;
use crate::auth::{Action, Caller};
use crate::watch::admission::Credentials;
use crate::watch::{DiscoveryService, Parts};

mod ack;
mod errors;
mod params;
mod poll;
mod render;

pub use ack::MAX_ACK_BYTES;
pub use params::{DEFAULT_WAIT, MAX_WAIT};
pub use poll::{EXPIRY_MARGIN, MAX_JITTER};
pub use render::Bodies;

use errors::ApiError;
use render::View;

/// Polls held at once, across every caller, unless configured.
pub const DEFAULT_MAX_HELD_POLLS: usize = 20_000;

/// The HTTP API: its routes go next to the gRPC services (see
/// [`HttpApi::routes`]).
pub struct HttpApi {
    parts: Parts,
    held: Arc<Semaphore>,
    max_held: usize,
    request_timeout: Duration,
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

    /// The routes, to add to the tonic server beside the gRPC services
    /// (`Server::builder().accept_http1(true).add_routes(..)`). Any other
    /// path is a JSON 404, or gRPC's `UNIMPLEMENTED` for a gRPC request.
    pub fn routes(self) -> tonic::service::Routes {
        let router = axum::Router::new()
            .route("/v1/groups/{group}/snapshot", get(snapshot))
            .route("/v1/groups/{group}/values", get(values))
            .route("/v1/groups/{group}/ack", post(ack))
            .method_not_allowed_fallback(method_not_allowed)
            .fallback(not_found)
            .with_state(Arc::new(self));
        tonic::service::Routes::from(router)
    }

    /// Who is calling, and whether they may follow `group`; a refusal is
    /// logged and audited as `action`.
    fn authorize(&self, call: &Call, action: &str) -> Result<Caller, ApiError> {
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
    fn refused(&self, caller: &Caller, action: &str, group: &str, status: &Status) {
        tracing::info!(identity = %caller.identity, peer = %caller.peer, group, action, code = ?status.code(), reason = status.message(), "http call refused");
        if let Some(audit) = &self.parts.audit {
            audit.refused(caller, action, group, "", status);
        }
    }

    /// Whether `group` is known: it has a version (or a corrupt one), or
    /// some client (a stream, an xDS client or a held poll) waits for its
    /// first. Anything else is a 404, so a misspelt group is an error
    /// rather than a poll that never ends.
    fn known(&self, group: &str) -> bool {
        let hub = &self.parts.hub;
        hub.head(group).is_some() || hub.watched(group) || hub.corrupt().head(group).is_some()
    }
}

/// One call: its group, its request head and what it proved of its caller.
struct Call {
    group: String,
    parts: http::request::Parts,
    credentials: Credentials,
}

impl Call {
    /// Checks the group, and takes the caller's credentials from the
    /// connection (our accept loop's `ConnInfo`) and the headers.
    fn new(
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

    fn peer(&self) -> String {
        self.credentials
            .conn
            .as_ref()
            .map(|c| c.remote.to_string())
            .unwrap_or_default()
    }
}

type Group = Result<Path<String>, axum::extract::rejection::PathRejection>;

async fn snapshot(State(api): State<Arc<HttpApi>>, group: Group, request: Request) -> Response {
    polled(&api, group, request, View::Snapshot).await
}

async fn values(State(api): State<Arc<HttpApi>>, group: Group, request: Request) -> Response {
    polled(&api, group, request, View::Values).await
}

async fn polled(api: &HttpApi, group: Group, request: Request, view: View) -> Response {
    let (parts, _) = request.into_parts();
    let response = match Call::new(group, parts) {
        Ok(call) => poll::poll(api, call, view).await,
        Err(e) => Err(e),
    };
    let response = response.unwrap_or_else(ApiError::into_response);
    api.parts.metrics.http_polled(response.status().as_u16());
    response
}

async fn ack(State(api): State<Arc<HttpApi>>, group: Group, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let response = match Call::new(group, parts) {
        Ok(call) => ack::ack(&api, call, body).await,
        Err(e) => Err(e),
    };
    response.unwrap_or_else(ApiError::into_response)
}

async fn method_not_allowed(request: Request) -> Response {
    let mut e = ApiError::invalid(
        "method",
        format!("{} is not allowed here", request.method()),
    );
    e.status = http::StatusCode::METHOD_NOT_ALLOWED;
    e.code = "method_not_allowed";
    e.into_response()
}

/// A path of neither API: gRPC's `UNIMPLEMENTED` to a gRPC client (as
/// tonic's own fallback answers), a JSON 404 to anyone else.
async fn not_found(request: Request) -> Response {
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let (parts, ()) = Status::unimplemented("").into_http::<()>().into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    ApiError::not_found(format!(
        "{} {}: no such endpoint (see docs/http-api.md)",
        request.method(),
        request.uri().path()
    ))
    .into_response()
}
