//! vanectl's command line: global flags and one subcommand per Admin call.

use std::path::PathBuf;
use std::time::Duration;

use std::fmt;

use clap::{Parser, Subcommand, ValueEnum};

/// Where vanectl talks to when neither `--server` nor `VANE_SERVER` is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// How long a call may take when `--timeout` is not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `push --wait` waits when given without a value.
pub const DEFAULT_WAIT: &str = "2m";

/// Operate a Vane control server: push, inspect, compare and roll back
/// versioned configuration snapshots, and see what every agent runs.
///
/// Exit codes: 0 success; 1 the server refused (validation, compare-and-set
/// conflict, unknown group or version, not authenticated, not allowed), or
/// what was waited for failed (an agent NACKed with `push --wait`, a rollout
/// ended ROLLED_BACK or SUPERSEDED with `rollout status -w`), or `diff -f`
/// found a difference; 2 usage error or unreadable file; 3 server
/// unreachable (including a failed TLS handshake; with several URLs: none
/// answered); 4 still not done when the time to wait passed (`push
/// --wait`, `rollout status -w --timeout`).
///
/// The bearer token may also be given as VANE_TOKEN (the token itself).
///
/// Contexts: a config file ($VANE_CONFIG, default
/// ~/.config/vane/config.yaml) names contexts (server URLs, CA, client
/// certificate and key, token file) and a current one; `--context NAME`
/// (or VANE_CONTEXT) picks another. A flag or its environment variable
/// wins over the context, the context over the built-in default. See
/// `vanectl config --help`.
#[derive(Debug, Parser)]
#[command(name = "vanectl", version = vane_build_info::LONG_VERSION)]
pub struct Cli {
    /// URL of the control server's API: https://host:port (TLS) or
    /// http://host:port (plaintext; without a scheme: https:// when --ca or
    /// --cert is given, else http://). Several URLs, comma-separated
    /// (replicas): each call goes to the first that answers, failing over
    /// to the next when one is unreachable. Default: the context's, else
    /// http://127.0.0.1:7070.
    #[arg(
        long,
        env = "VANE_SERVER",
        value_name = "URL[,URL...]",
        global = true,
        help_heading = "Global options"
    )]
    pub server: Option<String>,

    /// Use this context of the config file instead of its current_context.
    #[arg(
        long,
        env = "VANE_CONTEXT",
        value_name = "NAME",
        global = true,
        help_heading = "Global options"
    )]
    pub context: Option<String>,

    /// The config file with the contexts (default:
    /// ~/.config/vane/config.yaml; a missing default file means no contexts).
    #[arg(
        long = "config",
        env = "VANE_CONFIG",
        value_name = "FILE",
        global = true,
        help_heading = "Global options"
    )]
    pub config: Option<PathBuf>,

    /// Where the config file is when neither --config nor VANE_CONFIG is
    /// given: `main` fills it in from $HOME (tests leave it empty).
    #[arg(skip)]
    pub default_config: Option<PathBuf>,

    /// The ids of the global options whose value came from an environment
    /// variable (`server`, `ca`, `cert`, `key`, `token_file`): `main` fills
    /// it in, so that a context named with --context or VANE_CONTEXT
    /// outranks the environment for the settings it sets.
    #[arg(skip)]
    pub from_env: Vec<String>,

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

    /// Give up when the server has not answered within this time (e.g.
    /// 500ms, 10s, 1m; default 10s). With `rollout status -w`: how long to
    /// follow the rollout (default: until it ends), each call still limited to 10s.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, global = true, help_heading = "Global options")]
    pub timeout: Option<Duration>,

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

/// What `get --as` renders a version as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GetAs {
    /// Envoy xDS resources.
    Xds,
}

/// Whose xDS view `get --as xds` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum XdsClient {
    /// Envoy: socket listeners, route configurations, clusters, endpoints.
    #[default]
    Envoy,
    /// gRPC proxyless clients: API listeners instead of socket listeners.
    Grpc,
}

impl XdsClient {
    /// The name on the command line and in the JSON (`envoy`, `grpc`).
    pub fn as_str(self) -> &'static str {
        match self {
            XdsClient::Envoy => "envoy",
            XdsClient::Grpc => "grpc",
        }
    }
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
        /// Validate and report what would happen; store nothing. Also prints
        /// the diff of the head and the file, a summary (listeners, routes,
        /// clusters added, removed, changed), and warns when the push
        /// removes every listener or every route.
        #[arg(long)]
        dry_run: bool,
        /// Why this change is made (kept in the history).
        #[arg(short, long)]
        message: Option<String>,
        /// After the push, wait until every connected agent of the group
        /// ACKed the new version (exit 0), one NACKed it (exit 1) or
        /// TIMEOUT passed (exit 4, naming the agents still missing).
        /// Without a value: 2m.
        #[arg(long, value_name = "TIMEOUT", num_args = 0..=1, require_equals = true,
              default_missing_value = DEFAULT_WAIT, value_parser = humantime::parse_duration,
              conflicts_with = "dry_run")]
        wait: Option<Duration>,
        /// End the group's running rollout (it becomes SUPERSEDED) instead
        /// of being refused while one runs.
        #[arg(long)]
        supersede: bool,
    },
    /// Show one version of a group (the head unless --version is given).
    ///
    /// The table output is the canonical YAML under a commented header, so it
    /// can be saved, edited and pushed again.
    ///
    /// With `--as xds`: the Envoy xDS resources Vane serves for that version
    /// (listeners, route configurations, clusters, endpoints), translated
    /// here exactly as the control server translates them; a table of TYPE,
    /// NAME and VERSION (the resource's content hash), or each resource in
    /// Envoy's JSON with -o json|yaml.
    Get {
        /// The group.
        group: String,
        /// The version to show.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        version: Option<u64>,
        /// Show the version as another configuration format: `xds` (the
        /// resources stock Envoy and gRPC clients receive).
        #[arg(long = "as", value_enum, value_name = "FORMAT")]
        view: Option<GetAs>,
        /// With `--as xds`: whose view: `envoy` (the socket listeners, what a
        /// wildcard subscriber gets; the default) or `grpc` (the API
        /// listeners gRPC's proxyless clients ask for by name).
        #[arg(long, value_enum, value_name = "CLIENT", requires = "view")]
        client: Option<XdsClient>,
        /// Show private keys in clear (needs role admin on the group, and
        /// TLS unless the server is on loopback). Without it each key is
        /// `redacted:sha256:<fingerprint>`, which `push` accepts back.
        #[arg(long)]
        show_secrets: bool,
    },
    /// List a group's versions, newest first.
    History {
        /// The group.
        group: String,
        /// Show at most this many versions.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
    /// Show the unified diff of the canonical YAML of two versions, or of a
    /// local file against the head (or --version N).
    ///
    /// `vanectl diff G A B` compares two stored versions. `vanectl diff G -f
    /// FILE` compares the file's canonical form (what `get` would show once
    /// it is pushed) with the head's: exit 0 when they are equal, 1 when
    /// they differ (as `kubectl diff`), 2 for a usage error, a file that
    /// cannot be read or is invalid, or a refusal by the server (an unknown
    /// --version), 3 when the server is unreachable. A
    /// group with no version yet compares as empty.
    Diff {
        /// The group.
        group: String,
        /// The old version.
        #[arg(value_parser = clap::value_parser!(u64).range(1..),
              required_unless_present = "file", conflicts_with = "file")]
        a: Option<u64>,
        /// The new version.
        #[arg(value_parser = clap::value_parser!(u64).range(1..),
              required_unless_present = "file", conflicts_with = "file")]
        b: Option<u64>,
        /// Compare this snapshot file, YAML or JSON ("-" reads standard
        /// input; `get -o json|yaml` output is accepted), with the head.
        #[arg(short, long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// With -f: compare with this version instead of the head (without
        /// -f: a usage error).
        #[arg(long, value_name = "N", requires = "file",
              value_parser = clap::value_parser!(u64).range(1..))]
        version: Option<u64>,
        /// Show private keys in clear (needs role admin on the group).
        /// Without it a changed key shows as its fingerprint changing.
        #[arg(long)]
        show_secrets: bool,
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
        /// Restore the version even if one of its certificates has expired
        /// or is not valid yet (refused without it).
        #[arg(long)]
        force: bool,
    },
    /// Show every agent of a group (or of every group you may read) and
    /// what it runs.
    ///
    /// An unknown group exits 1 naming the nearest existing one. With
    /// `--fail-on`, exits 1 (after printing) when a selected agent is in one
    /// of the listed states: a gate for CI.
    Status {
        /// Only this group.
        group: Option<String>,
        /// Only agents whose labels match: `k=v`, `k!=v`, `k in (a,b)`,
        /// `k notin (a,b)`, `k`, `!k`, comma-separated (as rollouts).
        #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
        selector: Option<String>,
        /// Exit 1 when any selected agent is in one of these states
        /// (comma-separated, any case): synced, stale, nacked, not_sent,
        /// unacked.
        #[arg(long, value_name = "STATES")]
        fail_on: Option<String>,
    },
    /// List every group you may read: head version, hash, age of the head,
    /// and its agents by state.
    Groups,
    /// Delete a group: its versions go, its number sequence stays (pushed
    /// again, it continues after its last version).
    ///
    /// Refused while agents of the group are connected, or a rollout runs,
    /// unless --force: connected agents then keep the version they run and
    /// get nothing new; the rollout ends SUPERSEDED. Needs role operator;
    /// audited.
    Delete {
        /// The group.
        group: String,
        /// Delete even while agents are connected or a rollout runs.
        #[arg(long)]
        force: bool,
        /// Why (kept in the audit log).
        #[arg(short, long)]
        message: Option<String>,
    },
    /// Print each new version of a group as it is published, until
    /// interrupted (Ctrl-C exits 0).
    ///
    /// Starts by printing the current head, then follows: one line per
    /// version (VERSION, HASH, TIME, AUTHOR, MESSAGE), or one JSON object per
    /// line with -o json. A lost connection is retried with backoff; the
    /// versions published meanwhile are printed from the history (or named
    /// as missed when retention removed them). The watcher is an observer:
    /// it never shows in `status`.
    Watch {
        /// The group.
        group: String,
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
    /// Show this client's version and build commit, and the server's. When
    /// the server does not answer, the client's is printed before the
    /// error (exit 3).
    Version,
    /// Print a shell completion script for vanectl (no server is asked).
    ///
    /// bash: `source <(vanectl completion bash)`, or save it as
    /// /etc/bash_completion.d/vanectl; zsh: save it as `_vanectl` in a
    /// directory of $fpath; fish: save it as
    /// ~/.config/fish/completions/vanectl.fish; PowerShell: add
    /// `vanectl completion powershell | Out-String | Invoke-Expression` to
    /// your profile.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Show or change the config file's contexts (no server is asked)
    ///
    /// The file ($VANE_CONFIG, default ~/.config/vane/config.yaml) is YAML:
    ///
    ///   current_context: prod
    ///   contexts:
    ///     prod:
    ///       server: https://vane-a:7070,https://vane-b:7070   # or a list
    ///       ca: /etc/vane/ca.pem
    ///       cert: ~/.config/vane/op.pem
    ///       key: ~/.config/vane/op.key
    ///       token_file: ~/.config/vane/token
    ///     dev:
    ///       server: http://127.0.0.1:7070
    ///
    /// Relative paths are relative to the file's directory; `~/` is $HOME.
    #[command(verbatim_doc_comment)]
    Config {
        /// What to do.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Progressive rollouts: a candidate version goes to a growing cohort
    /// of agents, advances on their ACKs and health, and rolls itself back.
    Rollout {
        /// What to do with the group's rollout.
        #[command(subcommand)]
        command: RolloutCommand,
    },
}

/// `vanectl config …`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum ConfigCommand {
    /// List the contexts, the current one marked with `*` (-o json|yaml: a
    /// list of {name, current, servers, ca, cert, key, token_file}).
    GetContexts,
    /// Make NAME the current context (rewrites the file atomically, mode 0600).
    UseContext {
        /// The context.
        name: String,
    },
    /// Print the config file as it is.
    View,
}

/// `vanectl rollout …`.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Store FILE as the group's candidate version and start rolling it out
    /// in steps; the head before it stays the stable version.
    Start(StartArgs),
    /// Show the group's current (or last) rollout: state, step, cohort and events.
    ///
    /// With -w, follow it until it ends: exit 0 COMPLETE, 1 ROLLED_BACK or
    /// SUPERSEDED, 4 still running when --timeout passes.
    Status {
        /// The group.
        group: String,
        /// Follow the rollout until it ends, printing each change.
        #[arg(short = 'w', long = "watch")]
        watch: bool,
    },
    /// Hold the rollout at its step until `resume`.
    Pause(ControlArgs),
    /// Continue a paused rollout.
    Resume(ControlArgs),
    /// Jump to the last step (100%).
    Promote(ControlArgs),
    /// Stop the rollout and restore the stable content as a new version.
    Abort(ControlArgs),
}

/// `vanectl rollout start`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The group (it must have a version already: the stable one).
    pub group: String,
    /// The candidate snapshot file, YAML or JSON ("-" reads standard input).
    #[arg(short, long, value_name = "FILE")]
    pub file: PathBuf,
    /// Cohort percentages, comma-separated, strictly increasing, each 1..=100, the last 100.
    #[arg(long, value_name = "PERCENTS", value_parser = parse_steps)]
    pub steps: Steps,
    /// How long each step must run without failure once its share of agents
    /// ACKed, before the next (e.g. 60s, 5m; default: no bake).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub bake: Option<Duration>,
    /// Only agents whose labels match take part: `k=v`, `k!=v`,
    /// `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated (default: every agent).
    #[arg(long, value_name = "SELECTOR")]
    pub select: Option<String>,
    /// Abort when more cohort members than this NACK the candidate (default 0;
    /// a NACK for invalid content aborts at once).
    #[arg(long, value_name = "N")]
    pub max_nacks: Option<u32>,
    /// Abort when a member that ACKed disconnects more than this many times
    /// during a step (default 3).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_disconnects: Option<u32>,
    /// Pause (and resume by itself) while the cohort has fewer members than this (default 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub min_agents: Option<u32>,
    /// Abort when a step has not reached its share of ACKs within this time (default 10m).
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub progress_deadline: Option<Duration>,
    /// Abort when more members than this report degraded health for the candidate (default 0).
    #[arg(long, value_name = "N")]
    pub max_degraded: Option<u32>,
    /// Refuse unless the group's head (the stable version) is this version.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub expect_version: Option<u64>,
    /// Why this change is made (kept in the history and the rollout).
    #[arg(short, long)]
    pub message: Option<String>,
}

/// `vanectl rollout pause|resume|promote|abort`.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The group.
    pub group: String,
    /// Why (kept in the rollout's events and the audit log).
    #[arg(
        short = 'm',
        long = "message",
        visible_alias = "reason",
        value_name = "REASON"
    )]
    pub reason: Option<String>,
}

/// The cohort percentages of `--steps`, already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps(pub Vec<u32>);

/// `--steps 10,50,100`: strictly increasing percentages, each 1..=100,
/// ending at 100 (clap names the flag in front of the error).
fn parse_steps(text: &str) -> Result<Steps, String> {
    let mut steps: Vec<u32> = Vec::new();
    for part in text.split(',').map(str::trim) {
        let p: u32 = part
            .trim_end_matches('%')
            .parse()
            .map_err(|_| format!("{part:?} is not a percentage (use e.g. 10,50,100)"))?;
        if !(1..=100).contains(&p) {
            return Err(format!("each step must be 1..=100, not {p}"));
        }
        if let Some(&before) = steps.last()
            && p <= before
        {
            return Err(format!(
                "steps must be strictly increasing: {p} comes after {before}"
            ));
        }
        steps.push(p);
    }
    match steps.last() {
        Some(100) => Ok(Steps(steps)),
        Some(last) => Err(format!(
            "the last step must be 100 (every agent), not {last}"
        )),
        None => Err("no steps given".to_owned()),
    }
}

/// A duration longer than zero (0 would mean the server's default).
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than 0".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

impl Cli {
    /// How long one call may take: `--timeout`, else 10s. For `rollout
    /// status -w`, whose `--timeout` is how long to follow, at most 10s.
    pub fn call_timeout(&self) -> Duration {
        match (&self.command, self.timeout) {
            (
                Command::Rollout {
                    command: RolloutCommand::Status { watch: true, .. },
                },
                Some(follow),
            ) => follow.min(DEFAULT_TIMEOUT),
            (_, timeout) => timeout.unwrap_or(DEFAULT_TIMEOUT),
        }
    }
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
        assert_eq!(cli.timeout, Some(Duration::from_millis(250)));
        assert_eq!(cli.call_timeout(), Duration::from_millis(250));
        match cli.command {
            Command::Push {
                group,
                file,
                expect_version,
                dry_run,
                message,
                wait,
                supersede,
            } => {
                assert_eq!(wait, None);
                assert!(!supersede);
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
        assert_eq!(cli.server.as_deref(), Some("http://h:1"));
        assert!(matches!(cli.command, Command::Status { group: None, .. }));
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
    fn get_as_xds_takes_a_client() {
        let get = |args: &[&str]| match parse(args).unwrap().command {
            Command::Get { view, client, .. } => (view, client),
            other => panic!("parsed as {other:?}"),
        };
        assert_eq!(get(&["get", "edge"]), (None, None));
        assert_eq!(
            get(&["get", "edge", "--as", "xds"]),
            (Some(GetAs::Xds), None)
        );
        assert_eq!(
            get(&["get", "edge", "--as", "xds", "--client", "grpc"]),
            (Some(GetAs::Xds), Some(XdsClient::Grpc))
        );
        let e = parse(&["get", "edge", "--as", "xds", "--client", "nginx"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let text = e.to_string();
        assert!(
            text.contains("'nginx'") && text.contains("envoy, grpc"),
            "{text}"
        );
        // --client means nothing without --as xds.
        let e = parse(&["get", "edge", "--client", "envoy"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--as"), "{e}");
        let e = parse(&["get", "edge", "--as", "yaml"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn diff_takes_two_versions_or_a_file() {
        let diff = |args: &[&str]| match parse(args).map(|c| c.command) {
            Ok(Command::Diff {
                a,
                b,
                file,
                version,
                ..
            }) => Ok((a, b, file, version)),
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => Err(e.exit_code()),
        };
        assert_eq!(
            diff(&["diff", "edge", "1", "2"]),
            Ok((Some(1), Some(2), None, None))
        );
        assert_eq!(
            diff(&["diff", "edge", "-f", "-"]),
            Ok((None, None, Some(PathBuf::from("-")), None))
        );
        assert_eq!(
            diff(&["diff", "edge", "-f", "v2.yaml", "--version", "3"]),
            Ok((None, None, Some(PathBuf::from("v2.yaml")), Some(3)))
        );
        for bad in [
            &["diff", "edge"][..],
            &["diff", "edge", "1"],
            &["diff", "edge", "1", "2", "-f", "x"],
            &["diff", "edge", "-f", "x", "--version", "0"],
        ] {
            assert_eq!(diff(bad), Err(2), "{bad:?}");
        }
    }

    #[test]
    fn contexts_and_config() {
        let cli = parse(&["--context", "prod", "--config", "c.yaml", "status"]).unwrap();
        assert_eq!(cli.context.as_deref(), Some("prod"));
        assert_eq!(cli.config, Some(PathBuf::from("c.yaml")));
        assert_eq!(cli.server, None);
        for (args, want) in [
            (&["config", "view"][..], ConfigCommand::View),
            (
                &["config", "get-contexts", "-o", "json"],
                ConfigCommand::GetContexts,
            ),
            (
                &["config", "use-context", "dev"],
                ConfigCommand::UseContext { name: "dev".into() },
            ),
        ] {
            match parse(args).unwrap().command {
                Command::Config { command } => assert_eq!(command, want),
                other => panic!("parsed as {other:?}"),
            }
        }
        assert!(parse(&["config", "use-context"]).is_err());
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

    #[test]
    fn push_wait_and_supersede() {
        let wait = |args: &[&str]| match parse(args).unwrap().command {
            Command::Push {
                wait, supersede, ..
            } => (wait, supersede),
            other => panic!("parsed as {other:?}"),
        };
        assert_eq!(wait(&["push", "edge", "-f", "s.yaml"]), (None, false));
        assert_eq!(
            wait(&["push", "edge", "-f", "s.yaml", "--wait"]),
            (Some(Duration::from_secs(120)), false)
        );
        assert_eq!(
            wait(&["push", "edge", "-f", "s.yaml", "--wait=30s", "--supersede"]),
            (Some(Duration::from_secs(30)), true)
        );
        // The value needs `=`: a separate word is not taken as the timeout.
        assert!(parse(&["push", "edge", "-f", "s.yaml", "--wait", "30s"]).is_err());
        let e = parse(&["push", "edge", "-f", "s.yaml", "--wait=soon"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--wait"), "{e}");
        let e = parse(&["push", "edge", "-f", "s.yaml", "--wait", "--dry-run"]).unwrap_err();
        assert!(e.to_string().contains("--dry-run"), "{e}");
    }

    #[test]
    fn rollout_start_flags() {
        let cli = parse(&[
            "rollout",
            "start",
            "edge",
            "-f",
            "c.yaml",
            "--steps",
            "10,50,100",
            "--bake",
            "60s",
            "--select",
            "zone=a,tier!=edge",
            "--max-nacks",
            "2",
            "--max-disconnects",
            "4",
            "--min-agents",
            "3",
            "--progress-deadline",
            "10m",
            "--max-degraded",
            "1",
            "--expect-version",
            "7",
            "-m",
            "why",
        ])
        .unwrap();
        let Command::Rollout {
            command: RolloutCommand::Start(a),
        } = cli.command
        else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(a.group, "edge");
        assert_eq!(a.file, PathBuf::from("c.yaml"));
        assert_eq!(a.steps, Steps(vec![10, 50, 100]));
        assert_eq!(a.bake, Some(Duration::from_secs(60)));
        assert_eq!(a.select.as_deref(), Some("zone=a,tier!=edge"));
        assert_eq!(a.max_nacks, Some(2));
        assert_eq!(a.max_disconnects, Some(4));
        assert_eq!(a.min_agents, Some(3));
        assert_eq!(a.progress_deadline, Some(Duration::from_secs(600)));
        assert_eq!(a.max_degraded, Some(1));
        assert_eq!(a.expect_version, Some(7));
        assert_eq!(a.message.as_deref(), Some("why"));
    }

    #[test]
    fn rollout_steps_are_checked_and_errors_name_the_flag() {
        assert_eq!(parse_steps("100"), Ok(Steps(vec![100])));
        assert_eq!(parse_steps("1, 2,100"), Ok(Steps(vec![1, 2, 100])));
        assert_eq!(parse_steps("25%,100%"), Ok(Steps(vec![25, 100])));
        assert_eq!(
            parse_steps("10,50"),
            Err("the last step must be 100 (every agent), not 50".to_owned())
        );
        assert_eq!(
            parse_steps("50,10,100"),
            Err("steps must be strictly increasing: 10 comes after 50".to_owned())
        );
        assert_eq!(
            parse_steps("50,50,100"),
            Err("steps must be strictly increasing: 50 comes after 50".to_owned())
        );
        assert_eq!(
            parse_steps("0,100"),
            Err("each step must be 1..=100, not 0".to_owned())
        );
        assert_eq!(
            parse_steps("10,150"),
            Err("each step must be 1..=100, not 150".to_owned())
        );
        assert!(parse_steps("ten,100").unwrap_err().contains("\"ten\""));
        assert!(parse_steps("").is_err());
        let start = |extra: &[&str]| {
            let mut args = vec!["rollout", "start", "edge", "-f", "c.yaml"];
            args.extend_from_slice(extra);
            parse(&args)
        };
        for (extra, flag) in [
            (&["--steps", "10,50"][..], "--steps"),
            (&[][..], "--steps"),
            (&["--steps", "100", "--bake", "soon"][..], "--bake"),
            (
                &["--steps", "100", "--progress-deadline", "0s"][..],
                "--progress-deadline",
            ),
            (
                &["--steps", "100", "--max-disconnects", "0"][..],
                "--max-disconnects",
            ),
            (&["--steps", "100", "--min-agents", "0"][..], "--min-agents"),
            (&["--steps", "100", "--max-nacks", "x"][..], "--max-nacks"),
        ] {
            let e = start(extra).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{extra:?}");
            assert!(e.to_string().contains(flag), "{extra:?}: {e}");
        }
        assert!(start(&["--steps", "100", "--bake", "0s"]).is_ok());
    }

    #[test]
    fn rollout_status_and_controls() {
        let cli = parse(&[
            "rollout",
            "status",
            "edge",
            "-w",
            "--timeout",
            "5m",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.timeout, Some(Duration::from_secs(300)));
        assert!(matches!(
            cli.command,
            Command::Rollout {
                command: RolloutCommand::Status { watch: true, .. }
            }
        ));
        let cli = parse(&["rollout", "status", "edge"]).unwrap();
        assert_eq!(cli.timeout, None);
        assert_eq!(cli.call_timeout(), DEFAULT_TIMEOUT);
        for (verb, reason) in [
            ("pause", Some("looks odd")),
            ("resume", None),
            ("promote", None),
            ("abort", Some("bad")),
        ] {
            let mut args = vec!["rollout", verb, "edge"];
            if let Some(r) = reason {
                args.extend(["-m", r]);
            }
            let cli = parse(&args).unwrap();
            let Command::Rollout { command } = cli.command else {
                panic!("parsed as {:?}", cli.command);
            };
            let got = match (verb, command) {
                ("pause", RolloutCommand::Pause(a))
                | ("resume", RolloutCommand::Resume(a))
                | ("promote", RolloutCommand::Promote(a))
                | ("abort", RolloutCommand::Abort(a)) => a,
                (verb, other) => panic!("{verb} parsed as {other:?}"),
            };
            assert_eq!(got.group, "edge");
            assert_eq!(got.reason.as_deref(), reason);
        }
        assert!(parse(&["rollout", "abort"]).is_err());
        assert!(parse(&["rollout", "restart", "edge"]).is_err());
    }
}
