//! What went wrong with a call to etcd, and whether retrying can help:
//! the error classes the store's retries and health are built on.

use std::fmt::Write as _;
use std::time::Duration;

use vane_backoff::{ExponentialBackoff, Jitter};

/// Why a call to etcd failed.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// No answer within the deadline (the last error seen, if any).
    TimedOut(Option<String>),
    /// etcd answered with a refusal that retrying does not change.
    Refused(String),
    /// etcd (or the TLS handshake) turned this replica away: its TLS
    /// settings or its etcd user do not fit etcd's. Not retried; the
    /// replica is degraded until the configuration changes.
    Rejected(String),
}

/// Whether an etcd error is worth retrying: the member is down, has no
/// leader, is electing one, or the connection broke.
pub(crate) fn transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        // Out of space (the NOSPACE alarm): refused until an operator acts.
        E::GRpcStatus(status) if status.message().contains("database space exceeded") => false,
        E::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Aborted
                | tonic::Code::Internal
                | tonic::Code::ResourceExhausted
                | tonic::Code::Cancelled
        ),
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => true,
        _ => false,
    }
}

/// A one-line description of an etcd error.
pub(crate) fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            if message.is_empty() {
                format!("{:?}", status.code())
            } else {
                message.to_owned()
            }
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                let _ = write!(text, ": {cause}");
                source = cause.source();
            }
            text
        }
    }
}

/// First pause between two attempts at etcd; it doubles per attempt.
const RETRY_MIN: Duration = Duration::from_millis(50);

/// [`RETRY_MIN`], doubling per attempt, at most `cap`. No jitter: these are
/// one replica's retries within one call's deadline.
pub(crate) fn backoff(attempt: u32, cap: Duration) -> Duration {
    ExponentialBackoff::new(RETRY_MIN, cap.max(RETRY_MIN), Jitter::None)
        .map_or(cap, |b| b.delay(attempt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_50_ms_up_to_their_cap() {
        let cap = Duration::from_millis(500);
        let ms: Vec<u128> = (0..6).map(|a| backoff(a, cap).as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 400, 500, 500]);
        assert_eq!(backoff(40, Duration::from_secs(2)), Duration::from_secs(2));
    }
}
