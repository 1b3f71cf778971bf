//! Retention in the embedded store: one write transaction removes the
//! versions a [`Retention`] lets go and counts them per group; the writer
//! then compacts the file when most of it is free pages, so it stops
//! growing under steady churn.

use redb::{Database, Durability, ReadableTable};

use super::records::{HEADS, PRUNED, VERSIONS, decode_info, storage};
use crate::contract::{PruneReport, Retention};
use crate::error::StoreError;

pub(super) use crate::contract::Pinned;

/// What a pass removed, and what the file looked like after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Pruned {
    pub(super) report: PruneReport,
    /// Bytes of pages in use after the pass.
    pub(super) allocated_bytes: u64,
    /// The file's length after the pass.
    pub(super) file_bytes: u64,
}

impl Pruned {
    /// Compact when something was removed and at least half of a file
    /// bigger than 1 MiB is free pages.
    pub(super) fn should_compact(&self) -> bool {
        self.report.versions > 0
            && self.file_bytes > 1024 * 1024
            && self.file_bytes > self.allocated_bytes.saturating_mul(2)
    }
}

/// Removes what `retention` lets go, in one transaction.
pub(super) fn run(
    db: &Database,
    retention: &Retention,
    pinned: &Pinned,
    now_unix_ms: i64,
) -> Result<Pruned, StoreError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_durability(Durability::Immediate).map_err(storage)?;
    let mut report = PruneReport::default();
    {
        let heads = txn.open_table(HEADS).map_err(storage)?;
        let mut versions = txn.open_table(VERSIONS).map_err(storage)?;
        let mut pruned = txn.open_table(PRUNED).map_err(storage)?;
        let groups: Vec<(String, u64)> = heads
            .iter()
            .map_err(storage)?
            .map(|e| e.map(|(g, v)| (g.value().to_owned(), v.value())))
            .collect::<Result<_, _>>()
            .map_err(storage)?;
        for (group, head) in groups {
            let keep = pinned.get(&group);
            let mut doomed = Vec::new();
            let range = versions
                .range((group.as_str(), 1u64)..=(group.as_str(), head))
                .map_err(storage)?;
            for (rank, entry) in (0u64..).zip(range.rev()) {
                let (key, value) = entry.map_err(storage)?;
                let version = key.value().1;
                if version == head || keep.is_some_and(|k| k.contains(&version)) {
                    continue;
                }
                // Only the age is read; a record that does not decode is
                // kept for `vane-control check` to report.
                let Ok(info) = decode_info(&group, version, value.value()) else {
                    continue;
                };
                if retention.removes(rank, info.created_at_unix_ms, now_unix_ms) {
                    doomed.push(version);
                }
            }
            if doomed.is_empty() {
                continue;
            }
            for version in &doomed {
                versions
                    .remove((group.as_str(), *version))
                    .map_err(storage)?;
            }
            let before = pruned
                .get(group.as_str())
                .map_err(storage)?
                .map_or(0, |v| v.value());
            let removed = doomed.len() as u64;
            pruned
                .insert(group.as_str(), before.saturating_add(removed))
                .map_err(storage)?;
            report.versions += removed;
            report.groups += 1;
        }
    }
    let stats = txn.stats().map_err(storage)?;
    let allocated_bytes = stats
        .allocated_pages()
        .saturating_mul(stats.page_size() as u64);
    if report.versions > 0 {
        txn.commit().map_err(storage)?;
    } else {
        txn.abort().map_err(storage)?;
    }
    Ok(Pruned {
        report,
        allocated_bytes,
        file_bytes: 0,
    })
}
