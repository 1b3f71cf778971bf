//! The import graph between the files of each crate, and its circles.
//!
//! For every crate root (library, binaries, tests, benches, examples, build
//! script, and any `path =` of a target in Cargo.toml) the module tree is
//! followed from `mod x;` declarations (`x.rs`, `x/mod.rs`, `#[path]`);
//! every path a file writes into its own crate (`use crate::…`,
//! `use super::…`, `self::…`, a child module's name, or such a path inline
//! in code) is resolved to the deepest module that is a file, which gives
//! an edge from the importing file to that one. Unit tests (from the first
//! `#[cfg(test)]` line of a file on) import their parent by design and are
//! left out.

use std::collections::{BTreeMap, BTreeSet};

use super::circles::{closed_walk, strongly_connected};
use super::imports::{Parsed, parse};
use super::source::before_tests;

/// One circle of imports: a closed walk through every file of a strongly
/// connected component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Circle {
    /// The crate's directory (`""` for the workspace root).
    pub(crate) crate_dir: String,
    /// How many files the circle joins.
    pub(crate) files: usize,
    /// The walk, first file repeated at the end, relative to the workspace.
    pub(crate) walk: Vec<String>,
    /// For each step of the walk, the names the file imports from the next.
    pub(crate) names: Vec<Vec<String>>,
    /// The line of the first import of the first step.
    pub(crate) line: usize,
}

impl Circle {
    /// `circle: src/a.rs -> src/b.rs (Foo, bar) -> src/a.rs (Baz)`, file
    /// names relative to the crate's directory.
    pub(crate) fn describe(&self) -> String {
        let short = |p: &str| {
            p.strip_prefix(&self.crate_dir)
                .and_then(|r| r.strip_prefix('/'))
                .unwrap_or(p)
                .to_owned()
        };
        let mut s = format!("circle of {} files: {}", self.files, short(&self.walk[0]));
        for (file, names) in self.walk[1..].iter().zip(&self.names) {
            s.push_str(&format!(" -> {} ({})", short(file), names.join(", ")));
        }
        s
    }
}

/// The crate roots in directory `dir` (`""` for the workspace root): the
/// files cargo discovers by convention, and those Cargo.toml names.
pub(crate) fn crate_roots(dir: &str, manifest: &str, files: &BTreeSet<String>) -> Vec<String> {
    let base = |rel: &str| {
        if dir.is_empty() {
            rel.to_owned()
        } else {
            format!("{dir}/{rel}")
        }
    };
    let mut roots = BTreeSet::new();
    for fixed in ["src/lib.rs", "src/main.rs", "build.rs"] {
        roots.insert(base(fixed));
    }
    for sub in ["src/bin", "tests", "benches", "examples"] {
        let prefix = base(sub) + "/";
        for f in files.iter().filter_map(|f| f.strip_prefix(&prefix)) {
            let parts: Vec<&str> = f.split('/').collect();
            match parts.as_slice() {
                [name] if name.ends_with(".rs") => roots.insert(format!("{prefix}{f}")),
                [_, "main.rs"] => roots.insert(format!("{prefix}{f}")),
                _ => false,
            };
        }
    }
    for rel in manifest_paths(manifest) {
        roots.insert(normalize(&base(&rel)));
    }
    roots.into_iter().filter(|r| files.contains(r)).collect()
}

/// The `path = "..."` of `[lib]`, `[[bin]]`, `[[test]]`, `[[bench]]` and
/// `[[example]]` sections, and `build = "..."`, of a Cargo.toml.
fn manifest_paths(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut section = "";
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim().trim_matches('"');
        let target = matches!(
            section,
            "[lib]" | "[[bin]]" | "[[test]]" | "[[bench]]" | "[[example]]"
        );
        if (target && key == "path") || (section == "[package]" && key == "build") {
            out.push(value.to_owned());
        }
    }
    out
}

/// One file of a module tree.
struct ModFile {
    path: String,
    /// Its module path from the crate root.
    module: Vec<String>,
    parsed: Parsed,
}

/// The import edges between files: `(from, to)` -> (names, first line).
pub(crate) type Edges = BTreeMap<(String, String), (BTreeSet<String>, usize)>;

/// The import edges of the module tree that starts at `root`; `sources`
/// holds every file's text by its path relative to the workspace.
pub(crate) fn edges(root: &str, sources: &BTreeMap<String, String>) -> Edges {
    let tree = module_tree(root, sources);
    let by_module: BTreeMap<&[String], &str> = tree
        .iter()
        .map(|f| (f.module.as_slice(), f.path.as_str()))
        .collect();
    let mut known: BTreeSet<Vec<String>> = tree.iter().map(|f| f.module.clone()).collect();
    for f in &tree {
        for inline in &f.parsed.inline_mods {
            known.insert([f.module.as_slice(), inline].concat());
        }
    }
    let mut edges = Edges::new();
    for f in &tree {
        for p in &f.parsed.paths {
            let scope = [f.module.as_slice(), &p.scope].concat();
            let Some(absolute) = absolute(&scope, &p.segments, &known) else {
                continue;
            };
            let (depth, target) = (0..=absolute.len())
                .rev()
                .find_map(|k| by_module.get(&absolute[..k]).map(|t| (k, *t)))
                .unwrap_or((0, root));
            if target == f.path {
                continue;
            }
            let name = if depth < absolute.len() {
                absolute[depth..].join("::")
            } else {
                absolute.last().cloned().unwrap_or_else(|| "crate".into())
            };
            let entry = edges
                .entry((f.path.clone(), target.to_owned()))
                .or_insert_with(|| (BTreeSet::new(), p.line));
            entry.0.insert(name);
            entry.1 = entry.1.min(p.line);
        }
    }
    edges
}

/// The module path `segments` names, written in module `scope`; `None` for
/// paths outside this crate (other crates, `std`, local names).
fn absolute(
    scope: &[String],
    segments: &[String],
    known: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let (first, rest) = segments.split_first()?;
    let mut out = match first.as_str() {
        "crate" => rest.to_vec(),
        "self" => [scope, rest].concat(),
        "super" => {
            let mut base = scope.to_vec();
            base.pop()?;
            let mut rest = rest;
            while let Some(("super", more)) = rest.split_first().map(|(s, m)| (s.as_str(), m)) {
                base.pop()?;
                rest = more;
            }
            [base.as_slice(), rest].concat()
        }
        _ => {
            // A child module's name (Rust 2018 paths are relative to the
            // current module), else another crate or a local item.
            let child = [scope, std::slice::from_ref(first)].concat();
            if !known.contains(&child) {
                return None;
            }
            [scope, segments].concat()
        }
    };
    // `use a::b::{self}` imports `b` itself.
    if out.last().is_some_and(|s| s == "self") {
        out.pop();
    }
    Some(out)
}

/// Every file reachable from `root` by `mod` declarations.
fn module_tree(root: &str, sources: &BTreeMap<String, String>) -> Vec<ModFile> {
    let mut tree: Vec<ModFile> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue = vec![(root.to_owned(), Vec::new(), parent(root).to_owned())];
    while let Some((path, module, child_dir)) = queue.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let Some(src) = sources.get(&path) else {
            continue;
        };
        let parsed = parse(before_tests(src));
        for decl in &parsed.mods {
            let mut dir = child_dir.clone();
            for inline in &decl.inline {
                dir = join(&dir, inline);
            }
            let module = [
                module.as_slice(),
                &decl.inline,
                std::slice::from_ref(&decl.name),
            ]
            .concat();
            if let Some(attr) = &decl.path_attr {
                // Outside inline modules `#[path]` is relative to the file's
                // own directory; a file loaded by it owns its directory like
                // a mod.rs does.
                let base = if decl.inline.is_empty() {
                    parent(&path).to_owned()
                } else {
                    dir
                };
                let target = normalize(&join(&base, attr));
                let owned = parent(&target).to_owned();
                queue.push((target, module, owned));
                continue;
            }
            let flat = join(&dir, &format!("{}.rs", decl.name));
            let nested = join(&dir, &format!("{}/mod.rs", decl.name));
            let target = if sources.contains_key(&flat) {
                flat
            } else {
                nested
            };
            queue.push((target, module, join(&dir, &decl.name)));
        }
        tree.push(ModFile {
            path,
            module,
            parsed,
        });
    }
    tree
}

/// Finds the circles in the union of `edges` (of one crate).
pub(crate) fn circles(crate_dir: &str, edges: &Edges) -> Vec<Circle> {
    let files: Vec<&String> = edges
        .keys()
        .flat_map(|(a, b)| [a, b])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let index: BTreeMap<&String, usize> = files.iter().enumerate().map(|(i, f)| (*f, i)).collect();
    let pairs: Vec<(usize, usize)> = edges.keys().map(|(a, b)| (index[a], index[b])).collect();
    let mut out = Vec::new();
    for component in strongly_connected(files.len(), &pairs) {
        if component.len() < 2 {
            continue;
        }
        let walk = closed_walk(&component, &pairs);
        let step = |k: usize| &edges[&(files[walk[k]].clone(), files[walk[k + 1]].clone())];
        out.push(Circle {
            crate_dir: crate_dir.to_owned(),
            files: component.len(),
            walk: walk.iter().map(|&i| files[i].clone()).collect(),
            names: (0..walk.len() - 1)
                .map(|k| step(k).0.iter().cloned().collect())
                .collect(),
            line: step(0).1,
        });
    }
    out
}

/// The directory part of a `/`-separated path (`""` for a bare name).
fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

fn join(dir: &str, rel: &str) -> String {
    if dir.is_empty() {
        rel.to_owned()
    } else {
        format!("{dir}/{rel}")
    }
}

/// Resolves `.` and `..` components.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(files: &[(&str, &str)]) -> BTreeMap<String, String> {
        files
            .iter()
            .map(|(p, s)| ((*p).to_owned(), (*s).to_owned()))
            .collect()
    }

    fn edge_list(edges: &Edges) -> Vec<String> {
        edges
            .iter()
            .map(|((a, b), (names, _))| {
                format!(
                    "{a} -> {b} ({})",
                    names.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect()
    }

    #[test]
    fn a_three_file_circle_is_found() {
        let src = sources(&[
            ("c/src/lib.rs", "//! x\nmod a;\nmod b;\nmod d;\n"),
            ("c/src/a.rs", "//! a\nuse crate::b::{Bee, bee_fn};\n"),
            ("c/src/b.rs", "//! b\nfn f() { super::d::Dee::new(); }\n"),
            ("c/src/d.rs", "//! d\n\nuse crate::a::Ay;\n"),
        ]);
        let edges = edges("c/src/lib.rs", &src);
        assert_eq!(
            edge_list(&edges),
            [
                "c/src/a.rs -> c/src/b.rs (Bee, bee_fn)",
                "c/src/b.rs -> c/src/d.rs (Dee::new)",
                "c/src/d.rs -> c/src/a.rs (Ay)",
            ]
        );
        let found = circles("c", &edges);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].describe(),
            "circle of 3 files: src/a.rs -> src/b.rs (Bee, bee_fn) -> src/d.rs (Dee::new) -> src/a.rs (Ay)"
        );
        assert_eq!(found[0].line, 2);
    }

    #[test]
    fn a_dag_passes() {
        let src = sources(&[
            ("src/main.rs", "mod a;\nmod b;\nuse a::A;\nuse b::B;\n"),
            ("src/a.rs", "use crate::b::B;\n"),
            ("src/b.rs", "pub(crate) struct B;\n"),
        ]);
        let edges = edges("src/main.rs", &src);
        assert_eq!(edges.len(), 3, "{edges:?}");
        assert!(circles("", &edges).is_empty());
    }

    #[test]
    fn unit_test_imports_are_ignored() {
        let src = sources(&[
            ("src/lib.rs", "mod a;\nmod b;\n"),
            ("src/a.rs", "use crate::b::B;\n"),
            (
                "src/b.rs",
                "pub struct B;\n#[cfg(test)]\nmod tests {\n    use crate::a::A;\n}\n",
            ),
        ]);
        let edges = edges("src/lib.rs", &src);
        assert_eq!(edge_list(&edges), ["src/a.rs -> src/b.rs (B)"]);
        assert!(circles("", &edges).is_empty());
    }

    #[test]
    fn nested_modules_super_super_and_self() {
        let src = sources(&[
            ("src/lib.rs", "mod outer;\npub use outer::Thing;\n"),
            (
                "src/outer/mod.rs",
                "mod inner;\npub struct Thing;\nuse self::inner::In;\n",
            ),
            (
                "src/outer/inner.rs",
                "mod deep { use super::super::Thing; }\nuse super::super::Root;\n",
            ),
        ]);
        let edges = edges("src/lib.rs", &src);
        assert_eq!(
            edge_list(&edges),
            [
                "src/lib.rs -> src/outer/mod.rs (Thing)",
                "src/outer/inner.rs -> src/lib.rs (Root)",
                "src/outer/inner.rs -> src/outer/mod.rs (Thing)",
                "src/outer/mod.rs -> src/outer/inner.rs (In)",
            ]
        );
        let found = circles("", &edges);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].walk.len(), 4, "{:?}", found[0].walk);
    }

    #[test]
    fn path_attributes_are_followed() {
        let src = sources(&[
            (
                "tests/it/main.rs",
                "#[path = \"../common/util.rs\"]\nmod util;\nmod case;\n",
            ),
            ("tests/common/util.rs", "use crate::case::Case;\n"),
            (
                "tests/it/case.rs",
                "pub struct Case;\nuse super::util::helper;\n",
            ),
        ]);
        let found = circles("tests", &edges("tests/it/main.rs", &src));
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].describe(),
            "circle of 2 files: common/util.rs -> it/case.rs (Case) -> common/util.rs (helper)"
        );
    }

    #[test]
    fn roots_by_convention_and_manifest() {
        let files: BTreeSet<String> = [
            "a/src/lib.rs",
            "a/src/bin/one.rs",
            "a/src/bin/two/main.rs",
            "a/src/bin/two/args.rs",
            "a/tests/t.rs",
            "a/tests/it/main.rs",
            "a/tests/it/case.rs",
            "a/src/other/entry.rs",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let manifest = "[package]\nname = \"a\"\n[dependencies]\nx = { path = \"../x\" }\n[[bin]]\nname = \"o\"\npath = \"src/other/entry.rs\"\n";
        assert_eq!(
            crate_roots("a", manifest, &files),
            [
                "a/src/bin/one.rs",
                "a/src/bin/two/main.rs",
                "a/src/lib.rs",
                "a/src/other/entry.rs",
                "a/tests/it/main.rs",
                "a/tests/t.rs",
            ]
        );
    }
}
