//! Label selectors for a rollout's cohort (`--select`): the forms kubectl
//! users know — `k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (has the
//! label), `!k` (has not) — comma-separated, all of which must hold.

use std::collections::BTreeMap;
use std::fmt;

/// One requirement on an agent's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

/// A parsed selector; the empty selector matches every agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Term>,
    text: String,
}

/// Why a selector does not parse: the term (from 1) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector: term {index} {term:?}: {reason}")]
pub struct SelectorError {
    index: usize,
    term: String,
    reason: String,
}

impl Selector {
    /// Parses `text` (empty: everything).
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for (i, raw) in split_terms(text).into_iter().enumerate() {
            let fail = |reason: &str| SelectorError {
                index: i + 1,
                term: raw.to_owned(),
                reason: reason.to_owned(),
            };
            let term = raw.trim();
            if term.is_empty() {
                if text.trim().is_empty() {
                    break;
                }
                return Err(fail("empty term"));
            }
            terms.push(parse_term(term).map_err(|reason| fail(&reason))?);
        }
        Ok(Self {
            terms,
            text: text.trim().to_owned(),
        })
    }

    /// Whether `labels` satisfy every term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Equals(k, v) => labels.get(k) == Some(v),
            Term::NotEquals(k, v) => labels.get(k) != Some(v),
            Term::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Term::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Term::Exists(k) => labels.contains_key(k),
            Term::Absent(k) => !labels.contains_key(k),
        })
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Splits on commas outside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn parse_term(term: &str) -> Result<Term, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Term::Absent(label_key(key.trim())?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Term::NotEquals(
            label_key(k.trim())?,
            label_value(v.trim())?,
        ));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Term::Equals(label_key(k.trim())?, label_value(v.trim())?));
    }
    if let Some(open) = term.find('(') {
        let mut words = term[..open].split_whitespace();
        let (key, op) = match (words.next(), words.next(), words.next()) {
            (Some(key), Some(op), None) => (key, op),
            _ => return Err("expected `key in (a,b)` or `key notin (a,b)`".into()),
        };
        let list = term[open + 1..]
            .strip_suffix(')')
            .ok_or("the list must end with \")\"")?;
        let values = list
            .split(',')
            .map(|v| label_value(v.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        if values.iter().all(String::is_empty) {
            return Err("the list is empty".into());
        }
        return match op {
            "in" => Ok(Term::In(label_key(key)?, values)),
            "notin" => Ok(Term::NotIn(label_key(key)?, values)),
            other => Err(format!(
                "unknown operator {other:?} (expected =, !=, in, notin)"
            )),
        };
    }
    if term.contains(char::is_whitespace) {
        return Err("expected `key=value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key` or `!key`".into());
    }
    Ok(Term::Exists(label_key(term)?))
}

/// A label key: 1 to 253 characters of letters, digits, `.`, `_`, `-`, `/`.
fn label_key(key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("the label key is empty".into());
    }
    check_chars(key, "label key")?;
    Ok(key.to_owned())
}

/// A label value: up to 253 characters like a key (may be empty).
fn label_value(value: &str) -> Result<String, String> {
    check_chars(value, "label value")?;
    Ok(value.to_owned())
}

fn check_chars(text: &str, what: &str) -> Result<(), String> {
    if text.len() > 253 {
        return Err(format!("{what} is longer than 253 characters"));
    }
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        Some(c) => Err(format!(
            "{what} {text:?} has {c:?} (allowed: letters, digits, . _ - /)"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_form_matches_as_kubectl_would() {
        let a = labels(&[("zone", "a"), ("tier", "web")]);
        let b = labels(&[("zone", "b"), ("tier", "edge")]);
        let none = labels(&[]);
        let cases = [
            ("", [true, true, true]),
            ("zone=a", [true, false, false]),
            ("zone==a", [true, false, false]),
            ("zone!=a", [false, true, true]),
            ("zone in (a, b)", [true, true, false]),
            ("zone in(b)", [false, true, false]),
            ("zone notin (a)", [false, true, true]),
            ("tier", [true, true, false]),
            ("!tier", [false, false, true]),
            ("zone=a,tier!=edge", [true, false, false]),
            ("zone in (a,b),tier!=edge", [true, false, false]),
        ];
        for (text, want) in cases {
            let s = Selector::parse(text).unwrap();
            assert_eq!(
                [s.matches(&a), s.matches(&b), s.matches(&none)],
                want,
                "{text}"
            );
        }
        assert!(Selector::parse(" ").unwrap().is_empty());
        assert_eq!(Selector::parse("zone=a").unwrap().to_string(), "zone=a");
    }

    #[test]
    fn bad_selectors_name_the_term_and_the_reason() {
        let cases = [
            ("zone=a,", "term 2 \"\": empty term"),
            ("zone=a b", "has ' '"),
            ("zone in a", "expected `key=value`"),
            ("zone in (a", "must end with \")\""),
            ("zone within (a)", "unknown operator \"within\""),
            ("=a", "label key is empty"),
            ("zone in ()", "the list is empty"),
        ];
        for (text, want) in cases {
            let e = Selector::parse(text).unwrap_err().to_string();
            assert!(e.starts_with("selector: term "), "{e}");
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
