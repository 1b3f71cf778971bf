//! The embedded store's faults on a real server: a full disk makes it
//! read-only (reported by `vanectl status`, `/readyz`, the gRPC health
//! service and a metric) and it heals by itself once there is room again,
//! losing no acknowledged version; a damaged database file stops the start
//! with one line, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use vane_testkit::net::{admin_metric, free_addr, http_get};
use vane_testkit::{ControlServer, fixtures, vanectl};

const GROUP: &str = "edge";

/// A small tmpfs mounted on a directory, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts `size` of tmpfs on `dir`; `None` (and the test says why and
    /// stops) where this process may not mount.
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "vane-test"])
            .arg(dir)
            .output()
            .expect("run mount");
        if out.status.success() {
            Some(Self(dir.to_path_buf()))
        } else {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
    }

    /// Fills the file system: writes a file until ENOSPC.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0x5au8; 64 * 1024];
        loop {
            if file.write_all(&block).is_err() {
                break;
            }
        }
        // The last partial block: byte by byte up to the last one.
        while file.write_all(&[0]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: the server may still hold the file open.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn push_marker(server: &ControlServer, marker: &str) -> vane_testkit::Output {
    let spec = fixtures::example_with_value("test.marker", json!(marker));
    let file = fixtures::write_json(&server.scratch(), &format!("{marker}.json"), &spec);
    vanectl(
        &server.url(),
        &["push", GROUP, "-f", file.to_str().unwrap(), "-o", "json"],
    )
}

/// The `store:` line of `vanectl status` (printed when the store is
/// clustered or degraded).
fn store_line(server: &ControlServer) -> Option<String> {
    let out = vanectl(&server.url(), &["status", GROUP]).ok();
    out.stdout
        .lines()
        .find(|l| l.starts_with("store: "))
        .map(str::to_owned)
}

fn metric(admin: SocketAddr, name: &str) -> f64 {
    admin_metric(admin, name, &[])
}

async fn grpc_health(server: &ControlServer) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    client
        .check(HealthCheckRequest {
            service: "vane.v1.Admin".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

#[track_caller]
fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_store_read_only_and_it_heals_without_a_restart() {
    let admin = free_addr();
    let admin_flag = admin.to_string();
    let mut disk = None;
    let mut server = ControlServer::start_prepared(&["--admin-listen", &admin_flag], |data| {
        disk = SmallDisk::mount(data, "8m");
    });
    let Some(disk) = disk else { return };

    // Healthy: ready on every probe.
    assert_eq!(push_marker(&server, "v1").ok().json()["version"], 1);
    assert_eq!(http_get(admin, "/readyz").unwrap().0, 200);
    assert_eq!(grpc_health(&server).await, SERVING);
    assert_eq!(metric(admin, "vane_control_store_degraded"), 0.0);

    let filler = disk.fill();
    // The failing push: a clear error, nothing stored.
    let failed = push_marker(&server, "v2-full");
    assert_ne!(
        failed.code, 0,
        "a push onto a full disk succeeded: {failed:?}"
    );
    assert!(
        failed.stderr.contains("No space left on device"),
        "{}",
        failed.stderr
    );
    // Reported everywhere while it lasts.
    let line = store_line(&server).expect("a store line while degraded");
    assert!(line.contains("DEGRADED, read-only"), "{line}");
    assert!(line.contains("No space left on device"), "{line}");
    assert!(line.contains("vane.redb"), "{line}");
    let (code, body) = http_get(admin, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("No space left"), "{body}");
    assert_eq!(
        http_get(admin, "/healthz").unwrap().0,
        200,
        "liveness stays"
    );
    assert_eq!(metric(admin, "vane_control_store_degraded"), 1.0);
    wait_until(
        "gRPC health says NOT_SERVING",
        Duration::from_secs(5),
        || futures_block(grpc_health(&server)) == NOT_SERVING,
    );
    // Reads keep working: the acknowledged version is there.
    let got = vanectl(&server.url(), &["get", GROUP, "-o", "json"]).ok();
    assert_eq!(got.json()["version"], 1);

    // Still full: a restart starts (and serves what it has), and is not
    // poisoned for good by its first failed push.
    server.kill();
    server.restart_same_port();
    assert_eq!(
        vanectl(&server.url(), &["get", GROUP, "-o", "json"])
            .ok()
            .json()["version"],
        1
    );
    let failed = push_marker(&server, "v2-still-full");
    assert_ne!(failed.code, 0, "{failed:?}");

    // Room again: writable within seconds, without a restart.
    let freed = Instant::now();
    std::fs::remove_file(&filler).unwrap();
    wait_until("/readyz says ready", Duration::from_secs(10), || {
        http_get(admin, "/readyz").is_ok_and(|(code, _)| code == 200)
    });
    println!("disk freed -> ready again: {:?}", freed.elapsed());
    let pushed = push_marker(&server, "v2").ok();
    assert_eq!(
        pushed.json()["version"],
        2,
        "the next number, none lost or reused"
    );
    assert_eq!(store_line(&server), None, "healthy again");
    assert_eq!(metric(admin, "vane_control_store_degraded"), 0.0);
    assert_eq!(grpc_health(&server).await, SERVING);
    let history = vane_testkit::history(&server.url(), GROUP);
    assert_eq!(
        history.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        [1, 2],
        "{history:?}"
    );
    drop(disk);
}

/// Runs a future to completion from synchronous code inside the test's
/// runtime.
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[test]
fn a_damaged_database_file_stops_the_start_with_one_line() {
    use std::io::{Seek, SeekFrom};
    let mut server = ControlServer::start();
    for i in 0..5 {
        push_marker(&server, &format!("m{i}")).ok();
    }
    server.terminate(Duration::from_secs(10)).expect("stopped");
    let db = server.data_dir().join("vane.redb");
    let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.seek(SeekFrom::Start(4096)).unwrap();
    let noise: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
        .collect();
    file.write_all(&noise).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let (status, stderr) = server
        .start_expecting_exit(Duration::from_secs(20))
        .expect("the server started on a damaged file");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("unreachable"), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("vane-control: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(line.contains(&db.display().to_string()), "{line}");
    assert!(line.contains("restore it from a backup"), "{line}");
    assert!(line.contains("vane-control check"), "{line}");
}
