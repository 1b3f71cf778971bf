//! Evaluating a flag for an evaluation context, the way flagd does: no
//! targeting serves the default variant (`STATIC`); targeting that returns
//! a variant name (or a boolean, naming the variant `"true"` or `"false"`,
//! or a number, naming the variant it prints as: `2` names `"2"`)
//! serves that variant (`TARGETING_MATCH`); targeting that returns null
//! serves the default (`DEFAULT`); a disabled flag is not served.

use std::collections::BTreeMap;

use serde_json::Value;

use super::types::{Flag, FlagState};
use crate::snapshot::Snapshot;

/// Why an evaluation gave its value (OpenFeature's resolution reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No targeting: the default variant.
    Static,
    /// Targeting returned null: the default variant.
    Default,
    /// Targeting picked the variant.
    TargetingMatch,
}

impl Reason {
    /// OpenFeature's name: `STATIC`, `DEFAULT` or `TARGETING_MATCH`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::Default => "DEFAULT",
            Reason::TargetingMatch => "TARGETING_MATCH",
        }
    }
}

/// A flag's value for one context.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The variant's value.
    pub value: Value,
    /// The variant's name.
    pub variant: String,
    /// Why.
    pub reason: Reason,
    /// The flag's metadata.
    pub metadata: BTreeMap<String, Value>,
}

/// Why a flag has no value for a context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// No flag (and no value) of that key.
    #[error("flag {0:?} not found")]
    NotFound(String),
    /// The flag's state is `DISABLED`.
    #[error("flag {0:?} is disabled")]
    Disabled(String),
    /// The targeting rule failed on this context.
    #[error("targeting of flag {key:?} failed: {reason}")]
    Targeting {
        /// The flag.
        key: String,
        /// The rule's error.
        reason: String,
    },
    /// The targeting rule returned something that names no variant.
    #[error("targeting of flag {key:?} returned {returned}, which names no variant")]
    NoVariant {
        /// The flag.
        key: String,
        /// What it returned, as JSON.
        returned: String,
    },
}

impl EvalError {
    /// OpenFeature's error code.
    pub fn code(&self) -> &'static str {
        match self {
            EvalError::NotFound(_) => "FLAG_NOT_FOUND",
            EvalError::Targeting { .. } | EvalError::NoVariant { .. } | EvalError::Disabled(_) => {
                "GENERAL"
            }
        }
    }
}

impl Snapshot {
    /// Evaluates the flag `key` for `context` at `now_unix_secs`.
    pub fn evaluate_flag(
        &self,
        key: &str,
        context: &serde_json::Map<String, Value>,
        now_unix_secs: u64,
    ) -> Result<Evaluation, EvalError> {
        let flag = self
            .flag(key)
            .ok_or_else(|| EvalError::NotFound(key.to_owned()))?;
        evaluate(key, &flag, context, now_unix_secs)
    }
}

/// Evaluates `flag` (called `key`) for `context`.
pub fn evaluate(
    key: &str,
    flag: &Flag,
    context: &serde_json::Map<String, Value>,
    now_unix_secs: u64,
) -> Result<Evaluation, EvalError> {
    if flag.state == FlagState::Disabled {
        return Err(EvalError::Disabled(key.to_owned()));
    }
    let served = |variant: &str, reason: Reason| {
        let value = flag
            .variants
            .get(variant)
            .cloned()
            .ok_or_else(|| EvalError::NoVariant {
                key: key.to_owned(),
                returned: Value::String(variant.to_owned()).to_string(),
            })?;
        Ok(Evaluation {
            value,
            variant: variant.to_owned(),
            reason,
            metadata: flag.metadata.clone(),
        })
    };
    let Some(rule) = &flag.targeting else {
        return served(&flag.default_variant, Reason::Static);
    };
    let data = vane_jsonlogic::flagd_context(key, context, now_unix_secs);
    let result = rule.apply(&data).map_err(|e| EvalError::Targeting {
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    match result {
        Value::Null => served(&flag.default_variant, Reason::Default),
        Value::String(s) => served(&s, Reason::TargetingMatch),
        Value::Bool(b) => served(if b { "true" } else { "false" }, Reason::TargetingMatch),
        // As the providers do (`toString()`): 2 names the variant "2".
        Value::Number(n) => match n.as_f64() {
            Some(x) => served(&vane_jsonlogic::js_number_string(x), Reason::TargetingMatch),
            None => Err(EvalError::NoVariant {
                key: key.to_owned(),
                returned: n.to_string(),
            }),
        },
        other => Err(EvalError::NoVariant {
            key: key.to_owned(),
            returned: other.to_string(),
        }),
    }
}
