//! Reading the snapshot file of `push`, `rollout start` and `diff -f`: YAML
//! or JSON, unknown fields refused as the model refuses them, and the
//! metadata that `get -o json|yaml` puts beside the snapshot (`group`,
//! `version`, `hash`, `created_at`, `message`, …) accepted and set aside,
//! so that `vanectl get G -o json | vanectl push G -f -` works.

use std::io::Read as _;
use std::path::Path;

use vane_model::file::{Format, MAX_FILE_BYTES, ReadError};
use vane_model::{FileError, SnapshotSpec};

use crate::error::CliError;

/// The fields `get -o json|yaml` writes next to the snapshot's own (see
/// `output::get`), plus those a version's metadata may grow (`author`,
/// `rollback_of`): none is a snapshot field, so none is ambiguous.
pub(crate) const GET_METADATA: &[&str] = &[
    "version",
    "hash",
    "created_at",
    "message",
    "author",
    "rollback_of",
];

/// Reads and parses the file (`-` is standard input) meant for `group`.
/// Every failure is a usage error (exit 2) naming the file and the field.
pub(crate) fn read(path: &Path, group: &str) -> Result<SnapshotSpec, CliError> {
    let (label, bytes) = if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| CliError::usage(format!("cannot read standard input: {e}")))?;
        ("<stdin>".to_owned(), bytes)
    } else {
        let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
        if meta.len() > MAX_FILE_BYTES {
            let e = FileError::TooLarge {
                size: meta.len(),
                limit: MAX_FILE_BYTES,
            };
            return Err(CliError::usage(format!("{}: {e}", path.display())));
        }
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        (path.display().to_string(), bytes)
    };
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size > MAX_FILE_BYTES {
        let e = FileError::TooLarge {
            size,
            limit: MAX_FILE_BYTES,
        };
        return Err(CliError::usage(format!("{label}: {e}")));
    }
    let format = Format::detect((path != Path::new("-")).then_some(path), &bytes);
    parse(&bytes, format, group).map_err(|e| CliError::usage(format!("{label}: {e}")))
}

fn io_error(path: &Path, e: std::io::Error) -> CliError {
    CliError::usage(ReadError::Io(path.display().to_string(), e).to_string())
}

/// Why a file is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ParseError {
    /// As the model's file reader says it.
    #[error(transparent)]
    File(#[from] FileError),
    /// The `group` of a `get` output is another group's.
    #[error(
        "group: the file is {found:?}'s (as `vanectl get` wrote it), not {wanted:?}'s: push it to {found:?}, or remove the field"
    )]
    OtherGroup {
        /// The group the file names.
        found: String,
        /// The group it is pushed to.
        wanted: String,
    },
    /// `group` is there but not a string.
    #[error("group: must be a group name (a string)")]
    GroupNotAString,
}

/// Parses a snapshot file's bytes. A file that carries `get`'s metadata
/// loses it first (its `group` must be `group`); any other file is read by
/// the model's reader exactly as before (errors with line and column).
pub(crate) fn parse(bytes: &[u8], format: Format, group: &str) -> Result<SnapshotSpec, ParseError> {
    let Some(mut object) = as_get_output(bytes, format) else {
        return Ok(vane_model::parse_file(bytes, format)?);
    };
    match object.remove("group") {
        None => {}
        Some(serde_json::Value::String(found)) if found == group => {}
        Some(serde_json::Value::String(found)) => {
            return Err(ParseError::OtherGroup {
                found,
                wanted: group.to_owned(),
            });
        }
        Some(_) => return Err(ParseError::GroupNotAString),
    }
    for field in GET_METADATA {
        object.remove(*field);
    }
    serde_path_to_error::deserialize(serde_json::Value::Object(object)).map_err(|e| {
        let path = e.path().to_string();
        ParseError::File(FileError::Syntax {
            path: if path == "." { String::new() } else { path },
            message: e.inner().to_string(),
        })
    })
}

/// The file as a JSON object when it is one that holds `get`'s metadata
/// (`group` or one of [`GET_METADATA`]) at the top; `None` otherwise, and
/// for anything that does not parse (the model's reader then says why).
fn as_get_output(
    bytes: &[u8],
    format: Format,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let value: serde_json::Value = match format {
        Format::Json => serde_json::from_slice(bytes).ok()?,
        Format::Yaml => yaml_serde::from_slice(bytes).ok()?,
    };
    let serde_json::Value::Object(object) = value else {
        return None;
    };
    let is_get =
        object.contains_key("group") || GET_METADATA.iter().any(|f| object.contains_key(*f));
    is_get.then_some(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"{"clusters":[{"name":"api","endpoints":[{"address":"127.0.0.1:8080"}]}],"values":{"k":1}}"#;

    fn get_json(group: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(SPEC).unwrap();
        let o = v.as_object_mut().unwrap();
        o.insert("group".into(), group.into());
        o.insert("version".into(), 3.into());
        o.insert("hash".into(), "ab".repeat(32).into());
        o.insert("created_at".into(), "2026-12-07T10:00:00.000Z".into());
        o.insert("message".into(), "why".into());
        o.insert("author".into(), "op".into());
        serde_json::to_string_pretty(&v).unwrap()
    }

    #[test]
    fn get_output_pushes_back_to_its_own_group() {
        let plain = parse(SPEC.as_bytes(), Format::Json, "edge").unwrap();
        let json = get_json("edge");
        assert_eq!(parse(json.as_bytes(), Format::Json, "edge").unwrap(), plain);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let yaml = yaml_serde::to_string(&value).unwrap();
        assert_eq!(parse(yaml.as_bytes(), Format::Yaml, "edge").unwrap(), plain);
        // Metadata without a group is set aside too.
        let no_group = json.replace("\"group\": \"edge\",", "");
        assert_eq!(
            parse(no_group.as_bytes(), Format::Json, "edge").unwrap(),
            plain
        );
    }

    #[test]
    fn another_groups_output_is_refused_naming_the_field() {
        let e = parse(get_json("shop").as_bytes(), Format::Json, "edge").unwrap_err();
        assert_eq!(
            e.to_string(),
            "group: the file is \"shop\"'s (as `vanectl get` wrote it), not \"edge\"'s: push it to \"shop\", or remove the field"
        );
        let bad = get_json("edge").replace("\"group\": \"edge\"", "\"group\": 7");
        assert_eq!(
            parse(bad.as_bytes(), Format::Json, "edge")
                .unwrap_err()
                .to_string(),
            "group: must be a group name (a string)"
        );
    }

    #[test]
    fn other_unknown_fields_are_still_refused() {
        let extra = get_json("edge").replace("\"author\"", "\"owner\"");
        let e = parse(extra.as_bytes(), Format::Json, "edge").unwrap_err();
        assert!(e.to_string().contains("unknown field `owner`"), "{e}");
        let nested = get_json("edge").replace("\"address\"", "\"adress\"");
        let e = parse(nested.as_bytes(), Format::Json, "edge").unwrap_err();
        let e = e.to_string();
        assert!(
            e.starts_with("clusters[0].endpoints[0].adress: unknown field `adress`"),
            "{e}"
        );
        // A file without metadata is the model's to read, as before.
        let e = parse(b"{\"created\": 1}", Format::Json, "edge").unwrap_err();
        assert!(e.to_string().contains("unknown field `created`"), "{e}");
        assert!(matches!(
            parse(b"  \n", Format::Yaml, "edge").unwrap_err(),
            ParseError::File(FileError::Empty)
        ));
    }
}
