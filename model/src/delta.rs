//! Deltas between two versions of a snapshot: the changes from a base to a
//! target ([`diff`]) and their application to the base ([`apply`]).
//!
//! Both work on the canonical wire form (`vane.v1.Snapshot` as
//! [`Snapshot::to_proto`] and the control server's stored bytes hold it:
//! defaults left out, named collections sorted by name). That is the form a
//! delta travels in and the form the agent's apply path decodes, so
//! `apply(base, diff(base, target)) == target` is an exact equality of
//! messages (the property test below checks it), and the agent's hash check
//! catches anything else: a base that was not canonical, a bug here.
//!
//! # Granularity
//! Listeners, rate limits, secrets, values and flags are replaced whole, by name. Route
//! tables and clusters can be large (thousands of routes or endpoints), so a
//! changed one is sent as a patch: splices of its ordered list, found by
//! trimming the common prefix and suffix and then, when the lengths are
//! equal, one splice per run of differing positions (else one splice for the
//! middle). A one-route change in a 10,000-route table is one route on the
//! wire. A patch is used only when it encodes smaller than the whole
//! resource.
//!
//! This module knows protobuf because it is part of the wire edge, like
//! [`crate::proto`]; the data plane never sees its types.

use std::collections::BTreeMap;

use prost::Message;
use vane_proto as pb;

use crate::snapshot::Snapshot;

/// Why a delta cannot be applied to a base, or bytes are not a delta.
///
/// Its `Display` names the delta field and the reason; an agent puts it in
/// the NACK that asks for the full snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct DeltaError {
    /// The field of the delta, e.g. `route_table_patches[0].splices[1]`.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl DeltaError {
    fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// The changes that turn `base` into `target`; both must be canonical.
pub fn diff(base: &pb::Snapshot, target: &pb::Snapshot) -> pb::SnapshotDelta {
    let mut delta = pb::SnapshotDelta::default();
    diff_named(
        &base.listeners,
        &target.listeners,
        &mut delta.removed_listeners,
        &mut delta.listeners,
        |_, _| None::<()>,
        &mut Vec::new(),
    );
    diff_named(
        &base.route_tables,
        &target.route_tables,
        &mut delta.removed_route_tables,
        &mut delta.route_tables,
        route_table_patch,
        &mut delta.route_table_patches,
    );
    diff_named(
        &base.clusters,
        &target.clusters,
        &mut delta.removed_clusters,
        &mut delta.clusters,
        cluster_patch,
        &mut delta.cluster_patches,
    );
    diff_named(
        &base.rate_limits,
        &target.rate_limits,
        &mut delta.removed_rate_limits,
        &mut delta.rate_limits,
        |_, _| None::<()>,
        &mut Vec::new(),
    );
    (delta.removed_values, delta.values) = diff_map(&base.values, &target.values);
    (delta.removed_flags, delta.flags) = diff_map(&base.flags, &target.flags);
    diff_named(
        &base.secrets,
        &target.secrets,
        &mut delta.removed_secrets,
        &mut delta.secrets,
        |_, _| None::<()>,
        &mut Vec::new(),
    );
    delta
}

/// Keys removed, and entries added or changed, from `base` to `target`.
fn diff_map(
    base: &std::collections::BTreeMap<String, String>,
    target: &std::collections::BTreeMap<String, String>,
) -> (Vec<String>, std::collections::BTreeMap<String, String>) {
    let mut removed: Vec<String> = base
        .keys()
        .filter(|k| !target.contains_key(*k))
        .cloned()
        .collect();
    removed.sort();
    let upserts = target
        .iter()
        .filter(|(k, v)| base.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (removed, upserts)
}

/// Removes `removed` from `map` (each must be there), then adds `upserts`.
fn apply_map(
    map: &mut std::collections::BTreeMap<String, String>,
    removed: Vec<String>,
    upserts: std::collections::BTreeMap<String, String>,
    (field, what): (&str, &str),
) -> Result<(), DeltaError> {
    for (i, key) in removed.iter().enumerate() {
        if map.remove(key).is_none() {
            return Err(DeltaError::new(
                format!("{field}[{i}]"),
                format!("no {what} {key:?} in the base"),
            ));
        }
    }
    map.extend(upserts);
    Ok(())
}

/// Applies `delta` to `base`: removals, then patches, then whole
/// replacements. Named collections come out sorted by name.
pub fn apply(base: pb::Snapshot, delta: pb::SnapshotDelta) -> Result<pb::Snapshot, DeltaError> {
    let pb::Snapshot {
        listeners,
        route_tables,
        clusters,
        rate_limits,
        mut values,
        mut flags,
        secrets,
    } = base;
    // Destructured so a new field of the delta breaks the build here.
    let pb::SnapshotDelta {
        listeners: listener_upserts,
        removed_listeners,
        route_tables: table_upserts,
        route_table_patches,
        removed_route_tables,
        clusters: cluster_upserts,
        cluster_patches,
        removed_clusters,
        rate_limits: rate_limit_upserts,
        removed_rate_limits,
        values: value_upserts,
        removed_values,
        flags: flag_upserts,
        removed_flags,
        secrets: secret_upserts,
        removed_secrets,
    } = delta;

    let listeners = apply_named(
        "listener",
        listeners,
        (removed_listeners, "removed_listeners"),
        (Vec::<NoPatch>::new(), ""),
        listener_upserts,
    )?;
    let route_tables = apply_named(
        "route table",
        route_tables,
        (removed_route_tables, "removed_route_tables"),
        (route_table_patches, "route_table_patches"),
        table_upserts,
    )?;
    let clusters = apply_named(
        "cluster",
        clusters,
        (removed_clusters, "removed_clusters"),
        (cluster_patches, "cluster_patches"),
        cluster_upserts,
    )?;
    let rate_limits = apply_named(
        "rate limit",
        rate_limits,
        (removed_rate_limits, "removed_rate_limits"),
        (Vec::<NoPatch>::new(), ""),
        rate_limit_upserts,
    )?;
    apply_map(
        &mut values,
        removed_values,
        value_upserts,
        ("removed_values", "value"),
    )?;
    apply_map(
        &mut flags,
        removed_flags,
        flag_upserts,
        ("removed_flags", "flag"),
    )?;
    let secrets = apply_named(
        "secret",
        secrets,
        (removed_secrets, "removed_secrets"),
        (Vec::<NoPatch>::new(), ""),
        secret_upserts,
    )?;
    Ok(pb::Snapshot {
        listeners,
        route_tables,
        clusters,
        rate_limits,
        values,
        flags,
        secrets,
    })
}

/// Whether the delta changes nothing.
pub fn is_empty(delta: &pb::SnapshotDelta) -> bool {
    *delta == pb::SnapshotDelta::default()
}

/// [`diff`] of two encoded canonical snapshots, encoded. The error names
/// which side does not decode.
pub fn diff_encoded(base: &[u8], target: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let decode = |which: &str, bytes: &[u8]| {
        pb::Snapshot::decode(bytes)
            .map_err(|e| DeltaError::new(which, format!("not a vane.v1.Snapshot: {e}")))
    };
    let base = decode("base", base)?;
    let target = decode("target", target)?;
    Ok(diff(&base, &target).encode_to_vec())
}

/// Applies an encoded delta to the running snapshot and encodes the result:
/// the candidate an agent then puts through its apply path (decode,
/// validation, hash check) exactly like a full snapshot.
pub fn apply_encoded(base: &Snapshot, delta: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let delta = pb::SnapshotDelta::decode(delta)
        .map_err(|e| DeltaError::new("delta", format!("not a valid vane.v1.SnapshotDelta: {e}")))?;
    Ok(apply(base.to_proto(), delta)?.encode_to_vec())
}

/// Applies an encoded delta to the encoding of the version it starts from
/// (the canonical bytes the control server computed it from, as an agent
/// received them) and returns the message, for the agent to turn into the
/// domain once, check its hash and encode once for its cache, rather than
/// encoding the result here only to decode it again.
pub fn apply_to_encoded(base: &[u8], delta: &[u8]) -> Result<pb::Snapshot, DeltaError> {
    let delta = pb::SnapshotDelta::decode(delta)
        .map_err(|e| DeltaError::new("delta", format!("not a valid vane.v1.SnapshotDelta: {e}")))?;
    let base = pb::Snapshot::decode(base)
        .map_err(|e| DeltaError::new("base", format!("not a vane.v1.Snapshot: {e}")))?;
    apply(base, delta)
}

/// A resource known by its name within its collection.
trait Named {
    fn name(&self) -> &str;
}

macro_rules! named {
    ($($t:ty),*) => {$(
        impl Named for $t {
            fn name(&self) -> &str {
                &self.name
            }
        }
    )*};
}
named!(
    pb::Listener,
    pb::RouteTable,
    pb::Cluster,
    pb::RateLimit,
    pb::Secret,
    pb::RouteTablePatch,
    pb::ClusterPatch
);

/// Listeners and rate limits have no patches.
enum NoPatch {}

impl Named for NoPatch {
    fn name(&self) -> &str {
        match *self {}
    }
}

/// Ties a patch type to the resource it edits, for [`apply_named`].
trait PatchOf<T>: Named {
    fn apply_to(self, target: &mut T, path: &str) -> Result<(), DeltaError>;
}

impl<T> PatchOf<T> for NoPatch {
    fn apply_to(self, _: &mut T, _: &str) -> Result<(), DeltaError> {
        match self {}
    }
}

impl PatchOf<pb::RouteTable> for pb::RouteTablePatch {
    fn apply_to(self, table: &mut pb::RouteTable, path: &str) -> Result<(), DeltaError> {
        let splices = self
            .splices
            .into_iter()
            .map(|s| (s.start, s.delete_count, s.insert));
        let routes = std::mem::take(&mut table.routes);
        table.routes = apply_splices(routes, splices, path, "routes")?;
        Ok(())
    }
}

impl PatchOf<pb::Cluster> for pb::ClusterPatch {
    fn apply_to(self, cluster: &mut pb::Cluster, path: &str) -> Result<(), DeltaError> {
        let splices = self
            .splices
            .into_iter()
            .map(|s| (s.start, s.delete_count, s.insert));
        let endpoints = std::mem::take(&mut cluster.endpoints);
        cluster.endpoints = apply_splices(endpoints, splices, path, "endpoints")?;
        Ok(())
    }
}

/// Sorts the differences of one named collection into removals, patches
/// (when `patch` offers one) and whole replacements.
fn diff_named<T, P>(
    base: &[T],
    target: &[T],
    removed: &mut Vec<String>,
    upserts: &mut Vec<T>,
    patch: impl Fn(&T, &T) -> Option<P>,
    patches: &mut Vec<P>,
) where
    T: Named + PartialEq + Clone,
{
    let base: BTreeMap<&str, &T> = base.iter().map(|t| (t.name(), t)).collect();
    let target: BTreeMap<&str, &T> = target.iter().map(|t| (t.name(), t)).collect();
    removed.extend(
        base.keys()
            .filter(|name| !target.contains_key(*name))
            .map(|name| (*name).to_owned()),
    );
    for (name, new) in &target {
        match base.get(name) {
            Some(old) if old == new => {}
            Some(old) => match patch(old, new) {
                Some(p) => patches.push(p),
                None => upserts.push((*new).clone()),
            },
            None => upserts.push((*new).clone()),
        }
    }
}

fn route_table_patch(old: &pb::RouteTable, new: &pb::RouteTable) -> Option<pb::RouteTablePatch> {
    let patch = pb::RouteTablePatch {
        name: new.name.clone(),
        splices: list_splices(&old.routes, &new.routes)
            .into_iter()
            .map(|(start, delete_count, insert)| pb::RouteSplice {
                start,
                delete_count,
                insert,
            })
            .collect(),
    };
    (patch.encoded_len() < new.encoded_len()).then_some(patch)
}

fn cluster_patch(old: &pb::Cluster, new: &pb::Cluster) -> Option<pb::ClusterPatch> {
    // Destructured so a new cluster field cannot be silently left out of
    // the comparison (a patch carries endpoints only).
    let pb::Cluster {
        name,
        lb,
        connect_timeout_ms,
        endpoints,
        outlier_detection,
        protocol,
        tls,
    } = new;
    let rest_equal = old.name == *name
        && old.lb == *lb
        && old.connect_timeout_ms == *connect_timeout_ms
        && old.outlier_detection == *outlier_detection
        && old.protocol == *protocol
        && old.tls == *tls;
    if !rest_equal {
        return None;
    }
    let patch = pb::ClusterPatch {
        name: name.clone(),
        splices: list_splices(&old.endpoints, endpoints)
            .into_iter()
            .map(|(start, delete_count, insert)| pb::EndpointSplice {
                start,
                delete_count,
                insert,
            })
            .collect(),
    };
    (patch.encoded_len() < new.encoded_len()).then_some(patch)
}

/// Splices `(start, delete_count, insert)` turning `old` into `new`, sorted
/// by start, positions in `old`. Cheap (linear) rather than minimal: the
/// common prefix and suffix are kept; in between, equal lengths give one
/// splice per run of differing positions (in-place edits, the common case),
/// other lengths one splice replacing the whole middle.
fn list_splices<T: PartialEq + Clone>(old: &[T], new: &[T]) -> Vec<(u32, u32, Vec<T>)> {
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let suffix = old[prefix..]
        .iter()
        .rev()
        .zip(new[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let old_mid = &old[prefix..old.len() - suffix];
    let new_mid = &new[prefix..new.len() - suffix];
    // Lists in a snapshot are far below u32::MAX long (the snapshot size
    // limit sees to that); saturate rather than wrap if one ever is not, and
    // the agent's hash check will ask for the full snapshot.
    let at = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
    let mut out = Vec::new();
    if old_mid.len() == new_mid.len() {
        let mut i = 0;
        while i < old_mid.len() {
            if old_mid[i] == new_mid[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i < old_mid.len() && old_mid[i] != new_mid[i] {
                i += 1;
            }
            out.push((
                at(prefix + start),
                at(i - start),
                new_mid[start..i].to_vec(),
            ));
        }
    } else {
        out.push((at(prefix), at(old_mid.len()), new_mid.to_vec()));
    }
    out
}

/// Applies splices (sorted, not overlapping, positions in `base`).
fn apply_splices<T>(
    base: Vec<T>,
    splices: impl Iterator<Item = (u32, u32, Vec<T>)>,
    path: &str,
    what: &str,
) -> Result<Vec<T>, DeltaError> {
    let len = base.len();
    let mut out = Vec::with_capacity(len);
    let mut rest = base.into_iter();
    let mut pos = 0usize;
    for (i, (start, delete, insert)) in splices.enumerate() {
        let (start, delete) = (start as usize, delete as usize);
        let here = || format!("{path}.splices[{i}]");
        if start < pos {
            return Err(DeltaError::new(
                here(),
                format!("starts at {start}, before the end of the previous splice ({pos})"),
            ));
        }
        let end = start.saturating_add(delete);
        if end > len {
            return Err(DeltaError::new(
                here(),
                format!("replaces {what} {start}..{end} but the base has {len} {what}"),
            ));
        }
        out.extend(rest.by_ref().take(start - pos));
        rest.by_ref().take(delete).for_each(drop);
        out.extend(insert);
        pos = end;
    }
    out.extend(rest);
    Ok(out)
}

/// Applies one collection's part of a delta.
fn apply_named<T, P>(
    kind: &str,
    base: Vec<T>,
    (removed, removed_field): (Vec<String>, &str),
    (patches, patch_field): (Vec<P>, &str),
    upserts: Vec<T>,
) -> Result<Vec<T>, DeltaError>
where
    T: Named,
    P: PatchOf<T>,
{
    let mut by_name: BTreeMap<String, T> =
        base.into_iter().map(|t| (t.name().to_owned(), t)).collect();
    for (i, name) in removed.iter().enumerate() {
        if by_name.remove(name).is_none() {
            return Err(DeltaError::new(
                format!("{removed_field}[{i}]"),
                format!("no {kind} {name:?} in the base"),
            ));
        }
    }
    for (i, patch) in patches.into_iter().enumerate() {
        let path = format!("{patch_field}[{i}]");
        let Some(target) = by_name.get_mut(patch.name()) else {
            return Err(DeltaError::new(
                path,
                format!("no {kind} {:?} in the base", patch.name()),
            ));
        };
        patch.apply_to(target, &path)?;
    }
    for t in upserts {
        by_name.insert(t.name().to_owned(), t);
    }
    Ok(by_name.into_values().collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::spec::*;
    use crate::validate::validate;

    const EXAMPLE: &str = include_str!("../../examples/snapshot.yaml");

    fn example() -> SnapshotSpec {
        crate::parse_file(EXAMPLE.as_bytes(), crate::Format::Yaml).unwrap()
    }

    fn canonical(spec: &SnapshotSpec) -> (pb::Snapshot, String) {
        let s = validate(spec.clone()).unwrap();
        (s.to_proto(), s.content_hash().to_hex())
    }

    fn route(path: &str, cluster: &str) -> RouteSpec {
        RouteSpec {
            matcher: Some(RouteMatchSpec {
                path_prefix: Some(path.into()),
                ..RouteMatchSpec::default()
            }),
            cluster: cluster.into(),
            ..RouteSpec::default()
        }
    }

    #[test]
    fn splices_are_small_for_small_changes() {
        let old: Vec<u32> = (0..100).collect();
        let mut new = old.clone();
        new[40] = 1000;
        assert_eq!(list_splices(&old, &new), vec![(40, 1, vec![1000])]);
        new[60] = 2000;
        assert_eq!(
            list_splices(&old, &new),
            vec![(40, 1, vec![1000]), (60, 1, vec![2000])]
        );
        let mut inserted = old.clone();
        inserted.insert(10, 7);
        assert_eq!(list_splices(&old, &inserted), vec![(10, 0, vec![7])]);
        let mut removed = old.clone();
        removed.remove(99);
        assert_eq!(list_splices(&old, &removed), vec![(99, 1, vec![])]);
        assert!(list_splices(&old, &old).is_empty());
        assert_eq!(list_splices(&[], &[1, 2]), vec![(0, 0, vec![1, 2])]);
        assert_eq!(list_splices(&[1, 2], &[]), vec![(0, 2, vec![])]);
        // Repeated elements: the prefix and suffix must not overlap.
        assert_eq!(list_splices(&[1, 1], &[1, 1, 1]), vec![(2, 0, vec![1])]);
    }

    #[test]
    fn one_route_of_many_is_one_route_on_the_wire() {
        let mut spec = example();
        spec.route_tables[0].routes = (0..10_000)
            .map(|i| route(&format!("/svc{i}"), "api"))
            .collect();
        let (base, _) = canonical(&spec);
        spec.route_tables[0].routes[5_000].timeout_ms = Some(1234);
        let (target, hash) = canonical(&spec);
        let delta = diff(&base, &target);
        assert_eq!(delta.route_table_patches.len(), 1);
        assert!(delta.route_tables.is_empty());
        let splices = &delta.route_table_patches[0].splices;
        assert_eq!(splices.len(), 1);
        assert_eq!((splices[0].start, splices[0].delete_count), (5_000, 1));
        let full = target.encoded_len();
        let small = delta.encoded_len();
        assert!(small * 1000 < full, "delta {small} bytes, full {full}");
        let applied = apply(base, delta).unwrap();
        assert_eq!(applied, target);
        let s = crate::Snapshot::try_from(applied).unwrap();
        assert_eq!(s.content_hash().to_hex(), hash);
    }

    #[test]
    fn endpoint_changes_patch_the_cluster() {
        let mut spec = example();
        spec.clusters[0].endpoints = (0..500)
            .map(|i| EndpointSpec {
                address: format!("10.0.{}.{}:80", i / 250, i % 250),
                weight: None,
            })
            .collect();
        let (base, _) = canonical(&spec);
        spec.clusters[0].endpoints.remove(17);
        let (target, _) = canonical(&spec);
        let delta = diff(&base, &target);
        assert_eq!(delta.cluster_patches.len(), 1);
        assert!(delta.clusters.is_empty());
        assert_eq!(apply(base.clone(), delta).unwrap(), target);

        // Another field changed as well: the cluster is replaced whole.
        spec.clusters[0].lb = Some("random".into());
        let (target, _) = canonical(&spec);
        let delta = diff(&base, &target);
        assert!(delta.cluster_patches.is_empty());
        assert_eq!(delta.clusters.len(), 1);
        assert_eq!(apply(base, delta).unwrap(), target);
    }

    #[test]
    fn equal_snapshots_give_an_empty_delta() {
        let (s, _) = canonical(&example());
        let delta = diff(&s, &s);
        assert!(is_empty(&delta));
        assert_eq!(apply(s.clone(), delta).unwrap(), s);
    }

    #[test]
    fn bad_deltas_name_the_field() {
        let (base, _) = canonical(&example());
        let cases = [
            (
                pb::SnapshotDelta {
                    removed_clusters: vec!["api".into(), "nope".into()],
                    ..Default::default()
                },
                r#"removed_clusters[1]: no cluster "nope" in the base"#,
            ),
            (
                pb::SnapshotDelta {
                    removed_values: vec!["missing".into()],
                    ..Default::default()
                },
                r#"removed_values[0]: no value "missing" in the base"#,
            ),
            (
                pb::SnapshotDelta {
                    route_table_patches: vec![pb::RouteTablePatch {
                        name: "other".into(),
                        splices: vec![],
                    }],
                    ..Default::default()
                },
                r#"route_table_patches[0]: no route table "other" in the base"#,
            ),
            (
                pb::SnapshotDelta {
                    route_table_patches: vec![pb::RouteTablePatch {
                        name: "main".into(),
                        splices: vec![pb::RouteSplice {
                            start: 1,
                            delete_count: 5,
                            insert: vec![],
                        }],
                    }],
                    ..Default::default()
                },
                "route_table_patches[0].splices[0]: replaces routes 1..6 but the base has 2 routes",
            ),
            (
                pb::SnapshotDelta {
                    cluster_patches: vec![pb::ClusterPatch {
                        name: "api".into(),
                        splices: vec![
                            pb::EndpointSplice {
                                start: 1,
                                delete_count: 1,
                                insert: vec![],
                            },
                            pb::EndpointSplice {
                                start: 0,
                                delete_count: 0,
                                insert: vec![],
                            },
                        ],
                    }],
                    ..Default::default()
                },
                "cluster_patches[0].splices[1]: starts at 0, before the end of the previous splice (2)",
            ),
        ];
        for (delta, expected) in cases {
            let err = apply(base.clone(), delta).unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
        let err = apply_encoded(&crate::Snapshot::default(), b"\xff\xff").unwrap_err();
        assert!(err.to_string().starts_with("delta: not a valid"), "{err}");
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// One edit of a spec. Edits that would make the spec invalid are
        /// skipped, so every version in a sequence is a valid snapshot.
        #[derive(Debug, Clone)]
        enum Edit {
            RouteTimeout {
                table: usize,
                route: usize,
                ms: u64,
            },
            InsertRoute {
                table: usize,
                at: usize,
                path: u8,
                named: bool,
            },
            RemoveRoute {
                table: usize,
                route: usize,
            },
            AddTable {
                name: u8,
                routes: u8,
            },
            RemoveTable {
                name: u8,
            },
            AddEndpoint {
                cluster: usize,
                port: u16,
            },
            RemoveEndpoint {
                cluster: usize,
                at: usize,
            },
            Weight {
                cluster: usize,
                at: usize,
                weight: u32,
            },
            Lb {
                cluster: usize,
                lb: u8,
            },
            AddCluster {
                name: u8,
            },
            RemoveCluster {
                name: u8,
            },
            Value {
                key: u8,
                value: u8,
            },
            RemoveValue {
                key: u8,
            },
            Flag {
                key: u8,
                default_on: bool,
                targeted: bool,
            },
            RemoveFlag {
                key: u8,
            },
            RateLimit {
                rps: u32,
            },
            Listener {
                port: u16,
            },
        }

        fn edit() -> impl Strategy<Value = Edit> {
            prop_oneof![
                (0..3usize, 0..40usize, 1..5000u64)
                    .prop_map(|(table, route, ms)| Edit::RouteTimeout { table, route, ms }),
                (0..3usize, 0..40usize, any::<u8>(), any::<bool>()).prop_map(
                    |(table, at, path, named)| Edit::InsertRoute {
                        table,
                        at,
                        path,
                        named
                    }
                ),
                (0..3usize, 0..40usize)
                    .prop_map(|(table, route)| Edit::RemoveRoute { table, route }),
                (0..4u8, 1..6u8).prop_map(|(name, routes)| Edit::AddTable { name, routes }),
                (0..4u8).prop_map(|name| Edit::RemoveTable { name }),
                (0..5usize, 1000..1100u16)
                    .prop_map(|(cluster, port)| Edit::AddEndpoint { cluster, port }),
                (0..5usize, 0..8usize)
                    .prop_map(|(cluster, at)| Edit::RemoveEndpoint { cluster, at }),
                (0..5usize, 0..8usize, 1..5u32).prop_map(|(cluster, at, weight)| Edit::Weight {
                    cluster,
                    at,
                    weight
                }),
                (0..5usize, 0..3u8).prop_map(|(cluster, lb)| Edit::Lb { cluster, lb }),
                (0..4u8).prop_map(|name| Edit::AddCluster { name }),
                (0..4u8).prop_map(|name| Edit::RemoveCluster { name }),
                (0..5u8, 0..4u8).prop_map(|(key, value)| Edit::Value { key, value }),
                (0..5u8).prop_map(|key| Edit::RemoveValue { key }),
                (0..4u8, any::<bool>(), any::<bool>()).prop_map(|(key, default_on, targeted)| {
                    Edit::Flag {
                        key,
                        default_on,
                        targeted,
                    }
                }),
                (0..4u8).prop_map(|key| Edit::RemoveFlag { key }),
                (1..500u32).prop_map(|rps| Edit::RateLimit { rps }),
                (20000..20010u16).prop_map(|port| Edit::Listener { port }),
            ]
        }

        fn edit_spec(spec: &mut SnapshotSpec, e: &Edit) {
            let n_tables = spec.route_tables.len();
            let n_clusters = spec.clusters.len();
            match *e {
                Edit::RouteTimeout { table, route, ms } => {
                    let t = &mut spec.route_tables[table % n_tables];
                    let n = t.routes.len();
                    t.routes[route % n].timeout_ms = Some(ms);
                }
                Edit::InsertRoute {
                    table,
                    at,
                    path,
                    named,
                } => {
                    let t = &mut spec.route_tables[table % n_tables];
                    let mut r = route(&format!("/p{path}"), "api");
                    if named {
                        r.name = Some(format!("n{path}"));
                    }
                    let at = at % (t.routes.len() + 1);
                    t.routes.insert(at, r);
                }
                Edit::RemoveRoute { table, route } => {
                    let t = &mut spec.route_tables[table % n_tables];
                    let n = t.routes.len();
                    t.routes.remove(route % n);
                }
                Edit::AddTable { name, routes } => {
                    spec.route_tables.push(RouteTableSpec {
                        name: format!("t{name}"),
                        routes: (0..routes)
                            .map(|i| route(&format!("/t{i}"), "web"))
                            .collect(),
                    });
                }
                Edit::RemoveTable { name } => {
                    spec.route_tables.retain(|t| t.name != format!("t{name}"));
                }
                Edit::AddEndpoint { cluster, port } => {
                    spec.clusters[cluster % n_clusters]
                        .endpoints
                        .push(EndpointSpec {
                            address: format!("127.0.0.2:{port}"),
                            weight: None,
                        });
                }
                Edit::RemoveEndpoint { cluster, at } => {
                    let c = &mut spec.clusters[cluster % n_clusters];
                    let n = c.endpoints.len();
                    c.endpoints.remove(at % n);
                }
                Edit::Weight {
                    cluster,
                    at,
                    weight,
                } => {
                    let c = &mut spec.clusters[cluster % n_clusters];
                    let n = c.endpoints.len();
                    c.endpoints[at % n].weight = Some(weight);
                }
                Edit::Lb { cluster, lb } => {
                    spec.clusters[cluster % n_clusters].lb =
                        Some(["round_robin", "least_request", "random"][lb as usize].into());
                }
                Edit::AddCluster { name } => spec.clusters.push(ClusterSpec {
                    name: format!("c{name}"),
                    endpoints: vec![EndpointSpec {
                        address: "127.0.0.3:80".into(),
                        weight: None,
                    }],
                    ..ClusterSpec::default()
                }),
                Edit::RemoveCluster { name } => {
                    spec.clusters.retain(|c| c.name != format!("c{name}"));
                }
                Edit::Value { key, value } => {
                    let v = match value {
                        0 => serde_json::json!(true),
                        1 => serde_json::json!(12),
                        2 => serde_json::json!("text"),
                        _ => serde_json::json!({"a": [1, 2]}),
                    };
                    spec.values.insert(format!("k{key}"), v);
                }
                Edit::RemoveValue { key } => {
                    spec.values.remove(&format!("k{key}"));
                }
                Edit::Flag {
                    key,
                    default_on,
                    targeted,
                } => {
                    let flag = crate::FlagSpec {
                        state: Some("ENABLED".into()),
                        variants: [
                            ("on".to_owned(), serde_json::json!(true)),
                            ("off".to_owned(), serde_json::json!(false)),
                        ]
                        .into(),
                        default_variant: Some(if default_on { "on" } else { "off" }.into()),
                        targeting: targeted.then(|| {
                            serde_json::json!({"if": [{"==": [{"var": "tier"}, "gold"]}, "on", null]})
                        }),
                        metadata: Default::default(),
                    };
                    spec.flags.insert(format!("f{key}"), flag);
                }
                Edit::RemoveFlag { key } => {
                    spec.flags.remove(&format!("f{key}"));
                }
                Edit::RateLimit { rps } => {
                    spec.rate_limits[0].requests_per_second = Some(f64::from(rps));
                }
                Edit::Listener { port } => {
                    spec.listeners[0].address = format!("127.0.0.1:{port}");
                }
            }
        }

        /// A sequence of valid versions, each one edit away from the last
        /// (edits that would not validate are skipped).
        fn versions(edits: &[Edit]) -> Vec<(pb::Snapshot, String)> {
            let mut spec = example();
            let mut out = vec![canonical(&spec)];
            for e in edits {
                let mut next = spec.clone();
                edit_spec(&mut next, e);
                if let Ok(s) = validate(next.clone()) {
                    spec = next;
                    out.push((s.to_proto(), s.content_hash().to_hex()));
                }
            }
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            /// Applying the delta between any two versions (forwards or
            /// backwards) to the first gives exactly the second, and so its
            /// hash.
            #[test]
            fn delta_between_any_two_versions_gives_the_target(
                edits in proptest::collection::vec(edit(), 1..14)
            ) {
                let versions = versions(&edits);
                for (i, (base, _)) in versions.iter().enumerate() {
                    for (j, (target, hash)) in versions.iter().enumerate() {
                        let delta = diff(base, target);
                        // Through the wire encoding, as agents receive it.
                        let delta = pb::SnapshotDelta::decode(
                            delta.encode_to_vec().as_slice(),
                        ).unwrap();
                        let applied = apply(base.clone(), delta).unwrap();
                        prop_assert_eq!(&applied, target, "delta {} -> {}", i, j);
                        let s = crate::Snapshot::try_from(applied).unwrap();
                        prop_assert_eq!(&s.content_hash().to_hex(), hash);
                    }
                }
            }
        }
    }
}
