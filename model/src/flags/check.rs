//! The rules a flag definition must pass, with the path of each problem
//! (`flags["new-checkout"].defaultVariant: no variant "of" (variants: off, on)`).

use std::collections::BTreeMap;

use serde_json::Value;
use vane_jsonlogic::Rule;

use super::types::{Flag, FlagState, FlagType};
use crate::error::FieldError;
use crate::limits::{MAX_VALUE_DEPTH, MAX_VALUE_KEY_LEN, nested_deeper_than};
use crate::spec::FlagSpec;

/// Validates every flag; `values` is the snapshot's values (a key may not be
/// both). Problems are appended to `errors`.
pub(crate) fn flags(
    specs: BTreeMap<String, FlagSpec>,
    values: &BTreeMap<String, Value>,
    errors: &mut Vec<FieldError>,
) -> BTreeMap<String, Flag> {
    let mut out = BTreeMap::new();
    for (key, spec) in specs {
        let path = format!("flags[{key:?}]");
        if key.is_empty() {
            errors.push(FieldError::new("flags", "keys must not be empty"));
            continue;
        }
        if key.len() > MAX_VALUE_KEY_LEN {
            errors.push(FieldError::new(
                path,
                format!("key is over {MAX_VALUE_KEY_LEN} characters"),
            ));
            continue;
        }
        if values.contains_key(&key) {
            errors.push(FieldError::new(
                path,
                "is also a key of values (each value is served as a flag of its key)",
            ));
            continue;
        }
        if let Some(flag) = flag(&path, spec, errors) {
            out.insert(key, flag);
        }
    }
    out
}

fn flag(path: &str, spec: FlagSpec, errors: &mut Vec<FieldError>) -> Option<Flag> {
    let before = errors.len();
    let FlagSpec {
        state,
        variants,
        default_variant,
        targeting,
        metadata,
    } = spec;
    let state = match state.as_deref() {
        Some("ENABLED") => Some(FlagState::Enabled),
        Some("DISABLED") => Some(FlagState::Disabled),
        Some(other) => {
            errors.push(FieldError::new(
                format!("{path}.state"),
                format!("must be ENABLED or DISABLED, got {other:?}"),
            ));
            None
        }
        None => {
            errors.push(FieldError::new(
                format!("{path}.state"),
                "is required (ENABLED or DISABLED)",
            ));
            None
        }
    };
    check_variants(path, &variants, errors);
    match &default_variant {
        None => errors.push(FieldError::new(
            format!("{path}.defaultVariant"),
            "is required (the variant served when no rule picks one)",
        )),
        Some(d) if !variants.contains_key(d) && !variants.is_empty() => {
            errors.push(FieldError::new(
                format!("{path}.defaultVariant"),
                format!("no variant {d:?} ({})", names(&variants)),
            ))
        }
        Some(_) => {}
    }
    let targeting = match targeting {
        None => None,
        Some(Value::Object(m)) if m.is_empty() => None,
        Some(source @ Value::Object(_)) => compile(path, &source, &variants, errors),
        Some(_) => {
            // flagd's schema (and its Python provider) take only an object.
            errors.push(FieldError::new(
                format!("{path}.targeting"),
                "must be a JSON Logic operation (an object), or {} for none",
            ));
            None
        }
    };
    for (k, v) in &metadata {
        if k.is_empty() {
            errors.push(FieldError::new(
                format!("{path}.metadata"),
                "keys must not be empty",
            ));
        } else if !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            errors.push(FieldError::new(
                format!("{path}.metadata[{k:?}]"),
                "must be a string, a number or a boolean",
            ));
        }
    }
    if errors.len() > before {
        return None;
    }
    Some(Flag {
        state: state?,
        variants,
        default_variant: default_variant?,
        targeting,
        metadata,
    })
}

fn check_variants(path: &str, variants: &BTreeMap<String, Value>, errors: &mut Vec<FieldError>) {
    if variants.is_empty() {
        errors.push(FieldError::new(
            format!("{path}.variants"),
            "at least one variant is required",
        ));
        return;
    }
    let mut first: Option<(&str, FlagType)> = None;
    for (name, value) in variants {
        let at = format!("{path}.variants[{name:?}]");
        if name.is_empty() {
            errors.push(FieldError::new(
                format!("{path}.variants"),
                "variant names must not be empty",
            ));
            continue;
        }
        let Some(ty) = FlagType::of(value) else {
            let what = if value.is_null() { "null" } else { "an array" };
            errors.push(FieldError::new(
                at,
                format!("{what} is not a flag value (boolean, string, number or object)"),
            ));
            continue;
        };
        if nested_deeper_than(value, MAX_VALUE_DEPTH) {
            errors.push(FieldError::new(
                at,
                format!("arrays and objects are nested more than {MAX_VALUE_DEPTH} levels deep"),
            ));
            continue;
        }
        match first {
            None => first = Some((name, ty)),
            Some((other, other_ty)) if other_ty != ty => errors.push(FieldError::new(
                at,
                format!(
                    "is a {}, but variants[{other:?}] is a {}; every variant of a flag has one type",
                    ty.as_str(),
                    other_ty.as_str()
                ),
            )),
            Some(_) => {}
        }
    }
}

fn compile(
    path: &str,
    source: &Value,
    variants: &BTreeMap<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Option<Rule> {
    let at = |p: &str| {
        if p.is_empty() {
            format!("{path}.targeting")
        } else {
            format!("{path}.targeting.{p}")
        }
    };
    if nested_deeper_than(source, MAX_VALUE_DEPTH) {
        errors.push(FieldError::new(
            at(""),
            format!("arrays and objects are nested more than {MAX_VALUE_DEPTH} levels deep"),
        ));
        return None;
    }
    match Rule::compile(source) {
        Err(e) => {
            errors.push(FieldError::new(
                at(&e.path),
                format!("not valid JSON Logic: {}", e.reason),
            ));
            None
        }
        Ok(rule) => {
            for (p, name) in rule.result_literals() {
                if !variants.contains_key(&name) {
                    errors.push(FieldError::new(
                        at(&p),
                        format!(
                            "returns {name:?}, which is no variant ({})",
                            names(variants)
                        ),
                    ));
                }
            }
            Some(rule)
        }
    }
}

fn names(variants: &BTreeMap<String, Value>) -> String {
    let list: Vec<&str> = variants.keys().map(String::as_str).collect();
    format!("variants: {}", list.join(", "))
}
