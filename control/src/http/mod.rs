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
//! - `api`: [`HttpApi`] and what every call does first.
//! - `params`: the query and `If-None-Match`, checked.
//! - `poll`: the hold and the poll handler.
//! - `ack`: ACK and NACK.
//! - `render`: bodies rendered once per version ([`Bodies`]).
//! - `errors`: the JSON error body and status codes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use tonic::Status;

mod ack;
mod api;
pub(crate) mod errors;
mod params;
mod poll;
pub(crate) mod render;

use api::Call;
pub use api::{DEFAULT_MAX_HELD_POLLS, HttpApi};

pub use ack::MAX_ACK_BYTES;
pub use params::{DEFAULT_WAIT, MAX_WAIT};
pub use poll::{EXPIRY_MARGIN, MAX_JITTER};
pub use render::Bodies;

use errors::ApiError;
use render::View;

impl HttpApi {
    /// The routes, to add to the tonic server beside the gRPC services
    /// (`Server::builder().accept_http1(true).add_routes(..)`). Any other
    /// path is a JSON 404, or gRPC's `UNIMPLEMENTED` for a gRPC request.
    pub fn routes(self) -> tonic::service::Routes {
        let router = axum::Router::new()
            .route("/v1/groups/{group}/snapshot", get(snapshot))
            .route("/v1/groups/{group}/values", get(values))
            .route("/v1/groups/{group}/ack", post(ack))
            .route("/ofrep/v1/evaluate/flags", post(ofrep_all))
            .route("/ofrep/v1/evaluate/flags/{key}", post(ofrep_one))
            .method_not_allowed_fallback(method_not_allowed)
            .fallback(not_found)
            .with_state(Arc::new(self));
        tonic::service::Routes::from(router)
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

async fn ofrep_one(
    State(api): State<Arc<HttpApi>>,
    Path(key): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    crate::openfeature::ofrep::evaluate_one(&api.parts, &key, parts, body).await
}

async fn ofrep_all(State(api): State<Arc<HttpApi>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    crate::openfeature::ofrep::evaluate_all(&api.parts, parts, body).await
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
