//! Rendering comparisons with a local file: `diff G -f FILE` and the diff,
//! summary and warnings of `push --dry-run`.

use serde::Serialize;

use crate::args::OutputFormat;
use crate::compare::Summary;
use crate::output::format::{encode, short};
use crate::output::render::{paint, push};
use crate::output::views::{PushView, VersionView};

/// The file side of `diff -f`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct FileSide {
    /// The path as given (`<stdin>` for `-`).
    pub(crate) file: String,
    /// The hash the file's content would be stored under (keys redacted
    /// unless --show-secrets, as the stored side is shown).
    pub(crate) hash: String,
}

/// The result of `diff G -f FILE` (the JSON contract): `from` is the stored
/// version (`null` when the group has none yet), `to` the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct FileDiffView {
    pub(crate) group: String,
    pub(crate) from: Option<VersionView>,
    pub(crate) to: FileSide,
    /// Whether the canonical forms are the same (exit 0; else exit 1).
    pub(crate) equal: bool,
    /// Unified diff of the canonical YAML; empty when equal.
    pub(crate) diff: String,
    pub(crate) summary: Summary,
}

/// `diff -f`: the diff (coloured on a terminal) and the summary line, or a
/// sentence when the contents are equal.
pub(crate) fn file_diff(view: &FileDiffView, format: OutputFormat, color: bool) -> String {
    if format != OutputFormat::Table {
        return encode(view, format);
    }
    let stored = match &view.from {
        Some(v) => format!("version {} of {}", v.version, view.group),
        None => format!("{} (no version yet)", view.group),
    };
    if view.equal {
        return format!(
            "no difference: {} and {stored} have the same content (sha256 {})\n",
            view.to.file,
            short(&view.to.hash)
        );
    }
    format!("{}{}\n", paint(&view.diff, color), view.summary.line())
}

/// `push --dry-run`: the push's own line, then the diff against the head
/// and the summary line (JSON and YAML: the push's fields plus `diff`,
/// `summary` and `warnings`).
pub(crate) fn dry_run(view: &PushView, format: OutputFormat, color: bool) -> String {
    let mut out = push(view, format);
    if format != OutputFormat::Table {
        return out;
    }
    if let Some(diff) = view.diff.as_deref().filter(|d| !d.is_empty()) {
        out.push_str(&paint(diff, color));
    }
    if let Some(summary) = &view.summary {
        out.push_str(&summary.line());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::Counts;
    use vane_proto as pb;

    fn view(diff: &str) -> FileDiffView {
        FileDiffView {
            group: "edge".into(),
            from: Some(VersionView::from(&pb::VersionInfo {
                version: 3,
                hash: "cd".repeat(32),
                ..pb::VersionInfo::default()
            })),
            to: FileSide {
                file: "v2.yaml".into(),
                hash: "ab".repeat(32),
            },
            equal: diff.is_empty(),
            diff: diff.into(),
            summary: Summary {
                listeners: Counts {
                    added: 0,
                    removed: 0,
                    changed: 1,
                },
                ..Summary::default()
            },
        }
    }

    #[test]
    fn file_diffs() {
        let diff = "--- edge@3\n+++ v2.yaml\n@@ -1 +1 @@\n-a\n+b\n";
        let out = file_diff(&view(diff), OutputFormat::Table, false);
        assert_eq!(
            out,
            format!(
                "{diff}listeners: 0 added, 0 removed, 1 changed; routes: 0 added, 0 removed, 0 changed; clusters: 0 added, 0 removed, 0 changed\n"
            )
        );
        let out = file_diff(&view(diff), OutputFormat::Table, true);
        assert!(
            out.contains("\x1b[31m-a\x1b[0m\n\x1b[32m+b\x1b[0m\n"),
            "{out:?}"
        );
        let out = file_diff(&view(""), OutputFormat::Table, false);
        assert_eq!(
            out,
            "no difference: v2.yaml and version 3 of edge have the same content (sha256 abababababab)\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&file_diff(&view(diff), OutputFormat::Json, true)).unwrap();
        assert_eq!(json["group"], "edge");
        assert_eq!(json["from"]["version"], 3);
        assert_eq!(json["to"]["file"], "v2.yaml");
        assert_eq!(json["equal"], false);
        assert_eq!(json["diff"], diff);
        assert_eq!(json["summary"]["listeners"]["changed"], 1);
        let mut none = view(diff);
        none.from = None;
        let json: serde_json::Value =
            serde_json::from_str(&file_diff(&none, OutputFormat::Json, false)).unwrap();
        assert!(json["from"].is_null());
    }

    #[test]
    fn dry_runs_keep_their_line_and_add_the_diff() {
        let mut v = PushView::new(
            &pb::PushResponse {
                group: "edge".into(),
                version: 4,
                hash: "ab".repeat(32),
                dry_run: true,
                ..pb::PushResponse::default()
            },
            None,
        );
        v.diff = Some("-a\n+b\n".into());
        v.summary = Some(Summary::default());
        v.warnings = Some(vec!["this removes every listener".into()]);
        let out = dry_run(&v, OutputFormat::Table, false);
        assert!(
            out.starts_with("dry run: edge would become version 4 (sha256 abababababab); nothing was stored\n-a\n+b\nlisteners: 0 added"),
            "{out}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&dry_run(&v, OutputFormat::Json, false)).unwrap();
        assert_eq!(json["dry_run"], true);
        assert_eq!(json["version"], 4);
        assert_eq!(json["diff"], "-a\n+b\n");
        assert_eq!(json["summary"]["routes"]["added"], 0);
        assert_eq!(json["warnings"][0], "this removes every listener");
    }
}
