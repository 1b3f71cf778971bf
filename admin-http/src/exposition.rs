//! `GET /metrics` answered in the format the scraper asks for, written once
//! for the three endpoints: the Prometheus text format 0.0.4 by default
//! (what `promtool check metrics` and most scrapers read), OpenMetrics when
//! the `Accept` header names `application/openmetrics-text`.
//!
//! prometheus-client only writes OpenMetrics, whose counter families are
//! named without `_total` on their `# HELP` and `# TYPE` lines (samples
//! carry it; prometheus/client_rust#51, #194). In 0.0.4 the family and its
//! samples share one name, so [`to_prometheus_text`] renames a counter's
//! family to its sample name, turns `info` into a gauge named like its
//! sample and `unknown` into `untyped`, and drops `# UNIT`, exemplars and
//! `# EOF`, which 0.0.4 does not have.

use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The Content-Type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The Content-Type of OpenMetrics text.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether a request with `headers` asked for OpenMetrics.
pub fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers.get_all(ACCEPT).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|range| {
                let media = range.split(';').next().unwrap_or("").trim();
                media.eq_ignore_ascii_case("application/openmetrics-text")
            })
        })
    })
}

/// The answer to `GET /metrics` from the registry's OpenMetrics text
/// (`openmetrics`, as prometheus-client encodes it), in the format the
/// request's `headers` ask for.
pub fn respond(headers: &HeaderMap, openmetrics: Result<String, std::fmt::Error>) -> Response {
    let text = match openmetrics {
        Ok(text) => text,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding metrics failed: {e}\n"),
            )
                .into_response();
        }
    };
    let (body, content_type) = if wants_openmetrics(headers) {
        (text, OPENMETRICS_TEXT)
    } else {
        (to_prometheus_text(&text), PROMETHEUS_TEXT)
    };
    (
        StatusCode::OK,
        [(CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// Rewrites OpenMetrics text (as prometheus-client writes it: `# HELP`
/// before `# TYPE`, one family's lines together) as the Prometheus text
/// format 0.0.4.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + openmetrics.len() / 16);
    // A family's HELP line waits for its TYPE, which decides its name.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take());
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (renamed, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            match help.take() {
                Some((h, text)) if h == name => {
                    out.push_str(&format!("# HELP {renamed} {text}\n"));
                }
                other => flush_help(&mut out, other),
            }
            out.push_str(&format!("# TYPE {renamed} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            flush_help(&mut out, help.take());
            // An exemplar follows ` # ` on a sample line; label values
            // cannot hide one (a `#` there is inside quotes, and is only
            // followed by a space and `{` in an exemplar).
            let sample = line
                .match_indices(" # {")
                .find(|(i, _)| !inside_quotes(&line[..*i]))
                .map_or(line, |(i, _)| &line[..i]);
            out.push_str(sample);
            out.push('\n');
        }
    }
    flush_help(&mut out, help);
    out
}

/// A HELP line whose TYPE did not follow, written as it was.
fn flush_help(out: &mut String, help: Option<(&str, &str)>) {
    if let Some((name, text)) = help {
        out.push_str(&format!("# HELP {name} {text}\n"));
    }
}

/// Whether the end of `prefix` is inside a quoted label value.
fn inside_quotes(prefix: &str) -> bool {
    let mut inside = false;
    let mut escaped = false;
    for c in prefix.chars() {
        match c {
            '\\' if inside && !escaped => escaped = true,
            '"' if !escaped => inside = !inside,
            _ => escaped = false,
        }
        if c != '\\' {
            escaped = false;
        }
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::{Registry, Unit};

    fn encoded(r: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, r).unwrap();
        s
    }

    #[test]
    fn counters_are_named_by_their_samples_and_the_rest_is_kept() {
        let mut r = Registry::default();
        let c: Family<Vec<(String, String)>, Counter> = Family::default();
        c.get_or_create(&vec![("group".into(), "a \"#\" {b}".into())])
            .inc_by(3);
        r.register("vane_x_acks", "ACKs, per group", c);
        let g = Gauge::<i64>::default();
        g.set(-2);
        r.register_with_unit("vane_x_lag", "Lag", Unit::Seconds, g);
        let h = Histogram::new([0.5, 1.0]);
        h.observe(0.7);
        r.register("vane_x_latency_seconds", "Latency", h);
        r.register(
            "vane_x_build",
            "Build",
            Info::new(vec![("version", "1".to_owned())]),
        );
        let om = encoded(&r);
        assert!(om.contains("# TYPE vane_x_acks counter\n"), "{om}");
        let text = to_prometheus_text(&om);
        let expected = [
            "# HELP vane_x_acks_total ACKs, per group.",
            "# TYPE vane_x_acks_total counter",
            r##"vane_x_acks_total{group="a \"#\" {b}"} 3"##,
            "# HELP vane_x_lag_seconds Lag.",
            "# TYPE vane_x_lag_seconds gauge",
            "vane_x_lag_seconds -2",
            "# TYPE vane_x_latency_seconds histogram",
            r#"vane_x_latency_seconds_bucket{le="1.0"} 1"#,
            "vane_x_latency_seconds_count 1",
            "# TYPE vane_x_build_info gauge",
            r#"vane_x_build_info{version="1"} 1"#,
        ];
        for line in expected {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("# UNIT"), "{text}");
    }

    #[test]
    fn exemplars_are_dropped_but_not_hashes_in_label_values() {
        let om =
            "# HELP a A\n# TYPE a counter\na_total{x=\"v # {y}\"} 1 # {trace=\"t\"} 1.0\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_total A\n# TYPE a_total counter\na_total{x=\"v # {y}\"} 1\n"
        );
    }

    #[test]
    fn accept_chooses_the_format() {
        let mut h = HeaderMap::new();
        assert!(!wants_openmetrics(&h));
        h.insert(
            ACCEPT,
            HeaderValue::from_static(
                "application/openmetrics-text;version=1.0.0;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            ),
        );
        assert!(wants_openmetrics(&h));
        h.insert(ACCEPT, HeaderValue::from_static("text/plain;version=0.0.4"));
        assert!(!wants_openmetrics(&h));
    }
}
