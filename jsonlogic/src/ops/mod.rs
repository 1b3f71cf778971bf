//! The operators that work on already evaluated arguments, by concern; the
//! ones that decide what to evaluate (`if`, `and`, `map`, …) are in `apply`.

pub(crate) mod arith;
pub(crate) mod compare;
pub(crate) mod data;
pub(crate) mod text;

use crate::value::Val;

/// The `i`th argument, or JavaScript's `undefined` (which these operators
/// treat as `null` unless they say otherwise).
pub(crate) fn arg(args: &[Val], i: usize) -> &Val {
    args.get(i).unwrap_or(&Val::Null)
}
