//! What sends traffic to the proxy: a pooled HTTP client (HTTP/1.1 or h2c),
//! one fixed HTTP/1.1 connection, and a load of N clients that counts every
//! request that did not get the expected answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

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
    client: Client<HttpConnector, Full<Bytes>>,
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
        self.request_with_body(method, addr, path, headers, Bytes::new())
            .await
    }

    /// Any method with `body` (sent with its `content-length`; none when
    /// empty).
    pub async fn request_with_body(
        &self,
        method: &str,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).map_err(|e| e.to_string())?;
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

    /// Waits until `total` requests have succeeded since the start; false
    /// if not within `within`. Traffic "during" something is asserted this
    /// way: read [`Self::ok`] when it begins, then wait for more than that
    /// (a fixed sleep would count what came before, and on a slow machine
    /// might see nothing at all).
    pub async fn wait_ok(&self, total: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.ok() < total {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
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
