//! [`EtcdConfig`]: how a replica reaches etcd, with its defaults.

use std::time::Duration;

use crate::credentials::{EtcdAuth, EtcdTls};

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members: all `http://host:2379`, or all
    /// `https://host:2379` with [`Self::tls`]. Required.
    pub endpoints: Vec<String>,
    /// Key prefix under which everything is stored. Default `/vane`; several
    /// Vane clusters may share an etcd with different prefixes.
    pub prefix: String,
    /// Bound on each operation against etcd, retries included; a push that
    /// etcd does not confirm within it fails. Default 3s.
    pub request_timeout: Duration,
    /// Time-to-live of the lease the agents' records are bound to: how long
    /// a dead replica's agents stay listed. Default 10s.
    pub lease_ttl: Duration,
    /// TLS to etcd: required with `https://` endpoints, refused with
    /// `http://` ones. Default `None`.
    pub tls: Option<EtcdTls>,
    /// The etcd user this replica authenticates as, when etcd has
    /// authentication enabled. Default `None`.
    pub auth: Option<EtcdAuth>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            prefix: "/vane".into(),
            request_timeout: Duration::from_secs(3),
            lease_ttl: Duration::from_secs(10),
            tls: None,
            auth: None,
        }
    }
}
