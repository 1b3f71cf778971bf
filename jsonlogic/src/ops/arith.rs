//! Arithmetic as json-logic-js does it: `+` and `*` read their arguments
//! with `parseFloat`, `-`, `/`, `%`, `max` and `min` with ToNumber.

use super::arg;
use crate::value::{Val, parse_float};

fn parse(v: &Val) -> f64 {
    match v {
        Val::Num(x) => *x,
        other => parse_float(&other.to_js_string()),
    }
}

pub(crate) fn add(args: &[Val]) -> Val {
    Val::Num(args.iter().map(parse).sum())
}

/// `*`: a single argument comes back as it is (json-logic-js reduces
/// without a start value); the compiler refuses none.
pub(crate) fn mul(args: &[Val]) -> Val {
    match args {
        [] => Val::Null,
        [only] => only.clone(),
        [first, rest @ ..] => Val::Num(rest.iter().fold(parse(first), |acc, v| acc * parse(v))),
    }
}

pub(crate) fn sub(args: &[Val]) -> Val {
    match args {
        [a] => Val::Num(-a.to_number()),
        _ => Val::Num(arg(args, 0).to_number() - arg(args, 1).to_number()),
    }
}

pub(crate) fn div(args: &[Val]) -> Val {
    Val::Num(arg(args, 0).to_number() / arg(args, 1).to_number())
}

/// `%`: the remainder with the dividend's sign, as JavaScript's.
pub(crate) fn rem(args: &[Val]) -> Val {
    Val::Num(arg(args, 0).to_number() % arg(args, 1).to_number())
}

/// `max`, `min`: NaN if any argument is not a number.
pub(crate) fn max(args: &[Val]) -> Val {
    extreme(args, f64::NEG_INFINITY, f64::max)
}

pub(crate) fn min(args: &[Val]) -> Val {
    extreme(args, f64::INFINITY, f64::min)
}

fn extreme(args: &[Val], start: f64, pick: fn(f64, f64) -> f64) -> Val {
    let mut acc = start;
    for v in args {
        let x = v.to_number();
        if x.is_nan() {
            return Val::Num(f64::NAN);
        }
        acc = pick(acc, x);
    }
    Val::Num(acc)
}
