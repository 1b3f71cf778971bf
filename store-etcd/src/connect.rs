//! Connecting to etcd: URL schemes against the TLS settings, the client
//! (authenticating when a user is set), refusals told apart from outages,
//! and the layout version under the prefix.

use std::fmt::Write as _;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use tokio::time::Instant;
use vane_store::StoreError;

use crate::config::EtcdConfig;
use crate::credentials::*;
use crate::failure::*;
use crate::layout::*;
use crate::shared::*;

/// Endpoints are all `http://` (then no TLS settings), or all `https://`
/// (then TLS settings are required): never plaintext by accident.
pub(crate) fn check_schemes(endpoints: &[String], tls: bool) -> Result<(), StoreError> {
    let https = endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    let http = endpoints
        .iter()
        .filter(|e| e.starts_with("http://"))
        .count();
    if let Some(other) = endpoints
        .iter()
        .find(|e| !e.starts_with("http://") && !e.starts_with("https://"))
    {
        return Err(StoreError::Io(format!(
            "etcd endpoints: {other:?} must be an http:// or https:// URL"
        )));
    }
    if https > 0 && http > 0 {
        return Err(StoreError::Io(
            "etcd endpoints: all http:// or all https://, not both".into(),
        ));
    }
    if https > 0 && !tls {
        return Err(StoreError::Io(
            "etcd endpoints: https:// needs the CA that signed etcd's certificate (--etcd-ca)"
                .into(),
        ));
    }
    if http > 0 && tls {
        return Err(StoreError::Io(
            "etcd endpoints: TLS settings (--etcd-ca, --etcd-cert, --etcd-key) need https:// endpoints; these are http://"
                .into(),
        ));
    }
    Ok(())
}

/// Whether `endpoint` is an `http://` URL whose host is not this one.
pub(crate) fn plaintext_beyond_loopback(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return false;
    };
    let Ok(uri) = format!("http://{rest}").parse::<http::Uri>() else {
        return true;
    };
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !(host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()))
}

/// The etcd client. With a user, connecting authenticates, which needs etcd:
/// an answer that retrying may change is retried until `request_timeout`,
/// as every later call is.
pub(crate) async fn connect_client(
    config: &EtcdConfig,
    options: ConnectOptions,
) -> Result<Client, StoreError> {
    let endpoints = config.endpoints.join(",");
    let deadline = Instant::now() + config.request_timeout;
    let mut attempt = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last = match tokio::time::timeout(
            remaining,
            Client::connect(&config.endpoints, Some(options.clone())),
        )
        .await
        {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => {
                if let Some(reason) =
                    refusal(config.tls.as_ref(), &config.endpoints, &e, deadline).await
                {
                    return Err(StoreError::Degraded(format!(
                        "etcd at {endpoints}: {reason}"
                    )));
                }
                // Only the authentication call talks to etcd; any other
                // error is the settings' (a URL, the TLS material).
                if !(matches!(e, etcd_client::Error::GRpcStatus(_)) && transient(&e)) {
                    return Err(StoreError::Io(format!(
                        "etcd endpoints {endpoints}: {}",
                        describe(&e)
                    )));
                }
                Some(describe(&e))
            }
            Err(_) => None,
        };
        if Instant::now() >= deadline {
            let mut text = format!(
                "etcd at {endpoints} did not answer within {}",
                humantime::format_duration(config.request_timeout)
            );
            if let Some(last) = last {
                let _ = write!(text, " (last error: {last})");
            }
            return Err(StoreError::Degraded(text));
        }
        let pause = backoff(attempt, Duration::from_millis(500))
            .min(deadline.saturating_duration_since(Instant::now()));
        attempt += 1;
        tokio::time::sleep(pause).await;
    }
}

pub(crate) async fn check_schema(shared: &Shared) -> Result<(), StoreError> {
    let key = shared.keys.schema();
    let resp = shared
        .call(shared.deadline(), |mut kv| {
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(
                    key.clone(),
                    SCHEMA_VERSION.to_string(),
                    None,
                )])
                .or_else(vec![TxnOp::get(key.clone(), None)]);
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|f| shared.read_error(f))?;
    if resp.succeeded() {
        return Ok(());
    }
    let found = txn_get(&resp.op_responses(), 0)
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .unwrap_or_default();
    if found == SCHEMA_VERSION.to_string() {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "etcd prefix {}: layout version {found:?} is not supported (this build reads {SCHEMA_VERSION})",
            shared.config.prefix
        )))
    }
}
