//! Errors of the proxy library. Data-plane failures never surface here:
//! they become local HTTP responses (see `http::local`) or closed TCP
//! connections, counted in the metrics.

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The embedded agent refused its configuration.
    #[error(transparent)]
    Agent(#[from] vane_agent::StartError),
    /// A setting is wrong; the text names it.
    #[error("invalid proxy configuration: {0}")]
    Config(String),
    /// The data-plane worker threads could not start.
    #[error("cannot start the worker threads: {0}")]
    Workers(std::io::Error),
    /// An admin socket could not be bound or served.
    #[error("admin endpoint {address}: {source}")]
    Admin {
        /// The address given.
        address: std::net::SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
}
