//! vanectl's connection to the control server's Admin API.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use vane_proto as pb;

use super::error::CliError;

/// Largest message vanectl sends or accepts. Far above the server's snapshot
/// limit on purpose: an oversize push must reach the server, so that the user
/// reads the server's size error rather than a client-side one.
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The server URL as given, with `http://` added when no scheme is (so
/// `--server 127.0.0.1:7070` works too).
pub(crate) fn server_url(server: &str) -> Result<String, CliError> {
    let server = server.trim();
    if server.is_empty() {
        return Err(CliError::usage("--server: must not be empty"));
    }
    let url = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    Endpoint::from_shared(url.clone())
        .map_err(|e| CliError::usage(format!("--server {server:?}: not a valid URL: {e}")))?;
    Ok(url)
}

/// Connects to `url` (from [`server_url`]), giving up after `timeout`.
pub(crate) async fn connect(
    url: &str,
    timeout: Duration,
) -> Result<pb::admin_client::AdminClient<Channel>, CliError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| CliError::usage(format!("--server {url:?}: not a valid URL: {e}")))?
        .connect_timeout(timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| CliError::from_transport(&e, url))?;
    Ok(pb::admin_client::AdminClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::error::Failure;

    #[test]
    fn urls() {
        assert_eq!(server_url("http://h:1").unwrap(), "http://h:1");
        assert_eq!(
            server_url("127.0.0.1:7070").unwrap(),
            "http://127.0.0.1:7070"
        );
        assert_eq!(server_url(" ").unwrap_err().kind, Failure::Usage);
        assert_eq!(server_url("http://a b").unwrap_err().kind, Failure::Usage);
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
        let e = connect(&url, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e.kind, Failure::Unreachable);
        assert!(
            e.message
                .starts_with(&format!("cannot reach the control server at {url}: "))
        );
        assert!(e.to_string().to_lowercase().contains("refused"), "{e}");
    }
}
