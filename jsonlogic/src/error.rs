//! The two errors of the crate: a rule that does not compile, and an
//! evaluation that could not finish.

/// A rule that does not compile: where (`if[1].fractional[0]`, empty for
/// the whole rule) and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}{}{reason}", if .path.is_empty() { "" } else { ": " })]
pub struct CompileError {
    /// Where in the rule: operators and argument indexes, `if[1].fractional[0]`.
    pub path: String,
    /// What is wrong there, in words.
    pub reason: String,
}

/// An evaluation that could not finish (too deep data, too much work);
/// its `Display` says which.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(String);

impl EvalError {
    pub(crate) fn new(message: String) -> EvalError {
        EvalError(message)
    }
}
