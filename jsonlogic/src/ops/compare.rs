//! Equality and ordering: `==`, `===`, `!=`, `!==`, `<`, `<=`, `>`, `>=`
//! (including `<`/`<=` with three arguments: between).

use std::cmp::Ordering;

use super::arg;
use crate::value::{Val, js_compare, loose_eq, strict_eq};

pub(crate) fn eq(args: &[Val]) -> Val {
    Val::Bool(loose_eq(arg(args, 0), arg(args, 1)))
}

pub(crate) fn ne(args: &[Val]) -> Val {
    Val::Bool(!loose_eq(arg(args, 0), arg(args, 1)))
}

pub(crate) fn strict_equal(args: &[Val]) -> Val {
    Val::Bool(strict_eq(arg(args, 0), arg(args, 1)))
}

pub(crate) fn strict_ne(args: &[Val]) -> Val {
    Val::Bool(!strict_eq(arg(args, 0), arg(args, 1)))
}

fn lt(a: &Val, b: &Val) -> bool {
    js_compare(a, b) == Some(Ordering::Less)
}

fn le(a: &Val, b: &Val) -> bool {
    matches!(js_compare(a, b), Some(Ordering::Less | Ordering::Equal))
}

/// `<`: `a < b`, or `a < b < c` with three arguments.
pub(crate) fn less(args: &[Val]) -> Val {
    Val::Bool(match args {
        [a, b, c] => lt(a, b) && lt(b, c),
        _ => lt(arg(args, 0), arg(args, 1)),
    })
}

/// `<=`: `a <= b`, or `a <= b <= c` with three arguments.
pub(crate) fn less_eq(args: &[Val]) -> Val {
    Val::Bool(match args {
        [a, b, c] => le(a, b) && le(b, c),
        _ => le(arg(args, 0), arg(args, 1)),
    })
}

pub(crate) fn greater(args: &[Val]) -> Val {
    Val::Bool(lt(arg(args, 1), arg(args, 0)))
}

pub(crate) fn greater_eq(args: &[Val]) -> Val {
    Val::Bool(le(arg(args, 1), arg(args, 0)))
}
