//! [`EpochCommitter`]: the one place that numbers and commits epochs.

use std::sync::{Arc, Mutex};

use sluice_storage::{Durability, Epoch, StateStore, StorageResult, WriteBatch};

/// Commits write batches to the store as consecutive epochs.
///
/// Why one committer: table writes (each DML statement) and the dataflow (each barrier) both
/// commit to the same store, whose epochs must strictly increase. Reading the last epoch and
/// committing the next must therefore happen under one lock, shared by both writers.
pub struct EpochCommitter {
    store: Arc<dyn StateStore>,
    /// Whether a batch committed since the last checkpoint (a checkpoint then must commit
    /// even with nothing to write, to make it power-safe).
    lock: Mutex<bool>,
}

impl std::fmt::Debug for EpochCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochCommitter").field("committed_epoch", &self.store.committed_epoch()).finish()
    }
}

impl EpochCommitter {
    /// A committer for `store`.
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Self { store, lock: Mutex::new(false) }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Commits `batch` as the next epoch and returns it; an empty batch commits nothing and
    /// returns the last committed epoch.
    pub fn commit(&self, batch: WriteBatch) -> StorageResult<Epoch> {
        self.commit_checkpoint(batch, false)
    }

    /// Like [`EpochCommitter::commit`]; with `force` and a [`Durability::Checkpoint`] batch, an
    /// empty batch still commits if batches were committed since the last checkpoint, so that
    /// they become power-safe (a checkpoint makes every batch before it power-safe).
    pub fn commit_checkpoint(&self, batch: WriteBatch, force: bool) -> StorageResult<Epoch> {
        let mut since_checkpoint = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.store.committed_epoch();
        let checkpoint = batch.durability() == Durability::Checkpoint;
        if batch.is_empty() && !(force && checkpoint && *since_checkpoint) {
            return Ok(epoch);
        }
        self.store.commit(epoch + 1, batch)?;
        *since_checkpoint = !checkpoint;
        Ok(epoch + 1)
    }
}
