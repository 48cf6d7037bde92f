//! The durable backend: every state table in one RocksDB database.
//!
//! Layout: every table's pairs are stored under a 4-byte big-endian table-id prefix (so one
//! table is one contiguous, ordered key range, and dropping it is one range tombstone): the
//! default column family holds operator state and tables, the `system` column family the
//! engine's bookkeeping (tables from [`FIRST_SYSTEM_TABLE`] up, see there why apart), and the
//! `meta` column family the committed epoch and the format version. One [`WriteBatch`]
//! becomes one RocksDB write batch across the families that also sets the epoch, so an
//! epoch's state and its number land together or not at all.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rocksdb::{
    BlockBasedOptions, BlockBasedTablePinningTier, Cache, ColumnFamilyDescriptor, Direction, FlushOptions, IteratorMode, Options, ReadOptions,
    SnapshotWithThreadMode, WriteBufferManager, WriteOptions, DB,
};

use crate::{
    Durability, Epoch, KeyRange, KeyValue, StateSnapshot, StateStore, StorageError, StorageResult, TableId, WriteBatch,
    WriteOp, FIRST_SYSTEM_TABLE,
};

/// The on-disk format this build reads and writes. Bump it whenever the layout or the value
/// encodings above the store change in a way old data cannot be read with.
///
/// 2: the engine's bookkeeping tables moved to their own column family.
/// 3: an append-only view stores its rows many to a value.
pub const FORMAT_VERSION: u32 = 3;

const META_CF: &str = "meta";
const SYSTEM_CF: &str = "system";
const EPOCH_KEY: &[u8] = b"epoch";
const FORMAT_KEY: &[u8] = b"format";
/// Pairs read from RocksDB per step of a scan (each step re-seeks after the last key).
const SCAN_CHUNK: usize = 1024;
/// Bytes a scan step reads before it stops (at least one pair): with large values (history
/// queue entries) a step of [`SCAN_CHUNK`] pairs could hold gigabytes.
const SCAN_CHUNK_BYTES: usize = 4 << 20;
/// Values at least this large are kept in blob files rather than in the LSM tree.
const BLOB_MIN_BYTES: u64 = 64 << 10;
/// Compactions relocate the live values of the oldest quarter of blob files (RocksDB's
/// default), so a file that holds mostly deleted values goes in time.
const BLOB_GC_AGE_CUTOFF: f64 = 0.25;

/// Settings of a [`RocksStateStore`].
#[derive(Debug, Clone)]
pub struct RocksOptions {
    /// Bytes of memory RocksDB may use for cached blocks and memtables together; state beyond
    /// it stays on disk and is read back on demand.
    pub memory_limit: usize,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self { memory_limit: 512 << 20 }
    }
}

fn backend(path: &Path, e: rocksdb::Error) -> StorageError {
    StorageError::Backend(format!("{}: {}", path.display(), e.into_string()))
}

/// The column family that holds `table` (see the module's layout).
fn family(db: &DB, table: TableId) -> StorageResult<&rocksdb::ColumnFamily> {
    let name = if table >= FIRST_SYSTEM_TABLE { SYSTEM_CF } else { rocksdb::DEFAULT_COLUMN_FAMILY_NAME };
    db.cf_handle(name).ok_or_else(|| StorageError::Corrupt(format!("no {name} column family")))
}

/// The handles of the two column families that hold tables, looked up once per commit rather
/// than once per written row.
struct Families<'a> {
    state: &'a rocksdb::ColumnFamily,
    system: &'a rocksdb::ColumnFamily,
}

impl<'a> Families<'a> {
    fn of(db: &'a DB) -> StorageResult<Self> {
        Ok(Self { state: family(db, 0)?, system: family(db, FIRST_SYSTEM_TABLE)? })
    }

    fn holding(&self, table: TableId) -> &'a rocksdb::ColumnFamily {
        if table >= FIRST_SYSTEM_TABLE {
            self.system
        } else {
            self.state
        }
    }
}

fn table_prefix(table: TableId) -> [u8; 4] {
    table.to_be_bytes()
}

/// `range` of `table` as stored keys: the first key it may hold, and the first key past it
/// (`None` past the last table, whose keys run to the end of the key space).
fn stored_bounds(table: TableId, range: &KeyRange) -> (Vec<u8>, Option<Vec<u8>>) {
    use std::ops::Bound;
    let start = match &range.start {
        Bound::Included(s) => stored_key(table, s),
        Bound::Excluded(s) => stored_key(table, &successor(s)),
        Bound::Unbounded => table_prefix(table).to_vec(),
    };
    let end = match &range.end {
        Bound::Included(e) => Some(stored_key(table, &successor(e))),
        Bound::Excluded(e) => Some(stored_key(table, e)),
        Bound::Unbounded => table.checked_add(1).map(|next| table_prefix(next).to_vec()),
    };
    (start, end)
}

/// The smallest key above `key`: `key` followed by a zero byte.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

/// `ops` with each run of puts and deletes between table drops in key order (stable, so the
/// operations on one key keep their order, and so does everything relative to a drop).
///
/// Why: RocksDB's memtable is a skip list that remembers where its last insert went, so keys
/// inserted in order cost a step or two each, while an epoch's writes come in the order rows
/// hashed (view rows, groups) and each one searched the list from the top: half of a
/// passthrough view's CPU time (BENCHMARKS.md, durable state).
fn in_key_order(ops: &[WriteOp]) -> impl Iterator<Item = &WriteOp> {
    fn key(op: &WriteOp) -> (TableId, &[u8]) {
        match op {
            WriteOp::Put { table, key, .. } | WriteOp::Delete { table, key } => (*table, key),
            WriteOp::DropTable { table } => (*table, &[]),
        }
    }
    let mut order: Vec<&WriteOp> = ops.iter().collect();
    for run in order.split_mut(|op| matches!(op, WriteOp::DropTable { .. })) {
        run.sort_by(|a, b| key(a).cmp(&key(b)));
    }
    order.into_iter()
}

/// Bytes a RocksDB write batch takes for `ops` with the epoch record: each operation's
/// stored key and value plus its tag and two length prefixes, and the batch header.
fn encoded_size(ops: &[WriteOp]) -> usize {
    const PER_OP: usize = 1 + 5 + 5 + 4;
    let ops: usize = ops
        .iter()
        .map(|op| match op {
            WriteOp::Put { key, value, .. } => PER_OP + key.len() + value.len(),
            WriteOp::Delete { key, .. } => PER_OP + key.len(),
            WriteOp::DropTable { .. } => 2 * PER_OP,
        })
        .sum();
    12 + ops + 64
}

/// `key` of `table` as RocksDB stores it (the table's prefix, then the key), written into
/// `buffer`, which is reused from one key to the next.
fn stored_key_into<'a>(buffer: &'a mut Vec<u8>, table: TableId, key: &[u8]) -> &'a [u8] {
    buffer.clear();
    buffer.extend_from_slice(&table_prefix(table));
    buffer.extend_from_slice(key);
    buffer
}

/// `key` of `table` as RocksDB stores it, in a buffer of its own.
fn stored_key(table: TableId, key: &[u8]) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(4 + key.len());
    stored_key_into(&mut buffer, table, key);
    buffer
}

/// A [`StateStore`] on RocksDB: state larger than memory, and commits that survive a crash.
///
/// Why RocksDB: operator state is many small keyed rows updated in batches at every
/// checkpoint, read back by key or by range — an LSM tree's sweet spot; it brings atomic write
/// batches, a write-ahead log, snapshots and a bounded block cache, which are exactly the
/// durable store's invariants.
///
/// Durability ([`Durability`]): a logged batch reaches the write-ahead log in the operating
/// system's cache, so it survives the process being killed; a synced one is fsynced too. An
/// unlogged batch goes to the memtables only, and a checkpoint flushes every memtable (one
/// atomic flush, synced) before `commit` returns. After a crash RocksDB opens as of its last
/// flush and replays the logged batches after it: exactly the trait's promise. A flush happens
/// at each checkpoint and whenever memtables fill, so unlogged data lost in a crash is at most
/// what came since the last checkpoint.
pub struct RocksStateStore {
    db: Arc<DB>,
    path: PathBuf,
    /// Held while committing, so that the epoch read and the write form one step and a
    /// snapshot never pairs one epoch's number with another epoch's data.
    commit_lock: Mutex<Epoch>,
    /// Held by [`StateStore::reclaim`], which changes a column family option for the length
    /// of its compaction.
    reclaim_lock: Mutex<()>,
    /// The block cache (memtables are charged to it), resized by
    /// [`StateStore::set_cache_capacity`].
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for RocksStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStateStore").field("path", &self.path).finish()
    }
}

impl RocksStateStore {
    /// Opens (or creates) the store in directory `path`.
    ///
    /// Fails with [`StorageError::Incompatible`] if the directory holds a store of another
    /// format version, and with [`StorageError::Backend`] if it cannot be opened (not writable,
    /// locked, corrupt) — never by starting empty over data it could not read.
    pub fn open(path: impl AsRef<Path>, options: &RocksOptions) -> StorageResult<Self> {
        let path = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&path).map_err(|e| StorageError::Backend(format!("{}: {e}", path.display())))?;
        let existed = path.join("CURRENT").exists();
        let limit = options.memory_limit.max(16 << 20);
        let cache = Cache::new_lru_cache(limit);
        // Memtables are charged to the same cache, so blocks and memtables share one budget.
        let buffers = WriteBufferManager::new_write_buffer_manager_with_cache(limit / 2, true, cache.clone());
        let mut table_options = BlockBasedOptions::default();
        table_options.set_block_cache(&cache);
        table_options.set_bloom_filter(10.0, false);
        table_options.set_cache_index_and_filter_blocks(true);
        // Partitioned index and filters: a point lookup that misses (every new group, every
        // new view row) reads one 4 KB filter partition, not a filter over the whole file. With
        // whole-file filters and state beyond the cache, the filters were evicted and re-read,
        // and reading and checksumming them took 57% of the CPU (BENCHMARKS.md, durable
        // state). The small top level of each file stays pinned in the cache; the partitions
        // are ordinary (high-priority) cache entries, L0's included, so that shrinking the
        // cache evicts them: pinned, the partitions of every freshly flushed file were memory
        // the governor could not take back, and it grew with the write rate.
        table_options.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
        table_options.set_partition_filters(true);
        table_options.set_metadata_block_size(4096);
        table_options.set_top_level_index_pinning_tier(BlockBasedTablePinningTier::All);
        table_options.set_partition_pinning_tier(BlockBasedTablePinningTier::None);
        table_options.set_unpartitioned_pinning_tier(BlockBasedTablePinningTier::None);
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_write_buffer_manager(&buffers);
        // Two flush threads and one compaction thread. Dataflow epochs skip the write-ahead
        // log, so what a checkpoint waits for is the flush of every memtable written since the
        // last one: with one flush thread compressing them (LZ4) one after the other, that
        // thread was the bottleneck of a passthrough view (BENCHMARKS.md, unlogged epochs).
        // The explicit counts are what RocksDB still honours; the crate deprecates the setters
        // in favour of `max_background_jobs`, whose split would give one flush thread per four
        // jobs.
        #[allow(deprecated)]
        {
            db_options.set_max_background_flushes(2);
            db_options.set_max_background_compactions(1);
        }
        // Every flush covers all column families at one point between two write batches, so
        // the state a crash leaves (the flushed files, plus the log's logged batches) never
        // splits a batch across families; unlogged batches rely on it (see `commit`).
        db_options.set_atomic_flush(true);
        db_options.set_keep_log_file_num(4);
        // The write-ahead log holds only logged batches (DML); each checkpoint's atomic flush
        // frees the files before it. Should checkpoints stall while DML goes on, past this
        // total RocksDB flushes on its own so that the log (replayed on restart) stays bounded.
        db_options.set_max_total_wal_size((limit as u64 / 2).clamp(64 << 20, 1 << 30));
        let mut data_options = Options::default();
        data_options.set_block_based_table_factory(&table_options);
        data_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        data_options.set_write_buffer_size((limit / 8).clamp(4 << 20, 128 << 20));
        // Up to four memtables a family (the write buffer manager still caps them all at half
        // the limit): with only two, one filled while the other flushed, so there was never a
        // second full memtable for the second flush thread.
        data_options.set_max_write_buffer_number(4);
        // A bloom filter over each memtable's keys (2% of its size): operators read before
        // they write (a view row's count, a group's accumulators) and most reads of new keys
        // miss; without it each miss searched the memtable's skip list.
        data_options.set_memtable_whole_key_filtering(true);
        data_options.set_memtable_prefix_bloom_ratio(0.02);
        // Large values (a source's history queue entries: a checkpoint's rows, often MBs) go to
        // blob files, the LSM tree keeping only a pointer. Otherwise a key-ordered block could
        // hold one huge value, and every seek landing on that block (a query skipping archived,
        // deleted entries) would read and decompress all of it; compaction would also rewrite
        // those bytes at every level. Garbage collection relocates the live values of old blob
        // files during compaction, so space of archived entries comes back.
        data_options.set_enable_blob_files(true);
        data_options.set_min_blob_size(BLOB_MIN_BYTES);
        data_options.set_blob_compression_type(rocksdb::DBCompressionType::Lz4);
        data_options.set_enable_blob_gc(true);
        data_options.set_blob_gc_age_cutoff(BLOB_GC_AGE_CUTOFF);
        let families = vec![
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, data_options.clone()),
            ColumnFamilyDescriptor::new(SYSTEM_CF, data_options),
            ColumnFamilyDescriptor::new(META_CF, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&db_options, &path, families).map_err(|e| backend(&path, e))?;
        // No rewrite of operator state's bottom-level files just to clear their sequence numbers
        // (compaction reason "BottommostFiles": RocksDB rewrites each such file once no snapshot
        // is older than it). An append-only view's files reach the bottom by trivial moves, so
        // that rewrite was half of RocksDB's CPU on a passthrough view (BENCHMARKS.md). What it
        // could drop besides is what a snapshot protected during an earlier compaction:
        // snapshots are short-lived here (operators take one per batch, a query holds one while
        // it runs), and the next compaction that reaches the file drops it. The option has no
        // setter before opening; it is set at every open.
        let state = Families::of(&db)?.state;
        db.set_options_cf(state, &[("bottommost_file_compaction_delay", &u32::MAX.to_string())]).map_err(|e| backend(&path, e))?;
        let meta = db.cf_handle(META_CF).ok_or_else(|| StorageError::Corrupt("no meta column family".into()))?;
        let format = db.get_cf(meta, FORMAT_KEY).map_err(|e| backend(&path, e))?;
        let epoch = match format {
            Some(bytes) => {
                let version = u32::from_be_bytes(bytes.as_slice().try_into().map_err(|_| {
                    StorageError::Corrupt(format!("{}: unreadable format version", path.display()))
                })?);
                if version != FORMAT_VERSION {
                    return Err(StorageError::Incompatible(format!(
                        "{} holds state of format version {version}; this build reads version {FORMAT_VERSION}",
                        path.display()
                    )));
                }
                let epoch = db.get_cf(meta, EPOCH_KEY).map_err(|e| backend(&path, e))?;
                match epoch {
                    Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| {
                        StorageError::Corrupt(format!("{}: unreadable committed epoch", path.display()))
                    })?),
                    None => 0,
                }
            }
            None if existed => {
                return Err(StorageError::Incompatible(format!(
                    "{} is a RocksDB database that Sluice did not write (it has no format version)",
                    path.display()
                )))
            }
            None => {
                let mut write = rocksdb::WriteBatch::default();
                write.put_cf(meta, FORMAT_KEY, FORMAT_VERSION.to_be_bytes());
                write.put_cf(meta, EPOCH_KEY, 0u64.to_be_bytes());
                let mut sync = WriteOptions::default();
                sync.set_sync(true);
                db.write_opt(write, &sync).map_err(|e| backend(&path, e))?;
                0
            }
        };
        Ok(Self {
            db: Arc::new(db),
            path,
            commit_lock: Mutex::new(epoch),
            reclaim_lock: Mutex::new(()),
            cache: Mutex::new(cache),
        })
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }


    /// A per-column-family integer property, summed over the column families (0 where it
    /// cannot be read).
    fn summed_property(&self, name: &str) -> u64 {
        [rocksdb::DEFAULT_COLUMN_FAMILY_NAME, SYSTEM_CF, META_CF]
            .into_iter()
            .filter_map(|family| self.db.cf_handle(family))
            .map(|cf| self.db.property_int_value_cf(cf, name).ok().flatten().unwrap_or(0))
            .sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Epoch> {
        self.commit_lock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StateStore for RocksStateStore {
    fn committed_epoch(&self) -> Epoch {
        *self.lock()
    }

    fn commit(&self, epoch: Epoch, batch: WriteBatch) -> StorageResult<()> {
        let mut committed = self.lock();
        if epoch <= *committed {
            return Err(StorageError::EpochOutOfOrder { committed: *committed, attempted: epoch });
        }
        let meta = self.db.cf_handle(META_CF).ok_or_else(|| StorageError::Corrupt("no meta column family".into()))?;
        // Sized up front: grown by doubling, a large epoch's batch would hold its old and new
        // buffers at once, a momentary spike of up to twice the batch (measured as the peaks
        // over the memory limit).
        let mut write = rocksdb::WriteBatch::with_capacity_bytes(encoded_size(batch.ops()));
        // One buffer for every stored key: the batch copies what it is given.
        let mut stored = Vec::new();
        let families = Families::of(&self.db)?;
        for op in in_key_order(batch.ops()) {
            match op {
                WriteOp::Put { table, key, value } => {
                    write.put_cf(families.holding(*table), stored_key_into(&mut stored, *table, key), value)
                }
                WriteOp::Delete { table, key } => {
                    write.delete_cf(families.holding(*table), stored_key_into(&mut stored, *table, key))
                }
                WriteOp::DropTable { table } => {
                    let cf = families.holding(*table);
                    match table.checked_add(1) {
                        Some(next) => write.delete_range_cf(cf, table_prefix(*table), table_prefix(next)),
                        None => {
                            // The last table id has no successor prefix: delete its keys one by one.
                            let start = table_prefix(*table);
                            for item in self.db.iterator_cf(cf, IteratorMode::From(&start, Direction::Forward)) {
                                let (key, _) = item.map_err(|e| backend(&self.path, e))?;
                                write.delete_cf(cf, key);
                            }
                        }
                    }
                }
            }
        }
        write.put_cf(meta, EPOCH_KEY, epoch.to_be_bytes());
        let mut options = WriteOptions::default();
        match batch.durability() {
            // A checkpoint's own writes need no log either: the flush below persists them.
            Durability::Unlogged | Durability::Checkpoint => options.disable_wal(true),
            Durability::Logged => {}
            Durability::Synced => options.set_sync(true),
        }
        self.db.write_opt(write, &options).map_err(|e| backend(&self.path, e))?;
        if batch.durability() == Durability::Checkpoint {
            // One atomic flush of every family's memtables (the database is opened with
            // `atomic_flush`): the files it writes are synced, and so is the manifest that
            // lists them, before it returns. RocksDB's own flushes (a full memtable) are
            // atomic too, so what a crash leaves is always a whole number of batches.
            let mut flush = FlushOptions::default();
            flush.set_wait(true);
            let cfs = [families.state, families.system, meta];
            self.db.flush_cfs_opt(&cfs, &flush).map_err(|e| backend(&self.path, e))?;
        }
        *committed = epoch;
        Ok(())
    }

    fn approximate_bytes(&self) -> Option<u64> {
        Some(self.summed_property("rocksdb.total-sst-files-size") + self.summed_property("rocksdb.cur-size-all-mem-tables"))
    }

    fn set_cache_capacity(&self, bytes: usize) {
        // The memtables' budget inside the cache stays as it is: shrunk with the cache (to
        // below a memtable's size) it stalled writers for good (a 256 MB limit, BENCHMARKS.md).
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).set_capacity(bytes);
    }

    fn cache_usage(&self) -> Option<usize> {
        // Blocks and, charged to the cache, the memtables.
        Some(self.cache.lock().unwrap_or_else(|p| p.into_inner()).get_usage())
    }

    fn memory_usage(&self) -> Vec<(&'static str, u64)> {
        let property = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        vec![
            // The cache holds blocks and, charged to it, the memtables.
            ("block_cache", self.cache_usage().unwrap_or(0) as u64),
            ("block_cache_pinned", property("rocksdb.block-cache-pinned-usage")),
            ("memtables", self.summed_property("rocksdb.cur-size-all-mem-tables")),
            ("table_readers", self.summed_property("rocksdb.estimate-table-readers-mem")),
        ]
    }

    /// A manual compaction of the range, through the bottom level: tombstones meet the values
    /// they delete and both go, and a blob file no remaining key points to is deleted. With
    /// large values in blob files the range's SST files hold only keys and pointers, so this
    /// rewrites little.
    fn reclaim(&self, table: TableId, range: KeyRange) -> StorageResult<()> {
        let (start, end) = stored_bounds(table, &range);
        let mut options = rocksdb::CompactOptions::default();
        options.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        // A blob file goes only once no key points into it. The range's live values are moved
        // out of every blob file they share with deleted ones (garbage collection over all blob
        // files, not just the oldest quarter), for this compaction only.
        let _one_at_a_time = self.reclaim_lock.lock().unwrap_or_else(|p| p.into_inner());
        let cf = family(&self.db, table)?;
        let set_cutoff = |cutoff: f64| {
            let cutoff = cutoff.to_string();
            self.db
                .set_options_cf(cf, &[("blob_garbage_collection_age_cutoff", cutoff.as_str())])
                .map_err(|e| backend(&self.path, e))
        };
        set_cutoff(1.0)?;
        self.db.compact_range_cf_opt(cf, Some(start), end, &options);
        set_cutoff(BLOB_GC_AGE_CUTOFF)
    }

    fn snapshot(&self) -> Arc<dyn StateSnapshot> {
        let committed = self.lock();
        let cell = SnapshotCell::new(Arc::clone(&self.db), |db| db.snapshot());
        Arc::new(RocksSnapshot { cell, epoch: *committed, path: self.path.clone() })
    }
}

type DbSnapshot<'a> = SnapshotWithThreadMode<'a, DB>;

self_cell::self_cell!(
    /// A RocksDB snapshot kept together with the database it reads, so that it can outlive
    /// the call that took it (a SELECT holds one across its whole execution).
    struct SnapshotCell {
        owner: Arc<DB>,
        #[covariant]
        dependent: DbSnapshot,
    }
);

struct RocksSnapshot {
    cell: SnapshotCell,
    epoch: Epoch,
    path: PathBuf,
}

impl RocksSnapshot {
    /// Up to [`SCAN_CHUNK`] pairs (fewer once [`SCAN_CHUNK_BYTES`] are read) of `table` from
    /// stored key `from` to before stored key `upper` (to the table's end if None; both as
    /// [`stored_bounds`] gives them), and whether the chunk stopped early (more pairs may
    /// follow).
    fn chunk(&self, table: TableId, from: &[u8], upper: Option<&[u8]>) -> StorageResult<(Vec<KeyValue>, bool)> {
        self.cell.with_dependent(|db, snapshot| {
            let cf = family(db, table)?;
            let mut options = ReadOptions::default();
            if let Some(upper) = upper {
                options.set_iterate_upper_bound(upper.to_vec());
            }
            let mut out = Vec::new();
            let mut bytes = 0;
            for item in snapshot.iterator_cf_opt(cf, options, IteratorMode::From(from, Direction::Forward)) {
                let (key, value) = item.map_err(|e| backend(&self.path, e))?;
                if key.len() < 4 || key[..4] != table_prefix(table) {
                    return Ok((out, false));
                }
                bytes += key.len() + value.len();
                out.push((Bytes::copy_from_slice(&key[4..]), Bytes::from(value.into_vec())));
                if out.len() == SCAN_CHUNK || bytes >= SCAN_CHUNK_BYTES {
                    return Ok((out, true));
                }
            }
            Ok((out, false))
        })
    }
}

impl StateSnapshot for RocksSnapshot {
    fn epoch(&self) -> Epoch {
        self.epoch
    }

    fn get(&self, table: TableId, key: &[u8]) -> StorageResult<Option<Bytes>> {
        self.cell.with_dependent(|db, snapshot| {
            snapshot
                .get_pinned_cf(family(db, table)?, stored_key(table, key))
                .map(|v| v.map(|v| Bytes::copy_from_slice(&v)))
                .map_err(|e| backend(&self.path, e))
        })
    }

    fn scan(
        &self,
        table: TableId,
        range: KeyRange,
    ) -> StorageResult<Box<dyn Iterator<Item = StorageResult<KeyValue>> + Send + '_>> {
        let (start, upper) = stored_bounds(table, &range);
        Ok(Box::new(ChunkedScan { snapshot: self, table, upper, next: Some(start), buffer: Vec::new().into_iter() }))
    }

    /// One backward seek from the range's end, bounded below by its start: RocksDB reads the
    /// last key's block and nothing before it.
    fn last_key(&self, table: TableId, range: KeyRange) -> StorageResult<Option<Bytes>> {
        let (start, end) = stored_bounds(table, &range);
        self.cell.with_dependent(|db, snapshot| {
            let cf = family(db, table)?;
            let mut options = ReadOptions::default();
            options.set_iterate_lower_bound(start);
            if let Some(end) = end {
                options.set_iterate_upper_bound(end);
            }
            let mut keys = snapshot.raw_iterator_cf_opt(cf, options);
            keys.seek_to_last();
            let last = keys.key().filter(|key| key.len() >= 4 && key[..4] == table_prefix(table));
            match last {
                Some(key) => Ok(Some(Bytes::copy_from_slice(&key[4..]))),
                None => keys.status().map(|()| None).map_err(|e| backend(&self.path, e)),
            }
        })
    }
}

/// A scan that reads the snapshot a chunk at a time, so that a table larger than memory
/// streams and no RocksDB iterator outlives one call.
struct ChunkedScan<'a> {
    snapshot: &'a RocksSnapshot,
    table: TableId,
    /// The first stored key past the range (see [`stored_bounds`]).
    upper: Option<Vec<u8>>,
    /// The stored key the next chunk starts at; None once the range is read.
    next: Option<Vec<u8>>,
    buffer: std::vec::IntoIter<KeyValue>,
}

impl Iterator for ChunkedScan<'_> {
    type Item = StorageResult<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(pair) = self.buffer.next() {
                return Some(Ok(pair));
            }
            let start = self.next.take()?;
            match self.snapshot.chunk(self.table, &start, self.upper.as_deref()) {
                Err(e) => return Some(Err(e)),
                Ok((chunk, more)) => {
                    if more {
                        if let Some((last, _)) = chunk.last() {
                            self.next = Some(stored_key(self.table, &successor(last)));
                        }
                    }
                    if chunk.is_empty() {
                        return None;
                    }
                    self.buffer = chunk.into_iter();
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rocksdb_backend_passes_conformance() {
        let dirs = Mutex::new(Vec::new());
        crate::conformance::run_all(&|| {
            let dir = tempfile::tempdir().unwrap();
            let store = RocksStateStore::open(dir.path(), &RocksOptions::default()).unwrap();
            dirs.lock().unwrap().push(dir);
            Box::new(store)
        });
    }

    #[test]
    fn commits_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RocksStateStore::open(dir.path(), &RocksOptions::default()).unwrap();
            let mut b = WriteBatch::new();
            b.put(3, b"k".to_vec(), b"v".to_vec());
            b.set_durability(Durability::Synced);
            store.commit(7, b).unwrap();
        }
        let store = RocksStateStore::open(dir.path(), &RocksOptions::default()).unwrap();
        assert_eq!(store.committed_epoch(), 7);
        assert_eq!(store.snapshot().get(3, b"k").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(store.snapshot().epoch(), 7);
    }

    /// Set in the child process of the crash test: the directory it commits to before it
    /// aborts.
    const CRASH_CHILD_DIR: &str = "SLUICE_ROCKS_CRASH_CHILD_DIR";

    fn commit_with(store: &RocksStateStore, epoch: Epoch, durability: Durability, table: TableId, pairs: &[(&str, &str)]) {
        let mut batch = WriteBatch::new();
        for (k, v) in pairs {
            batch.put(table, k.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        batch.set_durability(durability);
        store.commit(epoch, batch).unwrap();
    }

    /// A process that dies without closing the store (abort: no destructor runs, so RocksDB
    /// neither flushes nor closes) keeps its last checkpoint, which took the unlogged batches
    /// before it along, and the logged batches after it; the unlogged batches after the
    /// checkpoint are gone, and the store's epoch is the last surviving batch's.
    #[test]
    fn a_crash_keeps_the_last_checkpoint_and_the_logged_batches_after_it() {
        if let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) {
            let store = RocksStateStore::open(&dir, &RocksOptions::default()).unwrap();
            commit_with(&store, 1, Durability::Unlogged, 1, &[("a", "1"), ("b", "1")]);
            commit_with(&store, 2, Durability::Checkpoint, FIRST_SYSTEM_TABLE, &[("offset", "2")]);
            commit_with(&store, 3, Durability::Unlogged, 1, &[("a", "3"), ("c", "3")]);
            commit_with(&store, 4, Durability::Logged, 2, &[("row", "4")]);
            commit_with(&store, 5, Durability::Unlogged, FIRST_SYSTEM_TABLE, &[("offset", "5")]);
            std::process::abort();
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "rocks::tests::a_crash_keeps_the_last_checkpoint_and_the_logged_batches_after_it", "--nocapture"])
            .env(CRASH_CHILD_DIR, dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child was to abort");
        let store = RocksStateStore::open(dir.path(), &RocksOptions::default()).unwrap();
        let snapshot = store.snapshot();
        let get = |table, key: &str| snapshot.get(table, key.as_bytes()).unwrap().map(|v| String::from_utf8(v.to_vec()).unwrap());
        assert_eq!(get(1, "a").as_deref(), Some("1"));
        assert_eq!(get(1, "b").as_deref(), Some("1"));
        assert_eq!(get(1, "c"), None);
        assert_eq!(get(FIRST_SYSTEM_TABLE, "offset").as_deref(), Some("2"));
        assert_eq!(get(2, "row").as_deref(), Some("4"));
        assert_eq!(store.committed_epoch(), 4);
    }

    /// Writes are applied in key order, but the operations on one key keep their order, and
    /// a table drop still removes only what came before it.
    #[test]
    fn a_batch_applied_in_key_order_keeps_each_keys_operations_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStateStore::open(dir.path(), &RocksOptions::default()).unwrap();
        let mut batch = WriteBatch::new();
        batch.put(1, b"b".to_vec(), b"1".to_vec());
        batch.put(2, b"gone".to_vec(), b"1".to_vec());
        batch.put(1, b"a".to_vec(), b"1".to_vec());
        batch.delete(1, b"b".to_vec());
        batch.put(1, b"b".to_vec(), b"2".to_vec());
        batch.put(1, b"c".to_vec(), b"1".to_vec());
        batch.delete(1, b"c".to_vec());
        batch.drop_table(2);
        batch.put(2, b"kept".to_vec(), b"1".to_vec());
        store.commit(1, batch).unwrap();
        let snapshot = store.snapshot();
        assert_eq!(snapshot.get(1, b"a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(snapshot.get(1, b"b").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(snapshot.get(1, b"c").unwrap(), None);
        assert_eq!(snapshot.get(2, b"gone").unwrap(), None);
        assert_eq!(snapshot.get(2, b"kept").unwrap().as_deref(), Some(&b"1"[..]));
    }

    /// The memory report names its parts, and a write shows in the memtables and (charged to
    /// it) the cache.
    #[test]
    fn memory_usage_accounts_for_written_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStateStore::open(dir.path(), &RocksOptions::default()).unwrap();
        let part = |name: &str| store.memory_usage().into_iter().find(|(p, _)| *p == name).map(|(_, b)| b).unwrap();
        let before = part("memtables");
        let mut batch = WriteBatch::new();
        for i in 0u32..10_000 {
            batch.put(1, i.to_be_bytes().to_vec(), vec![7u8; 100]);
        }
        store.commit(1, batch).unwrap();
        assert!(part("memtables") >= before + 1_000_000, "{:?}", store.memory_usage());
        assert!(part("block_cache") >= part("memtables") / 2, "{:?}", store.memory_usage());
        assert!(store.memory_usage().iter().any(|(p, _)| *p == "table_readers"));
        // What the governor cuts the cache from: the cache's own count, memtables included.
        let cache_used = store.cache_usage().unwrap();
        assert!(cache_used as u64 >= part("memtables") / 2, "{cache_used} bytes in the cache");
        assert_eq!(cache_used as u64, store.db.property_int_value("rocksdb.block-cache-usage").unwrap().unwrap());
        // The governor's resize reaches the cache.
        let capacity = || store.db.property_int_value("rocksdb.block-cache-capacity").unwrap().unwrap();
        assert_eq!(capacity(), RocksOptions::default().memory_limit.max(16 << 20) as u64);
        store.set_cache_capacity(8 << 20);
        assert_eq!(capacity(), 8 << 20);
    }

    /// Bytes of the store's blob files on disk.
    fn blob_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "blob"))
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Large values deleted from a range: `reclaim` deletes their blob files at once, and
    /// leaves the values outside the range (and the range's live ones) readable.
    #[test]
    fn reclaim_frees_the_blob_files_of_deleted_values() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStateStore::open(dir.path(), &RocksOptions::default()).unwrap();
        // Bytes that do not compress (blob files are LZ4-compressed).
        let value = |i: u32| {
            let mut x = u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            (0..200 << 10)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect::<Vec<u8>>()
        };
        let mut batch = WriteBatch::new();
        for i in 0..40u32 {
            batch.put(9, i.to_be_bytes().to_vec(), value(i));
        }
        store.commit(1, batch).unwrap();
        store.db.flush().unwrap();
        let mut batch = WriteBatch::new();
        batch.put(8, b"other".to_vec(), value(7));
        store.commit(2, batch).unwrap();
        store.db.flush().unwrap();
        let written = blob_bytes(dir.path());
        assert!(written >= 40 * (200 << 10) / 2, "the values went to blob files ({written} bytes)");
        let mut batch = WriteBatch::new();
        for i in 0..39u32 {
            batch.delete(9, i.to_be_bytes().to_vec());
        }
        store.commit(3, batch).unwrap();
        store.db.flush().unwrap();
        assert!(blob_bytes(dir.path()) >= written, "deleting alone frees nothing");
        store.reclaim(9, KeyRange::all()).unwrap();
        let left = blob_bytes(dir.path());
        assert!(left < written / 4, "{left} of {written} blob bytes left after reclaim");
        let snapshot = store.snapshot();
        assert_eq!(snapshot.get(9, &39u32.to_be_bytes()).unwrap().as_deref(), Some(&value(39)[..]));
        assert_eq!(snapshot.get(9, &3u32.to_be_bytes()).unwrap(), None);
        assert_eq!(snapshot.get(8, b"other").unwrap().as_deref(), Some(&value(7)[..]));
    }

    /// Values larger than a scan step's byte budget (10 MB over steps of 4 MB) still come back
    /// whole, in order, across steps (values this size live in blob files).
    #[test]
    fn scans_of_large_values_are_complete_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStateStore::open(dir.path(), &RocksOptions::default()).unwrap();
        let mut b = WriteBatch::new();
        for i in 0..10u32 {
            b.put(1, i.to_be_bytes().to_vec(), vec![i as u8; 1 << 20]);
        }
        store.commit(1, b).unwrap();
        let snap = store.snapshot();
        let pairs: Vec<KeyValue> = snap.scan(1, KeyRange::all()).unwrap().map(|kv| kv.unwrap()).collect();
        assert_eq!(pairs.len(), 10);
        for (i, (key, value)) in pairs.iter().enumerate() {
            assert_eq!(key.as_ref(), (i as u32).to_be_bytes());
            assert!(value.len() == 1 << 20 && value.iter().all(|b| *b == i as u8));
        }
    }

    #[test]
    fn scans_longer_than_a_chunk_are_complete_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStateStore::open(dir.path(), &RocksOptions::default()).unwrap();
        let mut b = WriteBatch::new();
        for i in 0..(SCAN_CHUNK as u32 * 3 + 7) {
            b.put(1, i.to_be_bytes().to_vec(), b"v".to_vec());
        }
        b.put(2, b"x".to_vec(), b"other".to_vec());
        store.commit(1, b).unwrap();
        let snap = store.snapshot();
        let keys: Vec<Bytes> = snap.scan(1, KeyRange::all()).unwrap().map(|kv| kv.unwrap().0).collect();
        assert_eq!(keys.len(), SCAN_CHUNK * 3 + 7);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let bounded = KeyRange {
            start: std::ops::Bound::Excluded(5u32.to_be_bytes().to_vec()),
            end: std::ops::Bound::Included(2000u32.to_be_bytes().to_vec()),
        };
        assert_eq!(snap.scan(1, bounded).unwrap().count(), 1995);
    }

    /// Bookkeeping tables go to the `system` column family, operator state to the default
    /// one, and one commit spanning both is read back whole; dropping a table of either only
    /// touches its own family.
    #[test]
    fn bookkeeping_tables_are_kept_apart_from_operator_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStateStore::open(dir.path(), &RocksOptions::default()).unwrap();
        let (state, system) = (5, FIRST_SYSTEM_TABLE + 3);
        let mut b = WriteBatch::new();
        b.put(state, b"k".to_vec(), b"state".to_vec());
        b.put(system, b"k".to_vec(), b"system".to_vec());
        store.commit(1, b).unwrap();
        let in_family = |name: &str, table: TableId| {
            let cf = store.db.cf_handle(name).unwrap();
            store.db.get_cf(cf, stored_key(table, b"k")).unwrap()
        };
        assert_eq!(in_family(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, state).as_deref(), Some(&b"state"[..]));
        assert_eq!(in_family(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, system), None);
        assert_eq!(in_family(SYSTEM_CF, system).as_deref(), Some(&b"system"[..]));
        assert_eq!(in_family(SYSTEM_CF, state), None);
        let snapshot = store.snapshot();
        assert_eq!(snapshot.get(system, b"k").unwrap().as_deref(), Some(&b"system"[..]));
        assert_eq!(snapshot.scan(system, KeyRange::all()).unwrap().count(), 1);
        let mut b = WriteBatch::new();
        b.drop_table(system);
        store.commit(2, b).unwrap();
        assert_eq!(store.snapshot().get(system, b"k").unwrap(), None);
        assert_eq!(store.snapshot().get(state, b"k").unwrap().as_deref(), Some(&b"state"[..]));
        // Operator state's bottom-level files are not rewritten for their sequence numbers:
        // the option set at open is in the options file RocksDB keeps current.
        let options_file = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("OPTIONS-")))
            .max()
            .unwrap();
        let options = std::fs::read_to_string(options_file).unwrap();
        let default_family = options.split("[CFOptions \"default\"]").nth(1).unwrap().split("[CFOptions ").next().unwrap();
        assert!(default_family.contains(&format!("bottommost_file_compaction_delay={}", u32::MAX)), "{default_family}");
        let system_family = options.split("[CFOptions \"system\"]").nth(1).unwrap().split("[CFOptions ").next().unwrap();
        assert!(system_family.contains("bottommost_file_compaction_delay=0"), "{system_family}");
    }

    #[test]
    fn another_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RocksStateStore::open(dir.path(), &RocksOptions::default()).unwrap();
            let meta = store.db.cf_handle(META_CF).unwrap();
            store.db.put_cf(meta, FORMAT_KEY, 99u32.to_be_bytes()).unwrap();
        }
        match RocksStateStore::open(dir.path(), &RocksOptions::default()) {
            Err(StorageError::Incompatible(message)) => assert!(message.contains("format version 99"), "{message}"),
            other => panic!("expected an incompatible-version error, got {other:?}"),
        }
    }

    #[test]
    fn a_rocksdb_directory_sluice_did_not_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut options = Options::default();
            options.create_if_missing(true);
            let db = DB::open(&options, dir.path()).unwrap();
            db.put(b"someone else's", b"data").unwrap();
        }
        match RocksStateStore::open(dir.path(), &RocksOptions::default()) {
            Err(StorageError::Incompatible(message)) => assert!(message.contains("did not write"), "{message}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_unwritable_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(RocksStateStore::open(&file, &RocksOptions::default()), Err(StorageError::Backend(_))));
    }
}
