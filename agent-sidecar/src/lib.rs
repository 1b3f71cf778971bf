//! The command-line flags every binary built on the agent shares (the
//! `vane-agent` sidecar, `vane-proxy`): who the node is, where the control
//! plane is and how to trust it and be trusted by it (TLS, token), the
//! cache, the defaults, reconnect pacing and logging. Binaries
//! `#[command(flatten)]` [`AgentArgs`] and add their own flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vane_model::Snapshot;

use vane_agent::{AgentConfig, BackoffConfig, BreakerConfig};
use vane_tls::pem::{check_ca, check_identity};
use vane_tls::{BearerToken, ClientIdentity, ClientTls, TlsPart};

/// The agent's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// This node's id, unique within its group.
    #[arg(long)]
    pub node_id: String,
    /// The group whose configuration to follow.
    #[arg(long)]
    pub group: String,
    /// Control-server URLs, comma-separated, tried in turn: https://host:port
    /// (TLS) or http://host:port (plaintext).
    #[arg(long, value_delimiter = ',', required = true)]
    pub control: Vec<String>,
    /// PEM file of the CA that signs the control servers' certificates
    /// (default for https://: the public web PKI roots).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// PEM file of this agent's client certificate (mTLS; needs --key).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key (needs --cert).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// File holding a bearer token, sent as `authorization: Bearer <token>`.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// How often a heartbeat is sent on an open watch stream.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// Directory of the disk cache (the last applied snapshot), served at
    /// startup before any control server answers.
    #[arg(long)]
    pub cache_dir: PathBuf,
    /// A snapshot file (as `vanectl push` takes) served when there is no usable cache.
    #[arg(long)]
    pub defaults: Option<PathBuf>,
    /// A label reported to the control plane, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Degraded once the control plane has not confirmed the config for this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub stale_after: Duration,
    /// First reconnect delay ceiling (full jitter).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub backoff_cap: Duration,
    /// Consecutive failed connects that open the circuit breaker.
    #[arg(long, default_value_t = 5)]
    pub breaker_threshold: u32,
    /// Longest the breaker stays open before its next probe (each period is
    /// uniform between half this and this), and longest pause after any
    /// failed connect: a control server that answers again is found within it.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub breaker_open: Duration,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Least severe log level written: trace, debug, info, warn, error or
    /// off. RUST_LOG, when set, wins (and may name modules).
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = vane_admin_http::logs::parse_level)]
    pub log_level: vane_admin_http::logs::LogLevel,
}

/// Log format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl AgentArgs {
    /// The agent's configuration from these flags; `build` is what the
    /// control plane sees as `agent_build` (e.g. `vane-proxy/0.1.0`).
    /// Reads and checks the TLS and token files; the error names the flag,
    /// the file and the reason.
    pub fn to_config(&self, build: String) -> Result<AgentConfig, String> {
        let tls = self.tls()?;
        let token = match &self.token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--token-file {}: cannot read: {e}", path.display()))?;
                Some(
                    BearerToken::new(&text)
                        .map_err(|e| format!("--token-file {}: {e}", path.display()))?,
                )
            }
        };
        if tls.is_configured()
            && let Some(plain) = self.control.iter().find(|s| s.starts_with("http://"))
        {
            return Err(format!(
                "--control {plain}: plaintext, but --ca or --cert is given; use https://"
            ));
        }
        Ok(AgentConfig {
            servers: self.control.clone(),
            node_id: self.node_id.clone(),
            group: self.group.clone(),
            labels: self.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
            agent_build: build,
            cache_dir: Some(self.cache_dir.clone()),
            backoff: BackoffConfig {
                base: self.backoff_base,
                cap: self.backoff_cap,
            },
            breaker: BreakerConfig {
                failure_threshold: self.breaker_threshold,
                open_for: self.breaker_open,
            },
            stale_after: self.stale_after,
            tls,
            token,
            heartbeat_interval: self.heartbeat_interval,
            ..AgentConfig::default()
        })
    }

    /// `--ca`, `--cert` and `--key`, read and checked.
    fn tls(&self) -> Result<ClientTls, String> {
        let read = |flag: &str, path: &Path| {
            std::fs::read(path).map_err(|e| format!("{flag} {}: cannot read: {e}", path.display()))
        };
        let ca_pem = match &self.ca {
            None => None,
            Some(path) => {
                let pem = read("--ca", path)?;
                check_ca(&pem).map_err(|e| format!("--ca {}: {e}", path.display()))?;
                Some(pem)
            }
        };
        let identity = match (&self.cert, &self.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let id = ClientIdentity {
                    cert_pem: read("--cert", cert)?,
                    key_pem: read("--key", key)?,
                };
                check_identity(&id.cert_pem, &id.key_pem).map_err(|(part, why)| match part {
                    TlsPart::Cert | TlsPart::Ca => format!("--cert {}: {why}", cert.display()),
                    TlsPart::Key => format!(
                        "--key {} (for --cert {}): {why}",
                        key.display(),
                        cert.display()
                    ),
                })?;
                Some(id)
            }
            // clap enforces the pair (`requires`); said again for callers
            // that build AgentArgs themselves.
            (Some(_), None) => return Err("--cert: needs --key".into()),
            (None, Some(_)) => return Err("--key: needs --cert".into()),
        };
        Ok(ClientTls { ca_pem, identity })
    }

    /// Reads and validates `--defaults`, if given. The error names the flag,
    /// the file, the field and the reason.
    pub fn load_defaults(&self) -> Result<Option<Snapshot>, String> {
        let Some(path) = &self.defaults else {
            return Ok(None);
        };
        let spec = vane_model::file::read_file(path)
            .map_err(|e| format!("--defaults {}: {e}", path.display()))?;
        vane_model::validate(spec)
            .map(Some)
            .map_err(|e| format!("--defaults {}: {e}", path.display()))
    }
}

/// Logs to stderr as `--log-format` and `--log-level` say (RUST_LOG wins
/// when set), with colours only at a terminal: `vane_admin_http::logs`.
pub fn init_logs(args: &AgentArgs) {
    let format = match args.log_format {
        LogFormat::Text => vane_admin_http::logs::LogFormat::Text,
        LogFormat::Json => vane_admin_http::logs::LogFormat::Json,
    };
    vane_admin_http::logs::init(format, args.log_level);
}

/// Runs a binary's `main` future on `runtime` (or reports why the runtime
/// could not be built) and turns the outcome into the exit code: 0 on
/// success, 1 when the runtime cannot start, 2 with the error on one line.
pub fn block_on_main<F>(
    runtime: std::io::Result<tokio::runtime::Runtime>,
    main: F,
) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(main) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Parses `KEY=VALUE`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?}: empty key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    #[test]
    fn flags_make_a_config() {
        let cli = Cli::try_parse_from([
            "x",
            "--node-id",
            "n1",
            "--group",
            "edge",
            "--control",
            "http://a:1,http://b:2",
            "--cache-dir",
            "/tmp/c",
            "--label",
            "zone=a",
            "--backoff-cap",
            "2s",
        ])
        .unwrap();
        let c = cli.agent.to_config("test/1".into()).unwrap();
        assert_eq!(c.servers, ["http://a:1", "http://b:2"]);
        assert!(!c.tls.is_configured());
        assert_eq!(c.token, None);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.labels["zone"], "a");
        assert_eq!(c.backoff.cap, Duration::from_secs(2));
        assert_eq!(c.agent_build, "test/1");
        assert!(c.validate().is_ok());
        assert_eq!(cli.agent.load_defaults(), Ok(None));
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=v").is_err());
    }

    fn parse(extra: &[&str]) -> Result<Cli, clap::Error> {
        let base = [
            "x",
            "--node-id",
            "n1",
            "--group",
            "edge",
            "--cache-dir",
            "/tmp/c",
        ];
        Cli::try_parse_from(base.iter().chain(extra))
    }

    /// A CA, a client pair of it, and a pair of another CA, as files.
    fn files() -> (tempfile::TempDir, [String; 5]) {
        let dir = tempfile::tempdir().unwrap();
        let ca = vane_pki::Ca::new("test CA").unwrap();
        let pair = ca
            .issue(&vane_pki::LeafParams::client("agent-edge"))
            .unwrap();
        let other = vane_pki::Ca::new("other CA")
            .unwrap()
            .issue(&vane_pki::LeafParams::client("agent-edge"))
            .unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        std::fs::write(path("ca.pem"), ca.cert_pem()).unwrap();
        pair.write(
            dir.path().join("agent.pem").as_path(),
            dir.path().join("agent.key").as_path(),
            false,
        )
        .unwrap();
        std::fs::write(path("other.key"), &other.key_pem).unwrap();
        std::fs::write(path("token"), "s3cret\n").unwrap();
        let paths = [
            path("ca.pem"),
            path("agent.pem"),
            path("agent.key"),
            path("other.key"),
            path("token"),
        ];
        (dir, paths)
    }

    #[test]
    fn tls_and_token_flags_make_a_checked_config() {
        let (_dir, [ca, cert, key, _, token]) = files();
        let cli = parse(&[
            "--control",
            "https://127.0.0.1:7443",
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--token-file",
            &token,
            "--heartbeat-interval",
            "5s",
        ])
        .unwrap();
        let c = cli.agent.to_config("test/1".into()).unwrap();
        assert!(c.tls.ca_pem.is_some());
        assert!(c.tls.identity.is_some());
        assert_eq!(c.token, Some(BearerToken::new("s3cret").unwrap()));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn cert_and_key_go_together() {
        let e = parse(&["--control", "https://h:1", "--cert", "a.pem"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(e.to_string().contains("--key"), "{e}");
        let e = parse(&["--control", "https://h:1", "--key", "a.key"]).unwrap_err();
        assert!(e.to_string().contains("--cert"), "{e}");
    }

    #[test]
    fn bad_files_are_reported_naming_the_flag() {
        let (dir, [ca, cert, key, other_key, token]) = files();
        let error = |extra: &[&str]| {
            let mut args = vec!["--control", "https://h:1"];
            args.extend_from_slice(extra);
            parse(&args)
                .unwrap()
                .agent
                .to_config("t".into())
                .unwrap_err()
        };
        let missing = dir.path().join("missing.pem").display().to_string();
        let e = error(&["--ca", &missing]);
        assert!(
            e.starts_with(&format!("--ca {missing}: cannot read: ")),
            "{e}"
        );
        // A key where the CA should be.
        let e = error(&["--ca", &key]);
        assert!(
            e.starts_with(&format!("--ca {key}: no PEM certificate")),
            "{e}"
        );
        let e = error(&["--cert", &key, "--key", &key]);
        assert!(
            e.starts_with(&format!("--cert {key}: no PEM certificate")),
            "{e}"
        );
        let e = error(&["--cert", &cert, "--key", &cert]);
        assert!(
            e.starts_with(&format!(
                "--key {cert} (for --cert {cert}): no PEM private key"
            )),
            "{e}"
        );
        let e = error(&["--cert", &cert, "--key", &other_key]);
        assert_eq!(
            e,
            format!(
                "--key {other_key} (for --cert {cert}): does not belong to the certificate (its public key differs)"
            )
        );
        let empty = dir.path().join("empty").display().to_string();
        std::fs::write(&empty, "\n").unwrap();
        let e = error(&["--token-file", &empty]);
        assert_eq!(e, format!("--token-file {empty}: the token is empty"));

        // TLS material with a plaintext URL would silently not be used.
        let cli = parse(&["--control", "http://h:1", "--ca", &ca]).unwrap();
        let e = cli.agent.to_config("t".into()).unwrap_err();
        assert_eq!(
            e,
            "--control http://h:1: plaintext, but --ca or --cert is given; use https://"
        );
        // A token alone is fine with plaintext (a loopback server).
        let cli = parse(&["--control", "http://h:1", "--token-file", &token]).unwrap();
        assert!(cli.agent.to_config("t".into()).is_ok());
    }
}
