//! vanectl's failures and their exit codes: what went wrong, said in one line,
//! and whether the server refused, the user erred, or the server was not there.

use std::error::Error as _;
use std::fmt;

use tonic::{Code, Status};

use vane_tls::{Hints, tls_failure};

/// Why vanectl failed; decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The server answered and refused (validation, compare-and-set conflict,
    /// unknown group or version, or any other status it returned deliberately). Exit 1.
    Refused,
    /// Bad usage or an unreadable, unparsable or empty file. Exit 2 (as clap's own usage errors).
    Usage,
    /// No answer from the server: connection refused, unavailable, timed
    /// out, or a TLS handshake that failed (unknown CA, expired or misnamed
    /// certificate, client certificate refused). Exit 3.
    Unreachable,
    /// What vanectl waited for had not happened when the time given passed
    /// (`push --wait`, `rollout status -w --timeout`). Exit 4.
    TimedOut,
}

impl Failure {
    /// The process exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Failure::Refused => 1,
            Failure::Usage => 2,
            Failure::Unreachable => 3,
            Failure::TimedOut => 4,
        }
    }
}

/// A failure with the one-line message printed as `error: <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// What kind of failure (the exit code).
    pub kind: Failure,
    /// What happened, naming the field and the reason when there is one.
    pub message: String,
    /// What to print on standard output before the error (for a wait that
    /// failed: the result and who refused or is missing); usually empty.
    pub output: String,
}

impl CliError {
    /// The server refused.
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(Failure::Refused, message)
    }

    /// A usage or file error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Failure::Usage, message)
    }

    /// Not an error to report but a result with exit 1 (`diff -f` found a
    /// difference, as `kubectl diff`): `output` is printed, nothing on stderr.
    pub fn differs(output: impl Into<String>) -> Self {
        Self::new(Failure::Refused, "").with_output(output)
    }

    /// The server could not be reached.
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self::new(Failure::Unreachable, message)
    }

    /// What was waited for did not happen in time.
    pub fn timed_out(message: impl Into<String>) -> Self {
        Self::new(Failure::TimedOut, message)
    }

    /// The same failure, with `output` to print on standard output first.
    #[must_use]
    pub fn with_output(mut self, output: impl Into<String>) -> Self {
        self.output = output.into();
        self
    }

    fn new(kind: Failure, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            output: String::new(),
        }
    }

    /// Classifies a gRPC status from a call to the server at `server`.
    ///
    /// A status that tonic made up on our side (it carries the transport error
    /// as its source), and Unavailable or DeadlineExceeded from anywhere, mean
    /// the server was not reached or did not answer in time. Every other code
    /// was sent by the server on purpose, and its message already names the
    /// field and the reason, so it is passed through unchanged: that includes
    /// Unauthenticated and PermissionDenied (exit 1), whose messages name
    /// the identity, the action and the group.
    ///
    /// A TLS failure is said as such: under TLS 1.3 a server that refuses
    /// the client certificate says so only once the first call is under way.
    pub fn from_status(status: &Status, server: &str) -> Self {
        let message = status.message();
        let local = status.source().is_some();
        if let Some(tls) = status.source().and_then(|e| tls_failure(e, Hints::VANECTL)) {
            return Self::unreachable(format!(
                "cannot reach the control server at {server}: {tls}"
            ));
        }
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded => Self::unreachable(format!(
                "cannot reach the control server at {server}: {}",
                with_sources(message, status.source())
            )),
            _ if local => Self::unreachable(format!(
                "lost the connection to the control server at {server}: {}",
                plaintext_hint(server, with_sources(message, status.source()))
            )),
            Code::Unimplemented => Self::refused(format!(
                "the server at {server} does not serve this call (is it a vane-control of the same version?): {}",
                or_code(message, status.code())
            )),
            // The server's gRPC layer refused to decode a request that large,
            // before the snapshot size check could say so in its own words.
            Code::OutOfRange if message.contains("message length too large") => {
                Self::refused(format!(
                    "snapshot: the push is larger than the server accepts ({})",
                    message.trim_start_matches("Error, ")
                ))
            }
            code => Self::refused(or_code(message, code)),
        }
    }

    /// A transport error while connecting to `server` (a failed TLS
    /// handshake included).
    pub fn from_transport(error: &tonic::transport::Error, server: &str) -> Self {
        // tonic's own text is a bare "transport error"; the cause says what happened.
        let detail = match (tls_failure(error, Hints::VANECTL), error.source()) {
            (Some(tls), _) => tls,
            (None, Some(cause)) => with_sources(&cause.to_string(), cause.source()),
            (None, None) => error.to_string(),
        };
        Self::unreachable(format!(
            "cannot reach the control server at {server}: {}",
            plaintext_hint(server, detail)
        ))
    }
}

impl fmt::Display for CliError {
    /// One line, whatever the message holds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for line in self
            .message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(line)?;
            first = false;
        }
        Ok(())
    }
}

impl std::error::Error for CliError {}

/// A plaintext client talking to a TLS server reads the server's TLS alert
/// as an HTTP/2 frame header announcing an absurd size: say what that means.
fn plaintext_hint(server: &str, detail: String) -> String {
    if server.starts_with("http://") && detail.contains("frame with invalid size") {
        format!("{detail} (is the server serving TLS? try https://)")
    } else {
        detail
    }
}

fn or_code(message: &str, code: Code) -> String {
    if message.is_empty() {
        code.description().to_owned()
    } else {
        message.to_owned()
    }
}

/// `message: source: source's source`, skipping parts already said (tonic's
/// and hyper's errors often repeat their source in their own text).
fn with_sources(message: &str, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut out = message.to_owned();
    while let Some(e) = source {
        let text = e.to_string();
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        source = e.source();
    }
    if out.is_empty() {
        "no answer".to_owned()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "http://127.0.0.1:7070";

    #[test]
    fn exit_codes() {
        assert_eq!(Failure::Refused.exit_code(), 1);
        assert_eq!(Failure::Usage.exit_code(), 2);
        assert_eq!(Failure::Unreachable.exit_code(), 3);
        assert_eq!(Failure::TimedOut.exit_code(), 4);
        let e = CliError::timed_out("late").with_output("n1 STALE\n");
        assert_eq!(e.kind.exit_code(), 4);
        assert_eq!(e.output, "n1 STALE\n");
        assert_eq!(e.to_string(), "late");
    }

    #[test]
    fn deliberate_statuses_are_refusals_with_the_servers_message() {
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::NotFound,
            Code::OutOfRange,
            Code::AlreadyExists,
            Code::ResourceExhausted,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::Internal,
            Code::DataLoss,
            Code::Unknown,
            Code::Cancelled,
        ] {
            let msg = r#"route_tables[0].routes[2].cluster: unknown cluster "paymnets""#;
            let e = CliError::from_status(&Status::new(code, msg), SERVER);
            assert_eq!(e.kind, Failure::Refused, "{code:?}");
            assert_eq!(e.message, msg);
        }
    }

    #[test]
    fn unavailable_and_deadline_are_unreachable() {
        for code in [Code::Unavailable, Code::DeadlineExceeded] {
            let e = CliError::from_status(&Status::new(code, "connection refused"), SERVER);
            assert_eq!(e.kind, Failure::Unreachable);
            assert_eq!(
                e.message,
                "cannot reach the control server at http://127.0.0.1:7070: connection refused"
            );
        }
    }

    #[test]
    fn statuses_made_on_our_side_are_unreachable() {
        // tonic turns transport failures into statuses that carry the error as source.
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let status = Status::from_error(Box::new(io));
        let e = CliError::from_status(&status, SERVER);
        assert_eq!(e.kind, Failure::Unreachable);
        assert!(e.message.contains("broken pipe"), "{}", e.message);
    }

    #[test]
    fn tls_failures_behind_a_status_are_unreachable_and_say_why() {
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: CertificateExpired",
        );
        let status = Status::from_error(Box::new(alert));
        let e = CliError::from_status(&status, SERVER);
        assert_eq!(e.kind, Failure::Unreachable);
        assert_eq!(
            e.message,
            "cannot reach the control server at http://127.0.0.1:7070: TLS handshake failed: \
             received fatal alert: CertificateExpired \
             (the server refused the client certificate (--cert): it has expired)"
        );
    }

    #[test]
    fn plaintext_to_a_tls_server_gets_a_hint() {
        assert_eq!(
            plaintext_hint(SERVER, "h2: frame with invalid size".into()),
            "h2: frame with invalid size (is the server serving TLS? try https://)"
        );
        assert_eq!(
            plaintext_hint("https://h:1", "h2: frame with invalid size".into()),
            "h2: frame with invalid size"
        );
    }

    #[test]
    fn unimplemented_hints_at_the_wrong_server() {
        let e = CliError::from_status(&Status::unimplemented(""), SERVER);
        assert_eq!(e.kind, Failure::Refused);
        assert!(e.message.contains("does not serve this call"));
    }

    #[test]
    fn oversize_requests_name_the_snapshot() {
        let status = Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 8 bytes",
        );
        let e = CliError::from_status(&status, SERVER);
        assert_eq!(e.kind, Failure::Refused);
        assert_eq!(
            e.message,
            "snapshot: the push is larger than the server accepts \
             (decoded message length too large: found 9 bytes, the limit is: 8 bytes)"
        );
    }

    #[test]
    fn empty_message_falls_back_to_the_code() {
        let e = CliError::from_status(&Status::new(Code::Aborted, ""), SERVER);
        assert_eq!(e.message, Code::Aborted.description());
    }

    #[test]
    fn display_is_one_line() {
        let e = CliError::refused("first\n  second\n\nthird");
        assert_eq!(e.to_string(), "first second third");
    }

    #[test]
    fn sources_are_not_repeated() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            with_sources("tcp connect: refused", Some(&inner)),
            "tcp connect: refused"
        );
        assert_eq!(
            with_sources("tcp connect", Some(&inner)),
            "tcp connect: refused"
        );
    }
}
