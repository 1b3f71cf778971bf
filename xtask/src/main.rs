//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `cargo xtask test`: installs missing test tools (etcd, protoc, and
//!   Envoy, grpcio and grpc-js-xds for the xDS tests), then format check,
//!   tidy, clippy, build and every test, stopping at the first failure.
//! - `cargo xtask tidy`: the codebase's own rules (a `//!` line opening
//!   every file, file length, no import circles, which crate may depend on
//!   which).
//! - `cargo xtask demo`: builds the binaries, starts a control server with
//!   mTLS on a temporary data directory and walks through vanectl against
//!   it (`--plaintext`: the same without TLS).
//! - `cargo xtask demo --cluster`: three etcd members, two replicas, a proxy
//!   under traffic given both replicas; a replica is killed.
//! - `cargo xtask bench proxy`: vane-proxy vs nginx under wrk; writes
//!   docs/benchmarks.md.
//! - `cargo xtask bench fanout` / `bench push`: the control plane under
//!   N simulated agents, and durable pushes per second.
//! - `cargo xtask bench longpoll`: N held HTTP long polls on one
//!   vane-control against N etcd watches: memory per held poll, fan-out time.
//! - `cargo xtask certs --out DIR`: demo certificates and policy for mTLS.
//! - `cargo xtask fuzz [--seconds N] [--target NAME]`: runs the cargo-fuzz
//!   targets in fuzz/ (installing cargo-fuzz when missing).
//! - `cargo xtask xds-descriptors`: regenerates `xds/descriptors.bin` from
//!   the protos shipped with envoy-types.

mod apt;
mod bench;
mod certs;
mod cluster_demo;
mod console_deps;
mod demo;
mod deploy_deps;
mod doctests;
mod etcd;
mod fuzz;
mod harness;
mod man;
mod narrate;
mod openfeature_deps;
mod pinned;
mod process;
mod test;
mod tidy;
mod traffic;
mod xds_deps;
mod xds_descriptors;

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
    /// Build, generate demo certificates, start a control server with mTLS
    /// and a policy on a temporary data dir, and walk through push, get,
    /// history, diff, rollback, refused pushes (one by a mere reader), the
    /// audit trail, a dry run and status, then a sidecar agent and a proxy
    /// under traffic that outlive a killed control server, and a stock
    /// Envoy following a group over xDS.
    Demo {
        /// Instead: three etcd members and two control-server replicas, a
        /// proxy (or sidecar) given both, a replica killed under traffic
        /// (plaintext on loopback).
        #[arg(long)]
        cluster: bool,
        /// The same tour without TLS: plaintext on loopback, no client
        /// certificates, no policy (anyone may do anything).
        #[arg(long)]
        plaintext: bool,
    },
    /// Install missing test tools (when root), then run fmt --check, tidy,
    /// clippy, build and every test; stops at the first failure.
    Test,
    /// Check the rules no compiler checks: every .rs file opens with a
    /// `//!` line, has at most 800 lines before its unit tests, no circle of
    /// imports between the files of a crate, and each crate depends only on
    /// the workspace crates its rule allows.
    Tidy,
    /// Performance numbers from real processes (see `cargo xtask bench --help`).
    Bench {
        #[command(subcommand)]
        which: bench::Bench,
    },
    /// Write demo certificates: ca.pem, server.pem/.key (127.0.0.1,
    /// localhost), operator, reader and agent (agent-edge) .pem/.key pairs,
    /// and policy.yaml binding them.
    Certs {
        /// Directory to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace files that already exist.
        #[arg(long)]
        force: bool,
    },
    /// Run each cargo-fuzz target in fuzz/ for a while (nightly, or stable
    /// with RUSTC_BOOTSTRAP=1); a crash fails the run and names its input.
    Fuzz(fuzz::FuzzArgs),
    /// Write vanectl's man pages (vanectl.1 and one per subcommand) into
    /// DIR (default: target/man); read one with `man -l DIR/vanectl.1`.
    Man {
        /// Directory to write to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Regenerate xds/descriptors.bin (the descriptor set vane-xds renders
    /// Envoy's JSON with) from the .proto files the envoy-types crate ships.
    XdsDescriptors,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let root = workspace_root();
    let result = match args.task {
        Task::Demo {
            cluster: false,
            plaintext,
        } => demo::run(
            &root,
            if plaintext {
                demo::Security::Plaintext
            } else {
                demo::Security::Mtls
            },
        ),
        // The cluster demo is plaintext on loopback either way.
        Task::Demo { cluster: true, .. } => cluster_demo::run(&root),
        Task::Test => test::run(&root),
        Task::Tidy => tidy::run(&root),
        Task::Bench { which } => bench::run(&root, which),
        Task::Certs { out, force } => certs::run(&out, force),
        Task::Fuzz(args) => fuzz::run(&root, args),
        Task::Man { out } => man::run(&root, out),
        Task::XdsDescriptors => xds_descriptors::run(&root),
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
