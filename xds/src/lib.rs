//! Vane snapshots as Envoy xDS resources: [`translate`] turns a validated
//! [`vane_model::Snapshot`] into the listeners, route configurations,
//! clusters and cluster load assignments stock Envoy and gRPC's proxyless
//! clients read, and the secrets their TLS uses ([`Resources`]), each with
//! its content hash (a delta
//! stream's resource version). The control server sends them; `vanectl get
//! --as xds` prints them, in Envoy's JSON ([`json`]).
//!
//! # Layout
//! - `types.rs` — resource types, client kinds, [`Resource`], [`Resources`],
//!   [`TranslateError`];
//! - `listeners.rs` — socket listeners and gRPC's API listeners;
//! - `routes.rs` — route tables as route configurations (matches, retries,
//!   timeouts, rate limits);
//! - `ratelimit.rs` — Vane's token buckets as Envoy's local rate limit;
//! - `clusters.rs` — clusters and their load assignments;
//! - `tls.rs` — secrets (SDS) and the TLS transport sockets naming them;
//! - `parts.rs` — packing and hashing, the ADS config source, small pieces;
//! - `json.rs` — resources as Envoy's JSON, through the descriptor set
//!   committed as `xds/descriptors.bin` (`cargo xtask xds-descriptors`).
//!
//! The mapping, field by field, and what each client ignores: `docs/xds.md`.

mod clusters;
pub mod json;
mod listeners;
mod parts;
mod ratelimit;
mod routes;
mod tls;
mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use prost::{Message, Name};

pub use types::{Client, Resource, ResourceType, Resources, TranslateError};

/// The xDS resources of `snapshot`.
///
/// The same snapshot always gives the same resources with the same hashes,
/// and a resource whose content did not change between two snapshots keeps
/// its hash (a delta stream sends only what changed).
///
/// # Errors
/// When a part of the snapshot has no xDS form (the error names it). A
/// snapshot that passed `vane_model::validate` always translates.
pub fn translate(snapshot: &vane_model::Snapshot) -> Result<Resources, TranslateError> {
    let l = listeners::listeners(snapshot);
    let mut secrets_with_keys = BTreeSet::new();
    let secrets = tls::secrets(snapshot)
        .into_iter()
        .map(|(name, secret, keyed)| {
            if keyed {
                secrets_with_keys.insert(name.clone());
            }
            (name, secret)
        })
        .collect();
    Ok(Resources {
        listeners: by_name(l.sockets),
        api_listeners: by_name(l.apis),
        routes: by_name(routes::route_configurations(snapshot)?),
        clusters: by_name(clusters::clusters(snapshot)),
        endpoints: by_name(clusters::load_assignments(snapshot)),
        secrets: by_name(secrets),
        secrets_with_keys,
        uses_secrets: snapshot.listeners.iter().any(|l| l.tls.is_some())
            || snapshot.clusters.iter().any(|c| c.tls.is_some()),
    })
}

fn by_name<M: Message + Name>(items: Vec<(String, M)>) -> BTreeMap<String, Arc<Resource>> {
    items
        .into_iter()
        .map(|(name, message)| {
            let resource = parts::resource(&name, &message);
            (name, resource)
        })
        .collect()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_tls;
