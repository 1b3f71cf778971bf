//! [`StoreError`]: why a store operation failed, and whose doing it was.

/// Why a store operation failed. Only `Conflict`, `RolloutActive` and `RolloutMoved` are the caller's doing; the
/// others are the store's. A push that fails stored nothing, with the one
/// exception every database shares: when the commit itself fails (`Io`), the
/// version may or may not have reached the disk, and a read tells which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Compare-and-set refused: the head is `actual`, not `expected`.
    #[error("conflict: group {group:?} is at version {actual}, expected {expected}")]
    Conflict {
        /// The group.
        group: String,
        /// The version the caller expected (0: absent).
        expected: u64,
        /// The group's head (0: absent).
        actual: u64,
    },
    /// A plain push while the group has a rollout running.
    #[error("group {group:?} has rollout {id} in progress")]
    RolloutActive {
        /// The group.
        group: String,
        /// The running rollout.
        id: String,
    },
    /// Compare-and-set of a rollout record refused: someone else wrote it.
    #[error("group {group:?}: the rollout record is at revision {actual}, expected {expected}")]
    RolloutMoved {
        /// The group.
        group: String,
        /// The revision the caller expected (0: none).
        expected: u64,
        /// The stored revision (0: none).
        actual: u64,
    },
    /// The store cannot serve requests now (closed, shutting down). Retrying
    /// later is safe.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend (etcd) did not answer in time: the server is read-only
    /// until it returns. The message says whether anything may have been
    /// stored (when the write itself went out and no answer came back).
    #[error("store unavailable: {0}")]
    Degraded(String),
    /// Stored data cannot be read back: a record that does not decode, a
    /// head without its version, an unknown schema.
    #[error("store corrupt: {0}")]
    Corrupt(String),
    /// The backend failed reading or writing.
    #[error("store I/O error: {0}")]
    Io(String),
}
