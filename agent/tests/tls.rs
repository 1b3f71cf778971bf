//! The agent against a fake control server behind rustls (tonic's own
//! server TLS): mTLS and the bearer token reach the server, heartbeats flow
//! on the open stream, and a wrong CA or a refused client certificate is a
//! configuration error shown as the last error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use vane_agent::{Agent, AgentHandle, BackoffConfig, BearerToken, ClientIdentity, ClientTls};
use vane_model::{Format, parse_file, validate};
use vane_pki::{Ca, LeafParams, Pair, Validity};
use vane_proto as pb;
use vane_proto::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};

const EXAMPLE: &str = include_str!("../../examples/snapshot.yaml");
const WAIT: Duration = Duration::from_secs(10);

/// What the fake saw of one stream: the authorization header, then every request.
type Seen = (Option<String>, Streaming<pb::WatchRequest>);

struct Fake {
    seen: mpsc::Sender<Seen>,
}

#[tonic::async_trait]
impl ConfigDiscovery for Fake {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        let snapshot = validate(parse_file(EXAMPLE.as_bytes(), Format::Yaml).unwrap()).unwrap();
        let (tx, rx) = mpsc::channel(1);
        tx.send(Ok(pb::WatchResponse {
            group: "edge".into(),
            version: 1,
            hash: snapshot.content_hash().to_hex(),
            nonce: "n1".into(),
            body: Some(pb::watch_response::Body::Snapshot(Bytes::from(
                snapshot.encode(),
            ))),
            ..Default::default()
        }))
        .await
        .unwrap();
        let _ = self.seen.send((auth, request.into_inner())).await;
        // The response sender lives as long as the server keeps the stream.
        tokio::spawn(async move {
            tx.closed().await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A TLS server with `server`'s certificate that requires client
/// certificates signed by `client_ca`. Returns its https URL.
async fn serve(server: &Pair, client_ca: &Ca) -> (String, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&server.cert_pem, &server.key_pem))
        .client_ca_root(Certificate::from_pem(client_ca.cert_pem()));
    let (seen, rx) = mpsc::channel(4);
    let router = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(ConfigDiscoveryServer::new(Fake { seen }));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    (url, rx)
}

fn start(url: &str, ca: &Ca, client: &Pair, cache: &std::path::Path) -> AgentHandle {
    Agent::builder()
        .servers([url.to_owned()])
        .node_id("n1")
        .group("edge")
        .cache_dir(cache)
        .backoff(BackoffConfig {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(200),
        })
        .tls(ClientTls {
            ca_pem: Some(ca.cert_pem().into_bytes()),
            identity: Some(ClientIdentity {
                cert_pem: client.cert_pem.clone().into_bytes(),
                key_pem: client.key_pem.clone().into_bytes(),
            }),
        })
        .token(BearerToken::new("s3cret").unwrap())
        .heartbeat_interval(Duration::from_millis(100))
        .start()
        .unwrap()
}

async fn last_error_contains(agent: &AgentHandle, text: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let error = agent.status().last_error.unwrap_or_default();
        if error.contains(text) {
            return error;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "last_error never contained {text:?}; it is {error:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn mtls_and_token_reach_the_server_and_heartbeats_flow() {
    let ca = Ca::new("test CA").unwrap();
    let server = ca
        .issue(&LeafParams::server(["127.0.0.1", "localhost"]))
        .unwrap();
    let client = ca.issue(&LeafParams::client("agent-edge")).unwrap();
    let (url, mut seen) = serve(&server, &ca).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start(&url, &ca, &client, dir.path());

    let (auth, mut inbound) = tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("the agent did not connect")
        .unwrap();
    assert_eq!(auth.as_deref(), Some("Bearer s3cret"));
    let first = inbound.message().await.unwrap().unwrap();
    assert_eq!(first.node.unwrap().id, "n1");
    let ack = inbound.message().await.unwrap().unwrap();
    assert_eq!(ack.response_nonce, "n1");
    assert!(ack.error_detail.is_none());
    assert_eq!(agent.current().version, 1);

    let beat = tokio::time::timeout(WAIT, inbound.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(beat.node.is_none(), "{beat:?}");
    assert!(beat.response_nonce.is_empty());
    assert_eq!(beat.version_info, 1);
    agent.shutdown().await;
}

#[tokio::test]
async fn a_server_of_another_ca_is_a_configuration_error() {
    let ca = Ca::new("test CA").unwrap();
    let impostor = Ca::new("impostor CA").unwrap();
    let server = impostor.issue(&LeafParams::server(["127.0.0.1"])).unwrap();
    let client = ca.issue(&LeafParams::client("agent-edge")).unwrap();
    let (url, _seen) = serve(&server, &ca).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start(&url, &ca, &client, dir.path());
    let error = last_error_contains(&agent, "UnknownIssuer").await;
    assert!(error.contains("TLS handshake failed"), "{error}");
    assert!(error.contains("--ca"), "{error}");
    assert!(!agent.status().connected);
    agent.shutdown().await;
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused_and_said_so() {
    let ca = Ca::new("test CA").unwrap();
    let server = ca.issue(&LeafParams::server(["127.0.0.1"])).unwrap();
    let client = ca
        .issue(&LeafParams::client("agent-edge").validity(Validity::expired()))
        .unwrap();
    let (url, _seen) = serve(&server, &ca).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = start(&url, &ca, &client, dir.path());
    let error = last_error_contains(&agent, "TLS handshake failed").await;
    assert!(error.contains("client certificate"), "{error}");
    agent.shutdown().await;
}
