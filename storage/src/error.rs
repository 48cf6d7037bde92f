use crate::Epoch;

/// Errors of the state store.
///
/// `EpochOutOfOrder` is an internal bug (a caller broke the commit protocol); the others come
/// from the backend (disk, corruption) and are reported to users as resource errors.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A commit tried to go back in time or repeat an epoch.
    #[error("epoch {attempted} committed after epoch {committed}: epochs must strictly increase")]
    EpochOutOfOrder {
        /// The last committed epoch.
        committed: Epoch,
        /// The epoch the caller tried to commit.
        attempted: Epoch,
    },
    /// The backend failed to read or write.
    #[error("state store I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The backend failed (RocksDB could not open, read or write its files).
    #[error("state store error: {0}")]
    Backend(String),
    /// The state directory was written by an incompatible version or another program.
    #[error("incompatible state directory: {0}")]
    Incompatible(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt state: {0}")]
    Corrupt(String),
}
