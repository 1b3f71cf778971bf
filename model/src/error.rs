//! Errors of the domain model. Their `Display` is what an operator reads: in
//! `vanectl`'s stderr, and as the reason of an agent's NACK.

use std::fmt;

/// One problem with one field: `route_tables[0].routes[2].cluster: unknown cluster "paymnets"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field from the snapshot's root, e.g. `clusters[1].endpoints[0].weight`.
    pub path: String,
    /// Why the value is refused.
    pub reason: String,
}

impl FieldError {
    /// A new error at `path`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for FieldError {}

/// Every problem found in one snapshot, in field order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    errors: Vec<FieldError>,
}

impl ValidationError {
    /// Wraps a non-empty list of errors. Returns `None` for an empty list.
    pub fn from_errors(errors: Vec<FieldError>) -> Option<Self> {
        if errors.is_empty() {
            None
        } else {
            Some(Self { errors })
        }
    }

    /// A single error.
    pub fn single(error: FieldError) -> Self {
        Self {
            errors: vec![error],
        }
    }

    /// The errors, in field order.
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }
}

/// Most errors [`ValidationError`]'s `Display` lists; the rest are counted.
pub const MAX_DISPLAYED_ERRORS: usize = 20;

impl fmt::Display for ValidationError {
    /// One line: the first [`MAX_DISPLAYED_ERRORS`] errors joined by "; ",
    /// then how many more there are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().take(MAX_DISPLAYED_ERRORS).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        let more = self.errors.len().saturating_sub(MAX_DISPLAYED_ERRORS);
        if more > 0 {
            write!(f, "; … and {more} more errors")?;
        }
        Ok(())
    }
}

impl From<FieldError> for ValidationError {
    fn from(e: FieldError) -> Self {
        Self::single(e)
    }
}

/// A snapshot file that could not be read as a snapshot at all (before validation).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file holds nothing but whitespace or comments.
    #[error("the file is empty")]
    Empty,
    /// The file is not valid YAML/JSON, or does not have the snapshot's shape
    /// (unknown field, wrong type). `path` names the field when known.
    #[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
    Syntax {
        /// Field path, e.g. `listeners[0]`; empty at the root.
        path: String,
        /// What the parser said, with line and column when it knows them.
        message: String,
    },
    /// The file is larger than the reader accepts.
    #[error("the file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Size of the file.
        size: u64,
        /// The limit.
        limit: u64,
    },
}
