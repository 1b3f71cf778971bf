//! Replays every committed corpus file (`fuzz/corpus/<target>/*`), every
//! input that once crashed (`fuzz/regressions/<target>/*`, kept apart so
//! that minimizing a corpus never drops them) and every seed through its
//! target on stable Rust, without cargo-fuzz: `cargo xtask test` re-checks
//! each of them.
#![allow(clippy::unwrap_used)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use vane_fuzzing::{TARGETS, seeds, target};

/// Largest corpus file we commit.
const MAX_CORPUS_FILE: u64 = 1024 * 1024;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `name`'s corpus and regressions, sorted (none when it has
/// none yet).
fn corpus(name: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["regressions", "corpus"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(name)) else {
            continue;
        };
        let mut these: Vec<PathBuf> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        these.sort();
        files.extend(these);
    }
    files
}

/// A corpus file's bytes; `None` when it is gone (a fuzzer running on the
/// same corpus replaces inputs by smaller ones).
fn read_corpus_file(path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

/// Runs every corpus file and seed of `name`; fails listing every input
/// that broke an invariant (each panic message is printed as it happens).
fn replay(name: &str) {
    let run = target(name).unwrap().run;
    let mut inputs: Vec<(String, Vec<u8>)> = seeds::all()
        .into_iter()
        .filter(|s| s.target == name)
        .map(|s| (format!("seed {}", s.name), s.bytes))
        .collect();
    assert!(!inputs.is_empty(), "target {name} has no seeds");
    for path in corpus(name) {
        let Some(bytes) = read_corpus_file(&path) else {
            continue;
        };
        assert!(
            bytes.len() as u64 <= MAX_CORPUS_FILE,
            "{} is {} bytes, over {MAX_CORPUS_FILE}: minimize the corpus",
            path.display(),
            bytes.len()
        );
        inputs.push((path.display().to_string(), bytes));
    }
    let failed: Vec<String> = inputs
        .iter()
        .filter(|(_, bytes)| catch_unwind(AssertUnwindSafe(|| run(bytes))).is_err())
        .map(|(what, _)| what.clone())
        .collect();
    assert!(
        failed.is_empty(),
        "{name}: {} of {} inputs broke an invariant:\n{}",
        failed.len(),
        inputs.len(),
        failed.join("\n")
    );
}

#[test]
fn snapshot_file() {
    replay("snapshot_file");
}

#[test]
fn snapshot_proto() {
    replay("snapshot_proto");
}

#[test]
fn admin_request() {
    replay("admin_request");
}

#[test]
fn watch_request() {
    replay("watch_request");
}

#[test]
fn watch_stream() {
    replay("watch_stream");
}

#[test]
fn watch_response() {
    replay("watch_response");
}

#[test]
fn delta_apply() {
    replay("delta_apply");
}

#[test]
fn disk_cache() {
    replay("disk_cache");
}

#[test]
fn http_request() {
    replay("http_request");
}

/// Every target has a test above, a binary in fuzz/, and the fuzz crate
/// lists it; every corpus and regressions directory belongs to a target.
#[test]
fn every_target_is_wired_up() {
    for kind in ["corpus", "regressions"] {
        for entry in std::fs::read_dir(fuzz_dir().join(kind)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                target(&name).is_some(),
                "fuzz/{kind}/{name}: no such target"
            );
        }
    }
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let this =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus.rs"))
            .unwrap();
    for t in TARGETS {
        let source = fuzz_dir().join(format!("fuzz_targets/{}.rs", t.name));
        let text = std::fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        assert!(
            text.contains(&format!("vane_fuzzing::{}(", t.name)),
            "{} does not call vane_fuzzing::{}",
            source.display(),
            t.name
        );
        assert!(
            manifest.contains(&format!("name = \"{}\"", t.name)),
            "fuzz/Cargo.toml has no [[bin]] {}",
            t.name
        );
        assert!(
            this.contains(&format!("replay(\"{}\")", t.name)),
            "no corpus test replays {}",
            t.name
        );
    }
}

/// The agent reads its cache from a file: every `disk_cache` input loads
/// through `DiskCache::load` exactly as through `cache::decode`, which is
/// what the fuzz target runs (fast, without a file per input).
#[test]
fn disk_cache_files_load_like_the_decoder() {
    use vane_agent::cache::{DiskCache, decode};
    let dir = tempfile::tempdir().unwrap();
    let cache = DiskCache::new(dir.path(), "edge");
    let mut inputs: Vec<Vec<u8>> = seeds::all()
        .into_iter()
        .filter(|s| s.target == "disk_cache")
        .map(|s| s.bytes)
        .collect();
    inputs.extend(
        corpus("disk_cache")
            .iter()
            .filter_map(|p| read_corpus_file(p)),
    );
    for bytes in inputs {
        std::fs::write(cache.path(), &bytes).unwrap();
        match (cache.load(), decode(&bytes)) {
            (Ok(loaded), Ok(decoded)) => {
                assert_eq!(loaded, decoded);
                // And what the agent writes back loads the same.
                cache.store(&loaded).unwrap();
                assert_eq!(cache.load().unwrap(), decoded);
            }
            (Err(e), Err(reason)) => assert!(e.to_string().contains(&reason), "{e} / {reason}"),
            (loaded, decoded) => panic!("load {loaded:?} but decode {decoded:?}"),
        }
    }
}

/// Writes the seeds into the corpora (`seed-<name>`); run by hand after
/// changing them: `cargo test -p vane-fuzzing -- --ignored write_seeds`.
#[test]
#[ignore = "writes into fuzz/corpus"]
fn write_seeds() {
    for s in seeds::all() {
        let dir = fuzz_dir().join("corpus").join(s.target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{}", s.name)), &s.bytes).unwrap();
    }
}

/// The seeds reach the paths where content is accepted, not only the
/// refusals: a corpus of inputs that all fail early would fuzz little.
#[test]
fn seeds_reach_the_accepting_paths() {
    use bytes::Bytes;
    use prost::Message;
    use vane_agent::apply::check_content;
    use vane_agent::{Candidate, Source};
    use vane_fuzzing::fixtures::{delta_bases, example};
    use vane_model::{DEFAULT_MAX_SNAPSHOT_BYTES, Format, Snapshot, parse_file, validate};
    use vane_proto as pb;

    let content_ok = |hash: String, body: Bytes| {
        let c = Candidate {
            version: 9,
            hash,
            body,
            origin: Source::Live,
        };
        check_content(&c, DEFAULT_MAX_SNAPSHOT_BYTES)
    };
    for s in seeds::all() {
        let what = format!("{} seed {}", s.target, s.name);
        let bytes = s.bytes.as_slice();
        match (s.target, s.name) {
            ("snapshot_file", "broken.yaml") => {
                let errors = validate(parse_file(bytes, Format::Yaml).unwrap()).unwrap_err();
                assert!(errors.errors().len() > 20, "{what}: {errors}");
            }
            ("snapshot_file", name) => {
                let format = if name.ends_with(".json") {
                    Format::Json
                } else {
                    Format::Yaml
                };
                validate(parse_file(bytes, format).unwrap()).unwrap();
            }
            ("snapshot_proto", _) => {
                Snapshot::decode(bytes).unwrap();
            }
            ("admin_request", name) if name.starts_with("push") => {
                let push = pb::PushRequest::decode(&bytes[1..]).unwrap();
                vane_control::admin::prepare(push.snapshot.unwrap(), DEFAULT_MAX_SNAPSHOT_BYTES)
                    .unwrap();
            }
            ("watch_request", "first") => {
                let first = pb::WatchRequest::decode(bytes).unwrap();
                vane_control::watch::check_first_request(&first).unwrap();
            }
            ("watch_response", _) => {
                let r = pb::WatchResponse::decode(bytes).unwrap();
                let body = match r.body.unwrap() {
                    pb::watch_response::Body::Snapshot(b) => b,
                    pb::watch_response::Body::Delta(d) => {
                        assert_eq!(r.base_hash, example().content_hash().to_hex(), "{what}");
                        vane_model::delta::apply_encoded(example(), &d)
                            .unwrap()
                            .into()
                    }
                };
                content_ok(r.hash, body).unwrap();
            }
            ("delta_apply", _) => {
                let base = match usize::from(bytes[0]) {
                    i if i < delta_bases().len() => delta_bases()[i].clone(),
                    _ => {
                        let len = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
                        Snapshot::decode(&bytes[3..3 + len]).unwrap()
                    }
                };
                let delta = if usize::from(bytes[0]) < delta_bases().len() {
                    &bytes[1..]
                } else {
                    let len = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
                    &bytes[3 + len..]
                };
                let rebuilt = vane_model::delta::apply_encoded(&base, delta).unwrap();
                Snapshot::decode(&rebuilt).unwrap();
            }
            ("watch_stream", "node-change") => {
                assert!(vane_fuzzing::watch_stream_replay(bytes).is_none(), "{what}");
            }
            ("watch_stream", _) => {
                let record = vane_fuzzing::watch_stream_replay(bytes).unwrap();
                assert!(record.acked_version > 0, "{what}: nothing acked");
                if s.name == "ack-nack-resend" {
                    assert_eq!(record.last_nacked_version, 2, "{what}");
                }
            }
            ("disk_cache", name) => {
                let cached = vane_agent::cache::decode(bytes).unwrap();
                let checked = content_ok(cached.hash, cached.body);
                if name == "forged-hash" {
                    assert!(checked.unwrap_err().hash_mismatch, "{what}");
                } else {
                    checked.unwrap();
                }
            }
            _ => {}
        }
    }
}
