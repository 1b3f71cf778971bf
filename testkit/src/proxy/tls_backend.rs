//! An HTTPS backend in the test process: a certificate from a private CA
//! (vane-pki), HTTP/1.1 and HTTP/2 chosen by ALPN, client certificates
//! optionally required; it answers with its id and says which HTTP version
//! it was spoken to in and whether the client presented a certificate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use vane_pki::Pair;

/// How a [`TlsBackend`] serves.
pub struct TlsBackendConfig {
    /// Its certificate and key.
    pub pair: Pair,
    /// ALPN protocols it accepts, in preference order (e.g. `["h2",
    /// "http/1.1"]`); empty: no ALPN.
    pub alpn: Vec<Vec<u8>>,
    /// A CA (PEM) whose client certificates are required; `None`: none asked.
    pub client_ca: Option<String>,
}

/// An HTTPS backend on a free loopback port.
pub struct TlsBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    handshake_failures: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
}

impl TlsBackend {
    /// Starts it. Answers `200` with `id` as the body, `x-backend: <id>`,
    /// `x-seen-version` (`HTTP/1.1` or `HTTP/2.0`) and `x-seen-client-cert`
    /// (`yes` or `no`).
    pub async fn start(id: &str, config: TlsBackendConfig) -> Self {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(config.pair.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("backend certificate PEM");
        let key =
            PrivateKeyDer::from_pem_slice(config.pair.key_pem.as_bytes()).expect("backend key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = match &config.client_ca {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots.add(c.expect("client CA PEM")).expect("client CA");
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut server = builder
            .with_single_cert(certs, key)
            .expect("backend certificate and key");
        server.alpn_protocols = config.alpn;
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a TLS backend");
        let addr = listener.local_addr().expect("local address");
        let hits = Arc::new(AtomicU64::new(0));
        let handshake_failures = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = watch::channel(false);
        let id: Arc<str> = Arc::from(id);
        let (h, f) = (hits.clone(), handshake_failures.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(s) => s,
                        Err(_) => continue,
                    },
                    _ = stopped.changed() => return,
                };
                let (acceptor, id, hits, failures) =
                    (acceptor.clone(), id.clone(), h.clone(), f.clone());
                let mut stop = stopped.clone();
                tokio::spawn(async move {
                    let tls = match acceptor.accept(stream).await {
                        Ok(t) => t,
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    };
                    let client_cert = tls.get_ref().1.peer_certificates().is_some();
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        hits.fetch_add(1, Ordering::Relaxed);
                        let id = id.clone();
                        async move {
                            let mut resp = Response::new(Full::new(Bytes::from(id.to_string())));
                            let h = resp.headers_mut();
                            h.insert("x-backend", id.parse().expect("ids are header-safe"));
                            let version = format!("{:?}", req.version());
                            h.insert("x-seen-version", version.parse().expect("a version"));
                            let cert = if client_cert { "yes" } else { "no" };
                            h.insert("x-seen-client-cert", cert.parse().expect("yes or no"));
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            hits,
            handshake_failures,
            stop,
        }
    }

    /// Requests answered.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// TLS handshakes that failed (the client refused the certificate, or
    /// sent none where one is required).
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
