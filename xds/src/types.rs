//! The shapes of the translation: resource types and their URLs, client
//! kinds, one translated resource, a snapshot's resources, errors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

/// The five xDS resource types Vane serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS): first, so
    /// that a secret is sent before what uses it when both are due.
    Secret,
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    Endpoint,
    /// `envoy.config.listener.v3.Listener` (LDS).
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    Route,
}

impl ResourceType {
    /// Every type, in the order a new version is sent (make before break:
    /// clusters and their endpoints before the listeners and routes that
    /// refer to them).
    pub const ALL: [Self; 5] = [
        Self::Secret,
        Self::Cluster,
        Self::Endpoint,
        Self::Listener,
        Self::Route,
    ];

    /// The type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            Self::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Self::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Self::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Self::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Self::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        }
    }

    /// The type of a type URL, `None` for a type Vane does not serve.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// `CDS`, `EDS`, `LDS`, `RDS` or `SDS`.
    pub fn short(self) -> &'static str {
        match self {
            Self::Cluster => "CDS",
            Self::Endpoint => "EDS",
            Self::Listener => "LDS",
            Self::Route => "RDS",
            Self::Secret => "SDS",
        }
    }

    /// Whether a subscription with no names means "everything" (LDS and
    /// CDS; RDS, EDS and SDS are always asked for by name).
    pub fn wildcard_by_default(self) -> bool {
        matches!(self, Self::Cluster | Self::Listener)
    }
}

/// What kind of client a node is, from its `user_agent_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    /// Vane's own agent (the `vane.v1` watch).
    VaneAgent,
    /// Envoy (`user_agent_name` "envoy").
    Envoy,
    /// A gRPC proxyless client (`user_agent_name` "gRPC C-core …",
    /// "grpc-node-js", "grpc-java", "grpc-go", …).
    Grpc,
    /// Any other xDS client.
    Other,
}

impl Client {
    /// The kind of an xDS node with this `user_agent_name`.
    pub fn from_user_agent(name: &str) -> Self {
        let lower = name.to_ascii_lowercase();
        if lower == "envoy" || lower.starts_with("envoy") {
            Self::Envoy
        } else if lower.starts_with("grpc") {
            Self::Grpc
        } else {
            Self::Other
        }
    }

    /// The name `vanectl status` shows in its CLIENT column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VaneAgent => "vane-agent",
            Self::Envoy => "envoy",
            Self::Grpc => "grpc",
            Self::Other => "xds",
        }
    }
}

/// One translated resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Its name (unique within its type).
    pub name: String,
    /// The message, packed.
    pub body: Any,
    /// Lowercase hex SHA-256 of the type URL and the encoded message: the
    /// resource's version on a delta stream. The same content always has
    /// the same hash.
    pub hash: String,
}

/// Every resource of one snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// Listeners bound to sockets (Envoy), by name.
    pub listeners: BTreeMap<String, Arc<Resource>>,
    /// API listeners (gRPC proxyless clients ask for a listener by the
    /// target's name), by name: one per http listener, named after it.
    pub api_listeners: BTreeMap<String, Arc<Resource>>,
    /// Route configurations, by name (one per route table).
    pub routes: BTreeMap<String, Arc<Resource>>,
    /// Clusters, by name.
    pub clusters: BTreeMap<String, Arc<Resource>>,
    /// Cluster load assignments, by cluster name.
    pub endpoints: BTreeMap<String, Arc<Resource>>,
    /// SDS secrets, by name (one per snapshot secret).
    pub secrets: BTreeMap<String, Arc<Resource>>,
    /// The names of the secrets carrying a private key inline (not a file
    /// on the client's host): never sent in plaintext to another host.
    pub secrets_with_keys: BTreeSet<String>,
    /// Whether a listener or a cluster names a secret (Envoy will ask for
    /// them over SDS).
    pub uses_secrets: bool,
}

impl Resources {
    /// What a wildcard subscriber of `ty` gets: every resource of the type,
    /// API listeners excepted.
    pub fn wildcard(&self, ty: ResourceType) -> &BTreeMap<String, Arc<Resource>> {
        match ty {
            ResourceType::Cluster => &self.clusters,
            ResourceType::Endpoint => &self.endpoints,
            ResourceType::Listener => &self.listeners,
            ResourceType::Route => &self.routes,
            ResourceType::Secret => &self.secrets,
        }
    }

    /// These resources without the secrets carrying inline private keys,
    /// for a client that must not get them (plaintext from another host);
    /// `None` when there are none. What uses them waits for them in Envoy
    /// (a listener or cluster naming a missing secret does not serve).
    #[must_use]
    pub fn without_inline_keys(&self) -> Option<Self> {
        if self.secrets_with_keys.is_empty() {
            return None;
        }
        let mut out = self.clone();
        out.secrets
            .retain(|name, _| !self.secrets_with_keys.contains(name));
        out.secrets_with_keys.clear();
        Some(out)
    }

    /// The resource of `ty` asked for by `name`; for listeners, the API
    /// listener of that name (what gRPC clients ask for).
    pub fn by_name(&self, ty: ResourceType, name: &str) -> Option<&Arc<Resource>> {
        match ty {
            ResourceType::Listener => self.api_listeners.get(name),
            _ => self.wildcard(ty).get(name),
        }
    }
}

/// A snapshot that has no xDS form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// A field whose value xDS cannot express.
    #[error("{field}: {reason}")]
    Unsupported {
        /// The snapshot's field path, e.g. `route_tables[0].routes[2].match.path_regex`.
        field: String,
        /// Why.
        reason: String,
    },
}
