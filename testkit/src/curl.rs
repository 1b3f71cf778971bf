//! HTTP calls with curl, as a script would make them: the status, the
//! headers and the body of one answer ([`Answer`]).

use std::process::Command;
use std::time::{Duration, Instant};

/// An HTTP answer as curl saw it.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
    /// How long the call took.
    pub took: Duration,
}

impl Answer {
    /// The first header called `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }
}

/// `curl -si <args> URL`: its answer (headers and body).
#[track_caller]
pub fn curl(url: &str, args: &[&str]) -> Answer {
    let started = Instant::now();
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "90"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let took = started.elapsed();
    assert!(out.status.success(), "curl {args:?} {url}: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
        took,
    }
}
