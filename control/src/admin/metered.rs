//! The Admin service counted and timed per call, as a wrapper around the
//! generated tonic server: `vane_control_admin_calls_total{method,code}`
//! and `vane_control_admin_call_duration_seconds{method}`. The method label
//! is one of the service's methods (the list generated from
//! `admin.proto`, `vane_proto::ADMIN_METHODS`) or `other`, so a client
//! calling made-up paths cannot grow the series; the code is the gRPC
//! status's name, one of seventeen.
//!
//! The code is read where tonic puts it: in the response headers when the
//! call failed before answering (every refusal of a unary call), else in
//! the trailers at the end of the body, whose end is also when the call is
//! timed. A body dropped before its end (the client went away) counts as
//! `Cancelled`.
//!
//! A push's [`Wake`] (in the response's extensions) is kept with the body
//! and dropped with it, after its trailers went to the connection: the
//! group's streams wake once the push is answered, not before.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::Frame;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::NamedService;

use crate::hub::Wake;

/// Bucket bounds, in seconds: from a `WhoAmI` (well under a millisecond)
/// to a large push on a loaded server.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

type CallLabels = [(&'static str, &'static str); 2];
type MethodLabel = [(&'static str, &'static str); 1];

/// The per-call metrics of the Admin service.
#[derive(Debug, Clone)]
pub struct CallMetrics {
    calls: Family<CallLabels, Counter>,
    duration: Family<MethodLabel, Histogram, fn() -> Histogram>,
}

impl Default for CallMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            duration: Family::new_with_constructor(histogram),
        }
    }
}

impl CallMetrics {
    /// Adds both families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "vane_control_admin_calls",
            "Admin API calls (vanectl and other operators' clients) answered, per method and gRPC code (OK, InvalidArgument, PermissionDenied, …); method `other` for paths the service does not have",
            self.calls.clone(),
        );
        registry.register(
            "vane_control_admin_call_duration_seconds",
            "Time from an Admin call's arrival to its last byte (its status), per method",
            self.duration.clone(),
        );
    }

    fn record(&self, method: &'static str, code: tonic::Code, took: f64) {
        self.calls
            .get_or_create(&[("method", method), ("code", code_name(code))])
            .inc();
        self.duration
            .get_or_create(&[("method", method)])
            .observe(took);
    }
}

/// The method label of a request path (`/vane.v1.Admin/Push` → `Push`).
fn method_of(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or("");
    vane_proto::ADMIN_METHODS
        .iter()
        .find(|m| **m == name)
        .copied()
        .unwrap_or("other")
}

/// The gRPC code's name as gRPC's own libraries label it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The `grpc-status` in `headers`, if there is one.
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|v| tonic::Code::from_bytes(v.as_bytes()))
}

/// A service (the generated Admin server) whose calls are counted and timed.
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
    metrics: CallMetrics,
}

impl<S> Metered<S> {
    /// Counts and times the calls of `inner` into `metrics`.
    pub fn new(inner: S, metrics: CallMetrics) -> Self {
        Self { inner, metrics }
    }
}

impl<S: NamedService> NamedService for Metered<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Metered<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let call = Call {
            metrics: self.metrics.clone(),
            method: method_of(request.uri().path()),
            start: Instant::now(),
            done: false,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let Ok(mut response) = answer.await;
            let wake = response.extensions_mut().remove::<Wake>();
            let mut call = call;
            if let Some(code) = status_in(response.headers()) {
                // Trailers-only: the call ended with its headers.
                call.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(MeteredBody {
                    body,
                    call,
                    _wake: wake,
                })
            }))
        })
    }
}

/// One call being answered; recorded once, when its status is known.
struct Call {
    metrics: CallMetrics,
    method: &'static str,
    start: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: tonic::Code) {
        if !self.done {
            self.done = true;
            self.metrics
                .record(self.method, code, self.start.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped before a status: the client went away mid-answer.
        self.finish(tonic::Code::Cancelled);
    }
}

/// A response body that records its call when the trailers (or the end)
/// go by.
struct MeteredBody {
    body: Body,
    call: Call,
    /// Dropped with the body (hub.rs, `Wake`).
    _wake: Option<Wake>,
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_in) {
                    this.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(status))) => this.call.finish(status.code()),
            // Ended without trailers: nothing said otherwise.
            Poll::Ready(None) => this.call.finish(tonic::Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_bounded_by_the_service() {
        assert_eq!(method_of("/vane.v1.Admin/Push"), "Push");
        assert_eq!(method_of("/vane.v1.Admin/ServerVersion"), "ServerVersion");
        assert_eq!(method_of("/vane.v1.Admin/NoSuchThing"), "other");
        assert_eq!(method_of(""), "other");
    }

    #[test]
    fn a_call_is_recorded_once() {
        let metrics = CallMetrics::default();
        let mut call = Call {
            metrics: metrics.clone(),
            method: "Get",
            start: Instant::now(),
            done: false,
        };
        call.finish(tonic::Code::NotFound);
        drop(call);
        let mut r = Registry::default();
        metrics.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains(r#"vane_control_admin_calls_total{method="Get",code="NotFound"} 1"#),
            "{text}"
        );
        assert!(!text.contains("Canceled"), "{text}");
        assert!(
            text.contains(r#"vane_control_admin_call_duration_seconds_count{method="Get"} 1"#),
            "{text}"
        );
    }

    use http_body_util::BodyExt as _;

    /// Answers every call with a push's answer carrying a `Wake`.
    #[derive(Clone)]
    struct Answers(std::sync::Arc<crate::hub::Hub>);

    impl Service<http::Request<Body>> for Answers {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            let hub = std::sync::Arc::clone(&self.0);
            Box::pin(async move {
                let published = crate::hub::Published::new(
                    "g".into(),
                    2,
                    "h2".into(),
                    1,
                    Bytes::from_static(b"x"),
                );
                let wake = hub.publish_prepared_deferred(published).await;
                let mut response = http::Response::new(Body::new(
                    http_body_util::Full::new(Bytes::from_static(b"answer"))
                        .map_err(|never| match never {}),
                ));
                if let Some(wake) = wake {
                    response.extensions_mut().insert(wake);
                }
                Ok(response)
            })
        }
    }

    #[tokio::test]
    async fn a_pushs_streams_wake_when_its_answer_body_is_dropped() {
        let hub = std::sync::Arc::new(crate::hub::Hub::new());
        let rx = hub.subscribe("g");
        let mut service =
            Metered::new(Answers(std::sync::Arc::clone(&hub)), CallMetrics::default());
        let Ok(response) = service.call(http::Request::new(Body::empty())).await;
        assert_eq!(hub.head("g").unwrap().version, 2);
        assert!(!rx.has_changed().unwrap(), "not before the answer went");
        assert!(
            response.extensions().get::<Wake>().is_none(),
            "moved to the body"
        );
        let mut body = response.into_body();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "answer");
        assert!(!rx.has_changed().unwrap(), "still being answered");
        drop(body);
        assert!(rx.has_changed().unwrap(), "the answer is handed over: wake");
    }
}
