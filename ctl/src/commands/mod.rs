//! One function per vanectl subcommand: build the Admin request, call the
//! server, hand the answer to [`crate::output`].
//!
//! # Layout
//! - `rollout`: `rollout start|status|pause|resume|promote|abort`, and
//!   following a rollout (`-w`).
//! - `wait`: `push --wait`, and the pure decision it polls with.
//! - `compare`: `diff -f` and `push --dry-run`'s diff against the head.
//! - `groups`: `groups`, `delete`, `watch`, and `status --fail-on`.
//! - `follow`: what both followers share (calls bounded one by one, riding
//!   out a server restart, the poll interval).
//! - `version`: `version`, the client's build and the server's.

mod compare;
mod follow;
mod groups;
mod rollout;
#[cfg(test)]
mod tests_fake;
mod version;
mod wait;

use std::io::IsTerminal as _;
use std::path::Path;
use std::time::SystemTime;

use vane_model::Snapshot;
use vane_proto as pb;

use crate::args::{
    Cli, Command, ConfigCommand, GetAs, OutputFormat, RolloutCommand, StartArgs, XdsClient,
};
use crate::client::{self, Admin};
use crate::config::{self, Settings};
use crate::credentials::Credentials;
use crate::error::CliError;
use crate::output::{
    self, AgentView, AuditView, DiffView, PushView, RolloutView, VersionView, WhoAmIView, XdsView,
};
use compare::LocalFile;

/// Runs the command and returns what to print on stdout; `live` receives
/// what a following command (`rollout status -w`, `push --wait`) prints as
/// it goes.
pub(crate) async fn execute(cli: &Cli, live: &mut dyn FnMut(&str)) -> Result<String, CliError> {
    // Answered without a server.
    match &cli.command {
        Command::Completion { shell } => return completion(*shell),
        Command::Config { command } => return config_command(cli, command),
        _ => {}
    }
    // Flags and environment, then the context, then the defaults.
    let settings = Settings::resolve(cli, config::load(cli)?.as_ref())?;
    // Certificates and token are checked before connecting, like the file
    // to push: the user's to fix (exit 2) whether or not the server is up.
    let credentials = Credentials::load(&settings)?;
    let urls = client::server_urls(
        &settings.servers,
        &settings.servers_from,
        credentials.wants_tls(),
    )?;
    // The file is read before connecting: a bad file is the user's to fix
    // whether or not the server is up, and gets exit code 2 either way.
    let file = match &cli.command {
        Command::Push { file, group, .. }
        | Command::Rollout {
            command: RolloutCommand::Start(StartArgs { file, group, .. }),
        }
        | Command::Diff {
            file: Some(file),
            group,
            ..
        } => Some(read_local(file, group)?),
        _ => None,
    };
    if let Command::Diff {
        version: Some(_),
        file: None,
        ..
    } = &cli.command
    {
        return Err(CliError::usage(
            "diff: --version goes with -f FILE (diff G -f FILE --version N); two stored versions are diff G A B",
        ));
    }
    // `diff -f` compares a valid snapshot only: one the server would refuse
    // is the user's to fix (exit 2), said before connecting.
    if let (Command::Diff { show_secrets, .. }, Some(f)) = (&cli.command, &file) {
        crate::compare::canonical(f.spec.clone(), *show_secrets)
            .map_err(|e| CliError::usage(format!("{}: {e}", f.label)))?;
    }
    // A bad --fail-on is a usage error whether or not the server is up.
    if let Command::Status {
        fail_on: Some(states),
        ..
    } = &cli.command
    {
        groups::parse_states(states)?;
    }
    let timeout = cli.call_timeout();
    let writes = match &cli.command {
        Command::Push { .. } | Command::Rollback { .. } | Command::Delete { .. } => true,
        Command::Rollout { command } => !matches!(command, RolloutCommand::Status { .. }),
        _ => false,
    };
    // Each server is given `timeout` to connect; the first that does gets
    // the call (see `client::connect_any`).
    let client::Connected {
        mut admin,
        url,
        started,
    } = match client::connect_any(&urls, timeout, &credentials).await {
        Ok(connected) => connected,
        // The client's own build is known whatever the server does.
        Err(e) if matches!(cli.command, Command::Version) => {
            return Err(version::without_server(e, cli.output));
        }
        Err(e) => return Err(e),
    };
    if follows(&cli.command) {
        // A follower bounds each of its calls itself (`follow::bounded`):
        // following lasts longer than one call may.
        return dispatch(&mut admin, cli, &url, file, live).await;
    }
    let no_answer = || {
        CliError::unreachable(format!(
            "no answer from the control server at {url} within {} (see --timeout){}",
            humantime::format_duration(timeout),
            if writes {
                "; the change may still have been stored: check `vanectl history`"
            } else {
                ""
            }
        ))
    };
    // The call's time counts from when connecting to its server began.
    let result = match tokio::time::timeout_at(
        started + timeout,
        dispatch(&mut admin, cli, &url, file, live),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(no_answer()),
    };
    if matches!(cli.command, Command::Version) {
        // The client's own build is known whatever the server does.
        return result.map_err(|e| version::without_server(e, cli.output));
    }
    result
}

/// `vanectl config …`: the config file only, no server.
fn config_command(cli: &Cli, command: &ConfigCommand) -> Result<String, CliError> {
    match command {
        ConfigCommand::View => config::view(cli),
        ConfigCommand::GetContexts => config::get_contexts(cli, cli.output),
        ConfigCommand::UseContext { name } => config::use_context(cli, name),
    }
}

/// The completion script of `shell` for vanectl's command line.
fn completion(shell: clap_complete::Shell) -> Result<String, CliError> {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "vanectl", &mut out);
    String::from_utf8(out)
        .map_err(|e| CliError::usage(format!("the {shell} completion script is not UTF-8: {e}")))
}

/// Whether the command polls the server until something happens.
fn follows(command: &Command) -> bool {
    matches!(
        command,
        Command::Push { wait: Some(_), .. }
            | Command::Watch { .. }
            | Command::Rollout {
                command: RolloutCommand::Status { watch: true, .. }
            }
    )
}

async fn dispatch(
    admin: &mut Admin,
    cli: &Cli,
    url: &str,
    file: Option<LocalFile>,
    live: &mut dyn FnMut(&str),
) -> Result<String, CliError> {
    let fmt = cli.output;
    let pushed = file
        .as_ref()
        .map(|f| vane_model::proto::spec_to_proto(&f.spec));
    let refused = |status: tonic::Status| CliError::from_status(&status, url);
    match &cli.command {
        Command::Push {
            group,
            expect_version,
            dry_run,
            message,
            wait,
            supersede,
            ..
        } => {
            let request = pb::PushRequest {
                supersede: *supersede,
                group: group.clone(),
                snapshot: pushed,
                expected_version: *expect_version,
                dry_run: *dry_run,
                message: message.clone().unwrap_or_default(),
            };
            match (wait, file) {
                (Some(wait), _) => wait::push_and_wait(admin, cli, url, request, *wait, live).await,
                (None, Some(file)) if *dry_run => {
                    compare::push_dry_run(admin, url, request, file, fmt).await
                }
                (None, _) => {
                    let resp = admin.push(request).await.map_err(refused)?.into_inner();
                    warn(&resp.warnings);
                    Ok(output::push(&PushView::new(&resp, None), fmt))
                }
            }
        }
        Command::Get {
            group,
            version,
            view,
            client,
            show_secrets,
        } => {
            let request = pb::GetRequest {
                group: group.clone(),
                version: *version,
                show_secrets: *show_secrets,
            };
            let resp = admin.get(request).await.map_err(refused)?.into_inner();
            let (info, snapshot) = checked_snapshot(group, resp)?;
            match view {
                None => Ok(output::get(group, &info, &snapshot, fmt)),
                Some(GetAs::Xds) => {
                    get_xds(group, &info, &snapshot, client.unwrap_or_default(), fmt)
                }
            }
        }
        Command::History { group, limit } => {
            let request = pb::HistoryRequest {
                group: group.clone(),
                limit: limit.unwrap_or(0),
            };
            let resp = admin.history(request).await.map_err(refused)?.into_inner();
            let entries: Vec<VersionView> = resp
                .versions
                .iter()
                .map(|v| VersionView {
                    corrupt: resp.corrupt_versions.contains(&v.version),
                    ..VersionView::from(v)
                })
                .collect();
            if fmt != OutputFormat::Table
                && let Some(note) = output::pruned_note(resp.pruned_versions)
            {
                // stdout stays the list of versions a script parses.
                eprintln!("{note}");
            }
            Ok(output::history(&entries, resp.pruned_versions, fmt))
        }
        Command::Diff {
            group,
            version,
            show_secrets,
            ..
        } if file.is_some() => {
            let Some(file) = file else {
                return Err(CliError::usage("diff: -f: no file was read"));
            };
            compare::diff_file(admin, url, group, *version, file, *show_secrets, fmt).await
        }
        Command::Diff {
            group,
            a,
            b,
            show_secrets,
            ..
        } => {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(CliError::usage(
                    "diff: give two versions (diff G A B) or a file (diff G -f FILE)",
                ));
            };
            let request = pb::DiffRequest {
                group: group.clone(),
                from_version: *a,
                to_version: *b,
                show_secrets: *show_secrets,
            };
            let resp = admin.diff(request).await.map_err(refused)?.into_inner();
            let view = DiffView {
                group: group.clone(),
                from: VersionView::from(&resp.from.unwrap_or_default()),
                to: VersionView::from(&resp.to.unwrap_or_default()),
                diff: resp.unified_diff,
            };
            Ok(output::diff(&view, fmt, use_color(fmt)))
        }
        Command::Rollback {
            group,
            to,
            expect_version,
            message,
            force,
        } => {
            let request = pb::RollbackRequest {
                group: group.clone(),
                to_version: *to,
                expected_version: *expect_version,
                message: message.clone().unwrap_or_default(),
                force: *force,
            };
            let resp = admin.rollback(request).await.map_err(refused)?.into_inner();
            warn(&resp.warnings);
            Ok(output::push(&PushView::new(&resp, Some(*to)), fmt))
        }
        Command::Groups => groups::list(admin, fmt, refused).await,
        Command::Delete {
            group,
            force,
            message,
        } => groups::delete(admin, group, *force, message.as_deref(), fmt, refused).await,
        Command::Watch { group } => groups::watch(admin, group, fmt, url, live).await,
        Command::Status {
            group,
            selector,
            fail_on,
        } => {
            let gate = fail_on.as_deref().map(groups::parse_states).transpose()?;
            let request = pb::StatusRequest {
                group: group.clone().unwrap_or_default(),
                selector: selector.clone().unwrap_or_default(),
            };
            let resp = admin.status(request).await.map_err(refused)?.into_inner();
            let degraded = resp.store.as_ref().is_some_and(|s| s.degraded);
            let mut rollouts: Vec<RolloutView> =
                resp.rollouts.iter().map(RolloutView::from).collect();
            rollouts.sort_by(|a, b| a.group.cmp(&b.group));
            let mut agents: Vec<AgentView> = resp
                .agents
                .iter()
                .map(|a| {
                    let mut view = AgentView::from(a);
                    view.control_degraded = degraded;
                    view.rollout = rollouts.iter().find(|r| r.group == a.group).cloned();
                    view
                })
                .collect();
            agents.sort_by(|a, b| (&a.group, &a.node_id).cmp(&(&b.group, &b.node_id)));
            let shown = output::status(
                &agents,
                &resp.groups,
                &rollouts,
                resp.store.as_ref(),
                fmt,
                SystemTime::now(),
            );
            match gate.map(|states| groups::gate(&resp.agents, &states)) {
                Some(Err(failed)) => Err(failed.with_output(shown)),
                _ => Ok(shown),
            }
        }
        Command::Rollout { command } => rollout::run(admin, cli, url, command, pushed, live).await,
        Command::Audit { group, limit } => {
            let request = pb::AuditRequest {
                group: group.clone().unwrap_or_default(),
                limit: limit.unwrap_or(0),
            };
            let resp = admin.audit(request).await.map_err(refused)?.into_inner();
            let entries: Vec<AuditView> = resp.entries.into_iter().map(AuditView::from).collect();
            Ok(output::audit(group.as_deref(), &entries, fmt))
        }
        // Answered before connecting (see `execute`).
        Command::Completion { shell } => completion(*shell),
        Command::Config { command } => config_command(cli, command),
        Command::WhoAmI => {
            let resp = admin
                .who_am_i(pb::WhoAmIRequest {})
                .await
                .map_err(refused)?
                .into_inner();
            Ok(output::whoami(&WhoAmIView::from(resp), fmt))
        }
        Command::Version => version::run(admin, url, fmt).await,
    }
}

/// The version's info and its snapshot, decoded and checked against the
/// recorded hash.
fn checked_snapshot(
    group: &str,
    resp: pb::GetResponse,
) -> Result<(pb::VersionInfo, Snapshot), CliError> {
    let info = resp.info.unwrap_or_default();
    let redacted = resp.redacted.then_some(resp.redacted_hash);
    let Some(snapshot) = resp.snapshot else {
        return Err(CliError::refused(format!(
            "the server sent version {} of {group} without its snapshot",
            info.version
        )));
    };
    // Redacted content (keys replaced by placeholders) validates by the same
    // rules but for the keys, and hashes to the hash of what was sent.
    let validated = match &redacted {
        None => Snapshot::try_from(snapshot),
        Some(_) => vane_model::SnapshotSpec::try_from(snapshot)
            .and_then(vane_model::validate::validate_redacted),
    };
    let snapshot = validated.map_err(|e| {
        CliError::refused(format!(
            "the server sent an invalid snapshot for {group} version {}: {e}",
            info.version
        ))
    })?;
    // The hash is recomputed here too (the server checks it before it
    // answers): content that does not match it is never printed as valid.
    let hash = snapshot.content_hash().to_hex();
    // The redacted hash stands in only for content that holds a
    // placeholder: content without one must match the recorded hash.
    let placeholders = snapshot.secrets.iter().any(|s| match &s.kind {
        vane_model::SecretKind::Certificate {
            key: vane_model::PemSource::Inline(k),
            ..
        } => vane_model::redact::is_redacted(k),
        _ => false,
    });
    let expected = redacted
        .as_deref()
        .filter(|_| placeholders)
        .unwrap_or(&info.hash);
    if hash != expected {
        return Err(CliError::refused(format!(
            "version {} of group {group:?} is corrupt: the server sent content that hashes to {hash}, not the recorded {expected}",
            info.version
        )));
    }
    Ok((info, snapshot))
}

/// Prints the server's warnings about what it accepted (a certificate about
/// to expire) on stderr: stdout stays the result a script parses.
fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

/// `get --as xds`: the resources the control server serves for this
/// version, translated here by the same function.
fn get_xds(
    group: &str,
    info: &pb::VersionInfo,
    snapshot: &Snapshot,
    client: XdsClient,
    fmt: OutputFormat,
) -> Result<String, CliError> {
    let resources = vane_xds::translate(snapshot).map_err(|e| {
        CliError::refused(format!(
            "version {} of {group} has no xDS form: {e}",
            info.version
        ))
    })?;
    let view = XdsView::new(group, info.version, &info.hash, client, &resources)
        .map_err(|e| CliError::refused(format!("cannot render the xDS resources: {e}")))?;
    Ok(output::xds(&view, fmt))
}

/// Reads and parses the file to push or compare (`-` is standard input;
/// `get -o json|yaml` output of `group` is accepted). Full validation is the
/// server's: it is the single authority on what a valid snapshot is.
fn read_local(path: &Path, group: &str) -> Result<LocalFile, CliError> {
    Ok(LocalFile {
        label: if path == Path::new("-") {
            "<stdin>".to_owned()
        } else {
            path.display().to_string()
        },
        spec: crate::snapshot_file::read(path, group)?,
    })
}

/// Colour the diff only for a person at a terminal who has not asked for none
/// (<https://no-color.org>).
fn use_color(fmt: OutputFormat) -> bool {
    fmt == OutputFormat::Table
        && std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Failure;

    #[test]
    fn unreadable_files_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.yaml");
        let e = read_local(&missing, "edge").unwrap_err();
        assert_eq!(e.kind, Failure::Usage);
        assert!(e.message.starts_with("cannot read "), "{}", e.message);

        let empty = dir.path().join("empty.yaml");
        std::fs::write(&empty, "# nothing\n\n").unwrap();
        let e = read_local(&empty, "edge").unwrap_err();
        assert_eq!(e.kind, Failure::Usage);
        assert_eq!(e.message, format!("{}: the file is empty", empty.display()));

        let unknown = dir.path().join("unknown.yaml");
        std::fs::write(&unknown, "listeners:\n  - { name: web, adress: x }\n").unwrap();
        let e = read_local(&unknown, "edge").unwrap_err();
        assert_eq!(e.kind, Failure::Usage);
        assert!(e.message.contains("listeners[0]"), "{}", e.message);
        assert!(e.message.contains("adress"), "{}", e.message);
    }

    #[test]
    fn invalid_but_parsable_files_go_to_the_server() {
        // A dangling reference parses; the server decides (and refuses, exit 1).
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dangling.yaml");
        std::fs::write(
            &file,
            "listeners:\n  - { name: web, address: \"127.0.0.1:1\", protocol: tcp, cluster: nope }\n",
        )
        .unwrap();
        let local = read_local(&file, "edge").unwrap();
        assert_eq!(local.spec.listeners.len(), 1);
        assert_eq!(local.label, file.display().to_string());
    }

    /// vanectl against a fake Admin server behind rustls (tonic's server
    /// TLS), through `execute`: what the user would see.
    mod tls {
        use std::path::Path;

        use clap::Parser as _;
        use tokio_stream::wrappers::TcpListenerStream;
        use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
        use tonic::{Request, Response, Status};
        use vane_pki::{Ca, LeafParams, Validity};

        use super::*;
        use crate::error::Failure;

        struct Fake;

        #[tonic::async_trait]
        impl pb::admin_server::Admin for Fake {
            async fn push(
                &self,
                _: Request<pb::PushRequest>,
            ) -> Result<Response<pb::PushResponse>, Status> {
                Err(Status::unimplemented(""))
            }
            async fn get(
                &self,
                _: Request<pb::GetRequest>,
            ) -> Result<Response<pb::GetResponse>, Status> {
                Err(Status::unimplemented(""))
            }
            async fn history(
                &self,
                _: Request<pb::HistoryRequest>,
            ) -> Result<Response<pb::HistoryResponse>, Status> {
                Err(Status::unimplemented(""))
            }
            async fn diff(
                &self,
                _: Request<pb::DiffRequest>,
            ) -> Result<Response<pb::DiffResponse>, Status> {
                Err(Status::unimplemented(""))
            }
            async fn rollback(
                &self,
                _: Request<pb::RollbackRequest>,
            ) -> Result<Response<pb::PushResponse>, Status> {
                Err(Status::unimplemented(""))
            }
            async fn start_rollout(
                &self,
                _: Request<pb::StartRolloutRequest>,
            ) -> Result<Response<pb::RolloutResponse>, Status> {
                Err(Status::unimplemented(""))
            }
            async fn get_rollout(
                &self,
                _: Request<pb::GetRolloutRequest>,
            ) -> Result<Response<pb::RolloutResponse>, Status> {
                Err(Status::unimplemented(""))
            }
            async fn control_rollout(
                &self,
                _: Request<pb::ControlRolloutRequest>,
            ) -> Result<Response<pb::RolloutResponse>, Status> {
                Err(Status::unimplemented(""))
            }
            async fn list_groups(
                &self,
                _: Request<pb::ListGroupsRequest>,
            ) -> Result<Response<pb::ListGroupsResponse>, Status> {
                Err(Status::unimplemented(""))
            }
            async fn delete_group(
                &self,
                _: Request<pb::DeleteGroupRequest>,
            ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
                Err(Status::unimplemented(""))
            }
            type WatchGroupStream = std::pin::Pin<
                Box<dyn tokio_stream::Stream<Item = Result<pb::WatchGroupResponse, Status>> + Send>,
            >;
            async fn watch_group(
                &self,
                _: Request<pb::WatchGroupRequest>,
            ) -> Result<Response<Self::WatchGroupStream>, Status> {
                Err(Status::unimplemented(""))
            }
            async fn status(
                &self,
                _: Request<pb::StatusRequest>,
            ) -> Result<Response<pb::StatusResponse>, Status> {
                Err(Status::unimplemented(""))
            }
            async fn audit(
                &self,
                _: Request<pb::AuditRequest>,
            ) -> Result<Response<pb::AuditResponse>, Status> {
                Err(Status::permission_denied(
                    "reader may not read the audit log of group edge",
                ))
            }
            /// Says how the caller authenticated: certificate, else token.
            async fn who_am_i(
                &self,
                request: Request<pb::WhoAmIRequest>,
            ) -> Result<Response<pb::WhoAmIResponse>, Status> {
                let cert = request.peer_certs().is_some_and(|c| !c.is_empty());
                let token = request
                    .metadata()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap_or_default().to_owned());
                let (identity, source) = match (cert, token) {
                    (true, _) => ("a certificate".to_owned(), "certificate"),
                    (false, Some(t)) => (t, "token"),
                    (false, None) => (String::new(), "none"),
                };
                Ok(Response::new(pb::WhoAmIResponse {
                    identity,
                    source: source.into(),
                    authorization: "on".into(),
                    roles: Vec::new(),
                }))
            }
            async fn server_version(
                &self,
                _: Request<pb::ServerVersionRequest>,
            ) -> Result<Response<pb::ServerVersionResponse>, Status> {
                Err(Status::unimplemented(""))
            }
        }

        /// A TLS server signed by `ca` that checks client certificates
        /// against `ca` (required unless `optional`).
        async fn serve(ca: &Ca, optional: bool) -> String {
            let server = ca.issue(&LeafParams::server(["127.0.0.1"])).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("https://{}", listener.local_addr().unwrap());
            let tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(&server.cert_pem, &server.key_pem))
                .client_ca_root(Certificate::from_pem(ca.cert_pem()))
                .client_auth_optional(optional);
            let router = Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(pb::admin_server::AdminServer::new(Fake));
            tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
            url
        }

        /// Writes `ca.pem`, and `NAME.pem`/`NAME.key` for each client.
        fn write(dir: &Path, ca: &Ca, clients: &[(&str, LeafParams)]) {
            std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
            for (name, params) in clients {
                let pair = ca.issue(params).unwrap();
                pair.write(
                    &dir.join(format!("{name}.pem")),
                    &dir.join(format!("{name}.key")),
                    false,
                )
                .unwrap();
            }
        }

        async fn vanectl(dir: &Path, args: &[&str]) -> Result<String, CliError> {
            let path = |f: &str| dir.join(f).display().to_string();
            let args: Vec<String> = args
                .iter()
                .map(|a| match a.strip_prefix('@') {
                    Some(file) => path(file),
                    None => (*a).to_owned(),
                })
                .collect();
            let cli =
                Cli::try_parse_from(std::iter::once("vanectl".to_owned()).chain(args)).unwrap();
            execute(&cli, &mut |_| {}).await
        }

        #[tokio::test]
        async fn certificates_and_tokens_reach_the_server() {
            let ca = Ca::new("test CA").unwrap();
            let url = serve(&ca, true).await;
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), &ca, &[("op", LeafParams::client("operator"))]);
            std::fs::write(dir.path().join("token"), "t0ken\n").unwrap();
            let out = vanectl(
                dir.path(),
                &[
                    "--server", &url, "--ca", "@ca.pem", "--cert", "@op.pem", "--key", "@op.key",
                    "-o", "json", "whoami",
                ],
            )
            .await
            .unwrap();
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["source"], "certificate", "{out}");

            let out = vanectl(
                dir.path(),
                &[
                    "--server",
                    &url,
                    "--ca",
                    "@ca.pem",
                    "--token-file",
                    "@token",
                    "-o",
                    "json",
                    "whoami",
                ],
            )
            .await
            .unwrap();
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["source"], "token", "{out}");
            assert_eq!(v["identity"], "Bearer t0ken", "{out}");

            // A refusal is the server's message, exit 1.
            let e = vanectl(dir.path(), &["--server", &url, "--ca", "@ca.pem", "audit"])
                .await
                .unwrap_err();
            assert_eq!(e.kind, Failure::Refused);
            assert_eq!(e.message, "reader may not read the audit log of group edge");
        }

        #[tokio::test]
        async fn a_server_of_another_ca_is_unreachable_and_says_why() {
            let ca = Ca::new("test CA").unwrap();
            let url = serve(&Ca::new("impostor CA").unwrap(), true).await;
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), &ca, &[]);
            let e = vanectl(dir.path(), &["--server", &url, "--ca", "@ca.pem", "whoami"])
                .await
                .unwrap_err();
            assert_eq!(e.kind, Failure::Unreachable);
            assert_eq!(
                e.message,
                format!(
                    "cannot reach the control server at {url}: TLS handshake failed: \
                     invalid peer certificate: UnknownIssuer \
                     (the server's certificate is not signed by the CA given (--ca))"
                )
            );
        }

        #[tokio::test]
        async fn refused_client_certificates_are_unreachable_and_say_why() {
            let ca = Ca::new("test CA").unwrap();
            let url = serve(&ca, false).await;
            let dir = tempfile::tempdir().unwrap();
            write(
                dir.path(),
                &ca,
                &[(
                    "late",
                    LeafParams::client("operator").validity(Validity::expired()),
                )],
            );
            let e = vanectl(
                dir.path(),
                &[
                    "--server",
                    &url,
                    "--ca",
                    "@ca.pem",
                    "--cert",
                    "@late.pem",
                    "--key",
                    "@late.key",
                    "whoami",
                ],
            )
            .await
            .unwrap_err();
            assert_eq!(e.kind, Failure::Unreachable);
            assert!(e.message.contains("TLS handshake failed"), "{}", e.message);
            assert!(e.message.contains("expired"), "{}", e.message);

            let e = vanectl(dir.path(), &["--server", &url, "--ca", "@ca.pem", "whoami"])
                .await
                .unwrap_err();
            assert_eq!(e.kind, Failure::Unreachable);
            assert!(
                e.message.contains("requires a client certificate"),
                "{}",
                e.message
            );
        }
    }
}
