//! Responses the proxy makes itself. Each names its cause in the
//! `x-vane-error` header so a client (and an operator reading its logs) can
//! tell a proxy decision from an upstream's answer. None of them is ever
//! caused by the control plane: the request path never consults it.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use super::body::ProxyBody;

/// The header naming the cause of a local response.
pub(crate) const X_VANE_ERROR: HeaderName = HeaderName::from_static("x-vane-error");

/// Why the proxy answered by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalError {
    /// 404: no route of the listener matches.
    NoRoute,
    /// 429: the route's rate limit is spent; retry after this many seconds.
    RateLimited {
        /// Seconds until a token is available.
        retry_after: u64,
    },
    /// 502: connecting to or talking to the upstream failed.
    UpstreamFailed,
    /// 503: every endpoint of the cluster is ejected.
    NoHealthyEndpoint,
    /// 504: no upstream response before the route's deadline.
    UpstreamTimeout,
}

impl LocalError {
    /// Status, `x-vane-error` value and body text.
    fn parts(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            LocalError::NoRoute => (
                StatusCode::NOT_FOUND,
                "no_route",
                "no route matches this request\n",
            ),
            LocalError::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "rate limit exceeded\n",
            ),
            LocalError::UpstreamFailed => (
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                "the upstream could not be reached or failed\n",
            ),
            LocalError::NoHealthyEndpoint => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_endpoint",
                "no healthy endpoint in the cluster\n",
            ),
            LocalError::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the upstream did not answer in time\n",
            ),
        }
    }

    /// The response.
    pub(crate) fn response(self) -> Response<ProxyBody> {
        let (status, code, text) = self.parts();
        let mut resp = Response::new(ProxyBody::local(Bytes::from_static(text.as_bytes())));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(X_VANE_ERROR, HeaderValue::from_static(code));
        if let LocalError::RateLimited { retry_after } = self {
            h.insert(RETRY_AFTER, HeaderValue::from(retry_after));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_names_its_cause() {
        let cases = [
            (LocalError::NoRoute, 404, "no_route"),
            (
                LocalError::RateLimited { retry_after: 3 },
                429,
                "rate_limited",
            ),
            (LocalError::UpstreamFailed, 502, "upstream_failed"),
            (LocalError::NoHealthyEndpoint, 503, "no_healthy_endpoint"),
            (LocalError::UpstreamTimeout, 504, "upstream_timeout"),
        ];
        for (e, status, code) in cases {
            let r = e.response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()[X_VANE_ERROR], code);
        }
        let r = LocalError::RateLimited { retry_after: 3 }.response();
        assert_eq!(r.headers()[RETRY_AFTER], "3");
    }
}
