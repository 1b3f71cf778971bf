//! The watch protocol against a real server: initial snapshot, ACK, the next
//! push, NACK (visible in `vanectl status`), and what a reconnect receives.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use vane_proto as pb;
use vane_testkit::fixtures::{example_path, example_with_value, expected_hash, write_json};
use vane_testkit::{
    ControlServer, Next, WATCH_TIMEOUT, WatchClient, agent_status, decode_snapshot, wait_for_status,
};

/// How long "nothing arrives" is observed for.
const QUIET: Duration = Duration::from_millis(1500);

fn push(server: &ControlServer, group: &str, file: &std::path::Path) -> (u64, String) {
    let out = server
        .ctl(&["push", group, "-f", file.to_str().unwrap(), "-o", "json"])
        .ok();
    let v = out.json();
    (
        v["version"].as_u64().unwrap(),
        v["hash"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_ack_next_push_nack_and_reconnect() {
    let server = ControlServer::start();
    let url = server.url();
    let dir = server.scratch();
    let (v1, h1) = push(&server, "edge", &example_path());
    assert_eq!(v1, 1);
    assert_eq!(h1, expected_hash(&example_path()));

    // The current snapshot arrives on connect.
    let mut agent = WatchClient::connect(&url, "node-1", "edge", None).await;
    let r1 = agent.recv().await;
    assert_eq!(r1.version, v1);
    assert_eq!(r1.hash, h1);
    assert_eq!(r1.group, "edge");
    assert!(!r1.nonce.is_empty(), "a response carries a nonce");
    let snap = decode_snapshot(&r1);
    assert_eq!(
        snap.content_hash().to_hex(),
        h1,
        "the bytes are the pushed content"
    );
    assert!(snap.cluster("api").is_some());

    // ACK: status shows the agent SYNCED at v1.
    agent.ack(&r1).await;
    let st = wait_for_status(&url, "edge", "node-1", "SYNCED at 1", |a| {
        a["state"] == "SYNCED" && a["acked_version"] == v1
    });
    assert!(
        st["nack_reason"].is_null() || st["nack_reason"] == "",
        "no NACK reason yet: {st}"
    );

    // The next push arrives on the open stream.
    let f2 = write_json(&dir, "v2.json", &example_with_value("v", json!(2)));
    let (v2, h2) = push(&server, "edge", &f2);
    assert_eq!(v2, 2);
    let r2 = agent.recv().await;
    assert_eq!(r2.version, v2);
    assert_eq!(r2.hash, h2);
    assert_ne!(r2.nonce, r1.nonce, "nonces are unique within a stream");
    assert_eq!(decode_snapshot(&r2).content_hash().to_hex(), h2);

    // NACK v2, staying on v1: NACKED with the reason, acked version stays 1.
    let reason = "listeners[0].address: 127.0.0.1:18080 is taken on this host";
    agent.nack(&r2, (v1, &h1), reason).await;
    let st = wait_for_status(&url, "edge", "node-1", "NACKED", |a| a["state"] == "NACKED");
    assert_eq!(st["acked_version"], v1, "{st}");
    assert!(
        st["nack_reason"]
            .as_str()
            .unwrap_or_default()
            .contains(reason),
        "{st}"
    );
    if let Some(n) = st.get("last_nacked_version") {
        assert_eq!(*n, v2, "{st}");
    }
    // The server does not resend the refused version on the same stream
    // (the status above shows the NACK was handled): nothing comes, and
    // the next push is the very next message.
    let quiet = agent.expect_quiet(QUIET).await;
    let f3 = write_json(&dir, "v3.json", &example_with_value("v", json!(3)));
    let (v3, h3) = push(&server, "edge", &f3);
    let r3 = quiet.then_recv(v3).await;
    assert_eq!(r3.hash, h3);
    drop(agent);

    // Reconnecting on v1 while the head is v3: the head is sent again.
    let mut agent = WatchClient::connect(&url, "node-1", "edge", Some((v1, &h1))).await;
    let r = agent.recv().await;
    assert_eq!((r.version, r.hash.as_str()), (v3, h3.as_str()));
    agent.ack(&r).await;
    wait_for_status(&url, "edge", "node-1", "SYNCED at 3", |a| {
        a["state"] == "SYNCED" && a["acked_version"] == v3
    });
    drop(agent);

    // Reconnecting with the head's exact version and hash: nothing is sent
    // until the next push.
    let mut agent = WatchClient::connect(&url, "node-1", "edge", Some((v3, &h3))).await;
    let quiet = agent.expect_quiet(QUIET).await;
    let f4 = write_json(&dir, "v4.json", &example_with_value("v", json!(4)));
    let (v4, h4) = push(&server, "edge", &f4);
    let r4 = quiet.then_recv(v4).await;
    assert_eq!(r4.hash, h4);
    agent.ack(&r4).await;
    wait_for_status(&url, "edge", "node-1", "SYNCED at 4", |a| {
        a["state"] == "SYNCED" && a["acked_version"] == v4
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_right_version_but_wrong_hash_gets_the_snapshot() {
    let server = ControlServer::start();
    let (v1, h1) = push(&server, "hashy", &example_path());
    let wrong = "0".repeat(64);
    assert_ne!(wrong, h1);
    let mut agent = WatchClient::connect(&server.url(), "n", "hashy", Some((v1, &wrong))).await;
    let r = agent.recv().await;
    assert_eq!((r.version, r.hash.as_str()), (v1, h1.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_of_an_empty_group_waits_for_the_first_push() {
    let server = ControlServer::start();
    let url = server.url();
    // Nobody watches yet and nothing was pushed: a name nobody uses.
    let out = server.ctl(&["status", "later", "-o", "json"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.one_error_line().contains("unknown group"), "{out}");
    let mut agent = WatchClient::connect(&url, "early", "later", None).await;
    // The server has the agent's first request, and nothing to send.
    wait_for_status(&url, "later", "early", "NOT_SENT", |a| {
        a["state"] == "NOT_SENT"
    });
    let quiet = agent.expect_quiet(QUIET).await;

    let (v1, h1) = push(&server, "later", &example_path());
    let r = quiet.then_recv(v1).await;
    assert_eq!(r.hash, h1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_wins_for_an_agent_that_answers_late() {
    // An agent that is sent v1 and answers only after five more pushes gets
    // the newest version, never a backlog: versions only go up and end at
    // the head. (Whether the server sends before the answer is its choice.)
    let server = ControlServer::start();
    let url = server.url();
    let dir = server.scratch();
    push(&server, "slow", &example_path());
    let mut agent = WatchClient::connect(&url, "slow-1", "slow", None).await;
    let r1 = agent.recv().await;
    assert_eq!(r1.version, 1);
    let mut head = (0, String::new());
    for i in 2..=6 {
        let f = write_json(
            &dir,
            &format!("v{i}.json"),
            &example_with_value("v", json!(i)),
        );
        head = push(&server, "slow", &f);
    }
    assert_eq!(head.0, 6);
    agent.ack(&r1).await;
    let mut seen = vec![r1.version];
    let last = loop {
        let r = agent.recv().await;
        assert!(
            r.version > *seen.last().unwrap(),
            "versions went back: {seen:?} then {}",
            r.version
        );
        assert_eq!(decode_snapshot(&r).content_hash().to_hex(), r.hash);
        seen.push(r.version);
        if r.version == head.0 {
            break r;
        }
    };
    assert_eq!(last.hash, head.1);
    agent.ack(&last).await;
    wait_for_status(&url, "slow", "slow-1", "SYNCED at 6", |a| {
        a["state"] == "SYNCED" && a["acked_version"] == 6
    });
    let status = agent_status(&url, "slow", "slow-1").expect("the agent is listed");
    assert_eq!(status["acked_version"], 6, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_request_without_a_valid_node_is_refused() {
    let server = ControlServer::start();
    push(&server, "edge", &example_path());
    let cases = [
        (None, "node"),
        (
            Some(pb::Node {
                id: String::new(),
                group: "edge".into(),
                ..pb::Node::default()
            }),
            "node.id",
        ),
        (
            Some(pb::Node {
                id: "n".into(),
                group: "bad group".into(),
                ..pb::Node::default()
            }),
            "node.group",
        ),
    ];
    for (node, field) in cases {
        let mut client = pb::config_discovery_client::ConfigDiscoveryClient::connect(server.url())
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(pb::WatchRequest {
            node,
            ..pb::WatchRequest::default()
        })
        .await
        .unwrap();
        let call = client.watch(tokio_stream::wrappers::ReceiverStream::new(rx));
        let status = match tokio::time::timeout(WATCH_TIMEOUT, call).await.unwrap() {
            Err(status) => status,
            Ok(resp) => {
                let mut stream = resp.into_inner();
                match tokio::time::timeout(WATCH_TIMEOUT, stream.message())
                    .await
                    .unwrap()
                {
                    Err(status) => status,
                    Ok(got) => panic!("{field}: expected a refusal, got {got:?}"),
                }
            }
        };
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert!(status.message().starts_with(field), "{field}: {status:?}");
        drop(tx);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_crash_an_agent_on_the_head_gets_nothing_and_shows_synced() {
    let mut server = ControlServer::start();
    let dir = server.scratch();
    push(&server, "crash", &example_path());
    let f2 = write_json(&dir, "v2.json", &example_with_value("v", json!(2)));
    let (v2, h2) = push(&server, "crash", &f2);
    let mut agent = WatchClient::connect(&server.url(), "survivor", "crash", None).await;
    let r = agent.recv().await;
    assert_eq!((r.version, r.hash.as_str()), (v2, h2.as_str()));
    agent.ack(&r).await;

    tokio::task::block_in_place(|| {
        server.kill();
        server.restart();
    });
    // The old stream is dead.
    match agent.next(WATCH_TIMEOUT).await {
        Next::Ended(_) => {}
        other => panic!("the stream outlived the server: {other:?}"),
    }

    // The restarted server knows its head from the store: the agent on it
    // shows SYNCED, and is sent nothing before the next push.
    let url = server.url();
    let mut agent = WatchClient::connect(&url, "survivor", "crash", Some((v2, &h2))).await;
    wait_for_status(&url, "crash", "survivor", "SYNCED at 2", |a| {
        a["state"] == "SYNCED" && a["acked_version"] == v2
    });
    let quiet = agent.expect_quiet(QUIET).await;
    // An agent that runs version 1 is sent the head.
    let mut old = WatchClient::connect(&url, "laggard", "crash", Some((1, &"0".repeat(64)))).await;
    let r = old.recv().await;
    assert_eq!((r.version, r.hash.as_str()), (v2, h2.as_str()));
    let f3 = write_json(&dir, "v3.json", &example_with_value("v", json!(3)));
    let (v3, h3) = push(&server, "crash", &f3);
    let r = quiet.then_recv(v3).await;
    assert_eq!(r.hash, h3);
}
