//! The sidecar's disk cache rewritten by an attacker while the control plane
//! is down, over real processes: other content under the stored hash,
//! content that does not validate (whatever hash comes with it), truncated,
//! empty and garbage files, and huge ones.
//!
//! On restart the sidecar never applies what does not hash and validate: it
//! serves its defaults, degraded, with a reason naming the cache file and
//! the problem, without reading a huge file into memory; and once the
//! control server is back it goes live on the head (and rewrites the cache).
//!
//! The cache file is an encoded `vane.v1.StoredVersion`; the tests write it
//! with a few lines of protobuf encoding of their own, as an attacker would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vane_model::SnapshotSpec;
use vane_testkit::sidecar::Sidecar;
use vane_testkit::{ControlServer, fixtures};

const GROUP: &str = "edge";

/// A control server that pushed one version, a sidecar that cached it, and
/// both stopped: the attacker's moment.
struct World {
    server: ControlServer,
    args: Vec<String>,
    dir: PathBuf,
    cache_file: PathBuf,
    output: PathBuf,
    /// The head's hash (version 1).
    head: String,
    starts: u32,
}

impl World {
    fn new(node: &str) -> Self {
        let server = ControlServer::start();
        let dir = server.scratch();
        let v1 = fixtures::write_json(&dir, "v1.json", &fixtures::example_spec());
        let out = server
            .ctl(&["push", GROUP, "-f", v1.to_str().unwrap(), "-o", "json"])
            .ok();
        let head = out.json()["hash"].as_str().unwrap().to_owned();
        let defaults = fixtures::write_json(
            &dir,
            "defaults.json",
            &fixtures::example_with_value("mode", serde_json::json!("defaults")),
        );
        let cache = dir.join("cache");
        let output = dir.join("edge.json");
        let url = server.url();
        let args: Vec<String> = [
            "--node-id",
            node,
            "--group",
            GROUP,
            "--control",
            url.as_str(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--defaults",
            defaults.to_str().unwrap(),
            "--backoff-base",
            "50ms",
            "--backoff-cap",
            "1s",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut w = Self {
            server,
            args,
            dir,
            cache_file: cache.join(format!("{GROUP}.snapshot.pb")),
            output,
            head,
            starts: 0,
        };
        let mut agent = w.start();
        agent.wait_status("version 1 live", |s| {
            s["version"] == 1 && s["source"] == "live"
        });
        w.wait_cache_holds_the_head();
        w.server.kill();
        assert!(
            agent
                .terminate(Duration::from_secs(10))
                .is_some_and(|s| s.success())
        );
        w
    }

    fn start(&mut self) -> Sidecar {
        self.starts += 1;
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Sidecar::start(&args, &self.dir.join(format!("agent-{}.log", self.starts)))
    }

    /// Restarts the sidecar on what the attacker left and checks that it
    /// serves its defaults, degraded, for a reason naming the cache file
    /// and containing `problem`.
    #[track_caller]
    fn restart_refusing(&mut self, what: &str, problem: &str) -> Sidecar {
        let agent = self.start();
        let s = agent.status();
        assert_eq!(s["source"], "defaults", "{what}: {s}\n{}", agent.logs());
        assert_eq!(s["state"], "degraded", "{what}: {s}");
        assert_eq!(s["version"], 0, "{what}: {s}");
        let reason = s["reason"].as_str().unwrap();
        println!("{what}: {reason}");
        assert!(reason.contains("serving embedded defaults"), "{reason}");
        assert!(reason.contains("edge.snapshot.pb"), "{what}: {reason}");
        assert!(reason.contains(problem), "{what}: {reason}");
        let out = output(&self.output);
        assert_eq!(out["values"]["mode"], "defaults", "{what}: {out}");
        assert!(out["values"].get("attacker").is_none(), "{what}: {out}");
        assert!(
            !agent.logs().contains("serving the cached snapshot"),
            "{what}: the cache was applied:\n{}",
            agent.logs()
        );
        agent
    }

    /// The control server comes back: the sidecar goes live on the head
    /// and replaces the attacker's file with the head.
    #[track_caller]
    fn comes_back(&mut self, agent: &Sidecar) {
        self.server.restart_same_port();
        let s = agent.wait_status("live on the head", |s| {
            s["source"] == "live" && s["version"] == 1
        });
        assert_eq!(s["hash"], self.head.as_str());
        assert_eq!(s["state"], "healthy", "{s}");
        assert_eq!(output(&self.output)["hash"], self.head.as_str());
        self.wait_cache_holds_the_head();
    }

    /// Waits until the cache file holds the head: it is written right
    /// after the swap that /status shows.
    fn wait_cache_holds_the_head(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let cached = std::fs::read(&self.cache_file).unwrap_or_default();
            let has = |needle: &[u8]| cached.windows(needle.len()).any(|w| w == needle);
            if has(self.head.as_bytes()) && !has(b"attacker") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cache still holds the attacker's file"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn output(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The attacker's content: valid, with a marker value.
fn attacker_spec() -> SnapshotSpec {
    fixtures::example_with_value("attacker", serde_json::json!(true))
}

fn snapshot_bytes(spec: &SnapshotSpec) -> Vec<u8> {
    vane_model::validate(spec.clone()).unwrap().encode()
}

fn hash_of(spec: &SnapshotSpec) -> String {
    vane_model::validate(spec.clone())
        .unwrap()
        .content_hash()
        .to_hex()
}

// Protobuf encoding, just what the cache file needs.

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `StoredVersion { info: VersionInfo { version, hash, size_bytes }, snapshot }`,
/// encoded the way the agent writes it.
fn stored_version(version: u64, hash: &str, snapshot: &[u8]) -> Vec<u8> {
    let mut info = Vec::new();
    field_varint(&mut info, 1, version);
    field_bytes(&mut info, 2, hash.as_bytes());
    field_varint(&mut info, 7, snapshot.len() as u64);
    let mut out = Vec::new();
    field_bytes(&mut out, 1, &info);
    field_bytes(&mut out, 2, snapshot);
    out
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

#[test]
fn other_content_under_the_stored_hash_is_refused() {
    let mut w = World::new("cache-a");
    // The attacker swaps the content and leaves version and hash as they
    // were: the file looks exactly like the agent's own.
    let bytes = stored_version(1, &w.head, &snapshot_bytes(&attacker_spec()));
    std::fs::write(&w.cache_file, bytes).unwrap();
    let agent = w.restart_refusing("content swapped, hash kept", "hash mismatch");
    // A newer version number does not help either.
    drop(agent);
    let bytes = stored_version(7, &w.head, &snapshot_bytes(&attacker_spec()));
    std::fs::write(&w.cache_file, bytes).unwrap();
    let agent = w.restart_refusing("content swapped, version bumped", "hash mismatch");
    w.comes_back(&agent);
}

#[test]
fn content_that_does_not_validate_is_refused_whatever_its_hash() {
    let mut w = World::new("cache-b");
    // Valid content plus one more route table (a repeated field, so the
    // bytes still decode) whose route sends to a cluster that does not
    // exist: structurally valid, semantically not.
    let mut body = snapshot_bytes(&attacker_spec());
    let mut route_match = Vec::new();
    field_bytes(&mut route_match, 1, b"/");
    let mut route = Vec::new();
    field_bytes(&mut route, 1, b"evil");
    field_bytes(&mut route, 2, &route_match);
    field_bytes(&mut route, 3, b"nowhere");
    let mut route_table = Vec::new();
    field_bytes(&mut route_table, 1, b"evil");
    field_bytes(&mut route_table, 2, &route);
    field_bytes(&mut body, 2, &route_table);
    let err = vane_model::Snapshot::decode(&body).expect_err("the content must not validate");
    assert!(err.to_string().contains("nowhere"), "{err}");
    // The hash the attacker computed: the valid part's, the head's, any.
    for (n, hash) in [hash_of(&attacker_spec()), w.head.clone()]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&w.cache_file, stored_version(2, &hash, &body)).unwrap();
        let agent = w.restart_refusing(&format!("dangling reference #{n}"), "nowhere");
        if n == 1 {
            w.comes_back(&agent);
        }
    }
}

#[test]
fn truncated_empty_and_garbage_cache_files_are_refused() {
    let mut w = World::new("cache-c");
    let good = std::fs::read(&w.cache_file).unwrap();
    std::fs::write(&w.cache_file, &good[..good.len() / 2]).unwrap();
    drop(w.restart_refusing("truncated", "corrupt"));
    std::fs::write(&w.cache_file, b"").unwrap();
    drop(w.restart_refusing("empty", "corrupt"));
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&w.cache_file, garbage).unwrap();
    let agent = w.restart_refusing("garbage", "corrupt");
    w.comes_back(&agent);
}

#[test]
fn huge_cache_files_are_refused_without_filling_memory() {
    let mut w = World::new("cache-d");
    // 300 MiB, sparse (no disk used): refused by its size, unread.
    let f = std::fs::File::create(&w.cache_file).unwrap();
    f.set_len(300 * 1024 * 1024).unwrap();
    drop(f);
    let agent = w.restart_refusing("300 MiB file", "limit");
    let peak = peak_rss_kib(agent.pid().unwrap());
    println!("peak RSS after refusing a 300 MiB cache file: {peak} KiB");
    assert!(peak < 64 * 1024, "{peak} KiB");
    drop(agent);
    // A well-formed file whose snapshot is over the agent's 4 MiB snapshot
    // limit: refused before decoding.
    let body = vec![0x2a; 5 * 1024 * 1024];
    std::fs::write(&w.cache_file, stored_version(3, &w.head, &body)).unwrap();
    let agent = w.restart_refusing("5 MiB snapshot", "limit");
    let peak = peak_rss_kib(agent.pid().unwrap());
    println!("peak RSS after refusing a 5 MiB snapshot: {peak} KiB");
    assert!(peak < 64 * 1024, "{peak} KiB");
    w.comes_back(&agent);
}
