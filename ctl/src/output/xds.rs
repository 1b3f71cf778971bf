//! `get --as xds`: the xDS resources of one version as Envoy's JSON (the
//! JSON contract: `group`, `version`, `hash`, `client`, and `resources`
//! with `listeners`, `routes`, `clusters`, `endpoints`), or a table of
//! TYPE, NAME and VERSION (the resource's content hash, what a delta
//! stream sends as its version).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use serde::Serialize;
use vane_xds::json::{JsonError, resource_to_json};
use vane_xds::{Resource, Resources};

use crate::args::{OutputFormat, XdsClient};
use crate::output::format::{encode, short, table};

/// What `get --as xds` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct XdsView {
    pub(crate) group: String,
    pub(crate) version: u64,
    /// The snapshot's hash (the version's).
    pub(crate) hash: String,
    /// `envoy` or `grpc`.
    pub(crate) client: &'static str,
    pub(crate) resources: XdsResourcesView,
    /// (type, name, content hash) per resource, in the JSON's order, for
    /// the table.
    #[serde(skip)]
    pub(crate) rows: Vec<(&'static str, String, String)>,
}

/// Each resource in Envoy's JSON, by type, sorted by name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct XdsResourcesView {
    pub(crate) listeners: Vec<serde_json::Value>,
    pub(crate) routes: Vec<serde_json::Value>,
    pub(crate) clusters: Vec<serde_json::Value>,
    pub(crate) endpoints: Vec<serde_json::Value>,
}

impl XdsView {
    /// The view of `resources` for `client`: Envoy subscribes to every
    /// listener by wildcard and gets the socket listeners; a gRPC client
    /// asks for a listener by name and gets the API listener.
    pub(crate) fn new(
        group: &str,
        version: u64,
        hash: &str,
        client: XdsClient,
        resources: &Resources,
    ) -> Result<Self, JsonError> {
        let listeners = match client {
            XdsClient::Envoy => &resources.listeners,
            XdsClient::Grpc => &resources.api_listeners,
        };
        let mut rows = Vec::new();
        let mut render = |ty: &'static str, map: &BTreeMap<String, Arc<Resource>>| {
            map.values()
                .map(|r| {
                    rows.push((ty, r.name.clone(), r.hash.clone()));
                    resource_to_json(r)
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let resources = XdsResourcesView {
            listeners: render("LDS", listeners)?,
            routes: render("RDS", &resources.routes)?,
            clusters: render("CDS", &resources.clusters)?,
            endpoints: render("EDS", &resources.endpoints)?,
        };
        Ok(Self {
            group: group.to_owned(),
            version,
            hash: hash.to_owned(),
            client: client.as_str(),
            resources,
            rows,
        })
    }
}

/// `get --as xds` in `format`.
pub(crate) fn xds(view: &XdsView, format: OutputFormat) -> String {
    if format != OutputFormat::Table {
        return encode(view, format);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# group: {}  version: {}  client: {}",
        view.group, view.version, view.client
    );
    if view.rows.is_empty() {
        out.push_str("no resources (the snapshot has no listeners and no clusters)\n");
        return out;
    }
    let rows = view
        .rows
        .iter()
        .map(|(ty, name, hash)| vec![(*ty).to_owned(), name.clone(), short(hash).to_owned()])
        .collect();
    out.push_str(&table(&["TYPE", "NAME", "VERSION"], rows));
    out
}
