//! # sluice-storage: where state lives
//!
//! Everything Sluice must remember — table rows today, operator state, source offsets and the
//! catalog later — is a set of *state tables*: ordered maps from byte keys to byte values, one
//! map per [`TableId`]. This crate defines that contract and nothing else; it knows nothing of
//! SQL, Arrow or dataflow.
//!
//! ```text
//!   engine / sql ──► WriteBatch (epoch N: puts, deletes, table drops)
//!                          │ commit(): atomic, epochs strictly increasing
//!                          ▼
//!                    StateStore ──► snapshot() ──► StateSnapshot (reads as of one committed epoch)
//!                     │       │
//!              MemoryStateStore   RocksStateStore (durable: one RocksDB write batch per epoch)
//! ```
//!
//! The signatures carry no backend types (TiKV's `engine_traits` rule), so the in-memory backend
//! and a RocksDB backend can pass one conformance suite ([`conformance`]) and be swapped without
//! touching the crates above.

mod error;
mod memory;
mod rocks;

pub mod conformance;

use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

pub use error::StorageError;
pub use memory::MemoryStateStore;
pub use rocks::{RocksOptions, RocksStateStore, FORMAT_VERSION};

/// Identifies one state table (one ordered key space) inside a [`StateStore`].
///
/// Table ids are allocated by the catalog and never reused while data under them may exist,
/// so a dropped table's keys can never be mistaken for a new table's.
pub type TableId = u32;

/// Table ids from this one up are the engine's bookkeeping (change log, source offsets,
/// counters, sink outboxes...), below it operator state and tables.
///
/// Why the store is told: bookkeeping is a few keys rewritten or deleted at every checkpoint,
/// far above every state table's key range. Kept beside operator state in one key space, each
/// flushed file of an append-only view (keys that only grow) would also span those keys, so
/// no two files would ever be disjoint and every compaction would rewrite the view's rows
/// again and again; kept apart (RocksDB: its own column family), such files are moved down
/// the tree without being rewritten.
pub const FIRST_SYSTEM_TABLE: TableId = u32::MAX - 0xFFFF;

/// A checkpoint epoch. Every committed [`WriteBatch`] carries one; they strictly increase, so
/// "the state as of epoch N" is well defined and a snapshot names exactly one of them.
pub type Epoch = u64;

/// Result alias for storage operations.
pub type StorageResult<T> = Result<T, StorageError>;

/// A range of keys inside one table, as a pair of bounds (memcomparable order).
///
/// Kept as owned bytes rather than a generic `RangeBounds` so the trait stays object-safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// Lower bound of the range.
    pub start: Bound<Vec<u8>>,
    /// Upper bound of the range.
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key of the table.
    pub fn all() -> Self {
        Self { start: Bound::Unbounded, end: Bound::Unbounded }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        let start = Bound::Included(prefix.to_vec());
        let end = match prefix_successor(prefix) {
            Some(succ) => Bound::Excluded(succ),
            None => Bound::Unbounded,
        };
        Self { start, end }
    }

    /// Whether `key` lies inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let above = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let below = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        above && below
    }
}

/// The smallest byte string greater than every string that starts with `prefix`, if any.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut succ = prefix.to_vec();
    while let Some(last) = succ.pop() {
        if last < u8::MAX {
            succ.push(last + 1);
            return Some(succ);
        }
    }
    None
}

/// One change inside a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Set `key` to `value` in `table` (insert or overwrite).
    Put {
        /// Target table.
        table: TableId,
        /// Key, memcomparable.
        key: Bytes,
        /// New value.
        value: Bytes,
    },
    /// Remove `key` from `table`; removing an absent key is not an error.
    Delete {
        /// Target table.
        table: TableId,
        /// Key to remove.
        key: Bytes,
    },
    /// Remove every key of `table` (DROP TABLE).
    DropTable {
        /// The table to empty.
        table: TableId,
    },
}

/// All changes of one epoch, applied atomically by [`StateStore::commit`].
///
/// Keys and values may be slices of buffers shared by many operations (writers pack a
/// batch's rows into one buffer); a store that keeps them after the commit copies them.
///
/// Operations apply in order, so a later put of the same key wins; a `DropTable` followed by
/// puts leaves only those puts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
    durability: Durability,
}

/// What a committed batch survives, weakest first (see [`StateStore::commit`]).
///
/// Why four: a durable backend pays per byte for its log. The dataflow writes every row it
/// keeps once per epoch and can produce all of it again from its sources' committed offsets,
/// so its epochs skip the log and become durable together, at a checkpoint (RocksDB: one
/// atomic flush of the memtables), as Flink's and RisingWave's state backends do. A table
/// write (DML) has no source to replay it from and is logged, as a database's commit is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Durability {
    /// Not logged: a crash before the next [`Durability::Checkpoint`] loses it and every
    /// other unlogged batch since the last checkpoint. The store then reopens as of that
    /// checkpoint plus the logged batches after it, so a logged batch must never be derived
    /// from unlogged state (such writes commit as checkpoints). For the dataflow's epochs,
    /// whose sources replay what they lose.
    Unlogged,
    /// Logged: survives the process being killed, and power loss once a later synced batch
    /// or checkpoint commits. For DML statements.
    #[default]
    Logged,
    /// Logged and synced before `commit` returns: survives power loss on its own. For writes
    /// acknowledged to a client that keeps no copy (HTTP ingest).
    Synced,
    /// It and every batch committed before it survive power loss once `commit` returns.
    /// Checkpoints, DDL, and anything derived from the dataflow's state.
    Checkpoint,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `key = value` in `table`.
    pub fn put(&mut self, table: TableId, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        self.ops.push(WriteOp::Put { table, key: key.into(), value: value.into() });
    }

    /// Queues the removal of `key` from `table`.
    pub fn delete(&mut self, table: TableId, key: impl Into<Bytes>) {
        self.ops.push(WriteOp::Delete { table, key: key.into() });
    }

    /// Queues the removal of every key of `table`.
    pub fn drop_table(&mut self, table: TableId) {
        self.ops.push(WriteOp::DropTable { table });
    }

    /// Queues every operation of `other` after this batch's own (parallel operator instances
    /// each fill a batch; the epoch commits them as one).
    pub fn append(&mut self, mut other: WriteBatch) {
        self.ops.append(&mut other.ops);
        self.durability = self.durability.max(other.durability);
    }

    /// Sets what the batch must survive once committed (default: [`Durability::Logged`]).
    pub fn set_durability(&mut self, durability: Durability) {
        self.durability = durability;
    }

    /// What the batch must survive once committed.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// The queued operations, in order.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Number of queued operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A key-value pair read from a state table.
pub type KeyValue = (Bytes, Bytes);

/// Reads of all state tables as of one committed epoch.
///
/// A snapshot never changes after it is taken, whatever commits later: this is what lets a
/// SELECT that touches several tables see them all at one epoch.
pub trait StateSnapshot: Send + Sync {
    /// The epoch this snapshot reads.
    fn epoch(&self) -> Epoch;

    /// The value of `key` in `table`, if present.
    fn get(&self, table: TableId, key: &[u8]) -> StorageResult<Option<Bytes>>;

    /// The pairs of `table` whose keys fall in `range`, in key order.
    ///
    /// Returns an iterator so that a scan of a table larger than memory can stream.
    fn scan(
        &self,
        table: TableId,
        range: KeyRange,
    ) -> StorageResult<Box<dyn Iterator<Item = StorageResult<KeyValue>> + Send + '_>>;

    /// The greatest key of `table` in `range`, if any.
    ///
    /// A log kept under increasing sequence numbers finds where it ends with this (a restarted
    /// sink's next outbox entry) in one seek, instead of reading every entry and its value.
    /// Both backends seek backwards; there is no scanning fallback to hide a slow one.
    fn last_key(&self, table: TableId, range: KeyRange) -> StorageResult<Option<Bytes>>;
}

/// The state store: atomic commits of epochs, and snapshot reads of the last committed one.
///
/// Invariants every backend keeps (checked by [`conformance`]):
/// * `commit` applies a whole batch or nothing;
/// * committed epochs strictly increase — a commit at an epoch not above the last is refused
///   with [`StorageError::EpochOutOfOrder`];
/// * a snapshot reads exactly the state after the commit of its epoch, forever;
/// * after a crash, the store reopens as of its last [`Durability::Checkpoint`] plus the
///   logged batches committed after it (a backend without a disk reopens empty).
pub trait StateStore: Send + Sync + 'static {
    /// The last committed epoch (0 for a new store).
    fn committed_epoch(&self) -> Epoch;

    /// Applies `batch` atomically as epoch `epoch`; once it returns, the batch survives what
    /// its [`WriteBatch::durability`] says.
    fn commit(&self, epoch: Epoch, batch: WriteBatch) -> StorageResult<()>;

    /// A consistent view of the last committed epoch.
    fn snapshot(&self) -> Arc<dyn StateSnapshot>;

    /// Approximate bytes the state takes where the backend keeps it (disk for a durable one),
    /// for metrics and for checking that state outgrew memory; `None` if not tracked.
    fn approximate_bytes(&self) -> Option<u64> {
        None
    }

    /// Resizes the backend's cache of stored data to `bytes` (a memory governor shrinks it
    /// while the process is over its memory limit, and grows it back). Default: no cache,
    /// nothing to do.
    fn set_cache_capacity(&self, _bytes: usize) {}

    /// Bytes the backend's cache of stored data holds now (at most its capacity, and less
    /// while it fills); `None` without a cache. A memory governor shrinking the cache cuts
    /// from this, since a cut of capacity the cache does not use frees nothing.
    fn cache_usage(&self) -> Option<usize> {
        None
    }

    /// Bytes of memory the backend holds, by part (its cache, write buffers, open files'
    /// readers), for metrics and for checking a memory limit; empty if not tracked.
    fn memory_usage(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Gives back now the space of entries deleted from `range` of `table`, rather than
    /// whenever the backend gets to it (RocksDB frees a deleted value at a compaction, which a
    /// store taking no writes may not run for hours). Blocks while it works; what the store
    /// holds does not change. Where a delete frees its space at once, there is nothing to do.
    fn reclaim(&self, _table: TableId, _range: KeyRange) -> StorageResult<()> {
        Ok(())
    }
}
