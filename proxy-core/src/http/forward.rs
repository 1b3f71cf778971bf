//! One request, from routing to the upstream response: route match, rate
//! limit, endpoint pick, the upstream call with retries and the route's
//! deadline, and the bookkeeping (outlier detection, metrics). HTTP/1.1
//! upgrades branch off to [`super::upgrade`] once routed.
//!
//! Retry rules are in [`super::retry`]: an attempt that reached no upstream
//! is retried on another endpoint for any method, body included (the
//! request comes back whole); a 502, 503 or 504 answer is retried within the
//! route's `retries` for idempotent requests without a body (the body is
//! streamed, never buffered), after a short jittered pause. Each retry needs
//! the cluster's retry budget, and nothing is retried past the route's
//! deadline, which covers every attempt: when it passes before the
//! response head, the client gets 504; after it, the response body is cut
//! ([`super::body`]). A route without a timeout has no deadline; the wait
//! for each attempt's response head and the pauses between body bytes are
//! bounded by its idle timeout.
//!
//! `TE: trailers` is kept (it is the one `TE` value HTTP/2 allows, and
//! gRPC needs it end to end); every other hop-by-hop header goes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HOST, HeaderValue, TE};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;

use super::body::{BodyLimits, ProxyBody};
use super::conn::{ConnCtx, RequestGuard};
use super::headers::{append_forwarded_for, ensure_host, strip_hop_by_hop};
use super::local::LocalError;
use super::retry::{Outcome, RetryPlan, is_idempotent, retryable_status};
use super::upgrade;
use crate::clock;
use crate::cluster::lb::below;
use crate::cluster::outlier::InFlight;
use crate::cluster::{ClusterRt, UpstreamErrorKind};
use crate::ratelimit::retry_after_secs;
use crate::route::RouteRt;
use crate::upstream::{self, Failure, UpstreamBody};

/// Longest pause before retrying a 5xx answer (before jitter: 5 ms, 10 ms,
/// 20 ms... up to this).
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Serves one request; never fails (errors become local responses).
pub(crate) async fn handle(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Response<ProxyBody> {
    let guard = RequestGuard::new(ctx);
    let mut resp = route_and_forward(guard.ctx(), req).await;
    resp.body_mut().hold(guard);
    resp
}

async fn route_and_forward(ctx: &ConnCtx, req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let route = {
        // The guard is released before any await: routing reads one
        // consistent build, then holds only the route it chose.
        let compiled = ctx.listener.shared.compiled.load();
        let Some(table) = ctx.listener.http_routes(&compiled) else {
            return LocalError::NoRoute.response();
        };
        match table.find(&req) {
            Some(route) => route.clone(),
            None => {
                table.no_route.inc();
                return LocalError::NoRoute.response();
            }
        }
    };
    let resp = forward(ctx, &route, req, start).await;
    route.stats.count(resp.status());
    // 502, 503 and 504 are what the proxy's health counts as errors.
    ctx.listener
        .shared
        .health
        .record(retryable_status(resp.status()), clock::millis_at(start));
    route.stats.duration.observe(start.elapsed());
    resp
}

async fn forward(
    ctx: &ConnCtx,
    route: &RouteRt,
    mut req: Request<Incoming>,
    start: Instant,
) -> Response<ProxyBody> {
    let now_ns = clock::nanos_at(start);
    if let Some(limit) = &route.limit
        && let Err(wait) = limit.try_acquire(now_ns)
    {
        route.stats.rate_limited.inc();
        tracing::debug!(route = %route.name, limit = %limit.name, "rate limited");
        return LocalError::RateLimited {
            retry_after: retry_after_secs(wait),
        }
        .response();
    }
    let cluster: &ClusterRt = &route.cluster;
    // Before the hop-by-hop headers go: `Upgrade` is one of them.
    let upgrade = upgrade::asked(&mut req);
    let (mut parts, body) = req.into_parts();
    let te_trailers = asks_trailers(&parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    if te_trailers {
        parts
            .headers
            .insert(TE, HeaderValue::from_static("trailers"));
    }
    append_forwarded_for(&mut parts.headers, &ctx.peer_ip);
    ensure_host(&mut parts.headers, parts.uri.authority());
    parts.version = Version::HTTP_11;
    let deadline = route
        .timeout
        .map(|t| tokio::time::Instant::from_std(start + t));
    if let Some(asked) = upgrade {
        return upgrade::forward(ctx, route, parts, body, asked, deadline).await;
    }
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let replayable = body.is_end_stream();
    let mut plan = RetryPlan::new(
        route.retries,
        replayable,
        is_idempotent(&parts.method),
        cluster.endpoints.len(),
    );
    cluster.state.budget.deposit(now_ns / 1_000_000_000);

    // The request head, kept while another attempt may need to send it again.
    let mut parts = Some(parts);
    let mut body = (!replayable).then_some(body);
    // A request that reached no upstream, back for the next endpoint.
    let mut unsent: Option<Request<UpstreamBody>> = None;
    // Whether `Host` names the endpoint (the client sent none).
    let mut host_is_endpoint = false;
    // Endpoints this request tried and failed on (allocated on a retry
    // only), and the attempt's number.
    let mut tried = Vec::new();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let now_ms = if attempt == 1 {
            clock::millis_at(start)
        } else {
            clock::now_millis()
        };
        let Some(i) = cluster.pick(now_ms, &tried) else {
            return LocalError::NoHealthyEndpoint.response();
        };
        let endpoint = &cluster.endpoints[i];
        let request = match unsent.take() {
            Some(mut r) => {
                if host_is_endpoint {
                    r.headers_mut().insert(HOST, endpoint.host.clone());
                }
                r
            }
            None => {
                let head = if plan.may_resend() {
                    parts.clone()
                } else {
                    parts.take()
                };
                let Some(mut head) = head else {
                    // Unreachable: the head is only taken when no attempt
                    // may send it again.
                    return LocalError::UpstreamFailed.response();
                };
                // Origin form on the upstream connection.
                head.uri = Uri::from(path.clone());
                if !head.headers.contains_key(HOST) {
                    head.headers.insert(HOST, endpoint.host.clone());
                    host_is_endpoint = true;
                }
                let up_body = match body.take() {
                    Some(b) => Either::Left(b),
                    None => Either::Right(Empty::new()),
                };
                Request::from_parts(head, up_body)
            }
        };
        let in_flight = cluster
            .tracks_in_flight()
            .then(|| InFlight::new(&endpoint.state));
        let call = upstream::send(
            endpoint.address,
            &cluster.transport,
            cluster.connect_timeout,
            request,
        );
        // Without a route timeout, the wait for the head is still bounded:
        // by the idle timeout, as a stream's pauses are.
        let head_by = deadline.unwrap_or_else(|| tokio::time::Instant::now() + route.idle_timeout);
        let outcome = tokio::time::timeout_at(head_by, call).await;
        let now_ms = clock::now_millis();
        match outcome {
            Err(_) => {
                cluster.record(i, false, now_ms);
                cluster.upstream_error(UpstreamErrorKind::Timeout).inc();
                return LocalError::UpstreamTimeout.response();
            }
            Ok(Err(e)) => {
                cluster.record(i, false, now_ms);
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = %e, "upstream request failed");
                let (kind, outcome, back) = match e {
                    Failure::NotSent { request, .. } => {
                        (UpstreamErrorKind::Connect, Outcome::NotSent, Some(request))
                    }
                    Failure::Protocol(_) => {
                        (UpstreamErrorKind::Protocol, Outcome::FailedAfterSend, None)
                    }
                };
                cluster.upstream_error(kind).inc();
                if plan.retry(outcome)
                    && may_retry(cluster, now_ms)
                    && let Some(request) = back
                {
                    unsent = Some(*request);
                    tried.push(i);
                    continue;
                }
                return LocalError::UpstreamFailed.response();
            }
            Ok(Ok((resp, lease))) => {
                let status = resp.status();
                cluster.record(i, !status.is_server_error(), now_ms);
                if plan.retry(Outcome::Answered(status)) && may_retry(cluster, now_ms) {
                    drop(resp);
                    let cap = Duration::from_millis(5 << attempt.min(8)).min(MAX_RETRY_PAUSE);
                    let pause = Duration::from_micros(below(cap.as_micros() as u64 + 1));
                    let wake = tokio::time::Instant::now() + pause;
                    tokio::time::sleep_until(deadline.map_or(wake, |d| d.min(wake))).await;
                    tried.push(i);
                    continue;
                }
                let (mut head, body) = resp.into_parts();
                strip_hop_by_hop(&mut head.headers);
                // We speak HTTP/1.1 (or 2) downstream whatever the upstream spoke.
                head.version = Version::HTTP_11;
                let limits = BodyLimits {
                    deadline,
                    idle: route.idle_timeout,
                    cluster: route.cluster.clone(),
                };
                return Response::from_parts(
                    head,
                    ProxyBody::upstream(body, in_flight, lease, limits),
                );
            }
        }
    }
}

/// Whether the client's `TE` headers name `trailers`.
fn asks_trailers(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// Takes a retry from the cluster's budget, counting the outcome.
fn may_retry(cluster: &ClusterRt, now_ms: u64) -> bool {
    if cluster.state.budget.try_withdraw(now_ms / 1000) {
        cluster.stats.retries.inc();
        true
    } else {
        cluster.stats.budget_exhausted.inc();
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn te_trailers_is_found_among_other_codings() {
        let mut h = http::HeaderMap::new();
        assert!(!asks_trailers(&h));
        h.insert(TE, HeaderValue::from_static("gzip;q=0.5, Trailers"));
        assert!(asks_trailers(&h));
        h.insert(TE, HeaderValue::from_static("gzip"));
        assert!(!asks_trailers(&h));
    }
}
