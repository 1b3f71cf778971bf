//! The command-line flags every binary built on the agent shares (the
//! `vane-agent` sidecar, `vane-proxy`): who the node is, where the control
//! plane is, the cache, the defaults, reconnect pacing and logging. Binaries
//! `#[command(flatten)]` [`AgentArgs`] and add their own flags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use vane_model::Snapshot;

use crate::{AgentConfig, BackoffConfig, BreakerConfig};

/// The agent's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// This node's id, unique within its group.
    #[arg(long)]
    pub node_id: String,
    /// The group whose configuration to follow.
    #[arg(long)]
    pub group: String,
    /// Control-server URLs, comma-separated, tried in turn.
    #[arg(long, value_delimiter = ',', required = true)]
    pub control: Vec<String>,
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
    /// How long the breaker stays open before one probe.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub breaker_open: Duration,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
    pub fn to_config(&self, build: String) -> AgentConfig {
        AgentConfig {
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
            ..AgentConfig::default()
        }
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

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `info`).
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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
        let c = cli.agent.to_config("test/1".into());
        assert_eq!(c.servers, ["http://a:1", "http://b:2"]);
        assert_eq!(c.labels["zone"], "a");
        assert_eq!(c.backoff.cap, Duration::from_secs(2));
        assert_eq!(c.agent_build, "test/1");
        assert!(c.validate().is_ok());
        assert_eq!(cli.agent.load_defaults(), Ok(None));
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=v").is_err());
    }
}
