//! `cargo xtask tidy`: rules of the codebase that no compiler checks, over
//! every Rust file git knows of (tracked, or new and not ignored), outside
//! `target/` and `fuzz/target/`:
//!
//! - every `.rs` file opens with a `//!` line saying what it is for;
//! - no file has more than 800 lines before its unit tests (its first
//!   `#[cfg(test)]` line);
//! - no circle of imports between the files of a crate ([`modules`]);
//! - each workspace crate depends only on the workspace crates its rule
//!   allows, and two crates keep heavy packages out of their tree ([`deps`]).
//!
//! Every violation is printed as `path:line: what is wrong`; any makes the
//! task fail. `cargo xtask test` runs it right after the format check.

mod circles;
mod deps;
mod imports;
mod modules;
mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Lines a file may have before its unit tests.
const MAX_LINES: usize = 800;

pub(crate) fn run(root: &Path) -> Result<()> {
    let files = listed_files(root)?;
    let mut sources = BTreeMap::new();
    for path in files.iter().filter(|f| f.ends_with(".rs")) {
        let text = std::fs::read_to_string(root.join(path))
            .with_context(|| format!("cannot read {path}"))?;
        sources.insert(path.clone(), text);
    }

    let mut violations: Vec<String> = Vec::new();
    for (path, text) in &sources {
        violations.extend(
            file_rules(text)
                .into_iter()
                .map(|(line, what)| format!("{path}:{line}: {what}")),
        );
    }

    let mut crate_dirs = 0;
    let mut circles = 0;
    let mut seen: BTreeSet<Vec<String>> = BTreeSet::new();
    for manifest in files
        .iter()
        .filter(|f| *f == "Cargo.toml" || f.ends_with("/Cargo.toml"))
    {
        let text = std::fs::read_to_string(root.join(manifest))
            .with_context(|| format!("cannot read {manifest}"))?;
        if !text.lines().any(|l| l.trim() == "[package]") {
            continue;
        }
        crate_dirs += 1;
        let dir = manifest
            .strip_suffix("Cargo.toml")
            .unwrap_or_default()
            .trim_end_matches('/');
        for root_file in modules::crate_roots(dir, &text, &files) {
            for circle in modules::circles(dir, &modules::edges(&root_file, &sources)) {
                // A file shared by two targets (a library and its binary
                // through `#[path]`) would report its circle twice.
                let mut key = circle.walk.clone();
                key.sort();
                key.dedup();
                if !seen.insert(key) {
                    continue;
                }
                circles += 1;
                violations.push(format!(
                    "{}:{}: {}",
                    circle.walk[0],
                    circle.line,
                    circle.describe()
                ));
            }
        }
    }

    let (crates, findings) = deps::check(root)?;
    for f in findings {
        violations.push(format!("{}:{}: {}", f.manifest, f.line, f.what));
    }

    for v in &violations {
        println!("{v}");
    }
    println!(
        "tidy: {} files checked, {crate_dirs} crates checked for circles and {crates} for \
         dependencies, circles {circles}, violations {}",
        sources.len(),
        violations.len()
    );
    if !violations.is_empty() {
        bail!("tidy found {} violation(s), listed above", violations.len());
    }
    Ok(())
}

/// Files git knows of (tracked, or untracked and not ignored) that still
/// exist, relative to `root`, outside build output.
fn listed_files(root: &Path) -> Result<BTreeSet<String>> {
    let out = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output()
        .context("cannot run git ls-files (tidy lists the files to check with it)")?;
    if !out.status.success() {
        bail!(
            "git ls-files failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8(out.stdout).context("git ls-files printed a non-UTF-8 path")?;
    Ok(text
        .split('\0')
        .filter(|p| !p.is_empty())
        .filter(|p| !p.starts_with("target/") && !p.starts_with("fuzz/target/"))
        .filter(|p| root.join(p).is_file())
        .map(str::to_owned)
        .collect())
}

/// The rules about one file's text on its own: its first line, its length.
fn file_rules(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    if !text.starts_with("//!") {
        out.push((
            1,
            "the file must open with a `//!` line saying what it is for (nothing before it, \
             not even blank lines or `#![...]`)"
                .to_owned(),
        ));
    }
    let before = source::test_start(text).unwrap_or_else(|| text.lines().count());
    if before > MAX_LINES {
        out.push((
            MAX_LINES + 1,
            format!(
                "{before} lines before its unit tests (at most {MAX_LINES}): split it by concern"
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_opens_with_its_purpose() {
        assert!(file_rules("//! What this is for.\nfn f() {}\n").is_empty());
        assert_eq!(file_rules("\n//! Late.\n")[0].0, 1);
        assert_eq!(file_rules("#![allow(x)]\n//! Late.\n").len(), 1);
        assert_eq!(file_rules("/// An item doc.\nfn f() {}\n").len(), 1);
    }

    #[test]
    fn long_files_are_counted_up_to_their_tests() {
        let body = "//! x\n".to_owned() + &"fn f() {}\n".repeat(MAX_LINES - 1);
        let tests = "#[cfg(test)]\nmod tests {}\n".to_owned() + &"\n".repeat(2 * MAX_LINES);
        assert!(file_rules(&(body.clone() + &tests)).is_empty());
        let long = body + "fn g() {}\n" + &tests;
        assert_eq!(file_rules(&long)[0].0, MAX_LINES + 1);
    }

    #[test]
    fn xtask_itself_is_tidy() {
        let root = crate::workspace_root();
        let files = listed_files(&root).unwrap();
        let sources: BTreeMap<String, String> = files
            .iter()
            .filter(|f| f.starts_with("xtask/") && f.ends_with(".rs"))
            .map(|f| (f.clone(), std::fs::read_to_string(root.join(f)).unwrap()))
            .collect();
        for (path, text) in &sources {
            assert!(
                file_rules(text).is_empty(),
                "{path}: {:?}",
                file_rules(text)
            );
        }
        let edges = modules::edges("xtask/src/main.rs", &sources);
        assert!(edges.len() > 10, "{edges:?}");
        let circles = modules::circles("xtask", &edges);
        assert!(
            circles.is_empty(),
            "{:?}",
            circles
                .iter()
                .map(modules::Circle::describe)
                .collect::<Vec<_>>()
        );
    }
}
