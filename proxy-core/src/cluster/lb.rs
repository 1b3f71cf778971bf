//! Load-balancing policies over a cluster's endpoints, decided at compile
//! time into immutable tables so a pick is a few atomic reads:
//!
//! - `round_robin`: smooth weighted round robin (nginx's algorithm) unrolled
//!   into a schedule, e.g. weights 5,1,1 give `a a b a c a a`, interleaved
//!   rather than bunched; the only shared state is one atomic cursor.
//! - `random`: weighted random over cumulative weights.
//! - `least_request`: power of two choices: two weighted-random candidates,
//!   the one with fewer requests in flight per unit of weight wins.
//!
//! Every policy skips ejected endpoints and, on a retry, the endpoint that
//! just failed, when another is available.

use std::cell::Cell;

/// Longest round-robin schedule; weights are scaled down to fit (keeping each
/// endpoint at least once), which bounds compile time and memory.
const MAX_SCHEDULE: u64 = 8192;

thread_local! {
    // xorshift64*: the data plane needs fast, uniform picks, not secrecy.
    static RNG: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
}

/// A uniform random number in `0..n` (`n > 0`).
#[inline]
pub(crate) fn below(n: u64) -> u64 {
    let x = RNG.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    });
    ((u128::from(x) * u128::from(n)) >> 64) as u64
}

/// The smooth weighted round-robin schedule of `weights`.
pub(crate) fn schedule(weights: &[u32]) -> Box<[u32]> {
    let weights = scaled(weights);
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += i64::from(*w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(u32::try_from(best).unwrap_or(0));
    }
    out.into_boxed_slice()
}

/// Weights divided by their gcd and, if their sum is still above
/// [`MAX_SCHEDULE`], scaled down proportionally (each at least 1).
fn scaled(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().fold(0u32, |g, w| gcd(g, *w)).max(1);
    let mut out: Vec<u32> = weights.iter().map(|w| (w / g).max(1)).collect();
    let total: u64 = out.iter().map(|w| u64::from(*w)).sum();
    let cap = MAX_SCHEDULE.max(out.len() as u64);
    if total > cap {
        for w in &mut out {
            *w = u32::try_from((u64::from(*w) * cap / total).max(1)).unwrap_or(1);
        }
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Cumulative weights, for weighted random draws.
pub(crate) fn cumulative(weights: &[u32]) -> Box<[u64]> {
    let mut sum = 0u64;
    weights
        .iter()
        .map(|w| {
            sum += u64::from(*w);
            sum
        })
        .collect()
}

/// A weighted random index.
#[inline]
pub(crate) fn weighted(cumulative: &[u64]) -> usize {
    let total = cumulative.last().copied().unwrap_or(0);
    if total == 0 {
        return 0;
    }
    let r = below(total);
    cumulative.partition_point(|c| *c <= r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(s: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for i in s {
            c[*i as usize] += 1;
        }
        c
    }

    #[test]
    fn schedules_are_smooth_and_weighted() {
        let s = schedule(&[5, 1, 1]);
        assert_eq!(&*s, &[0, 0, 1, 0, 2, 0, 0]);
        let s = schedule(&[1, 3]);
        assert_eq!(counts(&s, 2), vec![1, 3]);
        // Common factors do not lengthen the schedule.
        assert_eq!(schedule(&[100, 300]).len(), 4);
        // No endpoint runs twice in a row when weights are equal.
        let s = schedule(&[1, 1, 1]);
        assert_eq!(&*s, &[0, 1, 2]);
    }

    #[test]
    fn huge_weights_are_scaled_but_never_dropped() {
        let mut w = vec![10_000u32; 3];
        w.push(1);
        w[0] = 9_999;
        let s = schedule(&w);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 4);
        let c = counts(&s, 4);
        assert!(c.iter().all(|n| *n >= 1), "{c:?}");
    }

    #[test]
    fn weighted_draws_follow_the_weights() {
        let cum = cumulative(&[1, 3]);
        let mut c = [0usize; 2];
        for _ in 0..40_000 {
            c[weighted(&cum)] += 1;
        }
        let share = c[1] as f64 / 40_000.0;
        assert!((0.72..0.78).contains(&share), "{c:?}");
    }

    #[test]
    fn below_is_in_range() {
        for n in [1u64, 2, 3, 7, 1000] {
            for _ in 0..1000 {
                assert!(below(n) < n);
            }
        }
    }
}
