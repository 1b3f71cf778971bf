//! vanectl's connection to the control server's Admin API, with failover
//! across several server URLs (replicas): a call goes to the first URL that
//! can be connected to; one that is unreachable (connection refused, TLS
//! handshake failed, no connection within the timeout) hands over to the
//! next. A server that answers, even with an error, is never failed over.

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use vane_proto as pb;

use vane_tls::BearerInterceptor;

use crate::credentials::Credentials;
use crate::error::{CliError, Failure};

/// The Admin client, with the bearer token (if any) on every call.
pub(crate) type Admin =
    pb::admin_client::AdminClient<InterceptedService<Channel, BearerInterceptor>>;

/// Largest message vanectl sends or accepts. Far above the server's snapshot
/// limit on purpose: an oversize push must reach the server, so that the user
/// reads the server's size error rather than a client-side one.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The server URL as given, with a scheme added when none is (so
/// `--server 127.0.0.1:7070` works too): `https://` when `tls` (a CA or a
/// client certificate was given), else `http://`. With `tls`, a plaintext
/// URL is refused: the certificates would silently not be used.
pub(crate) fn server_url(server: &str, tls: bool) -> Result<String, CliError> {
    let server = server.trim();
    if server.is_empty() {
        return Err(CliError::usage("--server: must not be empty"));
    }
    let url = if server.contains("://") {
        server.to_owned()
    } else if tls {
        format!("https://{server}")
    } else {
        format!("http://{server}")
    };
    Endpoint::from_shared(url.clone())
        .map_err(|e| CliError::usage(format!("--server {server:?}: not a valid URL: {e}")))?;
    if tls && !url.starts_with("https://") {
        return Err(CliError::usage(format!(
            "--server {server}: plaintext, but --ca or --cert is given; use https://"
        )));
    }
    Ok(url)
}

/// Every URL of `servers` (from `--server` or a context, named by `from`)
/// with its scheme, checked as [`server_url`] does.
pub(crate) fn server_urls(
    servers: &[String],
    from: &str,
    tls: bool,
) -> Result<Vec<String>, CliError> {
    if servers.is_empty() {
        return Err(CliError::usage(format!("{from}: no server URL given")));
    }
    servers
        .iter()
        .map(|s| {
            server_url(s, tls).map_err(|e| match e.message.strip_prefix("--server") {
                Some(rest) if from != "--server" => CliError::usage(format!("{from}{rest}")),
                _ => e,
            })
        })
        .collect()
}

/// A connection to one of the servers, and which.
pub(crate) struct Connected {
    pub(crate) admin: Admin,
    /// The URL that answered (errors and messages name it).
    pub(crate) url: String,
    /// When connecting to it began: a call's time starts there.
    pub(crate) started: tokio::time::Instant,
}

/// Connects to the first of `urls` that can be reached, each attempt given
/// up after `timeout`. Only an unreachable server (exit 3) is failed over:
/// any other error ends the attempt. When none answers, the error names each
/// URL and why (with one URL: exactly that URL's error).
pub(crate) async fn connect_any(
    urls: &[String],
    timeout: Duration,
    credentials: &Credentials,
) -> Result<Connected, CliError> {
    let mut failures = Vec::new();
    for url in urls {
        let started = tokio::time::Instant::now();
        let error = match tokio::time::timeout(timeout, connect(url, timeout, credentials)).await {
            Ok(Ok(admin)) => {
                return Ok(Connected {
                    admin,
                    url: url.clone(),
                    started,
                });
            }
            Ok(Err(e)) if e.kind != Failure::Unreachable => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => CliError::unreachable(format!(
                "no answer from the control server at {url} within {} (see --timeout)",
                humantime::format_duration(timeout)
            )),
        };
        if urls.len() > 1 {
            eprintln!("vanectl: {error}; trying the next server");
        }
        failures.push(error);
    }
    match failures.len() {
        1 => Err(failures.remove(0)),
        n => Err(CliError::unreachable(format!(
            "none of the {n} control servers answered: {}",
            failures
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ))),
    }
}

/// Connects to `url` (from [`server_url`]) with `credentials`, giving up
/// after `timeout`.
pub(crate) async fn connect(
    url: &str,
    timeout: Duration,
    credentials: &Credentials,
) -> Result<Admin, CliError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| CliError::usage(format!("--server {url:?}: not a valid URL: {e}")))?
        .connect_timeout(timeout);
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config(credentials.tls_config(timeout))
            .map_err(|e| CliError::from_transport(&e, url))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| CliError::from_transport(&e, url))?;
    Ok(
        pb::admin_client::AdminClient::with_interceptor(channel, credentials.interceptor())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(server_url("http://h:1", false).unwrap(), "http://h:1");
        assert_eq!(
            server_url("127.0.0.1:7070", false).unwrap(),
            "http://127.0.0.1:7070"
        );
        assert_eq!(server_url(" ", false).unwrap_err().kind, Failure::Usage);
        assert_eq!(
            server_url("http://a b", false).unwrap_err().kind,
            Failure::Usage
        );
        assert_eq!(server_url("https://h:1", false).unwrap(), "https://h:1");
        assert_eq!(server_url("h:1", true).unwrap(), "https://h:1");
        let e = server_url("http://h:1", true).unwrap_err();
        assert_eq!(e.kind, Failure::Usage);
        assert_eq!(
            e.message,
            "--server http://h:1: plaintext, but --ca or --cert is given; use https://"
        );
    }

    #[test]
    fn url_lists_name_where_they_came_from() {
        let urls = server_urls(&["h:1".into(), "https://h:2".into()], "--server", false).unwrap();
        assert_eq!(urls, ["http://h:1", "https://h:2"]);
        let e = server_urls(&["http://a b".into()], "server (context prod)", false).unwrap_err();
        assert_eq!(e.kind, Failure::Usage);
        assert!(
            e.message
                .starts_with("server (context prod) \"http://a b\": not a valid URL"),
            "{}",
            e.message
        );
        assert!(server_urls(&[], "--server", false).is_err());
    }

    /// A loopback port nobody listens on.
    fn dead_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn unreachable_servers_are_failed_over_and_all_named_when_none_answers() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_url = format!("http://{}", live.local_addr().unwrap());
        // Accept (and hold) connections: tonic connects eagerly.
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = live.accept().await {
                held.push(s);
            }
        });
        let dead = format!("http://127.0.0.1:{}", dead_port());
        let c = connect_any(
            &[dead.clone(), live_url.clone()],
            Duration::from_secs(5),
            &Credentials::default(),
        )
        .await
        .unwrap();
        assert_eq!(c.url, live_url);
        let other = format!("http://127.0.0.1:{}", dead_port());
        let Err(e) = connect_any(
            &[dead.clone(), other.clone()],
            Duration::from_secs(5),
            &Credentials::default(),
        )
        .await
        else {
            panic!("connected to a dead port");
        };
        assert_eq!(e.kind, Failure::Unreachable);
        assert!(
            e.message.starts_with(
                "none of the 2 control servers answered: cannot reach the control server at "
            ),
            "{}",
            e.message
        );
        assert!(
            e.message.contains(&dead) && e.message.contains(&other),
            "{}",
            e.message
        );
        accept.abort();
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        // Bind then drop to get a loopback port that nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let e = connect(&url, Duration::from_secs(5), &Credentials::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind, Failure::Unreachable);
        assert!(
            e.message
                .starts_with(&format!("cannot reach the control server at {url}: "))
        );
        assert!(e.to_string().to_lowercase().contains("refused"), "{e}");
    }
}
