//! Turning a JSON Logic rule into a checked tree: every operator known,
//! arities and static shapes checked, errors naming the path
//! (`if[1].fractional[0]`) where the rule went wrong.

use serde_json::Value;

use crate::error::CompileError;
use crate::semver::OPERATORS as SEMVER_OPERATORS;
use crate::value::Val;

/// How deep a rule may nest (objects and arrays both count).
pub(crate) const MAX_DEPTH: usize = 64;

/// An operator of JSON Logic or one of flagd's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Var,
    Missing,
    MissingSome,
    If,
    Eq,
    StrictEq,
    Ne,
    StrictNe,
    Not,
    NotNot,
    Or,
    And,
    Gt,
    Ge,
    Lt,
    Le,
    Max,
    Min,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Map,
    Filter,
    Reduce,
    All,
    None,
    Some,
    Merge,
    In,
    Cat,
    Substr,
    Fractional,
    SemVer,
    StartsWith,
    EndsWith,
}

impl Op {
    fn from_name(name: &str) -> Option<Op> {
        Some(match name {
            "var" => Op::Var,
            "missing" => Op::Missing,
            "missing_some" => Op::MissingSome,
            "if" | "?:" => Op::If,
            "==" => Op::Eq,
            "===" => Op::StrictEq,
            "!=" => Op::Ne,
            "!==" => Op::StrictNe,
            "!" => Op::Not,
            "!!" => Op::NotNot,
            "or" => Op::Or,
            "and" => Op::And,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            "max" => Op::Max,
            "min" => Op::Min,
            "+" => Op::Add,
            "-" => Op::Sub,
            "*" => Op::Mul,
            "/" => Op::Div,
            "%" => Op::Mod,
            "map" => Op::Map,
            "filter" => Op::Filter,
            "reduce" => Op::Reduce,
            "all" => Op::All,
            "none" => Op::None,
            "some" => Op::Some,
            "merge" => Op::Merge,
            "in" => Op::In,
            "cat" => Op::Cat,
            "substr" => Op::Substr,
            "fractional" => Op::Fractional,
            "sem_ver" => Op::SemVer,
            "starts_with" => Op::StartsWith,
            "ends_with" => Op::EndsWith,
            _ => return None,
        })
    }

    /// How many arguments the operator takes: at least, and at most.
    fn arity(self) -> (usize, usize) {
        match self {
            Op::Var => (0, 2),
            Op::Missing | Op::Add | Op::Merge | Op::Cat => (0, usize::MAX),
            Op::If | Op::Or | Op::And | Op::Max | Op::Min | Op::Mul | Op::Fractional => {
                (1, usize::MAX)
            }
            Op::Not | Op::NotNot => (1, 1),
            Op::Sub => (1, 2),
            Op::Lt | Op::Le => (2, 3),
            Op::Reduce | Op::Substr => (2, 3),
            Op::SemVer => (3, 3),
            Op::MissingSome
            | Op::Eq
            | Op::StrictEq
            | Op::Ne
            | Op::StrictNe
            | Op::Gt
            | Op::Ge
            | Op::Div
            | Op::Mod
            | Op::Map
            | Op::Filter
            | Op::All
            | Op::None
            | Op::Some
            | Op::In
            | Op::StartsWith
            | Op::EndsWith => (2, 2),
        }
    }
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// A literal: scalars and `{}`.
    Lit(Val),
    /// An array, whose items are evaluated (json-logic-js maps over it).
    Array(Vec<Node>),
    /// An operator and its arguments (a single non-array argument is
    /// taken as a list of one, as json-logic-js does).
    Op {
        op: Op,
        name: String,
        args: Vec<Node>,
    },
}

/// Compiles `source`, checking it.
pub(crate) fn compile(source: &Value) -> Result<Node, CompileError> {
    compile_at(source, "", 1)
}

fn err(path: &str, reason: impl Into<String>) -> CompileError {
    CompileError {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn join(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

fn compile_at(source: &Value, path: &str, depth: usize) -> Result<Node, CompileError> {
    if depth > MAX_DEPTH {
        return Err(err(
            path,
            format!("the rule nests deeper than {MAX_DEPTH} levels"),
        ));
    }
    match source {
        Value::Array(items) => Ok(Node::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| compile_at(item, &join(path, i), depth + 1))
                .collect::<Result<_, _>>()?,
        )),
        Value::Object(map) if map.is_empty() => Ok(Node::Lit(Val::Obj(Default::default()))),
        Value::Object(map) => {
            let mut keys = map.keys();
            let (Some(name), None) = (keys.next(), keys.next()) else {
                let names: Vec<&str> = map.keys().map(String::as_str).collect();
                return Err(err(
                    path,
                    format!(
                        "an operation is an object with exactly one key, the operator; \
                         this one has {} keys ({})",
                        names.len(),
                        names.join(", ")
                    ),
                ));
            };
            compile_op(name, &map[name.as_str()], path, depth)
        }
        scalar => Ok(Node::Lit(Val::from_json(scalar).unwrap_or(Val::Null))),
    }
}

fn compile_op(
    name: &str,
    raw_args: &Value,
    path: &str,
    depth: usize,
) -> Result<Node, CompileError> {
    if name == "$ref" {
        return Err(err(
            path,
            "`$ref` to shared `$evaluators` is not supported: write the rule inline",
        ));
    }
    let Some(op) = Op::from_name(name) else {
        return Err(err(path, format!("unknown operator `{name}`")));
    };
    let here = if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    };
    let raw: Vec<&Value> = match raw_args {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    let (min, max) = op.arity();
    if raw.len() < min || raw.len() > max {
        let wanted = match (min, max) {
            (a, b) if a == b => format!("{a}"),
            (a, usize::MAX) => format!("at least {a}"),
            (a, b) => format!("{a} to {b}"),
        };
        return Err(err(
            &here,
            format!("`{name}` takes {wanted} argument(s), got {}", raw.len()),
        ));
    }
    check_static(op, &raw, &here)?;
    let args = raw
        .iter()
        .enumerate()
        .map(|(i, a)| compile_at(a, &join(&here, i), depth + 1))
        .collect::<Result<_, _>>()?;
    Ok(Node::Op {
        op,
        name: name.to_owned(),
        args,
    })
}

fn is_operation(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty())
}

/// Shapes that are knowable before any data is seen.
fn check_static(op: Op, args: &[&Value], here: &str) -> Result<(), CompileError> {
    match op {
        Op::Var => match args.first() {
            Some(Value::String(_) | Value::Number(_) | Value::Null) | None => Ok(()),
            Some(p) if is_operation(p) => Ok(()),
            Some(_) => Err(err(
                &join(here, 0),
                "the path of `var` must be a string (`a.b.c`), a number, or an operation",
            )),
        },
        Op::SemVer => match args[1] {
            Value::String(s) if SEMVER_OPERATORS.contains(&s.as_str()) => Ok(()),
            Value::String(s) => Err(err(
                &join(here, 1),
                format!(
                    "unknown `sem_ver` comparison `{s}` (one of {})",
                    SEMVER_OPERATORS.join(" ")
                ),
            )),
            other if is_operation(other) => Ok(()),
            _ => Err(err(
                &join(here, 1),
                "the `sem_ver` comparison must be a string",
            )),
        },
        Op::Fractional => check_fractional(args, here),
        _ => Ok(()),
    }
}

/// `fractional`: an optional bucketing key (a string or an operation),
/// then buckets `[variant]` or `[variant, weight]`.
fn check_fractional(args: &[&Value], here: &str) -> Result<(), CompileError> {
    let buckets_from = match args[0] {
        Value::String(_) => 1,
        Value::Array(_) => 0,
        key if is_operation(key) => 1,
        _ => {
            return Err(err(
                &join(here, 0),
                "the bucketing key of `fractional` must be a string or an operation \
                 (or leave it out to bucket by $flagd.flagKey + targetingKey)",
            ));
        }
    };
    if args.len() <= buckets_from {
        return Err(err(here, "`fractional` needs at least one bucket"));
    }
    let mut total: u64 = 0;
    for (i, bucket) in args.iter().enumerate().skip(buckets_from) {
        let at = join(here, i);
        let Value::Array(entry) = bucket else {
            return Err(err(&at, "a bucket is [variant, weight] or [variant]"));
        };
        match entry.as_slice() {
            [variant] | [variant, _] => match variant {
                Value::String(_) => {}
                v if is_operation(v) => {}
                _ => {
                    return Err(err(
                        &join(&at, 0),
                        "a bucket's variant must be a string (a variant's name) or an operation",
                    ));
                }
            },
            _ => {
                return Err(err(
                    &at,
                    format!(
                        "a bucket is [variant, weight] or [variant], not {} items",
                        entry.len()
                    ),
                ));
            }
        }
        match entry.get(1) {
            None => total += 1,
            Some(w) if is_operation(w) => {}
            Some(Value::Number(n)) => {
                let w = n.as_f64().unwrap_or(f64::NAN);
                if w.fract() != 0.0 || w.is_nan() {
                    return Err(err(
                        &join(&at, 1),
                        format!("a weight must be a whole number, not {n}"),
                    ));
                }
                if w < 0.0 {
                    return Err(err(
                        &join(&at, 1),
                        format!("a weight must not be negative, not {n}"),
                    ));
                }
                if w > f64::from(i32::MAX) {
                    return Err(err(
                        &join(&at, 1),
                        format!("a weight must be at most {}, not {n}", i32::MAX),
                    ));
                }
                total += w as u64;
            }
            Some(_) => {
                return Err(err(
                    &join(&at, 1),
                    "a weight must be a number or an operation",
                ));
            }
        }
    }
    if total > i32::MAX as u64 {
        return Err(err(
            here,
            format!("the weights add up to {total}, more than {}", i32::MAX),
        ));
    }
    Ok(())
}

/// The string literals `node` can return as its result, with their paths.
pub(crate) fn result_literals(node: &Node, path: &str, out: &mut Vec<(String, String)>) {
    match node {
        Node::Lit(Val::Str(s)) => out.push((path.to_owned(), s.clone())),
        Node::Op {
            op: Op::If,
            name,
            args,
        } => {
            let here = op_path(path, name);
            for (i, arg) in args.iter().enumerate() {
                let is_branch = i % 2 == 1 || i + 1 == args.len();
                if is_branch {
                    result_literals(arg, &join(&here, i), out);
                }
            }
        }
        Node::Op {
            op: Op::Fractional,
            name,
            args,
        } => {
            let here = op_path(path, name);
            for (i, arg) in args.iter().enumerate() {
                if let Node::Array(entry) = arg
                    && let Some(variant) = entry.first()
                {
                    result_literals(variant, &join(&join(&here, i), 0), out);
                }
            }
        }
        _ => {}
    }
}

fn op_path(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}
