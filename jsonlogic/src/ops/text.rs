//! Strings and membership: `cat`, `substr`, `in`, and flagd's
//! `starts_with` and `ends_with`.

use super::arg;
use crate::value::{Val, strict_eq};

/// `cat`: JavaScript's `join("")` of the arguments (`null` is empty).
pub(crate) fn cat(args: &[Val]) -> Val {
    Val::Str(
        args.iter()
            .map(|v| match v {
                Val::Null => String::new(),
                other => other.to_js_string(),
            })
            .collect(),
    )
}

/// JavaScript's ToIntegerOrInfinity, clamped into `i64`.
fn to_integer(v: &Val) -> i64 {
    let x = v.to_number();
    if x.is_nan() {
        0
    } else {
        x.trunc().clamp(i64::MIN as f64, i64::MAX as f64) as i64
    }
}

/// `String.prototype.substr(start, length)` on characters.
fn substr(chars: &[char], start: i64, length: Option<i64>) -> Vec<char> {
    let len = chars.len() as i64;
    let from = if start < 0 {
        (len + start).max(0)
    } else {
        start.min(len)
    };
    let count = length.map_or(len - from, |l| l.clamp(0, len - from));
    chars[from as usize..(from + count) as usize].to_vec()
}

/// `substr`: a negative length stops that many characters before the end.
pub(crate) fn substr_op(args: &[Val]) -> Val {
    let source: Vec<char> = arg(args, 0).to_js_string().chars().collect();
    let start = to_integer(arg(args, 1));
    let out = match args.get(2) {
        None => substr(&source, start, None),
        Some(end) => {
            let end = to_integer(end);
            if end < 0 {
                let tail = substr(&source, start, None);
                let keep = (tail.len() as i64 + end).max(0);
                substr(&tail, 0, Some(keep))
            } else {
                substr(&source, start, Some(end))
            }
        }
    };
    Val::Str(out.into_iter().collect())
}

/// `in`: a substring of a string, or an item (`===`) of an array.
pub(crate) fn in_op(args: &[Val]) -> Val {
    let needle = arg(args, 0);
    Val::Bool(match arg(args, 1) {
        Val::Str(hay) if !hay.is_empty() => hay.contains(&needle.to_js_string()),
        Val::Arr(items) => items.iter().any(|item| strict_eq(item, needle)),
        _ => false,
    })
}

/// `starts_with`, `ends_with`: two strings, else `null` (flagd's).
pub(crate) fn starts_with(args: &[Val]) -> Val {
    match args {
        [Val::Str(s), Val::Str(prefix)] => Val::Bool(s.starts_with(prefix.as_str())),
        _ => Val::Null,
    }
}

pub(crate) fn ends_with(args: &[Val]) -> Val {
    match args {
        [Val::Str(s), Val::Str(suffix)] => Val::Bool(s.ends_with(suffix.as_str())),
        _ => Val::Null,
    }
}
