//! A unified diff (what the Admin `Diff` answers) cut into typed lines with
//! their line numbers on each side, so the page highlights it without
//! parsing it again.

use serde::Serialize;

/// What one line of a unified diff is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// `--- a` or `+++ b`: which files are compared.
    File,
    /// `@@ -a,b +c,d @@`: where a hunk starts.
    Hunk,
    /// In the newer version only.
    Add,
    /// In the older version only.
    Del,
    /// In both.
    Context,
}

/// One line of the diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Line {
    pub(crate) kind: Kind,
    /// The line as the diff has it, its `+`, `-` or space included.
    pub(crate) text: String,
    /// Its number in the older version (none for an added line).
    pub(crate) old: Option<u64>,
    /// Its number in the newer version (none for a removed line).
    pub(crate) new: Option<u64>,
}

/// The lines of `unified`, numbered from each hunk's header.
pub(crate) fn lines(unified: &str) -> Vec<Line> {
    let (mut old, mut new) = (0u64, 0u64);
    let mut in_hunk = false;
    unified
        .lines()
        .map(|text| {
            let line = |kind, old, new| Line {
                kind,
                text: text.to_owned(),
                old,
                new,
            };
            if let Some((o, n)) = hunk_start(text) {
                (old, new, in_hunk) = (o, n, true);
                return line(Kind::Hunk, None, None);
            }
            if !in_hunk && (text.starts_with("--- ") || text.starts_with("+++ ")) {
                return line(Kind::File, None, None);
            }
            match text.as_bytes().first() {
                Some(b'+') => {
                    new += 1;
                    line(Kind::Add, None, Some(new))
                }
                Some(b'-') => {
                    old += 1;
                    line(Kind::Del, Some(old), None)
                }
                // "\ No newline at end of file" belongs to no side.
                Some(b'\\') => line(Kind::Context, None, None),
                _ => {
                    old += 1;
                    new += 1;
                    line(Kind::Context, Some(old), Some(new))
                }
            }
        })
        .collect()
}

/// From `@@ -a[,b] +c[,d] @@`: the numbers before the first line of each
/// side (`a - 1`, `c - 1`).
fn hunk_start(text: &str) -> Option<(u64, u64)> {
    let rest = text.strip_prefix("@@ -")?;
    let (ranges, _) = rest.split_once(" @@")?;
    let (old, new) = ranges.split_once(" +")?;
    let first = |range: &str| -> Option<u64> {
        let start = range.split(',').next()?.parse::<u64>().ok()?;
        Some(start.saturating_sub(1))
    };
    Some((first(old)?, first(new)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_typed_and_numbered_on_each_side() {
        let diff = "--- edge@1\n+++ edge@2\n@@ -3,3 +3,4 @@\n a: 1\n-b: 2\n+b: 3\n+c: 4\n d: 5\n";
        let lines = lines(diff);
        let kinds: Vec<Kind> = lines.iter().map(|l| l.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::File,
                Kind::File,
                Kind::Hunk,
                Kind::Context,
                Kind::Del,
                Kind::Add,
                Kind::Add,
                Kind::Context
            ]
        );
        let numbers: Vec<(Option<u64>, Option<u64>)> =
            lines.iter().skip(3).map(|l| (l.old, l.new)).collect();
        assert_eq!(
            numbers,
            [
                (Some(3), Some(3)),
                (Some(4), None),
                (None, Some(4)),
                (None, Some(5)),
                (Some(5), Some(6))
            ]
        );
        assert_eq!(lines[4].text, "-b: 2");
    }

    #[test]
    fn a_removed_line_that_looks_like_a_header_inside_a_hunk_is_a_removal() {
        let lines = lines("@@ -1 +1 @@\n--- x\n+++ y\n");
        assert_eq!(lines[1].kind, Kind::Del);
        assert_eq!(lines[2].kind, Kind::Add);
    }

    #[test]
    fn an_empty_diff_has_no_lines_and_a_bad_header_is_context() {
        assert!(lines("").is_empty());
        assert_eq!(hunk_start("@@ nonsense @@"), None);
        assert_eq!(hunk_start("@@ -0,0 +1,2 @@"), Some((0, 0)));
    }
}
