//! JSON Logic rules as flagd evaluates them: compiled with validation that
//! names the path, applied to an evaluation context, with flagd's custom
//! operators `fractional`, `sem_ver`, `starts_with` and `ends_with`.
//!
//! # Layout
//! - `compile`: the checked tree and its errors (`if[1].fractional[0]: …`).
//! - `apply`: evaluation, with a work budget; `ops/`: the eager operators.
//! - `value`: the values and JavaScript's coercions (json-logic-js semantics,
//!   which flagd's providers share).
//! - `fractional`, `semver`, `murmur`: flagd's operators and the hash that
//!   buckets `fractional`.
//!
//! The same flag definitions are evaluated by flagd's own providers, so the
//! answers here must be theirs: see each module for which behaviour of
//! flagd it follows.
//!
//! # Where flagd's providers disagree
//! flagd's Go core, its JavaScript core (json-logic-engine) and its Python
//! core (json_logic) do not agree on every corner of JSON Logic; where
//! they split, this crate takes json-logic-js's answer unless two of the
//! providers share another:
//! - `var` with a default also takes the default for a present `null`
//!   (JavaScript and Python providers; json-logic-js would give `null`).
//! - Where json-logic-engine throws (arithmetic or `<` on non-numbers
//!   giving NaN, `in` on a non-string), the answer is json-logic-js's value.
//! - `fractional` with a bucketing key that evaluates to `null` treats it
//!   as a malformed bucket and gives `null`, as the JavaScript and Python
//!   providers do (the Go core falls back to the targeting key).
//! - `fractional` hashes the UTF-8 bytes of the key (Go, Python); the
//!   JavaScript provider hashes UTF-16 code units, which differs for keys
//!   that are not ASCII.
//! - Refused at compile time although flagd would evaluate them: literal
//!   non-string bucket variants, negative literal weights, buckets of more
//!   than two items, operators outside JSON Logic and flagd's four.

mod apply;
mod compile;
mod error;
mod fractional;
mod murmur;
mod ops;
mod semver;
mod value;

use serde_json::{Map, Value, json};

use crate::compile::Node;
pub use crate::error::{CompileError, EvalError};

/// A number as JavaScript prints it (`2`, `2.5`, `1e+21`): how flagd's
/// providers turn a numeric targeting result into a variant name.
pub fn js_number_string(x: f64) -> String {
    value::number_to_string(x)
}
use crate::value::Val;

/// A compiled, checked JSON Logic rule, with the JSON it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    source: Value,
    root: Node,
}

impl Rule {
    /// Checks and compiles a rule. Refuses unknown operators, objects with
    /// more than one key in operator position, wrong arities, statically
    /// wrong shapes (`fractional` buckets, negative weights, an unknown
    /// `sem_ver` comparison, a `var` path that is not a string or number),
    /// nesting deeper than 64, and `$ref` (shared `$evaluators` are not
    /// supported).
    pub fn compile(source: &Value) -> Result<Rule, CompileError> {
        Ok(Rule {
            root: compile::compile(source)?,
            source: source.clone(),
        })
    }

    /// The JSON the rule was compiled from.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// Applies the rule to `data` (the evaluation context, see
    /// [`flagd_context`]). Fails only when the data nests too deeply or the
    /// rule would do too much work on it; everything else is a value, as in
    /// JSON Logic (`null` where flagd's operators give up).
    pub fn apply(&self, data: &Value) -> Result<Value, EvalError> {
        let data = Val::from_json(data).ok_or_else(|| {
            EvalError::new(format!(
                "the data nests deeper than {} levels",
                value::MAX_DATA_DEPTH
            ))
        })?;
        Ok(apply::Eval::new().eval(&self.root, &data)?.to_json())
    }

    /// String literals the rule can return as its result, with their paths:
    /// a top-level string, the then/else branches of `if` (recursively),
    /// `fractional` bucket variants. Each should name a variant of the flag.
    pub fn result_literals(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        compile::result_literals(&self.root, "", &mut out);
        out
    }
}

/// The data flagd evaluates a flag's targeting against: the caller's
/// context plus `$flagd: {"flagKey": key, "timestamp": now}` (whole
/// seconds since the Unix epoch), replacing any `$flagd` the caller sent,
/// as flagd and its providers do.
pub fn flagd_context(flag_key: &str, context: &Map<String, Value>, now_unix_secs: u64) -> Value {
    let mut data = context.clone();
    data.insert(
        "$flagd".to_owned(),
        json!({ "flagKey": flag_key, "timestamp": now_unix_secs }),
    );
    Value::Object(data)
}
