//! A gRPC upstream for the proxy's tests: the standard health service
//! (`grpc.health.v1.Health`, tonic-health's server) over h2c, whose
//! statuses the test sets; and a raw gRPC call over HTTP/2 that reports
//! the response's trailers, so a test can see `grpc-status` arrive through
//! the proxy as a trailer.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// A gRPC server with the health service, on a free loopback port.
pub struct GrpcBackend {
    /// Where it listens (plaintext HTTP/2, prior knowledge).
    pub addr: SocketAddr,
    reporter: HealthReporter,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl GrpcBackend {
    /// Starts it; the overall status (service `""`) is `SERVING`.
    pub async fn start() -> Self {
        let (reporter, service) = tonic_health::server::health_reporter();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a gRPC backend");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                eprintln!("gRPC backend {addr}: {e}");
            }
        });
        Self {
            addr,
            reporter,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Sets `service`'s status (seen by `Check` and every `Watch`).
    pub async fn set(&self, service: &str, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status(service, status).await;
    }

    /// Stops it and waits for its task.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            // Streams still open (a Watch) would hold the graceful stop.
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// What a raw gRPC call saw.
#[derive(Debug)]
pub struct RawGrpcReply {
    /// HTTP status.
    pub status: u16,
    /// The response's `content-type`.
    pub content_type: String,
    /// `grpc-status` in the trailers (`None`: no trailers, or none there).
    pub trailer_status: Option<String>,
    /// The message bytes (with their 5-byte gRPC frame prefix).
    pub body: Bytes,
}

/// `grpc.health.v1.Health/Check` for the overall status (an empty request
/// message) over one new HTTP/2 connection to `addr` (prior knowledge),
/// with `te: trailers`, as gRPC clients send it.
pub async fn raw_health_check(addr: SocketAddr) -> Result<RawGrpcReply, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    // An empty message: no compression flag, length 0.
    let frame = Bytes::from_static(&[0, 0, 0, 0, 0]);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    let trailer_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = collected.to_bytes();
    drop(sender);
    conn.abort();
    Ok(RawGrpcReply {
        status,
        content_type,
        trailer_status,
        body,
    })
}
