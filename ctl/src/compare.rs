//! Comparing a local snapshot with a stored one (`diff -f`, `push
//! --dry-run`): both in their canonical form (the YAML `get` shows), the
//! unified diff between them, what changes by name (listeners, routes,
//! clusters) and the warnings a person should read before pushing.

use std::collections::BTreeMap;

use serde::Serialize;
use vane_model::{Snapshot, SnapshotSpec};

/// The canonical form of a file's snapshot, checked by the model's rules.
/// Keys are shown as the server shows them (`redacted:sha256:…`) unless
/// `show_secrets`, so that a file with keys in clear compares equal to a
/// head fetched without them.
pub(crate) fn canonical(
    mut spec: SnapshotSpec,
    show_secrets: bool,
) -> Result<Snapshot, vane_model::ValidationError> {
    if !show_secrets {
        vane_model::redact::redact_spec(&mut spec);
    }
    // Placeholders (from a `get` without --show-secrets) validate as keys.
    vane_model::validate::validate_redacted(spec)
}

/// How many named things of one kind a change adds, removes and changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Counts {
    pub(crate) added: usize,
    pub(crate) removed: usize,
    pub(crate) changed: usize,
}

/// What a change does to listeners, routes and clusters (the JSON
/// contract of `summary`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Summary {
    pub(crate) listeners: Counts,
    /// Routes, each known by its table and its name (its position in the
    /// table when it has none).
    pub(crate) routes: Counts,
    pub(crate) clusters: Counts,
}

impl Summary {
    /// `old` → `new`, both canonical.
    pub(crate) fn of(old: &SnapshotSpec, new: &SnapshotSpec) -> Self {
        Self {
            listeners: counts(
                &by_name(&old.listeners, |l| l.name.clone()),
                &by_name(&new.listeners, |l| l.name.clone()),
            ),
            routes: counts(&routes(old), &routes(new)),
            clusters: counts(
                &by_name(&old.clusters, |c| c.name.clone()),
                &by_name(&new.clusters, |c| c.name.clone()),
            ),
        }
    }

    /// `listeners: 1 added, 0 removed, 1 changed; routes: …; clusters: …`.
    pub(crate) fn line(&self) -> String {
        let part = |what: &str, c: Counts| {
            format!(
                "{what}: {} added, {} removed, {} changed",
                c.added, c.removed, c.changed
            )
        };
        format!(
            "{}; {}; {}",
            part("listeners", self.listeners),
            part("routes", self.routes),
            part("clusters", self.clusters)
        )
    }
}

/// What a person should read before this change goes out: it removes every
/// listener, or every route (the old content had some, the new has none).
pub(crate) fn warnings(old: &SnapshotSpec, new: &SnapshotSpec) -> Vec<String> {
    let mut out = Vec::new();
    if !old.listeners.is_empty() && new.listeners.is_empty() {
        out.push(format!(
            "this removes every listener ({} now): agents will stop serving traffic",
            old.listeners.len()
        ));
    }
    let (before, after) = (routes(old).len(), routes(new).len());
    if before > 0 && after == 0 {
        out.push(format!(
            "this removes every route ({before} now): no request will be routed"
        ));
    }
    out
}

/// Each item's JSON by `name`; equal JSON is an unchanged item.
fn by_name<T: Serialize>(
    items: &[T],
    name: impl Fn(&T) -> String,
) -> BTreeMap<String, serde_json::Value> {
    items
        .iter()
        .map(|i| (name(i), serde_json::to_value(i).unwrap_or_default()))
        .collect()
}

fn routes(spec: &SnapshotSpec) -> BTreeMap<String, serde_json::Value> {
    spec.route_tables
        .iter()
        .flat_map(|t| {
            t.routes.iter().enumerate().map(move |(i, r)| {
                let id = match &r.name {
                    Some(n) => format!("{}/{n}", t.name),
                    None => format!("{}[{i}]", t.name),
                };
                (id, serde_json::to_value(r).unwrap_or_default())
            })
        })
        .collect()
}

fn counts(
    old: &BTreeMap<String, serde_json::Value>,
    new: &BTreeMap<String, serde_json::Value>,
) -> Counts {
    let mut c = Counts::default();
    for (name, value) in new {
        match old.get(name) {
            None => c.added += 1,
            Some(before) if before != value => c.changed += 1,
            Some(_) => {}
        }
    }
    c.removed = old.keys().filter(|k| !new.contains_key(*k)).count();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> SnapshotSpec {
        vane_model::parse_file(yaml.as_bytes(), vane_model::Format::Yaml).unwrap()
    }

    const OLD: &str = "
listeners:
  - {name: web, address: '0.0.0.0:8080', route_table: main}
  - {name: admin, address: '0.0.0.0:9090', route_table: main}
route_tables:
  - name: main
    routes:
      - {name: api, match: {path_prefix: /api}, cluster: api}
      - {match: {path_prefix: /}, cluster: web}
clusters:
  - {name: api, endpoints: [{address: '10.0.0.1:80'}]}
  - {name: web, endpoints: [{address: '10.0.0.2:80'}]}
";

    #[test]
    fn summary_counts_by_name() {
        let old = spec(OLD);
        let new = spec(
            "
listeners:
  - {name: web, address: '0.0.0.0:8081', route_table: main}
  - {name: tls, address: '0.0.0.0:8443', route_table: main}
route_tables:
  - name: main
    routes:
      - {name: api, match: {path_prefix: /api}, cluster: api}
      - {match: {path_prefix: /}, cluster: api}
clusters:
  - {name: api, endpoints: [{address: '10.0.0.1:80'}]}
",
        );
        let s = Summary::of(&old, &new);
        assert_eq!(
            s.listeners,
            Counts {
                added: 1,
                removed: 1,
                changed: 1
            }
        );
        assert_eq!(
            s.routes,
            Counts {
                added: 0,
                removed: 0,
                changed: 1
            }
        );
        assert_eq!(
            s.clusters,
            Counts {
                added: 0,
                removed: 1,
                changed: 0
            }
        );
        assert_eq!(
            s.line(),
            "listeners: 1 added, 1 removed, 1 changed; routes: 0 added, 0 removed, 1 changed; \
             clusters: 0 added, 1 removed, 0 changed"
        );
        assert_eq!(Summary::of(&old, &old), Summary::default());
        assert!(warnings(&old, &new).is_empty());
    }

    #[test]
    fn removing_every_listener_or_route_warns() {
        let old = spec(OLD);
        let empty = SnapshotSpec::default();
        let w = warnings(&old, &empty);
        assert_eq!(
            w,
            [
                "this removes every listener (2 now): agents will stop serving traffic",
                "this removes every route (2 now): no request will be routed"
            ]
        );
        let s = Summary::of(&old, &empty);
        assert_eq!(s.listeners.removed, 2);
        assert_eq!(s.routes.removed, 2);
        // Nothing to remove: no warning; adding everything is no warning.
        assert!(warnings(&empty, &empty).is_empty());
        assert!(warnings(&empty, &old).is_empty());
        assert_eq!(Summary::of(&empty, &old).clusters.added, 2);
    }

    #[test]
    fn canonical_forms_hide_keys_unless_asked() {
        let old = spec(OLD);
        let a = canonical(old.clone(), false).unwrap();
        assert_eq!(a.to_yaml(), canonical(old, true).unwrap().to_yaml());
        let bad =
            spec("clusters: [{name: api, lb: sideways, endpoints: [{address: '10.0.0.1:80'}]}]");
        assert!(canonical(bad, false).is_err());
    }
}
