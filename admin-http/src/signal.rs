//! How the three servers (`vane-control`, the `vane-agent` sidecar,
//! `vane-proxy`) learn they must stop: SIGTERM or SIGINT, with the handlers
//! installed before the server announces its address, so that a signal
//! arriving right after that line means "drain", not the default "die".

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGTERM and SIGINT handlers, installed.
#[derive(Debug)]
pub struct Termination {
    term: Signal,
    int: Signal,
}

impl Termination {
    /// Installs the handlers (from here on, these signals no longer kill
    /// the process). Call it before announcing the address.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for SIGTERM or SIGINT; returns its name and logs it.
    pub async fn received(mut self) -> &'static str {
        let name = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "signal received");
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_after_install_is_received_not_fatal() {
        let termination = Termination::install().expect("install the handlers");
        let pid = std::process::id();
        // Raise SIGINT to ourselves: with the handler installed it must
        // arrive here rather than end the test process.
        let status = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let name = tokio::time::timeout(std::time::Duration::from_secs(10), termination.received())
            .await
            .expect("the signal arrives");
        assert_eq!(name, "SIGINT");
    }
}
