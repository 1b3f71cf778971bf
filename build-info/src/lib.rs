//! Which Vane was built: the version, the git commit (12 hex digits, or
//! `unknown` when built outside git without `VANE_COMMIT`) and the commit's
//! date, found by the build script. Every binary's `--version` prints
//! [`LONG_VERSION`]; the three metrics endpoints export
//! `vane_build_info{version,commit} 1`; `vanectl version` shows the client's
//! and the server's.

/// The release, e.g. `0.1.0` (the workspace's version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit built from, shortened to 12 hex digits, or `unknown`.
pub const COMMIT: &str = env!("VANE_BUILD_COMMIT");

/// The commit's date (`YYYY-MM-DD`, the committer's), or empty when unknown.
pub const COMMIT_DATE: &str = env!("VANE_BUILD_COMMIT_DATE");

/// What `--version` prints after the binary's name:
/// `0.1.0 (commit 1a2b3c4d5e6f, 2026-12-07)`, or `0.1.0 (commit unknown)`.
pub const LONG_VERSION: &str = env!("VANE_BUILD_LONG_VERSION");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_version_names_the_version_and_the_commit() {
        assert!(LONG_VERSION.starts_with(&format!("{VERSION} (commit {COMMIT}")));
        assert!(LONG_VERSION.ends_with(')'));
        assert!(
            COMMIT == "unknown"
                || (COMMIT.len() >= 7 && COMMIT.chars().all(|c| c.is_ascii_hexdigit())),
            "{COMMIT}"
        );
        if !COMMIT_DATE.is_empty() {
            assert!(LONG_VERSION.ends_with(&format!(", {COMMIT_DATE})")));
        }
    }
}
