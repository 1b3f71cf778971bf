//! The listening sockets themselves: binding one of a `SO_REUSEPORT` group,
//! duplicating a set to share it between listeners, and the OS error an
//! operator reads when an address cannot be bound.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};

/// Pending connections the kernel queues per listener.
const BACKLOG: i32 = 1024;

/// The sockets of one address: one per worker once started (index =
/// worker), just the first one while stashed.
pub(crate) type SocketSet = Vec<std::net::TcpListener>;

/// Duplicates of every socket of `set` (same open sockets, new handles).
pub(crate) fn dup_set(set: &SocketSet) -> io::Result<SocketSet> {
    set.iter().map(std::net::TcpListener::try_clone).collect()
}

/// Binds a nonblocking listening socket with `SO_REUSEADDR` (so a restart
/// is not refused by connections in TIME_WAIT) and `SO_REUSEPORT` (one
/// socket per worker). A port held by another program without
/// `SO_REUSEPORT` (or by another user) still fails with "address in use".
pub(crate) fn bind(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// An OS error without the `(os error N)` suffix: what an operator reads.
pub(crate) fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}
