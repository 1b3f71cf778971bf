//! The flagd flag configuration: the JSON document flagd's sync protocol
//! carries (`{"flags": {key: definition}}`) and flagd's providers evaluate
//! in process. Values are included as static flags (see [`super`]).

use serde_json::{Map, Value};

use super::types::Flag;
use crate::snapshot::Snapshot;

impl Snapshot {
    /// The flagd configuration of every flag, with `metadata` as the flag
    /// set's metadata (left out when empty).
    pub fn flagd_configuration(&self, metadata: Map<String, Value>) -> Value {
        let flags: Map<String, Value> = self
            .all_flags()
            .into_iter()
            .map(|(k, f)| (k.to_owned(), definition(&f)))
            .collect();
        let mut doc = Map::new();
        doc.insert("flags".to_owned(), Value::Object(flags));
        if !metadata.is_empty() {
            doc.insert("metadata".to_owned(), Value::Object(metadata));
        }
        Value::Object(doc)
    }
}

/// One flag as flagd writes it.
pub fn definition(flag: &Flag) -> Value {
    let mut m = Map::new();
    m.insert(
        "state".into(),
        Value::String(flag.state.as_str().to_owned()),
    );
    m.insert(
        "variants".into(),
        Value::Object(flag.variants.clone().into_iter().collect()),
    );
    m.insert(
        "defaultVariant".into(),
        Value::String(flag.default_variant.clone()),
    );
    if let Some(rule) = &flag.targeting {
        m.insert("targeting".into(), rule.source().clone());
    }
    if !flag.metadata.is_empty() {
        m.insert(
            "metadata".into(),
            Value::Object(flag.metadata.clone().into_iter().collect()),
        );
    }
    Value::Object(m)
}
