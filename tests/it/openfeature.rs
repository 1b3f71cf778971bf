//! OpenFeature against a real server: the Python SDK with
//! `openfeature-provider-flagd` and the Node SDK with
//! `@openfeature/flagd-provider`, both in in-process mode, sync a group's
//! flags over `flagd.sync.v1`, evaluate them (targeting included), follow a
//! push, keep their flags while the server is SIGKILLed and follow again
//! after its restart; they are listed in status as `flagd` clients,
//! UNACKED at the version sent. OFREP with curl gives the same answers.
//! Both APIs are authorized like agents; bad flags are refused at push.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vane_proto::flagd::sync::v1 as fpb;
use vane_proto::flagd::sync::v1::flag_sync_service_client::FlagSyncServiceClient;
use vane_testkit::ControlServer;
use vane_testkit::curl::{Answer, curl};
use vane_testkit::fixtures::write_text;
use vane_testkit::lines::wait_for;
use vane_testkit::openfeature::{FlagdClient, Sdk, eval, values_of};
use vane_testkit::policy::{bearer, start_with_policy, token_file};

const GROUP: &str = "shop";
/// Generous for a first sync: the SDKs start a Python or Node runtime.
const START: Duration = Duration::from_secs(60);

/// Version 1: new-checkout on for example.com addresses, else its default
/// (off); max_body a plain value.
const V1: &str = r##"
values:
  max_body: 1048576
flags:
  new-checkout:
    state: ENABLED
    variants: {on: true, off: false}
    defaultVariant: off
    targeting:
      if:
        - ends_with: [{var: email}, "@example.com"]
        - on
        - null
  color:
    state: ENABLED
    variants: {red: "#c00", blue: "#00c"}
    defaultVariant: red
    targeting:
      fractional:
        - [red, 50]
        - [blue, 50]
"##;

/// Version 2 flips both answers: off for example.com, else on.
const V2: &str = r##"
values:
  max_body: 1048576
flags:
  new-checkout:
    state: ENABLED
    variants: {on: true, off: false}
    defaultVariant: on
    targeting:
      if:
        - ends_with: [{var: email}, "@example.com"]
        - off
        - null
  color:
    state: ENABLED
    variants: {red: "#c00", blue: "#00c"}
    defaultVariant: red
    targeting:
      fractional:
        - [red, 50]
        - [blue, 50]
"##;

fn contexts() -> [Value; 2] {
    [
        json!({"targetingKey": "u1", "email": "ann@example.com"}),
        json!({"targetingKey": "u2", "email": "bob@other.org"}),
    ]
}

fn evals() -> Vec<Value> {
    let [a, b] = contexts();
    vec![
        eval("new-checkout", "boolean", json!(false), a),
        eval("new-checkout", "boolean", json!(false), b),
        eval("max_body", "number", json!(0), json!({})),
        // A fractional split, by targeting key (see FRACTIONAL).
        eval("color", "string", json!(""), json!({"targetingKey": "u1"})),
        eval("color", "string", json!(""), json!({"targetingKey": "u2"})),
        eval("color", "string", json!(""), json!({"targetingKey": "u3"})),
        eval("color", "string", json!(""), json!({"targetingKey": "u4"})),
    ]
}

fn push(server: &ControlServer, name: &str, yaml: &str) -> u64 {
    let file = write_text(&server.scratch(), name, yaml);
    push_file(server, &file)
}

fn push_file(server: &ControlServer, file: &Path) -> u64 {
    let out = server
        .ctl(&["push", GROUP, "-f", file.to_str().unwrap(), "-o", "json"])
        .ok();
    out.json()["version"].as_u64().unwrap()
}

/// `POST /ofrep/v1/evaluate/flags[/key]` with `Vane-Group: shop`.
fn ofrep(server: &ControlServer, key: Option<&str>, body: &Value, extra: &[&str]) -> Answer {
    let path = match key {
        Some(k) => format!("/ofrep/v1/evaluate/flags/{k}"),
        None => "/ofrep/v1/evaluate/flags".to_owned(),
    };
    let body = body.to_string();
    let mut args = vec![
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
    ];
    args.extend_from_slice(extra);
    curl(&format!("http://{}{path}", server.addr()), &args)
}

fn with_group(server: &ControlServer, key: Option<&str>, body: &Value) -> Answer {
    ofrep(server, key, body, &["-H", "Vane-Group: shop"])
}

/// What OFREP says for each of `evals()`: (value, variant, reason).
fn ofrep_answers(server: &ControlServer) -> Vec<(Value, Value, Value)> {
    evals()
        .iter()
        .map(|e| {
            let a = with_group(
                server,
                Some(e["flag"].as_str().unwrap()),
                &json!({"context": e["context"]}),
            );
            assert_eq!(a.status, 200, "{a:?}");
            let v = a.json();
            (
                v["value"].clone(),
                v["variant"].clone(),
                v["reason"].clone(),
            )
        })
        .collect()
}

/// (value, variant, reason) of each result an SDK printed.
/// The results after the first three are `fractional` splits. The Node
/// provider (flagd-core 4.0.1) buckets `flagKey + targetingKey` as flagd
/// does, and so does Vane's OFREP; the pinned Python provider
/// (openfeature-flagd-core 2.0.0) hashes the CBOR encoding of `[flagKey,
/// targetingKey]` instead, so its buckets differ (docs/openfeature.md).
const FRACTIONAL: usize = 3;

/// Checks an SDK's results against OFREP's: all of them for Node, all but
/// the fractional ones for Python (whose variants must still be variants).
fn assert_agrees(sdk: Sdk, results: &[Value], ofrep: &[(Value, Value, Value)]) {
    let answers = sdk_answers(results);
    match sdk {
        Sdk::Node => assert_eq!(answers, ofrep, "Node and OFREP disagree"),
        Sdk::Python => {
            assert_eq!(
                answers[..FRACTIONAL],
                ofrep[..FRACTIONAL],
                "Python and OFREP disagree"
            );
            for (value, variant, _) in &answers[FRACTIONAL..] {
                assert!(
                    matches!(
                        (value.as_str(), variant.as_str()),
                        (Some("#c00"), Some("red")) | (Some("#00c"), Some("blue"))
                    ),
                    "{value} {variant}"
                );
            }
        }
    }
}

fn sdk_answers(results: &[Value]) -> Vec<(Value, Value, Value)> {
    results
        .iter()
        .map(|r| {
            (
                r["value"].clone(),
                r["variant"].clone(),
                r["reason"].clone(),
            )
        })
        .collect()
}

#[test]
fn flagd_providers_follow_pushes_and_keep_their_flags_through_a_killed_server() {
    let mut server = ControlServer::start();
    assert_eq!(push(&server, "v1.yaml", V1), 1);
    let clients: Vec<FlagdClient> = [Sdk::Python, Sdk::Node]
        .into_iter()
        .map(|sdk| FlagdClient::start(sdk, server.addr(), GROUP, &evals()))
        .collect();

    // Version 1: targeting picks on for ann, the default (off) for bob.
    let v1 = [json!(true), json!(false), json!(1_048_576)];
    for c in &clients {
        let results = c.wait_values("version 1's values", START, |r| {
            values_of(&r[..FRACTIONAL]) == v1
        });
        assert_agrees(c.sdk(), &results, &ofrep_answers(&server));
        assert_eq!(results[0]["reason"], "TARGETING_MATCH");
        assert_eq!(results[1]["reason"], "DEFAULT");
        assert_eq!(results[2]["reason"], "STATIC");
    }
    // Both are nodes of the group: client flagd, UNACKED at 1.
    assert_eq!(flagd_nodes(&server, 1), 2);

    // A push flips both answers; each SDK follows within 2 s.
    let pushed = Instant::now();
    assert_eq!(push(&server, "v2.yaml", V2), 2);
    let v2 = [json!(false), json!(true), json!(1_048_576)];
    let results: Vec<Vec<Value>> = clients
        .iter()
        .map(|c| {
            c.wait_values("version 2's values", Duration::from_secs(10), |r| {
                values_of(&r[..FRACTIONAL]) == v2
            })
        })
        .collect();
    let took = pushed.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the SDKs took {took:?} to follow a push"
    );
    for (c, r) in clients.iter().zip(&results) {
        assert_agrees(c.sdk(), r, &ofrep_answers(&server));
    }

    // The server is SIGKILLed: the SDKs keep evaluating version 2.
    let lines_before: Vec<usize> = clients.iter().map(|c| c.value_lines().len()).collect();
    server.kill();
    for c in &clients {
        // They notice (Python after its 5 s stream check, Node at once)…
        wait_for(
            &format!("{:?} to report the lost stream", c.sdk()),
            Duration::from_secs(30),
            || (c.count("stale") + c.count("error") > 0).then_some(()),
            || c.describe(),
        );
    }
    // … and still answer from the flags they hold: no result changed.
    std::thread::sleep(Duration::from_secs(1));
    for (c, before) in clients.iter().zip(&lines_before) {
        let lines = c.value_lines();
        assert_eq!(
            lines.len(),
            *before,
            "{:?} results changed with the server dead: {:?}",
            c.sdk(),
            &lines[*before..]
        );
    }

    // Restarted (same port, same data): they reconnect and follow version 3.
    server.restart_same_port();
    let v3_text = V2.replace("max_body: 1048576", "max_body: 2048");
    // Both reconnect (listed again, UNACKED at 2); `push --wait` then does
    // not wait for them: they cannot ACK.
    wait_for(
        "both providers to reconnect",
        START,
        || (flagd_nodes(&server, 2) == 2).then_some(()),
        || format!("{:?}", server.ctl(&["status", GROUP]).stdout),
    );
    let file = write_text(&server.scratch(), "v3.yaml", &v3_text);
    let waited = server
        .ctl(&[
            "push",
            GROUP,
            "-f",
            file.to_str().unwrap(),
            "--wait",
            "--timeout",
            "20s",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(waited["version"], 3, "{waited}");
    let v3 = [json!(false), json!(true), json!(2048)];
    for c in &clients {
        c.wait_values("version 3's values after the restart", START, |r| {
            values_of(&r[..FRACTIONAL]) == v3
        });
    }
    // Listed again: the killed server's entries were in its memory only;
    // the new streams are UNACKED at 3.
    assert_eq!(flagd_nodes(&server, 3), 2);
}

/// How many `flagd` clients `vanectl status` lists once each is connected
/// and UNACKED at `version` (the head). Polled: a provider that has just
/// opened a new sync stream is listed NOT_SENT for the moment before the
/// server sends it the head.
fn flagd_nodes(server: &ControlServer, version: u64) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = server.ctl(&["status", GROUP, "-o", "json"]).ok().json();
        let flagd: Vec<Value> = status
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["client"] == "flagd")
            .cloned()
            .collect();
        let unacked = |a: &Value| {
            (
                a["state"].as_str(),
                a["connected"].as_bool(),
                a["target_version"].as_u64(),
            ) == (Some("UNACKED"), Some(true), Some(version))
        };
        if flagd.iter().all(unacked) {
            return flagd.len();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "flagd clients not all UNACKED at {version}: {flagd:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ofrep_evaluates_with_etags_and_names_what_is_wrong() {
    let server = ControlServer::start();
    push(&server, "v1.yaml", V1);
    let [ann, _] = contexts();

    // Bulk: every flag (values too). Without a context the ETag is the
    // version's hash; with one, the hash and a digest of the context.
    let (_, hash) = vane_testkit::history(&server.url(), GROUP).pop().unwrap();
    let plain = with_group(&server, None, &json!({}));
    assert_eq!(plain.status, 200, "{plain:?}");
    assert_eq!(plain.header("etag"), Some(format!("\"{hash}\"").as_str()));
    let bulk = with_group(&server, None, &json!({"context": ann}));
    assert_eq!(bulk.status, 200, "{bulk:?}");
    let etag = bulk.header("etag").unwrap().to_owned();
    assert!(etag.starts_with(&format!("\"{hash}.")), "{etag}");
    let flags = bulk.json()["flags"].as_array().unwrap().clone();
    let keys: Vec<&str> = flags.iter().map(|f| f["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["color", "max_body", "new-checkout"]);
    assert_eq!(flags[2]["value"], true);
    // The flag set's metadata under the flag's own, as the providers merge.
    assert_eq!(flags[2]["metadata"]["flagSetId"], GROUP);
    assert_eq!(flags[2]["metadata"]["version"], "1");
    let again = |context: &Value, etag: &str| {
        let tag = format!("If-None-Match: {etag}");
        ofrep(
            &server,
            None,
            &json!({ "context": context }),
            &["-H", "Vane-Group: shop", "-H", &tag],
        )
    };
    // Unchanged: 304 without a body.
    let same = again(&ann, &etag);
    assert_eq!((same.status, same.body.as_str()), (304, ""), "{same:?}");
    let same = again(&json!({}), &format!("\"{hash}\""));
    assert_eq!(same.status, 304, "{same:?}");
    // Another context with the old ETag (as OFREP's web provider sends it
    // after a context change): that context's answers, not a 304.
    let [_, bob] = contexts();
    let other = again(&bob, &etag);
    assert_eq!(other.status, 200, "{other:?}");
    assert_eq!(other.json()["flags"][2]["value"], false);
    // After a push: 200 with a new ETag.
    push(&server, "v2.yaml", V2);
    let changed = again(&ann, &etag);
    assert_eq!(changed.status, 200, "{changed:?}");
    assert_ne!(changed.header("etag"), Some(etag.as_str()));

    // Errors: OFREP's codes, the field named.
    let missing = with_group(&server, Some("nope"), &json!({"context": {}}));
    assert_eq!(missing.status, 404, "{missing:?}");
    assert_eq!(missing.json()["errorCode"], "FLAG_NOT_FOUND");
    assert_eq!(missing.json()["key"], "nope");
    let bad = with_group(
        &server,
        Some("new-checkout"),
        &json!({"context": {"targetingKey": 7}}),
    );
    assert_eq!(bad.status, 400, "{bad:?}");
    assert_eq!(bad.json()["errorCode"], "INVALID_CONTEXT");
    assert!(
        bad.json()["errorDetails"]
            .as_str()
            .unwrap()
            .starts_with("context.targetingKey:")
    );
    let not_json = curl(
        &format!(
            "http://{}/ofrep/v1/evaluate/flags/new-checkout",
            server.addr()
        ),
        &[
            "-X",
            "POST",
            "-H",
            "Vane-Group: shop",
            "--data-binary",
            "{oops",
        ],
    );
    assert_eq!(
        (not_json.status, not_json.json()["errorCode"].as_str()),
        (400, Some("PARSE_ERROR"))
    );
    let no_group = ofrep(&server, Some("new-checkout"), &json!({}), &[]);
    assert_eq!(no_group.status, 400, "{no_group:?}");
    assert!(
        no_group.json()["errorDetails"]
            .as_str()
            .unwrap()
            .starts_with("Vane-Group:")
    );
    let unknown = ofrep(&server, None, &json!({}), &["-H", "Vane-Group: nowhere"]);
    assert_eq!(unknown.status, 404, "{unknown:?}");

    // A disabled flag: no value (the caller's default), reason DISABLED.
    let disabled = V1.replace("state: ENABLED", "state: DISABLED");
    push(&server, "v3.yaml", &disabled);
    let off = with_group(&server, Some("new-checkout"), &json!({"context": ann}));
    assert_eq!(off.status, 200, "{off:?}");
    assert_eq!(
        off.json(),
        json!({"key": "new-checkout", "reason": "DISABLED"})
    );
}

#[test]
fn a_flag_that_is_not_valid_is_refused_at_push_and_nothing_changes() {
    let server = ControlServer::start();
    push(&server, "v1.yaml", V1);
    let broken = V1.replace("defaultVariant: off", "defaultVariant: of");
    let file = write_text(&server.scratch(), "broken.yaml", &broken);
    let out = server.ctl(&["push", GROUP, "-f", file.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.one_error_line().contains(
            r#"flags["new-checkout"].defaultVariant: no variant "of" (variants: off, on)"#
        ),
        "{out}"
    );
    let logic = V1.replace("ends_with:", "ends_wit:");
    let file = write_text(&server.scratch(), "logic.yaml", &logic);
    let out = server.ctl(&["push", GROUP, "-f", file.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.one_error_line()
            .contains(r#"flags["new-checkout"].targeting.if[0]: not valid JSON Logic"#),
        "{out}"
    );
    let history = vane_testkit::history(&server.url(), GROUP);
    assert_eq!(history.len(), 1, "{history:?}");
}

/// The committed `examples/flags.yaml` pushes as it is and evaluates as its
/// comments say (the demo pushes it too).
#[test]
fn the_flags_example_pushes_and_evaluates_as_documented() {
    let server = ControlServer::start();
    let example = vane_testkit::process::workspace_root().join("examples/flags.yaml");
    assert_eq!(push_file(&server, &example), 1);
    let evaluate = |key: &str, context: Value| {
        let a = with_group(&server, Some(key), &json!({ "context": context }));
        assert_eq!(a.status, 200, "{a:?}");
        let v = a.json();
        (
            v["value"].clone(),
            v["variant"].clone(),
            v["reason"].clone(),
        )
    };
    assert_eq!(
        evaluate(
            "new-checkout",
            json!({"targetingKey": "u1", "email": "ann@example.com"})
        ),
        (json!(true), json!("on"), json!("TARGETING_MATCH"))
    );
    assert_eq!(
        evaluate(
            "new-checkout",
            json!({"targetingKey": "u2", "email": "bob@other.org"})
        ),
        (json!(false), json!("off"), json!("DEFAULT"))
    );
    assert_eq!(
        evaluate("checkout.max_items", json!({})).0,
        json!(50),
        "the value is served as a static flag"
    );
    // The banner goes to about 20% of users: 20 of 100 expected.
    let mut sale = 0;
    for i in 0..100 {
        let (value, variant, _) = evaluate(
            "checkout-banner",
            json!({"targetingKey": format!("user-{i}")}),
        );
        match variant.as_str() {
            Some("spring-sale") => {
                assert_eq!(value, "Spring sale: 10% off");
                sale += 1;
            }
            Some("none") => assert_eq!(value, ""),
            _ => panic!("user-{i}: variant {variant}"),
        }
    }
    assert!((8..=32).contains(&sale), "{sale} of 100 users got the sale");
}

const TOKENS: &[(&str, &str)] = &[
    ("ci-shop", "shop-operator-token"),
    ("flags-shop", "shop-flags-token"),
    ("flags-other", "other-flags-token"),
];

const POLICY: &str = "bindings:\n  - {identity: ci-shop, role: operator, groups: [shop]}\n  - {identity: flags-shop, role: agent, groups: [shop]}\n  - {identity: flags-other, role: agent, groups: [other]}\n";

/// A sync stream from Rust (the stock providers cannot send a token).
async fn sync_stream(
    server: &ControlServer,
    token: Option<&str>,
) -> Result<tonic::Streaming<fpb::SyncFlagsResponse>, tonic::Status> {
    let mut client = FlagSyncServiceClient::connect(server.url()).await.unwrap();
    let mut request = tonic::Request::new(fpb::SyncFlagsRequest {
        provider_id: "rust-1".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("flagd-selector", GROUP.parse().unwrap());
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    client
        .sync_flags(request)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_ofrep_are_authorized_like_agents() {
    let (server, policy) = start_with_policy(TOKENS, POLICY, &[]);
    let operator = token_file(&policy, "operator.token", TOKENS[0].1);
    let file = write_text(&server.scratch(), "v1.yaml", V1);
    server
        .ctl(&[
            "--token-file",
            operator.to_str().unwrap(),
            "push",
            GROUP,
            "-f",
            file.to_str().unwrap(),
        ])
        .ok();

    // flagd sync: no token, another group's token, then the group's.
    let anonymous = sync_stream(&server, None).await.unwrap_err();
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous:?}"
    );
    let other = sync_stream(&server, Some(TOKENS[2].1)).await.unwrap_err();
    assert_eq!(other.code(), tonic::Code::PermissionDenied, "{other:?}");
    let mut stream = sync_stream(&server, Some(TOKENS[1].1)).await.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    let config: Value = serde_json::from_str(&first.flag_configuration).unwrap();
    assert_eq!(config["flags"]["new-checkout"]["defaultVariant"], "off");
    assert_eq!(config["metadata"]["flagSetId"], GROUP);
    let status = server
        .ctl(&[
            "--token-file",
            operator.to_str().unwrap(),
            "status",
            GROUP,
            "-o",
            "json",
        ])
        .ok()
        .json();
    let entry = status
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["node_id"] == "flagd-rust-1")
        .cloned()
        .unwrap_or_else(|| panic!("flagd-rust-1 not listed: {status}"));
    assert_eq!(
        (
            entry["client"].as_str(),
            entry["state"].as_str(),
            entry["target_version"].as_u64()
        ),
        (Some("flagd"), Some("UNACKED"), Some(1)),
        "{entry}"
    );

    // OFREP: 401 without a token, 403 for another group, and the group
    // taken from the caller's only binding when no Vane-Group is given.
    let base = server.addr();
    let answers = tokio::task::spawn_blocking(move || {
        let url = format!("http://{base}/ofrep/v1/evaluate/flags/max_body");
        let post = ["-X", "POST", "--data-binary", "{}"];
        let mut shop = post.to_vec();
        let (b1, b2) = (bearer(TOKENS[1].1), bearer(TOKENS[2].1));
        shop.extend(["-H", b1.as_str()]);
        let mut other = post.to_vec();
        other.extend(["-H", b2.as_str(), "-H", "Vane-Group: shop"]);
        [curl(&url, &post), curl(&url, &other), curl(&url, &shop)]
    })
    .await
    .unwrap();
    let [none, other, shop] = answers;
    assert_eq!(none.status, 401, "{none:?}");
    assert_eq!(other.status, 403, "{other:?}");
    assert_eq!(shop.status, 200, "{shop:?}");
    assert_eq!(shop.json()["value"], 1_048_576);

    // The policy withdraws shop from flags-shop: the open stream ends.
    std::fs::write(
        &policy,
        "bindings:\n  - {identity: ci-shop, role: operator, groups: [shop]}\n",
    )
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("the stream ends after the reload")
        .unwrap_err();
    assert_eq!(ended.code(), tonic::Code::PermissionDenied, "{ended:?}");
    assert!(ended.message().contains("withdrawn"), "{ended:?}");
}
