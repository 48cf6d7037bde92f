//! The history feed: every row a source accepts, per checkpoint, into a durable queue that the
//! history archiver (the `sluice-history` crate) turns into Parquet files.
//!
//! ```text
//!  source reader (pulled source) ─┐        dataflow: RunningArchive.pending
//!  change log (pushed source) ────┴──────► barrier: one HISTORY_QUEUE entry (source, seq)
//!                                           = the epoch's accepted rows, in the checkpoint
//!  archiver: queue entries ──► Parquet files ──► one commit: file list += files,
//!                                                            queue -= entries
//! ```
//!
//! Why a queue in the state store rather than writing files from the dataflow: rows are
//! final only once their checkpoint commits (before that, a crash replays the source and
//! would write them again), and an object store that is slow or down must not stall the
//! views. The queue holds each epoch's rows durably with the source position that produced
//! them; the archiver trails the checkpoints and swaps queue entries for files in one atomic
//! commit, so a row is in exactly one of the two at every committed epoch. That is also what
//! a batch query over a source reads: the files, plus the queue as of the same snapshot.

use std::io::Cursor;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use sluice_storage::{KeyRange, StateSnapshot, StateStore, WriteBatch};

use crate::dataflow::SourceReader;
use crate::plan::RelationId;
use crate::recovery::system_tables;
use crate::{ChangeBatch, EngineError, EngineResult};

/// What the dataflow needs to feed a source's history.
pub struct ArchiveDefinition {
    /// The source's id; also the relation its rows arrive under (the reader's for a pulled
    /// source, the change log's for a pushed one) and the queue's key prefix.
    pub id: RelationId,
    /// The source's name, for logs.
    pub name: String,
    /// The reader of a pulled source (None: a pushed source, fed by the change log). It
    /// resumes at the position its last checkpoint recorded.
    pub reader: Option<SourceReader>,
}

/// A source's history feed inside the dataflow.
pub(crate) struct RunningArchive {
    pub(crate) id: RelationId,
    pub(crate) name: String,
    /// Accepted rows since the last checkpoint.
    pub(crate) pending: Vec<ChangeBatch>,
    /// The next queue entry's number.
    pub(crate) next_seq: u64,
    /// Whether it runs its own source reader.
    pub(crate) has_reader: bool,
    /// Its reader stopped (error policy `fail`): nothing more is queued.
    pub(crate) failed: bool,
}

/// One checkpoint's accepted rows of a source, waiting to be archived.
#[derive(Debug, Clone)]
pub struct QueuedRows {
    /// The entry's number (increasing per source).
    pub seq: u64,
    /// When its checkpoint was written (microseconds since the epoch): the partition time of
    /// rows that have no event time.
    pub written_at: i64,
    /// The rows, as the checkpoint's batches came (not concatenated: readers take them one
    /// by one, and a copy of every queued row would buy nothing).
    pub batches: Vec<RecordBatch>,
}

impl QueuedRows {
    /// How many rows the entry holds.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// The key of queue entry `seq` of source `source`.
pub fn queue_key(source: RelationId, seq: u64) -> Vec<u8> {
    let mut key = source.to_be_bytes().to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn corrupt() -> EngineError {
    EngineError::Invalid("corrupt history queue entry".into())
}

/// Encodes a queue entry: the write time, the row count (so that counting needs no decoding),
/// then the batches (all of `schema`) as one Arrow IPC stream. The batches are written as
/// they came rather than concatenated first: that would copy every archived row once more on
/// the dataflow thread.
fn encode_entry(written_at: i64, schema: &SchemaRef, batches: &[RecordBatch]) -> EngineResult<Vec<u8>> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let bytes: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
    let mut out = Vec::with_capacity(16 + bytes);
    out.extend_from_slice(&written_at.to_be_bytes());
    out.extend_from_slice(&(rows as u64).to_be_bytes());
    let mut writer = StreamWriter::try_new(&mut out, schema)?;
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        writer.write(batch)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(out)
}

fn entry_header(value: &[u8]) -> EngineResult<(i64, u64)> {
    let written_at = value.get(0..8).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes).ok_or_else(corrupt)?;
    let rows = value.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).ok_or_else(corrupt)?;
    Ok((written_at, rows))
}

fn decode_entry(seq: u64, value: &[u8], schema: &SchemaRef) -> EngineResult<QueuedRows> {
    let (written_at, _) = entry_header(value)?;
    let reader = StreamReader::try_new(Cursor::new(value.get(16..).ok_or_else(corrupt)?), None)?;
    // Each batch as rows of `schema` (the same columns, no copy).
    let batches = reader
        .map(|batch| Ok(RecordBatch::try_new(SchemaRef::clone(schema), batch?.columns().to_vec())?))
        .collect::<EngineResult<Vec<_>>>()?;
    Ok(QueuedRows { seq, written_at, batches })
}

fn entry_seq(key: &[u8]) -> EngineResult<u64> {
    key.get(4..12).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes).ok_or_else(corrupt)
}

/// Source `source`'s queued rows as of `snapshot`, oldest first, as rows of `schema` (the
/// source's columns); at most the entries that reach `max_rows` rows or `max_bytes` bytes of
/// decoded rows, whichever comes first (at least one entry).
pub fn queued_rows(
    snapshot: &dyn StateSnapshot,
    source: RelationId,
    schema: &SchemaRef,
    max_rows: usize,
    max_bytes: usize,
) -> EngineResult<Vec<QueuedRows>> {
    let mut out = Vec::new();
    let (mut rows, mut bytes) = (0, 0);
    for entry in queued_entries(snapshot, source, schema)? {
        if rows >= max_rows || bytes >= max_bytes {
            break;
        }
        let entry = entry?;
        rows += entry.num_rows();
        bytes += entry.batches.iter().map(RecordBatch::get_array_memory_size).sum::<usize>();
        out.push(entry);
    }
    Ok(out)
}

/// Source `source`'s queued rows as of `snapshot`, oldest first, decoded one entry at a time
/// (as rows of `schema`, the source's columns), so a reader holds one entry, not the queue.
pub fn queued_entries<'a>(
    snapshot: &'a dyn StateSnapshot,
    source: RelationId,
    schema: &'a SchemaRef,
) -> EngineResult<impl Iterator<Item = EngineResult<QueuedRows>> + 'a> {
    let entries = snapshot.scan(system_tables::HISTORY_QUEUE, live_entries(snapshot, source)?)?;
    Ok(entries.map(move |kv| {
        let (key, value) = kv?;
        decode_entry(entry_seq(&key)?, &value, schema)
    }))
}

/// How many entries and rows of source `source` wait in the queue as of `snapshot`, read off
/// the entries' row counts (`HISTORY_QUEUE_ROWS`), not the entries.
pub fn queued_counts(snapshot: &dyn StateSnapshot, source: RelationId) -> EngineResult<(u64, u64)> {
    let (mut entries, mut rows) = (0, 0);
    for kv in snapshot.scan(system_tables::HISTORY_QUEUE_ROWS, live_entries(snapshot, source)?)? {
        let (_, value) = kv?;
        entries += 1;
        rows += value.as_ref().try_into().map(u64::from_be_bytes).map_err(|_| corrupt())?;
    }
    Ok((entries, rows))
}

/// The counter (in `COUNTERS`) of source `source`'s next queue entry number. Kept apart
/// from the queue because an emptied queue must not restart the numbering: file names are
/// made of entry numbers, and a reused number would overwrite an archived file.
fn next_seq_counter(source: RelationId) -> String {
    format!("history_next_seq/{source}")
}

/// The number of source `source`'s next queue entry.
pub(crate) fn next_queue_seq(snapshot: &dyn StateSnapshot, source: RelationId) -> EngineResult<u64> {
    let mut next = crate::recovery::read_counter(snapshot, &next_seq_counter(source))?.unwrap_or(0);
    for kv in snapshot.scan(system_tables::HISTORY_QUEUE, live_entries(snapshot, source)?)? {
        let (key, _) = kv?;
        next = next.max(entry_seq(&key)? + 1);
    }
    Ok(next)
}

/// The counter (in `COUNTERS`) of source `source`'s first entry not yet archived.
fn archived_seq_counter(source: RelationId) -> String {
    format!("history_archived_seq/{source}")
}

/// The key range of source `source`'s entries not yet archived.
///
/// Why scans start at the archived mark rather than at the source's prefix: archived entries
/// are deleted, but RocksDB keeps their (large) values until a compaction reaches them, and an
/// iterator walking over a tombstone still reads the block under it. A queue drained of
/// hundreds of MB would cost every batch query and every archiver round that much reading;
/// seeking past the mark reads none of it.
fn live_entries(snapshot: &dyn StateSnapshot, source: RelationId) -> EngineResult<KeyRange> {
    let first = crate::recovery::read_counter(snapshot, &archived_seq_counter(source))?.unwrap_or(0);
    let mut range = KeyRange::prefix(&source.to_be_bytes());
    range.start = std::ops::Bound::Included(queue_key(source, first));
    Ok(range)
}

/// Queues the removal of source `source`'s entries up to and including `last` (now archived)
/// and moves its archived mark past them. Entries are archived oldest first, so every entry
/// below the mark is gone.
pub fn remove_archived(write: &mut WriteBatch, source: RelationId, entries: impl IntoIterator<Item = u64>, last: u64) {
    for seq in entries {
        write.delete(system_tables::HISTORY_QUEUE, queue_key(source, seq));
        write.delete(system_tables::HISTORY_QUEUE_ROWS, queue_key(source, seq));
    }
    write.put(system_tables::COUNTERS, archived_seq_counter(source).into_bytes(), (last + 1).to_be_bytes().to_vec());
}

/// Gives back now the disk space of source `source`'s archived queue entries, which the
/// store would otherwise keep until a compaction happens to reach them (a server taking no
/// more rows keeps them indefinitely). The source's live entries move out of blob files they
/// share with archived ones, so call it when few are left (the archiver has caught up).
pub fn reclaim_archived(store: &dyn StateStore, source: RelationId) -> EngineResult<()> {
    store.reclaim(system_tables::HISTORY_QUEUE, KeyRange::prefix(&source.to_be_bytes()))?;
    Ok(())
}

/// Queues the removal of every queue entry of `source` (a dropped source).
pub(crate) fn clear_queue(snapshot: &dyn StateSnapshot, source: RelationId, write: &mut WriteBatch) -> EngineResult<()> {
    for kv in snapshot.scan(system_tables::HISTORY_QUEUE, live_entries(snapshot, source)?)? {
        let (key, _) = kv?;
        write.delete(system_tables::HISTORY_QUEUE_ROWS, key.to_vec());
        write.delete(system_tables::HISTORY_QUEUE, key.to_vec());
    }
    for kv in snapshot.scan(system_tables::HISTORY_FILES, KeyRange::prefix(&source.to_be_bytes()))? {
        let (key, _) = kv?;
        write.delete(system_tables::HISTORY_FILES, key.to_vec());
    }
    write.delete(system_tables::COUNTERS, next_seq_counter(source).into_bytes());
    write.delete(system_tables::COUNTERS, archived_seq_counter(source).into_bytes());
    Ok(())
}

impl RunningArchive {
    /// Writes the rows accepted since the last checkpoint as the next queue entry.
    pub(crate) fn checkpoint(&mut self, write: &mut WriteBatch) -> EngineResult<()> {
        let pending = std::mem::take(&mut self.pending);
        let batches: Vec<RecordBatch> = pending.iter().map(|changes| changes.data().clone()).collect();
        let Some(schema) = batches.first().map(RecordBatch::schema) else { return Ok(()) };
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(());
        }
        let written_at = crate::recovery::now_micros();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        write.put(system_tables::HISTORY_QUEUE, queue_key(self.id, self.next_seq), encode_entry(written_at, &schema, &batches)?);
        write.put(system_tables::HISTORY_QUEUE_ROWS, queue_key(self.id, self.next_seq), (rows as u64).to_be_bytes().to_vec());
        self.next_seq += 1;
        write.put(system_tables::COUNTERS, next_seq_counter(self.id).into_bytes(), self.next_seq.to_be_bytes().to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn entries_round_trip_and_count_without_decoding() -> EngineResult<()> {
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let rows = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))])?;
        let more = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from(vec![4]))])?;
        let value = encode_entry(42, &schema, &[rows.clone(), rows.slice(0, 0), more.clone()])?;
        assert_eq!(entry_header(&value)?, (42, 4));
        let back = decode_entry(7, &value, &schema)?;
        assert_eq!((back.seq, back.written_at), (7, 42));
        assert_eq!(back.num_rows(), 4);
        assert_eq!(
            datafusion::arrow::compute::concat_batches(&schema, &back.batches)?,
            datafusion::arrow::compute::concat_batches(&schema, &[rows.clone(), more])?
        );
        assert!(decode_entry(7, &value[..10], &schema).is_err());
        Ok(())
    }

    /// The queue's counts come from the entries' row counts, which checkpoints write and
    /// archiving removes with the entries.
    #[test]
    fn queued_counts_follow_checkpoints_and_archiving() -> EngineResult<()> {
        use sluice_storage::StateStore;
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let batch = |n: i64| RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from_iter_values(0..n))]);
        let store = sluice_storage::MemoryStateStore::new();
        let mut archive =
            RunningArchive { id: 5, name: "s".into(), pending: Vec::new(), next_seq: 0, has_reader: false, failed: false };
        let mut write = WriteBatch::new();
        archive.pending = vec![ChangeBatch::inserts(batch(3)?), ChangeBatch::inserts(batch(1)?)];
        archive.checkpoint(&mut write)?;
        archive.checkpoint(&mut write)?;
        archive.pending = vec![ChangeBatch::inserts(batch(2)?)];
        archive.checkpoint(&mut write)?;
        store.commit(1, write)?;
        assert_eq!(queued_counts(store.snapshot().as_ref(), 5)?, (2, 6));
        assert_eq!(queued_counts(store.snapshot().as_ref(), 6)?, (0, 0));
        let mut write = WriteBatch::new();
        remove_archived(&mut write, 5, [0], 0);
        store.commit(2, write)?;
        assert_eq!(queued_counts(store.snapshot().as_ref(), 5)?, (1, 2));
        Ok(())
    }
}
