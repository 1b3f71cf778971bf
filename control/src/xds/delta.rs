//! The incremental protocol (`DeltaAggregatedResources`): requests change
//! the subscription by names (`*` for every resource), answer responses by
//! nonce and, on a new stream, say which versions of which resources the
//! client has; responses carry only the resources whose content the client
//! lacks (a resource's version is the hash of its content) and the names it
//! must drop.
//!
//! What the client has is tracked per type; a refused response (the last
//! one or an older one still in flight) takes what it carried out of that,
//! and nothing is sent again until the version changes or
//! the subscription grows. A subscribed name the version lacks is answered
//! once in `removed_resources` (the client learns it does not exist).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use prost::Message as _;
use tonic::Status;
use vane_xds::ResourceType;

use crate::xds::stream::{MAX_NAMES_PER_TYPE, MAX_OTHER_TYPES, Nonces, Protocol, Target, too_many};
use crate::xds::tracker::{Answer, Refusal, Tracker};

/// One type's subscription and what the client has of it.
#[derive(Debug, Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// Name → content hash of what the client has (as far as we know).
    known: HashMap<String, String>,
    /// The responses not answered yet, oldest first: their nonce, the
    /// names they carried and the names they removed (at most
    /// [`MAX_IN_FLIGHT`]).
    in_flight: Vec<InFlight>,
    /// Names subscribed since the last response: each is answered, if only
    /// to say it does not exist.
    fresh: BTreeSet<String>,
    /// Something may need sending.
    due: bool,
    /// A response must go out even if empty (the client's first request
    /// of the type waits for one).
    must_answer: bool,
}

/// One response waiting for its answer.
#[derive(Debug)]
struct InFlight {
    nonce: String,
    sent: Vec<String>,
    removed: Vec<String>,
}

/// The most unanswered responses remembered per type.
const MAX_IN_FLIGHT: usize = 8;

/// One delta stream's protocol.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    types: BTreeMap<ResourceType, Subscription>,
    /// Types Vane does not serve: every name asked for is answered removed.
    others: BTreeMap<String, Subscription>,
    nonces: Nonces,
}

impl Subscription {
    fn apply(&mut self, request: &DeltaDiscoveryRequest) -> Result<(), Status> {
        for name in &request.resource_names_subscribe {
            if name == "*" {
                self.wildcard = true;
                self.due = true;
            } else if self.names.insert(name.clone()) {
                if self.names.len() > MAX_NAMES_PER_TYPE {
                    return Err(too_many("resource_names_subscribe", MAX_NAMES_PER_TYPE));
                }
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
        Ok(())
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
            if first && self.others.len() >= MAX_OTHER_TYPES {
                return Err(too_many(
                    "type_url (types Vane does not serve)",
                    MAX_OTHER_TYPES,
                ));
            }
            let sub = self.others.entry(request.type_url.clone()).or_default();
            sub.must_answer |= first;
            sub.due |= first;
            sub.apply(&request)?;
            tracker.touch();
            return Ok(());
        };
        let first = !self.types.contains_key(&ty);
        let sub = self.types.entry(ty).or_default();
        if first {
            sub.wildcard = ty.wildcard_by_default() && request.resource_names_subscribe.is_empty();
            if request.initial_resource_versions.len() > MAX_NAMES_PER_TYPE {
                return Err(too_many("initial_resource_versions", MAX_NAMES_PER_TYPE));
            }
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
            if let Some(at) = sub
                .in_flight
                .iter()
                .position(|f| f.nonce == request.response_nonce)
            {
                let answered = sub.in_flight.drain(..=at).next_back();
                if let (Answer::Nack(_), Some(refused)) = (answer, answered) {
                    // The client kept what it had: the resources this
                    // response carried are not known to be there (sent
                    // again with the next version), and the ones it removed
                    // still are, in a version we cannot name.
                    for name in refused.sent {
                        sub.known.remove(&name);
                    }
                    for name in refused.removed {
                        sub.known.insert(name, String::new());
                    }
                }
            }
        }
        sub.apply(&request)?;
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
            for r in &send {
                sub.known.insert(r.name.clone(), r.version.clone());
            }
            for name in &removed {
                sub.known.remove(name);
            }
            let nonce = self.nonces.next();
            if sub.in_flight.len() == MAX_IN_FLIGHT {
                sub.in_flight.remove(0);
            }
            sub.in_flight.push(InFlight {
                nonce: nonce.clone(),
                sent: send.iter().map(|r| r.name.clone()).collect(),
                removed: removed.iter().cloned().collect(),
            });
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
