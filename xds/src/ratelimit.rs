//! Vane's named token buckets as Envoy's local rate limit: the filter the
//! HTTP connection manager carries (disabled on its own) and the per-route
//! configuration that turns it on with the route's bucket.
//!
//! Vane refills a bucket continuously (one token every `1 / rps` seconds);
//! Envoy adds `tokens_per_fill` tokens every `fill_interval`, which it reads
//! in whole milliseconds and wants to be at least 50 ms. [`refill`] picks
//! the pair closest to the rate with the shortest interval.

use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
use envoy_types::pb::envoy::config::route::v3::FilterConfig;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket, fractional_percent};
use envoy_types::pb::google::protobuf::Any;
use vane_model::RateLimit;

use crate::parts::{LOCAL_RATE_LIMIT_FILTER, duration, pack, u32_value};
use crate::types::TranslateError;

/// The stat prefix of the listener-level filter.
const STAT_PREFIX: &str = "vane_rate_limit";
/// Envoy's shortest fill interval, in milliseconds.
const MIN_FILL_MS: u64 = 50;
/// The longest fill interval searched for a rate above one token per
/// second, in milliseconds; slower rates use one token per interval.
const MAX_SEARCH_MS: u64 = 10_000;
/// A relative rate error small enough to stop searching.
const GOOD_ENOUGH: f64 = 1e-4;

/// The listener-level filter: no bucket of its own, so it limits nothing
/// until a route's configuration turns it on. Optional, so a client that
/// does not know the filter (gRPC) ignores it instead of refusing the
/// listener.
pub(crate) fn http_filter() -> HttpFilter {
    let config = LocalRateLimit {
        stat_prefix: STAT_PREFIX.to_owned(),
        ..Default::default()
    };
    HttpFilter {
        name: LOCAL_RATE_LIMIT_FILTER.to_owned(),
        is_optional: true,
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(&config))),
        ..Default::default()
    }
}

/// The value of a route's `typed_per_filter_config` entry for `limit`: the
/// filter enabled and enforced for every request of the route, with the
/// limit's bucket, wrapped as optional so gRPC clients skip it.
pub(crate) fn per_route(limit: &RateLimit, field: &str) -> Result<Any, TranslateError> {
    let (tokens_per_fill, fill_ms) =
        refill(limit.requests_per_second).ok_or_else(|| TranslateError::Unsupported {
            field: format!("{field}.requests_per_second"),
            reason: format!(
                "{} requests per second has no token bucket form",
                limit.requests_per_second
            ),
        })?;
    let max_tokens = u32::try_from(limit.burst)
        .ok()
        .filter(|b| *b > 0)
        .ok_or_else(|| TranslateError::Unsupported {
            field: format!("{field}.burst"),
            reason: format!("{} is out of range (1 to {})", limit.burst, u32::MAX),
        })?;
    let all = || RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: fractional_percent::DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    };
    let config = LocalRateLimit {
        stat_prefix: format!("{STAT_PREFIX}.{}", limit.name),
        token_bucket: Some(TokenBucket {
            max_tokens,
            tokens_per_fill: Some(u32_value(tokens_per_fill)),
            fill_interval: Some(duration(std::time::Duration::from_millis(fill_ms))),
        }),
        filter_enabled: Some(all()),
        filter_enforced: Some(all()),
        // Vane answers a limited request with 429 and `retry-after`.
        enable_retry_after_header: true,
        ..Default::default()
    };
    Ok(pack(&FilterConfig {
        config: Some(pack(&config)),
        is_optional: true,
        disabled: false,
    }))
}

/// Tokens per fill and the fill interval in milliseconds closest to
/// `rps` requests per second (the shortest interval among equals), or
/// `None` for a rate that is not a positive finite number or needs more
/// than `u32::MAX` tokens per fill.
pub(crate) fn refill(rps: f64) -> Option<(u32, u64)> {
    if !rps.is_finite() || rps <= 0.0 {
        return None;
    }
    let per_ms = rps / 1000.0;
    // Slow rates: one token every 1/rps seconds, in whole milliseconds.
    if rps < 1000.0 / MIN_FILL_MS as f64 {
        let slow = ((1000.0 / rps).round() as u64).max(MIN_FILL_MS);
        if rps <= 1.0 {
            return Some((1, slow));
        }
    }
    let mut best: Option<(f64, u32, u64)> = None;
    for ms in MIN_FILL_MS..=MAX_SEARCH_MS {
        let tokens = (per_ms * ms as f64).round();
        if tokens < 1.0 {
            continue;
        }
        if tokens > f64::from(u32::MAX) {
            break;
        }
        let error = ((tokens / ms as f64) - per_ms).abs() / per_ms;
        if best.is_none_or(|(e, _, _)| error < e) {
            best = Some((error, tokens as u32, ms));
        }
        if error <= GOOD_ENOUGH {
            break;
        }
    }
    best.map(|(_, tokens, ms)| (tokens, ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(tokens: u32, ms: u64) -> f64 {
        f64::from(tokens) * 1000.0 / ms as f64
    }

    #[test]
    fn refills_keep_the_rate_with_envoys_shortest_interval() {
        assert_eq!(refill(100.0), Some((5, 50)));
        assert_eq!(refill(20.0), Some((1, 50)));
        assert_eq!(refill(30.0), Some((3, 100)));
        assert_eq!(refill(1.0), Some((1, 1000)));
        assert_eq!(refill(0.5), Some((1, 2000)));
        assert_eq!(refill(0.001), Some((1, 1_000_000)));
        assert_eq!(refill(10_000_000.0), Some((500_000, 50)));
        for rps in [1.5, 7.0, 33.3, 123.456, 999.9, 12_345.0, 3.0e6] {
            let (tokens, ms) = refill(rps).expect("a rate");
            assert!(ms >= MIN_FILL_MS, "{rps}: {ms} ms");
            let err = (rate(tokens, ms) - rps).abs() / rps;
            assert!(err < 1e-3, "{rps}: {tokens} per {ms} ms is off by {err}");
        }
    }

    #[test]
    fn rates_without_a_bucket_are_refused() {
        for rps in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e15] {
            assert_eq!(refill(rps), None, "{rps}");
        }
    }

    #[test]
    fn a_burst_beyond_envoys_range_is_an_error() {
        let limit = RateLimit {
            name: "big".into(),
            requests_per_second: 10.0,
            burst: u64::from(u32::MAX) + 1,
        };
        let err = per_route(&limit, "rate_limits[\"big\"]").expect_err("too big");
        assert_eq!(
            err.to_string(),
            "rate_limits[\"big\"].burst: 4294967296 is out of range (1 to 4294967295)"
        );
        let limit = RateLimit {
            requests_per_second: f64::NAN,
            burst: 1,
            ..limit
        };
        let err = per_route(&limit, "rate_limits[\"big\"]").expect_err("no rate");
        assert!(
            err.to_string()
                .starts_with("rate_limits[\"big\"].requests_per_second: NaN")
        );
    }
}
