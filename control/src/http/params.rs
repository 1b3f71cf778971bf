//! The query parameters and headers of a poll, checked: each error names
//! the parameter (`wait: ...`, `after_version: ...`, `If-None-Match: ...`).

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderMap;

use crate::http::errors::ApiError;
use crate::http::render::Format;
use crate::watch::{MAX_LABELS, MAX_NODE_FIELD_LEN};

/// How long a poll is held unless `wait` says.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The longest `wait` accepted.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// The parameters of a poll, but labels.
const PARAMETERS: &[&str] = &["node", "after_version", "wait", "format"];
/// The prefix of label parameters: `label.zone=a`.
const LABEL_PREFIX: &str = "label.";

/// A poll's query, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PollParams {
    /// `node`: recorded in the agent registry when given.
    pub(crate) node: Option<String>,
    /// `label.<key>=<value>`: the node's labels (rollout selectors).
    pub(crate) labels: BTreeMap<String, String>,
    /// `after_version`: the version the client has (0: none).
    pub(crate) after_version: u64,
    /// `wait`: how long to hold.
    pub(crate) wait: Duration,
    /// `format`: `json` (default) or `yaml`.
    pub(crate) format: Format,
}

impl Default for PollParams {
    fn default() -> Self {
        Self {
            node: None,
            labels: BTreeMap::new(),
            after_version: 0,
            wait: DEFAULT_WAIT,
            format: Format::Json,
        }
    }
}

/// Parses a poll's query string (`None`: no query).
pub(crate) fn poll_params(query: Option<&str>) -> Result<PollParams, ApiError> {
    let mut params = PollParams::default();
    let mut seen = std::collections::HashSet::new();
    for (name, value) in pairs(query.unwrap_or(""))? {
        // Errors name our parameters only: an unknown name or a label's key
        // is the client's text (it may hold `: `), so it goes in the reason,
        // quoted, under `query` or `label`.
        let label = name.strip_prefix(LABEL_PREFIX);
        if label.is_none() && !PARAMETERS.contains(&name.as_str()) {
            return Err(ApiError::invalid(
                "query",
                format!(
                    "unknown parameter {name:?} (expected node, after_version, wait, format, label.<key>)"
                ),
            ));
        }
        let in_label =
            |key: &str, why: &str| ApiError::invalid("label", format!("key {key:?}: {why}"));
        if !seen.insert(name.clone()) {
            return Err(match label {
                Some(key) => in_label(key, "given more than once"),
                None => ApiError::invalid(&name, "given more than once"),
            });
        }
        let value = value.map_err(|why| match label {
            Some(key) => in_label(key, why),
            None => ApiError::invalid(&name, why),
        })?;
        match name.as_str() {
            "node" => {
                check_text("node", &value)?;
                params.node = Some(value);
            }
            "after_version" => {
                params.after_version = value.parse().map_err(|_| {
                    ApiError::invalid(
                        "after_version",
                        format!("{value:?} is not a version (an integer from 0)"),
                    )
                })?;
            }
            "wait" => params.wait = wait(&value)?,
            "format" => {
                params.format = match value.as_str() {
                    "json" => Format::Json,
                    "yaml" => Format::Yaml,
                    other => {
                        return Err(ApiError::invalid(
                            "format",
                            format!("{other:?}: expected json or yaml"),
                        ));
                    }
                };
            }
            _ => match label {
                Some(key) => {
                    check_text("label", key)
                        .map_err(|e| in_label(key, e.message.trim_start_matches("label: ")))?;
                    if value.len() > MAX_NODE_FIELD_LEN {
                        return Err(in_label(
                            key,
                            &format!(
                                "its value is {} bytes long, over the limit of {MAX_NODE_FIELD_LEN}",
                                value.len()
                            ),
                        ));
                    }
                    params.labels.insert(key.to_owned(), value);
                    if params.labels.len() > MAX_LABELS {
                        return Err(ApiError::invalid(
                            "label",
                            format!("more than {MAX_LABELS} labels"),
                        ));
                    }
                }
                None => {
                    return Err(ApiError::invalid(
                        &name,
                        "unknown parameter (expected node, after_version, wait, format, label.<key>)",
                    ));
                }
            },
        }
    }
    if !params.labels.is_empty() && params.node.is_none() {
        return Err(ApiError::invalid(
            "label",
            "labels describe a node: give node too",
        ));
    }
    Ok(params)
}

/// `wait`: a duration with its unit (`30s`, `500ms`, `1m`) or whole
/// seconds (`30`), at most [`MAX_WAIT`].
fn wait(value: &str) -> Result<Duration, ApiError> {
    let parsed = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        value.parse::<u64>().ok().map(Duration::from_secs)
    } else {
        humantime::parse_duration(value).ok()
    };
    let wait = parsed.ok_or_else(|| {
        ApiError::invalid(
            "wait",
            format!("{value:?} is not a duration (e.g. 30s, 500ms, 1m, or seconds)"),
        )
    })?;
    if wait > MAX_WAIT {
        return Err(ApiError::invalid(
            "wait",
            format!(
                "{} is over the maximum of {}s",
                humantime::format_duration(wait),
                MAX_WAIT.as_secs()
            ),
        ));
    }
    Ok(wait)
}

/// The decoded `name=value` pairs of a query (`+` is a space); a value
/// that does not decode is left for the caller to name.
#[allow(clippy::type_complexity)]
fn pairs(query: &str) -> Result<Vec<(String, Result<String, &'static str>)>, ApiError> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name).map_err(|e| ApiError::invalid("query", e))?;
            // `=x` or `%20=x` would otherwise be refused under no name at all.
            if name.trim().is_empty() {
                return Err(ApiError::invalid("query", "a parameter without a name"));
            }
            Ok((name, decode(value)))
        })
        .collect()
}

fn decode(text: &str) -> Result<String, &'static str> {
    let text = text.replace('+', " ");
    percent_encoding::percent_decode_str(&text)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| "not UTF-8 once percent-decoded")
}

/// A node id or label key: as the watch checks them (non-empty, at most
/// [`MAX_NODE_FIELD_LEN`] bytes, no control characters).
pub(crate) fn check_text(what: &str, s: &str) -> Result<(), ApiError> {
    if s.is_empty() {
        Err(ApiError::invalid(what, "must not be empty"))
    } else if s.len() > MAX_NODE_FIELD_LEN {
        Err(ApiError::invalid(
            what,
            format!(
                "is {} bytes long, over the limit of {MAX_NODE_FIELD_LEN}",
                s.len()
            ),
        ))
    } else if s.chars().any(char::is_control) {
        Err(ApiError::invalid(
            what,
            "must not contain control characters",
        ))
    } else {
        Ok(())
    }
}

/// The hashes of `If-None-Match` (`"<hash>"`, weak `W/"<hash>"` or a
/// comma-separated list of them); `None` when absent. `*` is refused: a
/// poll always has something to compare.
pub(crate) fn if_none_match(headers: &HeaderMap) -> Result<Option<Vec<String>>, ApiError> {
    const NAME: &str = "If-None-Match";
    let mut hashes = Vec::new();
    for value in headers.get_all(http::header::IF_NONE_MATCH) {
        let text = value
            .to_str()
            .map_err(|_| ApiError::invalid(NAME, "not ASCII"))?;
        for tag in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let bare = tag.strip_prefix("W/").unwrap_or(tag);
            let hash = bare
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(bare);
            let hash = hash.strip_prefix("sha256:").unwrap_or(hash);
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ApiError::invalid(
                    NAME,
                    format!("{tag:?} is not an ETag of this API (\"<64 hex digits>\")"),
                ));
            }
            hashes.push(hash.to_ascii_lowercase());
        }
    }
    Ok((!hashes.is_empty()).then_some(hashes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(query: &str) -> String {
        poll_params(Some(query)).unwrap_err().message
    }

    #[test]
    fn parses_every_parameter() {
        let p = poll_params(Some(
            "node=web%2D1&after_version=7&wait=2s&format=yaml&label.zone=eu+west",
        ))
        .unwrap();
        assert_eq!(p.node.as_deref(), Some("web-1"));
        assert_eq!(p.after_version, 7);
        assert_eq!(p.wait, Duration::from_secs(2));
        assert_eq!(p.format, Format::Yaml);
        assert_eq!(p.labels["zone"], "eu west");
        assert_eq!(poll_params(None).unwrap(), PollParams::default());
        assert_eq!(
            poll_params(Some("wait=45")).unwrap().wait,
            Duration::from_secs(45)
        );
        assert_eq!(
            poll_params(Some("wait=500ms")).unwrap().wait,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn each_error_names_its_parameter() {
        assert!(err("wait=abc").starts_with("wait: "), "{}", err("wait=abc"));
        assert!(err("wait=61s").starts_with("wait: 1m 1s is over the maximum of 60s"));
        assert!(err("after_version=-1").starts_with("after_version: "));
        assert!(err("after_version=1.5").starts_with("after_version: "));
        assert!(err("format=xml").starts_with("format: "));
        assert!(err("node=").starts_with("node: must not be empty"));
        assert!(err(&format!("node={}", "n".repeat(257))).starts_with("node: is 257 bytes"));
        assert!(err("node=a%0Ab").starts_with("node: must not contain control"));
        assert!(err("node=a&node=b").starts_with("node: given more than once"));
        assert!(err("after=3").starts_with("query: unknown parameter \"after\""));
        assert!(err("label.zone=a").starts_with("label: labels describe a node"));
        assert!(err("node=%FF").starts_with("node: not UTF-8"));
    }

    /// Hostile queries: each is a 400 whose message starts with the
    /// parameter at fault (or `query` when the pair has no usable name).
    #[test]
    fn hostile_queries_are_refused_naming_the_parameter() {
        let cases: Vec<(String, &str)> = vec![
            // Duplicates, also when only the encoding differs.
            ("wait=1s&wait=2s".into(), "wait: given more than once"),
            ("node=a&no%64e=b".into(), "node: given more than once"),
            (
                "node=a&label.z=1&label.z=2".into(),
                "label: key \"z\": given more than once",
            ),
            // Percent-encoding that is not UTF-8, in a value and in a name.
            ("node=%C3%28".into(), "node: not UTF-8"),
            ("%FF=1".into(), "query: not UTF-8"),
            // Pairs without a name.
            ("=5".into(), "query: a parameter without a name"),
            ("%20=5".into(), "query: a parameter without a name"),
            ("+=5".into(), "query: a parameter without a name"),
            // Numbers past u64 and durations past every limit.
            (
                "after_version=18446744073709551616".into(),
                "after_version: \"18446744073709551616\" is not a version",
            ),
            ("wait=18446744073709551616".into(), "wait: "),
            ("wait=18446744073709551615".into(), "wait: "),
            ("wait=99999999999999999999h".into(), "wait: "),
            ("wait=1e9s".into(), "wait: \"1e9s\" is not a duration"),
            ("wait=1e9".into(), "wait: "),
            ("wait=-1s".into(), "wait: "),
            ("wait=NaN".into(), "wait: "),
            ("wait=inf".into(), "wait: "),
            // Unicode digits are not digits here.
            ("wait=%EF%BC%93%EF%BC%90s".into(), "wait: "),
            ("after_version=%D9%A3".into(), "after_version: "),
            // Empty values.
            ("after_version=".into(), "after_version: "),
            ("wait=".into(), "wait: "),
            ("format=".into(), "format: "),
            ("node".into(), "node: must not be empty"),
            (
                "node=a&label.=x".into(),
                "label: key \"\": must not be empty",
            ),
            // NUL and other control characters.
            ("node=a%00".into(), "node: must not contain control"),
            (
                "node=a&label.a%00=x".into(),
                "label: key \"a\\0\": must not contain",
            ),
            ("%00=1".into(), "query: unknown parameter \"\\0\""),
            // Names that hold `: ` name nothing themselves.
            (
                "labno.zoneCeu:+west=1".into(),
                "query: unknown parameter \"labno.zoneCeu: west\"",
            ),
            (
                "node=a&label.a:+b=%FF".into(),
                "label: key \"a: b\": not UTF-8",
            ),
            ("x:+y=%FF".into(), "query: unknown parameter \"x: y\""),
            // Sizes.
            (
                format!("node=a&label.k={}", "v".repeat(257)),
                "label: key \"k\": its value is 257 bytes long",
            ),
            (
                format!("node=a&label.{}=v", "k".repeat(257)),
                "label: key \"kkk",
            ),
            (
                format!(
                    "node=a&{}",
                    (0..=MAX_LABELS)
                        .map(|i| format!("label.k{i}=v"))
                        .collect::<Vec<_>>()
                        .join("&")
                ),
                "label: more than 64 labels",
            ),
        ];
        for (query, expected) in &cases {
            let e = poll_params(Some(query)).unwrap_err();
            assert_eq!(e.status, http::StatusCode::BAD_REQUEST, "{query}");
            assert!(
                e.message.starts_with(expected),
                "{query:?}: {:?} does not start with {expected:?}",
                e.message
            );
        }
        // What is fine stays fine: the most labels, percent-encoded
        // Unicode, `+` for spaces, NUL in a label's value (as the watch
        // accepts it), empty pairs, malformed escapes taken literally.
        let most = format!(
            "node=a&{}",
            (0..MAX_LABELS)
                .map(|i| format!("label.k{i}=v"))
                .collect::<Vec<_>>()
                .join("&")
        );
        assert_eq!(poll_params(Some(&most)).unwrap().labels.len(), MAX_LABELS);
        let p = poll_params(Some(
            "&&node=%E2%9C%93+x&label.z%C3%B6ne=a%00b&&wait=0&after_version=%2B5",
        ))
        .unwrap();
        assert_eq!(p.node.as_deref(), Some("✓ x"));
        assert_eq!(p.labels["zöne"], "a\0b");
        // humantime's fractions are durations too.
        assert_eq!(
            poll_params(Some("wait=1.5s")).unwrap().wait,
            Duration::from_millis(1500)
        );
        assert_eq!((p.wait, p.after_version), (Duration::ZERO, 5));
        assert_eq!(
            poll_params(Some("node=%zz%")).unwrap().node.as_deref(),
            Some("%zz%")
        );
    }

    #[test]
    fn hostile_if_none_match_is_refused_naming_the_header() {
        for value in [
            &b"\"\xff\""[..],
            b"*",
            b"\"\"",
            b"W/",
            b"\"abc\"",
            b"sha256:",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                http::header::IF_NONE_MATCH,
                http::HeaderValue::from_bytes(value).unwrap(),
            );
            let e = if_none_match(&headers).unwrap_err();
            assert!(e.message.starts_with("If-None-Match: "), "{}", e.message);
        }
        // Only separators: as if absent.
        let mut headers = HeaderMap::new();
        headers.insert(http::header::IF_NONE_MATCH, " , ,".parse().unwrap());
        assert_eq!(if_none_match(&headers).unwrap(), None);
    }

    #[test]
    fn if_none_match_takes_quoted_weak_and_listed_tags() {
        let h = "ab".repeat(32);
        let mut headers = HeaderMap::new();
        assert_eq!(if_none_match(&headers).unwrap(), None);
        headers.insert(
            http::header::IF_NONE_MATCH,
            format!("W/\"{}\", \"{h}\"", "CD".repeat(32))
                .parse()
                .unwrap(),
        );
        assert_eq!(
            if_none_match(&headers).unwrap(),
            Some(vec!["cd".repeat(32), h.clone()])
        );
        headers.insert(http::header::IF_NONE_MATCH, "*".parse().unwrap());
        let e = if_none_match(&headers).unwrap_err();
        assert!(e.message.starts_with("If-None-Match: "), "{}", e.message);
    }
}
