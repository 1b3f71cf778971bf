//! Finds the git commit the binaries are built from (`git rev-parse`), or
//! takes it from `VANE_COMMIT` when there is no git (a source tarball), and
//! tells cargo when to look again: when HEAD moves (a commit, a checkout).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=VANE_COMMIT");
    println!("cargo:rerun-if-env-changed=VANE_COMMIT_DATE");
    println!("cargo:rerun-if-changed=build.rs");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let from_git = git(&dir, &["rev-parse", "--short=12", "HEAD"]);
    if from_git.is_some() {
        watch_head(&dir);
    }
    // An explicit VANE_COMMIT wins: a packager building from a tarball
    // inside some other repository must not get that repository's commit.
    let commit = env("VANE_COMMIT")
        .or(from_git)
        .unwrap_or_else(|| "unknown".to_owned());
    let date = env("VANE_COMMIT_DATE").or_else(|| {
        if commit == "unknown" {
            None
        } else {
            git(&dir, &["show", "-s", "--format=%cs", &commit])
        }
    });
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let long = match &date {
        Some(d) => format!("{version} (commit {commit}, {d})"),
        None => format!("{version} (commit {commit})"),
    };
    println!("cargo:rustc-env=VANE_BUILD_COMMIT={commit}");
    println!(
        "cargo:rustc-env=VANE_BUILD_COMMIT_DATE={}",
        date.unwrap_or_default()
    );
    println!("cargo:rustc-env=VANE_BUILD_LONG_VERSION={long}");
}

/// A non-empty variable of the environment.
fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// One line of `git ARGS` run in `dir`, when git exists and succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!line.is_empty()).then_some(line)
}

/// Reruns this script when HEAD or the branch it points to moves. In a
/// worktree `.git` is a file, so the directories come from git itself:
/// HEAD is in the worktree's git dir, branches in the common one (loose,
/// or in `packed-refs`). Only existing files are named: cargo reruns on
/// every build for a path that does not exist.
fn watch_head(dir: &Path) {
    let path = |args: &[&str]| git(dir, args).map(|p| dir.join(p));
    let (Some(git_dir), Some(common)) = (
        path(&["rev-parse", "--git-dir"]),
        path(&["rev-parse", "--git-common-dir"]),
    ) else {
        return;
    };
    let mut files = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        files.push(common.join(&branch));
        files.push(git_dir.join(&branch));
    }
    for f in files.into_iter().filter(|f| f.is_file()) {
        println!("cargo:rerun-if-changed={}", f.display());
    }
}
