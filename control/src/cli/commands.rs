//! One function per vanectl subcommand: build the Admin request, call the
//! server, hand the answer to [`super::output`].

use std::io::{IsTerminal as _, Read as _};
use std::path::Path;
use std::time::SystemTime;

use tonic::transport::Channel;
use vane_model::Snapshot;
use vane_model::file::ReadError;
use vane_proto as pb;

use super::args::{Cli, Command, OutputFormat};
use super::client;
use super::error::CliError;
use super::output::{self, AgentView, DiffView, PushView, VersionView};

type Admin = pb::admin_client::AdminClient<Channel>;

/// Runs the command and returns what to print on stdout.
pub(crate) async fn execute(cli: &Cli) -> Result<String, CliError> {
    let url = client::server_url(&cli.server)?;
    // The file is read before connecting: a bad file is the user's to fix
    // whether or not the server is up, and gets exit code 2 either way.
    let pushed = match &cli.command {
        Command::Push { file, .. } => Some(read_snapshot(file)?),
        _ => None,
    };
    let call = async {
        let mut admin = client::connect(&url, cli.timeout).await?;
        dispatch(&mut admin, cli, &url, pushed).await
    };
    let writes = matches!(cli.command, Command::Push { .. } | Command::Rollback { .. });
    match tokio::time::timeout(cli.timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(CliError::unreachable(format!(
            "no answer from the control server at {url} within {} (see --timeout){}",
            humantime::format_duration(cli.timeout),
            if writes {
                "; the change may still have been stored: check `vanectl history`"
            } else {
                ""
            }
        ))),
    }
}

async fn dispatch(
    admin: &mut Admin,
    cli: &Cli,
    url: &str,
    pushed: Option<pb::Snapshot>,
) -> Result<String, CliError> {
    let fmt = cli.output;
    let refused = |status: tonic::Status| CliError::from_status(&status, url);
    match &cli.command {
        Command::Push {
            group,
            expect_version,
            dry_run,
            message,
            ..
        } => {
            let request = pb::PushRequest {
                group: group.clone(),
                snapshot: pushed,
                expected_version: *expect_version,
                dry_run: *dry_run,
                message: message.clone().unwrap_or_default(),
            };
            let resp = admin.push(request).await.map_err(refused)?.into_inner();
            Ok(output::push(&PushView::new(&resp, None), fmt))
        }
        Command::Get { group, version } => {
            let request = pb::GetRequest {
                group: group.clone(),
                version: *version,
            };
            let resp = admin.get(request).await.map_err(refused)?.into_inner();
            get(group, resp, fmt)
        }
        Command::History { group, limit } => {
            let request = pb::HistoryRequest {
                group: group.clone(),
                limit: limit.unwrap_or(0),
            };
            let resp = admin.history(request).await.map_err(refused)?.into_inner();
            let entries: Vec<VersionView> = resp.versions.iter().map(VersionView::from).collect();
            Ok(output::history(&entries, fmt))
        }
        Command::Diff { group, a, b } => {
            let request = pb::DiffRequest {
                group: group.clone(),
                from_version: *a,
                to_version: *b,
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
        } => {
            let request = pb::RollbackRequest {
                group: group.clone(),
                to_version: *to,
                expected_version: *expect_version,
                message: message.clone().unwrap_or_default(),
            };
            let resp = admin.rollback(request).await.map_err(refused)?.into_inner();
            Ok(output::push(&PushView::new(&resp, Some(*to)), fmt))
        }
        Command::Status { group } => {
            let request = pb::StatusRequest {
                group: group.clone().unwrap_or_default(),
            };
            let resp = admin.status(request).await.map_err(refused)?.into_inner();
            let degraded = resp.store.as_ref().is_some_and(|s| s.degraded);
            let mut agents: Vec<AgentView> = resp
                .agents
                .iter()
                .map(|a| {
                    let mut view = AgentView::from(a);
                    view.control_degraded = degraded;
                    view
                })
                .collect();
            agents.sort_by(|a, b| (&a.group, &a.node_id).cmp(&(&b.group, &b.node_id)));
            Ok(output::status(
                &agents,
                &resp.groups,
                resp.store.as_ref(),
                fmt,
                SystemTime::now(),
            ))
        }
    }
}

fn get(group: &str, resp: pb::GetResponse, fmt: OutputFormat) -> Result<String, CliError> {
    let info = resp.info.unwrap_or_default();
    let Some(snapshot) = resp.snapshot else {
        return Err(CliError::refused(format!(
            "the server sent version {} of {group} without its snapshot",
            info.version
        )));
    };
    let snapshot = Snapshot::try_from(snapshot).map_err(|e| {
        CliError::refused(format!(
            "the server sent an invalid snapshot for {group} version {}: {e}",
            info.version
        ))
    })?;
    // The hash is recomputed here, so a corrupted store or transfer is
    // noticed by the operator; the content is still shown.
    let hash = snapshot.content_hash().to_hex();
    if hash != info.hash {
        eprintln!(
            "warning: {group} version {}: the content hashes to {hash}, but the server recorded {}",
            info.version, info.hash
        );
    }
    Ok(output::get(group, &info, &snapshot, fmt))
}

/// Reads and parses the file to push (`-` is standard input). Full validation
/// is the server's: it is the single authority on what a valid snapshot is.
fn read_snapshot(path: &Path) -> Result<pb::Snapshot, CliError> {
    let spec = if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| CliError::usage(format!("cannot read standard input: {e}")))?;
        let format = vane_model::Format::detect(None, &bytes);
        vane_model::parse_file(&bytes, format)
            .map_err(|e| CliError::usage(format!("<stdin>: {e}")))?
    } else {
        vane_model::file::read_file(path).map_err(|e| match e {
            ReadError::Io(..) => CliError::usage(e.to_string()),
            ReadError::File(e) => CliError::usage(format!("{}: {e}", path.display())),
        })?
    };
    Ok(vane_model::proto::spec_to_proto(&spec))
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
    use crate::cli::error::Failure;

    #[test]
    fn unreadable_files_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.yaml");
        let e = read_snapshot(&missing).unwrap_err();
        assert_eq!(e.kind, Failure::Usage);
        assert!(e.message.starts_with("cannot read "), "{}", e.message);

        let empty = dir.path().join("empty.yaml");
        std::fs::write(&empty, "# nothing\n\n").unwrap();
        let e = read_snapshot(&empty).unwrap_err();
        assert_eq!(e.kind, Failure::Usage);
        assert_eq!(e.message, format!("{}: the file is empty", empty.display()));

        let unknown = dir.path().join("unknown.yaml");
        std::fs::write(&unknown, "listeners:\n  - { name: web, adress: x }\n").unwrap();
        let e = read_snapshot(&unknown).unwrap_err();
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
        let snapshot = read_snapshot(&file).unwrap();
        assert_eq!(snapshot.listeners.len(), 1);
    }
}
