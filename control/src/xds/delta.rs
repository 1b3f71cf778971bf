//! The incremental protocol (`DeltaAggregatedResources`): requests change
//! the subscription by names (`*` for every resource), answer responses by
//! nonce and, on a new stream, say which versions of which resources the
//! client has; responses carry only the resources whose content the client
//! lacks (a resource's version is the hash of its content) and the names it
//! must drop.
//!
//! What the client has is tracked per type; a refused response puts it back
//! to what it had, and nothing is sent again until the version changes or
//! the subscription grows. A subscribed name the version lacks is answered
//! once in `removed_resources` (the client learns it does not exist).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use prost::Message as _;
use tonic::Status;
use vane_xds::ResourceType;

use crate::xds::stream::{Nonces, Protocol, Target};
use crate::xds::tracker::{Answer, Refusal, Tracker};

/// One type's subscription and what the client has of it.
#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Name → content hash of what the client has (as far as we know).
    known: HashMap<String, String>,
    /// The last response's nonce and what the client had before it.
    before: Option<(String, HashMap<String, String>)>,
    /// Names subscribed since the last response: each is answered, if only
    /// to say it does not exist.
    fresh: BTreeSet<String>,
    /// Something may need sending.
    due: bool,
    /// A response must go out even if empty (the client's first request
    /// of the type waits for one).
    must_answer: bool,
}

/// One delta stream's protocol.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    types: BTreeMap<ResourceType, Subscription>,
    /// Types Vane does not serve: every name asked for is answered removed.
    others: BTreeMap<String, Subscription>,
    nonces: Nonces,
}

impl Subscription {
    fn apply(&mut self, request: &DeltaDiscoveryRequest) {
        for name in &request.resource_names_subscribe {
            if name == "*" {
                self.wildcard = true;
                self.due = true;
            } else if self.names.insert(name.clone()) {
                self.fresh.insert(name.clone());
                self.due = true;
            }
        }
        // The client drops what it unsubscribed from (what the wildcard
        // still covers it keeps).
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                self.wildcard = false;
                let names = &self.names;
                self.known.retain(|n, _| names.contains(n));
            } else {
                self.names.remove(name);
                self.fresh.remove(name);
                if !self.wildcard {
                    self.known.remove(name);
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        !self.wildcard && self.names.is_empty()
    }
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn node(request: &Self::Request) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        request: DeltaDiscoveryRequest,
        tracker: &mut Tracker,
    ) -> Result<(), Status> {
        let Some(ty) = ResourceType::from_type_url(&request.type_url) else {
            if request.type_url.is_empty() {
                return Err(Status::invalid_argument(
                    "type_url: empty; an aggregated stream names the type of every request",
                ));
            }
            let first = !self.others.contains_key(&request.type_url);
            let sub = self.others.entry(request.type_url.clone()).or_default();
            sub.must_answer |= first;
            sub.due |= first;
            sub.apply(&request);
            tracker.touch();
            return Ok(());
        };
        let first = !self.types.contains_key(&ty);
        let sub = self.types.entry(ty).or_default();
        if first {
            sub.wildcard = ty.wildcard_by_default() && request.resource_names_subscribe.is_empty();
            sub.known = request.initial_resource_versions.clone();
            sub.must_answer = true;
            sub.due = true;
        }
        if !request.response_nonce.is_empty() {
            let refusal = request.error_detail.as_ref().map(|e| Refusal {
                code: e.code,
                message: e.message.clone(),
            });
            let answer = tracker.answered(ty, &request.response_nonce, refusal);
            let before = sub.before.take();
            match (answer, before) {
                (Answer::Nack(_), Some((nonce, had))) if nonce == request.response_nonce => {
                    sub.known = had;
                }
                (Answer::Stale, before) => sub.before = before,
                _ => {}
            }
        }
        sub.apply(&request);
        if sub.is_empty() && !first {
            tracker.unsubscribed(ty);
        } else if sub.due {
            tracker.subscribed(ty);
        } else {
            tracker.touch();
        }
        Ok(())
    }

    fn on_target(&mut self) {
        for sub in self.types.values_mut().chain(self.others.values_mut()) {
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
    ) -> Option<DeltaDiscoveryResponse> {
        let version = target.version();
        for (&ty, sub) in self.types.iter_mut().filter(|(_, s)| s.due) {
            sub.due = false;
            let resources = &target.resources;
            let mut wanted: BTreeMap<&str, _> = BTreeMap::new();
            if sub.wildcard {
                wanted.extend(resources.wildcard(ty).iter().map(|(n, r)| (n.as_str(), r)));
            }
            for name in &sub.names {
                if let Some(r) = resources.by_name(ty, name) {
                    wanted.insert(name.as_str(), r);
                }
            }
            let send: Vec<Resource> = wanted
                .iter()
                .filter(|(name, r)| sub.known.get(**name) != Some(&r.hash))
                .map(|(name, r)| Resource {
                    name: (*name).to_owned(),
                    version: r.hash.clone(),
                    resource: Some(r.body.clone()),
                    ..Resource::default()
                })
                .collect();
            let mut removed: BTreeSet<String> = sub
                .known
                .keys()
                .filter(|n| !wanted.contains_key(n.as_str()))
                .cloned()
                .collect();
            removed.extend(
                sub.fresh
                    .iter()
                    .filter(|n| !wanted.contains_key(n.as_str()))
                    .cloned(),
            );
            sub.fresh.clear();
            if send.is_empty() && removed.is_empty() && !sub.must_answer {
                tracker.settled(ty, version);
                continue;
            }
            sub.must_answer = false;
            let had = sub.known.clone();
            for r in &send {
                sub.known.insert(r.name.clone(), r.version.clone());
            }
            for name in &removed {
                sub.known.remove(name);
            }
            let nonce = self.nonces.next();
            sub.before = Some((nonce.clone(), had));
            let response = DeltaDiscoveryResponse {
                system_version_info: version.to_string(),
                resources: send,
                removed_resources: removed.into_iter().collect(),
                type_url: ty.type_url().to_owned(),
                nonce: nonce.clone(),
                ..DeltaDiscoveryResponse::default()
            };
            tracker.sent(ty, version, &nonce, response.encoded_len(), true);
            return Some(response);
        }
        for (url, sub) in self.others.iter_mut().filter(|(_, s)| s.due) {
            sub.due = false;
            let removed: Vec<String> = std::mem::take(&mut sub.fresh).into_iter().collect();
            if removed.is_empty() && !std::mem::take(&mut sub.must_answer) {
                continue;
            }
            return Some(DeltaDiscoveryResponse {
                system_version_info: version.to_string(),
                removed_resources: removed,
                type_url: url.clone(),
                nonce: self.nonces.next(),
                ..DeltaDiscoveryResponse::default()
            });
        }
        None
    }
}
