//! The in-memory backend: persistent (structurally shared) ordered maps, so that a snapshot is
//! an O(1) clone and never blocks writers.

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use imbl::OrdMap;

use crate::{
    Epoch, KeyRange, KeyValue, StateSnapshot, StateStore, StorageError, StorageResult, TableId,
    WriteBatch, WriteOp,
};

type Table = OrdMap<Bytes, Bytes>;

#[derive(Clone, Default)]
struct Version {
    epoch: Epoch,
    tables: OrdMap<TableId, Table>,
}

/// A [`StateStore`] that keeps every table in memory.
///
/// Why it exists: tests and the foundation need a store with exactly the semantics of the
/// durable one (atomic epochs, snapshot reads) without a disk; it is also the baseline the
/// RocksDB backend's throughput is measured against. Nothing survives the process.
#[derive(Default)]
pub struct MemoryStateStore {
    current: RwLock<Version>,
}

impl MemoryStateStore {
    /// A new, empty store at epoch 0.
    pub fn new() -> Self {
        Self::default()
    }

    fn read_version(&self) -> Version {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            // A panic while holding the lock cannot leave a half-applied version: commits build
            // the new version aside and swap it in with one assignment.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl StateStore for MemoryStateStore {
    fn committed_epoch(&self) -> Epoch {
        self.read_version().epoch
    }

    fn commit(&self, epoch: Epoch, batch: WriteBatch) -> StorageResult<()> {
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if epoch <= guard.epoch {
            return Err(StorageError::EpochOutOfOrder { committed: guard.epoch, attempted: epoch });
        }
        let mut tables = guard.tables.clone();
        for op in batch.ops {
            match op {
                WriteOp::Put { table, key, value } => {
                    // Copied: a batch's keys and values may be slices of one shared buffer,
                    // which keeping them would keep whole.
                    tables.entry(table).or_default().insert(Bytes::copy_from_slice(&key), Bytes::copy_from_slice(&value));
                }
                WriteOp::Delete { table, key } => {
                    if let Some(t) = tables.get_mut(&table) {
                        t.remove(&key);
                    }
                }
                WriteOp::DropTable { table } => {
                    tables.remove(&table);
                }
            }
        }
        *guard = Version { epoch, tables };
        Ok(())
    }

    fn snapshot(&self) -> Arc<dyn StateSnapshot> {
        Arc::new(MemorySnapshot { version: self.read_version() })
    }
}

struct MemorySnapshot {
    version: Version,
}

impl StateSnapshot for MemorySnapshot {
    fn epoch(&self) -> Epoch {
        self.version.epoch
    }

    fn get(&self, table: TableId, key: &[u8]) -> StorageResult<Option<Bytes>> {
        Ok(self.version.tables.get(&table).and_then(|t| t.get(key).cloned()))
    }

    fn scan(
        &self,
        table: TableId,
        range: KeyRange,
    ) -> StorageResult<Box<dyn Iterator<Item = StorageResult<KeyValue>> + Send + '_>> {
        let Some(t) = self.version.tables.get(&table) else {
            return Ok(Box::new(std::iter::empty()));
        };
        let bounds = (
            range.start.clone().map(Bytes::from),
            range.end.clone().map(Bytes::from),
        );
        Ok(Box::new(t.range(bounds).map(|(k, v)| Ok((k.clone(), v.clone())))))
    }

    fn last_key(&self, table: TableId, range: KeyRange) -> StorageResult<Option<Bytes>> {
        let Some(t) = self.version.tables.get(&table) else { return Ok(None) };
        let bounds = (range.start.map(Bytes::from), range.end.map(Bytes::from));
        Ok(t.range(bounds).next_back().map(|(k, _)| k.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_backend_passes_conformance() {
        crate::conformance::run_all(&|| Box::new(MemoryStateStore::new()));
    }
}
