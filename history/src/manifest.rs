//! The file list: which Parquet files hold a source's archived rows, as of a checkpoint.
//!
//! The list lives in the state store (`HISTORY_FILES`, key = source id + path), so it changes
//! in the same atomic commits as the history queue: a file is part of the history exactly
//! when a committed epoch lists it. Files in the store that no epoch lists are orphans of a
//! crash and are deleted at start-up.

use serde::{Deserialize, Serialize};
use sluice_engine::plan::RelationId;
use sluice_engine::recovery::system_tables;
use sluice_storage::{KeyRange, StateSnapshot, WriteBatch};

use crate::HistoryError;

/// One archived Parquet file of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedFile {
    /// Path in the history store.
    pub path: String,
    /// Its partition (`date=YYYY-MM-DD/hour=HH`).
    pub partition: String,
    /// Start of its hour (microseconds since the epoch); None for rows without event time.
    pub hour: Option<i64>,
    /// Rows in it.
    pub rows: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Smallest event time in it (microseconds), if any row has one.
    pub min_time: Option<i64>,
    /// Largest event time in it.
    pub max_time: Option<i64>,
    /// The history-queue entries it was made from (first and last sequence numbers).
    pub first_seq: u64,
    /// See `first_seq`.
    pub last_seq: u64,
    /// When it was written (microseconds since the epoch).
    pub written_at: i64,
}

fn key(source: RelationId, path: &str) -> Vec<u8> {
    let mut key = source.to_be_bytes().to_vec();
    key.extend_from_slice(path.as_bytes());
    key
}

/// Queues the listing of `file` as part of `source`'s history.
pub fn add(write: &mut WriteBatch, source: RelationId, file: &ArchivedFile) -> Result<(), HistoryError> {
    let value = serde_json::to_vec(file).map_err(|e| HistoryError::Corrupt(format!("cannot encode a file entry: {e}")))?;
    write.put(system_tables::HISTORY_FILES, key(source, &file.path), value);
    Ok(())
}

/// Queues the removal of `path` from `source`'s history.
pub fn remove(write: &mut WriteBatch, source: RelationId, path: &str) {
    write.delete(system_tables::HISTORY_FILES, key(source, path));
}

/// `source`'s archived files as of `snapshot`, in path order.
pub fn files(snapshot: &dyn StateSnapshot, source: RelationId) -> Result<Vec<ArchivedFile>, HistoryError> {
    let mut out = Vec::new();
    for kv in snapshot.scan(system_tables::HISTORY_FILES, KeyRange::prefix(&source.to_be_bytes()))? {
        let (_, value) = kv?;
        out.push(decode(&value)?);
    }
    Ok(out)
}

/// Every path any source's history lists as of `snapshot`.
pub fn all_paths(snapshot: &dyn StateSnapshot) -> Result<std::collections::HashSet<String>, HistoryError> {
    let mut out = std::collections::HashSet::new();
    for kv in snapshot.scan(system_tables::HISTORY_FILES, KeyRange::all())? {
        let (_, value) = kv?;
        out.insert(decode(&value)?.path);
    }
    Ok(out)
}

fn decode(value: &[u8]) -> Result<ArchivedFile, HistoryError> {
    serde_json::from_slice(value).map_err(|e| HistoryError::Corrupt(format!("a history file entry cannot be read: {e}")))
}
