//! `vane-proxy`: Vane's data plane as a process. It follows a group's
//! configuration from the control servers through the embedded agent,
//! serves the listeners the snapshot declares, and on SIGTERM stops
//! accepting, drains within `--drain-timeout` and exits 0.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use vane_agent_sidecar::{AgentArgs, block_on_main, init_logs};
use vane_proxy_core::{HealthConfig, Proxy, ProxyConfig};

// glibc's malloc showed up at ~3% of the proxy's CPU (malloc, free,
// unlink_chunk) in profiles; mimalloc's per-thread free lists suit a
// thread-per-core data plane.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "vane-proxy",
    version = vane_build_info::LONG_VERSION,
    about = "Vane's L7/L4 data plane: serves the listeners, routes and clusters of a group's configuration"
)]
struct Args {
    #[command(flatten)]
    agent: AgentArgs,
    /// Address of the admin endpoint (/healthz, /readyz, /status, /config_dump, /metrics).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// How long removed listeners, and all listeners at shutdown, let open
    /// connections finish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Close downstream connections with no request started and none in
    /// flight for this long (gracefully: HTTP/2 gets a GOAWAY). Upgraded
    /// connections (WebSockets) follow their route's `idle_timeout_ms`.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// A new connection must send its first request head (or the HTTP/2
    /// preface), and every later HTTP/1 request head must be complete,
    /// within this long of its first byte, or the connection is closed.
    /// Also the admin endpoint's per-request and idle timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// Most downstream connections open at once, over all listeners; more
    /// are accepted and closed at once.
    #[arg(long, default_value_t = 100_000)]
    max_connections: usize,
    /// Data-plane worker threads, each a single-threaded runtime
    /// (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// The proxy reports itself degraded to the control plane (a rollout
    /// aborts on it; /status `data_plane_health`, metric
    /// vane_proxy_degraded) while more than this share of its answers over
    /// --unhealthy-window are errors: 502, 503 or 504 (its own or an
    /// upstream's) and TCP connections no upstream took. Counted from the
    /// moment the running version was applied; healthy again once the
    /// share drops to it or below.
    #[arg(long, default_value_t = 0.2)]
    unhealthy_error_ratio: f64,
    /// ... with at least this many answers in the window (fewer: healthy).
    #[arg(long, default_value_t = 20)]
    unhealthy_min_requests: u64,
    /// The sliding window the error ratio is taken over (in ten steps).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    unhealthy_window: Duration,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logs(&args.agent);
    // The control side (agent, admin) is light: one thread, plus the
    // blocking thread the agent applies snapshots on (compiling them and
    // switching the data plane). Requests run on the data-plane workers the
    // proxy starts itself.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    block_on_main(runtime, run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Before anything is announced: a signal right after the address is
    // printed must mean "drain", not the default "die".
    let termination = vane_admin_http::Termination::install()
        .context("installing the SIGTERM/SIGINT handlers")?;
    let defaults = args.agent.load_defaults().map_err(anyhow::Error::msg)?;
    let config = ProxyConfig {
        agent: args
            .agent
            .to_config(format!("vane-proxy/{}", env!("CARGO_PKG_VERSION")))
            .map_err(anyhow::Error::msg)?,
        defaults,
        drain_timeout: args.drain_timeout,
        max_connections: args.max_connections,
        workers: args.workers,
        idle_timeout: args.idle_timeout,
        header_read_timeout: args.header_read_timeout,
        health: HealthConfig {
            error_ratio: args.unhealthy_error_ratio,
            min_requests: args.unhealthy_min_requests,
            window: args.unhealthy_window,
        },
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

    termination.received().await;
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
