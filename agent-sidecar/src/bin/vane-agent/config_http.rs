//! `GET /config` on the sidecar's admin port: the running configuration as
//! the JSON document `--output` is written as (or YAML with
//! `?format=yaml`), for programs that read their configuration from
//! localhost, with a conditional GET and a long poll.
//!
//! - `ETag: "<hash>"` (the configuration's content hash), `Vane-Version`,
//!   `Vane-Source`. `If-None-Match` with the current hash: `304`. As in the
//!   control server's HTTP API (docs/http-api.md): a weak tag, a list and a
//!   `sha256:` prefix are accepted, and when `If-None-Match` is given it
//!   decides (`after_version` is not looked at).
//! - `?wait=DURATION` (`30s`, `500ms`, `1m`; a bare number is seconds; at
//!   most [`MAX_WAIT`], longer is cut to it): with an `If-None-Match` that
//!   matches, or `?after_version=N` when the running version is not above
//!   N, waits until a new version is applied (`200`) or the wait passes
//!   (`304`). Without either condition there is nothing to wait for: `200`.
//! - `503` with the reason while no configuration from the control plane is
//!   served (nothing, or only the embedded defaults: exactly when `/readyz`
//!   says not ready); with `?wait` it waits for the first one.
//! - `400` naming the query parameter when one is malformed or unknown.
//!
//! Waiting is bounded: at most [`MAX_WAITERS`] requests wait at once (more
//! get `503` and `Retry-After: 1`), each holds its connection's deadline
//! off only for its wait (see `vane_admin_http::ConnHold`), and shutdown
//! ends every wait at once.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{Semaphore, watch};
use vane_admin_http::ConnHold;
use vane_agent::{AgentHandle, Current, Source};

use crate::output::{OutputFormat, document, encode};

/// The longest `?wait` (a longer one is cut to this).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(60);
/// Most requests waiting at once.
pub(crate) const MAX_WAITERS: usize = 64;
/// How long past its wait a long poll's connection may stay quiet (to
/// render and send the answer).
const HOLD_MARGIN: Duration = Duration::from_secs(5);

/// What `/config` needs.
#[derive(Clone)]
pub(crate) struct ConfigState {
    pub(crate) agent: AgentHandle,
    pub(crate) group: String,
    pub(crate) waiters: Arc<Semaphore>,
    pub(crate) stop: watch::Receiver<bool>,
}

/// The query of one `/config` request.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ConfigQuery {
    pub(crate) wait: Option<Duration>,
    pub(crate) after_version: Option<u64>,
    pub(crate) format: Option<OutputFormat>,
}

/// Parses `/config`'s query; the error names the parameter and the reason.
pub(crate) fn parse_query(query: Option<&str>) -> Result<ConfigQuery, String> {
    let mut q = ConfigQuery::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "wait" => q.wait = Some(parse_wait(value).map_err(|e| format!("wait: {e}"))?),
            "after_version" => {
                q.after_version =
                    Some(value.parse().map_err(|_| {
                        format!("after_version: {value:?} is not a version number")
                    })?);
            }
            "format" => {
                q.format = Some(match value {
                    "json" => OutputFormat::Json,
                    "yaml" => OutputFormat::Yaml,
                    _ => return Err(format!("format: {value:?} is not json or yaml")),
                });
            }
            _ => {
                return Err(format!(
                    "{key}: unknown parameter (known: wait, after_version, format)"
                ));
            }
        }
    }
    Ok(q)
}

/// Parses a wait: a duration such as `30s`, `500ms`, `1m`, or a bare number
/// of seconds; cut to [`MAX_WAIT`].
pub(crate) fn parse_wait(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err("empty; give a duration such as 30s".into());
    }
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?} is not a duration such as 30s: {e}"))?,
    };
    Ok(d.min(MAX_WAIT))
}

/// Whether an `If-None-Match` value names `hash` (quoted or not, weak or
/// not, `sha256:` or not, in a list). `*` is not supported: a long poll on
/// "anything" would never end early.
fn matches(if_none_match: &str, hash: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|tag| {
        let tag = tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"');
        tag.strip_prefix("sha256:").unwrap_or(tag) == hash
    })
}

/// Whether the client has `c` already: its `If-None-Match` names `c`'s hash
/// (when given, it decides), else `c` is not above its `after_version`.
fn has_it(c: &Current, if_none_match: Option<&str>, after_version: Option<u64>) -> bool {
    match (if_none_match, after_version) {
        (Some(v), _) => matches(v, &c.hash),
        (None, Some(n)) => c.version <= n,
        (None, None) => false,
    }
}

/// Whether `c` is a configuration from the control plane (live or cached).
fn serving(c: &Current) -> bool {
    matches!(c.source, Source::Live | Source::Cache)
}

pub(crate) async fn get_config(
    State(s): State<ConfigState>,
    ConnectInfo(hold): ConnectInfo<ConnHold>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    // The whole configuration of the group is for the programs beside the
    // sidecar, not for whoever reaches the admin port (which also serves
    // probes and scrapes, so it may listen beyond loopback).
    if !hold.peer().is_some_and(|p| p.ip().is_loopback()) {
        return (
            StatusCode::FORBIDDEN,
            "GET /config answers clients on loopback only\n",
        )
            .into_response();
    }
    let q = match parse_query(query.as_deref()) {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let if_none_match = match headers.get(header::IF_NONE_MATCH).map(HeaderValue::to_str) {
        None => None,
        Some(Ok(v)) => Some(v.to_owned()),
        Some(Err(_)) => {
            return (StatusCode::BAD_REQUEST, "If-None-Match: not ASCII\n").into_response();
        }
    };
    // A change is wanted when there is nothing to serve yet, or when the
    // client has what runs.
    let wants_change =
        |c: &Current| !serving(c) || has_it(c, if_none_match.as_deref(), q.after_version);
    let mut changes = s.agent.subscribe();
    let mut current = changes.borrow_and_update().clone();
    if let Some(wait) = q.wait.filter(|w| !w.is_zero())
        && wants_change(&current)
    {
        let Ok(_slot) = s.waiters.clone().try_acquire_owned() else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                format!("too many requests waiting (at most {MAX_WAITERS}); retry\n"),
            )
                .into_response();
        };
        let _held = hold.hold_for(wait + HOLD_MARGIN);
        let deadline = tokio::time::Instant::now() + wait;
        let mut stop = s.stop.clone();
        while wants_change(&current) && !*stop.borrow_and_update() {
            tokio::select! {
                r = changes.changed() => if r.is_err() { break },
                _ = stop.changed() => break,
                () = tokio::time::sleep_until(deadline) => break,
            }
            current = changes.borrow_and_update().clone();
        }
    }
    answer(&s, &current, &q, if_none_match.as_deref())
}

fn answer(s: &ConfigState, c: &Current, q: &ConfigQuery, if_none_match: Option<&str>) -> Response {
    if !serving(c) {
        let reason = match s.agent.health().state {
            vane_agent::HealthState::Degraded { reason } => reason,
            vane_agent::HealthState::Healthy => "serving the embedded defaults".to_owned(),
        };
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no configuration from the control plane yet: {reason}\n"),
        )
            .into_response();
    }
    let meta = [
        (header::ETAG, format!("\"{}\"", c.hash)),
        (
            header::HeaderName::from_static("vane-version"),
            c.version.to_string(),
        ),
        (
            header::HeaderName::from_static("vane-source"),
            c.source.as_str().to_owned(),
        ),
    ];
    if has_it(c, if_none_match, q.after_version) {
        return (StatusCode::NOT_MODIFIED, meta).into_response();
    }
    let format = q.format.unwrap_or(OutputFormat::Json);
    match encode(&document(c, &s.group), format) {
        Ok(body) => {
            let content_type = match format {
                OutputFormat::Json => "application/json",
                OutputFormat::Yaml => "application/yaml",
            };
            (
                StatusCode::OK,
                meta,
                [(header::CONTENT_TYPE, content_type)],
                body,
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode version {}: {e}\n", c.version),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse_and_are_capped() {
        assert_eq!(parse_wait("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_wait("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_wait("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_wait("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_wait("10m"), Ok(MAX_WAIT), "cut to the cap");
        assert_eq!(parse_wait("0"), Ok(Duration::ZERO));
        for bad in ["", "soon", "30x", "-1s", "1.5.s"] {
            assert!(parse_wait(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn queries_parse_and_errors_name_the_parameter() {
        assert_eq!(parse_query(None), Ok(ConfigQuery::default()));
        let q = parse_query(Some("wait=2s&after_version=7&format=yaml")).unwrap();
        assert_eq!(
            q,
            ConfigQuery {
                wait: Some(Duration::from_secs(2)),
                after_version: Some(7),
                format: Some(OutputFormat::Yaml),
            }
        );
        let e = parse_query(Some("wait=forever")).unwrap_err();
        assert!(e.starts_with("wait: \"forever\""), "{e}");
        let e = parse_query(Some("after_version=x")).unwrap_err();
        assert!(e.starts_with("after_version: "), "{e}");
        let e = parse_query(Some("format=xml")).unwrap_err();
        assert!(e.starts_with("format: "), "{e}");
        let e = parse_query(Some("wiat=1s")).unwrap_err();
        assert!(e.starts_with("wiat: unknown parameter"), "{e}");
    }

    #[test]
    fn if_none_match_forms() {
        assert!(matches("\"abc\"", "abc"));
        assert!(matches("W/\"abc\"", "abc"));
        assert!(matches("\"x\", \"abc\"", "abc"));
        assert!(!matches("*", "abc"));
        assert!(matches("abc", "abc"));
        assert!(matches("\"sha256:abc\"", "abc"));
        assert!(!matches("\"abd\"", "abc"));
    }
}
