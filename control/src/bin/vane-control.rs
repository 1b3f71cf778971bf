//! `vane-control`: the control server binary. Parses flags, sets up logging
//! and signal handling, then runs [`vane_control::Server`].

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use vane_control::{Config, Server};

/// The Vane control server: stores versioned configuration snapshots per
/// group and streams them to agents.
#[derive(Debug, Parser)]
#[command(name = "vane-control", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the bound address is
    /// printed on stdout as `vane-control listening on ADDR`).
    #[arg(long, default_value = vane_control::server::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Directory of the embedded store (created if missing).
    #[arg(long, default_value = vane_control::server::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Largest encoded snapshot accepted, in bytes.
    #[arg(long, default_value_t = vane_model::DEFAULT_MAX_SNAPSHOT_BYTES)]
    max_snapshot_bytes: usize,
    /// How long shutdown waits for open streams and pushes in progress.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// How long a disconnected agent stays listed in `vanectl status`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    forget_agents_after: Duration,
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line on stderr, not also a log record saying the same.
            eprintln!("vane-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal, not for log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM arriving right after the address is printed
    // must already mean "drain", not the default "die".
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let config = Config {
        listen: args.listen,
        data_dir: args.data_dir,
        max_snapshot_bytes: args.max_snapshot_bytes,
        shutdown_grace: args.shutdown_grace,
        agent_forget_after: args.forget_agents_after,
        ..Config::default()
    };
    let server = Server::bind(config).await?;

    // Tests and scripts read this exact line to find the port.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "vane-control listening on {}", server.local_addr())
        .and_then(|()| stdout.flush())
        .context("writing the listen address to stdout")?;
    drop(stdout);

    let shutdown = async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "signal received");
    };
    server.serve(shutdown).await?;
    Ok(())
}
