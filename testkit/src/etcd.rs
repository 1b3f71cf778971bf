//! Real etcd for the cluster tests and the etcd store's own tests: members
//! (one or several) as child processes on free
//! loopback ports with temporary data directories (SIGKILLed and restarted
//! at will), a few calls to etcd's JSON gateway (health, leader, compaction),
//! a TCP relay that can cut one replica off from etcd, and the flags that
//! make `vane-control` a replica. Members may serve their client port over
//! TLS ([`EtcdTls`]), optionally requiring client certificates; their
//! health is then read from a plaintext metrics port.
//!
//! `etcd` must be on PATH: `cargo xtask test` installs Debian's
//! `etcd-server`. Without it the tests that start one fail, saying so.

use std::fs::File;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::control::{ControlServer, Output};
use crate::net::{free_port, http_request as http};
use crate::process::{STARTUP_TIMEOUT, bin_path, run_captured};

/// How long a member (or the whole cluster) may take to become healthy.
pub const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);

fn etcd_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test needs `etcd` on PATH: install Debian's etcd-server \
                 (`cargo xtask test` does) and run again"
            )
        })
}

/// TLS on the members' client port (peers stay plaintext on loopback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The members' certificate (`--cert-file`). etcd's own gateway
    /// presents it as a client certificate too, so with `client_ca` it
    /// needs the clientAuth usage as well
    /// (`vane_pki::LeafParams::server(..).also_client()`).
    pub cert: PathBuf,
    /// Its key (`--key-file`).
    pub key: PathBuf,
    /// The CA bundle client certificates must chain to: with it, etcd runs
    /// with `--client-cert-auth --trusted-ca-file`; without it, clients
    /// need no certificate.
    pub client_ca: Option<PathBuf>,
}

/// One member of an [`EtcdCluster`].
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Plaintext `/health` (and `/metrics`), whatever the client port serves.
    metrics_port: u16,
    child: Option<Child>,
    starts: u32,
}

impl Member {
    fn client_url(&self, tls: bool) -> String {
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }
}

/// An etcd cluster of real processes, killed when dropped.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    root: TempDir,
    tls: Option<EtcdTls>,
    /// More etcd flags for every member.
    extra_args: Vec<String>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one is healthy.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, None, &[])
    }

    /// Starts `n` members serving their client port over TLS.
    pub fn start_tls(n: usize, tls: EtcdTls) -> Self {
        Self::start_with(n, Some(tls), &[])
    }

    /// Starts `n` members, with TLS when given and `extra_args` (more etcd
    /// flags, e.g. `--auth-token-ttl 2`), and waits until all are healthy.
    pub fn start_with(n: usize, tls: Option<EtcdTls>, extra_args: &[&str]) -> Self {
        assert!(n > 0, "a cluster has members");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
                child: None,
                starts: 0,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            initial_cluster,
            root: tempfile::Builder::new()
                .prefix("vane-etcd-")
                .tempdir()
                .expect("create a temporary directory"),
            tls,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy();
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let data = self
            .root
            .path()
            .join(format!("{}.etcd", self.members[i].name));
        let member = &mut self.members[i];
        member.starts += 1;
        let log_path = self
            .root
            .path()
            .join(format!("{}-{}.log", member.name, member.starts));
        let log = File::create(&log_path).expect("create the etcd log");
        let client_url = member.client_url(self.tls.is_some());
        let mut cmd = Command::new(etcd_binary());
        cmd.args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &member.peer_url()])
            .args(["--initial-advertise-peer-urls", &member.peer_url()])
            .args(["--listen-metrics-urls", &member.metrics_url()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "vane-tests"])
            .args(["--logger", "zap", "--log-level", "warn"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key);
            if let Some(ca) = &tls.client_ca {
                cmd.arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(ca);
            }
        }
        cmd.args(&self.extra_args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        member.child = Some(child);
    }

    /// Every member's client URL (`https://` with TLS).
    pub fn endpoints(&self) -> Vec<String> {
        let tls = self.tls.is_some();
        self.members.iter().map(|m| m.client_url(tls)).collect()
    }

    /// One member's client URL.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url(self.tls.is_some())
    }

    /// The client address of member `i` (for a [`Relay`]).
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.members[i].client_port))
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members (never: [`Self::start`] refuses).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts member `i` again on its ports and data (after [`Self::kill`]);
    /// does not wait for it.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "kill the member first");
        self.spawn(i);
    }

    /// Starts every stopped member again and waits until all are healthy.
    pub fn restart_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i);
            }
        }
        self.wait_healthy();
    }

    /// Waits until every running member reports itself healthy (it has a
    /// leader and answers a quorum read).
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + ETCD_READY_TIMEOUT;
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            loop {
                if self.healthy(i) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} did not become healthy; logs:\n{}",
                    m.name,
                    self.logs()
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Stops every member, changes their client port's TLS settings and
    /// data-preserving starts them again (waiting until healthy): etcd's
    /// side of a certificate rotation, or switching a cluster to TLS.
    pub fn restart_with_tls(&mut self, tls: Option<EtcdTls>) {
        self.kill_all();
        self.tls = tls;
        self.restart_all();
    }

    /// Whether member `i` answers `/health` with `true` (on its plaintext
    /// metrics port, so that TLS on the client port does not matter).
    pub fn healthy(&self, i: usize) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.members[i].metrics_port));
        http(addr, "GET", "/health", "")
            .is_ok_and(|(code, body)| code == 200 && body.contains("\"true\""))
    }

    /// Member `i`'s JSON gateway (its plaintext client port).
    #[track_caller]
    fn gateway(&self, i: usize) -> SocketAddr {
        assert!(
            self.tls.is_none(),
            "the tests speak to etcd's JSON gateway in plaintext only"
        );
        self.client_addr(i)
    }

    /// Turns on etcd's authentication (through member `i`): a `root` user
    /// (required by etcd; its password is random and not kept), and `user`
    /// with `password` and a role allowed to read and write the keys under
    /// `prefix/` (what a replica with `--etcd-prefix prefix` needs).
    pub fn enable_auth(&self, i: usize, user: &str, password: &str, prefix: &str) {
        let gateway = self.gateway(i);
        let root_password = format!("{:016x}", random_u64());
        let key = base64(format!("{prefix}/").as_bytes());
        // The end of the range `prefix/`: the prefix with its last byte + 1.
        let mut end = format!("{prefix}/").into_bytes();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let end = base64(&end);
        let calls = [
            (
                "/v3/auth/user/add",
                format!(r#"{{"name":"root","password":"{root_password}"}}"#),
            ),
            (
                "/v3/auth/user/grant",
                r#"{"user":"root","role":"root"}"#.to_owned(),
            ),
            ("/v3/auth/role/add", format!(r#"{{"name":"{user}-role"}}"#)),
            (
                "/v3/auth/role/grant",
                format!(
                    r#"{{"name":"{user}-role","perm":{{"permType":"READWRITE","key":"{key}","range_end":"{end}"}}}}"#
                ),
            ),
            (
                "/v3/auth/user/add",
                format!(r#"{{"name":"{user}","password":"{password}"}}"#),
            ),
            (
                "/v3/auth/user/grant",
                format!(r#"{{"user":"{user}","role":"{user}-role"}}"#),
            ),
            ("/v3/auth/enable", "{}".to_owned()),
        ];
        for (path, body) in calls {
            let (code, answer) =
                http(gateway, "POST", path, &body).unwrap_or_else(|e| panic!("POST {path}: {e}"));
            assert_eq!(code, 200, "POST {path}: {answer}");
        }
    }

    /// The index of the member that is the leader, asked of the running
    /// members; `None` while there is none.
    pub fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let Ok((200, body)) = http(self.gateway(i), "POST", "/v3/maintenance/status", "{}")
            else {
                continue;
            };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            let me = json["header"]["member_id"].as_str().unwrap_or_default();
            let leader = json["leader"].as_str().unwrap_or_default();
            if !leader.is_empty() && leader != "0" && me == leader {
                return Some(i);
            }
        }
        None
    }

    /// Waits for a leader and returns its index.
    #[track_caller]
    pub fn wait_leader(&self) -> usize {
        let deadline = Instant::now() + ETCD_READY_TIMEOUT;
        loop {
            if let Some(i) = self.leader() {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no etcd leader; logs:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The current revision, read from member `i`.
    pub fn revision(&self, i: usize) -> i64 {
        // `eA==` is the key "x" in base64, as the gateway wants keys.
        let (code, body) = http(self.gateway(i), "POST", "/v3/kv/range", r#"{"key":"eA=="}"#)
            .expect("POST /v3/kv/range");
        assert_eq!(code, 200, "range: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("range answers JSON");
        json["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision in {body}"))
    }

    /// Compacts the history up to the current revision (through member
    /// `i`); returns that revision.
    pub fn compact(&self, i: usize) -> i64 {
        let revision = self.revision(i);
        let (code, body) = http(
            self.gateway(i),
            "POST",
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{revision}","physical":true}}"#),
        )
        .expect("POST /v3/kv/compaction");
        assert_eq!(code, 200, "compaction: {body}");
        revision
    }

    /// Every key under `prefix` with its value, in key order, read through
    /// member `i` (a test that damages what a replica stored reads it so).
    pub fn get_prefix(&self, i: usize, prefix: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let body = format!(
            r#"{{"key":"{}","range_end":"{}"}}"#,
            base64(prefix.as_bytes()),
            base64(&end)
        );
        let (code, answer) =
            http(self.gateway(i), "POST", "/v3/kv/range", &body).expect("POST /v3/kv/range");
        assert_eq!(code, 200, "range: {answer}");
        let json: serde_json::Value = serde_json::from_str(&answer).expect("range answers JSON");
        let field = |kv: &serde_json::Value, name: &str| {
            unbase64(kv[name].as_str().unwrap_or_default())
                .unwrap_or_else(|| panic!("{name} is not base64 in {kv}"))
        };
        json["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (field(kv, "key"), field(kv, "value")))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sets `key` to `value` through member `i`.
    pub fn put(&self, i: usize, key: &[u8], value: &[u8]) {
        let body = format!(r#"{{"key":"{}","value":"{}"}}"#, base64(key), base64(value));
        let (code, answer) =
            http(self.gateway(i), "POST", "/v3/kv/put", &body).expect("POST /v3/kv/put");
        assert_eq!(code, 200, "put: {answer}");
    }

    /// Every member's logs so far.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            for n in 1..=m.starts {
                let path = self.root.path().join(format!("{}-{n}.log", m.name));
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                out.push_str(&format!("--- {} (start {n}) ---\n", m.name));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
        if thread::panicking() {
            eprintln!("--- etcd logs ---\n{}", self.logs());
        }
    }
}

/// Standard base64 with padding (etcd's gateway wants keys so).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The bytes of standard base64 with padding; `None` if it is not that.
fn unbase64(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let text = text.as_bytes();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for quad in text.chunks(4) {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | digit(c)?;
        }
        n <<= 6 * pad;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// A random number (std's randomly keyed hasher), enough for a password
/// nobody needs.
fn random_u64() -> u64 {
    use std::hash::BuildHasher as _;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

/// A TCP relay to one address that can be cut (every connection closed,
/// new ones refused at once) and restored: a network partition between one
/// replica and etcd.
pub struct Relay {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Starts relaying `127.0.0.1:<free port>` to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().expect("a bound address");
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (open2, conns2, stop2) = (Arc::clone(&open), Arc::clone(&conns), Arc::clone(&stop));
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if !open2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut all = conns2.lock().unwrap_or_else(|p| p.into_inner());
                    all.extend([&client, &server].iter().filter_map(|s| s.try_clone().ok()));
                }
                for (mut from, mut to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self {
            addr,
            open,
            conns,
            stop,
        }
    }

    /// The relay's URL, to give a replica as its etcd endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        let mut all = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        for conn in all.drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// Relays new connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// A `vane-control` replica on `endpoints` (comma-joined into
/// `--etcd-endpoints`), named `name`, with `extra` flags (and
/// `--etcd-lease-ttl 3s` unless they set it). The data dir the harness
/// passes is not used by the etcd store.
pub fn start_replica(name: &str, endpoints: &[String], extra: &[&str]) -> ControlServer {
    let endpoints = endpoints.join(",");
    let mut args = vec![
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoints,
        "--replica-name",
        name,
        "--shutdown-grace",
        "3s",
    ];
    if !extra.contains(&"--etcd-lease-ttl") {
        // Quick expiry of a dead replica's agents, so tests need not wait.
        args.extend(["--etcd-lease-ttl", "3s"]);
    }
    args.extend_from_slice(extra);
    ControlServer::start_with(&args)
}

/// Runs a `vane-control` replica (as [`start_replica`] would) that must
/// refuse to start, and returns what it said: its exit code and stderr, as
/// an [`Output`]. Panics if it is still running after
/// [`STARTUP_TIMEOUT`] (it is then killed).
pub fn replica_refusing_to_start(name: &str, endpoints: &[String], extra: &[&str]) -> Output {
    let data = tempfile::Builder::new()
        .prefix("vane-e2e-")
        .tempdir()
        .expect("create a temporary directory");
    let endpoints = endpoints.join(",");
    let mut args = vec!["--listen", "127.0.0.1:0", "--store", "etcd"];
    if !endpoints.is_empty() {
        args.extend(["--etcd-endpoints", &endpoints]);
    }
    args.extend(["--replica-name", name]);
    args.extend_from_slice(extra);
    let mut cmd = Command::new(bin_path("vane-control"));
    cmd.args(&args).arg("--data-dir").arg(data.path());
    let done = run_captured(cmd, None, STARTUP_TIMEOUT).unwrap_or_else(|e| {
        panic!("vane-control {args:?} was meant to refuse to start, and did not: {e}")
    });
    Output {
        code: done.code,
        stdout: done.stdout,
        stderr: done.stderr,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
    }
}
