//! The state-of-the-world protocol (`StreamAggregatedResources`): each
//! request of a type carries the client's whole subscription of that type
//! and answers the last response of that type by its nonce; each response
//! carries every subscribed resource of its type at one version.
//!
//! A response of a type goes out when the client first asks for it, when
//! its names change, when it asks again without a nonce, and when the
//! stream's version changes — never again for a version the client
//! refused; the endpoints and routes again after clusters and listeners
//! are acked (a changed cluster or listener warms until it gets them). A
//! name the version lacks is left out of the answer (an empty
//! answer, never silence). Types Vane does not serve are answered empty.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use prost::Message as _;
use tonic::Status;
use vane_xds::ResourceType;

use crate::xds::stream::{Nonces, Protocol, Target};
use crate::xds::tracker::{Answer, Refusal, Tracker};

/// What a client subscribed to of one type.
#[derive(Debug, Default)]
struct Subscription {
    /// Every resource of the type (LDS/CDS asked with no names, or `*`).
    wildcard: bool,
    /// Named resources.
    names: BTreeSet<String>,
    /// A response is due.
    due: bool,
    /// The nonce of the last response of this type ("" before the first).
    nonce: String,
}

/// One state-of-the-world stream's protocol.
#[derive(Debug, Default)]
pub(crate) struct Sotw {
    types: BTreeMap<ResourceType, Subscription>,
    /// Types Vane does not serve, by type URL: answered empty.
    others: BTreeMap<String, Subscription>,
    nonces: Nonces,
}

/// The subscription a request's names mean for `wildcard_by_default` types.
fn subscription(names: &[String], wildcard_by_default: bool) -> (bool, BTreeSet<String>) {
    let wildcard = (names.is_empty() && wildcard_by_default) || names.iter().any(|n| n == "*");
    let names = names.iter().filter(|n| *n != "*").cloned().collect();
    (wildcard, names)
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn node(request: &Self::Request) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        request: DiscoveryRequest,
        tracker: &mut Tracker,
    ) -> Result<(), Status> {
        let Some(ty) = ResourceType::from_type_url(&request.type_url) else {
            if request.type_url.is_empty() {
                return Err(Status::invalid_argument(
                    "type_url: empty; an aggregated stream names the type of every request",
                ));
            }
            let sub = self.others.entry(request.type_url.clone()).or_default();
            let (wildcard, names) = subscription(&request.resource_names, false);
            if request.response_nonce.is_empty() || names != sub.names || wildcard != sub.wildcard {
                sub.due = true;
            }
            sub.wildcard = wildcard;
            sub.names = names;
            tracker.touch();
            return Ok(());
        };
        let first = !self.types.contains_key(&ty);
        let sub = self.types.entry(ty).or_default();
        if !first && !request.response_nonce.is_empty() && request.response_nonce != sub.nonce {
            // An answer to an older response: the client will answer the
            // newer one too.
            tracker.touch();
            return Ok(());
        }
        let mut acked = false;
        if !request.response_nonce.is_empty() {
            let refusal = request.error_detail.as_ref().map(|e| Refusal {
                code: e.code,
                message: e.message.clone(),
            });
            acked = matches!(
                tracker.answered(ty, &request.response_nonce, refusal),
                Answer::Ack(_)
            );
        }
        let (wildcard, names) = subscription(&request.resource_names, ty.wildcard_by_default());
        let changed = wildcard != sub.wildcard || names != sub.names;
        sub.wildcard = wildcard;
        sub.names = names;
        if first || changed || request.response_nonce.is_empty() {
            sub.due = true;
            tracker.subscribed(ty);
        }
        // Clusters and listeners an update changed are warming: each waits
        // for its endpoints or routes, which a client whose subscription
        // did not change would not ask for again. Send them once more.
        let dependent = match ty {
            ResourceType::Cluster => Some(ResourceType::Endpoint),
            ResourceType::Listener => Some(ResourceType::Route),
            _ => None,
        };
        if acked && let Some(dependent) = dependent.and_then(|d| self.types.get_mut(&d)) {
            dependent.due = true;
        }
        Ok(())
    }

    fn on_target(&mut self) {
        for sub in self.types.values_mut() {
            sub.due = true;
        }
        for sub in self.others.values_mut() {
            sub.due = true;
        }
    }

    fn has_due(&self) -> bool {
        self.types
            .values()
            .chain(self.others.values())
            .any(|s| s.due)
    }

    fn next_response(
        &mut self,
        target: &Target,
        tracker: &mut Tracker,
    ) -> Option<DiscoveryResponse> {
        let version = target.version();
        if let Some((&ty, sub)) = self.types.iter_mut().find(|(_, s)| s.due) {
            let resources = &target.resources;
            let mut chosen: BTreeMap<&str, _> = BTreeMap::new();
            if sub.wildcard {
                chosen.extend(resources.wildcard(ty).iter().map(|(n, r)| (n.as_str(), r)));
            }
            for name in &sub.names {
                if let Some(r) = resources.by_name(ty, name) {
                    chosen.insert(name.as_str(), r);
                }
            }
            let nonce = self.nonces.next();
            let response = DiscoveryResponse {
                version_info: version.to_string(),
                resources: chosen.values().map(|r| r.body.clone()).collect(),
                type_url: ty.type_url().to_owned(),
                nonce: nonce.clone(),
                ..DiscoveryResponse::default()
            };
            sub.due = false;
            sub.nonce.clone_from(&nonce);
            tracker.sent(ty, version, &nonce, response.encoded_len(), false);
            return Some(response);
        }
        let (url, sub) = self.others.iter_mut().find(|(_, s)| s.due)?;
        sub.due = false;
        sub.nonce = self.nonces.next();
        Some(DiscoveryResponse {
            version_info: version.to_string(),
            type_url: url.clone(),
            nonce: sub.nonce.clone(),
            ..DiscoveryResponse::default()
        })
    }
}
