//! Limits on free-form JSON in a snapshot (`values`, flag variants and
//! targeting rules), shared by the checks of each section.

/// Longest key of `values`.
pub const MAX_VALUE_KEY_LEN: usize = 256;
/// Deepest nesting of arrays and objects in one of `values` (`[[1]]` is 2).
///
/// Every rendering of a snapshot (`vanectl get`, the JSON form, the
/// canonical JSON) puts a value two levels down (the snapshot, the `values`
/// map), and the parsers that read them back (serde_json, yaml_serde) stop
/// at 128 levels, while a value on the wire is JSON text parsed on its own.
/// Without a limit well below theirs, a value 126 deep was accepted from a
/// YAML file, and one 127 deep from a push, but their renderings no longer
/// parsed (found by fuzzing). 64 leaves room to spare for both.
pub const MAX_VALUE_DEPTH: usize = 64;

/// Whether `value` nests arrays and objects more than `limit` levels deep.
/// Looks no deeper than `limit + 1` levels, so the recursion is bounded
/// whatever the value.
pub(crate) fn nested_deeper_than(value: &serde_json::Value, limit: usize) -> bool {
    use serde_json::Value;
    match value {
        Value::Array(items) => limit == 0 || items.iter().any(|v| nested_deeper_than(v, limit - 1)),
        Value::Object(fields) => {
            limit == 0 || fields.values().any(|v| nested_deeper_than(v, limit - 1))
        }
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => false,
    }
}
