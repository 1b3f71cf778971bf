//! vanectl's command line: global flags and one subcommand per Admin call.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Where vanectl talks to when neither `--server` nor `VANE_SERVER` is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// Operate a Vane control server: push, inspect, compare and roll back
/// versioned configuration snapshots, and see what every agent runs.
///
/// Exit codes: 0 success; 1 the server refused (validation, compare-and-set
/// conflict, unknown group or version); 2 usage error or unreadable file;
/// 3 server unreachable.
#[derive(Debug, Parser)]
#[command(name = "vanectl", version)]
pub struct Cli {
    /// URL of the control server's API.
    #[arg(long, env = "VANE_SERVER", default_value = DEFAULT_SERVER, global = true, help_heading = "Global options")]
    pub server: String,

    /// Give up when the server has not answered within this time (e.g. 500ms, 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true, help_heading = "Global options")]
    pub timeout: Duration,

    /// Output format: a table (or text) for people, yaml or json for scripts.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table, global = true, help_heading = "Global options")]
    pub output: OutputFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns and plain sentences.
    Table,
    /// The same data as `json`, as YAML.
    Yaml,
    /// Machine-readable JSON (field names are a stable contract).
    Json,
}

/// vanectl's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a snapshot file and store it as the group's next version.
    ///
    /// Pushing content identical to the head stores nothing and says so.
    Push {
        /// The group to push to (created by its first push).
        group: String,
        /// The snapshot file, YAML or JSON ("-" reads standard input).
        #[arg(short, long, value_name = "FILE")]
        file: PathBuf,
        /// Refuse unless the group's head is this version (0: the group must not exist yet).
        #[arg(long, value_name = "N")]
        expect_version: Option<u64>,
        /// Validate and report what would happen; store nothing.
        #[arg(long)]
        dry_run: bool,
        /// Why this change is made (kept in the history).
        #[arg(short, long)]
        message: Option<String>,
    },
    /// Show one version of a group (the head unless --version is given).
    ///
    /// The table output is the canonical YAML under a commented header, so it
    /// can be saved, edited and pushed again.
    Get {
        /// The group.
        group: String,
        /// The version to show.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        version: Option<u64>,
    },
    /// List a group's versions, newest first.
    History {
        /// The group.
        group: String,
        /// Show at most this many versions.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
    /// Show the unified diff of the canonical YAML of two versions.
    Diff {
        /// The group.
        group: String,
        /// The old version.
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        a: u64,
        /// The new version.
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        b: u64,
    },
    /// Store a new version with the content of an older one.
    ///
    /// Versions are never reused: rolling back to 1 from 3 creates version 4.
    Rollback {
        /// The group.
        group: String,
        /// The version whose content to restore.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        to: u64,
        /// Refuse unless the group's head is this version.
        #[arg(long, value_name = "N")]
        expect_version: Option<u64>,
        /// Why (kept in the history).
        #[arg(short, long)]
        message: Option<String>,
    },
    /// Show every agent of a group (or of every group) and what it runs.
    Status {
        /// Only this group.
        group: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vanectl").chain(args.iter().copied()))
    }

    #[test]
    fn push_flags() {
        let cli = parse(&[
            "push",
            "edge",
            "-f",
            "s.yaml",
            "--expect-version",
            "0",
            "--dry-run",
            "-m",
            "why",
            "-o",
            "json",
            "--timeout",
            "250ms",
        ])
        .unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
        assert_eq!(cli.timeout, Duration::from_millis(250));
        match cli.command {
            Command::Push {
                group,
                file,
                expect_version,
                dry_run,
                message,
            } => {
                assert_eq!(group, "edge");
                assert_eq!(file, PathBuf::from("s.yaml"));
                assert_eq!(expect_version, Some(0));
                assert!(dry_run);
                assert_eq!(message.as_deref(), Some("why"));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let cli = parse(&["-o", "yaml", "--server", "http://h:1", "status"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Yaml);
        assert_eq!(cli.server, "http://h:1");
        assert!(matches!(cli.command, Command::Status { group: None }));
    }

    #[test]
    fn usage_errors() {
        // A missing file flag, version 0 and an unknown format are refused by clap (exit 2).
        assert!(parse(&["push", "edge"]).is_err());
        assert!(parse(&["get", "edge", "--version", "0"]).is_err());
        assert!(parse(&["diff", "edge", "1"]).is_err());
        assert!(parse(&["rollback", "edge"]).is_err());
        assert!(parse(&["status", "-o", "xml"]).is_err());
        assert!(parse(&["status", "--timeout", "soon"]).is_err());
    }

    #[test]
    fn get_version_is_a_subcommand_flag() {
        let cli = parse(&["get", "edge", "--version", "2"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Get {
                version: Some(2),
                ..
            }
        ));
    }
}
