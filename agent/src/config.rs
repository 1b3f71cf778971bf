//! The agent's settings, with their defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::backoff::BackoffConfig;
use crate::breaker::BreakerConfig;
use vane_tls::{BearerToken, ClientTls, TlsPart};

/// Everything an agent is configured with. Build it with [`crate::Agent::builder`].
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Control-server URLs, tried in turn: `https://host:port` (TLS, see
    /// `tls`) or `http://host:port` (plaintext). Required.
    pub servers: Vec<String>,
    /// This node's id, unique in its group. Required.
    pub node_id: String,
    /// The group whose snapshots this agent follows. Required.
    pub group: String,
    /// Labels reported to the control plane. Default: none.
    pub labels: BTreeMap<String, String>,
    /// Reported build, default `vane-agent/<crate version>`.
    pub agent_build: String,
    /// Where the last applied snapshot is kept. Default: none (no cache).
    pub cache_dir: Option<PathBuf>,
    /// Reconnect backoff. Default: base 500 ms, cap 30 s, full jitter.
    pub backoff: BackoffConfig,
    /// Reconnect circuit breaker. Default: opens after 5 failed connects,
    /// for periods of 1.5 to 3 s between probes (so a server that answers
    /// again is found within 3 s).
    pub breaker: BreakerConfig,
    /// Degraded once unconfirmed for longer than this. Default 5 minutes.
    pub stale_after: Duration,
    /// TCP connect and stream-open timeout. Default 5 s.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive ping interval. Default 10 s.
    pub keepalive_interval: Duration,
    /// A ping unanswered this long kills the connection. Default 5 s, so a
    /// dead peer is detected within about 15 s.
    pub keepalive_timeout: Duration,
    /// Largest snapshot the agent accepts. Default 4 MiB.
    pub max_snapshot_bytes: usize,
    /// Bound on `shutdown()`. Default 5 s.
    pub shutdown_timeout: Duration,
    /// CA and client certificate for `https://` servers. Default: the
    /// public web PKI roots, no client certificate. When set, every server
    /// must be `https://`.
    pub tls: ClientTls,
    /// Sent on the watch as `authorization: Bearer <token>`. Default: none.
    pub token: Option<BearerToken>,
    /// How often a heartbeat (a request with no node and no nonce) is sent
    /// on an open stream, so the server can tell a live quiet agent from a
    /// vanished one. Default 30 s.
    pub heartbeat_interval: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            node_id: String::new(),
            group: String::new(),
            labels: BTreeMap::new(),
            agent_build: format!("vane-agent/{}", env!("CARGO_PKG_VERSION")),
            cache_dir: None,
            backoff: BackoffConfig::default(),
            breaker: BreakerConfig::default(),
            stale_after: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            max_snapshot_bytes: vane_model::DEFAULT_MAX_SNAPSHOT_BYTES,
            shutdown_timeout: Duration::from_secs(5),
            tls: ClientTls::default(),
            token: None,
            heartbeat_interval: Duration::from_secs(30),
        }
    }
}

impl AgentConfig {
    /// Checks the settings; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("servers: give at least one control-server URL".into());
        }
        for s in &self.servers {
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                return Err(format!(
                    "servers: {s:?} is not a URL (expected https://host:port or http://host:port)"
                ));
            }
            // Certificates given for a plaintext server would silently not
            // be used: the operator asked for TLS and would not get it.
            if s.starts_with("http://") && self.tls.is_configured() {
                return Err(format!(
                    "servers: {s:?} is plaintext but TLS settings (CA or client certificate) are given; use https://"
                ));
            }
        }
        self.tls.check().map_err(|(part, why)| {
            let field = match part {
                TlsPart::Ca => "tls.ca_pem",
                TlsPart::Cert => "tls.identity.cert_pem",
                TlsPart::Key => "tls.identity.key_pem",
            };
            format!("{field}: {why}")
        })?;
        if self.node_id.is_empty() {
            return Err("node_id: required".into());
        }
        vane_model::names::check_group(&self.group).map_err(|e| format!("group: {e}"))?;
        self.backoff
            .validate()
            .map_err(|e| format!("backoff: {e}"))?;
        if self.breaker.failure_threshold == 0 {
            return Err("breaker: failure_threshold must be at least 1".into());
        }
        if self.stale_after.is_zero() {
            return Err("stale_after: must be above zero".into());
        }
        if self.heartbeat_interval.is_zero() {
            return Err("heartbeat_interval: must be above zero".into());
        }
        Ok(())
    }
}
