//! Logging set up once for `vane-control`, the `vane-agent` sidecar and
//! `vane-proxy`: to stderr, as text or one JSON object per line, colours
//! only when stderr is a terminal (never ANSI codes in a log file), at the
//! level of `--log-level` unless `RUST_LOG` is set (it wins, as it does
//! for every Rust program operators know).

use std::io::IsTerminal as _;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// How each line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The least severe level written, `--log-level`'s value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Debug lines and above.
    Debug,
    /// Info lines and above (the default).
    #[default]
    Info,
    /// Warnings and errors.
    Warn,
    /// Errors only.
    Error,
    /// Nothing.
    Off,
}

/// The names `--log-level` takes.
pub const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

impl FromStr for LogLevel {
    type Err = String;

    /// One of [`LEVELS`], any case; the error names the value and the choices.
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "trace" => Self::Trace,
            "debug" => Self::Debug,
            "info" => Self::Info,
            "warn" | "warning" => Self::Warn,
            "error" => Self::Error,
            "off" => Self::Off,
            _ => {
                return Err(format!(
                    "{s:?} is not a log level (one of {})",
                    LEVELS.join(", ")
                ));
            }
        })
    }
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
            Self::Off => "off",
        }
    }
}

/// `--log-level`'s value parser (clap takes any `fn(&str) -> Result<T, E>`).
pub fn parse_level(s: &str) -> Result<LogLevel, String> {
    s.parse()
}

/// The filter: `RUST_LOG` when it is set and parses, else `level`.
fn filter(level: LogLevel) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            eprintln!(
                "RUST_LOG={v:?} does not parse ({e}); logging at {}",
                level.directive()
            );
            EnvFilter::new(level.directive())
        }),
        _ => EnvFilter::new(level.directive()),
    }
}

/// Installs the process's logger: stderr, `format`, `level` (see the
/// module doc). Call once, first thing in `main`; a second call is ignored.
pub fn init(format: LogFormat, level: LogLevel) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Already installed (a test, an embedder): theirs stays.
    drop(installed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_nonsense_is_named() {
        assert_eq!(parse_level("DEBUG"), Ok(LogLevel::Debug));
        assert_eq!(parse_level("off"), Ok(LogLevel::Off));
        let e = parse_level("nonsense").unwrap_err();
        assert!(
            e.contains("\"nonsense\"") && e.contains("trace, debug"),
            "{e}"
        );
    }
}
