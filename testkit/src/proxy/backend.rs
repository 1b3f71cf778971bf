//! Backends in the test process: an HTTP/1.1 one that answers with its id
//! and does what the test scripts (status, delay, failures, holding
//! requests), counting the requests it has and those in flight; and a TCP
//! one that greets with its id and echoes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Scripted behaviour of a [`Backend`], and what it has seen.
#[derive(Debug)]
struct Behaviour {
    status: AtomicU16,
    delay_ms: AtomicU64,
    /// Answer 503 to this many next requests.
    fail_next: AtomicU64,
    hits: AtomicU64,
    /// Requests received and not answered yet (nor given up by the client).
    in_flight: AtomicU64,
    /// While true, requests wait before they are answered.
    held: watch::Sender<bool>,
}

/// Counts a request in flight for as long as it lives: dropped when the
/// answer is made, and also when hyper drops the request because the
/// connection went away.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
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
            delay_ms: AtomicU64::new(0),
            fail_next: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            held: watch::Sender::new(false),
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

    /// Requests that reached this backend and are not answered yet.
    pub fn in_flight(&self) -> u64 {
        self.behaviour.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests are in flight here; false if they
    /// were not within `within`. What a test that changes something "while
    /// a request is in flight" waits for before the change: a request sent
    /// a moment ago may not have reached the backend yet.
    pub async fn wait_in_flight(&self, n: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.in_flight() < n {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// From now on, requests are held (counted in flight, not answered)
    /// until [`Self::release`]: a request stays in flight for exactly as
    /// long as the test needs, however slow the machine.
    pub fn hold(&self) {
        self.behaviour.held.send_replace(true);
    }

    /// Lets the held requests, and every later one, be answered.
    pub fn release(&self) {
        self.behaviour.held.send_replace(false);
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
    let _in_flight = InFlight::enter(&b.in_flight);
    let seen = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (xff, host, conn, custom, upgrade) = (
        seen("x-forwarded-for"),
        seen("host"),
        seen("connection"),
        seen("x-private"),
        seen("upgrade"),
    );
    let path = req.uri().path().to_owned();
    // Read the body so keep-alive works for requests that have one.
    let body_bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len().to_string(),
        Err(e) => format!("error {e}"),
    };
    // The sender lives as long as `b`, so this waits for a release only.
    let _ = b.held.subscribe().wait_for(|held| !*held).await;
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
        ("x-seen-upgrade", upgrade),
        ("x-seen-path", path),
        ("x-seen-body-bytes", body_bytes),
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
