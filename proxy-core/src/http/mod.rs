//! The HTTP data plane: serving downstream connections (HTTP/1.1 and h2c on
//! one port) and forwarding each request to its route's cluster, HTTP/1.1
//! upgrades (WebSockets) included.

pub(crate) mod body;
pub(crate) mod conn;
pub(crate) mod forward;
pub(crate) mod headers;
pub(crate) mod local;
pub(crate) mod retry;
pub(crate) mod server;
pub(crate) mod tunnel;
pub(crate) mod upgrade;
