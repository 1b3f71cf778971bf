//! flagd's `sem_ver`: `[version, comparison, version]` with `=`, `!=`, `<`,
//! `<=`, `>`, `>=`, `^` (same major) and `~` (same major and minor).
//!
//! Versions are Semantic Versioning 2.0.0, with flagd's leniencies that its
//! Go core and its JavaScript provider share: a leading `v` or `V` is
//! dropped, and `1` or `1.2` stand for `1.0.0` and `1.2.0`. Build metadata
//! does not take part in comparisons. Anything else (`1.2.3.4`, leading
//! zeros, `1.2-beta`) is not a version, and the result is `null`.

use std::cmp::Ordering;

use crate::value::Val;

/// The comparisons `sem_ver` knows.
pub(crate) const OPERATORS: &[&str] = &["=", "!=", "<", "<=", ">", ">=", "^", "~"];

/// A parsed version. Numeric parts are kept as digit strings without
/// leading zeros, so any size compares correctly.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    major: String,
    minor: String,
    patch: String,
    pre: Vec<String>,
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn cmp_numeric(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

impl Version {
    fn parse(raw: &str) -> Option<Version> {
        let s = raw
            .strip_prefix('v')
            .or_else(|| raw.strip_prefix('V'))
            .unwrap_or(raw);
        let (rest, build) = match s.split_once('+') {
            Some((rest, build)) => (rest, Some(build)),
            None => (s, None),
        };
        if let Some(build) = build
            && !build.split('.').all(is_ident)
        {
            return None;
        }
        let (core, pre) = match rest.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (rest, None),
        };
        let parts: Vec<&str> = core.split('.').collect();
        if !parts.iter().all(|p| is_number(p)) {
            return None;
        }
        let (major, minor, patch) = match parts.as_slice() {
            [major, minor, patch] => (*major, *minor, *patch),
            // The short forms only without pre-release or build.
            [major, minor] if pre.is_none() && build.is_none() => (*major, *minor, "0"),
            [major] if pre.is_none() && build.is_none() => (*major, "0", "0"),
            _ => return None,
        };
        let pre = match pre {
            None => Vec::new(),
            Some(pre) => {
                let ids: Vec<String> = pre.split('.').map(str::to_owned).collect();
                let valid = ids.iter().all(|id| {
                    is_ident(id) && (!id.bytes().all(|b| b.is_ascii_digit()) || is_number(id))
                });
                if !valid {
                    return None;
                }
                ids
            }
        };
        Some(Version {
            major: major.to_owned(),
            minor: minor.to_owned(),
            patch: patch.to_owned(),
            pre,
        })
    }

    /// Semantic Versioning precedence.
    fn precedence(&self, other: &Version) -> Ordering {
        cmp_numeric(&self.major, &other.major)
            .then_with(|| cmp_numeric(&self.minor, &other.minor))
            .then_with(|| cmp_numeric(&self.patch, &other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => cmp_pre(&self.pre, &other.pre),
            })
    }
}

fn cmp_pre(a: &[String], b: &[String]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let xn = x.bytes().all(|c| c.is_ascii_digit());
        let yn = y.bytes().all(|c| c.is_ascii_digit());
        let ord = match (xn, yn) {
            (true, true) => cmp_numeric(x, y),
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    a.len().cmp(&b.len())
}

/// A version argument: a string, or a number written as JavaScript writes it.
fn version_of(v: &Val) -> Option<Version> {
    match v {
        Val::Str(s) => Version::parse(s),
        Val::Num(_) => Version::parse(&v.to_js_string()),
        _ => None,
    }
}

/// Applies `sem_ver` to its evaluated arguments: a boolean, or `null` when
/// an argument is not a version or the comparison is unknown.
pub(crate) fn sem_ver(args: &[Val]) -> Val {
    let [left, Val::Str(op), right] = args else {
        return Val::Null;
    };
    let (Some(a), Some(b)) = (version_of(left), version_of(right)) else {
        return Val::Null;
    };
    let ord = a.precedence(&b);
    Val::Bool(match op.as_str() {
        "=" => ord == Ordering::Equal,
        "!=" => ord != Ordering::Equal,
        "<" => ord == Ordering::Less,
        "<=" => ord != Ordering::Greater,
        ">" => ord == Ordering::Greater,
        ">=" => ord != Ordering::Less,
        "^" => a.major == b.major,
        "~" => a.major == b.major && a.minor == b.minor,
        _ => return Val::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(a: &str, op: &str, b: &str) -> Val {
        sem_ver(&[Val::Str(a.into()), Val::Str(op.into()), Val::Str(b.into())])
    }

    #[test]
    fn compares_by_semver_precedence() {
        let t = Val::Bool(true);
        assert_eq!(check("1.0.0", "=", "1.0.0"), t);
        assert_eq!(check("v1.0.0", "=", "1.0.0"), t);
        assert_eq!(check("V1.0.0", "=", "1.0.0"), t);
        assert_eq!(check("1.0.0+build.5", "=", "1.0.0"), t);
        assert_eq!(check("1.0.0", "!=", "1.0.1"), t);
        assert_eq!(check("1.0.0-alpha", "<", "1.0.0"), t);
        assert_eq!(check("1.0.0-alpha", "<", "1.0.0-alpha.1"), t);
        assert_eq!(check("1.0.0-alpha.1", "<", "1.0.0-alpha.beta"), t);
        assert_eq!(check("1.0.0-beta.2", "<", "1.0.0-beta.11"), t);
        assert_eq!(check("1.0.0-rc.1", "<", "1.0.0"), t);
        assert_eq!(check("1.10.0", ">", "1.9.0"), t);
        assert_eq!(check("2.0.0", ">=", "2.0.0"), t);
        assert_eq!(check("1.9.9", "<=", "2.0.0"), t);
        assert_eq!(check("1.2", "=", "1.2.0"), t);
        assert_eq!(check("1", "=", "1.0.0"), t);
        assert_eq!(check("99999999999999999999.0.0", ">", "9.0.0"), t);
        assert_eq!(check("1.0.0", ">", "1.0.0"), Val::Bool(false));
    }

    #[test]
    fn caret_and_tilde_match_major_and_minor() {
        assert_eq!(check("1.2.3", "^", "1.9.0"), Val::Bool(true));
        assert_eq!(check("2.2.3", "^", "1.2.3"), Val::Bool(false));
        assert_eq!(check("1.2.3", "~", "1.2.9-beta"), Val::Bool(true));
        assert_eq!(check("1.3.0", "~", "1.2.0"), Val::Bool(false));
    }

    #[test]
    fn non_versions_and_unknown_comparisons_give_null() {
        for (a, op, b) in [
            ("1.2.3.4", "=", "1.2.3"),
            ("01.2.3", "=", "1.2.3"),
            ("1.2-beta", "=", "1.2.0"),
            ("myVersion_1", "=", "1.0.0"),
            ("1.0.0-", "=", "1.0.0"),
            ("1.0.0-01", "=", "1.0.0"),
            ("1.0.0", "+", "1.0.0"),
            ("", "=", "1.0.0"),
        ] {
            assert_eq!(check(a, op, b), Val::Null, "{a} {op} {b}");
        }
        assert_eq!(
            sem_ver(&[
                Val::Num(1.5),
                Val::Str("=".into()),
                Val::Str("1.5.0".into())
            ]),
            Val::Bool(true)
        );
        assert_eq!(
            sem_ver(&[
                Val::Bool(true),
                Val::Str("=".into()),
                Val::Str("1.5.0".into())
            ]),
            Val::Null
        );
        assert_eq!(sem_ver(&[Val::Str("1.0.0".into())]), Val::Null);
    }
}
