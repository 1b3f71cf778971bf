//! One request, from routing to the upstream response: route match, rate
//! limit, endpoint pick, the upstream call with retries and the route's
//! deadline, and the bookkeeping (outlier detection, metrics). HTTP/1.1
//! upgrades branch off to [`super::upgrade`] once routed.
//!
//! Retry rules (each retry also needs the cluster's retry budget, see
//! [`crate::cluster::budget`]):
//! - only requests whose body is empty are retried: the body is streamed,
//!   never buffered, so there is nothing to send again otherwise;
//! - a connect failure (nothing was sent) is retried for any method, on
//!   another endpoint when there is one;
//! - a 502, 503 or 504 answer is retried for idempotent methods, after a
//!   short jittered pause;
//! - nothing is retried past the route's deadline, which covers every
//!   attempt: when it passes, the client gets 504.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::conn::{ConnCtx, RequestGuard};
use super::headers::{append_forwarded_for, ensure_host, strip_hop_by_hop};
use super::local::LocalError;
use super::upgrade;
use crate::clock;
use crate::cluster::lb::below;
use crate::cluster::outlier::InFlight;
use crate::cluster::{ClusterRt, UpstreamErrorKind};
use crate::ratelimit::retry_after_secs;
use crate::route::RouteRt;
use crate::upstream::{self, Failure};

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

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn retryable_status(s: StatusCode) -> bool {
    matches!(s.as_u16(), 502..=504)
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
    strip_hop_by_hop(&mut parts.headers);
    append_forwarded_for(&mut parts.headers, &ctx.peer_ip);
    ensure_host(&mut parts.headers, parts.uri.authority());
    parts.version = Version::HTTP_11;
    if let Some(asked) = upgrade {
        let deadline = tokio::time::Instant::from_std(start + route.timeout);
        return upgrade::forward(ctx, route, parts, body, asked, deadline).await;
    }
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let replayable = body.is_end_stream();
    let idempotent = is_idempotent(&parts.method);
    let max_attempts = if replayable { 1 + route.retries } else { 1 };
    let deadline = tokio::time::Instant::from_std(start + route.timeout);
    cluster.state.budget.deposit(now_ns / 1_000_000_000);

    // The request head, kept while another attempt may need it.
    let mut parts = Some(parts);
    let mut body = (!replayable).then_some(body);
    let mut avoid = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let now_ms = if attempt == 1 {
            clock::millis_at(start)
        } else {
            clock::now_millis()
        };
        let Some(i) = cluster.pick(now_ms, avoid) else {
            return LocalError::NoHealthyEndpoint.response();
        };
        let endpoint = &cluster.endpoints[i];
        let head = if attempt < max_attempts {
            parts.clone()
        } else {
            parts.take()
        };
        let Some(mut head) = head else {
            // Unreachable: the head is only taken on the last attempt.
            return LocalError::UpstreamFailed.response();
        };
        // Origin form on the upstream connection.
        head.uri = Uri::from(path.clone());
        if !head.headers.contains_key(HOST) {
            head.headers.insert(HOST, endpoint.host.clone());
        }
        let up_body = match body.take() {
            Some(b) => Either::Left(b),
            None => Either::Right(Empty::new()),
        };
        let in_flight = cluster
            .tracks_in_flight()
            .then(|| InFlight::new(&endpoint.state));
        let call = upstream::send(
            endpoint.address,
            cluster.connect_timeout,
            Request::from_parts(head, up_body),
        );
        let outcome = tokio::time::timeout_at(deadline, call).await;
        let now_ms = clock::now_millis();
        match outcome {
            Err(_) => {
                cluster.record(i, false, now_ms);
                cluster.upstream_error(UpstreamErrorKind::Timeout).inc();
                return LocalError::UpstreamTimeout.response();
            }
            Ok(Err(e)) => {
                cluster.record(i, false, now_ms);
                let kind = match e {
                    Failure::Connect(_) => UpstreamErrorKind::Connect,
                    Failure::Protocol(_) => UpstreamErrorKind::Protocol,
                };
                cluster.upstream_error(kind).inc();
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = %e, "upstream request failed");
                if kind == UpstreamErrorKind::Connect
                    && attempt < max_attempts
                    && may_retry(cluster, now_ms)
                {
                    avoid = Some(i);
                    continue;
                }
                return LocalError::UpstreamFailed.response();
            }
            Ok(Ok((resp, lease))) => {
                let status = resp.status();
                cluster.record(i, !status.is_server_error(), now_ms);
                if retryable_status(status)
                    && idempotent
                    && attempt < max_attempts
                    && may_retry(cluster, now_ms)
                {
                    drop(resp);
                    let cap = Duration::from_millis(5 << attempt.min(8)).min(MAX_RETRY_PAUSE);
                    let pause = Duration::from_micros(below(cap.as_micros() as u64 + 1));
                    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause))
                        .await;
                    avoid = Some(i);
                    continue;
                }
                let (mut head, body) = resp.into_parts();
                strip_hop_by_hop(&mut head.headers);
                // We speak HTTP/1.1 (or 2) downstream whatever the upstream spoke.
                head.version = Version::HTTP_11;
                return Response::from_parts(head, ProxyBody::upstream(body, in_flight, lease));
            }
        }
    }
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
