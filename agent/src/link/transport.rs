//! How the link reaches a control server: the [`Transport`] the state
//! machine's steps call to open a watch stream, and its gRPC implementation
//! over tonic (TLS, bearer token, timeouts, the response size limit). Unit
//! tests put a scripted transport in its place.

use std::future::Future;
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use vane_proto as pb;
use vane_tls::BearerToken;

use crate::config::AgentConfig;

use super::error::{LinkError, error_chain};

/// Largest response accepted from a server.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// The responses of one open watch stream; an error ends it.
pub(crate) type Inbound = BoxStream<'static, Result<pb::WatchResponse, LinkError>>;

/// Opens watch streams.
pub(crate) trait Transport: Send + Sync + 'static {
    /// Opens a watch on server `server` (an index into the configured
    /// servers), sending what arrives on `requests`; resolves once the
    /// server has answered the call.
    fn open(
        &self,
        server: usize,
        requests: mpsc::Receiver<pb::WatchRequest>,
    ) -> impl Future<Output = Result<Inbound, LinkError>> + Send;
}

/// The endpoint of every server, TLS set up for `https://` ones. Built once
/// at start, so that a URL or certificate tonic refuses is reported then.
pub(crate) fn endpoints(config: &AgentConfig) -> Result<Vec<Endpoint>, String> {
    config
        .servers
        .iter()
        .map(|server| {
            let endpoint = Endpoint::from_shared(server.clone())
                .map_err(|e| format!("servers: {server:?}: {}", error_chain(&e)))?
                .connect_timeout(config.connect_timeout)
                .http2_keep_alive_interval(config.keepalive_interval)
                .keep_alive_timeout(config.keepalive_timeout)
                .keep_alive_while_idle(true)
                .tcp_nodelay(true);
            if !server.starts_with("https://") {
                return Ok(endpoint);
            }
            endpoint
                .tls_config(config.tls.tonic_config(config.connect_timeout))
                .map_err(|e| format!("tls: for {server:?}: {}", error_chain(&e)))
        })
        .collect()
}

/// The control servers over gRPC.
pub(crate) struct Grpc {
    /// One per configured server, same order (from [`endpoints`]).
    endpoints: Vec<Endpoint>,
    token: Option<BearerToken>,
    /// Bound on the wait for the server to answer the call, once connected.
    open_timeout: Duration,
}

impl Grpc {
    pub(crate) fn new(endpoints: Vec<Endpoint>, config: &AgentConfig) -> Self {
        Self {
            endpoints,
            token: config.token.clone(),
            open_timeout: config.connect_timeout,
        }
    }
}

impl Transport for Grpc {
    fn open(
        &self,
        server: usize,
        requests: mpsc::Receiver<pb::WatchRequest>,
    ) -> impl Future<Output = Result<Inbound, LinkError>> + Send {
        let endpoint = self.endpoints.get(server).cloned();
        let token = self.token.clone();
        let open_timeout = self.open_timeout;
        async move {
            let endpoint =
                endpoint.ok_or_else(|| LinkError::Connect(format!("no server #{server}")))?;
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| LinkError::from_connect(&e))?;
            let mut client = pb::config_discovery_client::ConfigDiscoveryClient::new(channel)
                .max_decoding_message_size(MAX_RESPONSE_BYTES);
            let mut call = tonic::Request::new(ReceiverStream::new(requests));
            if let Some(token) = &token {
                call.metadata_mut().insert("authorization", token.header());
            }
            let response = tokio::time::timeout(open_timeout, client.watch(call))
                .await
                .map_err(|_| LinkError::Connect("timed out waiting for the stream to open".into()))?
                .map_err(LinkError::from_status)?;
            Ok(response
                .into_inner()
                .map(|m| m.map_err(LinkError::from_status))
                .boxed())
        }
    }
}
