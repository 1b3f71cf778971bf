//! Slow responses and a client that watches them: a backend whose answers
//! send their head and then stall, or drip their body, as the path says;
//! and an HTTP/1.1 client that reads a response body as it comes and says
//! how it ended (complete, or cut with an error) and when.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// A backend with slow answers, on a free loopback port (whatever the
/// path's prefix):
/// - `.../drip/<n>/<ms>`: `n` chunks (`tick\n`), one every `ms`
///   milliseconds, then the end;
/// - anything else: the head and one chunk (`first\n`), then nothing
///   until the reader goes away.
pub struct SlowBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
}

type Chunks = StreamBody<tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

impl SlowBackend {
    /// Starts it.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a slow backend");
        let addr = listener.local_addr().expect("local address");
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(s) => s,
                        Err(_) => continue,
                    },
                    _ = stopped.changed() => return,
                };
                let mut stop = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                        Ok::<_, Infallible>(answer(req.uri().path()))
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        Self { addr, stop }
    }
}

impl Drop for SlowBackend {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

fn answer(path: &str) -> Response<Chunks> {
    let (tx, rx) = mpsc::channel(4);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let drip = parts.iter().position(|p| *p == "drip");
    match drip.and_then(|i| parts.get(i + 1..i + 3)) {
        Some([n, ms]) => {
            let n: u32 = n.parse().unwrap_or(1);
            let every = Duration::from_millis(ms.parse().unwrap_or(100));
            tokio::spawn(async move {
                for _ in 0..n {
                    tokio::time::sleep(every).await;
                    if tx
                        .send(Ok(Frame::data(Bytes::from_static(b"tick\n"))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
        _ => {
            tokio::spawn(async move {
                if tx
                    .send(Ok(Frame::data(Bytes::from_static(b"first\n"))))
                    .await
                    .is_ok()
                {
                    // Hold the body open until the reader goes away.
                    tx.closed().await;
                }
            });
        }
    }
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::new(body)
}

/// How a streamed response ended.
#[derive(Debug)]
pub struct StreamOutcome {
    /// HTTP status of the head.
    pub status: u16,
    /// Body bytes received.
    pub bytes: usize,
    /// `None`: the body ended normally; else how it broke.
    pub error: Option<String>,
    /// From the request to the end (or the break).
    pub elapsed: Duration,
}

/// `GET path` on a new HTTP/1.1 connection to `addr`, reading the body as
/// it comes, for at most `within`.
pub async fn get_streamed(
    addr: SocketAddr,
    path: &str,
    within: Duration,
) -> Result<StreamOutcome, String> {
    let start = Instant::now();
    let run = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let conn = tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut bytes = 0;
        let error = loop {
            match body.frame().await {
                None => break None,
                Some(Ok(f)) => bytes += f.data_ref().map_or(0, Bytes::len),
                Some(Err(e)) => break Some(e.to_string()),
            }
        };
        conn.abort();
        Ok(StreamOutcome {
            status,
            bytes,
            error,
            elapsed: start.elapsed(),
        })
    };
    tokio::time::timeout(within, run)
        .await
        .map_err(|_| format!("no end within {within:?}"))?
}
