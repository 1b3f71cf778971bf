//! The client side of the proxy's TLS listeners: a rustls client that
//! trusts a given CA, sends a given SNI name (and, optionally, a client
//! certificate), and reports what the server presented (the certificate's
//! serial number, the ALPN protocol); HTTP/1.1 over that connection, kept
//! alive across requests; and [`TlsFiles`], a test's certificates on disk.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long a connect, a handshake or a request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS client for one CA.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<rustls::ClientConfig>,
}

impl TlsClient {
    /// Trusts `ca_pem` only; offers ALPN `alpn` (e.g. `["http/1.1"]`);
    /// presents `identity` (certificate PEM, key PEM) when asked for one.
    pub fn new(ca_pem: &str, alpn: &[&str], identity: Option<(&str, &str)>) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("usable CA");
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .collect::<Result<_, _>>()
                        .expect("certificate PEM"),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key PEM"),
                )
                .expect("client identity"),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Self {
            config: Arc::new(config),
        }
    }

    /// Connects to `addr` and completes a handshake sending SNI `sni`.
    ///
    /// With TLS 1.3 the server judges a client certificate after the
    /// client's side of the handshake is done: a refusal shows on the
    /// first read (see [`TlsClient::get`]).
    pub async fn connect(&self, addr: SocketAddr, sni: &str) -> Result<TlsConn, String> {
        let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
        let connector = TlsConnector::from(self.config.clone());
        let fut = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            Ok(TlsConn {
                stream,
                host: sni.to_owned(),
            })
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .map_err(|_| format!("timed out after {TIMEOUT:?}"))?
    }
}

impl TlsClient {
    /// `GET path` on a new connection with SNI `sni`: (status, body).
    pub async fn get(
        &self,
        addr: SocketAddr,
        sni: &str,
        path: &str,
    ) -> Result<(u16, String), String> {
        self.connect(addr, sni)
            .await?
            .http1()
            .await?
            .get(path)
            .await
    }
}

/// One TLS connection to the proxy.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    host: String,
}

impl TlsConn {
    /// The serial number of the certificate the server presented, in hex.
    pub fn peer_serial(&self) -> String {
        let (_, conn) = self.stream.get_ref();
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .expect("the server presented a certificate");
        serial_of_der(cert.as_ref())
    }

    /// The ALPN protocol the server chose, if any.
    pub fn alpn(&self) -> Option<String> {
        let (_, conn) = self.stream.get_ref();
        conn.alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// The plaintext stream, for bytes rather than HTTP.
    pub fn into_stream(self) -> TlsStream<TcpStream> {
        self.stream
    }

    /// HTTP/1.1 on this connection, kept alive across requests.
    pub async fn http1(self) -> Result<TlsHttp1, String> {
        let host = self.host.clone();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(self.stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(TlsHttp1 { sender, host })
    }
}

/// HTTP/1.1 requests over one TLS connection.
pub struct TlsHttp1 {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: String,
}

impl TlsHttp1 {
    /// `GET path` on this connection: (status, body).
    pub async fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        let req = http::Request::get(path)
            .header("host", &self.host)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let fut = async {
            self.sender.ready().await.map_err(|e| e.to_string())?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .map_err(|_| format!("timed out after {TIMEOUT:?}"))?
    }

    /// Whether the connection is still open (the server has not closed it).
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }
}

/// The serial number of the first certificate of `pem`, in hex.
pub fn serial_of(pem: &str) -> String {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("certificate PEM");
    serial_of_der(der.as_ref())
}

fn serial_of_der(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("X.509 certificate");
    cert.raw_serial_as_string()
}

/// A CA certificate and server certificates written to a directory, for
/// tools that take files (curl's `--cacert`, nginx).
pub struct TlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// (certificate, key) per name given to [`TlsFiles::write`].
    pub pairs: Vec<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    /// Writes `ca_pem` as `ca.pem` and each `(name, pair)` as `name.pem`
    /// and `name.key` in `dir`.
    pub fn write(dir: &Path, ca_pem: &str, pairs: &[(&str, &vane_pki::Pair)]) -> Self {
        std::fs::create_dir_all(dir).expect("create the TLS directory");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_pem).expect("write the CA");
        let pairs = pairs
            .iter()
            .map(|(name, pair)| {
                let (cert, key) = (
                    dir.join(format!("{name}.pem")),
                    dir.join(format!("{name}.key")),
                );
                pair.write(&cert, &key, true).expect("write the pair");
                (cert, key)
            })
            .collect();
        Self { ca, pairs }
    }
}
