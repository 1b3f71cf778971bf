//! A long poll: answer at once when the node's version is newer than what
//! the client has, else hold until a new version (or a new cohort during a
//! rollout), the end of `wait`, shutdown, or a reload that withdraws the
//! caller's access.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::agents::NodeInfo;
use crate::http::api::{Call, HttpApi};
use crate::http::errors::{ApiError, RETRY_AFTER_SECS};
use crate::http::params::{if_none_match, poll_params};
use crate::http::render::View;
use crate::hub::{Head, Published};
use crate::targets::{self, CohortView};
use crate::watch::admission::Access;

/// How long after its last poll's `wait` an HTTP node still counts as
/// connected: time for the client to handle an answer and poll again.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// The most a hold is shortened by, so that clients polling in step
/// drift apart: a tenth of `wait`, at most this.
pub const MAX_JITTER: Duration = Duration::from_secs(1);

/// What the client says it has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Known {
    /// `after_version`.
    pub(crate) after_version: u64,
    /// `If-None-Match`: when given it decides, and `after_version` is not
    /// looked at (during a rollout a node's version may go down).
    pub(crate) if_none_match: Option<Vec<String>>,
}

impl Known {
    /// Whether `version` is news to the client.
    pub(crate) fn is_new(&self, version: &Published) -> bool {
        match &self.if_none_match {
            Some(tags) => !tags.contains(&version.hash),
            None => version.version > self.after_version,
        }
    }
}

/// How a hold ended.
#[derive(Debug)]
pub(crate) enum Held {
    /// A version the client does not have.
    Fresh(Arc<Published>),
    /// Nothing new before the deadline: the node's version now (none yet).
    Unchanged(Head),
    /// The server is shutting down.
    Stopped,
    /// A reload withdrew the caller's access.
    Withdrawn(Status),
}

/// One hold's inputs.
pub(crate) struct Hold {
    pub(crate) heads: watch::Receiver<Head>,
    pub(crate) cohorts: watch::Receiver<CohortView>,
    /// The node id ("" when anonymous: never a cohort member).
    pub(crate) node: String,
    pub(crate) group: String,
    pub(crate) known: Known,
    pub(crate) until: Instant,
    pub(crate) stop: CancellationToken,
    /// Policy and token reloads, and the caller's standing to check again.
    pub(crate) access: Option<(watch::Receiver<u64>, Access)>,
}

impl Hold {
    /// Waits for the first of: a version new to the client (at once if
    /// there is one), the deadline, shutdown, withdrawn access.
    pub(crate) async fn run(self) -> Held {
        let Self {
            mut heads,
            mut cohorts,
            node,
            group,
            known,
            until,
            stop,
            access,
        } = self;
        let (mut changes, access) = access.unzip();
        loop {
            let head = heads.borrow_and_update().clone();
            let cohort = cohorts.borrow_and_update().clone();
            let target = targets::target(&head, &cohort, &node);
            if let Some(version) = &target
                && known.is_new(version)
            {
                return Held::Fresh(Arc::clone(version));
            }
            let reloaded = async {
                let changed = match &mut changes {
                    Some(changes) => changes.changed().await.is_ok(),
                    None => false,
                };
                if !changed {
                    // Nothing can change (any more): wait for the rest.
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => return Held::Stopped,
                () = reloaded => {
                    if let Some(access) = &access
                        && let Err(status) = access.recheck(&group)
                    {
                        return Held::Withdrawn(status);
                    }
                }
                changed = heads.changed() => {
                    // The hub outlives every poll; if not, stop holding.
                    if changed.is_err() {
                        return Held::Unchanged(target);
                    }
                }
                changed = cohorts.changed() => {
                    if changed.is_err() {
                        return Held::Unchanged(target);
                    }
                }
                () = tokio::time::sleep_until(until) => return Held::Unchanged(target),
            }
        }
    }
}

/// How long to hold a poll that asked for `wait`: shortened by up to a
/// tenth (at most [`MAX_JITTER`]), and ending a second before the server's
/// request timeout, which would otherwise cut it.
pub(crate) fn hold_for(wait: Duration, request_timeout: Duration) -> Duration {
    let most = (wait / 10).min(MAX_JITTER);
    let jitter = vane_backoff::full_jitter(most);
    wait.saturating_sub(jitter)
        .min(request_timeout.saturating_sub(Duration::from_secs(1)))
}

/// `GET /v1/groups/{group}/snapshot` and `/values`.
pub(crate) async fn poll(api: &HttpApi, call: Call, view: View) -> Result<Response, ApiError> {
    let group = call.group.clone();
    let caller = api.authorize(&call, "poll")?;
    let params = poll_params(call.parts.uri.query())?;
    let known = Known {
        after_version: params.after_version,
        if_none_match: if_none_match(&call.parts.headers)?,
    };
    if !api.known(&group) {
        return Err(ApiError::not_found(format!(
            "group {group:?}: no version was ever pushed to it and no client waits for one"
        )));
    }
    let parts = &api.parts;
    let _held = api.held.clone().try_acquire_owned().map_err(|_| {
        ApiError::exhausted(
            format!(
                "the server holds its maximum of {} polls (--max-held-polls)",
                api.max_held
            ),
            RETRY_AFTER_SECS,
        )
    })?;
    let _slot = if caller.identity.is_empty() {
        None
    } else {
        Some(parts.streams.acquire(&caller.identity).map_err(|status| {
            api.refused(&caller, "poll", &group, &status);
            ApiError::from_status(&status)
        })?)
    };
    let heads = parts.hub.subscribe(&group);
    let cohorts = parts.cohorts.subscribe(&group);
    let hold = hold_for(params.wait, api.request_timeout);
    let node = params.node.clone().unwrap_or_default();
    let key = match &params.node {
        None => None,
        Some(id) => {
            let target = targets::target(&heads.borrow(), &cohorts.borrow(), id);
            // It says it has the node's version: recorded as running it.
            let running = target
                .as_ref()
                .filter(|t| known.if_none_match.is_some() && !known.is_new(t))
                .map(|t| (t.version, t.hash.clone()));
            let info = NodeInfo {
                id: id.clone(),
                group: group.clone(),
                labels: params.labels.clone(),
                agent_build: user_agent(&call.parts.headers),
                client: "http".to_owned(),
            };
            let key = parts
                .agents
                .poll_as(
                    &info,
                    &caller.peer,
                    &caller.identity,
                    parts.max_agents,
                    hold + EXPIRY_MARGIN,
                    running.as_ref().map(|(v, h)| (*v, h.as_str())),
                )
                .map_err(|e| {
                    let status = Status::from(e);
                    api.refused(&caller, "poll", &group, &status);
                    ApiError::from_status(&status)
                })?;
            Some(key)
        }
    };
    let keys_refused = crate::secrets::refusal_for(call.credentials.conn.as_ref())
        .or_else(|| crate::secrets::anonymous_refusal(&parts.auth, &caller));
    let access = parts.auth.subscribe_changes().map(|changes| {
        let access = Access {
            auth: parts.auth.clone(),
            audit: parts.audit.clone(),
            credentials: call.credentials.clone(),
            caller,
        };
        (changes, access)
    });
    let _gauge = parts.metrics.http_held();
    let held = Hold {
        heads,
        cohorts,
        node,
        group,
        known,
        until: Instant::now() + hold,
        stop: parts.shutdown.clone(),
        access,
    }
    .run()
    .await;
    match held {
        Held::Fresh(version) => {
            // `/values` carries no key; `/snapshot` carries them all.
            if view == View::Snapshot
                && let Some(why) = &keys_refused
                && version.has_private_keys()
            {
                tracing::warn!(group = %version.group, version = version.version, "private keys not sent: {why}");
                return Err(ApiError::from_status(&crate::secrets::refused(
                    &version.group,
                    version.version,
                    why,
                )));
            }
            let body = version
                .http_bodies()
                .get(&version.snapshot, view, params.format)
                .await
                .map_err(ApiError::internal)?;
            if let Some(key) = &key {
                parts
                    .agents
                    .record_http_sent(key, version.version, &version.hash);
            }
            let mut response = versioned(StatusCode::OK, Some(&version), Body::from(body));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(params.format.content_type()),
            );
            Ok(response)
        }
        Held::Unchanged(target) => Ok(versioned(
            StatusCode::NOT_MODIFIED,
            target.as_deref(),
            Body::empty(),
        )),
        Held::Stopped => Err(ApiError::unavailable(
            "the server is shutting down; poll again (another replica, or this one once it is back)",
        )),
        Held::Withdrawn(status) => Err(ApiError::from_status(&status)),
    }
}

/// A response with `Vane-Version` (0: none yet) and the `ETag` of `version`.
fn versioned(status: StatusCode, version: Option<&Published>, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        "vane-version",
        HeaderValue::from(version.map_or(0, |v| v.version)),
    );
    if let Some(v) = version
        && let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", v.hash))
    {
        headers.insert(header::ETAG, etag);
    }
    // Every answer depends on the query and the caller: never cached.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The client's `User-Agent`, shown as the node's build (cut to the
/// registry's field limit).
fn user_agent(headers: &http::HeaderMap) -> String {
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    crate::text::prefix(agent, crate::watch::MAX_NODE_FIELD_LEN)
}

#[cfg(test)]
mod tests;
