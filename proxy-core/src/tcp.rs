//! Serving one downstream TCP connection: pick an endpoint of the listener's
//! cluster (same load balancing and outlier detection as HTTP), connect
//! within the cluster's connect timeout, trying other endpoints when a
//! connect fails, then copy bytes both ways until either side closes. A
//! draining listener lets its connections run until the drain timeout.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};
use tokio::net::TcpStream;

use crate::clock;
use crate::cluster::UpstreamErrorKind;
use crate::cluster::outlier::InFlight;
use crate::conn::{ConnSignals, ListenerRt};

/// Most endpoints tried for one connection.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// Proxies `inbound` (a TCP connection, or the plaintext side of a
/// terminated TLS one) to an endpoint of the listener's cluster.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut inbound: S,
    peer: SocketAddr,
    listener: Arc<ListenerRt>,
    signals: ConnSignals,
) {
    let cluster = {
        let compiled = listener.shared.compiled.load();
        match listener.tcp_cluster(&compiled) {
            Some(c) => c.clone(),
            None => return,
        }
    };
    // Endpoints this connection already tried.
    let mut tried = Vec::new();
    for _ in 0..cluster.endpoints.len().min(MAX_CONNECT_ATTEMPTS) {
        let now_ms = clock::now_millis();
        let Some(i) = cluster.pick(now_ms, &tried) else {
            tracing::debug!(%peer, cluster = %cluster.name, "no healthy endpoint; closing");
            listener.shared.health.record(true, clock::now_millis());
            return;
        };
        let endpoint = &cluster.endpoints[i];
        let connect = tokio::time::timeout(
            cluster.connect_timeout,
            TcpStream::connect(endpoint.address),
        );
        let mut outbound = tokio::select! {
            r = connect => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, endpoint = %endpoint.address, error = %e, "upstream connect failed");
                    cluster.record(i, false, clock::now_millis());
                    cluster.upstream_error(UpstreamErrorKind::Connect).inc();
                    tried.push(i);
                    continue;
                }
                Err(_) => {
                    tracing::debug!(%peer, endpoint = %endpoint.address, "upstream connect timed out");
                    cluster.record(i, false, clock::now_millis());
                    cluster.upstream_error(UpstreamErrorKind::Connect).inc();
                    tried.push(i);
                    continue;
                }
            },
            () = signals.hard.cancelled() => return,
        };
        cluster.record(i, true, clock::now_millis());
        listener.shared.health.record(false, clock::now_millis());
        let _ = outbound.set_nodelay(true);
        let _in_flight = cluster
            .tracks_in_flight()
            .then(|| InFlight::new(&endpoint.state));
        tokio::select! {
            r = copy_bidirectional(&mut inbound, &mut outbound) => {
                if let Err(e) = r {
                    tracing::debug!(%peer, endpoint = %endpoint.address, error = %e, "tcp proxying ended with an error");
                }
            }
            () = signals.hard.cancelled() => {}
        }
        return;
    }
    // Every endpoint tried failed to connect.
    listener.shared.health.record(true, clock::now_millis());
}
