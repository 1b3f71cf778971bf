//! Which workspace libraries have doctests: `cargo test --doc` runs rustdoc
//! once per library, about a minute for the whole workspace on two cores
//! when four of them have examples, so `cargo xtask test` runs it on the
//! libraries whose documentation holds a code block rustdoc would compile.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::process::workspace_metadata;

/// The packages of the workspace at `root` whose library has a doctest,
/// sorted.
pub(crate) fn packages_with_doctests(root: &Path) -> Result<Vec<String>> {
    let metadata = workspace_metadata(root)?;
    let mut found = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let Some(name) = package["name"].as_str() else {
            continue;
        };
        let lib_src = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "lib" || k == "proc-macro"))
            })
            .find_map(|t| t["src_path"].as_str().map(PathBuf::from));
        let Some(src_dir) = lib_src.as_deref().and_then(Path::parent) else {
            continue;
        };
        if dir_has_doctest(src_dir)? {
            found.push(name.to_owned());
        }
    }
    found.sort();
    Ok(found)
}

fn dir_has_doctest(dir: &Path) -> Result<bool> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let found = if path.is_dir() {
            dir_has_doctest(&path)?
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            has_doctest(&text)
        } else {
            false
        };
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a source file's doc comments hold a code block rustdoc compiles:
/// a fence whose info string is empty or made only of rustdoc's attributes
/// (`rust`, `no_run`, `should_panic`, `compile_fail`, `editionNNNN`).
/// `text`, `ignore`, `sh` and other languages are not compiled.
fn has_doctest(text: &str) -> bool {
    let mut open = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let Some(doc) = trimmed
            .strip_prefix("///")
            .or_else(|| trimmed.strip_prefix("//!"))
        else {
            continue;
        };
        let Some(info) = doc.trim().strip_prefix("```") else {
            continue;
        };
        if open {
            open = false;
            continue;
        }
        open = true;
        if info
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|a| !a.is_empty())
            .all(|a| {
                matches!(a, "rust" | "no_run" | "should_panic" | "compile_fail")
                    || a.starts_with("edition")
            })
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_blocks_are_doctests_and_other_languages_are_not() {
        assert!(has_doctest("/// ```\n/// let x = 1;\n/// ```\nfn f() {}\n"));
        assert!(has_doctest("//! ```no_run\n//! f();\n//! ```\n"));
        assert!(has_doctest("    /// ```rust,should_panic\n    /// ```\n"));
        assert!(!has_doctest("/// ```text\n/// a b\n/// ```\n"));
        assert!(!has_doctest("/// ```ignore\n/// a b\n/// ```\n"));
        assert!(!has_doctest("//! ```sh\n//! vanectl push\n//! ```\n"));
        // A closing fence is not an opening one.
        assert!(!has_doctest("/// ```yaml\n/// a: b\n/// ```\n/// done\n"));
        // Not a doc comment.
        assert!(!has_doctest("// ```\n// x\n// ```\n"));
    }

    #[test]
    fn the_workspace_libraries_with_examples_are_found() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root");
        let found = packages_with_doctests(root).expect("scanned");
        assert!(found.iter().any(|p| p == "vane-backoff"), "{found:?}");
        assert!(!found.iter().any(|p| p == "xtask"), "{found:?}");
    }
}
