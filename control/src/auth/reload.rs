//! Reloads the policy and token files when they change on disk: polled
//! once a second (mtime, size, inode), parsed aside, swapped in whole. A
//! file that no longer parses is logged and the previous version stays in
//! force, so a typo cannot open the server or lock everyone out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

/// Largest policy or token file read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// How often the files are checked.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// Reads and parses `path` (bounded in size). Errors start with the path.
pub fn load<T>(path: &Path, parse: fn(&str) -> Result<T, String>) -> Result<T, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{}: {} bytes, over the limit of {MAX_FILE_BYTES}",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// What a change of the file led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The new contents are in force.
    Applied,
    /// The new contents were refused (unreadable, too large or not
    /// parsing); the previous ones stay in force.
    Refused,
}

/// Watches `path` until `stop`, swapping a newly parsed value into
/// `target` whenever the file changes, then calling `on_change` with
/// [`Reload::Applied`]; a change that does not parse leaves `target` alone
/// and calls `on_change` with [`Reload::Refused`]. `what` names the file in
/// logs.
pub async fn watch<T: Send + Sync + 'static>(
    what: &'static str,
    path: PathBuf,
    parse: fn(&str) -> Result<T, String>,
    target: Arc<ArcSwap<T>>,
    on_change: impl Fn(Reload) + Send + 'static,
    stop: CancellationToken,
) {
    let mut last = stamp(&path);
    let mut ticks = tokio::time::interval(POLL_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || load(&path, parse)).await
        };
        match read {
            Ok(Ok(value)) => {
                target.store(Arc::new(value));
                tracing::info!(file = %path.display(), "{what} reloaded");
                on_change(Reload::Applied);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "{what} not reloaded; the previous one stays in force");
                on_change(Reload::Refused);
            }
            Err(e) => {
                tracing::error!(error = %e, "{what} reload task failed");
                on_change(Reload::Refused);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use super::*;
    use crate::auth::{Action, Policy};

    /// Waits (up to 10 s; the file is polled every second) until the
    /// watcher has reported `n` outcomes.
    async fn outcomes(seen: &Mutex<Vec<Reload>>, n: usize) -> Vec<Reload> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = seen.lock().unwrap().clone();
            if now.len() >= n {
                return now;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the watcher reported only {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn reloads_on_change_and_keeps_the_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(
            &path,
            "bindings: [{identity: a, role: admin, groups: ['*']}]",
        )
        .unwrap();
        let target = Arc::new(ArcSwap::from_pointee(load(&path, Policy::parse).unwrap()));
        let stop = CancellationToken::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(watch(
            "policy",
            path.clone(),
            Policy::parse,
            Arc::clone(&target),
            {
                let seen = Arc::clone(&seen);
                move |outcome| seen.lock().unwrap().push(outcome)
            },
            stop.clone(),
        ));
        // The watcher takes its first look at once; a change must come after.
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(
            &path,
            "bindings: [{identity: b, role: admin, groups: ['*']}]",
        )
        .unwrap();
        assert_eq!(outcomes(&seen, 1).await, [Reload::Applied]);
        assert!(target.load().allows("b", Action::Write, "g"));

        // A broken file, once the watcher has read it, leaves the last good
        // policy in force.
        std::fs::write(&path, "bindings: [{identity: c, role: god}]").unwrap();
        assert_eq!(outcomes(&seen, 2).await, [Reload::Applied, Reload::Refused]);
        assert!(target.load().allows("b", Action::Write, "g"));
        assert!(!target.load().allows("c", Action::Write, "g"));
        assert!(
            load(&path, Policy::parse)
                .unwrap_err()
                .contains("policy.yaml: bindings[0]")
        );
        stop.cancel();
        task.await.unwrap();
    }
}
