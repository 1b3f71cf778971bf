//! A child process whose stdout is collected line by line (the real
//! clients the tests drive: gRPC xDS clients, OpenFeature SDKs), its stderr
//! kept in a file for failure messages, killed when dropped.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::process::read_lossy;

/// A running child and the lines it printed so far.
pub struct LineProcess {
    child: Option<Child>,
    /// Held open: some clients exit when their stdin closes.
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    /// Holds its stderr (`stderr.log`).
    dir: TempDir,
    name: String,
}

impl LineProcess {
    /// Starts `cmd` (called `name` in messages) with stdout collected.
    pub fn start(mut cmd: Command, name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vane-client-")
            .tempdir()
            .expect("create a temporary directory");
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("create a file");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        Self {
            child: Some(child),
            stdin,
            lines,
            dir,
            name: name.to_owned(),
        }
    }

    /// Every line printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last lines and the end of stderr, for failure messages.
    pub fn describe(&self) -> String {
        let lines = self.lines();
        format!(
            "{}: last lines: {:?}\nstderr (end):\n{}",
            self.name,
            &lines[lines.len().saturating_sub(8)..],
            tail(&read_lossy(&self.dir.path().join("stderr.log")), 30)
        )
    }
}

impl Drop for LineProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("--- {} ---\n{}", self.name, self.describe());
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, and returns that;
/// panics after `within` with `what` and the last thing `describe` says.
#[track_caller]
pub fn wait_for<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("waited {within:?} for {what}; last seen: {}", describe());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
