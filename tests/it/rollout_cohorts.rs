//! Rollouts seen from the watch streams of scripted agents: only the cohort
//! is sent the candidate, the others keep the stable version until their
//! step, and an invalid-content NACK rolls the cohort back by itself to a
//! new version with the stable content.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use vane_proto as pb;
use vane_testkit::fixtures::example_with_value;
use vane_testkit::{ControlServer, Next, WatchClient};

const GROUP: &str = "edge";

async fn admin(server: &ControlServer) -> pb::admin_client::AdminClient<tonic::transport::Channel> {
    pb::admin_client::AdminClient::connect(server.url())
        .await
        .unwrap()
}

fn snapshot(value: &str) -> pb::Snapshot {
    vane_model::proto::spec_to_proto(&example_with_value("release", value.into()))
}

/// `n` scripted agents that received and ACKed the group's version.
async fn fleet(server: &ControlServer, n: usize) -> Vec<WatchClient> {
    let mut agents = Vec::new();
    for i in 0..n {
        let mut a = WatchClient::connect(&server.url(), &format!("node-{i:02}"), GROUP, None).await;
        let r = a.recv().await;
        a.ack(&r).await;
        agents.push(a);
    }
    agents
}

async fn rollout(
    client: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
) -> pb::Rollout {
    client
        .get_rollout(pb::GetRolloutRequest {
            group: GROUP.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap()
}

async fn wait_state(
    client: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    state: pb::RolloutState,
) -> pb::Rollout {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = rollout(client).await;
        if r.state() == state {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout never reached {state:?}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The cohort once it has `n` members.
async fn members(
    client: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    n: usize,
) -> BTreeSet<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = rollout(client).await;
        if r.members.len() >= n {
            assert_eq!(r.members.len(), n, "{r:?}");
            return r.members.into_iter().collect();
        }
        assert!(tokio::time::Instant::now() < deadline, "no cohort: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start(
    client: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    steps: &[u32],
    bake_ms: u64,
) -> pb::Rollout {
    client
        .start_rollout(pb::StartRolloutRequest {
            group: GROUP.into(),
            snapshot: Some(snapshot("candidate")),
            spec: Some(pb::RolloutSpec {
                steps: steps.to_vec(),
                bake_ms,
                ..pb::RolloutSpec::default()
            }),
            message: "try the candidate".into(),
            expected_version: None,
        })
        .await
        .unwrap()
        .into_inner()
        .rollout
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_cohort_gets_the_candidate_until_its_step() {
    let server = ControlServer::start();
    let mut client = admin(&server).await;
    client
        .push(pb::PushRequest {
            group: GROUP.into(),
            snapshot: Some(snapshot("stable")),
            ..pb::PushRequest::default()
        })
        .await
        .unwrap();
    let mut agents = fleet(&server, 10).await;

    let started = start(&mut client, &[20, 100], 8_000).await;
    assert_eq!((started.stable_version, started.candidate_version), (1, 2));
    // A plain push is refused while it runs, naming the rollout.
    let refused = client
        .push(pb::PushRequest {
            group: GROUP.into(),
            snapshot: Some(snapshot("other")),
            ..pb::PushRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("rollout edge-v2 in progress"),
        "{refused:?}"
    );

    // Step 1: exactly two agents (20% of 10) are sent version 2 and ACK it.
    let first = members(&mut client, 2).await;
    for a in agents.iter_mut().filter(|a| first.contains(&a.node.id)) {
        let r = a.recv().await;
        assert_eq!(r.version, 2);
        a.ack(&r).await;
    }
    let baking = wait_state(&mut client, pb::RolloutState::Baking).await;
    assert_eq!(baking.cohort.as_ref().unwrap().synced, 2);
    // The others hear nothing while the step bakes.
    for a in agents.iter_mut().filter(|a| !first.contains(&a.node.id)) {
        assert!(matches!(
            a.next(Duration::from_millis(200)).await,
            Next::Quiet
        ));
    }
    assert_eq!(rollout(&mut client).await.state(), pb::RolloutState::Baking);

    // Step 2 (100%): the others get it now.
    for a in agents.iter_mut().filter(|a| !first.contains(&a.node.id)) {
        let r = a.recv().await;
        assert_eq!(r.version, 2);
        a.ack(&r).await;
    }
    let done = wait_state(&mut client, pb::RolloutState::Complete).await;
    assert_eq!(done.cohort.unwrap().synced, 10);
    // Plain pushes work again.
    client
        .push(pb::PushRequest {
            group: GROUP.into(),
            snapshot: Some(snapshot("after")),
            ..pb::PushRequest::default()
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_content_nack_rolls_the_cohort_back_by_itself() {
    let server = ControlServer::start();
    let mut client = admin(&server).await;
    let stable = client
        .push(pb::PushRequest {
            group: GROUP.into(),
            snapshot: Some(snapshot("stable")),
            ..pb::PushRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut agents = fleet(&server, 10).await;
    start(&mut client, &[30, 100], 60_000).await;

    // The first member refuses it as invalid; the others apply it.
    let cohort = members(&mut client, 3).await;
    for (i, a) in agents
        .iter_mut()
        .filter(|a| cohort.contains(&a.node.id))
        .enumerate()
    {
        let r = a.recv().await;
        assert_eq!(r.version, 2);
        if i == 0 {
            a.nack(&r, (1, &stable.hash), "routes[0].cluster: unknown cluster")
                .await;
        } else {
            a.ack(&r).await;
        }
    }
    let r = wait_state(&mut client, pb::RolloutState::RolledBack).await;
    assert!(
        r.reason.contains("refused version 2 as invalid"),
        "{}",
        r.reason
    );
    assert!(r.reason.contains("unknown cluster"), "{}", r.reason);
    assert_eq!(r.restored_version, 3);
    // Every agent gets version 3 with the stable content: the cohort to
    // leave the candidate, the others a new number for what they run.
    for a in &mut agents {
        let resp = a.recv().await;
        assert_eq!(
            (resp.version, resp.hash.as_str()),
            (3, stable.hash.as_str())
        );
        a.ack(&resp).await;
    }
    let history = client
        .history(pb::HistoryRequest {
            group: GROUP.into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let v3 = &history.versions[0];
    assert_eq!((v3.version, v3.rollback_of), (3, 1));
    assert!(
        v3.message.contains("rollback of rollout edge-v2"),
        "{}",
        v3.message
    );
    assert_eq!(history.versions[1].rollout_id, "edge-v2");
}
