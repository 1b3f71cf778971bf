//! The accept loops: one per worker per listener, each on its own socket of
//! the listener's `SO_REUSEPORT` group. A loop applies the connection cap
//! (refusing over it), then hands the connection to the HTTP or TCP
//! serving code on the worker that accepted it, after a TLS handshake on
//! `https` and `tls` listeners.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vane_model::Protocol;

use crate::conn::{ConnSignals, ListenerRt};

/// Shortest interval between two "at --max-connections" warnings.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The accept loops of one listener: when the last one has stopped (and
/// dropped its socket), `on_last` runs, so the manager can release its own
/// copy of the sockets. A callback rather than a reference to the manager,
/// so this file needs nothing from the one that starts it.
pub(crate) struct AcceptGroup {
    remaining: AtomicUsize,
    on_last: Box<dyn Fn() + Send + Sync>,
}

impl AcceptGroup {
    /// A group of `loops` accept loops.
    pub(crate) fn new(loops: usize, on_last: impl Fn() + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(loops),
            on_last: Box::new(on_last),
        })
    }

    fn loop_ended(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            (self.on_last)();
        }
    }
}

/// What one accept loop needs besides its socket.
pub(crate) struct AcceptLoop {
    /// The listener, as its connections see it.
    pub(crate) rt: Arc<ListenerRt>,
    /// Cancelled when the listener stops accepting.
    pub(crate) stop: CancellationToken,
    /// Handed to every connection.
    pub(crate) signals: ConnSignals,
    /// The listener's connections, so it can wait for them to drain.
    pub(crate) connections: TaskTracker,
    /// The loops of the same listener.
    pub(crate) group: Arc<AcceptGroup>,
}

impl AcceptLoop {
    /// Accepts on `socket` until stopped. Runs on a worker's runtime: the
    /// socket is registered with that worker, and so is every connection.
    pub(crate) async fn run(self, socket: std::net::TcpListener) {
        let Self {
            rt,
            stop,
            signals,
            connections,
            group,
        } = self;
        let listener = match TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listener = %rt.name, error = %e, "cannot register a listener with a worker");
                group.loop_ended();
                return;
            }
        };
        loop {
            let accepted = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                r = listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Per-connection errors (the peer reset before we
                    // accepted) are nobody's problem; running out of file
                    // descriptors is: say so and back off instead of
                    // spinning.
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) {
                        tracing::warn!(listener = %rt.name, error = %e, "accept failed; pausing");
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_millis(50)) => {}
                        }
                    }
                    continue;
                }
            };
            let Ok(permit) = rt.shared.connection_limit.clone().try_acquire_owned() else {
                // Over the cap: accept and close at once (see `refuse`).
                refuse(&rt, stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            rt.stats.connections_total.inc();
            rt.stats.connections_active.inc();
            let rt = rt.clone();
            let signals = signals.clone();
            connections.spawn(async move {
                let stats = rt.stats.connections_active.clone();
                serve(stream, peer, rt, signals).await;
                stats.dec();
                drop(permit);
            });
        }
        drop(listener);
        // The last loop to stop releases the manager's copy of the socket.
        group.loop_ended();
    }
}

/// Serves one accepted connection as its listener's protocol says.
async fn serve(stream: TcpStream, peer: SocketAddr, rt: Arc<ListenerRt>, signals: ConnSignals) {
    let protocol = rt.protocol;
    if !protocol.is_tls() {
        match protocol {
            Protocol::Tcp => crate::tcp::serve(stream, peer, rt, signals).await,
            _ => crate::http::server::serve(stream, peer, rt, signals).await,
        }
        return;
    }
    // The TLS of the running build, loaded per connection: a rotated
    // certificate reaches the next handshake, open connections keep theirs.
    let tls = rt.server_tls(&rt.shared.compiled.load());
    let Some(stream) = crate::tls::handshake(
        stream,
        peer,
        tls.map(|t| t.config.clone()),
        rt.shared.config.header_read_timeout,
        &rt.stats.tls,
        &signals.hard,
    )
    .await
    else {
        return;
    };
    match protocol {
        Protocol::Tls => crate::tcp::serve(stream, peer, rt, signals).await,
        _ => crate::http::server::serve(stream, peer, rt, signals).await,
    }
}

/// Closes a connection accepted over `--max-connections`.
///
/// Accepting and closing, rather than leaving connections in the kernel's
/// backlog: the client learns at once that this instance is full and can
/// retry another one, instead of waiting on a connection nobody serves
/// (and, once the backlog is full, on SYN retransmissions seconds apart);
/// the refusal is counted and logged; and the backlog never fills with
/// connections whose clients gave up long before they would be served.
fn refuse(rt: &ListenerRt, stream: tokio::net::TcpStream) {
    rt.stats.connections_refused.inc();
    drop(stream);
    // Logged at most once per REFUSAL_LOG_EVERY: a flood must not become a
    // log flood.
    let now = crate::clock::now_millis().max(1);
    let last = &rt.shared.refusal_logged_ms;
    let prev = last.load(Ordering::Relaxed);
    if (prev == 0 || now.saturating_sub(prev) >= REFUSAL_LOG_EVERY.as_millis() as u64)
        && last
            .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(listener = %rt.name, max_connections = rt.shared.config.max_connections,
            refused = rt.stats.connections_refused.get(),
            "at --max-connections: closing new connections at once");
    }
}
