//! `diff G -f FILE [--version N]` and `push --dry-run`'s diff: the file's
//! canonical form against a stored version's, compared here.

use vane_model::{Snapshot, SnapshotSpec};
use vane_proto as pb;

use crate::args::OutputFormat;
use crate::client::Admin;
use crate::compare::{self, Summary};
use crate::error::CliError;
use crate::output::{self, FileDiffView, FileSide, PushView, VersionView};

use super::{checked_snapshot, use_color, warn};

/// A local snapshot file, read and checked before connecting.
#[derive(Debug)]
pub(super) struct LocalFile {
    /// The path as given, `<stdin>` for `-`.
    pub(super) label: String,
    /// As written (what `push` sends).
    pub(super) spec: SnapshotSpec,
}

/// The stored version `version` (the head when `None`) of `group`, keys
/// redacted unless `show_secrets`; `None` when the group has no version yet
/// (asked for the head only: a missing version N is the server's refusal).
async fn stored(
    admin: &mut Admin,
    url: &str,
    group: &str,
    version: Option<u64>,
    show_secrets: bool,
) -> Result<Option<(pb::VersionInfo, Snapshot)>, CliError> {
    let request = pb::GetRequest {
        group: group.to_owned(),
        version,
        show_secrets,
    };
    let resp = match admin.get(request).await {
        Ok(resp) => resp.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound && version.is_none() => {
            return Ok(None);
        }
        Err(status) => return Err(CliError::from_status(&status, url)),
    };
    let (info, mut snapshot) = checked_snapshot(group, resp)?;
    if !show_secrets {
        vane_model::redact::redact_snapshot(&mut snapshot);
    }
    Ok(Some((info, snapshot)))
}

/// The label a stored side has in the diff's header (`edge@3`, as the
/// server's `diff` writes it), or `edge@0` for nothing stored.
fn stored_label(group: &str, info: Option<&pb::VersionInfo>) -> String {
    format!("{group}@{}", info.map_or(0, |i| i.version))
}

/// `vanectl diff G -f FILE [--version N]`: exit 0 when equal, 1 (with the
/// diff on stdout and nothing on stderr) when not, 2 when the server
/// refuses (or on a usage error), 3 when it cannot be reached.
pub(super) async fn diff_file(
    admin: &mut Admin,
    url: &str,
    group: &str,
    version: Option<u64>,
    file: LocalFile,
    show_secrets: bool,
    fmt: OutputFormat,
) -> Result<String, CliError> {
    // Checked in `execute` already (exit 2 before connecting).
    let local = compare::canonical(file.spec, show_secrets)
        .map_err(|e| CliError::usage(format!("{}: {e}", file.label)))?;
    // Exit 1 means "different" here, so a refusal (an unknown --version,
    // not allowed, a stored version failing its hash) must not say it: it
    // exits 2, as kubectl diff exits above 1 on errors.
    let head = stored(admin, url, group, version, show_secrets)
        .await
        .map_err(|e| match e.kind {
            crate::error::Failure::Refused => CliError {
                kind: crate::error::Failure::Usage,
                ..e
            },
            _ => e,
        })?;
    if head.is_none() && fmt == OutputFormat::Table {
        eprintln!("note: group {group:?} has no version yet: comparing with an empty snapshot");
    }
    let old_yaml = head.as_ref().map(|(_, s)| s.to_yaml()).unwrap_or_default();
    let old_spec = head.as_ref().map(|(_, s)| s.to_spec()).unwrap_or_default();
    let new_yaml = local.to_yaml();
    let diff = vane_model::unified_diff(
        &old_yaml,
        &new_yaml,
        &stored_label(group, head.as_ref().map(|(i, _)| i)),
        &file.label,
    );
    let view = FileDiffView {
        group: group.to_owned(),
        from: head.as_ref().map(|(info, _)| VersionView::from(info)),
        to: FileSide {
            file: file.label,
            hash: local.content_hash().to_hex(),
        },
        equal: diff.is_empty(),
        summary: Summary::of(&old_spec, &local.to_spec()),
        diff,
    };
    let text = output::file_diff(&view, fmt, use_color(fmt));
    if view.equal {
        Ok(text)
    } else {
        Err(CliError::differs(text))
    }
}

/// `push --dry-run`: the server's answer, plus the diff of the head and
/// the pushed content, the summary, and warnings (on stderr too) when the
/// push removes every listener or every route.
pub(super) async fn push_dry_run(
    admin: &mut Admin,
    url: &str,
    request: pb::PushRequest,
    file: LocalFile,
    fmt: OutputFormat,
) -> Result<String, CliError> {
    let group = request.group.clone();
    let resp = admin
        .push(request)
        .await
        .map_err(|s| CliError::from_status(&s, url))?
        .into_inner();
    warn(&resp.warnings);
    let mut view = PushView::new(&resp, None);
    let mut warnings = resp.warnings.clone();
    // The server accepted the content; a local form it cannot take (it
    // validates here as there, so this is unexpected) only loses the diff.
    match compare::canonical(file.spec, false) {
        Ok(local) => {
            let head = stored(admin, url, &group, None, false).await?;
            let old_spec = head.as_ref().map(|(_, s)| s.to_spec()).unwrap_or_default();
            let new_spec = local.to_spec();
            view.diff = Some(vane_model::unified_diff(
                &head.as_ref().map(|(_, s)| s.to_yaml()).unwrap_or_default(),
                &local.to_yaml(),
                &stored_label(&group, head.as_ref().map(|(i, _)| i)),
                &file.label,
            ));
            view.summary = Some(Summary::of(&old_spec, &new_spec));
            let ours = compare::warnings(&old_spec, &new_spec);
            warn(&ours);
            warnings.extend(ours);
        }
        Err(e) => {
            let w = format!("no diff shown: {}: {e}", file.label);
            warn(std::slice::from_ref(&w));
            warnings.push(w);
        }
    }
    view.warnings = Some(warnings);
    Ok(output::dry_run(&view, fmt, use_color(fmt)))
}
