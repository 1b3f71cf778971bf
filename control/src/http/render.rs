//! The bodies of HTTP answers, rendered once per version and shared by
//! every poll (like the hub shares the encoded snapshot): the canonical
//! snapshot as `vanectl get -o json|yaml` prints it without its metadata,
//! or its `values` object alone.

use bytes::Bytes;
use tokio::sync::OnceCell;
use vane_model::Snapshot;

/// What a poll asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// `/snapshot`: the whole snapshot.
    Snapshot,
    /// `/values`: its `values` object.
    Values,
}

/// The encoding of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `application/json` (the default).
    Json,
    /// `application/yaml` (`format=yaml`).
    Yaml,
}

impl Format {
    /// The `Content-Type` of bodies in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Yaml => "application/yaml",
        }
    }
}

/// One version's bodies, each rendered by the first poll that needs it.
/// Only successes are kept, so a failed render is tried again.
#[derive(Debug, Default)]
pub struct Bodies {
    /// Indexed by [`slot`].
    cells: [OnceCell<Bytes>; 4],
}

fn slot(view: View, format: Format) -> usize {
    match (view, format) {
        (View::Snapshot, Format::Json) => 0,
        (View::Snapshot, Format::Yaml) => 1,
        (View::Values, Format::Json) => 2,
        (View::Values, Format::Yaml) => 3,
    }
}

impl Bodies {
    /// The body of `view` in `format` for the version encoded in
    /// `snapshot`, rendered on the blocking pool the first time.
    pub(crate) async fn get(
        &self,
        snapshot: &Bytes,
        view: View,
        format: Format,
    ) -> Result<Bytes, String> {
        self.cells[slot(view, format)]
            .get_or_try_init(|| async {
                let encoded = snapshot.clone();
                tokio::task::spawn_blocking(move || render(&encoded, view, format))
                    .await
                    .map_err(|e| format!("rendering task failed: {e}"))?
            })
            .await
            .cloned()
    }
}

/// Renders `view` of an encoded canonical snapshot. JSON is pretty-printed
/// with keys sorted (what `vanectl get -o json` prints); both forms parse
/// back to a snapshot with the version's hash.
pub(crate) fn render(encoded: &[u8], view: View, format: Format) -> Result<Bytes, String> {
    let snapshot = Snapshot::decode(encoded)
        .map_err(|e| format!("the stored version does not decode: {e}"))?;
    let text = match (view, format) {
        (View::Snapshot, Format::Json) => json(&snapshot.to_json())?,
        (View::Snapshot, Format::Yaml) => snapshot.to_yaml(),
        (View::Values, Format::Json) => json(&snapshot.values)?,
        (View::Values, Format::Yaml) => {
            yaml_serde::to_string(&snapshot.values).map_err(|e| e.to_string())?
        }
    };
    Ok(Bytes::from(text))
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, String> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded() -> (Vec<u8>, String) {
        let spec = vane_model::parse_file(
            br#"{"clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1:1"}]}],
                "values": {"flag": true, "limit": 3}}"#,
            vane_model::Format::Json,
        )
        .unwrap();
        let snapshot = vane_model::validate(spec).unwrap();
        let (bytes, hash) = snapshot.encode_and_hash();
        (bytes, hash.to_hex())
    }

    #[test]
    fn bodies_parse_back_to_the_versions_hash() {
        let (bytes, hash) = encoded();
        for (format, file) in [
            (Format::Json, vane_model::Format::Json),
            (Format::Yaml, vane_model::Format::Yaml),
        ] {
            let body = render(&bytes, View::Snapshot, format).unwrap();
            let spec = vane_model::parse_file(&body, file).unwrap();
            let again = vane_model::validate(spec).unwrap();
            assert_eq!(again.content_hash().to_hex(), hash);
        }
        let values: serde_json::Value =
            serde_json::from_slice(&render(&bytes, View::Values, Format::Json).unwrap()).unwrap();
        assert_eq!(values, serde_json::json!({"flag": true, "limit": 3}));
        let yaml = render(&bytes, View::Values, Format::Yaml).unwrap();
        assert_eq!(
            std::str::from_utf8(&yaml).unwrap(),
            "flag: true\nlimit: 3\n"
        );
        assert!(render(b"\xff\xff", View::Snapshot, Format::Json).is_err());
    }

    #[tokio::test]
    async fn each_body_is_rendered_once_and_shared() {
        let (bytes, _) = encoded();
        let bytes = Bytes::from(bytes);
        let bodies = Bodies::default();
        let a = bodies
            .get(&bytes, View::Snapshot, Format::Json)
            .await
            .unwrap();
        let b = bodies
            .get(&bytes, View::Snapshot, Format::Json)
            .await
            .unwrap();
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes, not a copy");
        let y = bodies
            .get(&bytes, View::Values, Format::Yaml)
            .await
            .unwrap();
        assert_ne!(a, y);
    }
}
