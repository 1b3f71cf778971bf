//! A `vane-control` process with its own data directory, `vanectl` runs
//! with their output, a scripted agent on the watch stream, and snapshot
//! fixtures (re-exported at the crate root).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use vane_proto as pb;

use crate::process::{bin_path, read_lossy, run_captured, spawn_announced, terminate_child};

/// How long one `vanectl` run may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a watch response that must come.
pub const WATCH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to poll `vanectl status` for a state that must appear.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(20);

/// The line `vane-control` prints on stdout once it listens (issue #3 contract).
const LISTENING_PREFIX: &str = "vane-control listening on ";

/// A running (or stopped) `vane-control` process with its own data directory.
pub struct ControlServer {
    child: Option<Child>,
    addr: SocketAddr,
    /// Holds `data/` and one `control-<n>.log` (stderr) per start.
    root: TempDir,
    starts: u32,
    /// Flags passed after `--listen` and `--data-dir`.
    extra_args: Vec<String>,
    /// What `--listen` gets: `127.0.0.1:0`, or the previous address after
    /// [`Self::restart_same_port`].
    listen: String,
}

impl ControlServer {
    /// Starts a server on `127.0.0.1:0` with a fresh data directory.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`Self::start`], with more `vane-control` flags.
    pub fn start_with(extra_args: &[&str]) -> Self {
        Self::start_prepared(extra_args, |_| {})
    }

    /// Like [`Self::start_with`], calling `prepare` with the (empty) data
    /// directory before the server first starts: to mount a small file
    /// system there, or to place a file.
    pub fn start_prepared(extra_args: &[&str], prepare: impl FnOnce(&Path)) -> Self {
        let root = tempfile::Builder::new()
            .prefix("vane-e2e-")
            .tempdir()
            .expect("create a temporary directory");
        std::fs::create_dir_all(root.path().join("data")).expect("create the data directory");
        let mut server = Self {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            root,
            starts: 0,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            listen: "127.0.0.1:0".into(),
        };
        prepare(&server.data_dir());
        server.spawn();
        server
    }

    /// Starts the server once more and returns its exit status and stderr
    /// when it exits within `within` (a start that must fail), or `None`
    /// after killing it when it is still running.
    pub fn start_expecting_exit(&mut self, within: Duration) -> Option<(ExitStatus, String)> {
        self.starts += 1;
        let log_path = self
            .root
            .path()
            .join(format!("control-{}.log", self.starts));
        let log = std::fs::File::create(&log_path).expect("create the log file");
        let mut child = self
            .command()
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vane-control");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("wait for vane-control") {
                return Some((status, read_lossy(&log_path)));
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// `vane-control --listen … --data-dir … EXTRA_ARGS`.
    fn command(&self) -> Command {
        let mut cmd = Command::new(bin_path("vane-control"));
        cmd.arg("--listen")
            .arg(&self.listen)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.extra_args);
        cmd
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log_path = self
            .root
            .path()
            .join(format!("control-{}.log", self.starts));
        let (child, line) = spawn_announced(self.command(), LISTENING_PREFIX, &log_path);
        self.addr = line
            .parse()
            .unwrap_or_else(|e| panic!("vane-control printed an unparsable address {line:?}: {e}"));
        self.child = Some(child);
    }

    /// The server's gRPC URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the server printed.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The data directory (kept across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// A scratch directory for test files, removed with the server.
    pub fn scratch(&self) -> PathBuf {
        let dir = self.root.path().join("files");
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        dir
    }

    /// Everything the server wrote on stderr, over all its starts.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| read_lossy(&self.root.path().join(format!("control-{n}.log"))))
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// SIGKILLs the server and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit.
    /// Returns its exit status, or `None` if it was still running then (it
    /// is SIGKILLed, so a test that fails on `None` leaves nothing behind).
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.take().expect("the server is running");
        terminate_child(child, within)
    }

    /// Starts the server again on the same data directory (after
    /// [`Self::kill`] or [`Self::terminate`]). The port may change: use
    /// [`Self::url`] again.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        self.spawn();
    }

    /// Starts the server again on the same data directory AND the same
    /// address, so agents configured with its URL find it again.
    pub fn restart_same_port(&mut self) {
        self.listen = self.addr.to_string();
        self.restart();
    }

    /// Like [`Self::restart`], with these flags instead of the previous ones.
    pub fn restart_with(&mut self, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|a| (*a).to_owned()).collect();
        self.restart();
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's resident memory in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().expect("the server runs");
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Runs `vanectl --server <this server> <args>`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        vanectl(&self.url(), args)
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("--- vane-control stderr ---\n{}", self.logs());
        }
    }
}

/// What one `vanectl` run did.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code; -1 when the process died of a signal.
    pub code: i32,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr.
    pub stderr: String,
    /// The arguments, for failure messages.
    pub args: Vec<String>,
}

impl Output {
    /// Asserts exit code 0 and returns `self`.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "vanectl failed: {self}");
        self
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self}"))
    }

    /// Asserts that stderr is exactly one non-empty line and returns it.
    #[track_caller]
    pub fn one_error_line(&self) -> &str {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {self}");
        lines[0]
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`vanectl {}` exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.code,
            truncate(&self.stdout),
            truncate(&self.stderr)
        )
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(4000) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Runs `vanectl --server <server> <args>` with `VANE_SERVER` removed from
/// its environment.
pub fn vanectl(server: &str, args: &[&str]) -> Output {
    let mut all = vec!["--server", server];
    all.extend_from_slice(args);
    run_vanectl(&all, &[])
}

/// Runs `vanectl <args>` with exactly the given extra environment (and
/// `VANE_SERVER`, `VANE_CONTEXT` and the caller's config file left out
/// unless given). The test process's own environment is
/// never changed.
pub fn run_vanectl(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_vanectl_with_input(args, env, None)
}

/// Runs `vanectl --server <server> <args>` with `input` on its standard input.
pub fn vanectl_stdin(server: &str, args: &[&str], input: &[u8]) -> Output {
    let mut all = vec!["--server", server];
    all.extend_from_slice(args);
    run_vanectl_with_input(&all, &[], Some(input.to_vec()))
}

fn run_vanectl_with_input(args: &[&str], env: &[(&str, &str)], input: Option<Vec<u8>>) -> Output {
    let mut cmd = Command::new(bin_path("vanectl"));
    cmd.args(args)
        .env_remove("VANE_SERVER")
        .env_remove("VANE_CONTEXT")
        .env("NO_COLOR", "1");
    // The developer's own vanectl config file (its current context) must not
    // change what a test runs, unless the test points at a file or a home.
    if !env.iter().any(|(k, _)| *k == "VANE_CONFIG" || *k == "HOME") {
        cmd.env("VANE_CONFIG", "/nonexistent/vane-tests/config.yaml");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let done = run_captured(cmd, input, COMMAND_TIMEOUT)
        .unwrap_or_else(|e| panic!("`vanectl {}`: {e}", args.join(" ")));
    Output {
        code: done.code,
        stdout: done.stdout,
        stderr: done.stderr,
        args: args.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// The `vanectl history GROUP -o json` array, as `(version, hash)` pairs
/// sorted by version.
#[track_caller]
pub fn history(server: &str, group: &str) -> Vec<(u64, String)> {
    let out = vanectl(server, &["history", group, "-o", "json"]).ok();
    let json = out.json();
    let entries = json
        .as_array()
        .unwrap_or_else(|| panic!("history -o json is not an array: {out}"));
    let mut pairs: Vec<(u64, String)> = entries
        .iter()
        .map(|e| {
            (
                e["version"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("history entry without a numeric version: {e}")),
                e["hash"]
                    .as_str()
                    .unwrap_or_else(|| panic!("history entry without a string hash: {e}"))
                    .to_owned(),
            )
        })
        .collect();
    pairs.sort();
    pairs
}

/// One agent's entry of `vanectl status GROUP -o json`, if listed.
#[track_caller]
pub fn agent_status(server: &str, group: &str, node_id: &str) -> Option<serde_json::Value> {
    let out = vanectl(server, &["status", group, "-o", "json"]).ok();
    let json = out.json();
    let agents = json
        .as_array()
        .unwrap_or_else(|| panic!("status -o json is not an array: {out}"));
    agents
        .iter()
        .find(|a| a["node_id"] == node_id && a["group"] == group)
        .cloned()
}

/// Polls `vanectl status` until the agent's entry satisfies `pred`, and
/// returns it. Panics with the last entry seen after [`STATUS_TIMEOUT`].
#[track_caller]
pub fn wait_for_status(
    server: &str,
    group: &str,
    node_id: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + STATUS_TIMEOUT;
    loop {
        let entry = agent_status(server, group, node_id);
        if let Some(e) = &entry
            && pred(e)
        {
            return e.clone();
        }
        if Instant::now() >= deadline {
            panic!(
                "agent {node_id:?} of group {group:?} did not reach {what} within \
                 {STATUS_TIMEOUT:?}; last status entry: {entry:?}"
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Snapshot files for the tests, built at runtime.
pub mod fixtures {
    use std::path::{Path, PathBuf};

    use vane_model::SnapshotSpec;

    /// `examples/snapshot.yaml`.
    pub fn example_path() -> PathBuf {
        crate::process::workspace_root().join("examples/snapshot.yaml")
    }

    /// The example, parsed.
    pub fn example_spec() -> SnapshotSpec {
        vane_model::file::read_file(&example_path()).expect("examples/snapshot.yaml parses")
    }

    /// The example with one more entry in `values`: a distinct content per key/value.
    pub fn example_with_value(key: &str, value: serde_json::Value) -> SnapshotSpec {
        let mut spec = example_spec();
        spec.values.insert(key.to_owned(), value);
        spec
    }

    /// Writes `spec` as a JSON snapshot file `dir/name` and returns its path.
    pub fn write_json(dir: &Path, name: &str, spec: &SnapshotSpec) -> PathBuf {
        let path = dir.join(name);
        let bytes = serde_json::to_vec_pretty(spec).expect("a spec serializes");
        std::fs::write(&path, bytes).expect("write a snapshot file");
        path
    }

    /// Writes raw text to `dir/name` and returns its path.
    pub fn write_text(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write a file");
        path
    }

    /// The content hash of a snapshot file, computed here with `vane-model`
    /// (independently of the server): lowercase hex SHA-256 of the canonical JSON.
    pub fn expected_hash(path: &Path) -> String {
        let spec = vane_model::file::read_file(path)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        vane_model::validate(spec)
            .unwrap_or_else(|e| panic!("{} does not validate: {e}", path.display()))
            .content_hash()
            .to_hex()
    }
}

/// What the next message of a watch stream was.
#[derive(Debug)]
pub enum Next {
    /// A response.
    Response(pb::WatchResponse),
    /// The stream ended: cleanly (`None`) or with a status.
    Ended(Option<tonic::Status>),
    /// Nothing arrived in time.
    Quiet,
}

/// A scripted agent: one `ConfigDiscovery.Watch` stream whose requests the
/// test sends one by one.
pub struct WatchClient {
    // Kept so the connection lives as long as the stream.
    _client: pb::config_discovery_client::ConfigDiscoveryClient<tonic::transport::Channel>,
    requests: tokio::sync::mpsc::Sender<pb::WatchRequest>,
    responses: tonic::Streaming<pb::WatchResponse>,
    /// The node sent on the first request.
    pub node: pb::Node,
}

impl WatchClient {
    /// Opens a stream as node `node_id` of `group`, running `running`
    /// (`(version, hash)`, or `None` for nothing yet): sends the first request.
    pub async fn connect(
        url: &str,
        node_id: &str,
        group: &str,
        running: Option<(u64, &str)>,
    ) -> Self {
        let channel = tokio::time::timeout(
            WATCH_TIMEOUT,
            tonic::transport::Endpoint::from_shared(url.to_owned())
                .unwrap_or_else(|e| panic!("{url}: {e}"))
                .connect(),
        )
        .await
        .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        Self::open(channel, None, node_id, group, running)
            .await
            .unwrap_or_else(|s| panic!("the server refused the watch stream: {s}"))
    }

    /// Opens a stream on `channel` (plaintext or TLS), with `token` as a
    /// bearer token when given; the server's refusal is returned.
    pub async fn open(
        channel: tonic::transport::Channel,
        token: Option<&str>,
        node_id: &str,
        group: &str,
        running: Option<(u64, &str)>,
    ) -> Result<Self, tonic::Status> {
        let node = pb::Node {
            id: node_id.to_owned(),
            group: group.to_owned(),
            labels: [("test".to_owned(), "e2e".to_owned())]
                .into_iter()
                .collect(),
            agent_build: "vane-tests/0.1.0".to_owned(),
        };
        let mut client = pb::config_discovery_client::ConfigDiscoveryClient::new(channel);
        // Bounded: a test sends a handful of requests.
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (version_info, hash) = running.unwrap_or((0, ""));
        tx.send(pb::WatchRequest {
            health: None,
            node: Some(node.clone()),
            version_info,
            hash: hash.to_owned(),
            response_nonce: String::new(),
            error_detail: None,
            // A minimal agent: full snapshots only, no store notices.
            want_full: false,
            accept_delta: false,
            accept_store_notices: false,
        })
        .await
        .expect("the request stream is open");
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}")
                    .parse()
                    .expect("a token is a valid header value"),
            );
        }
        // The server answers the call only after it has read and checked
        // the first request: a refusal is this call's error.
        let responses = tokio::time::timeout(WATCH_TIMEOUT, client.watch(request))
            .await
            .expect("opening the watch stream timed out")?
            .into_inner();
        Ok(Self {
            _client: client,
            requests: tx,
            responses,
            node,
        })
    }

    /// The next message, waiting at most `within`.
    pub async fn next(&mut self, within: Duration) -> Next {
        match tokio::time::timeout(within, self.responses.message()).await {
            Err(_) => Next::Quiet,
            Ok(Ok(Some(r))) => Next::Response(r),
            Ok(Ok(None)) => Next::Ended(None),
            Ok(Err(status)) => Next::Ended(Some(status)),
        }
    }

    /// The next response, which must arrive within [`WATCH_TIMEOUT`].
    pub async fn recv(&mut self) -> pb::WatchResponse {
        match self.next(WATCH_TIMEOUT).await {
            Next::Response(r) => r,
            other => panic!("expected a watch response, got {other:?}"),
        }
    }

    /// Asserts that nothing arrives for `quiet` (the stream stays open),
    /// and returns a [`Quiet`] to finish the check with: the response the
    /// test makes the server send next (a push) must then be the very next
    /// message.
    ///
    /// A quiet window alone proves nothing: on a slow machine a message
    /// that was due may just not have arrived yet, and a dead stream is
    /// quiet too. Anything the server sent late shows up ahead of the
    /// response that must come, and a dead stream never brings it.
    pub async fn expect_quiet(&mut self, quiet: Duration) -> Quiet<'_> {
        match self.next(quiet).await {
            Next::Quiet => Quiet {
                client: self,
                quiet,
            },
            other => panic!("expected no watch message for {quiet:?}, got {other:?}"),
        }
    }

    /// Sends a heartbeat (a request with no node and no nonce, `running`
    /// as in [`Self::connect`]) every `every`, as an agent does, until the
    /// returned handle is dropped.
    pub fn heartbeats(&self, every: Duration, running: Option<(u64, &str)>) -> Heartbeats {
        let requests = self.requests.clone();
        let (version_info, hash) = running.unwrap_or((0, ""));
        let heartbeat = pb::WatchRequest {
            version_info,
            hash: hash.to_owned(),
            ..pb::WatchRequest::default()
        };
        Heartbeats(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                // A closed stream ends the heartbeats; the test sees the
                // end on its side of the stream.
                if requests.send(heartbeat.clone()).await.is_err() {
                    return;
                }
            }
        }))
    }

    /// ACKs `resp`: the agent now runs its version.
    pub async fn ack(&self, resp: &pb::WatchResponse) {
        self.send(pb::WatchRequest {
            health: None,
            node: None,
            version_info: resp.version,
            hash: resp.hash.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: None,
            want_full: false,
            accept_delta: false,
            accept_store_notices: false,
        })
        .await;
    }

    /// NACKs `resp` with `reason`, staying on `running` (`(version, hash)`).
    pub async fn nack(&self, resp: &pb::WatchResponse, running: (u64, &str), reason: &str) {
        self.send(pb::WatchRequest {
            health: None,
            node: None,
            version_info: running.0,
            hash: running.1.to_owned(),
            response_nonce: resp.nonce.clone(),
            error_detail: Some(pb::ErrorDetail {
                // google.rpc.Code INVALID_ARGUMENT: the snapshot did not validate.
                code: 3,
                message: reason.to_owned(),
            }),
            want_full: false,
            accept_delta: false,
            accept_store_notices: false,
        })
        .await;
    }

    /// Sends any request.
    pub async fn send(&self, req: pb::WatchRequest) {
        tokio::time::timeout(WATCH_TIMEOUT, self.requests.send(req))
            .await
            .expect("sending a watch request timed out")
            .expect("the watch request stream is closed");
    }
}

/// A watch stream on which nothing arrived for a while (see
/// [`WatchClient::expect_quiet`]); the check is complete once the response
/// that must come next has come.
#[must_use = "a quiet window proves nothing until the response that must come next has come: \
              call `then_recv`"]
pub struct Quiet<'a> {
    client: &'a mut WatchClient,
    quiet: Duration,
}

impl Quiet<'_> {
    /// The next message, which must be a response for `version` and must
    /// arrive within [`WATCH_TIMEOUT`]: a resend or any other response the
    /// server should not have sent fails here, and so does a stream that
    /// ended during the quiet window.
    pub async fn then_recv(self, version: u64) -> pb::WatchResponse {
        match self.client.next(WATCH_TIMEOUT).await {
            Next::Response(r) if r.version == version => r,
            other => panic!(
                "after {:?} without a message, expected the response for version {version} \
                 next, got {other:?}",
                self.quiet
            ),
        }
    }
}

/// Heartbeats sent by a task (see [`WatchClient::heartbeats`]); dropping
/// this stops them.
pub struct Heartbeats(tokio::task::JoinHandle<()>);

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The snapshot carried by a watch response, decoded and validated.
#[track_caller]
pub fn decode_snapshot(resp: &pb::WatchResponse) -> vane_model::Snapshot {
    match &resp.body {
        Some(pb::watch_response::Body::Snapshot(bytes)) => vane_model::Snapshot::decode(bytes)
            .unwrap_or_else(|e| panic!("the watch response's snapshot does not decode: {e}")),
        Some(pb::watch_response::Body::Delta(_)) => {
            panic!("a delta was sent to a client that does not accept deltas: {resp:?}")
        }
        None => panic!("the watch response has no snapshot: {resp:?}"),
    }
}
