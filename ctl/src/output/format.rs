//! The small pieces every renderer shares: YAML/JSON encoding, aligned
//! tables, short hashes, sizes, labels and times (RFC 3339, "5m ago").

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::args::OutputFormat;

/// How many hex digits of a hash tables and sentences show (as git does).
pub(crate) const SHORT_HASH: usize = 12;

/// JSON (pretty, with a final newline) or YAML of any view.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T, format: OutputFormat) -> String {
    // Every view is made of strings, integers, booleans, options and
    // string-keyed maps, which serde_json and yaml_serde always encode.
    let text = match format {
        OutputFormat::Yaml => yaml_serde::to_string(value).expect("views always encode as YAML"),
        OutputFormat::Json | OutputFormat::Table => {
            serde_json::to_string_pretty(value).expect("views always encode as JSON") + "\n"
        }
    };
    if text.ends_with('\n') {
        text
    } else {
        text + "\n"
    }
}

/// Columns padded to their widest cell, two spaces apart, no trailing blanks.
pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub(crate) fn short(hash: &str) -> &str {
    hash.get(..SHORT_HASH).unwrap_or(hash)
}

pub(crate) fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

pub(crate) fn version_cell(v: u64) -> String {
    if v == 0 { "-".into() } else { v.to_string() }
}

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(crate) fn labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    #[allow(clippy::cast_precision_loss)] // one decimal is all a table shows
    let scaled = |unit: u64| bytes as f64 / unit as f64;
    if bytes < KIB {
        format!("{bytes} B")
    } else if bytes < KIB * KIB {
        format!("{:.1} KiB", scaled(KIB))
    } else {
        format!("{:.1} MiB", scaled(KIB * KIB))
    }
}

/// 10000-01-01T00:00:00Z: RFC 3339 has four-digit years, and humantime
/// refuses to format later instants.
pub(crate) const MAX_RFC3339_UNIX_MS: u64 = 253_402_300_800_000;

pub(crate) fn system_time(unix_ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(unix_ms)
        .ok()
        .filter(|&ms| ms > 0 && ms < MAX_RFC3339_UNIX_MS)?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// RFC 3339 UTC with milliseconds (`2025-11-26T14:30:00.123Z`); `None` for "never".
pub(crate) fn rfc3339(unix_ms: i64) -> Option<String> {
    system_time(unix_ms).map(|t| humantime::format_rfc3339_millis(t).to_string())
}

pub(crate) fn rfc3339_seconds(unix_ms: i64) -> Option<String> {
    system_time(unix_ms).map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

/// A table's time column: the JSON timestamp cut to seconds.
pub(crate) fn table_time(rfc3339: Option<&str>) -> String {
    match rfc3339 {
        Some(t) => humantime::parse_rfc3339(t)
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_else(|_| t.to_owned()),
        None => "-".into(),
    }
}

/// How long ago `then_ms` was, roughly: `42s`, `5m`, `3h`, `2d`.
pub(crate) fn since(then_ms: i64, now_ms: i64) -> String {
    if then_ms <= 0 {
        return "-".into();
    }
    let secs = now_ms.saturating_sub(then_ms).max(0) / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
