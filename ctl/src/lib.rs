//! `vanectl`, the operators' CLI for a Vane control server: argument
//! parsing, the calls to the Admin API, output formatting and exit codes.
//! It depends on the wire contract, the model, client TLS and the xDS
//! translation only, never on the server or a store. The `vanectl` binary only calls [`main`].
//!
//! # Layout
//! - `args`: the command line (clap).
//! - `commands`: one function per subcommand, request in, text out; the
//!   rollout commands and `push --wait` follow the server by polling.
//! - `client`: connecting to the server (URLs and failover, TLS, timeouts,
//!   message sizes).
//! - `config`: the config file's contexts, and how flags, environment and
//!   context combine.
//! - `snapshot_file`: reading the file to push (and `get` output pushed back).
//! - `compare`: canonical forms, summary and warnings of `diff -f` and
//!   `push --dry-run`.
//! - `credentials`: `--ca`/`--cert`/`--key` and the bearer token, checked
//!   before connecting; recognising TLS failures.
//! - `output`: tables, YAML and JSON (the JSON field names are a contract).
//! - `error`: failures and their exit codes (0 ok, 1 refused, 2 usage, 3
//!   unreachable, 4 not done in the time given).

mod args;
mod client;
mod commands;
mod compare;
mod config;
mod credentials;
mod error;
mod output;
mod snapshot_file;

use std::io::Write as _;
use std::process::ExitCode;

pub use args::{
    Cli, Command, ConfigCommand, ControlArgs, DEFAULT_SERVER, DEFAULT_TIMEOUT, DEFAULT_WAIT, GetAs,
    OutputFormat, RolloutCommand, Secret, StartArgs, Steps, XdsClient,
};
pub use error::{CliError, Failure};

/// Parses the command line, runs the command, prints the result on stdout or
/// one `error: …` line on stderr, and returns the exit code.
pub fn main() -> ExitCode {
    // clap prints usage errors itself and exits with code 2.
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    cli.from_env = ["server", "ca", "cert", "key", "token_file"]
        .into_iter()
        .filter(|id| matches.value_source(id) == Some(clap::parser::ValueSource::EnvVariable))
        .map(str::to_owned)
        .collect();
    // Not a flag (see `Cli::token`). A non-Unicode value is kept, lossily,
    // so that the token check refuses it by name rather than ignoring it.
    cli.token = std::env::var_os("VANE_TOKEN").map(|t| Secret(t.to_string_lossy().into_owned()));
    // The config file's default place, when --config and VANE_CONFIG are not given.
    cli.default_config = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| std::path::PathBuf::from(h).join(config::DEFAULT_CONFIG));
    // What a following command (`rollout status -w`, `push --wait`) prints
    // as it goes; errors writing it show again when the result is written.
    let mut live = |line: &str| {
        let _ = write_stdout(line);
    };
    match run(&cli, &mut live) {
        Ok(text) => match write_stdout(&text) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Err(e) => {
            // A failed wait also has a result to show (who refused, who is missing).
            let _ = write_stdout(&e.output);
            fail(&e)
        }
    }
}

/// Runs one command on a single-threaded runtime; returns what to print.
/// `live` receives the lines a following command prints before its result.
pub fn run(cli: &Cli, live: &mut dyn FnMut(&str)) -> Result<String, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::usage(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(commands::execute(cli, live))
}

/// Writes and flushes `text`; a closed pipe (`vanectl history edge | head -1`)
/// is not an error.
fn write_stdout(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::usage(format!(
            "cannot write to standard output: {e}"
        ))),
    }
}

fn fail(e: &CliError) -> ExitCode {
    // `diff -f` finding a difference exits 1 with nothing to say on stderr.
    if !e.message.is_empty() {
        eprintln!("error: {e}");
    }
    ExitCode::from(e.kind.exit_code())
}
