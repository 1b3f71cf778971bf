//! The validated flag types: a [`Flag`], its state and the type of its
//! values.

use std::collections::BTreeMap;

use vane_jsonlogic::Rule;

/// The one variant of a value served as a flag.
pub const STATIC_VARIANT: &str = "value";

/// A validated feature flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    /// Whether the flag is served.
    pub state: FlagState,
    /// Named values, all of [`Flag::flag_type`].
    pub variants: BTreeMap<String, serde_json::Value>,
    /// A key of `variants`.
    pub default_variant: String,
    /// JSON Logic returning a variant name (or a boolean naming `"true"` /
    /// `"false"`, or null for the default).
    pub targeting: Option<Rule>,
    /// Strings, numbers and booleans handed to clients with each evaluation.
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl Flag {
    /// The type of every variant's value.
    pub fn flag_type(&self) -> FlagType {
        self.variants
            .get(&self.default_variant)
            .and_then(FlagType::of)
            .unwrap_or(FlagType::Object)
    }

    /// A value served as a static flag, when it has a flag type.
    pub fn from_value(value: &serde_json::Value) -> Option<Flag> {
        FlagType::of(value)?;
        Some(Flag {
            state: FlagState::Enabled,
            variants: [(STATIC_VARIANT.to_owned(), value.clone())].into(),
            default_variant: STATIC_VARIANT.to_owned(),
            targeting: None,
            metadata: BTreeMap::new(),
        })
    }
}

/// Whether a flag is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagState {
    /// Evaluated normally.
    Enabled,
    /// Not served: clients fall back to their code's default (reason
    /// `DISABLED`).
    Disabled,
}

impl FlagState {
    /// The name in files: `ENABLED` or `DISABLED`.
    pub fn as_str(self) -> &'static str {
        match self {
            FlagState::Enabled => "ENABLED",
            FlagState::Disabled => "DISABLED",
        }
    }
}

/// The type of a flag's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagType {
    /// `true` / `false`.
    Boolean,
    /// Text.
    String,
    /// Integer or float.
    Number,
    /// A JSON object.
    Object,
}

impl FlagType {
    /// The type of `value`; `None` for null and arrays, which flagd does not
    /// take as flag values.
    pub fn of(value: &serde_json::Value) -> Option<FlagType> {
        use serde_json::Value;
        match value {
            Value::Bool(_) => Some(FlagType::Boolean),
            Value::String(_) => Some(FlagType::String),
            Value::Number(_) => Some(FlagType::Number),
            Value::Object(_) => Some(FlagType::Object),
            Value::Null | Value::Array(_) => None,
        }
    }

    /// The name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            FlagType::Boolean => "boolean",
            FlagType::String => "string",
            FlagType::Number => "number",
            FlagType::Object => "object",
        }
    }
}
