//! Which failed attempts of an HTTP request are tried again.
//!
//! Two kinds of retry, counted apart:
//! - **unsent**: the attempt reached no upstream — the connect was refused,
//!   unreachable or timed out, or the new connection failed before a byte of
//!   the request was written ([`Failure::NotSent`]). The request comes back
//!   whole, body included, so it is sent to another endpoint for *every*
//!   method, whatever the route's `retries` (nginx's `proxy_next_upstream
//!   error timeout` does the same by default). At most
//!   [`MAX_UNSENT_RETRIES`], and never more than the cluster has other
//!   endpoints: each try is a connect that may wait out the connect timeout,
//!   and three endpoints in a row that cannot be reached mean most of the
//!   cluster is down, which more tries would only make slower to report
//!   (the TCP proxy tries as many endpoints per connection).
//! - **sent**: the upstream answered 502, 503 or 504 to an idempotent
//!   request without a body; at most the route's `retries`. A connection
//!   that fails after the request was written is not retried: the upstream
//!   may have acted on it. When the unsent allowance is spent (a cluster of
//!   one endpoint), a refused connect may still use the route's `retries`.
//!
//! Either kind also takes one retry from the cluster's retry budget (see
//! [`crate::cluster::budget`]), so a cluster whose endpoints all refuse
//! connections does not see a connect storm, and none is made past the
//! route's deadline.
//!
//! [`Failure::NotSent`]: crate::upstream::Failure::NotSent

use http::{Method, StatusCode};

/// Most retries of one request that reached no upstream.
pub(crate) const MAX_UNSENT_RETRIES: u32 = 2;

/// How an attempt ended, as the retry decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Nothing reached the upstream; the request came back.
    NotSent,
    /// The connection failed after the request was (possibly) written.
    FailedAfterSend,
    /// The upstream answered with this status.
    Answered(StatusCode),
}

/// The retries one request has left.
#[derive(Debug)]
pub(crate) struct RetryPlan {
    /// Retries of attempts that reached no upstream.
    unsent_left: u32,
    /// Retries after an answer (the route's `retries`; 0 for a request with
    /// a body, which is streamed and cannot be sent twice).
    sent_left: u32,
    idempotent: bool,
}

impl RetryPlan {
    /// The plan of a request to a cluster of `endpoints` endpoints on a route
    /// with `route_retries`. `replayable`: the request has no body.
    pub(crate) fn new(
        route_retries: u32,
        replayable: bool,
        idempotent: bool,
        endpoints: usize,
    ) -> Self {
        let others = u32::try_from(endpoints.saturating_sub(1)).unwrap_or(u32::MAX);
        Self {
            unsent_left: others.min(MAX_UNSENT_RETRIES),
            sent_left: if replayable { route_retries } else { 0 },
            idempotent,
        }
    }

    /// Whether a later attempt may send the request again after this one
    /// sent it (so its head must be kept).
    pub(crate) fn may_resend(&self) -> bool {
        self.sent_left > 0
    }

    /// Whether to try again after `outcome`, taking the retry from the plan
    /// when so. The caller then asks the cluster's retry budget.
    pub(crate) fn retry(&mut self, outcome: Outcome) -> bool {
        let take = |left: &mut u32| {
            let ok = *left > 0;
            *left = left.saturating_sub(1);
            ok
        };
        match outcome {
            Outcome::NotSent => take(&mut self.unsent_left) || take(&mut self.sent_left),
            Outcome::FailedAfterSend => false,
            Outcome::Answered(s) => {
                retryable_status(s) && self.idempotent && take(&mut self.sent_left)
            }
        }
    }
}

/// Methods the proxy may send twice after an upstream answered.
pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Answers that may be retried (and that the proxy's health counts as
/// errors): 502, 503 and 504.
pub(crate) fn retryable_status(s: StatusCode) -> bool {
    matches!(s.as_u16(), 502..=504)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(plan: &mut RetryPlan, outcome: Outcome) -> u32 {
        let mut n = 0;
        while plan.retry(outcome) {
            n += 1;
            assert!(n < 100, "retries never ran out");
        }
        n
    }

    #[test]
    fn unsent_attempts_are_retried_without_route_retries_for_any_method() {
        // POST with a body, route without retries, three endpoints: two
        // other endpoints may take it.
        let mut p = RetryPlan::new(0, false, false, 3);
        assert_eq!(count(&mut p, Outcome::NotSent), 2);
        // Never more than the cap, whatever the cluster's size.
        let mut p = RetryPlan::new(0, false, false, 50);
        assert_eq!(count(&mut p, Outcome::NotSent), MAX_UNSENT_RETRIES);
        // One endpoint: no other to try.
        let mut p = RetryPlan::new(0, true, true, 1);
        assert_eq!(count(&mut p, Outcome::NotSent), 0);
    }

    #[test]
    fn a_failure_after_sending_is_never_retried() {
        for (retries, replayable, idempotent) in [(0, false, false), (3, true, true)] {
            let mut p = RetryPlan::new(retries, replayable, idempotent, 5);
            assert!(!p.retry(Outcome::FailedAfterSend));
            // It spent nothing: an unsent failure afterwards is retried.
            assert!(p.retry(Outcome::NotSent));
        }
    }

    #[test]
    fn answers_follow_the_route_retries_for_idempotent_bodiless_requests() {
        let bad = Outcome::Answered(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(count(&mut RetryPlan::new(2, true, true, 2), bad), 2);
        // Not idempotent, or a body: not retried.
        assert_eq!(count(&mut RetryPlan::new(2, true, false, 2), bad), 0);
        assert_eq!(count(&mut RetryPlan::new(2, false, true, 2), bad), 0);
        // Only 502, 503, 504.
        for s in [500, 501, 505, 429, 200] {
            let s = StatusCode::from_u16(s).unwrap();
            assert!(!RetryPlan::new(2, true, true, 2).retry(Outcome::Answered(s)));
        }
        // Unsent retries do not spend the route's retries.
        let mut p = RetryPlan::new(1, true, true, 3);
        assert_eq!(
            count(&mut p, Outcome::NotSent),
            3,
            "2 unsent, then 1 of the route's"
        );
        let mut p = RetryPlan::new(1, true, true, 3);
        assert!(p.retry(Outcome::NotSent));
        assert!(p.may_resend());
        assert!(p.retry(bad));
        assert!(!p.may_resend());
        assert!(!p.retry(bad));
    }

    #[test]
    fn a_single_endpoint_cluster_retries_a_refused_connect_within_route_retries() {
        let mut p = RetryPlan::new(2, true, true, 1);
        assert_eq!(count(&mut p, Outcome::NotSent), 2);
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
        }
    }
}
