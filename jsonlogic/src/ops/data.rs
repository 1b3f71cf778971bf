//! Reading the data: `var`'s dotted paths, `missing`, `missing_some`, and
//! `merge`.

use std::borrow::Cow;

use super::arg;
use crate::value::{Val, js_compare};

/// Looks up `path` (`a.b.0`) in `data` as json-logic-js's `var` does: `""`
/// and `null` are the data itself; `None` is JavaScript's `undefined`.
/// Strings and arrays answer `length` and indexes, as in JavaScript.
pub(crate) fn lookup<'a>(data: &'a Val, path: &Val) -> Option<Cow<'a, Val>> {
    let path = match path {
        Val::Null => return Some(Cow::Borrowed(data)),
        Val::Str(s) if s.is_empty() => return Some(Cow::Borrowed(data)),
        other => other.to_js_string(),
    };
    let mut current = Cow::Borrowed(data);
    for part in path.split('.') {
        current = match current {
            Cow::Borrowed(v) => step(v, part)?,
            Cow::Owned(v) => Cow::Owned(step(&v, part)?.into_owned()),
        };
    }
    Some(current)
}

/// An array index as JavaScript reads a property name: canonical digits.
fn index(part: &str) -> Option<usize> {
    if part == "0" || (!part.starts_with('0') && !part.is_empty()) {
        part.parse().ok()
    } else {
        None
    }
}

fn step<'a>(v: &'a Val, part: &str) -> Option<Cow<'a, Val>> {
    match v {
        Val::Obj(map) => map.get(part).map(Cow::Borrowed),
        Val::Arr(items) if part == "length" => Some(Cow::Owned(Val::Num(items.len() as f64))),
        Val::Arr(items) => index(part).and_then(|i| items.get(i)).map(Cow::Borrowed),
        Val::Str(s) if part == "length" => {
            Some(Cow::Owned(Val::Num(s.encode_utf16().count() as f64)))
        }
        Val::Str(s) => index(part)
            .and_then(|i| s.chars().nth(i))
            .map(|c| Cow::Owned(Val::Str(c.to_string()))),
        // `null.x` would throw in JavaScript; json-logic-js checks first
        // and gives the default, as it does for numbers' and booleans'
        // (absent) properties.
        Val::Null | Val::Bool(_) | Val::Num(_) => None,
    }
}

/// `missing`: the keys (the arguments, or the array that is the first one)
/// whose value is absent, `null` or `""`.
pub(crate) fn missing(args: &[Val], data: &Val) -> Vec<Val> {
    let keys = match args.first() {
        Some(Val::Arr(keys)) => keys.as_slice(),
        _ => args,
    };
    keys.iter()
        .filter(|key| match lookup(data, key).as_deref() {
            None | Some(Val::Null) => true,
            Some(Val::Str(s)) => s.is_empty(),
            Some(_) => false,
        })
        .cloned()
        .collect()
}

/// `missing_some`: `[]` when at least `need` of the keys are present,
/// else the missing ones.
pub(crate) fn missing_some(args: &[Val], data: &Val) -> Val {
    let need = arg(args, 0);
    let keys = arg(args, 1);
    let absent = missing(std::slice::from_ref(keys), data);
    let present = match keys {
        Val::Arr(all) => Val::Num((all.len() - absent.len()) as f64),
        // JavaScript's `options.length` is undefined: NaN, never enough.
        _ => Val::Num(f64::NAN),
    };
    let enough = matches!(
        js_compare(&present, need),
        Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
    );
    if enough {
        Val::Arr(Vec::new())
    } else {
        Val::Arr(absent)
    }
}

/// `merge`: arrays flattened one level into one array.
pub(crate) fn merge(args: Vec<Val>) -> Val {
    let mut out = Vec::new();
    for v in args {
        match v {
            Val::Arr(items) => out.extend(items),
            other => out.push(other),
        }
    }
    Val::Arr(out)
}
