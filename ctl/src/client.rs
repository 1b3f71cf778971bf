//! vanectl's connection to the control server's Admin API.

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use vane_proto as pb;

use vane_tls::BearerInterceptor;

use crate::credentials::Credentials;
use crate::error::CliError;

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
    use crate::error::Failure;

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
