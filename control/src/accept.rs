//! The server's own accept loop: TCP, then TLS (when configured) with a
//! handshake timeout, the client certificate's identity, and connection
//! limits (in total and per identity); each accepted connection goes to
//! tonic as a [`Conn`] whose [`ConnInfo`] every request can read.
//!
//! tonic can terminate TLS itself, but then a client that opens a socket
//! and never finishes its handshake holds it as long as it likes, and
//! nothing knows the identity before the first request. Doing it here
//! bounds both.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How long a client may take to finish its TLS handshake unless configured.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections open at once unless configured.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;
/// Connections one certificate identity may hold open unless configured.
pub const DEFAULT_MAX_CONNECTIONS_PER_IDENTITY: usize = 10_000;

/// The files of the server's TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), `--tls-cert`.
    pub cert: PathBuf,
    /// Its private key (PEM), `--tls-key`.
    pub key: PathBuf,
    /// The CA that signs client certificates (PEM), `--client-ca`. Without
    /// it, clients are not asked for certificates.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds nothing usable.
    #[error("{flag} {path}: {reason}")]
    File {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the combination (e.g. a key that does not match the
    /// certificate).
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(flag: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        flag,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(flag, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(flag, path, e))?;
    if certs.is_empty() {
        return Err(file_error(flag, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Builds the rustls server configuration: TLS 1.2 and 1.3 with ring,
/// ALPN `h2`, and client certificates verified against the client CA when
/// one is given (optional: a client without one may still authenticate
/// with a bearer token).
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_certs("--tls-cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file_error("--tls-key", &files.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs("--client-ca", path)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error("--client-ca", path, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| file_error("--client-ca", path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("--tls-cert/--tls-key: {e}")))?;
    // h2 for gRPC (and HTTP clients that speak it); http/1.1 for the HTTP
    // API's plain clients (curl, scripts), which may offer nothing else.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The identity a client certificate names: its first SAN URI, else its
/// subject's common name.
pub fn certificate_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && !uri.is_empty()
            {
                return Some((*uri).to_owned());
            }
        }
    }
    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .map(str::to_owned)
}

/// What every request on a connection can know about it (tonic puts it in
/// the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The verified client certificate's identity, if it presented one.
    pub identity: Option<Arc<str>>,
    /// Whether the connection is TLS (else plaintext, or unknown: a
    /// connection served outside our accept loop counts as plaintext).
    pub tls: bool,
}

/// Connection limits of the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once (TLS handshakes in progress included);
    /// more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Connections one certificate identity may hold open; more are closed
    /// right after the handshake.
    pub max_per_identity: usize,
    /// How long a TLS handshake may take, and then how long the client may
    /// stay silent before its first byte; on a plaintext endpoint, how long
    /// it may stay silent after connecting.
    pub handshake_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_identity: DEFAULT_MAX_CONNECTIONS_PER_IDENTITY,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// Counts of refused connections, for metrics.
#[derive(Debug, Default)]
pub struct ConnCounters {
    /// Closed because `max_connections` were open.
    pub over_max: std::sync::atomic::AtomicU64,
    /// Closed because their identity had `max_per_identity` open.
    pub over_identity: std::sync::atomic::AtomicU64,
    /// TLS handshakes that failed or timed out, and connections that sent
    /// nothing within the handshake timeout (after the handshake, or after
    /// connecting in plaintext).
    pub handshake_failed: std::sync::atomic::AtomicU64,
}

/// Open connections per identity.
#[derive(Debug, Default)]
struct PerIdentity(Mutex<HashMap<Arc<str>, usize>>);

impl PerIdentity {
    fn acquire(self: &Arc<Self>, identity: &Arc<str>, max: usize) -> Option<IdentityGuard> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = map.entry(Arc::clone(identity)).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(IdentityGuard {
            counts: Arc::clone(self),
            identity: Arc::clone(identity),
        })
    }
}

/// Releases one connection of an identity when dropped.
#[derive(Debug)]
struct IdentityGuard {
    counts: Arc<PerIdentity>,
    identity: Arc<str>,
}

impl Drop for IdentityGuard {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(open) = map.get_mut(&self.identity) {
            *open -= 1;
            if *open == 0 {
                map.remove(&self.identity);
            }
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection, plaintext or TLS, holding its place in the
/// connection limits until it is dropped.
pub struct Conn {
    io: Io,
    /// The first byte a TLS client sent, read to see that it speaks at all,
    /// handed to tonic before anything else.
    ahead: Option<u8>,
    info: ConnInfo,
    _permit: OwnedSemaphorePermit,
    _identity: Option<IdentityGuard>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() > 0
            && let Some(byte) = self.ahead.take()
        {
            buf.put_slice(&[byte]);
            return Poll::Ready(Ok(()));
        }
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts connections on `listener` until `stop`, doing the TLS handshake
/// (when `tls` is set) in a task per connection, and yields them for
/// tonic's `serve_with_incoming_shutdown`.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnLimits,
    counters: Arc<ConnCounters>,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    use std::sync::atomic::Ordering::Relaxed;
    // Small: connections wait here only while tonic is busy starting the
    // previous ones.
    let (tx, rx) = mpsc::channel::<io::Result<Conn>>(64);
    let acceptor = tls.map(TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_identity = Arc::new(PerIdentity::default());
    tokio::spawn(async move {
        let mut refused_logged = tokio::time::Instant::now();
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                counters.over_max.fetch_add(1, Relaxed);
                if refused_logged.elapsed() > Duration::from_secs(1) {
                    refused_logged = tokio::time::Instant::now();
                    tracing::warn!(
                        max = limits.max_connections,
                        "connection limit reached; closing new connections"
                    );
                }
                drop(tcp);
                continue;
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY");
            }
            let Some(acceptor) = acceptor.clone() else {
                // Plaintext: the client must start talking (the HTTP/2
                // preface) within the handshake timeout, or it is dropped
                // before it takes any of tonic's resources.
                let (tx, stop, counters) = (tx.clone(), stop.clone(), Arc::clone(&counters));
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    let spoke =
                        tokio::time::timeout(limits.handshake_timeout, tcp.peek(&mut first));
                    let spoke = tokio::select! {
                        () = stop.cancelled() => return,
                        spoke = spoke => spoke,
                    };
                    if !matches!(spoke, Ok(Ok(n)) if n > 0) {
                        counters.handshake_failed.fetch_add(1, Relaxed);
                        tracing::debug!(peer = %remote, "connection closed before it spoke");
                        return;
                    }
                    let conn = Conn {
                        io: Io::Plain(tcp),
                        ahead: None,
                        info: ConnInfo {
                            remote,
                            identity: None,
                            tls: false,
                        },
                        _permit: permit,
                        _identity: None,
                    };
                    let _ = tx.send(Ok(conn)).await;
                });
                continue;
            };
            let (tx, stop) = (tx.clone(), stop.clone());
            let (counters, per_identity) = (Arc::clone(&counters), Arc::clone(&per_identity));
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
                let tls = tokio::select! {
                    () = stop.cancelled() => return,
                    tls = handshake => tls,
                };
                let tls = match tls {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        counters.handshake_failed.fetch_add(1, Relaxed);
                        tracing::info!(peer = %remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        counters.handshake_failed.fetch_add(1, Relaxed);
                        tracing::info!(peer = %remote, timeout = ?limits.handshake_timeout, "TLS handshake timed out");
                        return;
                    }
                };
                // Then it must start talking (the HTTP/2 preface) within the
                // same time, or it would hold a connection slot for good.
                let mut tls = tls;
                let mut first = [0u8; 1];
                let spoke = tokio::time::timeout(limits.handshake_timeout, tls.read(&mut first));
                let spoke = tokio::select! {
                    () = stop.cancelled() => return,
                    spoke = spoke => spoke,
                };
                if !matches!(spoke, Ok(Ok(n)) if n > 0) {
                    counters.handshake_failed.fetch_add(1, Relaxed);
                    tracing::info!(peer = %remote, timeout = ?limits.handshake_timeout, "TLS connection closed: nothing sent after the handshake");
                    return;
                }
                let identity: Option<Arc<str>> = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(<[_]>::first)
                    .and_then(certificate_identity)
                    .map(Arc::from);
                let guard = match &identity {
                    Some(id) => match per_identity.acquire(id, limits.max_per_identity) {
                        Some(guard) => Some(guard),
                        None => {
                            counters.over_identity.fetch_add(1, Relaxed);
                            tracing::warn!(
                                peer = %remote,
                                identity = %id,
                                max = limits.max_per_identity,
                                "identity holds its maximum of connections; closing this one"
                            );
                            return;
                        }
                    },
                    None => None,
                };
                let conn = Conn {
                    io: Io::Tls(Box::new(tls)),
                    ahead: Some(first[0]),
                    info: ConnInfo {
                        remote,
                        identity,
                        tls: true,
                    },
                    _permit: permit,
                    _identity: guard,
                };
                // The receiver is gone only when the server stops.
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
