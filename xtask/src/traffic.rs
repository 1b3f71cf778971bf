//! Live traffic for the demos: a tiny HTTP backend, a client that counts
//! answered and failed requests through a proxy, and the snapshot that
//! routes one to the other.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;

use crate::harness::http_get;

/// An HTTP backend answering every request with 200 "ok" (or a body of
/// its own), until dropped.
pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    pub(crate) fn start() -> Result<Self> {
        Self::answering("ok")
    }

    /// A backend whose answer is `word` and a newline.
    pub(crate) fn answering(word: &str) -> Result<Self> {
        let body: Arc<str> = format!("{word}\n").into();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        // Non-blocking accept so the loop sees `stop`.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let body = Arc::clone(&body);
                        std::thread::spawn(move || serve_ok(conn, &body));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers every request of one keep-alive connection with 200 and
/// `body`; ends when the peer closes it or asks to (`Connection: close`).
fn serve_ok(conn: TcpStream, body: &str) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        let mut close = false;
        // The request line and headers, up to the blank line.
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => close |= line.eq_ignore_ascii_case("connection: close\r\n"),
            }
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let answered = writer.write_all(answer.as_bytes()).is_ok();
        if !answered || close {
            return;
        }
    }
}

/// One client sending GETs through the proxy back to back (a new
/// connection each, the harshest case for a data plane), counting answers.
pub(crate) struct Traffic {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    pub(crate) fn start(addr: SocketAddr) -> Self {
        let (ok, failed, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (ok2, failed2, stop2) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let good = http_get(addr, "/").is_ok_and(|body| body == "ok\n");
                if good { &ok2 } else { &failed2 }.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Self {
            ok,
            failed,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The snapshot the demo pushes: one HTTP listener routing to the backend,
/// with `step` as a value so each push is a new version.
pub(crate) fn snapshot(listen: SocketAddr, backend: SocketAddr, step: u32) -> String {
    format!(
        r#"listeners:
  - {{ name: web, address: "{listen}", protocol: http, route_table: main }}
route_tables:
  - name: main
    routes:
      - {{ match: {{ path_prefix: / }}, cluster: app }}
clusters:
  - {{ name: app, endpoints: [ {{ address: "{backend}" }} ] }}
values:
  demo.step: {step}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_snapshot_names_its_addresses() {
        let text = snapshot(
            SocketAddr::from(([127, 0, 0, 1], 20001)),
            SocketAddr::from(([127, 0, 0, 1], 20002)),
            3,
        );
        assert!(text.contains("address: \"127.0.0.1:20001\""));
        assert!(text.contains("demo.step: 3"));
    }

    #[test]
    fn traffic_through_nothing_but_the_backend_is_answered() {
        let backend = Backend::start().unwrap();
        let traffic = Traffic::start(backend.addr);
        let start = std::time::Instant::now();
        while traffic.counts().0 < 3 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{:?}",
                traffic.counts()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(traffic.counts().1, 0);
    }
}
