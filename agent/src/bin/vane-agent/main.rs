//! `vane-agent`: the agent library as a sidecar process, for programs that
//! cannot link Rust. It materialises the running snapshot to a file, can
//! veto candidates with a check command (like `nginx -t`), runs a command
//! after each change, and serves `/status`, `/healthz` and `/metrics`.

mod admin;
mod output;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use vane_agent::{Agent, AgentConfig, BackoffConfig, BreakerConfig};

use output::{OutputFormat, Outputs};

#[derive(Debug, Parser)]
#[command(
    name = "vane-agent",
    version,
    about = "Follow a Vane control server and materialise its configuration to a file"
)]
struct Args {
    /// This node's id, unique within its group.
    #[arg(long)]
    node_id: String,
    /// The group whose configuration to follow.
    #[arg(long)]
    group: String,
    /// Control-server URLs, comma-separated, tried in turn.
    #[arg(long, value_delimiter = ',', required = true)]
    control: Vec<String>,
    /// Directory of the disk cache (the last applied snapshot).
    #[arg(long)]
    cache_dir: PathBuf,
    /// A snapshot file (as `vanectl push` takes) served when there is no usable cache.
    #[arg(long)]
    defaults: Option<PathBuf>,
    /// File rewritten atomically with every applied version.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Format of --output and of the candidate given to --check-cmd.
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    format: OutputFormat,
    /// Command that vets a candidate before it is applied; the candidate file's
    /// path is its last argument. A non-zero exit refuses (NACKs) the snapshot
    /// with the command's stderr as the reason.
    #[arg(long)]
    check_cmd: Option<String>,
    /// Longest a --check-cmd run may take.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    check_timeout: Duration,
    /// Command run after each successful apply (env: VANE_VERSION, VANE_HASH,
    /// VANE_SOURCE, VANE_OUTPUT).
    #[arg(long)]
    on_change: Option<String>,
    /// Address of the admin endpoint (/status, /healthz, /metrics).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// A label reported to the control plane, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
    if args.check_cmd.is_some() && args.output.is_none() && args.format == OutputFormat::Json {
        tracing::debug!("--check-cmd without --output: candidates are written next to the cache");
    }
    let outputs = Arc::new(Outputs::new(
        args.output.clone(),
        args.format,
        args.group.clone(),
        args.cache_dir.clone(),
        args.check_cmd.clone(),
        args.check_timeout,
    ));
    let config = AgentConfig {
        servers: args.control.clone(),
        node_id: args.node_id.clone(),
        group: args.group.clone(),
        labels: args.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
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
    };
    let mut builder = Agent::builder().config(config);
    if let Some(d) = defaults {
        builder = builder.defaults(d);
    }
    if args.check_cmd.is_some() {
        let o = outputs.clone();
        builder =
            builder.validator(move |c: &vane_agent::Current, _: &vane_agent::Current| o.check(c));
    }
    if args.output.is_some() {
        let o = outputs.clone();
        builder = builder.sink(move |c: &vane_agent::Current| o.write(c));
    }
    let agent = builder.start()?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = match args.admin_listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--admin-listen {addr}"))?;
            let local = listener.local_addr()?;
            println!("vane-agent admin listening on {local}");
            Some(tokio::spawn(admin::serve(
                listener,
                agent.clone(),
                stop_rx.clone(),
            )))
        }
    };
    let on_change_task = args.on_change.clone().map(|cmd| {
        tokio::spawn(output::run_on_change(
            cmd,
            agent.subscribe(),
            args.output.clone(),
            stop_rx.clone(),
        ))
    });

    wait_for_signal().await?;
    tracing::info!("shutting down");
    stop_tx.send_replace(true);
    agent.shutdown().await;
    for task in [admin_task, on_change_task].into_iter().flatten() {
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!("a task did not stop within 5s");
        }
    }
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
