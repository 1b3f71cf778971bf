//! `vane-agent`: the agent library as a sidecar process, for programs that
//! cannot link Rust. It materialises the running snapshot to a file and to
//! templates, can veto candidates with a check command (like `nginx -t`),
//! runs a command after each change, reports the data plane's health from a
//! health command, and serves `/config`, `/status`, `/healthz`, `/readyz`
//! and `/metrics`.

mod admin;
mod config_http;
mod counters;
mod health;
mod output;
mod templates;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use vane_agent::Agent;
use vane_agent_sidecar::{AgentArgs, block_on_main, init_logs};

use output::{OutputFormat, Outputs, OutputsConfig};
use templates::{TemplateArg, Templates, parse_mode, parse_template_arg};

#[derive(Debug, Parser)]
#[command(
    name = "vane-agent",
    version = vane_build_info::LONG_VERSION,
    about = "Follow a Vane control server and materialise its configuration to a file"
)]
struct Args {
    #[command(flatten)]
    agent: AgentArgs,
    /// File rewritten atomically with every applied version: the snapshot
    /// as --format, or rendered from the short-form --template FILE.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Format of --output and of the candidate given to --check-cmd (when
    /// no short-form --template renders --output).
    #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
    format: OutputFormat,
    /// Mode of the files written (--output and every --template without its
    /// own MODE), octal such as 0640, set exactly (the umask does not apply).
    /// Default: 0666 less the umask, 0600 when the snapshot has secrets.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    output_mode: Option<u32>,
    /// A Jinja2 template (minijinja) rendered with every applied version:
    /// SRC:DEST[:MODE] writes DEST (MODE octal, e.g. 0640, overrides
    /// --output-mode); the short form FILE renders --output instead of its
    /// JSON/YAML. Repeatable; paths may not contain ':'. The context is the
    /// document --output holds (group, version, hash, source, listeners,
    /// route_tables, clusters, values, flags, ...); an undefined name is an
    /// error. Parsed at startup (a bad template exits 2 naming file and
    /// line); a render failure refuses (NACKs) the version with the error
    /// and writes nothing. Filters: tojson, toyaml and minijinja's builtins.
    #[arg(long = "template", value_name = "SRC:DEST[:MODE]", value_parser = parse_template_arg)]
    templates: Vec<TemplateArg>,
    /// Command that vets a candidate before it is applied; the candidate file's
    /// path is its last argument (what --output would hold). A non-zero exit
    /// refuses (NACKs) the snapshot with the command's stderr as the reason.
    /// Runs after every template rendered, before any file is written.
    #[arg(long)]
    check_cmd: Option<String>,
    /// Longest a --check-cmd run may take.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    check_timeout: Duration,
    /// Command run after each apply once every file (--output, --template)
    /// is written (env: VANE_VERSION, VANE_HASH, VANE_SOURCE, VANE_OUTPUT);
    /// not run when every file's content and mode stayed the same. Versions
    /// applied while it runs are coalesced into one more run.
    #[arg(long)]
    on_change: Option<String>,
    /// Command that checks the data plane's health with the running
    /// configuration, run via `sh -c` at startup, after each apply and every
    /// --health-interval (env: VANE_VERSION, VANE_HASH, VANE_SOURCE,
    /// VANE_OUTPUT). Exit 0 reports the running version healthy; any other
    /// exit (or a run over --health-timeout) reports it degraded, with the
    /// command's stderr (trimmed, at most 2 KiB) as the reason. The agent
    /// sends the report to the control plane (`vanectl status` shows it; a
    /// rollout aborts on it) and /status shows it as `data_plane_health`.
    #[arg(long, value_name = "CMD")]
    health_cmd: Option<String>,
    /// How often --health-cmd runs when nothing is applied.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    health_interval: Duration,
    /// Longest a --health-cmd run may take; a slower one is killed and
    /// reports degraded.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    health_timeout: Duration,
    /// Address of the admin endpoint (/config, /status, /healthz, /readyz,
    /// /metrics). /healthz: liveness (200 while the agent's tasks run; the
    /// body says the /status state). /readyz: 200 once a configuration (live
    /// or cached) is served, 503 on the embedded defaults or nothing.
    /// /config: that configuration as JSON, ETag = its hash, If-None-Match
    /// and ?wait=30s long polls (at most 60s), ?format=yaml.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logs(&args.agent);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
    let templates =
        Templates::load(&args.templates, args.output.as_deref()).map_err(anyhow::Error::msg)?;
    let outputs = Arc::new(Outputs::new(OutputsConfig {
        output: args.output.clone(),
        format: args.format,
        output_mode: args.output_mode,
        templates,
        group: args.agent.group.clone(),
        cache_dir: args.agent.cache_dir.clone(),
        check_cmd: args.check_cmd.clone(),
        check_timeout: args.check_timeout,
    }));
    let config = args
        .agent
        .to_config(format!("vane-agent/{}", env!("CARGO_PKG_VERSION")))
        .map_err(anyhow::Error::msg)?;
    let mut builder = Agent::builder().config(config);
    if let Some(d) = defaults {
        builder = builder.defaults(d);
    }
    if args.check_cmd.is_some() {
        let o = outputs.clone();
        builder =
            builder.validator(move |c: &vane_agent::Current, _: &vane_agent::Current| o.check(c));
    }
    if outputs.has_files() {
        let o = outputs.clone();
        builder = builder.sink(move |c: &vane_agent::Current| o.write(c));
    }
    let agent = builder.start()?;
    // What startup loaded (cache or defaults) is not a change for --on-change.
    let mut changes = agent.subscribe();
    changes.borrow_and_update();
    let handled = outputs.changes();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let listener = match args.admin_listen {
        None => None,
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--admin-listen {addr}"))?,
        ),
    };
    let health_task = args.health_cmd.clone().map(|cmd| {
        let health = health::HealthCmd {
            cmd,
            interval: args.health_interval,
            timeout: args.health_timeout,
            output: args.output.clone(),
        };
        tokio::spawn(health::run(health, agent.clone(), stop_rx.clone()))
    });
    let on_change_task = args.on_change.clone().map(|cmd| {
        tokio::spawn(output::run_on_change(
            cmd,
            changes,
            outputs.clone(),
            handled,
            args.output.clone(),
            stop_rx.clone(),
        ))
    });
    let admin_task = match listener {
        None => None,
        Some(listener) => {
            let local = listener.local_addr()?;
            println!("vane-agent admin listening on {local}");
            // The tasks whose end /healthz reports.
            let tasks = [
                ("the health-command task", &health_task),
                ("the on-change task", &on_change_task),
            ]
            .into_iter()
            .filter_map(|(name, t)| Some((name, t.as_ref()?.abort_handle())))
            .collect();
            Some(tokio::spawn(admin::serve(
                listener,
                agent.clone(),
                tasks,
                stop_rx.clone(),
            )))
        }
    };

    termination.received().await;
    tracing::info!("shutting down");
    stop_tx.send_replace(true);
    agent.shutdown().await;
    for task in [admin_task, on_change_task, health_task]
        .into_iter()
        .flatten()
    {
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!("a task did not stop within 5s");
        }
    }
    Ok(())
}
