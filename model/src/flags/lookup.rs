//! Finding a snapshot's flags: its `flags`, and its `values` served as
//! static flags.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::types::Flag;
use crate::snapshot::Snapshot;

impl Snapshot {
    /// The flag called `key`: one of `flags`, else one of `values` served as
    /// a static flag.
    pub fn flag(&self, key: &str) -> Option<Cow<'_, Flag>> {
        if let Some(flag) = self.flags.get(key) {
            return Some(Cow::Borrowed(flag));
        }
        self.values
            .get(key)
            .and_then(Flag::from_value)
            .map(Cow::Owned)
    }

    /// Every flag, `flags` and `values` together, sorted by key.
    pub fn all_flags(&self) -> BTreeMap<&str, Cow<'_, Flag>> {
        let mut all: BTreeMap<&str, Cow<'_, Flag>> = self
            .values
            .iter()
            .filter_map(|(k, v)| Flag::from_value(v).map(|f| (k.as_str(), Cow::Owned(f))))
            .collect();
        for (k, f) in &self.flags {
            all.insert(k.as_str(), Cow::Borrowed(f));
        }
        all
    }
}
