//! The console API's errors: an Admin refusal (a gRPC status) as an HTTP
//! status and the JSON body `{"code": "...", "message": "..."}` the page
//! shows, `code` being the gRPC code in snake case (`permission_denied`).

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;
use tonic::{Code, Status};

/// One refusal, as the page reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    /// A stable word: `unauthenticated`, `permission_denied`, ...
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    /// 400: `what` (a path segment, query parameter or body field) is wrong.
    pub(crate) fn invalid(what: &str, why: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_argument",
            message: format!("{what}: {why}"),
        }
    }

    /// 403 for a request the console itself refuses before asking the
    /// server (a missing anti-forgery header, a foreign `Host`).
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: "permission_denied",
            message: message.into(),
        }
    }

    /// 404 for a path of no endpoint.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> Self {
        let (http, code) = match status.code() {
            Code::Ok => (StatusCode::OK, "ok"),
            Code::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "cancelled"),
            Code::Unknown => (StatusCode::INTERNAL_SERVER_ERROR, "unknown"),
            Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
            Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
            Code::FailedPrecondition => (StatusCode::CONFLICT, "failed_precondition"),
            Code::Aborted => (StatusCode::CONFLICT, "aborted"),
            Code::OutOfRange => (StatusCode::BAD_REQUEST, "out_of_range"),
            Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "unimplemented"),
            Code::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Code::DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "data_loss"),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        };
        Self {
            status: http,
            code,
            message: status.message().to_owned(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            code: self.code,
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_meaning_over_http() {
        let denied = ApiError::from(Status::permission_denied("identity \"r\" may not push"));
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        assert_eq!(denied.code, "permission_denied");
        assert_eq!(denied.message, "identity \"r\" may not push");
        let who = ApiError::from(Status::unauthenticated("no"));
        assert_eq!(who.status, StatusCode::UNAUTHORIZED);
        let busy = ApiError::from(Status::failed_precondition("a rollout runs"));
        assert_eq!(
            (busy.status, busy.code),
            (StatusCode::CONFLICT, "failed_precondition")
        );
    }
}
