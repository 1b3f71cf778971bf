//! vanectl's command line: global flags and one subcommand per Admin call.

use std::path::PathBuf;
use std::time::Duration;

use std::fmt;

use clap::{Parser, Subcommand, ValueEnum};

/// Where vanectl talks to when neither `--server` nor `VANE_SERVER` is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// Operate a Vane control server: push, inspect, compare and roll back
/// versioned configuration snapshots, and see what every agent runs.
///
/// Exit codes: 0 success; 1 the server refused (validation, compare-and-set
/// conflict, unknown group or version, not authenticated, not allowed);
/// 2 usage error or unreadable file; 3 server unreachable (including a
/// failed TLS handshake).
///
/// The bearer token may also be given as VANE_TOKEN (the token itself).
#[derive(Debug, Parser)]
#[command(name = "vanectl", version)]
pub struct Cli {
    /// URL of the control server's API: https://host:port (TLS) or
    /// http://host:port (plaintext; without a scheme: https:// when --ca or
    /// --cert is given, else http://).
    #[arg(long, env = "VANE_SERVER", default_value = DEFAULT_SERVER, global = true, help_heading = "Global options")]
    pub server: String,

    /// PEM file of the CA that signs the server's certificate (default for
    /// https://: the public web PKI roots).
    #[arg(
        long,
        env = "VANE_CA",
        value_name = "FILE",
        global = true,
        help_heading = "Global options"
    )]
    pub ca: Option<PathBuf>,

    /// PEM file of the client certificate (mTLS; needs --key).
    #[arg(
        long,
        env = "VANE_CERT",
        value_name = "FILE",
        requires = "key",
        global = true,
        help_heading = "Global options"
    )]
    pub cert: Option<PathBuf>,

    /// PEM file of the client certificate's private key (needs --cert).
    #[arg(
        long,
        env = "VANE_KEY",
        value_name = "FILE",
        requires = "cert",
        global = true,
        help_heading = "Global options"
    )]
    pub key: Option<PathBuf>,

    /// File holding a bearer token, sent as `authorization: Bearer <token>`
    /// (or VANE_TOKEN with the token itself).
    #[arg(
        long,
        env = "VANE_TOKEN_FILE",
        value_name = "FILE",
        global = true,
        help_heading = "Global options"
    )]
    pub token_file: Option<PathBuf>,

    /// The token of VANE_TOKEN, which `main` reads from the environment: it
    /// is no flag, so that it never shows in a process listing.
    #[arg(skip)]
    pub token: Option<Secret>,

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
    /// List the audit log, newest first: every push and rollback, and every
    /// refused attempt, with who, when and why.
    Audit {
        /// Only this group (default: every group you may read).
        group: Option<String>,
        /// Show at most this many entries (default: the server's, 100).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
    /// Show who the server takes you for and what you may do.
    #[command(name = "whoami")]
    WhoAmI,
}

/// A secret from the environment (`VANE_TOKEN`); `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
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
    fn tls_flags_are_global_and_cert_needs_key() {
        let cli = parse(&[
            "status",
            "--ca",
            "ca.pem",
            "--cert",
            "op.pem",
            "--key",
            "op.key",
            "--token-file",
            "tok",
        ])
        .unwrap();
        assert_eq!(cli.ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(cli.cert, Some(PathBuf::from("op.pem")));
        assert_eq!(cli.key, Some(PathBuf::from("op.key")));
        assert_eq!(cli.token_file, Some(PathBuf::from("tok")));
        assert_eq!(cli.token, None);
        let e = parse(&["--cert", "op.pem", "status"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--key"), "{e}");
        let e = parse(&["status", "--key", "op.key"]).unwrap_err();
        assert!(e.to_string().contains("--cert"), "{e}");
    }

    #[test]
    fn audit_and_whoami() {
        let cli = parse(&["audit", "edge", "--limit", "5"]).unwrap();
        match cli.command {
            Command::Audit { group, limit } => {
                assert_eq!(group.as_deref(), Some("edge"));
                assert_eq!(limit, Some(5));
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(matches!(
            parse(&["audit"]).unwrap().command,
            Command::Audit {
                group: None,
                limit: None
            }
        ));
        assert!(parse(&["audit", "--limit", "0"]).is_err());
        assert!(matches!(
            parse(&["whoami", "-o", "json"]).unwrap().command,
            Command::WhoAmI
        ));
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
