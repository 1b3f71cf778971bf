//! Which workspace crate may depend on which: the rules, checked against
//! what `cargo metadata` says each Cargo.toml declares (normal dependencies
//! only: tests and build scripts may use more), and two transitive rules
//! checked on `cargo tree` (which resolves features for one package).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::process::{cargo, output, workspace_metadata};

/// Each workspace crate, and the workspace crates it may depend on.
/// Adding a crate or an edge means adding it here, on purpose; the intent
/// behind each line is in the crate's `description`.
pub(crate) const RULES: &[(&str, &[&str])] = &[
    // The wire contract and the leaves everyone shares.
    ("vane-proto", &[]),
    ("vane-model", &["vane-proto", "vane-jsonlogic", "vane-tls"]),
    ("vane-tls", &[]),
    ("vane-backoff", &[]),
    ("vane-admin-http", &["vane-build-info"]),
    ("vane-build-info", &[]),
    ("vane-xds", &["vane-model"]),
    ("vane-jsonlogic", &[]),
    // The web console: the wire contract only; the server hands it its Admin service.
    ("vane-console", &["vane-proto"]),
    // Storage.
    ("vane-store", &["vane-proto", "vane-backoff"]),
    (
        "vane-store-etcd",
        &["vane-proto", "vane-store", "vane-tls", "vane-backoff"],
    ),
    // Shipped binaries and the agent library.
    (
        "vane-control",
        &[
            "vane-proto",
            "vane-model",
            "vane-tls",
            "vane-store",
            "vane-store-etcd",
            "vane-admin-http",
            "vane-backoff",
            "vane-xds",
            "vane-build-info",
            "vane-console",
        ],
    ),
    (
        "vanectl",
        &[
            "vane-proto",
            "vane-model",
            "vane-tls",
            "vane-xds",
            "vane-build-info",
            "vane-backoff",
        ],
    ),
    (
        "vane-agent",
        &["vane-proto", "vane-model", "vane-tls", "vane-backoff"],
    ),
    (
        "vane-agent-sidecar",
        &[
            "vane-agent",
            "vane-model",
            "vane-tls",
            "vane-admin-http",
            "vane-build-info",
        ],
    ),
    (
        "vane-proxy-core",
        &[
            "vane-agent",
            "vane-agent-sidecar",
            "vane-model",
            "vane-admin-http",
            "vane-build-info",
        ],
    ),
    // Tests, tools and their helpers.
    ("vane-pki", &[]),
    ("vane-testkit", &["vane-model", "vane-pki", "vane-proto"]),
    ("vane-tests", &[]),
    (
        "vane-fuzzing",
        &["vane-agent", "vane-control", "vane-model", "vane-proto"],
    ),
    (
        "vane-loadgen",
        &["vane-agent", "vane-model", "vane-proto", "vane-build-info"],
    ),
    ("xtask", &["vane-pki", "vane-testkit", "vanectl"]),
];

/// The crates whose binaries or library reach production.
pub(crate) const SHIPPED: &[&str] = &[
    "vane-control",
    "vanectl",
    "vane-agent",
    "vane-agent-sidecar",
    "vane-proxy-core",
];

/// Crates for tests and tools only: never a normal dependency of a shipped one.
pub(crate) const TEST_ONLY: &[&str] = &["vane-pki", "vane-testkit"];

/// Packages that must not appear in a crate's normal dependency tree, and why.
pub(crate) const NOT_IN_TREE: &[(&str, &[&str], &str)] = &[
    (
        "vanectl",
        &["etcd-client", "redb"],
        "the CLI talks to the control server only, never to a store",
    ),
    (
        "vane-agent",
        &["clap", "axum"],
        "an embedder of the agent library gets neither a CLI parser nor an HTTP server",
    ),
];

/// A dependency-rule violation: the manifest it is about, a line, the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    pub(crate) manifest: String,
    pub(crate) line: usize,
    pub(crate) what: String,
}

/// Checks the workspace at `root`; returns how many crates were checked
/// and what is wrong.
pub(crate) fn check(root: &Path) -> Result<(usize, Vec<Finding>)> {
    let metadata = workspace_metadata(root)?;
    let crates = workspace_crates(&metadata, root);
    let mut findings = direct(&crates);
    for (package, banned, why) in NOT_IN_TREE {
        let Some(krate) = crates.iter().find(|c| c.name == *package) else {
            continue;
        };
        let mut cmd = cargo();
        cmd.args(["tree", "-e", "normal", "--prefix", "none", "-p", package])
            .current_dir(root);
        let tree = String::from_utf8_lossy(&output(&mut cmd)?).into_owned();
        for name in in_tree(&tree, banned) {
            findings.push(Finding {
                manifest: krate.manifest.clone(),
                line: 1,
                what: format!(
                    "{package} pulls in {name} (cargo tree -e normal -p {package} -i {name} \
                     says through what), but {why}"
                ),
            });
        }
    }
    Ok((crates.len(), findings))
}

/// One workspace crate as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Crate {
    pub(crate) name: String,
    /// Its Cargo.toml, relative to the workspace root.
    pub(crate) manifest: String,
    /// Its text, to point at the line of a dependency.
    pub(crate) manifest_text: String,
    /// Its normal dependencies, all of them (not only the workspace's).
    pub(crate) deps: Vec<String>,
}

fn workspace_crates(metadata: &Value, root: &Path) -> Vec<Crate> {
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    packages
        .iter()
        .map(|p| {
            let manifest_path = p["manifest_path"].as_str().unwrap_or_default();
            let manifest = Path::new(manifest_path)
                .strip_prefix(root)
                .map_or_else(|_| manifest_path.to_owned(), |r| r.display().to_string());
            let deps = p["dependencies"]
                .as_array()
                .map(|deps| {
                    deps.iter()
                        .filter(|d| d["kind"].is_null())
                        .filter_map(|d| d["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            Crate {
                name: p["name"].as_str().unwrap_or_default().to_owned(),
                manifest,
                manifest_text: std::fs::read_to_string(manifest_path).unwrap_or_default(),
                deps,
            }
        })
        .collect()
}

/// The rules on direct dependencies between workspace crates.
pub(crate) fn direct(crates: &[Crate]) -> Vec<Finding> {
    let ours: BTreeSet<&str> = crates
        .iter()
        .map(|c| c.name.as_str())
        .chain(RULES.iter().map(|(name, _)| *name))
        .collect();
    let mut findings = Vec::new();
    for c in crates {
        let Some((_, allowed)) = RULES.iter().find(|(name, _)| *name == c.name) else {
            findings.push(Finding {
                manifest: c.manifest.clone(),
                line: line_of(&c.manifest_text, "name"),
                what: format!(
                    "{} has no dependency rule: add it to RULES in xtask/src/tidy/deps.rs",
                    c.name
                ),
            });
            continue;
        };
        for dep in c.deps.iter().filter(|d| ours.contains(d.as_str())) {
            let line = line_of(&c.manifest_text, dep);
            if SHIPPED.contains(&c.name.as_str()) && TEST_ONLY.contains(&dep.as_str()) {
                findings.push(Finding {
                    manifest: c.manifest.clone(),
                    line,
                    what: format!(
                        "{} ships, so it may not depend on {dep} (tests and tools only) \
                         outside [dev-dependencies]",
                        c.name
                    ),
                });
            } else if !allowed.contains(&dep.as_str()) {
                findings.push(Finding {
                    manifest: c.manifest.clone(),
                    line,
                    what: format!(
                        "{} may not depend on {dep} (it may on: {}); if it should, change \
                         RULES in xtask/src/tidy/deps.rs",
                        c.name,
                        if allowed.is_empty() {
                            "no workspace crate".to_owned()
                        } else {
                            allowed.join(", ")
                        }
                    ),
                });
            }
        }
    }
    findings
}

/// The `banned` package names that appear in `cargo tree --prefix none`
/// output (one `name vX.Y.Z ...` per line).
pub(crate) fn in_tree(tree: &str, banned: &[&str]) -> Vec<String> {
    let present: BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    banned
        .iter()
        .filter(|b| present.contains(*b))
        .map(|b| (*b).to_owned())
        .collect()
}

/// The 1-based line of a manifest where `key` is declared (`key = ...`,
/// `key.workspace = true`), or 1.
fn line_of(manifest: &str, key: &str) -> usize {
    manifest
        .lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.starts_with([' ', '=', '.']))
        })
        .map_or(1, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn krate(name: &str, deps: &[&str]) -> Crate {
        Crate {
            name: name.to_owned(),
            manifest: format!("{name}/Cargo.toml"),
            manifest_text: format!(
                "[package]\nname = \"{name}\"\n[dependencies]\nanyhow.workspace = true\n{}",
                deps.iter()
                    .map(|d| format!("{d}.workspace = true\n"))
                    .collect::<String>()
            ),
            deps: std::iter::once("anyhow")
                .chain(deps.iter().copied())
                .map(str::to_owned)
                .collect(),
        }
    }

    #[test]
    fn allowed_dependencies_pass_and_others_are_named() {
        let crates = [
            krate("vane-model", &["vane-proto"]),
            krate("vanectl", &["vane-proto", "vane-store"]),
        ];
        let found = direct(&crates);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].manifest, "vanectl/Cargo.toml");
        assert_eq!(found[0].line, 6);
        assert!(
            found[0]
                .what
                .starts_with("vanectl may not depend on vane-store")
        );
    }

    #[test]
    fn shipped_crates_never_depend_on_test_helpers() {
        for shipped in SHIPPED {
            let allowed = RULES
                .iter()
                .find(|(n, _)| n == shipped)
                .map(|(_, a)| *a)
                .unwrap_or_default();
            assert!(!allowed.iter().any(|d| TEST_ONLY.contains(d)), "{shipped}");
        }
        let found = direct(&[krate("vane-agent", &["vane-testkit"])]);
        assert!(found[0].what.contains("ships"), "{found:?}");
    }

    #[test]
    fn unknown_crates_need_a_rule() {
        let found = direct(&[krate("vane-new", &[])]);
        assert!(found[0].what.contains("no dependency rule"), "{found:?}");
        assert_eq!(found[0].line, 2);
    }

    #[test]
    fn banned_packages_in_a_tree() {
        let tree = "vanectl v0.1.0 (/w/ctl)\nanyhow v1.0.0\nredb v4.0.0 (*)\nclap_derive v4.5.0\n";
        assert_eq!(in_tree(tree, &["etcd-client", "redb"]), ["redb"]);
        assert!(in_tree(tree, &["clap"]).is_empty());
    }
}
