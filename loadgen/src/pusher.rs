//! The fan-out scenarios' writer on a thread and runtime of its own: the
//! push (or put) call is timed where it is made, so ten thousand simulated
//! agents busy on the main runtime cannot delay the moment the writer reads
//! its answer, and the call's time is the server's.
//!
//! One request at a time goes through a channel of one; the thread ends
//! when the [`Pusher`] is dropped (its sender closes).

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use tokio::sync::{mpsc, oneshot};

/// One write, as the writer's runtime runs it: what it returns is sent
/// back with the call's start and duration.
pub type Job<C, T> =
    Box<dyn FnOnce(&mut C) -> Pin<Box<dyn Future<Output = Result<T>> + '_>> + Send>;

/// What a timed call gives back.
#[derive(Debug)]
pub struct Timed<T> {
    /// What the call returned.
    pub value: T,
    /// When the call started.
    pub started: Instant,
    /// How long it took, measured on the writer's own thread.
    pub took: Duration,
}

type Request<C, T> = (Job<C, T>, oneshot::Sender<Result<Timed<T>>>);

/// A client `C` living on its own thread and current-thread runtime.
#[derive(Debug)]
pub struct Pusher<C, T> {
    requests: Option<mpsc::Sender<Request<C, T>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<C: 'static, T: Send + 'static> Pusher<C, T> {
    /// Starts the thread and builds the client there with `connect`.
    pub async fn start<F, Fut>(connect: F) -> Result<Self>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<C>>,
    {
        let (requests, mut inbox) = mpsc::channel::<Request<C, T>>(1);
        let (ready_tx, ready) = oneshot::channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name("vane-loadgen-pusher".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("pusher runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut client = match connect().await {
                        Ok(client) => {
                            let _ = ready_tx.send(Ok(()));
                            client
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    // Ends when the `Pusher` is dropped.
                    while let Some((job, answer)) = inbox.recv().await {
                        let started = Instant::now();
                        let result = job(&mut client).await;
                        let took = started.elapsed();
                        let _ = answer.send(result.map(|value| Timed {
                            value,
                            started,
                            took,
                        }));
                    }
                });
            })
            .context("cannot start the pusher thread")?;
        ready
            .await
            .map_err(|_| anyhow!("the pusher thread ended before connecting"))??;
        Ok(Self {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Runs `job` on the writer's thread; returns what it returned, timed.
    pub async fn call(&self, job: Job<C, T>) -> Result<Timed<T>> {
        let (answer, answered) = oneshot::channel();
        self.requests
            .as_ref()
            .context("the pusher is stopped")?
            .send((job, answer))
            .await
            .map_err(|_| anyhow!("the pusher thread ended"))?;
        answered
            .await
            .map_err(|_| anyhow!("the pusher thread ended mid-call"))?
    }
}

impl<C, T> Drop for Pusher<C, T> {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop; its last call (if
        // any) is already answered, so the join is short.
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn calls_run_on_the_pushers_thread_and_are_timed() {
        let pusher: Pusher<u32, (u32, String)> = Pusher::start(|| async { Ok(7) }).await.unwrap();
        let timed = pusher
            .call(Box::new(|client| {
                Box::pin(async move {
                    *client += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok((*client, std::thread::current().name().unwrap().to_owned()))
                })
            }))
            .await
            .unwrap();
        assert_eq!(timed.value, (8, "vane-loadgen-pusher".to_owned()));
        assert!(timed.took >= Duration::from_millis(5));
        let failed = pusher
            .call(Box::new(|_| Box::pin(async { Err(anyhow!("refused")) })))
            .await;
        assert_eq!(failed.unwrap_err().to_string(), "refused");
        drop(pusher);
    }
}
