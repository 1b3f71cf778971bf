//! flagd's `fractional`: deterministic percentage rollouts.
//!
//! As flagd's providers do it: the bucketing key is the first argument when
//! that is a string, else `$flagd.flagKey` followed by the context's
//! `targetingKey`; its MurmurHash3 (x86, 32-bit, seed 0) `h` picks the point
//! `h * total_weight >> 32` in `[0, total_weight)`, and the first bucket
//! whose cumulative weight passes that point wins. A missing weight is 1, a
//! negative one (computed at run time) counts as 0, a fractional one or a
//! total above `i32::MAX` makes the result `null`, as do a missing or empty
//! targeting key and a malformed bucket.

use crate::murmur::murmur3_32;
use crate::value::Val;

/// The largest total weight flagd accepts.
const MAX_TOTAL: u64 = i32::MAX as u64;

/// Applies `fractional` to its evaluated arguments against `data`.
pub(crate) fn fractional(args: &[Val], data: &Val) -> Val {
    let Val::Obj(context) = data else {
        return Val::Null;
    };
    let Some(Val::Obj(flagd)) = context.get("$flagd") else {
        return Val::Null;
    };
    let (key, buckets) = match args.split_first() {
        None => return Val::Null,
        Some((Val::Str(key), rest)) => (key.clone(), rest),
        Some(_) => {
            // No explicit key: every argument is a bucket (so a key that
            // evaluated to something other than a string, such as the
            // `null` of a missing `var`, is a malformed bucket below).
            let Some(Val::Str(targeting_key)) = context.get("targetingKey") else {
                return Val::Null;
            };
            if targeting_key.is_empty() {
                return Val::Null;
            }
            let flag_key = match flagd.get("flagKey") {
                Some(Val::Str(k)) => k.as_str(),
                _ => "",
            };
            (format!("{flag_key}{targeting_key}"), args)
        }
    };
    let Some(parsed) = parse_buckets(buckets) else {
        return Val::Null;
    };
    let total: u64 = parsed.iter().map(|(_, w)| w).sum();
    if total > MAX_TOTAL || total == 0 {
        return Val::Null;
    }
    pick(murmur3_32(key.as_bytes(), 0), total, &parsed)
}

/// The buckets as (variant, weight); `None` when one is malformed.
fn parse_buckets(buckets: &[Val]) -> Option<Vec<(&Val, u64)>> {
    buckets
        .iter()
        .map(|bucket| {
            let Val::Arr(entry) = bucket else {
                return None;
            };
            let (variant, weight) = match entry.as_slice() {
                [variant] => (variant, 1),
                [variant, Val::Num(w)] if w.fract() == 0.0 => {
                    // Clamped to 0 when negative; anything above the
                    // maximum total fails the total check.
                    (variant, w.clamp(0.0, (MAX_TOTAL + 1) as f64) as u64)
                }
                _ => return None,
            };
            match variant {
                Val::Str(_) | Val::Num(_) | Val::Bool(_) | Val::Null => Some((variant, weight)),
                Val::Arr(_) | Val::Obj(_) => None,
            }
        })
        .collect()
}

/// The variant whose range holds the hash's point in `[0, total)`.
fn pick(hash: u32, total: u64, buckets: &[(&Val, u64)]) -> Val {
    let point = (u64::from(hash) * total) >> 32;
    let mut end = 0;
    for (variant, weight) in buckets {
        end += weight;
        if point < end {
            return (*variant).clone();
        }
    }
    Val::Null
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn s(v: &str) -> Val {
        Val::Str(v.to_owned())
    }

    #[test]
    fn the_point_is_the_hash_scaled_to_the_total_weight() {
        let (a, b, c) = (s("a"), s("b"), s("c"));
        let buckets = [(&a, 1), (&b, 0), (&c, 1)];
        // Point 0: the first bucket; the last point: the last bucket with
        // weight; a zero weight bucket never wins.
        assert_eq!(pick(0, 2, &buckets), a);
        assert_eq!(pick(u32::MAX, 2, &buckets), c);
        assert_eq!(pick(1 << 31, 2, &buckets), c);
        assert_eq!(pick((1 << 31) - 1, 2, &buckets), a);
        assert_eq!(pick(u32::MAX, 0, &[]), Val::Null);
    }

    #[test]
    fn weights_and_variants_as_flagd_reads_them() {
        let entry = |items: Vec<Val>| Val::Arr(items);
        let input = [
            entry(vec![s("a")]),
            entry(vec![s("b"), Val::Num(-3.0)]),
            entry(vec![Val::Bool(true), Val::Num(7.0)]),
        ];
        let parsed = parse_buckets(&input).expect("valid");
        let weights: Vec<u64> = parsed.iter().map(|(_, w)| *w).collect();
        assert_eq!(weights, [1, 0, 7]);
        assert!(parse_buckets(&[entry(vec![s("a"), Val::Num(0.5)])]).is_none());
        assert!(parse_buckets(&[entry(vec![s("a"), s("1")])]).is_none());
        assert!(parse_buckets(&[entry(vec![entry(vec![]), Val::Num(1.0)])]).is_none());
        assert!(parse_buckets(&[entry(vec![])]).is_none());
        assert!(parse_buckets(&[s("a")]).is_none());
    }

    #[test]
    fn the_default_key_is_flag_key_then_targeting_key() {
        let data = |tk: Val| {
            Val::Obj(BTreeMap::from([
                ("targetingKey".to_owned(), tk),
                (
                    "$flagd".to_owned(),
                    Val::Obj(BTreeMap::from([("flagKey".to_owned(), s("flagA"))])),
                ),
            ]))
        };
        let buckets = [
            Val::Arr(vec![s("red"), Val::Num(50.0)]),
            Val::Arr(vec![s("blue"), Val::Num(50.0)]),
        ];
        let implicit = fractional(&buckets, &data(s("bucketKeyB")));
        let mut explicit_args = vec![s("flagAbucketKeyB")];
        explicit_args.extend(buckets.iter().cloned());
        assert_eq!(fractional(&explicit_args, &data(Val::Null)), implicit);
        assert_eq!(implicit, s("red"));
        assert_eq!(fractional(&buckets, &data(Val::Num(5.0))), Val::Null);
        assert_eq!(fractional(&[], &data(s("x"))), Val::Null);
    }
}
