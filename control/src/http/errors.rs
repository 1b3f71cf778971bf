//! The HTTP API's errors: a status code and a JSON body
//! `{"code": "...", "message": "..."}` whose message names the parameter or
//! field at fault, plus `Retry-After` on 429 and 503.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use tonic::{Code, Status};

/// One refusal, as the client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    /// A stable word: `invalid_argument`, `unauthenticated`, ...
    pub(crate) code: &'static str,
    pub(crate) message: String,
    /// Seconds for `Retry-After`.
    pub(crate) retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: `what` (a query parameter, header or body field) is wrong.
    pub(crate) fn invalid(what: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!("{what}: {why}"),
        )
    }

    /// 404.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 429 with `Retry-After`.
    pub(crate) fn exhausted(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "resource_exhausted", message)
        }
    }

    /// 503 with `Retry-After`: the server is shutting down.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    /// 500: the server could not render a body.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The HTTP form of a refusal the gRPC services share (authentication,
    /// authorization, caps).
    pub(crate) fn from_status(status: &Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::Unauthenticated => {
                Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
            }
            Code::PermissionDenied => {
                Self::new(StatusCode::FORBIDDEN, "permission_denied", message)
            }
            Code::InvalidArgument => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
            }
            // 412: the request is fine, the connection is not (private
            // keys over plaintext, `crate::secrets`).
            Code::FailedPrecondition => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "failed_precondition",
                message,
            ),
            Code::NotFound => Self::not_found(message),
            Code::ResourceExhausted => Self::exhausted(message, RETRY_AFTER_SECS),
            Code::Unavailable => Self::unavailable(message),
            _ => Self::internal(message),
        }
    }

    /// The response: the JSON body and its headers.
    pub(crate) fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.code, "message": self.message});
        let mut text = body.to_string();
        text.push('\n');
        let mut response = Response::new(Body::from(text));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// `Retry-After` of a refusal for a cap (per identity, or the server's).
pub(crate) const RETRY_AFTER_SECS: u64 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_both_ways_and_bodies_are_json() {
        for (status, http) in [
            (Status::unauthenticated("u"), 401),
            (Status::permission_denied("p"), 403),
            (Status::invalid_argument("i"), 400),
            (Status::not_found("n"), 404),
            (Status::resource_exhausted("r"), 429),
            (Status::unavailable("s"), 503),
        ] {
            let e = ApiError::from_status(&status);
            assert_eq!(e.status.as_u16(), http);
            assert_eq!(e.message, status.message());
        }
        let response = ApiError::exhausted("too many", 5).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        let e = ApiError::invalid("wait", "not a duration");
        assert_eq!(e.message, "wait: not a duration");
        assert_eq!(
            ApiError::from_status(&Status::unauthenticated("x"))
                .into_response()
                .headers()[header::WWW_AUTHENTICATE],
            "Bearer"
        );
    }
}
