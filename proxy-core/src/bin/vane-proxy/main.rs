//! `vane-proxy`: Vane's data plane as a process. It follows a group's
//! configuration from the control servers through the embedded agent,
//! serves the listeners the snapshot declares, and on SIGTERM stops
//! accepting, drains within `--drain-timeout` and exits 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use vane_agent::{AgentConfig, BackoffConfig, BreakerConfig};
use vane_proxy_core::{Proxy, ProxyConfig};

// glibc's malloc showed up at ~3% of the proxy's CPU (malloc, free,
// unlink_chunk) in profiles; mimalloc's per-thread free lists suit a
// thread-per-core data plane.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "vane-proxy",
    version,
    about = "Vane's L7/L4 data plane: serves the listeners, routes and clusters of a group's configuration"
)]
struct Args {
    /// This node's id, unique within its group.
    #[arg(long)]
    node_id: String,
    /// The group whose configuration to serve.
    #[arg(long)]
    group: String,
    /// Control-server URLs, comma-separated, tried in turn.
    #[arg(long, value_delimiter = ',', required = true)]
    control: Vec<String>,
    /// Directory of the disk cache (the last applied snapshot), served at
    /// startup before any control server answers.
    #[arg(long)]
    cache_dir: PathBuf,
    /// A snapshot file (as `vanectl push` takes) served when there is no usable cache.
    #[arg(long)]
    defaults: Option<PathBuf>,
    /// Address of the admin endpoint (/healthz, /readyz, /status, /config_dump, /metrics).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// A label reported to the control plane, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// How long removed listeners, and all listeners at shutdown, let open
    /// connections finish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Close downstream connections idle this long (between one and two
    /// periods); also bounds clients that never finish their headers.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// Most downstream connections open at once; more are closed at once.
    #[arg(long, default_value_t = 100_000)]
    max_connections: usize,
    /// Data-plane worker threads, each a single-threaded runtime
    /// (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Degraded once the control plane has not confirmed the config for this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    stale_after: Duration,
    /// First reconnect delay ceiling (full jitter).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    backoff_base: Duration,
    /// Largest reconnect delay.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    backoff_cap: Duration,
    /// Consecutive failed connects that open the circuit breaker.
    #[arg(long, default_value_t = 5)]
    breaker_threshold: u32,
    /// How long the breaker stays open before one probe.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    breaker_open: Duration,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?}: empty key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logs(args.log_format);
    // The control side (agent, admin, activation) is light: one thread.
    // Requests run on the data-plane workers the proxy starts itself.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn init_logs(format: LogFormat) {
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

async fn run(args: Args) -> anyhow::Result<()> {
    let defaults = match &args.defaults {
        None => None,
        Some(path) => {
            let spec = vane_model::file::read_file(path)
                .with_context(|| format!("--defaults {}", path.display()))?;
            let snapshot = vane_model::validate(spec)
                .map_err(|e| anyhow::anyhow!("--defaults {}: {e}", path.display()))?;
            Some(snapshot)
        }
    };
    let config = ProxyConfig {
        agent: AgentConfig {
            servers: args.control.clone(),
            node_id: args.node_id.clone(),
            group: args.group.clone(),
            labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
            agent_build: format!("vane-proxy/{}", env!("CARGO_PKG_VERSION")),
            cache_dir: Some(args.cache_dir.clone()),
            backoff: BackoffConfig {
                base: args.backoff_base,
                cap: args.backoff_cap,
            },
            breaker: BreakerConfig {
                failure_threshold: args.breaker_threshold,
                open_for: args.breaker_open,
            },
            stale_after: args.stale_after,
            ..AgentConfig::default()
        },
        defaults,
        drain_timeout: args.drain_timeout,
        max_connections: args.max_connections,
        workers: args.workers,
        idle_timeout: args.idle_timeout,
    };
    let proxy = Proxy::start(config)?;

    let stop_admin = CancellationToken::new();
    let admin = match args.admin_listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--admin-listen {addr}"))?;
            let local = listener.local_addr()?;
            println!("vane-proxy admin listening on {local}");
            let (proxy, stop) = (proxy.clone(), stop_admin.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = vane_proxy_core::admin::serve(listener, proxy, stop).await {
                    tracing::error!(error = %e, "admin endpoint failed");
                }
            }))
        }
    };

    wait_for_signal().await?;
    tracing::info!(drain_timeout = ?args.drain_timeout, "shutting down: draining connections");
    proxy.shutdown().await;
    stop_admin.cancel();
    if let Some(task) = admin
        && tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
    {
        tracing::warn!("the admin endpoint did not stop within 5s");
    }
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
