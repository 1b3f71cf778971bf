//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `cargo xtask test`: installs missing test tools, then format check,
//!   clippy, build and every test, stopping at the first failure.
//! - `cargo xtask demo`: builds the binaries, starts a control server on a
//!   temporary data directory and walks through vanectl against it.
//! - `cargo xtask demo --cluster`: three etcd members, two replicas, a proxy
//!   under traffic given both replicas; a replica is killed.
//! - `cargo xtask bench proxy`: vane-proxy vs nginx under wrk; writes
//!   docs/benchmarks.md.
//! - `cargo xtask bench fanout` / `bench push`: the control plane under
//!   N simulated agents, and durable pushes per second.

mod bench;
mod cluster_demo;
mod demo;
mod process;
mod test;
mod traffic;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Vane's project automation.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build, start a control server on a temporary data dir, and walk through
    /// push, get, history, diff, rollback, a refused push, a dry run and status.
    Demo {
        /// Instead: three etcd members and two control-server replicas, a
        /// proxy (or sidecar) given both, a replica killed under traffic.
        #[arg(long)]
        cluster: bool,
    },
    /// Install missing test tools (when root), then run fmt --check, clippy,
    /// build and every test; stops at the first failure.
    Test,
    /// Performance numbers from real processes (see `cargo xtask bench --help`).
    Bench {
        #[command(subcommand)]
        which: bench::Bench,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let root = workspace_root();
    let result = match args.task {
        Task::Demo { cluster: false } => demo::run(&root),
        Task::Demo { cluster: true } => cluster_demo::run(&root),
        Task::Test => test::run(&root),
        Task::Bench { which } => bench::run(&root, which),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with the causes, not anyhow's Debug form (which adds a
            // backtrace whenever RUST_BACKTRACE is set).
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: xtask's manifest lives one level below it.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}
