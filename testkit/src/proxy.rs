//! Helpers for the proxy's end-to-end tests: `vane-proxy` as a real process,
//! backends (HTTP and TCP) in the test process that answer with their own
//! id, an HTTP client, a load generator that counts every failed request,
//! and snapshot builders.
//!
//! Backends and load run on the test's Tokio runtime; the proxy and the
//! control server are real processes, so they can be SIGKILLed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use vane_model::SnapshotSpec;
use vane_model::spec::{
    ClusterSpec, EndpointSpec, ListenerSpec, OutlierDetectionSpec, RateLimitSpec, RouteMatchSpec,
    RouteSpec, RouteTableSpec,
};
use vane_proto as pb;

use crate::sidecar::http_get;
use crate::{ControlServer, bin_path, spawn_announced};

const ADMIN_PREFIX: &str = "vane-proxy admin listening on ";
/// How long a state that must come may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// A free loopback port (bound, then released: a later bind may race with
/// another process, which on a test machine does not happen in practice).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("a bound address")
}

/// A running `vane-proxy`, killed on drop.
pub struct ProxyProcess {
    child: Option<Child>,
    /// Its admin address (changes on restart).
    pub admin: SocketAddr,
    args: Vec<String>,
    logs_dir: PathBuf,
    starts: u32,
}

impl ProxyProcess {
    /// Starts `vane-proxy --node-id NODE --group GROUP --control URLS
    /// --cache-dir CACHE --admin-listen 127.0.0.1:0 EXTRA...`; stderr goes
    /// to `logs_dir`. Returns once the admin endpoint listens.
    pub fn start(
        control: &[String],
        node: &str,
        group: &str,
        cache: &Path,
        logs_dir: &Path,
        extra: &[&str],
    ) -> Self {
        let mut args: Vec<String> = vec![
            "--node-id".into(),
            node.into(),
            "--group".into(),
            group.into(),
            "--control".into(),
            control.join(","),
            "--cache-dir".into(),
            cache.display().to_string(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            // Tests restart control servers: reconnect quickly.
            "--backoff-base".into(),
            "100ms".into(),
            "--backoff-cap".into(),
            "1s".into(),
            "--breaker-open".into(),
            "1s".into(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        std::fs::create_dir_all(logs_dir).expect("create the log directory");
        let mut p = Self {
            child: None,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            args,
            logs_dir: logs_dir.to_path_buf(),
            starts: 0,
        };
        p.spawn();
        p
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.logs_dir.join(format!("proxy-{n}.log"))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let mut cmd = Command::new(bin_path("vane-proxy"));
        cmd.args(&self.args).env("RUST_LOG", "info");
        let (child, line) = spawn_announced(cmd, ADMIN_PREFIX, &self.log_path(self.starts));
        self.admin = line.parse().expect("an admin address");
        self.child = Some(child);
    }

    /// `GET path` on the admin endpoint.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The `/readyz` status code.
    pub fn readyz(&self) -> u16 {
        self.admin_get("/readyz").0
    }

    /// Polls `/readyz` until 200.
    #[track_caller]
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while self.readyz() != 200 {
            assert!(
                Instant::now() < deadline,
                "vane-proxy never became ready:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `/config_dump` as JSON.
    pub fn config_dump(&self) -> serde_json::Value {
        let (code, body) = self.admin_get("/config_dump");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("/config_dump is JSON")
    }

    /// `/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = self.admin_get("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("/status is JSON")
    }

    /// `/metrics` text.
    pub fn metrics(&self) -> String {
        self.admin_get("/metrics").1
    }

    /// The sum of every sample of `name` whose labels contain all `labels`
    /// (`key="value"` fragments).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next().is_some_and(|n| n == name))
            .filter(|l| labels.iter().all(|f| l.contains(f)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Polls `/config_dump` until the data plane runs `version`.
    #[track_caller]
    pub fn wait_version(&self, version: u64) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let d = self.config_dump();
            if d["version"] == version {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy never ran version {version}; /config_dump: {d}\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; waits up to `within` for the exit (then SIGKILLs and returns None).
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        crate::terminate_child(self.child.take()?, within)
    }

    /// Starts the process again with the same arguments (and cache).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the proxy first");
        self.spawn();
    }

    /// Everything the proxy wrote on stderr, over all its starts.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            let logs = self.logs();
            let tail: String = logs
                .lines()
                .rev()
                .take(80)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("--- vane-proxy stderr (last 80 lines) ---\n{tail}");
        }
    }
}

/// Scripted behaviour of a [`Backend`].
#[derive(Debug, Default)]
struct Behaviour {
    status: AtomicU16,
    delay_ms: AtomicU64,
    /// Answer 503 to this many next requests.
    fail_next: AtomicU64,
    hits: AtomicU64,
}

/// An HTTP/1.1 backend in the test process. Answers `200` with its id as the
/// body and `x-backend: <id>`, echoing what it saw in `x-seen-*` headers.
pub struct Backend {
    /// Its id.
    pub id: String,
    /// Where it listens.
    pub addr: SocketAddr,
    behaviour: Arc<Behaviour>,
    stop: watch::Sender<bool>,
}

impl Backend {
    /// Starts a backend on a free loopback port.
    pub async fn start(id: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a backend");
        Self::serve(id, listener)
    }

    /// Starts a backend on `addr` (e.g. to bring a stopped one back).
    pub async fn start_on(id: &str, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind a backend");
        Self::serve(id, listener)
    }

    fn serve(id: &str, listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("bound");
        let behaviour = Arc::new(Behaviour {
            status: AtomicU16::new(200),
            ..Behaviour::default()
        });
        let (stop, stop_rx) = watch::channel(false);
        let (b, idv) = (behaviour.clone(), id.to_owned());
        tokio::spawn(async move {
            let mut stop_rx2 = stop_rx.clone();
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = stop_rx2.wait_for(|s| *s) => break,
                };
                let _ = stream.set_nodelay(true);
                let (b, id) = (b.clone(), idv.clone());
                let mut conn_stop = stop_rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (b, id) = (b.clone(), id.clone());
                        async move { Ok::<_, Infallible>(answer(&b, &id, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = conn_stop.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        Self {
            id: id.to_owned(),
            addr,
            behaviour,
            stop,
        }
    }

    /// Requests received.
    pub fn hits(&self) -> u64 {
        self.behaviour.hits.load(Ordering::Relaxed)
    }

    /// Answers with `status` from now on.
    pub fn set_status(&self, status: u16) {
        self.behaviour.status.store(status, Ordering::Relaxed);
    }

    /// Waits `delay` before each answer.
    pub fn set_delay(&self, delay: Duration) {
        self.behaviour
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Answers 503 to the next `n` requests.
    pub fn fail_next(&self, n: u64) {
        self.behaviour.fail_next.store(n, Ordering::Relaxed);
    }

    /// Stops listening and closes every connection: connects are refused.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

async fn answer(b: &Behaviour, id: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    b.hits.fetch_add(1, Ordering::Relaxed);
    let seen = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (xff, host, conn, custom) = (
        seen("x-forwarded-for"),
        seen("host"),
        seen("connection"),
        seen("x-private"),
    );
    let path = req.uri().path().to_owned();
    // Read the body so keep-alive works for requests that have one.
    let _ = req.into_body().collect().await;
    let delay = b.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let failing = b
        .fail_next
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok();
    let status = if failing {
        503
    } else {
        b.status.load(Ordering::Relaxed)
    };
    let mut resp = Response::new(Full::new(Bytes::from(id.to_owned())));
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    let h = resp.headers_mut();
    h.insert("x-backend", id.parse().expect("ids are header-safe"));
    for (k, v) in [
        ("x-seen-forwarded-for", xff),
        ("x-seen-host", host),
        ("x-seen-connection", conn),
        ("x-seen-private", custom),
        ("x-seen-path", path),
    ] {
        if let Ok(v) = v.parse() {
            h.insert(k, v);
        }
    }
    resp
}

/// A TCP backend: writes `<id>\n`, then echoes what it reads.
pub struct TcpBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl TcpBackend {
    /// Starts on a free loopback port.
    pub async fn start(id: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let (stop, mut stop_rx) = watch::channel(false);
        let id = format!("{id}\n");
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    _ = stop_rx.wait_for(|s| *s) => break,
                };
                let id = id.clone();
                tokio::spawn(async move {
                    if s.write_all(id.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Self { addr, stop }
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// An HTTP response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body text.
    pub body: String,
}

impl Reply {
    /// A header's value, or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A keep-alive HTTP client (HTTP/1.1, or h2c with prior knowledge).
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::http1()
    }
}

impl HttpClient {
    /// HTTP/1.1 with a keep-alive pool.
    pub fn http1() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// HTTP/2 over cleartext, prior knowledge.
    pub fn h2c() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// `GET http://addr/path` with `headers`, within 10 s.
    pub async fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        self.request("GET", addr, path, headers).await
    }

    /// Any method, empty body.
    pub async fn request(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Empty::new()).map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok(Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| "timed out after 10s".to_owned())?
    }

    /// GETs `n` times, counting answers by `x-backend` (or by
    /// `status <code>` when an answer has none).
    pub async fn tally(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        n: usize,
    ) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let key = match self.get(addr, path, headers).await {
                Ok(r) if !r.header("x-backend").is_empty() => r.header("x-backend").to_owned(),
                Ok(r) => format!("status {}", r.status),
                Err(e) => format!("error {e}"),
            };
            *counts.entry(key).or_default() += 1;
        }
        counts
    }
}

/// One HTTP/1.1 connection, used for every request (unlike a pooled
/// client, which may open another connection at any time).
pub struct OneConnection {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
}

impl OneConnection {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> Result<Self, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Self { sender, addr })
    }

    /// `GET path` on this connection.
    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        let req = Request::get(path)
            .header("host", self.addr.to_string())
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let fut = async {
            self.sender.ready().await.map_err(|e| e.to_string())?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok(Reply {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| "timed out after 10s".to_owned())?
    }
}

/// What a load run saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    /// Requests answered as expected.
    pub ok: u64,
    /// Requests that failed (transport error, or an unexpected answer).
    pub failed: u64,
    /// The first failures, described.
    pub samples: Vec<String>,
    /// Successful answers by backend id.
    pub by_backend: BTreeMap<String, u64>,
}

#[derive(Default)]
struct LoadShared {
    ok: AtomicU64,
    failed: AtomicU64,
    samples: Mutex<Vec<String>>,
    by_backend: Mutex<BTreeMap<String, u64>>,
}

/// N clients sending GETs back to back, each on its own keep-alive
/// connection, until stopped. A request succeeds when the answer is 200 and
/// its `x-backend` starts with the expected prefix.
pub struct Load {
    stop: Arc<AtomicBool>,
    shared: Arc<LoadShared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` clients on `http://addr/path` with `headers`.
    pub fn start(
        clients: usize,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        expect_prefix: &str,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(LoadShared::default());
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, shared, headers) = (stop.clone(), shared.clone(), headers.clone());
                let (path, prefix) = (path.to_owned(), expect_prefix.to_owned());
                tokio::spawn(async move {
                    let client = HttpClient::http1();
                    let hs: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let mut local: BTreeMap<String, u64> = BTreeMap::new();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(addr, &path, &hs).await {
                            Ok(r)
                                if r.status == 200
                                    && r.header("x-backend").starts_with(&prefix) =>
                            {
                                shared.ok.fetch_add(1, Ordering::Relaxed);
                                *local.entry(r.header("x-backend").to_owned()).or_default() += 1;
                            }
                            other => {
                                shared.failed.fetch_add(1, Ordering::Relaxed);
                                let what = match other {
                                    Ok(r) => format!(
                                        "status {} x-vane-error={:?} x-backend={:?} body={:?}",
                                        r.status,
                                        r.header("x-vane-error"),
                                        r.header("x-backend"),
                                        r.body
                                    ),
                                    Err(e) => format!("error {e}"),
                                };
                                let mut s =
                                    shared.samples.lock().unwrap_or_else(|p| p.into_inner());
                                if s.len() < 20 {
                                    s.push(what);
                                }
                            }
                        }
                    }
                    let mut all = shared.by_backend.lock().unwrap_or_else(|p| p.into_inner());
                    for (k, v) in local {
                        *all.entry(k).or_default() += v;
                    }
                })
            })
            .collect();
        Self {
            stop,
            shared,
            tasks,
        }
    }

    /// Successful requests so far.
    pub fn ok(&self) -> u64 {
        self.shared.ok.load(Ordering::Relaxed)
    }

    /// Failed requests so far.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Stops every client (each finishes its request in flight) and reports.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        LoadReport {
            ok: self.shared.ok.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            samples: self
                .shared
                .samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            by_backend: self
                .shared
                .by_backend
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// Snapshot builders: the file shape, filled in by the tests.
pub mod spec {
    use super::*;

    /// An HTTP listener.
    pub fn http_listener(name: &str, addr: SocketAddr, table: &str) -> ListenerSpec {
        ListenerSpec {
            name: name.into(),
            address: addr.to_string(),
            protocol: Some("http".into()),
            route_table: Some(table.into()),
            cluster: None,
        }
    }

    /// A TCP listener.
    pub fn tcp_listener(name: &str, addr: SocketAddr, cluster: &str) -> ListenerSpec {
        ListenerSpec {
            name: name.into(),
            address: addr.to_string(),
            protocol: Some("tcp".into()),
            route_table: None,
            cluster: Some(cluster.into()),
        }
    }

    /// A route table.
    pub fn table(name: &str, routes: Vec<RouteSpec>) -> RouteTableSpec {
        RouteTableSpec {
            name: name.into(),
            routes,
        }
    }

    /// A route on a path prefix.
    pub fn prefix(name: &str, prefix: &str, cluster: &str) -> RouteSpec {
        RouteSpec {
            name: Some(name.into()),
            matcher: Some(RouteMatchSpec {
                path_prefix: Some(prefix.into()),
                ..RouteMatchSpec::default()
            }),
            cluster: cluster.into(),
            ..RouteSpec::default()
        }
    }

    /// A cluster of `(address, weight)` endpoints with policy `lb`.
    pub fn cluster(name: &str, lb: &str, endpoints: &[(SocketAddr, u32)]) -> ClusterSpec {
        ClusterSpec {
            name: name.into(),
            lb: Some(lb.into()),
            connect_timeout_ms: Some(500),
            endpoints: endpoints
                .iter()
                .map(|(a, w)| EndpointSpec {
                    address: a.to_string(),
                    weight: Some(*w),
                })
                .collect(),
            outlier_detection: None,
        }
    }

    /// Outlier detection settings.
    pub fn outlier(failures: u32, base_ms: u64, max_ms: u64, percent: u32) -> OutlierDetectionSpec {
        OutlierDetectionSpec {
            consecutive_failures: Some(failures),
            base_ejection_ms: Some(base_ms),
            max_ejection_ms: Some(max_ms),
            max_ejection_percent: Some(percent),
        }
    }

    /// A rate limit.
    pub fn rate_limit(name: &str, rps: f64, burst: u64) -> RateLimitSpec {
        RateLimitSpec {
            name: name.into(),
            requests_per_second: Some(rps),
            burst: Some(burst),
        }
    }
}

/// Pushes `spec` to `group` with `vanectl push -o json`; returns the version.
#[track_caller]
pub fn push(server: &ControlServer, group: &str, spec: &SnapshotSpec) -> u64 {
    let n = PUSHES.fetch_add(1, Ordering::Relaxed);
    let path = crate::fixtures::write_json(&server.scratch(), &format!("push-{n}.json"), spec);
    let out = server
        .ctl(&[
            "push",
            group,
            "-f",
            path.to_str().expect("utf-8 path"),
            "-o",
            "json",
        ])
        .ok();
    out.json()["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("push -o json without a version: {out}"))
}

static PUSHES: AtomicU64 = AtomicU64::new(0);

/// Pushes over the Admin gRPC API directly (for pushing many times a
/// second); returns the version.
pub struct AdminPusher {
    client: pb::admin_client::AdminClient<tonic::transport::Channel>,
}

impl AdminPusher {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Self {
        let client = pb::admin_client::AdminClient::connect(url.to_owned())
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        Self { client }
    }

    /// Pushes `spec`; returns the version.
    pub async fn push(&mut self, group: &str, spec: &SnapshotSpec) -> Result<u64, tonic::Status> {
        let resp = self
            .client
            .push(pb::PushRequest {
                group: group.into(),
                snapshot: Some(vane_model::proto::spec_to_proto(spec)),
                expected_version: None,
                dry_run: false,
                message: "proxy test".into(),
            })
            .await?;
        Ok(resp.into_inner().version)
    }
}
