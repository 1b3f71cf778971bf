//! The data plane's threads: one single-threaded Tokio runtime per worker,
//! thread per core as nginx runs worker processes. Every listener accepts
//! on every worker (the same socket, shared), and a connection, its
//! requests and the upstream connections they use all live on the worker
//! that accepted it: no task hops between threads on the request path, so
//! no cross-thread wake-ups (futex calls and context switches were the
//! largest cost of a work-stealing runtime in profiles).
//!
//! The control side (agent, admin, and the agent's apply path, which
//! compiles and switches the configuration on a blocking thread) runs on
//! the embedder's runtime; workers only read what it publishes (the
//! compiled ArcSwap).

use std::sync::Mutex;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The worker threads.
pub(crate) struct Workers {
    handles: Vec<Handle>,
    stop: CancellationToken,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Workers {
    /// Starts `n` workers (at least one).
    pub(crate) fn start(n: usize) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        let mut threads = Vec::new();
        for i in 0..n.max(1) {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("vane-worker-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.spawn(crate::upstream::sweeper(stop.clone()));
                    rt.block_on(stop.cancelled());
                    // Whatever still runs (connections past the drain
                    // timeout) is dropped.
                    rt.shutdown_timeout(Duration::from_secs(1));
                })?;
            let handle = rx
                .recv()
                .map_err(|_| std::io::Error::other("a worker thread died while starting"))??;
            handles.push(handle);
            threads.push(thread);
        }
        Ok(Self {
            handles,
            stop,
            threads: Mutex::new(threads),
        })
    }

    /// One runtime handle per worker.
    pub(crate) fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// How many workers run.
    pub(crate) fn len(&self) -> usize {
        self.handles.len()
    }

    /// Stops every worker runtime and waits (bounded) for the threads.
    pub(crate) async fn stop(&self) {
        self.stop.cancel();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        if tokio::time::timeout(Duration::from_secs(5), joined)
            .await
            .is_err()
        {
            tracing::warn!("worker threads did not stop within 5s");
        }
    }
}
