//! The values a rule computes with, and JavaScript's coercions on them
//! (truthiness, `==`, `<`, ToNumber, ToString) as json-logic-js applies them.
//!
//! Numbers are `f64` throughout, as in JavaScript, and may be NaN or
//! infinite while a rule runs (`1/0 > 5` is true there); only the result is
//! turned back into JSON, where such numbers become `null` as
//! `JSON.stringify` makes them.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::Value;

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Val>),
    Obj(BTreeMap<String, Val>),
}

/// How deep a context may nest: converting deeper JSON is refused, so
/// nothing in evaluation recurses without bound.
pub(crate) const MAX_DATA_DEPTH: usize = 128;

impl Val {
    /// Converts JSON; `None` when it nests deeper than `MAX_DATA_DEPTH`.
    pub(crate) fn from_json(value: &Value) -> Option<Val> {
        Self::from_json_at(value, 0)
    }

    fn from_json_at(value: &Value, depth: usize) -> Option<Val> {
        if depth > MAX_DATA_DEPTH {
            return None;
        }
        Some(match value {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => Val::Num(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => Val::Str(s.clone()),
            Value::Array(items) => Val::Arr(
                items
                    .iter()
                    .map(|v| Self::from_json_at(v, depth + 1))
                    .collect::<Option<_>>()?,
            ),
            Value::Object(map) => Val::Obj(
                map.iter()
                    .map(|(k, v)| Some((k.clone(), Self::from_json_at(v, depth + 1)?)))
                    .collect::<Option<_>>()?,
            ),
        })
    }

    /// Back to JSON: NaN and infinities become `null`, whole numbers that
    /// JavaScript holds exactly become JSON integers.
    pub(crate) fn to_json(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Num(x) => number_to_json(*x),
            Val::Str(s) => Value::String(s.clone()),
            Val::Arr(items) => Value::Array(items.iter().map(Val::to_json).collect()),
            Val::Obj(map) => {
                Value::Object(map.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// What copying this value costs, in evaluation steps: one per value
    /// it holds, itself included, and one per 16 bytes of text.
    pub(crate) fn size(&self) -> usize {
        match self {
            Val::Str(s) => 1 + s.len() / 16,
            Val::Arr(items) => 1 + items.iter().map(Val::size).sum::<usize>(),
            Val::Obj(map) => 1 + map.values().map(Val::size).sum::<usize>(),
            _ => 1,
        }
    }

    /// JavaScript truthiness as json-logic-js defines it: an empty array is
    /// false, as are `0`, NaN, `""`, `null` and `false`; objects are true.
    pub(crate) fn truthy(&self) -> bool {
        match self {
            Val::Null => false,
            Val::Bool(b) => *b,
            Val::Num(x) => *x != 0.0 && !x.is_nan(),
            Val::Str(s) => !s.is_empty(),
            Val::Arr(items) => !items.is_empty(),
            Val::Obj(_) => true,
        }
    }

    /// JavaScript's ToNumber.
    pub(crate) fn to_number(&self) -> f64 {
        match self {
            Val::Null => 0.0,
            Val::Bool(b) => f64::from(u8::from(*b)),
            Val::Num(x) => *x,
            Val::Str(s) => string_to_number(s),
            Val::Arr(_) | Val::Obj(_) => string_to_number(&self.to_js_string()),
        }
    }

    /// JavaScript's ToString (arrays join their items with `,`, `null`
    /// items as empty strings; objects are `[object Object]`).
    pub(crate) fn to_js_string(&self) -> String {
        match self {
            Val::Null => "null".to_owned(),
            Val::Bool(b) => b.to_string(),
            Val::Num(x) => number_to_string(*x),
            Val::Str(s) => s.clone(),
            Val::Arr(items) => items
                .iter()
                .map(|v| match v {
                    Val::Null => String::new(),
                    other => other.to_js_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            Val::Obj(_) => "[object Object]".to_owned(),
        }
    }

    /// ToPrimitive: arrays and objects become their string.
    fn to_primitive(&self) -> Val {
        match self {
            Val::Arr(_) | Val::Obj(_) => Val::Str(self.to_js_string()),
            other => other.clone(),
        }
    }
}

/// JavaScript's `==`. Two arrays or objects are never equal: in
/// JavaScript they would have to be the same reference.
pub(crate) fn loose_eq(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Null, Val::Null) => true,
        (Val::Null, _) | (_, Val::Null) => false,
        (Val::Num(x), Val::Num(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Num(x), Val::Str(s)) | (Val::Str(s), Val::Num(x)) => *x == string_to_number(s),
        (Val::Bool(_), other) => loose_eq(&Val::Num(a.to_number()), other),
        (other, Val::Bool(_)) => loose_eq(other, &Val::Num(b.to_number())),
        (Val::Arr(_) | Val::Obj(_), Val::Arr(_) | Val::Obj(_)) => false,
        (Val::Arr(_) | Val::Obj(_), prim) => loose_eq(&a.to_primitive(), prim),
        (prim, Val::Arr(_) | Val::Obj(_)) => loose_eq(prim, &b.to_primitive()),
    }
}

/// JavaScript's `===` (arrays and objects: never, as distinct references).
pub(crate) fn strict_eq(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Null, Val::Null) => true,
        (Val::Num(x), Val::Num(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        _ => false,
    }
}

/// JavaScript's abstract relational comparison: two strings compare as
/// strings, anything else as numbers; `None` when a NaN is involved.
pub(crate) fn js_compare(a: &Val, b: &Val) -> Option<Ordering> {
    match (a.to_primitive(), b.to_primitive()) {
        (Val::Str(x), Val::Str(y)) => Some(x.encode_utf16().cmp(y.encode_utf16())),
        (x, y) => x.to_number().partial_cmp(&y.to_number()),
    }
}

/// JavaScript whitespace, as `Number("…")` and `parseFloat` trim it.
fn is_js_space(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}'
}

/// JavaScript's ToNumber on a string: trimmed, empty is 0, decimal with
/// optional exponent, `Infinity`, or `0x`/`0o`/`0b` integers; else NaN.
pub(crate) fn string_to_number(s: &str) -> f64 {
    let t = s.trim_matches(is_js_space);
    if t.is_empty() {
        return 0.0;
    }
    for (prefix, radix) in [
        ("0x", 16),
        ("0X", 16),
        ("0o", 8),
        ("0O", 8),
        ("0b", 2),
        ("0B", 2),
    ] {
        if let Some(digits) = t.strip_prefix(prefix) {
            if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
                return f64::NAN;
            }
            return digits
                .chars()
                .filter_map(|c| c.to_digit(radix))
                .fold(0.0, |acc, d| acc * f64::from(radix) + f64::from(d));
        }
    }
    let (sign, body) = match t.as_bytes().first() {
        Some(b'-') => (-1.0, &t[1..]),
        Some(b'+') => (1.0, &t[1..]),
        _ => (1.0, t),
    };
    if body == "Infinity" {
        return sign * f64::INFINITY;
    }
    if decimal_prefix_len(body) != body.len() {
        return f64::NAN;
    }
    body.parse::<f64>().map_or(f64::NAN, |x| sign * x)
}

/// JavaScript's `parseFloat`: the longest decimal prefix after leading
/// whitespace, NaN when there is none.
pub(crate) fn parse_float(s: &str) -> f64 {
    let t = s.trim_start_matches(is_js_space);
    let (sign, body) = match t.as_bytes().first() {
        Some(b'-') => (-1.0, &t[1..]),
        Some(b'+') => (1.0, &t[1..]),
        _ => (1.0, t),
    };
    if body.starts_with("Infinity") {
        return sign * f64::INFINITY;
    }
    let len = decimal_prefix_len(body);
    body[..len].parse::<f64>().map_or(f64::NAN, |x| sign * x)
}

/// The length of the longest prefix of `s` that is a decimal literal
/// (`12`, `1.5`, `.5`, `5.`, with an optional exponent); 0 when none.
fn decimal_prefix_len(s: &str) -> usize {
    let b = s.as_bytes();
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let int_end = digits(0);
    let mut end = int_end;
    let mut any_digit = int_end > 0;
    if end < b.len() && b[end] == b'.' {
        let frac_end = digits(end + 1);
        any_digit |= frac_end > end + 1;
        end = frac_end;
    }
    if !any_digit {
        return 0;
    }
    if end < b.len() && (b[end] == b'e' || b[end] == b'E') {
        let mut i = end + 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let exp_end = digits(i);
        if exp_end > i {
            end = exp_end;
        }
    }
    end
}

/// JavaScript's Number::toString: shortest round-trip digits, plain
/// notation for exponents from -7 to 20, else `1.5e+21`.
pub(crate) fn number_to_string(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    if x == 0.0 {
        return "0".to_owned();
    }
    let sign = if x < 0.0 { "-" } else { "" };
    // `{:e}` gives the shortest digits that round-trip: "1.2345e-7".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i64;
    let n = exp.parse::<i64>().unwrap_or(0) + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        format!("{int}.{frac}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let e_sign = if e >= 0 { "+" } else { "-" };
        let (first, rest) = digits.split_at(1);
        if rest.is_empty() {
            format!("{first}e{e_sign}{}", e.abs())
        } else {
            format!("{first}.{rest}e{e_sign}{}", e.abs())
        }
    };
    format!("{sign}{body}")
}

/// A number as JSON: integers JavaScript holds exactly print without a
/// fraction, as JavaScript prints them; NaN and infinities are `null`.
fn number_to_json(x: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() <= EXACT {
        // -0 prints as 0 in JavaScript too.
        return Value::from(x as i64);
    }
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(j: Value) -> Val {
        Val::from_json(&j).expect("shallow")
    }

    #[test]
    fn truthiness_follows_json_logic_js() {
        for falsy in [json!(0), json!(""), json!(null), json!(false), json!([])] {
            assert!(!v(falsy.clone()).truthy(), "{falsy}");
        }
        for truthy in [
            json!(1),
            json!(-0.5),
            json!("0"),
            json!(" "),
            json!([0]),
            json!({}),
            json!(true),
        ] {
            assert!(v(truthy.clone()).truthy(), "{truthy}");
        }
        assert!(!Val::Num(f64::NAN).truthy());
    }

    #[test]
    fn loose_equality_coerces_as_javascript() {
        let eq = |a: Value, b: Value| loose_eq(&v(a), &v(b));
        assert!(eq(json!(1), json!("1")));
        assert!(eq(json!(0), json!("")));
        assert!(eq(json!(1), json!(true)));
        assert!(eq(json!("1"), json!(true)));
        assert!(!eq(json!(null), json!(0)));
        assert!(!eq(json!(null), json!(false)));
        assert!(eq(json!(null), json!(null)));
        assert!(eq(json!([1, 2]), json!("1,2")));
        assert!(eq(json!([]), json!(0)));
        assert!(!eq(json!([1]), json!([1])));
        assert!(!eq(json!("abc"), json!(0)));
        assert!(eq(json!(" 12 "), json!(12)));
        assert!(eq(json!("0x10"), json!(16)));
        assert!(!strict_eq(&v(json!(1)), &v(json!("1"))));
        assert!(strict_eq(&v(json!(1)), &v(json!(1.0))));
    }

    #[test]
    fn comparison_is_string_wise_only_for_two_strings() {
        let lt = |a: Value, b: Value| js_compare(&v(a), &v(b)) == Some(Ordering::Less);
        assert!(lt(json!("10"), json!("9")));
        assert!(!lt(json!("10"), json!(9)));
        assert!(lt(json!(null), json!(1)));
        assert_eq!(js_compare(&v(json!("a")), &v(json!(1))), None);
    }

    #[test]
    fn numbers_print_as_javascript_prints_them() {
        for (x, s) in [
            (1.0, "1"),
            (-1.5, "-1.5"),
            (0.1, "0.1"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (0.000001, "0.000001"),
            (123456.789, "123456.789"),
            (-0.0, "0"),
        ] {
            assert_eq!(number_to_string(x), s, "{x}");
        }
    }

    #[test]
    fn string_to_number_and_parse_float_differ_as_in_javascript() {
        assert_eq!(string_to_number("  3.5 "), 3.5);
        assert!(string_to_number("3abc").is_nan());
        assert!(string_to_number("inf").is_nan());
        assert_eq!(string_to_number("-Infinity"), f64::NEG_INFINITY);
        assert_eq!(string_to_number(".5e1"), 5.0);
        assert_eq!(parse_float("3abc"), 3.0);
        assert_eq!(parse_float(" -1.5e2x"), -150.0);
        assert!(parse_float("abc").is_nan());
        assert!(parse_float("").is_nan());
    }

    #[test]
    fn deep_json_is_refused_not_recursed_without_bound() {
        let mut deep = json!(1);
        for _ in 0..200 {
            deep = json!([deep]);
        }
        assert!(Val::from_json(&deep).is_none());
        assert_eq!(v(json!([1.0, 2.5, null])).to_json(), json!([1, 2.5, null]));
        assert_eq!(Val::Num(f64::INFINITY).to_json(), json!(null));
    }
}
