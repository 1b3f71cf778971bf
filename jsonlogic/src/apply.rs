//! Evaluating a compiled rule against data: the operators that decide what
//! to evaluate (`if`, `and`, `or`, `map`, `filter`, `reduce`, `all`,
//! `none`, `some`) and the dispatch to the rest, under a work budget so a
//! hostile rule or context ends in an error instead of running away.

use std::collections::BTreeMap;

use crate::compile::{Node, Op};
use crate::error::EvalError;
use crate::fractional::fractional;
use crate::ops::{arith, compare, data, text};
use crate::semver::sem_ver;
use crate::value::Val;

/// The most work one evaluation may do, in evaluated nodes plus copied
/// values; far above what any targeting rule needs.
pub(crate) const MAX_STEPS: usize = 1_000_000;

/// One evaluation's state: the work left.
pub(crate) struct Eval {
    steps_left: usize,
}

impl Eval {
    pub(crate) fn new() -> Eval {
        Eval {
            steps_left: MAX_STEPS,
        }
    }

    fn charge(&mut self, steps: usize) -> Result<(), EvalError> {
        match self.steps_left.checked_sub(steps) {
            Some(left) => {
                self.steps_left = left;
                Ok(())
            }
            None => Err(EvalError::new(format!(
                "the rule did more than {MAX_STEPS} steps of work on this data"
            ))),
        }
    }

    /// Evaluates `node` with `data` as what `var` reads.
    pub(crate) fn eval(&mut self, node: &Node, data: &Val) -> Result<Val, EvalError> {
        self.charge(1)?;
        match node {
            Node::Lit(v) => Ok(v.clone()),
            Node::Array(items) => Ok(Val::Arr(self.eval_all(items, data)?)),
            Node::Op { op, args, .. } => self.op(*op, args, data),
        }
    }

    fn eval_all(&mut self, nodes: &[Node], data: &Val) -> Result<Vec<Val>, EvalError> {
        nodes.iter().map(|n| self.eval(n, data)).collect()
    }

    fn op(&mut self, op: Op, args: &[Node], data: &Val) -> Result<Val, EvalError> {
        match op {
            Op::If => return self.if_op(args, data),
            Op::And | Op::Or => return self.and_or(op == Op::And, args, data),
            Op::Map | Op::Filter | Op::Reduce | Op::All | Op::None | Op::Some => {
                return self.iterate(op, args, data);
            }
            _ => {}
        }
        let values = self.eval_all(args, data)?;
        Ok(match op {
            Op::Var => {
                let path = values.first().unwrap_or(&Val::Null);
                // A present `null` also takes the default: flagd's
                // providers (json-logic-engine in JavaScript, json_logic in
                // Python) do so, unlike json-logic-js.
                match data::lookup(data, path) {
                    Some(found) if *found != Val::Null => {
                        self.charge(found.size())?;
                        found.into_owned()
                    }
                    _ => values.get(1).cloned().unwrap_or(Val::Null),
                }
            }
            Op::Missing => Val::Arr(data::missing(&values, data)),
            Op::MissingSome => data::missing_some(&values, data),
            Op::Eq => compare::eq(&values),
            Op::StrictEq => compare::strict_equal(&values),
            Op::Ne => compare::ne(&values),
            Op::StrictNe => compare::strict_ne(&values),
            Op::Not => Val::Bool(!values.first().is_some_and(Val::truthy)),
            Op::NotNot => Val::Bool(values.first().is_some_and(Val::truthy)),
            Op::Gt => compare::greater(&values),
            Op::Ge => compare::greater_eq(&values),
            Op::Lt => compare::less(&values),
            Op::Le => compare::less_eq(&values),
            Op::Max => arith::max(&values),
            Op::Min => arith::min(&values),
            Op::Add => arith::add(&values),
            Op::Sub => arith::sub(&values),
            Op::Mul => arith::mul(&values),
            Op::Div => arith::div(&values),
            Op::Mod => arith::rem(&values),
            Op::Merge => {
                let merged = data::merge(values);
                self.charge(merged.size())?;
                merged
            }
            Op::In => text::in_op(&values),
            Op::Cat => {
                let s = text::cat(&values);
                self.charge(s.size())?;
                s
            }
            Op::Substr => text::substr_op(&values),
            Op::Fractional => fractional(&values, data),
            Op::SemVer => sem_ver(&values),
            Op::StartsWith => text::starts_with(&values),
            Op::EndsWith => text::ends_with(&values),
            Op::If
            | Op::And
            | Op::Or
            | Op::Map
            | Op::Filter
            | Op::Reduce
            | Op::All
            | Op::None
            | Op::Some => unreachable_lazy(op)?,
        })
    }

    /// `if` / `?:`: condition, result pairs, then an optional else.
    fn if_op(&mut self, args: &[Node], data: &Val) -> Result<Val, EvalError> {
        let mut pairs = args.chunks_exact(2);
        for pair in &mut pairs {
            if self.eval(&pair[0], data)?.truthy() {
                return self.eval(&pair[1], data);
            }
        }
        match pairs.remainder() {
            [otherwise] => self.eval(otherwise, data),
            _ => Ok(Val::Null),
        }
    }

    /// `and`: the first falsy value, or the last; `or`: the first truthy, or the last.
    fn and_or(&mut self, is_and: bool, args: &[Node], data: &Val) -> Result<Val, EvalError> {
        let mut last = Val::Null;
        for node in args {
            last = self.eval(node, data)?;
            if last.truthy() != is_and {
                return Ok(last);
            }
        }
        Ok(last)
    }

    /// The operators that apply their second argument to each item of the
    /// first, with the item as the data.
    fn iterate(&mut self, op: Op, args: &[Node], data: &Val) -> Result<Val, EvalError> {
        let (Some(list), Some(logic)) = (args.first(), args.get(1)) else {
            return Ok(Val::Null);
        };
        let items = self.eval(list, data)?;
        match op {
            Op::Reduce => {
                let initial = match args.get(2) {
                    Some(node) => self.eval(node, data)?,
                    None => Val::Null,
                };
                let Val::Arr(items) = items else {
                    return Ok(initial);
                };
                let mut acc = initial;
                for item in items {
                    let scope = Val::Obj(BTreeMap::from([
                        ("current".to_owned(), item),
                        ("accumulator".to_owned(), acc),
                    ]));
                    acc = self.eval(logic, &scope)?;
                }
                Ok(acc)
            }
            Op::Map => {
                let Val::Arr(items) = items else {
                    return Ok(Val::Arr(Vec::new()));
                };
                Ok(Val::Arr(
                    items
                        .iter()
                        .map(|item| self.eval(logic, item))
                        .collect::<Result<_, _>>()?,
                ))
            }
            Op::Filter | Op::None | Op::Some => {
                let mut kept = Vec::new();
                if let Val::Arr(items) = items {
                    for item in items {
                        if self.eval(logic, &item)?.truthy() {
                            kept.push(item);
                        }
                    }
                }
                Ok(match op {
                    Op::None => Val::Bool(kept.is_empty()),
                    Op::Some => Val::Bool(!kept.is_empty()),
                    _ => Val::Arr(kept),
                })
            }
            Op::All => {
                let items = match items {
                    Val::Arr(items) => items,
                    // JavaScript indexes a string's characters.
                    Val::Str(s) => s.chars().map(|c| Val::Str(c.to_string())).collect(),
                    _ => return Ok(Val::Bool(false)),
                };
                if items.is_empty() {
                    return Ok(Val::Bool(false));
                }
                for item in &items {
                    if !self.eval(logic, item)?.truthy() {
                        return Ok(Val::Bool(false));
                    }
                }
                Ok(Val::Bool(true))
            }
            other => unreachable_lazy(other),
        }
    }
}

/// The dispatch above routes every lazy operator before evaluating
/// arguments; reaching this is a bug, reported rather than panicking.
fn unreachable_lazy(op: Op) -> Result<Val, EvalError> {
    Err(EvalError::new(format!(
        "internal error: {op:?} reached the wrong evaluator"
    )))
}
