//! How the demos talk: numbered sections with a wrapped explanation,
//! durations in milliseconds, the tail of a log.

use std::path::Path;
use std::time::Duration;

/// `==> N. title` and the explanation, wrapped and indented below it.
pub(crate) fn section(n: usize, title: &str, explain: &str) {
    println!();
    println!("==> {n}. {title}");
    println!("    {}", wrap(explain, 76, "    "));
}

/// `123 ms`.
pub(crate) fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// The last `n` lines of a file (for error messages).
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = vane_testkit::process::read_lossy(path);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Word-wraps `text` to `width` columns, continuing lines with `indent`.
pub(crate) fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut col = 0;
    for word in text.split_whitespace() {
        if col > 0 && col + 1 + word.len() > width {
            out.push('\n');
            out.push_str(indent);
            col = 0;
        } else if col > 0 {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += word.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping() {
        assert_eq!(wrap("aa bb cc", 5, "  "), "aa bb\n  cc");
    }

    #[test]
    fn tails() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        std::fs::write(&log, "1\n2\n3\n").unwrap();
        assert_eq!(tail(&log, 2), "2\n3");
        assert_eq!(tail(&dir.path().join("missing"), 2), "");
    }
}
