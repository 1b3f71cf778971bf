//! The tunnel an HTTP/1.1 upgrade becomes once the upstream answered
//! `101 Switching Protocols`: the client's connection and the upstream's,
//! joined as raw byte streams both ways until either side closes.
//!
//! A tunnel runs inside its downstream connection's task (the one the
//! listener tracks), after hyper has handed the connection over, so:
//! - a configuration change never touches it: nothing in it reads the
//!   compiled routes, and only a listener's drain signals reach it;
//! - a listener that drains (removed, or the process shutting down) waits
//!   for it like for any connection, and closes it at the hard stop, when
//!   the drain timeout has passed;
//! - the route's idle timeout (`idle_timeout_ms`) applies: a tunnel that
//!   carried no byte in either direction for that long is closed
//!   (`vane_proxy_connections_closed{reason="tunnel_idle"}`); the
//!   listener's `--idle-timeout` is the idle timeout of HTTP connections
//!   between requests, and no longer once a connection is a tunnel;
//! - the route's timeout does not apply (it bounds the wait for the
//!   response head, which the 101 was).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, copy_bidirectional};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::cluster::outlier::InFlight;
use crate::metrics::ListenerStats;

/// Both ends of an accepted upgrade, waiting for hyper to hand over the
/// connections.
#[derive(Debug)]
pub(crate) struct Tunnel {
    /// The client's connection, once the 101 has been written to it.
    pub(crate) downstream: OnUpgrade,
    /// The upstream's connection, after its 101.
    pub(crate) upstream: OnUpgrade,
    /// Counts the tunnel as a request in flight on its endpoint (for
    /// `least_request`) for as long as it is open.
    pub(crate) in_flight: Option<InFlight>,
    /// The route's idle timeout: the tunnel closes after this long without
    /// a byte either way.
    pub(crate) idle: Duration,
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// A side closed (or failed).
    Closed,
    /// Nothing was carried for the idle timeout.
    Idle,
    /// The listener's hard stop.
    Stopped,
    /// One of the connections was never handed over.
    NotUpgraded,
}

/// Carries bytes between both ends of `tunnel` until one closes, it is idle
/// for its route's idle timeout, or `hard` is cancelled.
pub(crate) async fn run(tunnel: Tunnel, hard: &CancellationToken, stats: &ListenerStats) -> Ended {
    let Tunnel {
        downstream,
        upstream,
        in_flight: _in_flight,
        idle,
    } = tunnel;
    let handed = tokio::select! {
        r = async { tokio::try_join!(downstream, upstream) } => r,
        () = hard.cancelled() => return Ended::Stopped,
    };
    let (down, up) = match handed {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade not completed");
            return Ended::NotUpgraded;
        }
    };
    stats.tunnels_active.inc();
    let _open = Open(stats);
    let last = Arc::new(AtomicU64::new(clock::now_millis()));
    let mut down = Touched::new(TokioIo::new(down), last.clone());
    let mut up = Touched::new(TokioIo::new(up), last.clone());
    let ended = tokio::select! {
        r = copy_bidirectional(&mut down, &mut up) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "tunnel ended with an error");
            }
            Ended::Closed
        }
        () = idle_for(&last, idle) => Ended::Idle,
        () = hard.cancelled() => Ended::Stopped,
    };
    if ended == Ended::Idle {
        stats.closed.tunnel_idle.inc();
        tracing::debug!("tunnel idle for the idle timeout; closing");
    }
    ended
}

/// Decrements the open-tunnel gauge however the tunnel ends.
struct Open<'a>(&'a ListenerStats);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.tunnels_active.dec();
    }
}

/// Resolves once `last` (clock milliseconds of the latest byte) is `idle`
/// old. Checked at a quarter of the timeout, so a tunnel closes between
/// `idle` and 1.25 × `idle` after its last byte.
async fn idle_for(last: &AtomicU64, idle: Duration) {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let check = (idle / 4).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + check, check);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let quiet = clock::now_millis().saturating_sub(last.load(Ordering::Relaxed));
        if quiet >= idle_ms {
            return;
        }
    }
}

/// One end of a tunnel, noting when it last delivered bytes. Reads alone
/// are enough: every byte written to one end was read from the other.
struct Touched<S> {
    io: S,
    last: Arc<AtomicU64>,
}

impl<S> Touched<S> {
    fn new(io: S, last: Arc<AtomicU64>) -> Self {
        Self { io, last }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Touched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.last.store(clock::now_millis(), Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Touched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    // Real time: the data plane's clock is `std::time::Instant`.
    #[tokio::test]
    async fn idleness_is_measured_from_the_last_byte() {
        let idle = Duration::from_millis(200);
        let last = Arc::new(AtomicU64::new(clock::now_millis()));
        let started = Instant::now();
        idle_for(&last, idle).await;
        let waited = started.elapsed();
        assert!(waited >= idle, "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");

        // Bytes every 50 ms for 600 ms keep it open that long.
        let now = Arc::new(AtomicU64::new(clock::now_millis()));
        let feeder = now.clone();
        tokio::spawn(async move {
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                feeder.store(clock::now_millis(), Ordering::Relaxed);
            }
        });
        let started = Instant::now();
        idle_for(&now, idle).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(600) + idle, "{waited:?}");
    }
}
