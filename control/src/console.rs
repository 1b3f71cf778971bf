//! The web console (`vane-console`) on `--console-listen`: its own
//! listener, served through the same accept loop as the main port (TLS
//! with the same certificate and client CA, the connection caps, each
//! connection's `ConnInfo`), its API calling this server's
//! [`AdminService`] so every read and action meets the same policy and
//! audit log as `vanectl`'s, and [`ConsoleGate`], the policy's answer to
//! "may this caller act here" for the page's buttons.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use vane_console::{Console, Gate};

use crate::accept::{self, ConnCounters, ConnInfo, ConnLimits};
use crate::admin::AdminService;
use crate::auth::{Action, Auth};

/// The policy's answer for the console's buttons: the caller of a request
/// (its connection's certificate, its bearer token) and whether the policy
/// lets it write to a group, as `Rollback` and `ControlRollout` check it.
/// Asked without auditing: it only hides buttons.
#[derive(Debug, Clone)]
pub struct ConsoleGate {
    auth: Auth,
}

impl ConsoleGate {
    /// The gate of `auth`, the server's authentication and policy.
    pub fn new(auth: Auth) -> Self {
        Self { auth }
    }
}

impl Gate for ConsoleGate {
    fn may_operate(&self, parts: &http::request::Parts, group: &str) -> bool {
        let authorization = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        self.auth
            .caller(parts.extensions.get::<ConnInfo>(), authorization)
            .is_ok_and(|caller| self.auth.allows(&caller, Action::Write, group))
    }
}

/// What serving the console needs from the server.
pub(crate) struct Endpoint {
    pub(crate) listener: TcpListener,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) limits: ConnLimits,
    pub(crate) counters: Arc<ConnCounters>,
    pub(crate) request_timeout: std::time::Duration,
    pub(crate) max_header_list_bytes: u32,
}

/// Serves the console over `admin` until `stop`.
pub(crate) async fn serve(
    endpoint: Endpoint,
    admin: AdminService,
    auth: Auth,
    stop: CancellationToken,
) {
    let loopback = endpoint
        .listener
        .local_addr()
        .is_ok_and(|a| a.ip().is_loopback());
    let addr = endpoint.listener.local_addr().ok();
    let router = Console::new(admin, ConsoleGate::new(auth))
        .on_loopback(loopback)
        .router();
    let incoming = accept::incoming(
        endpoint.listener,
        endpoint.tls.clone(),
        endpoint.limits,
        endpoint.counters,
        stop.clone(),
    );
    tracing::info!(addr = ?addr, tls = endpoint.tls.is_some(), "console serving /ui/");
    let served = tonic::transport::Server::builder()
        .accept_http1(true)
        .timeout(endpoint.request_timeout)
        .http2_max_header_list_size(Some(endpoint.max_header_list_bytes))
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "console endpoint failed");
    }
}

/// The line `vane-control` prints once the console listens.
pub fn console_line(addr: std::net::SocketAddr) -> String {
    format!("vane-control console listening on {addr}")
}
