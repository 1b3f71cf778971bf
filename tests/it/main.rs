//! Vane's end-to-end tests, one module per feature, linked into one test binary
//! (one link instead of twenty). Each runs the built binaries as real processes on
//! loopback ports; helpers come from `vane-testkit`.

mod bad_input;
mod cas;
mod cli_completion;
mod cluster_cut_off;
mod cluster_etcd_faults;
mod cluster_etcd_tls;
mod cluster_failover;
mod cluster_replicas;
mod data_plane_health;
mod durability;
mod hostile_cache;
mod hostile_grpc;
mod hostile_proxy;
mod hostile_tokens;
mod http_poll;
mod integrity;
mod openfeature;
mod proxy_ack;
mod proxy_balancing;
mod proxy_churn;
mod proxy_failover;
mod proxy_resilience;
mod proxy_retries;
mod proxy_routing;
mod proxy_upgrade;
mod push;
mod push_wait;
mod reconnect_recovery;
mod retention;
mod rollout_cohorts;
mod rollouts;
mod security_tls;
mod shutdown;
mod sidecar;
mod sidecar_readyz;
mod store_faults;
mod watch;
mod xds_ads;
mod xds_envoy;
mod xds_grpc;
mod xds_view;
