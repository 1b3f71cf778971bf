//! The JSON endpoints under `/ui/api/`. Each one checks what the console
//! itself requires of a request (its anti-forgery header, and on a
//! loopback listener a loopback `Host`), then makes one or more Admin calls
//! carrying the caller's connection and `authorization` header, so that the
//! Admin service authenticates, authorizes, rate-limits and audits them as
//! it does `vanectl`'s calls.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{AUTHORIZATION, HOST};
use http::request::Parts;
use serde::Deserialize;
use tonic::Code;
use tonic::metadata::MetadataMap;
use vane_proto as pb;
use vane_proto::admin_server::Admin;

use crate::errors::ApiError;
use crate::state::Console;
use crate::views::{
    AgentsView, AuditLogView, AuditView, DiffView, GroupRow, GroupsView, HistoryView, PushView,
    RolloutBrief, RolloutPage, RolloutView, SessionView,
};

/// The header every API request must carry (any value): a page of another
/// site cannot send it without a CORS preflight, which the console never
/// grants, so a browser holding a client certificate cannot be made to act
/// by a foreign page.
pub const FORGERY_HEADER: &str = "x-vane-console";
/// Largest body an action may send.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Most versions the history page lists.
pub const HISTORY_LIMIT: u32 = 500;
/// Most audit entries one call returns.
pub const MAX_AUDIT_ENTRIES: u32 = 1000;

type Result<T> = std::result::Result<T, ApiError>;

/// One API call: its request head, checked.
pub(crate) struct Call {
    parts: Parts,
}

impl Call {
    /// Checks the anti-forgery header and, when the console listens on
    /// loopback only, that the `Host` is a loopback name (so a page whose
    /// DNS name was rebound to 127.0.0.1 is refused).
    pub(crate) fn new(parts: Parts, loopback: bool) -> Result<Self> {
        if !parts.headers.contains_key(FORGERY_HEADER) {
            return Err(ApiError::forbidden(format!(
                "{FORGERY_HEADER}: header required on /ui/api/ requests (the console page sends it)"
            )));
        }
        if loopback {
            let host = parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| parts.uri.host())
                .unwrap_or("");
            if !is_loopback_host(host) {
                return Err(ApiError::forbidden(format!(
                    "host: {host:?} is not a loopback name, and the console listens on loopback only (open it as localhost or 127.0.0.1)"
                )));
            }
        }
        Ok(Self { parts })
    }

    /// An Admin request carrying `message`, the caller's connection (the
    /// server's accept loop put the client certificate's identity in the
    /// extensions) and its `authorization` header, nothing else.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = self.parts.headers.get(AUTHORIZATION) {
            headers.insert(AUTHORIZATION, value.clone());
        }
        tonic::Request::from_parts(
            MetadataMap::from_headers(headers),
            self.parts.extensions.clone(),
            message,
        )
    }

    /// The request head, for [`crate::Gate`].
    pub(crate) fn parts(&self) -> &Parts {
        &self.parts
    }

    /// The value of query parameter `name`, percent-decoded.
    fn query(&self, name: &str) -> Option<String> {
        query_param(self.parts.uri.query().unwrap_or(""), name)
    }
}

/// `localhost`, `*.localhost` or an IP literal, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The first value of `name` in the query string `query`.
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| {
            let value = value.replace('+', " ");
            percent_encoding::percent_decode_str(&value)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs `f` on the checked call, answering its JSON or its error.
async fn answer<A, T, F>(console: &Console<A>, request: Request, f: F) -> Response
where
    F: AsyncFnOnce(&Console<A>, Call, Body) -> Result<T>,
    T: serde::Serialize,
{
    let (parts, body) = request.into_parts();
    let call = match Call::new(parts, console.loopback) {
        Ok(call) => call,
        Err(e) => return e.into_response(),
    };
    match f(console, call, body).await {
        Ok(value) => Json(value).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /ui/api/session`: `WhoAmI`.
pub(crate) async fn session<A: Admin>(
    State(console): State<Arc<Console<A>>>,
    request: Request,
) -> Response {
    answer(&console, request, async move |c, call, _| {
        let who = c.admin.who_am_i(call.request(pb::WhoAmIRequest {})).await?;
        Ok(SessionView::from(who.into_inner()))
    })
    .await
}

/// `GET /ui/api/groups`: `ListGroups`, and each group's rollout.
pub(crate) async fn groups<A: Admin>(
    State(console): State<Arc<Console<A>>>,
    request: Request,
) -> Response {
    answer(&console, request, async move |c, call, _| {
        let list = c
            .admin
            .list_groups(call.request(pb::ListGroupsRequest {}))
            .await?
            .into_inner();
        let mut groups = Vec::with_capacity(list.groups.len());
        for g in list.groups {
            let rollout = rollout_of(c, &call, &g.group).await?;
            groups.push(GroupRow {
                may_operate: c.gate.may_operate(call.parts(), &g.group),
                rollout: rollout.as_ref().map(RolloutBrief::from),
                agents: g.agents.into(),
                group: g.group,
                head_version: g.head_version,
                head_hash: g.head_hash,
                head_created_at_unix_ms: g.head_created_at_unix_ms,
            });
        }
        Ok(GroupsView { groups })
    })
    .await
}

/// The group's current or last rollout; `None` when it never had one.
async fn rollout_of<A: Admin>(
    console: &Console<A>,
    call: &Call,
    group: &str,
) -> Result<Option<pb::Rollout>> {
    let asked = pb::GetRolloutRequest {
        group: group.to_owned(),
    };
    match console.admin.get_rollout(call.request(asked)).await {
        Ok(r) => Ok(r.into_inner().rollout),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(status.into()),
    }
}

/// `GET /ui/api/groups/{group}/history`.
pub(crate) async fn history<A: Admin>(
    State(console): State<Arc<Console<A>>>,
    Path(group): Path<String>,
    request: Request,
) -> Response {
    answer(&console, request, async move |c, call, _| {
        let asked = pb::HistoryRequest {
            group: group.clone(),
            limit: HISTORY_LIMIT,
        };
        let history = c.admin.history(call.request(asked)).await?.into_inner();
        Ok(HistoryView::new(
            history,
            c.gate.may_operate(call.parts(), &group),
        ))
    })
    .await
}

/// `GET /ui/api/groups/{group}/diff/{from}/{to}`.
pub(crate) async fn diff<A: Admin>(
    State(console): State<Arc<Console<A>>>,
    Path((group, from, to)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    answer(&console, request, async move |c, call, _| {
        let version = |what: &str, v: &str| {
            v.parse::<u64>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| ApiError::invalid(what, format!("{v:?} is not a version number")))
        };
        let asked = pb::DiffRequest {
            group,
            from_version: version("from", &from)?,
            to_version: version("to", &to)?,
            show_secrets: false,
        };
        let diff = c.admin.diff(call.request(asked)).await?.into_inner();
        Ok(DiffView::from(diff))
    })
    .await
}

/// `GET /ui/api/groups/{group}/agents[?selector=...]`: `Status` of the
/// group, filtered by the label selector (the rollouts' syntax).
pub(crate) async fn agents<A: Admin>(
    State(console): State<Arc<Console<A>>>,
    Path(group): Path<String>,
    request: Request,
) -> Response {
    answer(&console, request, async move |c, call, _| {
        let selector = call.query("selector").unwrap_or_default();
        let asked = pb::StatusRequest {
            group: group.clone(),
            selector: selector.clone(),
        };
        let status = c.admin.status(call.request(asked)).await?.into_inner();
        Ok(AgentsView::new(group, selector, status))
    })
    .await
}

/// `GET /ui/api/groups/{group}/rollout`: the page polls it every second.
pub(crate) async fn rollout<A: Admin>(
    State(console): State<Arc<Console<A>>>,
    Path(group): Path<String>,
    request: Request,
) -> Response {
    answer(&console, request, async move |c, call, _| {
        let rollout = rollout_of(c, &call, &group).await?;
        Ok(RolloutPage {
            may_operate: c.gate.may_operate(call.parts(), &group),
            rollout: rollout.map(RolloutView::from),
            group,
            now_unix_ms: now_unix_ms(),
        })
    })
    .await
}

/// `GET /ui/api/audit[?group=...&limit=...]`.
pub(crate) async fn audit<A: Admin>(
    State(console): State<Arc<Console<A>>>,
    request: Request,
) -> Response {
    answer(&console, request, async move |c, call, _| {
        let group = call.query("group").unwrap_or_default();
        let limit = match call.query("limit") {
            None => 100,
            Some(l) => l
                .parse::<u32>()
                .ok()
                .filter(|l| (1..=MAX_AUDIT_ENTRIES).contains(l))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "limit",
                        format!("{l:?}: a number from 1 to {MAX_AUDIT_ENTRIES}"),
                    )
                })?,
        };
        let asked = pb::AuditRequest {
            group: group.clone(),
            limit,
        };
        let audit = c.admin.audit(call.request(asked)).await?.into_inner();
        Ok(AuditLogView {
            group,
            entries: audit.entries.into_iter().map(AuditView::from).collect(),
        })
    })
    .await
}

/// The body of `POST /ui/api/groups/{group}/rollback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    to_version: u64,
    message: String,
    /// Compare-and-set: the head the operator saw.
    #[serde(default)]
    expected_version: Option<u64>,
}

/// The body of `POST /ui/api/groups/{group}/rollout/{action}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    message: String,
}

/// Reads a small JSON body; errors name the field.
async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            ApiError::invalid(
                "body",
                format!("unreadable or over {MAX_BODY_BYTES} bytes: {e}"),
            )
        })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid("body", e))
}

/// The operator's message: required, as every console action asks for one.
fn required_message(message: &str) -> Result<String> {
    let message = message.trim();
    if message.is_empty() {
        return Err(ApiError::invalid(
            "message",
            "required: say why (it goes to the audit log)",
        ));
    }
    Ok(message.to_owned())
}

/// `POST /ui/api/groups/{group}/rollback`: `Rollback`.
pub(crate) async fn rollback<A: Admin>(
    State(console): State<Arc<Console<A>>>,
    Path(group): Path<String>,
    request: Request,
) -> Response {
    answer(&console, request, async move |c, call, body| {
        let body: RollbackBody = json_body(body).await?;
        let asked = pb::RollbackRequest {
            group,
            to_version: body.to_version,
            expected_version: body.expected_version,
            message: required_message(&body.message)?,
            force: false,
        };
        let pushed = c.admin.rollback(call.request(asked)).await?.into_inner();
        Ok(PushView::from(pushed))
    })
    .await
}

/// `POST /ui/api/groups/{group}/rollout/{action}`: `ControlRollout` with
/// `pause`, `resume`, `promote` or `abort`.
pub(crate) async fn rollout_action<A: Admin>(
    State(console): State<Arc<Console<A>>>,
    Path((group, action)): Path<(String, String)>,
    request: Request,
) -> Response {
    answer(&console, request, async move |c, call, body| {
        let action = match action.as_str() {
            "pause" => pb::RolloutAction::Pause,
            "resume" => pb::RolloutAction::Resume,
            "promote" => pb::RolloutAction::Promote,
            "abort" => pb::RolloutAction::Abort,
            other => {
                return Err(ApiError::invalid(
                    "action",
                    format!("{other:?}: pause, resume, promote or abort"),
                ));
            }
        };
        let body: ActionBody = json_body(body).await?;
        let asked = pb::ControlRolloutRequest {
            group: group.clone(),
            action: action as i32,
            reason: required_message(&body.message)?,
        };
        let acted = c
            .admin
            .control_rollout(call.request(asked))
            .await?
            .into_inner();
        Ok(RolloutPage {
            may_operate: c.gate.may_operate(call.parts(), &group),
            rollout: acted.rollout.map(RolloutView::from),
            group,
            now_unix_ms: now_unix_ms(),
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_names_and_addresses_of_this_machine() {
        for host in [
            "localhost",
            "localhost:8080",
            "console.localhost:1",
            "127.0.0.1:9",
            "127.0.0.2",
            "[::1]:80",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example:80",
            "10.0.0.1:80",
            "localhost.evil.example",
            "[::2]:1",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn query_parameters_are_percent_decoded() {
        let q = "selector=zone%3Deu%2Ctier+in+(a%2Cb)&limit=5";
        assert_eq!(
            query_param(q, "selector").as_deref(),
            Some("zone=eu,tier in (a,b)")
        );
        assert_eq!(query_param(q, "limit").as_deref(), Some("5"));
        assert_eq!(query_param(q, "group"), None);
        assert_eq!(query_param("group", "group").as_deref(), Some(""));
    }

    #[test]
    fn a_call_carries_only_the_credentials_to_the_admin_service() {
        let request = http::Request::builder()
            .uri("/ui/api/groups")
            .header(FORGERY_HEADER, "1")
            .header(HOST, "127.0.0.1:1")
            .header(AUTHORIZATION, "Bearer s3cret")
            .header("grpc-timeout", "1n")
            .header("cookie", "a=b")
            .body(())
            .unwrap();
        let (mut parts, ()) = request.into_parts();
        parts.extensions.insert(7u32);
        let call = Call::new(parts, true).unwrap();
        let admin = call.request(());
        assert_eq!(admin.metadata().len(), 1);
        assert_eq!(
            admin.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        assert_eq!(admin.extensions().get::<u32>(), Some(&7));
    }

    #[test]
    fn a_call_without_the_header_or_from_a_foreign_host_is_refused() {
        let parts = |headers: &[(&str, &str)]| {
            let mut b = http::Request::builder().uri("/ui/api/groups");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap().into_parts().0
        };
        let e = Call::new(parts(&[("host", "localhost")]), true)
            .err()
            .unwrap();
        assert!(
            e.message.starts_with("x-vane-console: header required"),
            "{}",
            e.message
        );
        let e = Call::new(
            parts(&[(FORGERY_HEADER, "1"), ("host", "rebound.example:80")]),
            true,
        )
        .err()
        .unwrap();
        assert!(e.message.contains("not a loopback name"), "{}", e.message);
        assert!(
            Call::new(
                parts(&[(FORGERY_HEADER, "1"), ("host", "vane.example")]),
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn an_action_needs_a_message() {
        assert!(required_message("  ").is_err());
        assert_eq!(required_message(" bad canary ").unwrap(), "bad canary");
    }
}
