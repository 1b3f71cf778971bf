//! The console's router over a scripted Admin service: routing, the
//! checks before any Admin call, the credentials each call carries, and
//! the JSON the page reads.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tonic::{Response, Status};
use tower::ServiceExt as _;
use vane_proto as pb;

use crate::{Console, FORGERY_HEADER, Gate};

/// Stands for the server's connection info in the request extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Conn(u32);

/// What the scripted service saw.
#[derive(Debug, Default)]
struct Seen {
    /// (method, authorization, connection) of every call.
    calls: Vec<(&'static str, String, Option<Conn>)>,
    rollback: Option<pb::RollbackRequest>,
    control: Option<pb::ControlRolloutRequest>,
}

#[derive(Clone, Default)]
struct Scripted {
    seen: Arc<Mutex<Seen>>,
}

impl Scripted {
    fn note<T>(&self, method: &'static str, request: &tonic::Request<T>) -> Result<String, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let conn = request.extensions().get::<Conn>().copied();
        self.seen
            .lock()
            .unwrap()
            .calls
            .push((method, auth.clone(), conn));
        match auth.as_str() {
            "Bearer op" => Ok("ops".into()),
            "Bearer r" => Ok("viewer".into()),
            "" => Ok(String::new()),
            _ => Err(Status::unauthenticated(
                "authorization: the bearer token is not known",
            )),
        }
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::admin_server::Admin for Scripted {
    async fn push(&self, _: tonic::Request<pb::PushRequest>) -> Answer<pb::PushResponse> {
        Err(Status::unimplemented("push"))
    }
    async fn get(&self, _: tonic::Request<pb::GetRequest>) -> Answer<pb::GetResponse> {
        Err(Status::unimplemented("get"))
    }
    async fn history(&self, r: tonic::Request<pb::HistoryRequest>) -> Answer<pb::HistoryResponse> {
        self.note("history", &r)?;
        Ok(Response::new(pb::HistoryResponse {
            group: r.into_inner().group,
            versions: vec![pb::VersionInfo {
                version: 2,
                author: "ops".into(),
                message: "faster".into(),
                ..Default::default()
            }],
            ..Default::default()
        }))
    }
    async fn diff(&self, r: tonic::Request<pb::DiffRequest>) -> Answer<pb::DiffResponse> {
        self.note("diff", &r)?;
        let r = r.into_inner();
        Ok(Response::new(pb::DiffResponse {
            group: r.group,
            unified_diff: format!(
                "@@ -1 +1 @@\n-v: {}\n+v: {}\n",
                r.from_version, r.to_version
            ),
            ..Default::default()
        }))
    }
    async fn rollback(&self, r: tonic::Request<pb::RollbackRequest>) -> Answer<pb::PushResponse> {
        self.note("rollback", &r)?;
        let r = r.into_inner();
        self.seen.lock().unwrap().rollback = Some(r.clone());
        Ok(Response::new(pb::PushResponse {
            group: r.group,
            version: 3,
            hash: "h3".into(),
            ..Default::default()
        }))
    }
    async fn status(&self, r: tonic::Request<pb::StatusRequest>) -> Answer<pb::StatusResponse> {
        self.note("status", &r)?;
        Ok(Response::new(pb::StatusResponse::default()))
    }
    async fn audit(&self, r: tonic::Request<pb::AuditRequest>) -> Answer<pb::AuditResponse> {
        self.note("audit", &r)?;
        Ok(Response::new(pb::AuditResponse::default()))
    }
    async fn who_am_i(&self, r: tonic::Request<pb::WhoAmIRequest>) -> Answer<pb::WhoAmIResponse> {
        let identity = self.note("who_am_i", &r)?;
        Ok(Response::new(pb::WhoAmIResponse {
            identity,
            source: "token".into(),
            authorization: "on".into(),
            roles: vec![],
        }))
    }
    async fn start_rollout(
        &self,
        _: tonic::Request<pb::StartRolloutRequest>,
    ) -> Answer<pb::RolloutResponse> {
        Err(Status::unimplemented("start_rollout"))
    }
    async fn get_rollout(
        &self,
        r: tonic::Request<pb::GetRolloutRequest>,
    ) -> Answer<pb::RolloutResponse> {
        self.note("get_rollout", &r)?;
        let group = r.into_inner().group;
        if group == "a" {
            return Err(Status::not_found("group \"a\" has no rollout"));
        }
        Ok(Response::new(pb::RolloutResponse {
            rollout: Some(pb::Rollout {
                group,
                state: pb::RolloutState::Paused as i32,
                step: 1,
                ..Default::default()
            }),
        }))
    }
    async fn control_rollout(
        &self,
        r: tonic::Request<pb::ControlRolloutRequest>,
    ) -> Answer<pb::RolloutResponse> {
        self.note("control_rollout", &r)?;
        let r = r.into_inner();
        self.seen.lock().unwrap().control = Some(r.clone());
        Ok(Response::new(pb::RolloutResponse {
            rollout: Some(pb::Rollout {
                group: r.group,
                state: pb::RolloutState::RolledBack as i32,
                ..Default::default()
            }),
        }))
    }
    async fn list_groups(
        &self,
        r: tonic::Request<pb::ListGroupsRequest>,
    ) -> Answer<pb::ListGroupsResponse> {
        self.note("list_groups", &r)?;
        let group = |g: &str| pb::GroupSummary {
            group: g.into(),
            head_version: 1,
            agents: Some(pb::AgentCounts {
                synced: 2,
                total: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(Response::new(pb::ListGroupsResponse {
            groups: vec![group("a"), group("b")],
        }))
    }
    async fn delete_group(
        &self,
        _: tonic::Request<pb::DeleteGroupRequest>,
    ) -> Answer<pb::DeleteGroupResponse> {
        Err(Status::unimplemented("delete_group"))
    }
    type WatchGroupStream = futures_stream::Empty;
    async fn watch_group(
        &self,
        _: tonic::Request<pb::WatchGroupRequest>,
    ) -> Answer<Self::WatchGroupStream> {
        Err(Status::unimplemented("watch_group"))
    }
    async fn server_version(
        &self,
        _: tonic::Request<pb::ServerVersionRequest>,
    ) -> Answer<pb::ServerVersionResponse> {
        Err(Status::unimplemented("server_version"))
    }
}

/// A stream that never yields, for the one streaming method.
mod futures_stream {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub(super) struct Empty;

    impl tonic::codegen::tokio_stream::Stream for Empty {
        type Item = Result<vane_proto::WatchGroupResponse, tonic::Status>;
        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(None)
        }
    }
}

/// Operators hold the token "op".
struct TokenGate;

impl Gate for TokenGate {
    fn may_operate(&self, parts: &http::request::Parts, _group: &str) -> bool {
        parts
            .headers
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v == "Bearer op")
    }
}

fn console() -> (axum::Router, Arc<Mutex<Seen>>) {
    let admin = Scripted::default();
    let seen = Arc::clone(&admin.seen);
    let router = Console::new(admin, TokenGate).on_loopback(true).router();
    (router, seen)
}

/// Sends a request from the page (anti-forgery header, loopback host).
async fn call(
    router: &axum::Router,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "127.0.0.1:7080")
        .header(FORGERY_HEADER, "1");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let mut request = request.body(body).unwrap();
    request.extensions_mut().insert(Conn(7));
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_a_strict_policy() {
    let (router, seen) = console();
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let page = router.clone().oneshot(get("/ui/")).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.headers()[header::X_FRAME_OPTIONS], "DENY");
    let script = router
        .clone()
        .oneshot(get("/ui/assets/app.js"))
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert!(
        script.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let missing = router
        .clone()
        .oneshot(get("/ui/assets/nope.js"))
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let root = router.clone().oneshot(get("/")).await.unwrap();
    assert!(root.status().is_redirection());
    assert_eq!(root.headers()[header::LOCATION], "/ui/");
    let (status, body) = call(&router, "GET", "/ui/api/nothing", None, None).await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    assert!(
        seen.lock().unwrap().calls.is_empty(),
        "no Admin call for static files"
    );
}

#[tokio::test]
async fn calls_carry_the_token_and_the_connection_to_the_admin_service() {
    let (router, seen) = console();
    let (status, session) = call(&router, "GET", "/ui/api/session", Some("r"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        session,
        json!({"identity": "viewer", "source": "token", "authorization": "on", "roles": []})
    );
    assert_eq!(
        seen.lock().unwrap().calls,
        [("who_am_i", "Bearer r".to_owned(), Some(Conn(7)))]
    );
    let (status, refused) = call(&router, "GET", "/ui/api/session", Some("forged"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused["code"], "unauthenticated");
}

#[tokio::test]
async fn requests_without_the_header_or_from_a_rebound_name_never_reach_the_service() {
    let (router, seen) = console();
    let bare = Request::get("/ui/api/groups")
        .header(header::HOST, "localhost")
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(bare).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let rebound = Request::get("/ui/api/groups")
        .header(header::HOST, "attacker.example")
        .header(FORGERY_HEADER, "1")
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(rebound).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(seen.lock().unwrap().calls.is_empty());
}

#[tokio::test]
async fn groups_say_their_rollout_and_whether_the_caller_may_act() {
    let (router, _) = console();
    let (status, reader) = call(&router, "GET", "/ui/api/groups", Some("r"), None).await;
    assert_eq!(status, StatusCode::OK);
    let groups = reader["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0]["group"], "a");
    assert_eq!(groups[0]["rollout"], Value::Null);
    assert_eq!(groups[0]["agents"]["synced"], 2);
    assert_eq!(groups[1]["rollout"]["state"], "paused");
    assert_eq!(groups[1]["rollout"]["active"], true);
    assert!(groups.iter().all(|g| g["may_operate"] == false));
    let (_, operator) = call(&router, "GET", "/ui/api/groups", Some("op"), None).await;
    assert!(
        operator["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["may_operate"] == true)
    );
    let (_, history) = call(&router, "GET", "/ui/api/groups/a/history", Some("op"), None).await;
    assert_eq!(history["versions"][0]["author"], "ops");
    assert_eq!(history["may_operate"], true);
    let (_, diff) = call(
        &router,
        "GET",
        "/ui/api/groups/a/diff/1/2",
        Some("op"),
        None,
    )
    .await;
    assert_eq!(
        diff["lines"][1],
        json!({"kind": "del", "text": "-v: 1", "old": 1, "new": null})
    );
    let (status, bad) = call(
        &router,
        "GET",
        "/ui/api/groups/a/diff/one/2",
        Some("op"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        bad["message"].as_str().unwrap().starts_with("from:"),
        "{bad}"
    );
}

#[tokio::test]
async fn actions_need_a_message_and_pass_it_with_the_compare_and_set() {
    let (router, seen) = console();
    let path = "/ui/api/groups/a/rollback";
    let (status, e) = call(
        &router,
        "POST",
        path,
        Some("op"),
        Some(json!({"to_version": 1, "message": " "})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("message: required"),
        "{e}"
    );
    let (status, e) = call(
        &router,
        "POST",
        path,
        Some("op"),
        Some(json!({"to_version": 1, "message": "x", "force": true})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused: {e}"
    );
    assert!(seen.lock().unwrap().rollback.is_none());
    let body = json!({"to_version": 1, "message": " bad rate ", "expected_version": 2});
    let (status, done) = call(&router, "POST", path, Some("op"), Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["version"], 3);
    let rollback = seen.lock().unwrap().rollback.clone().unwrap();
    assert_eq!(
        (
            rollback.to_version,
            rollback.message.as_str(),
            rollback.expected_version,
            rollback.force
        ),
        (1, "bad rate", Some(2), false)
    );
    let (status, e) = call(
        &router,
        "POST",
        "/ui/api/groups/a/rollout/explode",
        Some("op"),
        Some(json!({"message": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let (status, page) = call(
        &router,
        "POST",
        "/ui/api/groups/a/rollout/abort",
        Some("op"),
        Some(json!({"message": "stop"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["rollout"]["state"], "rolled_back");
    let control = seen.lock().unwrap().control.clone().unwrap();
    assert_eq!(control.action(), pb::RolloutAction::Abort);
    assert_eq!(control.reason, "stop");
    let huge = json!({"message": "x".repeat(crate::MAX_BODY_BYTES)});
    let (status, _) = call(
        &router,
        "POST",
        "/ui/api/groups/a/rollout/pause",
        Some("op"),
        Some(huge),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
