//! `POST /v1/groups/{group}/ack`: an HTTP node says it applied a version
//! (`"error": null`) or refused it (`"error": {"message": ...}`). The
//! version must be one this server sent the node, or the node's version
//! now; each field is checked and named when wrong.

use axum::body::Body;
use axum::response::Response;
use http::StatusCode;
use serde::Deserialize;

use crate::agents::ReportRefused;
use crate::http::api::{Call, HttpApi};
use crate::http::errors::ApiError;
use crate::http::params::check_text;
use crate::targets;
use crate::watch::admission::nack_reason;

/// Largest ACK body accepted (a NACK's message is cut to
/// [`crate::watch::MAX_NACK_REASON_LEN`] anyway).
pub const MAX_ACK_BYTES: usize = 64 * 1024;

/// The body as sent; every field optional here so a missing one is named.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    node: Option<String>,
    version: Option<u64>,
    hash: Option<String>,
    #[serde(default)]
    error: Option<AckError>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckError {
    message: Option<String>,
}

/// A checked report.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    node: String,
    version: u64,
    hash: String,
    /// The NACK's reason; `None`: an ACK.
    nack: Option<String>,
}

/// Parses and checks a body, naming the field at fault.
fn report(body: &[u8]) -> Result<Report, ApiError> {
    // serde would also read a struct from an array (`["web-1", 7, ...]`),
    // whose errors could name no field: the body is an object or nothing.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: AckBody = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // The fields down to where it broke. Only names of this body count:
        // an unknown key is the client's text (it may hold `: `), and
        // serde's `?` (a key not read yet) names nothing, so the path ends
        // before either, and the reason says which key it was.
        let mut field = String::new();
        for segment in e.path().iter() {
            let serde_path_to_error::Segment::Map { key } = segment else {
                break;
            };
            let known = match field.as_str() {
                "" => ["node", "version", "hash", "error"].contains(&key.as_str()),
                "error" => key == "message",
                _ => false,
            };
            if !known {
                break;
            }
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(key);
        }
        let field = if field.is_empty() { "body" } else { &field };
        ApiError::invalid(field, e.into_inner())
    })?;
    // One JSON value and nothing after it: `{...} garbage` or two objects
    // would otherwise be read as the first one alone.
    de.end().map_err(|e| ApiError::invalid("body", e))?;
    let node = parsed
        .node
        .ok_or_else(|| ApiError::invalid("node", "required"))?;
    check_text("node", &node)?;
    let version = parsed
        .version
        .ok_or_else(|| ApiError::invalid("version", "required"))?;
    if version == 0 {
        return Err(ApiError::invalid("version", "must be at least 1"));
    }
    let hash = parsed
        .hash
        .ok_or_else(|| ApiError::invalid("hash", "required"))?;
    let hash = hash.strip_prefix("sha256:").unwrap_or(&hash).to_owned();
    if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ApiError::invalid(
            "hash",
            "must be 64 lowercase hex digits (the ETag without its quotes)",
        ));
    }
    let nack = match parsed.error {
        None => None,
        Some(AckError { message: None }) => {
            return Err(ApiError::invalid("error.message", "required with error"));
        }
        Some(AckError {
            message: Some(message),
        }) => Some(nack_reason(&message)),
    };
    Ok(Report {
        node,
        version,
        hash,
        nack,
    })
}

/// Handles one ACK or NACK: 204 once recorded.
pub(crate) async fn ack(api: &HttpApi, call: Call, body: Body) -> Result<Response, ApiError> {
    let caller = api.authorize(&call, "ack")?;
    let group = &call.group;
    let body = axum::body::to_bytes(body, MAX_ACK_BYTES)
        .await
        .map_err(|_| {
            let mut e = ApiError::invalid(
                "body",
                format!("over the limit of {MAX_ACK_BYTES} bytes (or unreadable)"),
            );
            e.status = StatusCode::PAYLOAD_TOO_LARGE;
            e
        })?;
    let report = report(&body)?;
    let parts = &api.parts;
    let sent = parts
        .agents
        .http_sent(group, &report.node, &caller.identity)
        .map_err(|e| match e {
            ReportRefused::Owned { .. } => {
                let status = tonic::Status::permission_denied(e.to_string());
                api.refused(&caller, "ack", group, &status);
                ApiError::from_status(&status)
            }
            ReportRefused::Unknown | ReportRefused::Stream => {
                ApiError::invalid("node", e.to_string().trim_start_matches("node: "))
            }
        })?;
    // What the node may be reporting on: what it was sent, or what it
    // should run now (it may have read it from another replica).
    let head = parts.hub.head(group);
    let target = targets::target(&head, &parts.cohorts.get(group), &report.node);
    let candidates = [
        Some(sent.clone()),
        target.map(|t| (t.version, t.hash.clone())),
    ];
    let mut versions = candidates.iter().flatten().filter(|(v, _)| *v > 0);
    match versions.find(|(v, _)| *v == report.version) {
        Some((_, hash)) if *hash == report.hash => {}
        Some((version, _)) => {
            return Err(ApiError::invalid(
                "hash",
                format!("is not the hash of version {version}"),
            ));
        }
        None => {
            return Err(ApiError::invalid(
                "version",
                format!(
                    "{} was not sent to node {:?} (last sent: {}, group's head: {})",
                    report.version,
                    report.node,
                    sent.0,
                    head.as_ref().map_or(0, |h| h.version)
                ),
            ));
        }
    }
    parts.agents.record_http_report(
        group,
        &report.node,
        report.version,
        &report.hash,
        report.nack.as_deref(),
    );
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        report(body.as_bytes()).unwrap_err().message
    }

    #[test]
    fn reports_parse_and_each_error_names_its_field() {
        let h = "a".repeat(64);
        let ok =
            report(format!(r#"{{"node":"n","version":3,"hash":"{h}","error":null}}"#).as_bytes())
                .unwrap();
        assert_eq!((ok.node.as_str(), ok.version, ok.nack), ("n", 3, None));
        let nack = report(
            format!(
                r#"{{"node":"n","version":3,"hash":"sha256:{h}","error":{{"message":" bad "}}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(nack.nack.as_deref(), Some("bad"));
        assert_eq!(nack.hash, h);
        assert!(err(r#"{"version":1}"#).starts_with("node: required"));
        assert!(err(&format!(r#"{{"node":"n","hash":"{h}"}}"#)).starts_with("version: required"));
        assert!(err(r#"{"node":"n","version":"x"}"#).starts_with("version: invalid type"));
        assert!(
            err(&format!(r#"{{"node":"n","version":0,"hash":"{h}"}}"#))
                .starts_with("version: must be")
        );
        assert!(err(r#"{"node":"n","version":1,"hash":"xyz"}"#).starts_with("hash: must be"));
        assert!(
            err(&format!(
                r#"{{"node":"n","version":1,"hash":"{h}","error":{{}}}}"#
            ))
            .starts_with("error.message: required")
        );
        assert!(
            err(r#"{"node":"n","extra":1}"#).starts_with("extra: unknown field")
                || err(r#"{"node":"n","extra":1}"#).starts_with("body: unknown field"),
            "{}",
            err(r#"{"node":"n","extra":1}"#)
        );
        assert!(err("not json").starts_with("body: "));
        assert!(err(r#"{"node":"","version":1}"#).starts_with("node: must not be empty"));
    }

    /// Hostile bodies: each is refused (400, by the caller) with a message
    /// that starts with the field at fault, or `body` when the fault is the
    /// document itself; none panics.
    #[test]
    fn hostile_bodies_are_refused_naming_the_field() {
        let h = "a".repeat(64);
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let cases: Vec<(String, &str)> = vec![
            // Extra fields, at the top and inside `error`.
            (
                format!(r#"{{"node":"n","version":1,"hash":"{h}","x":1}}"#),
                "body: unknown field `x`",
            ),
            // An unknown key that looks like `field: reason` itself.
            (
                r#"{"node":"n","nginx -t: bad":1}"#.into(),
                "body: unknown field `nginx -t: bad`",
            ),
            (
                format!(
                    r#"{{"node":"n","version":1,"hash":"{h}","error":{{"message":"m","code":3}}}}"#
                ),
                "error: unknown field `code`",
            ),
            (
                format!(r#"{{"node":"n","version":1,"hash":"{h}","error":{{"version":3}}}}"#),
                "error: unknown field `version`",
            ),
            // Wrong types.
            (r#"{"node":5}"#.into(), "node: invalid type"),
            (
                r#"{"node":"n","version":"1"}"#.into(),
                "version: invalid type",
            ),
            (
                r#"{"node":"n","version":1.0}"#.into(),
                "version: invalid type",
            ),
            (
                r#"{"node":"n","version":-1}"#.into(),
                "version: invalid value",
            ),
            (
                r#"{"node":"n","version":true}"#.into(),
                "version: invalid type",
            ),
            (
                r#"{"node":"n","version":1,"hash":[]}"#.into(),
                "hash: invalid type",
            ),
            (
                format!(r#"{{"node":"n","version":1,"hash":"{h}","error":"bad"}}"#),
                "error: invalid type",
            ),
            (
                format!(r#"{{"node":"n","version":1,"hash":"{h}","error":{{"message":7}}}}"#),
                "error.message: invalid type",
            ),
            ("[]".into(), "body: must be a JSON object"),
            (
                format!(r#"["n", 1, "{h}", null]"#),
                "body: must be a JSON object",
            ),
            ("null".into(), "body: must be a JSON object"),
            ("\"x\"".into(), "body: must be a JSON object"),
            // Overflowing numbers.
            (
                r#"{"node":"n","version":18446744073709551616}"#.into(),
                "version: ",
            ),
            (r#"{"node":"n","version":1e400}"#.into(), "version: "),
            // Deep nesting, inside a field and as the whole body.
            (
                format!(r#"{{"node":"n","version":1,"hash":"{h}","error":{{"message":{deep}}}}}"#),
                "error.message: ",
            ),
            (deep.clone(), "body: must be a JSON object"),
            (format!("{{{deep}"), "body: "),
            // Not one JSON document.
            (String::new(), "body: must be a JSON object"),
            ("{".into(), "body: EOF"),
            (
                format!(r#"{{"node":"n","version":1,"hash":"{h}"}} trailing"#),
                "body: trailing",
            ),
            (
                format!(r#"{{"node":"n","version":1,"hash":"{h}"}}{{}}"#),
                "body: trailing",
            ),
            // Duplicate fields.
            (
                r#"{"node":"a","node":"b"}"#.into(),
                "body: duplicate field `node`",
            ),
            // NUL, other control characters, invalid UTF-8 escapes.
            (r#"{"node":"a\u0000b"}"#.into(), ""),
            (
                format!(r#"{{"node":"a\u0000","version":1,"hash":"{h}"}}"#),
                "node: must not contain control",
            ),
            (r#"{"node":"\ud800"}"#.into(), "node: "),
            // Values that parse but are wrong.
            (
                format!(
                    r#"{{"node":"{}","version":1,"hash":"{h}"}}"#,
                    "n".repeat(257)
                ),
                "node: is 257 bytes",
            ),
            (
                format!(r#"{{"node":"n","version":1,"hash":"{}"}}"#, "A".repeat(64)),
                "hash: must be 64 lowercase hex",
            ),
            (
                r#"{"node":"n","version":1,"hash":"sha256:"}"#.into(),
                "hash: must be",
            ),
            (
                format!(r#"{{"node":"n","version":1,"hash":"{h}","error":{{}}}}"#),
                "error.message: required",
            ),
        ];
        for (body, expected) in &cases {
            let e = report(body.as_bytes()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            let shown: String = body.chars().take(80).collect();
            assert!(
                e.message.contains(expected)
                    && e.message
                        .split_once(": ")
                        .is_some_and(|(f, _)| !f.is_empty()),
                "{shown:?}: {:?} does not name the field ({expected:?})",
                e.message
            );
            if !expected.is_empty() {
                assert!(
                    e.message.starts_with(expected),
                    "{shown:?}: {:?}",
                    e.message
                );
            }
        }
        // Invalid UTF-8 bytes in a string, and a NUL byte outside one.
        for body in [&b"{\"node\":\"\xff\"}"[..], b"{\"node\":\"n\"}\0"] {
            let e = report(body).unwrap_err();
            assert!(
                e.message.starts_with("node: ") || e.message.starts_with("body: "),
                "{:?}",
                e.message
            );
        }
        // A long NACK message is accepted, cut on a character boundary.
        let long = "é".repeat(5_000);
        let r = report(
            format!(r#"{{"node":"n","version":1,"hash":"{h}","error":{{"message":"{long}"}}}}"#)
                .as_bytes(),
        )
        .unwrap();
        let nack = r.nack.unwrap();
        assert!(nack.len() <= crate::watch::MAX_NACK_REASON_LEN + '…'.len_utf8());
        assert!(nack.ends_with('…'));
    }
}
