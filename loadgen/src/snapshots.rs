//! The snapshots the benchmark pushes: one HTTP listener, one route table of
//! R routes over 16 clusters of two endpoints each.
//!
//! A *generation* changes every route (its timeout), so the delta from the
//! previous version is as large as the snapshot and the server sends it
//! whole; *edits* change routes one at a time from the front, so each
//! version differs from the one before in exactly one route.

use vane_proto as pb;

/// Clusters the routes are spread over.
pub const CLUSTERS: usize = 16;

/// A snapshot of `routes` routes: every route's timeout is `1000 +
/// generation` ms, except the first `edited` routes, whose timeout is 7000 ms.
pub fn snapshot(routes: usize, generation: u64, edited: usize) -> pb::Snapshot {
    let clusters = (0..CLUSTERS)
        .map(|c| pb::Cluster {
            name: format!("svc-{c}"),
            endpoints: (1..=2)
                .map(|e| pb::Endpoint {
                    address: format!("10.0.{c}.{e}:8080"),
                    weight: None,
                })
                .collect(),
            ..pb::Cluster::default()
        })
        .collect();
    let routes = (0..routes)
        .map(|i| pb::Route {
            name: format!("route-{i}"),
            r#match: Some(pb::RouteMatch {
                path_prefix: Some(format!("/svc-{i}/")),
                ..pb::RouteMatch::default()
            }),
            cluster: format!("svc-{}", i % CLUSTERS),
            timeout_ms: Some(if i < edited { 7000 } else { 1000 + generation }),
            retries: Some(1),
            ..pb::Route::default()
        })
        .collect();
    pb::Snapshot {
        listeners: vec![pb::Listener {
            name: "web".into(),
            address: "0.0.0.0:8080".into(),
            protocol: "http".into(),
            route_table: "main".into(),
            ..pb::Listener::default()
        }],
        route_tables: vec![pb::RouteTable {
            name: "main".into(),
            routes,
        }],
        clusters,
        ..pb::Snapshot::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn snapshots_validate_and_differ_as_documented() {
        let canonical = |s: pb::Snapshot| vane_model::Snapshot::try_from(s).unwrap().to_proto();
        let base = canonical(snapshot(50, 3, 0));
        let next_gen = canonical(snapshot(50, 4, 0));
        let one_edit = canonical(snapshot(50, 3, 1));
        let delta = vane_model::delta::diff(&base, &one_edit);
        assert_eq!(delta.route_table_patches.len(), 1);
        assert_eq!(delta.route_table_patches[0].splices[0].insert.len(), 1);
        let delta = vane_model::delta::diff(&base, &next_gen);
        assert_eq!(
            delta.route_tables.len(),
            1,
            "every route changed: sent whole"
        );
    }
}
