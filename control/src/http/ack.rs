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
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: AckBody = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::invalid(&field, e.into_inner())
    })?;
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
}
