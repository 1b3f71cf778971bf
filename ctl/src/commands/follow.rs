//! What the following commands (`rollout status -w`, `push --wait`) share:
//! each call bounded on its own, the poll interval, and riding out a control
//! server that is briefly away (a restart mid-rollout) without giving up.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{CliError, Failure};

/// How often a follower asks the server again.
pub(crate) const POLL: Duration = Duration::from_millis(500);

/// How long a follower keeps asking a server that does not answer before it
/// gives up (exit 3): long enough for a control server to restart.
pub(crate) const UNREACHABLE_GRACE: Duration = Duration::from_secs(30);

/// One call, given up after `timeout` (as an unreachable server).
pub(crate) async fn bounded<T>(
    timeout: Duration,
    url: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CliError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(CliError::from_status(&status, url)),
        Err(_) => Err(CliError::unreachable(format!(
            "no answer from the control server at {url} within {} (see --timeout)",
            humantime::format_duration(timeout)
        ))),
    }
}

/// Consecutive failures to reach the server while following.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    since: Option<Instant>,
    said: bool,
}

impl Outage {
    /// The server answered: an outage is over.
    pub(crate) fn answered(&mut self) {
        self.since = None;
        self.said = false;
    }

    /// A call failed at `now`: `Ok` to try again (the server is unreachable,
    /// and not for longer than [`UNREACHABLE_GRACE`]), else the error to end with.
    /// The first failure of an outage is said once on stderr.
    pub(crate) fn failed(&mut self, error: CliError, now: Instant) -> Result<(), CliError> {
        if error.kind != Failure::Unreachable {
            return Err(error);
        }
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) >= UNREACHABLE_GRACE {
            return Err(error);
        }
        if !self.said {
            self.said = true;
            eprintln!(
                "vanectl: {error}; asking again for up to {}",
                humantime::format_duration(UNREACHABLE_GRACE)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_ridden_out_for_a_while_refusals_never() {
        let t0 = Instant::now();
        let mut outage = Outage::default();
        let refused = CliError::refused("group \"edge\" has no rollout");
        assert_eq!(outage.failed(refused.clone(), t0), Err(refused));
        let away = CliError::unreachable("cannot reach the control server");
        assert_eq!(outage.failed(away.clone(), t0), Ok(()));
        assert_eq!(
            outage.failed(away.clone(), t0 + Duration::from_secs(29)),
            Ok(())
        );
        assert_eq!(
            outage.failed(away.clone(), t0 + UNREACHABLE_GRACE),
            Err(away.clone())
        );
        // An answer in between starts the count again.
        outage.answered();
        let t1 = t0 + Duration::from_secs(40);
        assert_eq!(outage.failed(away.clone(), t1), Ok(()));
        assert_eq!(outage.failed(away, t1 + Duration::from_secs(29)), Ok(()));
    }
}
