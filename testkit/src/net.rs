//! Loopback networking for tests, benchmarks and demos: free ports to listen
//! on, a minimal HTTP/1.1 GET for admin endpoints, and waiting until an
//! address accepts connections.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// A free loopback port for a process to listen on, chosen below the
/// kernel's ephemeral range: a port from `bind(":0")` is one the kernel also
/// hands to outgoing connections, and tests open many (every vanectl run,
/// every etcd client), so such a port is sometimes taken by the time the
/// process binds it. Consecutive calls return different ports even though
/// each released its probe.
///
/// # Panics
/// When no port between 20000 and 32000 is free.
pub fn free_port() -> u16 {
    // Spread over the range by process, then walk it.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let start = u16::try_from(std::process::id() % u32::from(SPAN)).unwrap_or(0);
    for _ in 0..SPAN {
        let offset = (start.wrapping_add(NEXT.fetch_add(7, Ordering::Relaxed))) % SPAN;
        let port = LOW + offset;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN)
}

/// [`free_port`] as a `127.0.0.1` address.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// `GET path` over HTTP/1.1 on `addr` (connect within 2 s, answer within
/// 10 s); returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response")
    })?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no status code"))?;
    Ok((code, body.to_owned()))
}

/// Waits until `addr` accepts a TCP connection; false if it did not within
/// `within`.
pub fn wait_accepting(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_differ_and_are_below_the_ephemeral_range() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        assert!((20_000..32_000).contains(&a), "{a}");
        assert!(TcpListener::bind(("127.0.0.1", a)).is_ok());
    }
}
