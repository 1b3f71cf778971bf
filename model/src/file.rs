//! Reading snapshot files: YAML or JSON, unknown fields refused, errors named
//! by field path (`listeners[0]: unknown field "adress"`).

use std::path::Path;

use crate::error::FileError;
use crate::spec::SnapshotSpec;

/// Largest file the reader accepts (the server applies its own, smaller, limit
/// to the encoded snapshot).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Format of a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML (1.2, as read by yaml_serde).
    Yaml,
    /// JSON.
    Json,
}

impl Format {
    /// The format by file extension (`.json`, `.yaml`, `.yml`), else by content:
    /// JSON when the first non-blank character is `{`.
    pub fn detect(path: Option<&Path>, bytes: &[u8]) -> Self {
        match path.and_then(|p| p.extension()).and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            Some("yaml" | "yml") => Format::Yaml,
            _ => {
                if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
                    Format::Json
                } else {
                    Format::Yaml
                }
            }
        }
    }
}

/// Parses a snapshot file's bytes. Only the shape is checked here; run
/// [`crate::validate`] on the result.
pub fn parse_file(bytes: &[u8], format: Format) -> Result<SnapshotSpec, FileError> {
    if is_blank(bytes, format) {
        return Err(FileError::Empty);
    }
    match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let spec: SnapshotSpec =
                serde_path_to_error::deserialize(&mut de).map_err(|e| FileError::Syntax {
                    path: path_of(e.path()),
                    message: e.inner().to_string(),
                })?;
            de.end().map_err(|e| FileError::Syntax {
                path: String::new(),
                message: e.to_string(),
            })?;
            Ok(spec)
        }
        Format::Yaml => {
            let de = yaml_serde::Deserializer::from_slice(bytes);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = path_of(e.path());
                let message = e.inner().to_string();
                // yaml_serde already names the path in most messages
                // ("listeners[0]: unknown field ..."): do not say it twice.
                match message.split_once(": ") {
                    Some((prefix, _))
                        if !prefix.is_empty()
                            && !prefix.contains(' ')
                            && path.starts_with(prefix) =>
                    {
                        FileError::Syntax {
                            path: String::new(),
                            message,
                        }
                    }
                    _ => FileError::Syntax { path, message },
                }
            })
        }
    }
}

/// Reads and parses a snapshot file from disk.
pub fn read_file(path: &Path) -> Result<SnapshotSpec, ReadError> {
    let meta = std::fs::metadata(path).map_err(|e| ReadError::Io(path.display().to_string(), e))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(ReadError::File(FileError::TooLarge {
            size: meta.len(),
            limit: MAX_FILE_BYTES,
        }));
    }
    let bytes = std::fs::read(path).map_err(|e| ReadError::Io(path.display().to_string(), e))?;
    parse_file(&bytes, Format::detect(Some(path), &bytes)).map_err(ReadError::File)
}

/// Why [`read_file`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The file could not be parsed.
    #[error(transparent)]
    File(FileError),
}

fn path_of(p: &serde_path_to_error::Path) -> String {
    // Segments the parser could not name (a syntax error inside a value)
    // show as `?`: leave them out rather than print `listeners[0].?`.
    let s = p.to_string().replace(".?", "");
    if s == "." || s == "?" {
        String::new()
    } else {
        s
    }
}

/// Whether the file holds nothing: only whitespace, or (YAML) comments.
fn is_blank(bytes: &[u8], format: Format) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    text.lines().all(|line| {
        let t = line.trim();
        t.is_empty() || (format == Format::Yaml && (t.starts_with('#') || t == "---"))
    })
}
