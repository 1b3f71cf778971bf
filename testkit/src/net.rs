//! Loopback networking for tests, benchmarks and demos: free ports to listen
//! on, a minimal HTTP/1.1 client for admin endpoints and etcd's gateway, and
//! waiting until an address accepts connections.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A free loopback port for a process to listen on, chosen below the
/// kernel's ephemeral range: a port from `bind(":0")` is one the kernel also
/// hands to outgoing connections, and tests open many (every vanectl run,
/// every etcd client), so such a port is sometimes taken by the time the
/// process binds it.
///
/// Test binaries run side by side (nextest runs every test in its own
/// process), and a probe released before the child binds leaves a window
/// in which another process may pick the same port. So each chosen port is
/// also reserved for the life of this process with an advisory lock on
/// `$TMPDIR/vane-test-ports/<port>`; other processes skip locked ports. The
/// kernel drops the lock when the process exits, however it exits.
///
/// # Panics
/// When no port between 20000 and 32000 is free.
pub fn free_port() -> u16 {
    // Spread over the range by process, then walk it.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let start = u16::try_from(std::process::id().wrapping_mul(2_654_435_761) % u32::from(SPAN))
        .unwrap_or(0);
    for _ in 0..SPAN {
        let offset = (start.wrapping_add(NEXT.fetch_add(7, Ordering::Relaxed))) % SPAN;
        let port = LOW + offset;
        if reserve(port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN)
}

/// Takes the cross-process reservation of `port` (see [`free_port`]);
/// false when another live process holds it. When the lock directory
/// cannot be used at all the reservation is skipped (the bind probe alone
/// still applies).
fn reserve(port: u16) -> bool {
    static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("vane-test-ports");
    if std::fs::create_dir_all(&dir).is_err() {
        return true;
    }
    let Ok(file) = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
    else {
        return true;
    };
    match file.try_lock() {
        Ok(()) => {
            HELD.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(file);
            true
        }
        Err(TryLockError::WouldBlock) => false,
        Err(TryLockError::Error(_)) => true,
    }
}

/// [`free_port`] as a `127.0.0.1` address.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// `GET path` over HTTP/1.1 on `addr` (connect within 2 s, answer within
/// 10 s); returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, "")
}

/// The sum of every sample of `name` in Prometheus/OpenMetrics `text`
/// whose labels contain all `labels` (`key="value"` fragments); `None` when
/// there is no such sample.
pub fn metric_in(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next().is_some_and(|n| n == name))
        .filter(|l| labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}

/// [`metric_in`] of `GET /metrics` on the admin endpoint `admin`; panics
/// when the endpoint does not answer 200 or has no such sample.
#[track_caller]
pub fn admin_metric(admin: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let (code, text) = http_get(admin, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "GET /metrics: {text}");
    metric_in(&text, name, labels)
        .unwrap_or_else(|| panic!("no {name} {labels:?} in /metrics:\n{text}"))
}

/// `METHOD path` over HTTP/1.1 on `addr` with a JSON `body` (connect within
/// 2 s, answer within 10 s); returns the status code and the body, a
/// chunked body decoded. Enough for admin endpoints and etcd's JSON gateway,
/// which is all the tests speak to this way.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // One write: `write!` on the socket itself would send each piece of the
    // format separately.
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let (head, rest) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("malformed HTTP response"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if !chunked {
        return Ok((code, rest.to_owned()));
    }
    let mut body = String::new();
    let mut rest = rest;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    Ok((code, body))
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

    #[test]
    fn a_chosen_port_stays_reserved_against_other_pickers() {
        let a = free_port();
        // A second open file description conflicts like another process.
        assert!(!reserve(a), "port {a} was handed out twice");
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        // A listener kept bound for the whole test: `:0` is safe here.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // The whole request is read first: closing a socket with
            // unread data resets the connection.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  4\r\n\r\nab\r\n3\r\ncde\r\n0\r\n\r\n",
            )
            .unwrap();
        });
        let (code, body) = http_get(addr, "/").unwrap();
        server.join().unwrap();
        assert_eq!((code, body.as_str()), (200, "\r\nabcde"));
    }
}
