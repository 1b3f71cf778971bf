//! vanectl against a scripted fake Admin server (plaintext, in-process),
//! through `execute`: the rollout commands and `push --wait` as a user runs
//! them, with their output, live lines and exit codes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use clap::Parser as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use vane_proto as pb;

use crate::args::Cli;
use crate::commands::execute;
use crate::error::{CliError, Failure};

/// What the fake answers, in order (the last answer repeats), and what it was asked.
#[derive(Default)]
struct Script {
    rollouts: VecDeque<Result<pb::Rollout, Status>>,
    statuses: VecDeque<pb::StatusResponse>,
    push_version: u64,
    pushes: Vec<pb::PushRequest>,
    starts: Vec<pb::StartRolloutRequest>,
    controls: Vec<pb::ControlRolloutRequest>,
    status_calls: usize,
    /// What `get` answers (NOT_FOUND when unset), and what it was asked.
    version: Option<pb::GetResponse>,
    gets: Vec<pb::GetRequest>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Script>>);

impl Fake {
    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.0.lock().unwrap()
    }
}

/// The front of `queue`, kept when it is the last.
fn next<T: Clone>(queue: &mut VecDeque<T>) -> Option<T> {
    if queue.len() > 1 {
        queue.pop_front()
    } else {
        queue.front().cloned()
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this fake"))
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Fake {
    async fn push(
        &self,
        request: Request<pb::PushRequest>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        let mut s = self.script();
        let r = request.into_inner();
        let resp = pb::PushResponse {
            group: r.group.clone(),
            version: s.push_version,
            hash: "ab".repeat(32),
            ..pb::PushResponse::default()
        };
        s.pushes.push(r);
        Ok(Response::new(resp))
    }
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let mut s = self.script();
        s.gets.push(request.into_inner());
        s.version
            .clone()
            .map(Response::new)
            .ok_or_else(|| Status::not_found("no such group"))
    }
    async fn history(
        &self,
        _: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        unimplemented()
    }
    async fn diff(
        &self,
        _: Request<pb::DiffRequest>,
    ) -> Result<Response<pb::DiffResponse>, Status> {
        unimplemented()
    }
    async fn rollback(
        &self,
        _: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::PushResponse>, Status> {
        unimplemented()
    }
    async fn start_rollout(
        &self,
        request: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        let mut s = self.script();
        s.starts.push(request.into_inner());
        let rollout = next(&mut s.rollouts).unwrap_or_else(|| Err(Status::internal("no script")));
        rollout.map(|r| Response::new(pb::RolloutResponse { rollout: Some(r) }))
    }
    async fn get_rollout(
        &self,
        _: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        let mut s = self.script();
        let rollout = next(&mut s.rollouts).unwrap_or_else(|| Err(Status::internal("no script")));
        rollout.map(|r| Response::new(pb::RolloutResponse { rollout: Some(r) }))
    }
    async fn control_rollout(
        &self,
        request: Request<pb::ControlRolloutRequest>,
    ) -> Result<Response<pb::RolloutResponse>, Status> {
        let mut s = self.script();
        s.controls.push(request.into_inner());
        let rollout = next(&mut s.rollouts).unwrap_or_else(|| Err(Status::internal("no script")));
        rollout.map(|r| Response::new(pb::RolloutResponse { rollout: Some(r) }))
    }
    async fn list_groups(
        &self,
        _: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn delete_group(
        &self,
        _: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    type WatchGroupStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::WatchGroupResponse, Status>> + Send>,
    >;
    async fn watch_group(
        &self,
        _: Request<pb::WatchGroupRequest>,
    ) -> Result<Response<Self::WatchGroupStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let mut s = self.script();
        s.status_calls += 1;
        Ok(Response::new(next(&mut s.statuses).unwrap_or_default()))
    }
    async fn audit(
        &self,
        _: Request<pb::AuditRequest>,
    ) -> Result<Response<pb::AuditResponse>, Status> {
        unimplemented()
    }
    async fn who_am_i(
        &self,
        _: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        unimplemented()
    }

    async fn server_version(
        &self,
        _: Request<pb::ServerVersionRequest>,
    ) -> Result<Response<pb::ServerVersionResponse>, Status> {
        unimplemented()
    }
}

async fn serve(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = Server::builder().add_service(pb::admin_server::AdminServer::new(fake));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    url
}

/// Runs vanectl against `url`; returns the live lines and the result.
async fn vanectl(url: &str, args: &[&str]) -> (String, Result<String, CliError>) {
    let cli = Cli::try_parse_from(
        ["vanectl", "--server", url]
            .into_iter()
            .chain(args.iter().copied()),
    )
    .unwrap();
    let mut live = String::new();
    let result = execute(&cli, &mut |line| live.push_str(line)).await;
    (live, result)
}

fn snapshot_file(dir: &std::path::Path) -> String {
    let path = dir.join("c.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - { name: web, address: \"127.0.0.1:1\", protocol: tcp, cluster: c }\n\
         clusters:\n  - { name: c, endpoints: [{ address: \"127.0.0.1:2\" }] }\n",
    )
    .unwrap();
    path.display().to_string()
}

fn rollout(state: pb::RolloutState, step: u32, percent: u32, synced: u32) -> pb::Rollout {
    pb::Rollout {
        id: "r-7".into(),
        group: "edge".into(),
        state: state as i32,
        step,
        percent,
        stable_version: 3,
        candidate_version: 4,
        stable_hash: "11".repeat(32),
        candidate_hash: "22".repeat(32),
        cohort: Some(pb::RolloutCohort {
            total: 2,
            synced,
            target: 2,
            matching: 8,
            ..pb::RolloutCohort::default()
        }),
        spec: Some(pb::RolloutSpec {
            steps: vec![25, 100],
            bake_ms: 1000,
            max_disconnects: 3,
            min_agents: 1,
            progress_deadline_ms: 600_000,
            ..pb::RolloutSpec::default()
        }),
        ..pb::Rollout::default()
    }
}

#[tokio::test]
async fn rollout_start_sends_the_spec_and_prints_the_plan() {
    let fake = Fake::default();
    fake.script()
        .rollouts
        .push_back(Ok(rollout(pb::RolloutState::Progressing, 1, 25, 0)));
    let url = serve(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = snapshot_file(dir.path());
    let (_, out) = vanectl(
        &url,
        &[
            "rollout", "start", "edge", "-f", &file, "--steps", "25,100", "--bake", "1s",
            "--select", "zone=a", "-m", "try",
        ],
    )
    .await;
    let out = out.unwrap();
    assert!(
        out.starts_with(&format!(
            "started rollout r-7 of edge: stable v3 (sha256 {}) → candidate v4 (sha256 {})\n",
            "11".repeat(6),
            "22".repeat(6)
        )),
        "{out}"
    );
    assert!(out.contains("plan: steps 25% → 100%; bake 1s;"), "{out}");
    let starts = &fake.script().starts;
    assert_eq!(starts.len(), 1);
    let spec = starts[0].spec.clone().unwrap();
    assert_eq!(spec.steps, vec![25, 100]);
    assert_eq!(spec.bake_ms, 1000);
    assert_eq!(spec.selector, "zone=a");
    assert_eq!(starts[0].message, "try");
    assert_eq!(starts[0].snapshot.as_ref().unwrap().listeners.len(), 1);
}

#[tokio::test]
async fn rollout_status_refusals_and_controls() {
    let fake = Fake::default();
    fake.script()
        .rollouts
        .push_back(Err(Status::not_found("group \"edge\" has no rollout")));
    let url = serve(fake.clone()).await;
    let (_, out) = vanectl(&url, &["rollout", "status", "edge"]).await;
    let e = out.unwrap_err();
    assert_eq!(e.kind, Failure::Refused);
    assert_eq!(e.message, "group \"edge\" has no rollout");

    fake.script().rollouts = [Ok(rollout(pb::RolloutState::Paused, 1, 25, 1))].into();
    let (_, out) = vanectl(&url, &["rollout", "pause", "edge", "-m", "looks odd"]).await;
    let out = out.unwrap();
    assert!(out.starts_with("paused rollout r-7 of edge\n"), "{out}");
    let (_, out) = vanectl(&url, &["-o", "json", "rollout", "abort", "edge"]).await;
    let v: serde_json::Value = serde_json::from_str(&out.unwrap()).unwrap();
    assert_eq!(v["state"], "PAUSED");
    let controls = &fake.script().controls;
    assert_eq!(controls.len(), 2);
    assert_eq!(controls[0].action(), pb::RolloutAction::Pause);
    assert_eq!(controls[0].reason, "looks odd");
    assert_eq!(controls[1].action(), pb::RolloutAction::Abort);
    assert_eq!(controls[1].reason, "");
}

#[tokio::test]
async fn rollout_status_watch_follows_to_the_end() {
    let fake = Fake::default();
    fake.script().rollouts = [
        Ok(rollout(pb::RolloutState::Progressing, 1, 25, 0)),
        Ok(rollout(pb::RolloutState::Progressing, 1, 25, 0)),
        Ok(rollout(pb::RolloutState::Baking, 1, 25, 2)),
        Ok(rollout(pb::RolloutState::Complete, 2, 100, 8)),
    ]
    .into();
    let url = serve(fake.clone()).await;
    let (live, out) = vanectl(&url, &["rollout", "status", "edge", "-w"]).await;
    assert_eq!(
        out.unwrap(),
        "rollout r-7 of edge COMPLETE: version 4 runs on every agent\n"
    );
    // Three distinct states, each printed once.
    let lines: Vec<&str> = live.lines().collect();
    assert_eq!(lines.len(), 3, "{live}");
    assert!(
        lines[0].contains("edge rollout r-7: PROGRESSING, step 1/2 at 25%"),
        "{live}"
    );
    assert!(lines[1].contains("BAKING, step 1/2 at 25%"), "{live}");
    assert!(lines[2].contains("COMPLETE, step 2/2 at 100%"), "{live}");

    // -o json: the final object only, exit 1 when it rolled back.
    let mut back = rollout(pb::RolloutState::RolledBack, 1, 25, 0);
    back.reason = "1 NACK of the candidate (max 0): n1: bad".into();
    back.restored_version = 5;
    fake.script().rollouts = [
        Ok(rollout(pb::RolloutState::Progressing, 1, 25, 0)),
        Ok(rollout(pb::RolloutState::Aborting, 1, 25, 0)),
        Ok(back),
    ]
    .into();
    let (live, out) = vanectl(&url, &["rollout", "status", "edge", "-w", "-o", "json"]).await;
    assert_eq!(live, "");
    let e = out.unwrap_err();
    assert_eq!(e.kind, Failure::Refused);
    assert!(e.message.contains("ended ROLLED_BACK"), "{}", e.message);
    let v: serde_json::Value = serde_json::from_str(&e.output).unwrap();
    assert_eq!(v["state"], "ROLLED_BACK");
    assert_eq!(v["restored_version"], 5);
    assert_eq!(v["cohort"]["total"], 2);
}

#[tokio::test]
async fn rollout_status_watch_times_out_with_exit_4() {
    let fake = Fake::default();
    fake.script().rollouts = [Ok(rollout(pb::RolloutState::Baking, 1, 25, 2))].into();
    let url = serve(fake).await;
    let (live, out) = vanectl(
        &url,
        &["rollout", "status", "edge", "-w", "--timeout", "1s"],
    )
    .await;
    let e = out.unwrap_err();
    assert_eq!(e.kind, Failure::TimedOut);
    assert_eq!(e.kind.exit_code(), 4);
    assert_eq!(
        e.message,
        "rollout r-7 of edge is still BAKING (step 1 at 25%) after 1s (--timeout)"
    );
    assert_eq!(live.lines().count(), 1, "{live}");
}

fn agent(node: &str, acked: u64) -> pb::AgentStatus {
    pb::AgentStatus {
        node_id: node.into(),
        group: "edge".into(),
        acked_version: acked,
        target_version: 5,
        connected: true,
        state: if acked == 5 {
            pb::AgentState::Synced
        } else {
            pb::AgentState::Stale
        } as i32,
        ..pb::AgentStatus::default()
    }
}

fn statuses(agents: &[Vec<pb::AgentStatus>]) -> VecDeque<pb::StatusResponse> {
    agents
        .iter()
        .map(|a| pb::StatusResponse {
            agents: a.clone(),
            ..pb::StatusResponse::default()
        })
        .collect()
}

#[tokio::test]
async fn push_wait_exit_codes() {
    let fake = Fake::default();
    fake.script().push_version = 5;
    let url = serve(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = snapshot_file(dir.path());
    let push = |extra: &'static [&'static str]| {
        let mut args = vec!["push", "edge", "-f", file.as_str()];
        args.extend_from_slice(extra);
        args
    };

    // Everyone ACKs after a while: exit 0.
    fake.script().statuses = statuses(&[
        vec![agent("n1", 4), agent("n2", 4)],
        vec![agent("n1", 5), agent("n2", 4)],
        vec![agent("n1", 5), agent("n2", 5)],
    ]);
    let (live, out) = vanectl(&url, &push(&["--wait=10s", "--supersede"])).await;
    assert_eq!(
        out.unwrap(),
        "all 2 connected agents of edge ACKed version 5\n"
    );
    assert!(live.starts_with("pushed edge version 5"), "{live}");
    assert!(live.contains("waiting up to 10s"), "{live}");
    assert_eq!(fake.script().status_calls, 3);
    assert!(fake.script().pushes[0].supersede);

    // One NACKs: exit 1, naming it and why.
    let mut nack = agent("n2", 4);
    nack.last_nacked_version = 5;
    nack.nack_reason = "check-cmd refused: exit 1".into();
    nack.state = pb::AgentState::Nacked as i32;
    fake.script().statuses = statuses(&[vec![agent("n1", 5), nack]]);
    let (_, out) = vanectl(&url, &push(&["--wait"])).await;
    let e = out.unwrap_err();
    assert_eq!(e.kind.exit_code(), 1);
    assert_eq!(
        e.message,
        "version 5 of edge was NACKed by 1 of 2 connected agents: n2: check-cmd refused: exit 1"
    );
    assert!(
        e.output.contains("n2    v5      check-cmd refused: exit 1"),
        "{}",
        e.output
    );
    assert!(!fake.script().pushes[1].supersede);

    // One never ACKs: exit 4 after the timeout, naming it and its state.
    fake.script().statuses = statuses(&[vec![agent("n1", 5), agent("n2", 4)]]);
    let started = std::time::Instant::now();
    let (_, out) = vanectl(&url, &push(&["--wait=1s", "-o", "json"])).await;
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    let e = out.unwrap_err();
    assert_eq!(e.kind.exit_code(), 4);
    assert_eq!(
        e.message,
        "after 1s, 1 of 2 connected agents of edge had not ACKed version 5: n2 (STALE, runs v4)"
    );
    let v: serde_json::Value = serde_json::from_str(&e.output).unwrap();
    assert_eq!(v["version"], 5);
    assert_eq!(v["wait"]["result"], "timeout");
    assert_eq!(v["wait"]["missing"][0]["node_id"], "n2");

    // Nobody connected: exit 0, saying so.
    fake.script().statuses = statuses(&[vec![]]);
    let (_, out) = vanectl(&url, &push(&["--wait"])).await;
    assert_eq!(
        out.unwrap(),
        "no connected agents in edge: nothing to wait for\n"
    );
}

#[tokio::test]
async fn status_shows_roles_health_and_the_rollout() {
    let fake = Fake::default();
    let mut candidate = agent("n1", 4);
    candidate.role = "candidate".into();
    candidate.target_version = 4;
    candidate.degraded = true;
    candidate.health_version = 4;
    candidate.health_reason = "error ratio 0.40 over 30s".into();
    let mut stable = agent("n2", 3);
    stable.role = "stable".into();
    stable.target_version = 3;
    fake.script().statuses = [pb::StatusResponse {
        agents: vec![candidate, stable],
        rollouts: vec![rollout(pb::RolloutState::Baking, 1, 25, 1)],
        ..pb::StatusResponse::default()
    }]
    .into();
    let url = serve(fake).await;
    let (_, out) = vanectl(&url, &["status", "edge"]).await;
    let out = out.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("edge rollout r-7: BAKING, step 1/2 at 25%, stable v3 → candidate v4; cohort 2 of 8 matching (target 2): 1 synced"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("GROUP  NODE  CLIENT      STATE  ROLE"),
        "{out}"
    );
    assert!(lines[2].contains("HEALTH"), "{out}");
    assert!(lines[3].contains("candidate"), "{out}");
    assert!(
        lines[3].contains("degraded (v4): error ratio 0.40 over 30s"),
        "{out}"
    );
    assert!(lines[4].contains("stable"), "{out}");
    let (_, out) = vanectl(&url, &["status", "edge", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&out.unwrap()).unwrap();
    assert_eq!(v[0]["role"], "candidate");
    assert_eq!(v[0]["degraded"], true);
    assert_eq!(v[0]["rollout"]["id"], "r-7");
    assert_eq!(v[0]["rollout"]["state"], "BAKING");
    assert_eq!(v[1]["rollout"]["cohort"]["synced"], 1);
}

/// A stored version as the server sends it: the snapshot of `yaml` and
/// its recorded hash.
fn version_of(yaml: &str, version: u64) -> (pb::GetResponse, vane_model::Snapshot) {
    let spec = vane_model::parse_file(yaml.as_bytes(), vane_model::Format::Yaml).unwrap();
    let wire = vane_model::proto::spec_to_proto(&spec);
    let snapshot = vane_model::validate(spec).unwrap();
    let info = pb::VersionInfo {
        version,
        hash: snapshot.content_hash().to_hex(),
        ..pb::VersionInfo::default()
    };
    let resp = pb::GetResponse {
        info: Some(info),
        snapshot: Some(wire),
        ..pb::GetResponse::default()
    };
    (resp, snapshot)
}

const XDS_SNAPSHOT: &str = "\
listeners:
  - { name: web, address: \"127.0.0.1:18080\", route_table: main }
  - { name: db, address: \"127.0.0.1:15432\", protocol: tcp, cluster: db }
route_tables:
  - name: main
    routes:
      - { match: { path_prefix: /api }, cluster: api, retries: 2 }
      - { cluster: web }
clusters:
  - { name: api, lb: least_request, endpoints: [ { address: \"127.0.0.1:9001\", weight: 3 } ] }
  - { name: web, endpoints: [ { address: \"127.0.0.1:9002\" } ] }
  - { name: db, lb: random, endpoints: [ { address: \"127.0.0.1:5432\" } ] }
";

#[tokio::test]
async fn get_as_xds_shows_the_translation_of_the_fetched_version() {
    let fake = Fake::default();
    let (resp, snapshot) = version_of(XDS_SNAPSHOT, 7);
    let hash = resp.info.as_ref().unwrap().hash.clone();
    fake.script().version = Some(resp);
    let url = serve(fake.clone()).await;
    let expected = vane_xds::translate(&snapshot).unwrap();

    // Envoy's view (the default): socket listeners, everything in Envoy's JSON.
    let (_, out) = vanectl(
        &url,
        &["get", "edge", "--as", "xds", "-o", "json", "--version", "7"],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&out.unwrap()).unwrap();
    assert_eq!(fake.script().gets[0].version, Some(7));
    assert_eq!(v["group"], "edge");
    assert_eq!(v["version"], 7);
    assert_eq!(v["hash"], hash.as_str());
    assert_eq!(v["client"], "envoy");
    let res = &v["resources"];
    let names = |key: &str| -> Vec<String> {
        res[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.get("name")
                    .or_else(|| r.get("cluster_name"))
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(names("listeners"), ["db", "web"]);
    assert_eq!(names("routes"), ["main"]);
    assert_eq!(names("clusters"), ["api", "db", "web"]);
    assert_eq!(names("endpoints"), ["api", "db", "web"]);
    let web = &res["listeners"][1];
    assert_eq!(
        web["@type"],
        "type.googleapis.com/envoy.config.listener.v3.Listener"
    );
    assert_eq!(web["address"]["socket_address"]["port_value"], 18080);
    let route = &res["routes"][0]["virtual_hosts"][0]["routes"][0];
    assert_eq!(route["route"]["cluster"], "api");
    assert_eq!(route["route"]["retry_policy"]["num_retries"], 2);
    let policies: Vec<&str> = res["clusters"][0]["load_balancing_policy"]["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["typed_extension_config"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        policies,
        [
            "envoy.load_balancing_policies.least_request",
            "envoy.load_balancing_policies.round_robin"
        ]
    );
    assert_eq!(
        res["endpoints"][0]["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"],
        3
    );

    // gRPC's view: the API listener instead of the sockets (none for tcp).
    let (_, out) = vanectl(
        &url,
        &[
            "get", "edge", "--as", "xds", "--client", "grpc", "-o", "yaml",
        ],
    )
    .await;
    let v: serde_json::Value = yaml_serde::from_str(&out.unwrap()).unwrap();
    assert_eq!(v["client"], "grpc");
    let listeners = v["resources"]["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0]["name"], "web");
    assert!(listeners[0].get("address").is_none());
    assert_eq!(
        listeners[0]["api_listener"]["api_listener"]["rds"]["route_config_name"],
        "main"
    );

    // The table: one row per resource, the version being its hash's prefix.
    let (_, out) = vanectl(&url, &["get", "edge", "--as", "xds"]).await;
    let out = out.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "# group: edge  version: 7  client: envoy");
    assert!(lines[1].starts_with("TYPE  NAME  VERSION"), "{out}");
    assert_eq!(lines.len(), 2 + 2 + 1 + 3 + 3, "{out}");
    let web_hash = &expected.listeners["web"].hash[..12];
    assert!(
        lines.contains(&format!("LDS   web   {web_hash}").as_str()),
        "{out}"
    );
    let cla_hash = &expected.endpoints["db"].hash[..12];
    assert!(
        lines.contains(&format!("EDS   db    {cla_hash}").as_str()),
        "{out}"
    );

    // The plain `get` is unchanged by all this.
    let (_, out) = vanectl(&url, &["get", "edge", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&out.unwrap()).unwrap();
    assert_eq!(v["listeners"][0]["name"], "db");
    assert!(v.get("resources").is_none());
}

#[tokio::test]
async fn get_as_xds_refuses_content_that_does_not_match_its_hash() {
    let fake = Fake::default();
    let (mut resp, _) = version_of(XDS_SNAPSHOT, 7);
    resp.info.as_mut().unwrap().hash = "00".repeat(32);
    fake.script().version = Some(resp);
    let url = serve(fake).await;
    let (_, out) = vanectl(&url, &["get", "edge", "--as", "xds", "-o", "json"]).await;
    let e = out.unwrap_err();
    assert_eq!(e.kind, Failure::Refused);
    assert!(e.message.contains("is corrupt"), "{}", e.message);
}
