//! Envoy's bootstrap for following a Vane control server over ADS, and its
//! command line: written once for the tests ([`crate::xds::Envoy`]) and
//! `cargo xtask demo`. Standard library only (the JSON is written by hand),
//! so xtask can use it without the heavy part of the crate.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The name of the static cluster that reaches the control server.
pub const CONTROL_CLUSTER: &str = "vane-control";

/// Which ADS stream Envoy opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdsFlavour {
    /// `StreamAggregatedResources` (`api_type: GRPC`).
    Sotw,
    /// `DeltaAggregatedResources` (`api_type: DELTA_GRPC`).
    Delta,
}

/// Client TLS to the control server: the CA to check it with, and a client
/// certificate (the node's identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyTls {
    /// The CA bundle the server's certificate must chain to.
    pub ca: PathBuf,
    /// The client certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// What an Envoy following Vane is told at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyBootstrap {
    /// `node.id`: the node's id in `vanectl status`.
    pub node_id: String,
    /// `node.metadata["vane.group"]`: the group it follows.
    pub group: String,
    /// The control server's address (loopback).
    pub control: SocketAddr,
    /// State of the world or delta.
    pub flavour: AdsFlavour,
    /// A bearer token, sent as `authorization: Bearer <token>` metadata.
    pub token: Option<String>,
    /// TLS to the control server; plaintext when `None`.
    pub tls: Option<EnvoyTls>,
}

impl EnvoyBootstrap {
    /// Plaintext, state of the world, no token.
    pub fn new(node_id: &str, group: &str, control: SocketAddr) -> Self {
        Self {
            node_id: node_id.to_owned(),
            group: group.to_owned(),
            control,
            flavour: AdsFlavour::Sotw,
            token: None,
            tls: None,
        }
    }

    /// The bootstrap as JSON (which Envoy reads as YAML too). The admin
    /// endpoint listens on port 0: Envoy writes the address it got to the
    /// file given by `--admin-address-path` (see [`envoy_command`]).
    pub fn to_json(&self) -> String {
        let api_type = match self.flavour {
            AdsFlavour::Sotw => "GRPC",
            AdsFlavour::Delta => "DELTA_GRPC",
        };
        let metadata = match &self.token {
            Some(token) => format!(
                r#", "initial_metadata": [{{"key": "authorization", "value": {}}}]"#,
                quote(&format!("Bearer {token}"))
            ),
            None => String::new(),
        };
        let transport = match &self.tls {
            Some(tls) => format!(
                r#", "transport_socket": {{"name": "envoy.transport_sockets.tls", "typed_config": {{
      "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
      "sni": "localhost",
      "common_tls_context": {{
        "alpn_protocols": ["h2"],
        "validation_context": {{"trusted_ca": {{"filename": {}}}}},
        "tls_certificates": [{{"certificate_chain": {{"filename": {}}}, "private_key": {{"filename": {}}}}}]
      }}}}}}"#,
                quote_path(&tls.ca),
                quote_path(&tls.cert),
                quote_path(&tls.key)
            ),
            None => String::new(),
        };
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            r#"{{
  "node": {{"id": {node}, "cluster": "vane", "metadata": {{"vane.group": {group}}}}},
  "admin": {{"address": {{"socket_address": {{"address": "127.0.0.1", "port_value": 0}}}}}},
  "dynamic_resources": {{
    "ads_config": {{
      "api_type": "{api_type}",
      "transport_api_version": "V3",
      "set_node_on_first_message_only": true,
      "grpc_services": [{{
        "envoy_grpc": {{
          "cluster_name": "{CONTROL_CLUSTER}",
          "retry_policy": {{"retry_back_off": {{"base_interval": "0.2s", "max_interval": "1s"}}}}
        }}{metadata}
      }}]
    }},
    "lds_config": {{"ads": {{}}, "resource_api_version": "V3"}},
    "cds_config": {{"ads": {{}}, "resource_api_version": "V3"}}
  }},
  "static_resources": {{"clusters": [{{
    "name": "{CONTROL_CLUSTER}",
    "type": "STATIC",
    "connect_timeout": "1s",
    "typed_extension_protocol_options": {{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {{
      "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
      "explicit_http_config": {{"http2_protocol_options": {{}}}}
    }}}},
    "load_assignment": {{"cluster_name": "{CONTROL_CLUSTER}", "endpoints": [{{"lb_endpoints": [{{"endpoint": {{
      "address": {{"socket_address": {{"address": "{ip}", "port_value": {port}}}}}
    }}}}]}}]}}{transport}
  }}]}}
}}
"#,
            node = quote(&self.node_id),
            group = quote(&self.group),
            ip = self.control.ip(),
            port = self.control.port(),
        );
        out
    }
}

/// `envoy -c CONFIG ...`: one worker thread (two cores are shared by every
/// test), hot restart off (so parallel Envoys share no memory segment or
/// socket, whatever their base id), the admin address written to
/// `admin_path`, the log to `log`.
pub fn envoy_command(envoy: &Path, config: &Path, admin_path: &Path, log: &Path) -> Command {
    let mut cmd = Command::new(envoy);
    cmd.arg("-c")
        .arg(config)
        .args(["--concurrency", "1", "--disable-hot-restart"])
        .args(["--log-level", "info", "--file-flush-interval-msec", "100"])
        .arg("--admin-address-path")
        .arg(admin_path)
        .arg("--log-path")
        .arg(log);
    cmd
}

/// `s` as a JSON string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("a\nb"), r#""a\u000ab""#);
    }

    #[test]
    fn the_bootstrap_names_the_group_the_flavour_and_the_token() {
        let mut b = EnvoyBootstrap::new("e1", "web", "127.0.0.1:7000".parse().unwrap());
        let sotw = b.to_json();
        assert!(sotw.contains(r#""vane.group": "web""#), "{sotw}");
        assert!(sotw.contains(r#""api_type": "GRPC""#), "{sotw}");
        assert!(!sotw.contains("authorization"), "{sotw}");
        assert!(!sotw.contains("transport_socket"), "{sotw}");
        b.flavour = AdsFlavour::Delta;
        b.token = Some("t0k".into());
        let delta = b.to_json();
        assert!(delta.contains(r#""api_type": "DELTA_GRPC""#), "{delta}");
        assert!(delta.contains(r#""value": "Bearer t0k""#), "{delta}");
        assert!(delta.contains(r#""port_value": 7000"#), "{delta}");
    }
}
