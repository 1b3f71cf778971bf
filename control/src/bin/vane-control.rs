//! `vane-control`: the control server binary. Parses flags, sets up logging
//! and signal handling, then runs [`vane_control::Server`].

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory as _, Parser, ValueEnum};
use vane_admin_http::Termination;
use vane_control::{Config, Server};
use vane_store_etcd::{EtcdAuth, EtcdConfig, EtcdCredentialError, EtcdTls};

// mimalloc (opt-in, `--features mimalloc`): with ten thousand watch
// streams, glibc's malloc cost about a fifth more CPU per push; but under
// mimalloc the resident memory grew by ~2.5 MiB per 1 MiB push without
// bound (memory handed between the async workers and the blocking pool was
// never returned), so the default is the system allocator
// (docs/benchmarks.md, docs/security.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Vane control server: stores versioned configuration snapshots per
/// group and streams them to agents.
#[derive(Debug, Parser)]
#[command(name = "vane-control", version = vane_build_info::LONG_VERSION)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the bound address is
    /// printed on stdout as `vane-control listening on ADDR`).
    #[arg(long, default_value = vane_control::server::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Where versions are stored: `embedded` (a database in --data-dir, for
    /// a single server) or `etcd` (shared by every replica of a cluster).
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded, global = true)]
    store: StoreKind,
    /// Directory of the embedded store (created if missing).
    #[arg(long, default_value = vane_control::server::DEFAULT_DATA_DIR, global = true)]
    data_dir: PathBuf,
    /// etcd client URLs, comma-separated (with --store etcd): all http://,
    /// or all https:// with --etcd-ca.
    #[arg(
        long,
        value_delimiter = ',',
        required_if_eq("store", "etcd"),
        value_parser = parse_endpoint,
        global = true
    )]
    etcd_endpoints: Vec<String>,
    /// Key prefix of everything Vane stores in etcd.
    #[arg(long, default_value = "/vane", global = true)]
    etcd_prefix: String,
    /// Bound on each etcd operation, retries included: a push etcd does not
    /// confirm within it fails.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration, global = true)]
    etcd_timeout: Duration,
    /// Lease of this replica's agent records in etcd: how long the agents of
    /// a replica that died stay listed by the others.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    etcd_lease_ttl: Duration,
    /// The CA bundle (PEM) that etcd's server certificate must chain to;
    /// required with https:// etcd endpoints.
    #[arg(
        long,
        value_name = "FILE",
        help_heading = "Security (etcd)",
        global = true
    )]
    etcd_ca: Option<PathBuf>,
    /// This replica's client certificate (PEM) for etcd's
    /// --client-cert-auth; with --etcd-key.
    #[arg(
        long,
        value_name = "FILE",
        requires = "etcd_key",
        help_heading = "Security (etcd)",
        global = true
    )]
    etcd_cert: Option<PathBuf>,
    /// The private key (PEM) of --etcd-cert.
    #[arg(
        long,
        value_name = "FILE",
        requires = "etcd_cert",
        help_heading = "Security (etcd)",
        global = true
    )]
    etcd_key: Option<PathBuf>,
    /// The etcd user to authenticate as (etcd's RBAC); with
    /// --etcd-password-file.
    #[arg(
        long,
        value_name = "NAME",
        requires = "etcd_password_file",
        help_heading = "Security (etcd)",
        global = true
    )]
    etcd_user: Option<String>,
    /// The file holding --etcd-user's password (one trailing line break is
    /// ignored). Read once, at startup.
    #[arg(
        long,
        value_name = "FILE",
        requires = "etcd_user",
        help_heading = "Security (etcd)",
        global = true
    )]
    etcd_password_file: Option<PathBuf>,
    /// This server's name among the replicas, shown by `vanectl status`
    /// [default: the listen address].
    #[arg(long)]
    replica_name: Option<String>,
    /// Largest encoded snapshot accepted, in bytes.
    #[arg(long, default_value_t = vane_model::DEFAULT_MAX_SNAPSHOT_BYTES)]
    max_snapshot_bytes: usize,
    /// How long shutdown waits for open streams and pushes in progress.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// How long a disconnected agent stays listed in `vanectl status`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    forget_agents_after: Duration,
    /// Versions of each group retention always keeps (the newest; at least
    /// 1, the head). Older ones go once they are also older than
    /// --retain-age, unless an agent runs them.
    #[arg(long, default_value_t = vane_control::retention::DEFAULT_RETAIN_VERSIONS, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Retention")]
    retain_versions: u64,
    /// Versions younger than this are always kept (`0s`: age keeps nothing
    /// beyond --retain-versions).
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration, help_heading = "Retention")]
    retain_age: Duration,
    /// How often retention runs.
    #[arg(long, default_value = "1m", value_parser = parse_interval, help_heading = "Retention")]
    retention_interval: Duration,
    /// Address of the admin HTTP endpoint serving `GET /metrics`
    /// (Prometheus), `GET /healthz` (liveness) and `GET /readyz` (503 with
    /// the reason while the store is not writable or reachable); off unless
    /// set. The bound address is printed on stdout as `vane-control admin
    /// listening on ADDR`.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Address of the web console (`/ui/`: groups, history, diffs, agents,
    /// rollouts, the audit log; rollback and rollout actions for
    /// operators), served with the TLS, client CA, tokens and policy of
    /// --listen (docs/console.md); off unless set. The bound address is
    /// printed on stdout as `vane-control console listening on ADDR`.
    #[arg(long, value_name = "ADDR")]
    console_listen: Option<SocketAddr>,
    /// The server's TLS certificate chain (PEM). With --tls-key, the gRPC
    /// endpoint serves TLS only.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        help_heading = "Security"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    tls_key: Option<PathBuf>,
    /// The CA that signs client certificates (PEM): clients presenting one
    /// are identified by its first SAN URI, else its CN (mTLS).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        help_heading = "Security"
    )]
    client_ca: Option<PathBuf>,
    /// The policy file: which identity holds which role (agent, reader,
    /// operator, admin) in which groups. Reloaded when it changes. Without
    /// it, every caller may do everything (loopback only, or --insecure).
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    policy: Option<PathBuf>,
    /// The bearer-token file (identities with the SHA-256 of their token).
    /// Reloaded when it changes.
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    tokens: Option<PathBuf>,
    /// Serve a non-loopback address without TLS or without a policy.
    #[arg(long, help_heading = "Security")]
    insecure: bool,
    /// Connections open at once; more are closed as they arrive.
    #[arg(long, default_value_t = vane_control::accept::DEFAULT_MAX_CONNECTIONS, help_heading = "Limits")]
    max_connections: usize,
    /// Connections one client-certificate identity may hold open.
    #[arg(long, default_value_t = vane_control::accept::DEFAULT_MAX_CONNECTIONS_PER_IDENTITY, help_heading = "Limits")]
    max_connections_per_identity: usize,
    /// How long a client may take to finish its TLS handshake, and then to
    /// send its first byte (on a plaintext endpoint: after connecting).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, help_heading = "Limits")]
    handshake_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    #[arg(long, default_value_t = 100, help_heading = "Limits")]
    max_streams_per_connection: u32,
    /// A watch stream from which nothing (not even a heartbeat) arrived for
    /// this long is closed.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, help_heading = "Limits")]
    idle_stream_timeout: Duration,
    /// Most agents (node ids) tracked at once; new ones beyond are refused.
    #[arg(long, default_value_t = vane_control::watch::DEFAULT_MAX_AGENTS, help_heading = "Limits")]
    max_agents: usize,
    /// Watch streams one identity (client certificate or token) may hold
    /// open at once; more are refused with RESOURCE_EXHAUSTED. Raise it for
    /// a fleet that shares one identity.
    #[arg(long, default_value_t = vane_control::watch::DEFAULT_MAX_STREAMS_PER_IDENTITY, help_heading = "Limits")]
    max_streams_per_identity: usize,
    /// HTTP long polls (GET /v1/groups/G/snapshot) held at once, across
    /// every caller; more are answered 429 with Retry-After. Each also
    /// counts against its identity's --max-streams-per-identity.
    #[arg(long, default_value_t = vane_control::http::DEFAULT_MAX_HELD_POLLS, help_heading = "Limits")]
    max_held_polls: usize,
    /// Pushes and rollbacks per second each identity may sustain (0: no
    /// limit) [default: 20 with --policy; no limit without one].
    #[arg(long, help_heading = "Limits")]
    push_rate: Option<u32>,
    /// Pushes and rollbacks an identity may make in a burst.
    #[arg(long, default_value_t = vane_control::auth::rate::DEFAULT_PUSH_BURST, help_heading = "Limits")]
    push_burst: u32,
    /// Longest an Admin call (push, get, history, ...) may take before it
    /// is cancelled with CANCELLED "Timeout expired".
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, help_heading = "Limits")]
    request_timeout: Duration,
    /// Interval of HTTP/2 pings on idle connections.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration, help_heading = "Limits")]
    http2_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, help_heading = "Limits")]
    http2_keepalive_timeout: Duration,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Least severe log level written: trace, debug, info, warn, error or
    /// off. RUST_LOG, when set, wins (and may name modules).
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = vane_admin_http::logs::parse_level)]
    log_level: vane_admin_http::logs::LogLevel,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What to do instead of serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
enum Command {
    /// Verify every stored version against its hash, then exit.
    ///
    /// Reads every version of every group from the store (--data-dir, or
    /// --store etcd with its flags), prints one line per corrupt version and
    /// a summary, and exits 1 if any version is corrupt (or the store cannot
    /// be read), 0 if none. With the embedded store, stop the server first:
    /// it holds the file's lock.
    Check,
}

/// A positive interval.
fn parse_interval(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d >= Duration::from_millis(100) => Ok(d),
        Ok(_) => Err(format!("{s:?}: must be at least 100ms")),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

/// An etcd client URL: `http://host:port` or `https://host:port`.
fn parse_endpoint(s: &str) -> Result<String, String> {
    let uri: tonic::codegen::http::Uri =
        s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(s.to_owned()),
        _ => Err(format!(
            "{s:?} must be an http://host:port or https://host:port URL"
        )),
    }
}

/// The etcd flags that only make sense together, as a usage error (exit 2)
/// naming the flags: TLS needs https:// endpoints and https:// needs a CA,
/// so a replica never talks plaintext to etcd by mistake.
fn check_etcd_flags(args: &Args) -> Result<(), String> {
    let etcd_only = [
        ("--etcd-ca", args.etcd_ca.is_some()),
        ("--etcd-cert", args.etcd_cert.is_some()),
        ("--etcd-user", args.etcd_user.is_some()),
    ];
    if args.store == StoreKind::Embedded {
        if !args.etcd_endpoints.is_empty() {
            return Err("--etcd-endpoints: only used with --store etcd".into());
        }
        if let Some((flag, _)) = etcd_only.iter().find(|(_, set)| *set) {
            return Err(format!("{flag}: only used with --store etcd"));
        }
        return Ok(());
    }
    let https = args
        .etcd_endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    let http = args.etcd_endpoints.len() - https;
    if https > 0 && http > 0 {
        return Err(
            "--etcd-endpoints: all http:// or all https://; mixing them would send some requests in plaintext"
                .into(),
        );
    }
    if https > 0 && args.etcd_ca.is_none() {
        return Err(
            "--etcd-endpoints https://... needs --etcd-ca: the CA bundle that signed etcd's server certificate"
                .into(),
        );
    }
    if http > 0 && (args.etcd_ca.is_some() || args.etcd_cert.is_some()) {
        return Err(
            "--etcd-ca/--etcd-cert/--etcd-key need https:// --etcd-endpoints; with http:// they would not be used and etcd traffic would be plaintext"
                .into(),
        );
    }
    if args.etcd_cert.is_some() && args.etcd_ca.is_none() {
        return Err("--etcd-cert/--etcd-key need --etcd-ca".into());
    }
    Ok(())
}

/// The etcd TLS and user settings, read and checked now: a bad file stops
/// the start with one line naming its flag.
fn etcd_credentials(
    args: &Args,
) -> Result<(Option<EtcdTls>, Option<EtcdAuth>), EtcdCredentialError> {
    let tls = match &args.etcd_ca {
        Some(ca) => Some(EtcdTls::from_files(
            ca,
            args.etcd_cert.as_deref().zip(args.etcd_key.as_deref()),
        )?),
        None => None,
    };
    let auth = match (&args.etcd_user, &args.etcd_password_file) {
        (Some(user), Some(file)) => Some(EtcdAuth::from_password_file(user, file)?),
        _ => None,
    };
    Ok((tls, auth))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    Embedded,
    Etcd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(message) = check_etcd_flags(&args) {
        // Exits with clap's usage error (code 2).
        Args::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    vane_admin_http::logs::init(
        match args.log_format {
            LogFormat::Text => vane_admin_http::logs::LogFormat::Text,
            LogFormat::Json => vane_admin_http::logs::LogFormat::Json,
        },
        args.log_level,
    );
    // A bug (or a library's `unreachable!`) is one log line naming where,
    // not a backtrace in the middle of the logs; the task it hit fails and
    // says so.
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        // redb may panic on a damaged page; the store catches that and
        // reports the file as damaged, with what to do.
        if location.contains("/redb-") {
            tracing::debug!(%location, "damaged database page: {message}");
        } else {
            tracing::error!(%location, "internal error: {message}");
        }
    }));
    if args.command == Some(Command::Check) {
        return match check(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("vane-control check: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line on stderr, not also a log record saying the same.
            eprintln!("vane-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The etcd store's settings with `--store etcd`.
fn etcd_config(args: &Args) -> anyhow::Result<Option<EtcdConfig>> {
    if args.store != StoreKind::Etcd {
        return Ok(None);
    }
    let (tls, auth) = etcd_credentials(args)?;
    Ok(Some(EtcdConfig {
        endpoints: args.etcd_endpoints.clone(),
        prefix: args.etcd_prefix.clone(),
        request_timeout: args.etcd_timeout,
        lease_ttl: args.etcd_lease_ttl,
        tls,
        auth,
    }))
}

/// `vane-control check`: true when every version matched its hash.
#[tokio::main]
async fn check(args: Args) -> anyhow::Result<bool> {
    let store: Box<dyn vane_store::Store> = match etcd_config(&args)? {
        Some(etcd) => Box::new(vane_store_etcd::EtcdStore::connect(etcd).await?),
        None => {
            // Never create a store where there was none.
            let file = args.data_dir.join(vane_store::redb::DB_FILE);
            anyhow::ensure!(
                file.is_file(),
                "--data-dir {}: no store there ({} does not exist)",
                args.data_dir.display(),
                file.display()
            );
            Box::new(vane_store::RedbStore::open(&args.data_dir).await?)
        }
    };
    let location = store.health().location;
    let checked = vane_control::check::check(store.as_ref()).await;
    if let Err(e) = store.close().await {
        tracing::warn!(error = %e, "closing the store after the check");
    }
    let report = checked.with_context(|| format!("reading {location}"))?;
    let mut stdout = std::io::stdout().lock();
    for corrupt in &report.corrupt {
        writeln!(stdout, "{corrupt}")?;
    }
    writeln!(
        stdout,
        "{location}: {} groups, {} versions checked, {} corrupt",
        report.groups,
        report.versions,
        report.corrupt.len()
    )?;
    Ok(report.is_clean())
}

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM arriving right after the address is printed
    // must already mean "drain", not the default "die".
    let termination = Termination::install().context("installing the SIGTERM/SIGINT handlers")?;

    let etcd = etcd_config(&args)?;
    let config = Config {
        listen: args.listen,
        data_dir: args.data_dir,
        etcd,
        replica_name: args.replica_name,
        max_snapshot_bytes: args.max_snapshot_bytes,
        shutdown_grace: args.shutdown_grace,
        agent_forget_after: args.forget_agents_after,
        admin_listen: args.admin_listen,
        console_listen: args.console_listen,
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(vane_control::accept::TlsFiles {
                cert,
                key,
                client_ca: args.client_ca,
            }),
            _ => None,
        },
        policy: args.policy,
        tokens: args.tokens,
        insecure: args.insecure,
        conn_limits: vane_control::accept::ConnLimits {
            max_connections: args.max_connections,
            max_per_identity: args.max_connections_per_identity,
            handshake_timeout: args.handshake_timeout,
        },
        max_streams_per_connection: args.max_streams_per_connection,
        idle_stream_timeout: args.idle_stream_timeout,
        max_agents: args.max_agents,
        max_streams_per_identity: args.max_streams_per_identity,
        push_rate: args.push_rate,
        push_burst: args.push_burst,
        request_timeout: args.request_timeout,
        http2_keepalive_interval: args.http2_keepalive_interval,
        http2_keepalive_timeout: args.http2_keepalive_timeout,
        retention: vane_store::Retention {
            keep_versions: args.retain_versions,
            keep_age: args.retain_age,
        },
        retention_interval: args.retention_interval,
        max_held_polls: args.max_held_polls,
    };
    let server = Server::bind(config).await?;

    // Tests and scripts read this exact line to find the port.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "vane-control listening on {}", server.local_addr())
        .and_then(|()| match server.admin_addr() {
            Some(addr) => writeln!(stdout, "{}", vane_control::metrics::admin_line(addr)),
            None => Ok(()),
        })
        .and_then(|()| match server.console_addr() {
            Some(addr) => writeln!(stdout, "{}", vane_control::console::console_line(addr)),
            None => Ok(()),
        })
        .and_then(|()| stdout.flush())
        .context("writing the listen address to stdout")?;
    drop(stdout);

    let shutdown = async move {
        termination.received().await;
    };
    server.serve(shutdown).await?;
    Ok(())
}
