//! Real inputs for every target, built from the fixtures: the files and
//! messages Vane itself writes. They start the corpora (`cargo test -p
//! vane-fuzzing -- --ignored write_seeds` writes them under `fuzz/corpus/`)
//! and the corpus test replays them even when a minimized corpus dropped
//! them.

use prost::Message;
use vane_agent::cache::CachedSnapshot;
use vane_model::Snapshot;
use vane_model::delta::diff;
use vane_proto as pb;

use crate::cache::stored_form;
use crate::delta::INLINE_BASE;
use crate::fixtures::{EXAMPLE_YAML, GROUP, RICH_YAML, RUNNING_VERSION, example, large, rich};

/// One seed input.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The target it is for.
    pub target: &'static str,
    /// A file name for it (`seed-<name>` in the corpus).
    pub name: &'static str,
    /// The input.
    pub bytes: Vec<u8>,
}

fn seed(target: &'static str, name: &'static str, bytes: impl Into<Vec<u8>>) -> Seed {
    Seed {
        target,
        name,
        bytes: bytes.into(),
    }
}

/// A file with an error in nearly every field, for the error paths.
const BROKEN_YAML: &str = r#"listeners:
  - { name: "-bad", address: "localhost:80", protocol: udp }
  - { name: web, address: "[::1:80", route_table: nope, cluster: api }
route_tables:
  - name: main
    routes:
      - { name: "a b", match: { path_prefix: api, path_exact: /x, path_regex: "(" }, cluster: nope, timeout_ms: 0, retries: 99, rate_limit: none }
      - match: { host: "*.", headers: [ { name: "bad header", exact: x }, { name: x, present: false }, { name: y, regex: "[" } ] }
        cluster: api
  - { name: main, routes: [] }
clusters:
  - { name: api, lb: fastest, connect_timeout_ms: 999999, endpoints: [ { address: "1.2.3.4:0", weight: 0 }, { address: "1.2.3.4:0" } ] }
  - { name: empty, endpoints: [], outlier_detection: { base_ejection_ms: 10, max_ejection_ms: 5, max_ejection_percent: 101 } }
rate_limits:
  - { name: r, requests_per_second: -1, burst: 0 }
  - { name: q }
values:
  "": 1
"#;

/// A file whose values nest arrays and objects exactly as deep as
/// validation allows (`MAX_VALUE_DEPTH`), so that fuzzing starts at that
/// limit: deeper values were once accepted while their renderings no longer
/// parsed back.
fn deep_values_yaml() -> String {
    let depth = vane_model::validate::MAX_VALUE_DEPTH;
    format!(
        "values:\n  list: {}1{}\n  map: {}1{}\n",
        "[".repeat(depth),
        "]".repeat(depth),
        "{a: ".repeat(depth),
        "}".repeat(depth)
    )
}

fn deep_values() -> Snapshot {
    let yaml = deep_values_yaml();
    match vane_model::parse_file(yaml.as_bytes(), vane_model::Format::Yaml)
        .map(vane_model::validate)
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("deep values seed does not validate: {e}"),
        Err(e) => panic!("deep values seed does not parse: {e}"),
    }
}

fn changed_large() -> Snapshot {
    let mut spec = large().to_spec();
    spec.route_tables[0].routes[7].timeout_ms = Some(4321);
    spec.route_tables[0].routes.remove(30);
    spec.clusters[0].endpoints.remove(11);
    spec.clusters[1].endpoints[3].weight = Some(9);
    match vane_model::validate(spec) {
        Ok(s) => s,
        Err(e) => panic!("changed large fixture does not validate: {e}"),
    }
}

fn prefixed(first: &[u8], message: &impl Message) -> Vec<u8> {
    let mut out = first.to_vec();
    out.extend(message.encode_to_vec());
    out
}

fn delta(from: &Snapshot, to: &Snapshot) -> Vec<u8> {
    diff(&from.to_proto(), &to.to_proto()).encode_to_vec()
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let (example, rich, large) = (example(), rich(), large());
    let changed = changed_large();
    let to_json = |s: &Snapshot| serde_json::to_vec_pretty(&s.to_json()).unwrap_or_default();
    let mut seeds = vec![
        seed("snapshot_file", "example.yaml", EXAMPLE_YAML),
        seed("snapshot_file", "example.json", to_json(example)),
        seed("snapshot_file", "rich.yaml", RICH_YAML),
        seed("snapshot_file", "rich-get.yaml", rich.to_yaml()),
        seed(
            "snapshot_file",
            "rich-canonical.json",
            rich.canonical_bytes(),
        ),
        seed("snapshot_file", "broken.yaml", BROKEN_YAML),
        seed("snapshot_file", "deep-values.yaml", deep_values_yaml()),
        seed("snapshot_proto", "example", example.encode()),
        seed("snapshot_proto", "rich", rich.encode()),
        seed("snapshot_proto", "large", large.encode()),
        seed("snapshot_proto", "deep-values", deep_values().encode()),
        seed(
            "snapshot_proto",
            "rich-spelled-out",
            vane_model::proto::spec_to_proto(&rich.to_spec()).encode_to_vec(),
        ),
    ];

    let push = |snapshot: &Snapshot, expected_version, dry_run| pb::PushRequest {
        supersede: false,
        group: GROUP.into(),
        snapshot: Some(vane_model::proto::spec_to_proto(&snapshot.to_spec())),
        expected_version,
        dry_run,
        message: "fuzz seed".into(),
    };
    seeds.extend([
        seed(
            "admin_request",
            "push-example",
            prefixed(&[0], &push(example, None, false)),
        ),
        seed(
            "admin_request",
            "push-rich",
            prefixed(&[0], &push(rich, Some(4), true)),
        ),
        seed(
            "admin_request",
            "get",
            prefixed(
                &[1],
                &pb::GetRequest {
                    group: GROUP.into(),
                    version: Some(3),
                    show_secrets: false,
                },
            ),
        ),
        seed(
            "admin_request",
            "history",
            prefixed(
                &[2],
                &pb::HistoryRequest {
                    group: GROUP.into(),
                    limit: 10,
                },
            ),
        ),
        seed(
            "admin_request",
            "diff",
            prefixed(
                &[3],
                &pb::DiffRequest {
                    group: GROUP.into(),
                    from_version: 1,
                    to_version: 2,
                    show_secrets: false,
                },
            ),
        ),
        seed(
            "admin_request",
            "rollback",
            prefixed(
                &[4],
                &pb::RollbackRequest {
                    group: GROUP.into(),
                    to_version: 1,
                    expected_version: Some(2),
                    message: "back".into(),
                    force: false,
                },
            ),
        ),
        seed(
            "admin_request",
            "status",
            prefixed(
                &[5],
                &pb::StatusRequest {
                    group: GROUP.into(),
                    ..pb::StatusRequest::default()
                },
            ),
        ),
        seed(
            "admin_request",
            "audit",
            prefixed(
                &[6],
                &pb::AuditRequest {
                    group: GROUP.into(),
                    limit: 5,
                },
            ),
        ),
        seed("admin_request", "whoami", vec![7]),
    ]);

    let node = pb::Node {
        id: "edge-1".into(),
        group: GROUP.into(),
        labels: [
            ("zone".to_string(), "a".to_string()),
            ("rack".into(), "7".into()),
        ]
        .into(),
        agent_build: "vane-agent/0.1.0".into(),
    };
    let example_hash = example.content_hash().to_hex();
    seeds.extend([
        seed(
            "watch_request",
            "first",
            pb::WatchRequest {
                node: Some(node),
                version_info: RUNNING_VERSION,
                hash: example_hash.clone(),
                accept_delta: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        seed(
            "watch_request",
            "ack",
            pb::WatchRequest {
                version_info: 6,
                hash: rich.content_hash().to_hex(),
                response_nonce: "1f-3".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        seed(
            "watch_request",
            "nack",
            pb::WatchRequest {
                response_nonce: "1f-4".into(),
                error_detail: Some(pb::ErrorDetail {
                    code: 3,
                    message: "clusters[0].endpoints[0].address: bad".into(),
                }),
                want_full: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    ]);

    // Streams: the server sends (op 0), the agent answers. Ops with bit 2
    // take the last nonce, with bit 3 the last version and hash.
    let send = [0u8, 0, 0];
    let ack = crate::watch_stream_step(4 | 8 | 1, &pb::WatchRequest::default());
    let nack = crate::watch_stream_step(
        4 | 1,
        &pb::WatchRequest {
            version_info: 0,
            error_detail: Some(pb::ErrorDetail {
                code: 3,
                message: "clusters[0].endpoints[0].address: bad".into(),
            }),
            ..Default::default()
        },
    );
    let want_full = crate::watch_stream_step(
        4 | 1,
        &pb::WatchRequest {
            want_full: true,
            ..Default::default()
        },
    );
    let heartbeat = crate::watch_stream_step(1, &pb::WatchRequest::default());
    let forged = crate::watch_stream_step(
        4 | 1,
        &pb::WatchRequest {
            version_info: 1,
            hash: "0".repeat(64),
            ..Default::default()
        },
    );
    let other_node = crate::watch_stream_step(
        1,
        &pb::WatchRequest {
            node: Some(pb::Node {
                id: "someone-else".into(),
                group: GROUP.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let stream = |steps: &[&[u8]]| steps.concat();
    seeds.extend([
        seed(
            "watch_stream",
            "ack-nack-resend",
            stream(&[
                &send, &ack, &send, &nack, &want_full, &send, &heartbeat, &ack,
            ]),
        ),
        seed(
            "watch_stream",
            "forged-then-genuine",
            stream(&[&send, &forged, &heartbeat, &ack, &send, &send, &ack]),
        ),
        seed(
            "watch_stream",
            "node-change",
            stream(&[&send, &ack, &other_node]),
        ),
    ]);

    let response = |version: u64, to: &Snapshot, body| pb::WatchResponse {
        group: GROUP.into(),
        version,
        hash: to.content_hash().to_hex(),
        nonce: format!("1f-{version}"),
        body: Some(body),
        base_version: RUNNING_VERSION,
        base_hash: example_hash.clone(),
        created_at_unix_ms: 1_700_000_000_000,
        store_unreachable: false,
        store_unreachable_ms: 0,
    };
    use pb::watch_response::Body;
    seeds.extend([
        seed(
            "watch_response",
            "full-rich",
            response(6, rich, Body::Snapshot(rich.encode().into())).encode_to_vec(),
        ),
        seed(
            "watch_response",
            "delta-large",
            response(7, large, Body::Delta(delta(example, large).into())).encode_to_vec(),
        ),
        seed(
            "watch_response",
            "delta-rich",
            response(8, rich, Body::Delta(delta(example, rich).into())).encode_to_vec(),
        ),
    ]);

    let inline = |base: &Snapshot, to: &Snapshot| {
        let encoded = base.encode();
        let mut out = vec![INLINE_BASE];
        out.extend(
            u16::try_from(encoded.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend(encoded);
        out.extend(delta(base, to));
        out
    };
    let indexed = |i: u8, from: &Snapshot, to: &Snapshot| {
        let mut out = vec![i];
        out.extend(delta(from, to));
        out
    };
    seeds.extend([
        seed(
            "delta_apply",
            "empty-to-example",
            indexed(0, &Snapshot::default(), example),
        ),
        seed(
            "delta_apply",
            "example-to-large",
            indexed(1, example, large),
        ),
        seed("delta_apply", "example-to-rich", indexed(1, example, rich)),
        seed("delta_apply", "rich-to-example", indexed(2, rich, example)),
        seed("delta_apply", "large-patched", indexed(3, large, &changed)),
        seed(
            "delta_apply",
            "inline-example-to-rich",
            inline(example, rich),
        ),
    ]);

    let cache = |version: u64, s: &Snapshot, hash: String| {
        stored_form(&CachedSnapshot {
            version,
            hash,
            body: s.encode().into(),
        })
    };
    seeds.extend([
        seed(
            "disk_cache",
            "example",
            cache(5, example, example_hash.clone()),
        ),
        seed(
            "disk_cache",
            "rich",
            cache(9, rich, rich.content_hash().to_hex()),
        ),
        seed("disk_cache", "forged-hash", cache(9, rich, example_hash)),
    ]);
    seeds.extend(http_seeds(&example.content_hash().to_hex()));
    seeds
}

/// `http_request`: polls (0: a query; 1: `If-None-Match`; 3: both) and
/// ACKs (2: a body), fine and hostile.
fn http_seeds(hash: &str) -> Vec<Seed> {
    let prefixed = |which: u8, text: &str| {
        let mut out = vec![which];
        out.extend_from_slice(text.as_bytes());
        out
    };
    let labels = (0..70)
        .map(|i| format!("label.k{i}=v"))
        .collect::<Vec<_>>()
        .join("&");
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    vec![
        seed(
            "http_request",
            "poll",
            prefixed(
                0,
                "node=web-1&after_version=7&wait=30s&format=yaml&label.zone=eu+west",
            ),
        ),
        seed(
            "http_request",
            "poll-hostile",
            prefixed(
                0,
                "wait=1e9s&after_version=18446744073709551616&node=%00&=x&no%64e=a",
            ),
        ),
        seed(
            "http_request",
            "poll-labels",
            prefixed(0, &format!("node=a&{labels}")),
        ),
        seed(
            "http_request",
            "if-none-match",
            prefixed(1, &format!("W/\"{hash}\", \"sha256:{hash}\"")),
        ),
        seed(
            "http_request",
            "poll-and-tag",
            prefixed(3, &format!("node=a&wait=0\n\"{hash}\"")),
        ),
        seed(
            "http_request",
            "ack",
            prefixed(
                2,
                &format!(r#"{{"node":"web-1","version":7,"hash":"{hash}","error":null}}"#),
            ),
        ),
        seed(
            "http_request",
            "nack",
            prefixed(
                2,
                &format!(
                    r#"{{"node":"web-1","version":7,"hash":"sha256:{hash}","error":{{"message":"nginx -t: bad"}}}}"#
                ),
            ),
        ),
        seed(
            "http_request",
            "ack-hostile",
            prefixed(
                2,
                &format!(
                    r#"{{"node":"a\u0000","version":1e400,"hash":{deep},"extra":true}} trailing"#
                ),
            ),
        ),
    ]
}
