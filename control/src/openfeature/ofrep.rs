//! OFREP, the OpenFeature Remote Evaluation Protocol, on the main port:
//! `POST /ofrep/v1/evaluate/flags/{key}` evaluates one flag and `POST
//! /ofrep/v1/evaluate/flags` every flag of the group, for the evaluation
//! context in the body (`{"context": {...}}`). The group is the
//! `Vane-Group` header, or else the caller's only agent binding. Bulk
//! answers carry `ETag: "<hash of the version>"` (followed by a digest of
//! the context when there is one), and `If-None-Match` of it is answered
//! 304.
//!
//! The version evaluated is the group's stable one: OFREP callers are not
//! nodes, so never members of a rollout's cohort.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};
use tonic::Status;
use vane_model::flags::eval::{EvalError, Evaluation};

use crate::auth::{Action, Caller};
use crate::http::errors::ApiError;
use crate::hub::Published;
use crate::openfeature::flagset::FlagSet;
use crate::targets;
use crate::watch::Parts;
use crate::watch::admission::Credentials;

/// The largest request body accepted.
/// (An evaluation context is a user's attributes: a few hundred bytes.)
pub const MAX_OFREP_BODY_BYTES: usize = 64 * 1024;
/// The header naming the group.
pub const GROUP_HEADER: &str = "vane-group";

/// One OFREP call's outcome before rendering.
type Answer = Result<Response, Refusal>;

/// A refusal: the HTTP status (and `Retry-After`) of an [`ApiError`], with
/// OFREP's body (`errorCode`, `errorDetails`, and the flag's `key`).
pub(crate) struct Refusal {
    error: ApiError,
    code: &'static str,
    key: Option<String>,
}

impl Refusal {
    fn new(error: ApiError, code: &'static str) -> Self {
        Self {
            error,
            code,
            key: None,
        }
    }

    fn of_status(status: &Status) -> Self {
        Self::new(ApiError::from_status(status), "GENERAL")
    }

    fn invalid(code: &'static str, what: &str, why: impl std::fmt::Display) -> Self {
        Self::new(ApiError::invalid(what, why), code)
    }

    fn about(mut self, key: &str) -> Self {
        self.key = Some(key.to_owned());
        self
    }

    fn into_response(self) -> Response {
        let mut body = Map::new();
        if let Some(key) = self.key {
            body.insert("key".into(), key.into());
        }
        body.insert("errorCode".into(), self.code.into());
        body.insert("errorDetails".into(), self.error.message.clone().into());
        let mut response = self.error.into_response();
        *response.body_mut() = Body::from(Value::Object(body).to_string());
        response
    }
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
pub(crate) async fn evaluate_one(
    parts: &Parts,
    key: &str,
    head: http::request::Parts,
    body: Body,
) -> Response {
    let answer = async {
        let (set, _) = admit(parts, &head).await.map_err(|r| r.about(key))?;
        let context = context(body).await.map_err(|r| r.about(key))?;
        let evaluation = match set.snapshot.evaluate_flag(key, &context, now_secs()) {
            Err(EvalError::Disabled(_)) => {
                return Ok(json_response(StatusCode::OK, &disabled(key)));
            }
            other => other,
        };
        let evaluation = evaluation.map_err(|e| {
            let status = match e {
                EvalError::NotFound(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_REQUEST,
            };
            let mut error = ApiError::invalid("key", &e);
            error.message = e.to_string();
            error.status = status;
            Refusal::new(error, e.code()).about(key)
        })?;
        Ok::<_, Refusal>(json_response(
            StatusCode::OK,
            &success(key, &evaluation, &set.metadata),
        ))
    }
    .await;
    finish(parts, answer, "flag")
}

/// `POST /ofrep/v1/evaluate/flags`.
pub(crate) async fn evaluate_all(
    parts: &Parts,
    head: http::request::Parts,
    body: Body,
) -> Response {
    let answer = async {
        let (set, version) = admit(parts, &head).await?;
        let context = context(body).await?;
        let etag = (!set.time_dependent).then(|| bulk_etag(&version.hash, &context));
        if let Some(etag) = &etag
            && matches_etag(&head.headers, etag)
        {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            set_etag(&mut response, etag);
            return Ok(response);
        }
        // Every flag's rule on the blocking pool: a large group must not
        // hold a runtime thread that serves streams.
        let body = tokio::task::spawn_blocking(move || bulk(&set, &context))
            .await
            .map_err(|e| {
                Refusal::new(
                    ApiError::internal(format!("evaluation failed: {e}")),
                    "GENERAL",
                )
            })?;
        let mut response = json_response(StatusCode::OK, &body);
        if let Some(etag) = &etag {
            set_etag(&mut response, etag);
        }
        Ok(response)
    }
    .await;
    finish(parts, answer, "bulk")
}

/// Every flag of `set` for `context`.
fn bulk(set: &FlagSet, context: &Map<String, Value>) -> Value {
    let now = now_secs();
    let flags: Vec<Value> = set
        .snapshot
        .all_flags()
        .into_iter()
        .map(
            |(key, flag)| match vane_model::flags::eval::evaluate(key, &flag, context, now) {
                Ok(evaluation) => success(key, &evaluation, &set.metadata),
                Err(EvalError::Disabled(_)) => disabled(key),
                Err(e) => json!({"key": key, "errorCode": e.code(), "errorDetails": e.to_string()}),
            },
        )
        .collect();
    json!({ "flags": flags })
}

/// The ETag of a bulk answer: the version's hash for an empty context (the
/// answer then depends on the version only); with a context, the hash and
/// a digest of the context, so a client that changes its context (OFREP's
/// web provider sends its last ETag with the new context) is not answered
/// 304 with the old context's evaluations.
fn bulk_etag(hash: &str, context: &Map<String, Value>) -> String {
    if context.is_empty() {
        return format!("\"{hash}\"");
    }
    // `Map` is sorted: the same context gives the same text.
    let digest =
        vane_model::ContentHash::of_bytes(Value::Object(context.clone()).to_string().as_bytes());
    format!("\"{hash}.{}\"", &digest.to_hex()[..16])
}

fn finish(parts: &Parts, answer: Answer, kind: &str) -> Response {
    let response = answer.unwrap_or_else(Refusal::into_response);
    parts
        .metrics
        .ofrep_evaluated(kind, response.status().as_u16());
    response
}

/// The caller, authorized on the group; the group's stable version's flags.
async fn admit(
    parts: &Parts,
    head: &http::request::Parts,
) -> Result<(Arc<FlagSet>, Arc<Published>), Refusal> {
    let credentials = Credentials {
        conn: head.extensions.get::<crate::accept::ConnInfo>().cloned(),
        authorization: head.headers.get(header::AUTHORIZATION).cloned(),
    };
    let caller = credentials
        .caller(&parts.auth)
        .map_err(|(anonymous, status)| {
            refused(parts, &anonymous, "", &status);
            Refusal::of_status(&status)
        })?;
    if parts.auth.enforced()
        && caller.identity.is_empty()
        && !head.headers.contains_key(GROUP_HEADER)
    {
        // No group to check an anonymous grant against: say what is
        // missing first, the credential.
        let status = Status::unauthenticated(
            "evaluating flags: needs a client certificate or a bearer token",
        );
        refused(parts, &caller, "", &status);
        return Err(Refusal::of_status(&status));
    }
    let group = group(parts, &caller, &head.headers)?;
    if let Err(status) = parts.auth.authorize(&caller, Action::Watch, &group) {
        refused(parts, &caller, &group, &status);
        return Err(Refusal::of_status(&status));
    }
    let stable = parts.hub.head(&group);
    let cohort = parts.cohorts.get(&group);
    let Some(version) = targets::target(&stable, &cohort, "") else {
        return Err(Refusal::new(
            ApiError::not_found(format!("group {group:?} has no version yet")),
            "GENERAL",
        ));
    };
    let set = version.flags().await.map_err(|reason| {
        Refusal::new(
            ApiError::internal(format!("version {}: {reason}", version.version)),
            "GENERAL",
        )
    })?;
    Ok((set, version))
}

/// The `Vane-Group` header, else the caller's only agent binding.
fn group(parts: &Parts, caller: &Caller, headers: &HeaderMap) -> Result<String, Refusal> {
    let header = GROUP_HEADER;
    match headers.get(header) {
        Some(value) => {
            let group = value
                .to_str()
                .map_err(|_| Refusal::invalid("GENERAL", header, "is not text"))?;
            vane_model::names::check_group(group)
                .map_err(|e| Refusal::invalid("GENERAL", header, e))?;
            Ok(group.to_owned())
        }
        None => parts.auth.only_group(caller, Action::Watch).ok_or_else(|| {
            Refusal::invalid(
                "GENERAL",
                "Vane-Group",
                "header missing (the group whose flags to evaluate), and the caller has no single group to take it from",
            )
        }),
    }
}

/// The evaluation context of the body: `{"context": {...}}` (both
/// optional); `targetingKey`, when given, is a string.
async fn context(body: Body) -> Result<Map<String, Value>, Refusal> {
    let bytes = axum::body::to_bytes(body, MAX_OFREP_BODY_BYTES)
        .await
        .map_err(|e| {
            Refusal::invalid(
                "PARSE_ERROR",
                "body",
                format!("unreadable or over {MAX_OFREP_BODY_BYTES} bytes ({e})"),
            )
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Refusal::invalid("PARSE_ERROR", "body", format!("not JSON: {e}")))?;
    let Value::Object(mut body) = body else {
        return Err(Refusal::invalid(
            "PARSE_ERROR",
            "body",
            "must be a JSON object ({\"context\": {...}})",
        ));
    };
    let context = match body.remove("context") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(context)) => context,
        Some(_) => {
            return Err(Refusal::invalid(
                "INVALID_CONTEXT",
                "context",
                "must be a JSON object",
            ));
        }
    };
    if let Some(key) = context.get("targetingKey")
        && !key.is_string()
    {
        return Err(Refusal::invalid(
            "INVALID_CONTEXT",
            "context.targetingKey",
            "must be a string",
        ));
    }
    Ok(context)
}

/// A flag's answer; its metadata over the flag set's, as the providers
/// merge them.
fn success(key: &str, e: &Evaluation, set_metadata: &Map<String, Value>) -> Value {
    let mut metadata = set_metadata.clone();
    metadata.extend(e.metadata.clone());
    json!({
        "key": key,
        "value": e.value,
        "variant": e.variant,
        "reason": e.reason.as_str(),
        "metadata": metadata,
    })
}

/// A disabled flag: no value, so the caller's default applies (OFREP's
/// rule for an absent value), with reason `DISABLED` as flagd gives.
fn disabled(key: &str) -> Value {
    json!({"key": key, "reason": "DISABLED"})
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn set_etag(response: &mut Response, etag: &str) {
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
}

/// Whether `If-None-Match` lists `etag` (or is `*`).
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

fn refused(parts: &Parts, caller: &Caller, group: &str, status: &Status) {
    tracing::info!(identity = %caller.identity, peer = %caller.peer, group, code = ?status.code(), reason = status.message(), "OFREP call refused");
    if let Some(audit) = &parts.audit {
        audit.refused(caller, "ofrep", group, "", status);
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    async fn parsed(body: &str) -> Result<Map<String, Value>, (u16, &'static str, String)> {
        context(Body::from(body.to_owned()))
            .await
            .map_err(|r| (r.error.status.as_u16(), r.code, r.error.message.clone()))
    }

    #[tokio::test]
    async fn the_context_is_optional_and_checked() {
        assert_eq!(parsed("").await.unwrap(), Map::new());
        assert_eq!(parsed("  \n").await.unwrap(), Map::new());
        assert_eq!(parsed("{}").await.unwrap(), Map::new());
        assert_eq!(parsed(r#"{"context": null}"#).await.unwrap(), Map::new());
        let c = parsed(r#"{"context": {"targetingKey": "u1", "tier": "gold"}, "extra": 1}"#)
            .await
            .unwrap();
        assert_eq!(c["tier"], "gold");
        for (body, code, field) in [
            ("{oops", "PARSE_ERROR", "body:"),
            ("[1]", "PARSE_ERROR", "body:"),
            (r#"{"context": [1]}"#, "INVALID_CONTEXT", "context:"),
            (
                r#"{"context": {"targetingKey": 7}}"#,
                "INVALID_CONTEXT",
                "context.targetingKey:",
            ),
        ] {
            let (status, c, message) = parsed(body).await.unwrap_err();
            assert_eq!((status, c), (400, code), "{body}");
            assert!(message.starts_with(field), "{body}: {message}");
        }
        let huge = format!(
            r#"{{"context": {{"k": "{}"}}}}"#,
            "x".repeat(MAX_OFREP_BODY_BYTES)
        );
        let (status, code, _) = parsed(&huge).await.unwrap_err();
        assert_eq!((status, code), (400, "PARSE_ERROR"));
    }

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_star() {
        let etag = "\"abc\"";
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            matches_etag(&h, etag)
        };
        assert!(with("\"abc\""));
        assert!(with("\"x\", \"abc\""));
        assert!(with("W/\"abc\""));
        assert!(with("*"));
        assert!(!with("\"abd\""));
        assert!(!with("abc"));
        assert!(!matches_etag(&HeaderMap::new(), etag));
    }

    #[test]
    fn refusals_carry_ofrep_bodies_and_http_statuses() {
        let r = Refusal::of_status(&Status::permission_denied("no")).about("k");
        let response = r.into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let r = Refusal::of_status(&Status::resource_exhausted("busy"));
        let response = r.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }
}
