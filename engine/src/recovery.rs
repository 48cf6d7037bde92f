//! What the dataflow keeps in the store besides operator state, so that a restart resumes
//! exactly where the last checkpoint left off.
//!
//! ```text
//!   DML commit ── rows + change-log entry (seq N) ──► store      (one epoch)
//!              └─ Changes(seq N) ──► dataflow
//!   barrier    ── operator state + delete log entries ≤ processed
//!                 + source offsets + failed views ─────────► store (one durable epoch)
//!   restart    ── views rebuilt over their committed state; every log entry still in the
//!                 store is replayed in order; source readers resume at their offsets
//! ```
//!
//! Why a change log for tables: a DML statement commits its rows at once (a SELECT sees them),
//! but views absorb its changes only at the next checkpoint. The log entry, committed in the
//! same epoch as the rows, is the statement's changes until a checkpoint has absorbed them
//! into every view (the checkpoint deletes it in the same epoch). So after a crash the entries
//! left are exactly the changes the views' committed state lacks: replaying them loses
//! nothing and counts nothing twice.

use std::io::Cursor;

use datafusion::arrow::array::{Array, Int8Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use sluice_storage::{KeyRange, StateSnapshot, TableId};
use std::sync::Arc;

use crate::plan::RelationId;
use crate::watermark::Watermark;
use crate::{ChangeBatch, EngineError, EngineResult};

/// Reserved state-table ids. User objects (tables, views, operator state) get ids from 1 up;
/// these sit at the top of the id space, where allocation never reaches.
pub mod system_tables {
    use sluice_storage::TableId;

    /// The catalog: one entry per table, source and view (kept by the `sql` crate).
    pub const CATALOG: TableId = 0;
    /// Changes committed to tables and not yet absorbed by a checkpoint, by sequence number.
    pub const CHANGE_LOG: TableId = u32::MAX - 1;
    /// The next offset of every source reader, as of the last checkpoint.
    pub const SOURCE_OFFSETS: TableId = u32::MAX - 2;
    /// Views that stopped on an error, with the reason.
    pub const FAILED_VIEWS: TableId = u32::MAX - 3;
    /// Counters that must survive a restart (next object id, next hidden row id, late rows
    /// per relation).
    pub const COUNTERS: TableId = u32::MAX - 4;
    /// Rows dropped as late, by (relation, sequence number), the last
    /// [`super::LATE_ROWS_KEPT`] of each relation.
    pub const LATE_ROWS: TableId = u32::MAX - 5;
    /// The watermark of every table that declares one, as of its last write.
    pub const TABLE_WATERMARKS: TableId = u32::MAX - 6;
    /// Records sources could not turn into rows, by (reader, sequence number), the last
    /// [`super::SOURCE_ERRORS_KEPT`] of each reader.
    pub const SOURCE_ERRORS: TableId = u32::MAX - 7;
    /// Each sink's checkpointed changes not yet delivered, by (sink, sequence number).
    pub const SINK_OUTBOX: TableId = u32::MAX - 8;
    /// Each source's checkpointed rows not yet archived, by (source, sequence number).
    pub const HISTORY_QUEUE: TableId = u32::MAX - 9;
    /// Each source's archived files, by (source, path): what a batch query over the source
    /// reads besides the queue.
    pub const HISTORY_FILES: TableId = u32::MAX - 10;
    /// The row count of each history queue entry, by the entry's key: what counting the queue
    /// reads, instead of every entry's (large, blob-stored) value.
    pub const HISTORY_QUEUE_ROWS: TableId = u32::MAX - 11;
    /// Materialized views whose CREATE is backfilling, by view id, with the state tables it
    /// writes: a backfill larger than an epoch's memory commits partial state before the
    /// view's catalog entry exists, and a restart drops what such an entry names.
    pub const CREATING_VIEWS: TableId = u32::MAX - 12;
    /// Sinks whose CREATE is writing its first delivery (the view's current rows) to the
    /// outbox, by sink id: a first delivery larger than an epoch's memory commits entries
    /// before the sink's catalog entry exists, and a restart deletes the outbox of such a sink.
    pub const CREATING_SINKS: TableId = u32::MAX - 13;

    // The store keeps bookkeeping apart from operator state by id (see
    // `sluice_storage::FIRST_SYSTEM_TABLE`): every table above but the catalog (written only
    // by DDL) must be in that range.
    const _: () = assert!(CREATING_SINKS >= sluice_storage::FIRST_SYSTEM_TABLE);
}

/// The [`system_tables::CREATING_VIEWS`] entry of a view being created with state tables
/// `tables`, as (key, value).
pub fn creating_view_entry(view: RelationId, tables: &[TableId]) -> (Vec<u8>, Vec<u8>) {
    (view.to_be_bytes().to_vec(), tables.iter().flat_map(|t| t.to_be_bytes()).collect())
}

/// Drops the state of every view whose CREATE did not finish (the server stopped during its
/// backfill): its state tables, its recorded failure and its entry, in one durable epoch.
/// Returns the views dropped. Runs before anything is restored, so that ids the unfinished
/// view held, which the catalog never recorded as used, can be handed out again.
pub fn discard_unfinished_views(committer: &crate::EpochCommitter) -> EngineResult<Vec<RelationId>> {
    let unfinished = creating_views(committer.store().snapshot().as_ref())?;
    if unfinished.is_empty() {
        return Ok(Vec::new());
    }
    let mut write = sluice_storage::WriteBatch::new();
    for (view, tables) in &unfinished {
        for table in tables {
            write.drop_table(*table);
        }
        write.delete(system_tables::FAILED_VIEWS, view.to_be_bytes().to_vec());
        write.delete(system_tables::CREATING_VIEWS, view.to_be_bytes().to_vec());
    }
    write.set_durability(sluice_storage::Durability::Checkpoint);
    committer.commit(write)?;
    Ok(unfinished.into_iter().map(|(view, _)| view).collect())
}

/// Deletes the outbox of every sink whose CREATE did not finish (the server stopped while it
/// wrote the first delivery) and its [`system_tables::CREATING_SINKS`] entry, in one durable
/// epoch. Returns the sinks. Runs before anything is restored, like
/// [`discard_unfinished_views`].
pub fn discard_unfinished_sinks(committer: &crate::EpochCommitter) -> EngineResult<Vec<RelationId>> {
    let snapshot = committer.store().snapshot();
    let unfinished = creating_sinks(snapshot.as_ref())?;
    if unfinished.is_empty() {
        return Ok(Vec::new());
    }
    let mut write = sluice_storage::WriteBatch::new();
    for sink in &unfinished {
        crate::sink::delete_outbox(snapshot.as_ref(), *sink, &mut write)?;
        write.delete(system_tables::CREATING_SINKS, sink.to_be_bytes().to_vec());
    }
    drop(snapshot);
    write.set_durability(sluice_storage::Durability::Checkpoint);
    committer.commit(write)?;
    Ok(unfinished)
}

/// The sinks `snapshot` records as being created (see [`discard_unfinished_sinks`]).
pub fn creating_sinks(snapshot: &dyn StateSnapshot) -> EngineResult<Vec<RelationId>> {
    let mut sinks = Vec::new();
    for kv in snapshot.scan(system_tables::CREATING_SINKS, KeyRange::all())? {
        let (key, _) = kv?;
        let sink = <[u8; 4]>::try_from(key.as_ref())
            .map(u32::from_be_bytes)
            .map_err(|_| EngineError::Invalid("a creating-sink entry has a malformed key".into()))?;
        sinks.push(sink);
    }
    Ok(sinks)
}

/// The views `snapshot` records as being created (see [`creating_view_entry`]), each with
/// the state tables its backfill writes.
pub fn creating_views(snapshot: &dyn StateSnapshot) -> EngineResult<Vec<(RelationId, Vec<TableId>)>> {
    let id = |bytes: &[u8]| <[u8; 4]>::try_from(bytes).map(u32::from_be_bytes);
    let mut views = Vec::new();
    for kv in snapshot.scan(system_tables::CREATING_VIEWS, KeyRange::all())? {
        let (key, value) = kv?;
        let view = id(&key).map_err(|_| EngineError::Invalid("a creating-view entry has a malformed key".into()))?;
        if value.len() % 4 != 0 {
            return Err(EngineError::Invalid(format!("the creating-view entry of view {view} is malformed")));
        }
        let tables = value.chunks_exact(4).filter_map(|t| id(t).ok()).collect();
        views.push((view, tables));
    }
    Ok(views)
}

/// Rejected records kept per source reader in `sluice_errors` (older ones are dropped; every
/// one is counted).
pub const SOURCE_ERRORS_KEPT: u64 = 10_000;

/// Bytes of a rejected record's raw text kept (the rest is cut).
pub const RAW_BYTES_KEPT: usize = 4096;

/// The counter of rejected records of source reader `relation` in [`system_tables::COUNTERS`].
pub fn source_errors_counter(relation: RelationId) -> String {
    format!("source_errors/{relation}")
}

/// A record a source read but could not turn into a row (unparseable, or a value that does
/// not fit its column). Under `error.policy = 'skip'` it is kept in `sluice_errors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRecord {
    /// Where it came from: a file's path, a Kafka partition, an HTTP request.
    pub partition: String,
    /// Its position there: a byte offset, a Kafka offset.
    pub offset: u64,
    /// The record as read, cut to [`RAW_BYTES_KEPT`] bytes.
    pub raw: Vec<u8>,
    /// Why it was rejected.
    pub reason: String,
    /// When it was read (microseconds since the Unix epoch).
    pub at: i64,
}

/// The wall-clock time now, in microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

impl RejectedRecord {
    /// A rejected record read now; `raw` is cut to [`RAW_BYTES_KEPT`] bytes.
    pub fn new(partition: impl Into<String>, offset: u64, raw: &[u8], reason: impl Into<String>) -> Self {
        let at = now_micros();
        Self {
            partition: partition.into(),
            offset,
            raw: raw[..raw.len().min(RAW_BYTES_KEPT)].to_vec(),
            reason: reason.into(),
            at,
        }
    }

    /// The stored form: offset, time, then partition and reason (each a 4-byte length and
    /// the text), then the raw bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.partition.len() + self.reason.len() + self.raw.len());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.at.to_be_bytes());
        for text in [&self.partition, &self.reason] {
            out.extend_from_slice(&(text.len() as u32).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(&self.raw);
        out
    }

    /// Decodes [`RejectedRecord::encode`]'s output.
    pub fn decode(value: &[u8]) -> EngineResult<Self> {
        let corrupt = || EngineError::Invalid("corrupt rejected-record entry".into());
        let word = |at: usize| -> EngineResult<[u8; 8]> { value.get(at..at + 8).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt()) };
        let offset = u64::from_be_bytes(word(0)?);
        let at = i64::from_be_bytes(word(8)?);
        let mut cursor = 16;
        let mut texts = Vec::with_capacity(2);
        for _ in 0..2 {
            let len: [u8; 4] = value.get(cursor..cursor + 4).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?;
            let len = u32::from_be_bytes(len) as usize;
            let text = value.get(cursor + 4..cursor + 4 + len).ok_or_else(corrupt)?;
            texts.push(String::from_utf8_lossy(text).into_owned());
            cursor += 4 + len;
        }
        let reason = texts.pop().unwrap_or_default();
        let partition = texts.pop().unwrap_or_default();
        Ok(Self { partition, offset, raw: value[cursor..].to_vec(), reason, at })
    }
}

/// Writes `records` (encoded) of `relation` into `table` numbered from `first_seq`, drops
/// those beyond the last `kept`, and stores the new count in `counter`. Returns the count.
fn record_kept(
    write: &mut sluice_storage::WriteBatch,
    table: TableId,
    counter: String,
    kept: u64,
    relation: RelationId,
    first_seq: u64,
    records: impl IntoIterator<Item = Vec<u8>>,
) -> u64 {
    let mut seq = first_seq;
    for record in records {
        write.put(table, late_row_key(relation, seq), record);
        if let Some(old) = seq.checked_sub(kept) {
            write.delete(table, late_row_key(relation, old));
        }
        seq += 1;
    }
    write.put(system_tables::COUNTERS, counter.into_bytes(), seq.to_be_bytes().to_vec());
    seq
}

/// Writes the rejected records of source reader `relation`, numbered from `first_seq`, keeping
/// the last [`SOURCE_ERRORS_KEPT`]. Returns the new count.
pub fn record_source_errors(
    write: &mut sluice_storage::WriteBatch,
    relation: RelationId,
    first_seq: u64,
    records: Vec<RejectedRecord>,
) -> u64 {
    let encoded = records.iter().map(RejectedRecord::encode).collect::<Vec<_>>();
    record_kept(write, system_tables::SOURCE_ERRORS, source_errors_counter(relation), SOURCE_ERRORS_KEPT, relation, first_seq, encoded)
}

/// Every kept rejected record, by source reader, oldest first.
pub fn source_errors(snapshot: &dyn StateSnapshot) -> EngineResult<Vec<(RelationId, u64, RejectedRecord)>> {
    scan_kept(snapshot, system_tables::SOURCE_ERRORS, RejectedRecord::decode)
}

fn scan_kept<T>(
    snapshot: &dyn StateSnapshot,
    table: TableId,
    decode: impl Fn(&[u8]) -> EngineResult<T>,
) -> EngineResult<Vec<(RelationId, u64, T)>> {
    let mut out = Vec::new();
    for kv in snapshot.scan(table, KeyRange::all())? {
        let (key, value) = kv?;
        let corrupt = || EngineError::Invalid(format!("corrupt key in system table {table}"));
        let relation = RelationId::from_be_bytes(key.get(..4).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?);
        let seq = u64::from_be_bytes(key.get(4..12).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?);
        out.push((relation, seq, decode(&value)?));
    }
    Ok(out)
}

/// Late rows kept per relation in `sluice_late_rows` (older ones are dropped; the count of
/// every late row is kept in a counter).
pub const LATE_ROWS_KEPT: u64 = 10_000;

/// The counter of late rows of `relation` in [`system_tables::COUNTERS`].
pub fn late_rows_counter(relation: RelationId) -> String {
    format!("late_rows/{relation}")
}

/// A row dropped because its event time was behind the watermark when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateRow {
    /// Its event time (None: NULL).
    pub event_time: Option<i64>,
    /// The watermark it was behind (None: it had no time and no watermark existed yet).
    pub watermark: Option<i64>,
    /// When it arrived (microseconds since the Unix epoch).
    pub arrived_at: i64,
    /// The row, as `column=value` pairs.
    pub row: String,
}

fn optional_time(value: Option<i64>) -> [u8; 9] {
    let mut out = [0u8; 9];
    if let Some(v) = value {
        out[0] = 1;
        out[1..].copy_from_slice(&v.to_be_bytes());
    }
    out
}

impl LateRow {
    /// The stored form: event time, watermark (each a presence byte and 8 bytes), arrival
    /// time, then the row text.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(26 + self.row.len());
        out.extend_from_slice(&optional_time(self.event_time));
        out.extend_from_slice(&optional_time(self.watermark));
        out.extend_from_slice(&self.arrived_at.to_be_bytes());
        out.extend_from_slice(self.row.as_bytes());
        out
    }

    /// Decodes [`LateRow::encode`]'s output.
    pub fn decode(value: &[u8]) -> EngineResult<Self> {
        let corrupt = || EngineError::Invalid("corrupt late-row record".into());
        if value.len() < 26 {
            return Err(corrupt());
        }
        let time = |at: usize| -> EngineResult<Option<i64>> {
            Ok((value[at] == 1).then(|| i64::from_be_bytes(value[at + 1..at + 9].try_into().unwrap_or_default())))
        };
        Ok(Self {
            event_time: time(0)?,
            watermark: time(9)?,
            arrived_at: i64::from_be_bytes(value[18..26].try_into().map_err(|_| corrupt())?),
            row: String::from_utf8_lossy(&value[26..]).into_owned(),
        })
    }
}

/// The key of late row `seq` of `relation`.
pub fn late_row_key(relation: RelationId, seq: u64) -> Vec<u8> {
    let mut key = relation.to_be_bytes().to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Writes the late rows `rows` of `relation`, numbered from `first_seq`, and drops those that
/// fall out of the retention window. Returns the next sequence number (the new count).
pub fn record_late_rows(write: &mut sluice_storage::WriteBatch, relation: RelationId, first_seq: u64, rows: Vec<LateRow>) -> u64 {
    let encoded = rows.iter().map(LateRow::encode).collect::<Vec<_>>();
    record_kept(write, system_tables::LATE_ROWS, late_rows_counter(relation), LATE_ROWS_KEPT, relation, first_seq, encoded)
}

/// Every kept late row, by relation, oldest first.
pub fn late_rows(snapshot: &dyn StateSnapshot) -> EngineResult<Vec<(RelationId, u64, LateRow)>> {
    scan_kept(snapshot, system_tables::LATE_ROWS, LateRow::decode)
}

/// `column=value` pairs of row `row` of `batch`, for `sluice_late_rows`.
pub fn render_row(batch: &RecordBatch, row: usize) -> String {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let options = FormatOptions::default()
        .with_null("NULL")
        .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.f"))
        .with_timestamp_tz_format(Some("%Y-%m-%d %H:%M:%S%.f%:z"));
    let schema = batch.schema();
    let mut parts = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let value = ArrayFormatter::try_new(column.as_ref(), &options)
            .map(|f| f.value(row).to_string())
            .unwrap_or_else(|_| "?".into());
        parts.push(format!("{}={value}", field.name()));
    }
    parts.join(", ")
}

/// The watermark of table `table` after its last write, if it has one.
pub fn table_watermark(snapshot: &dyn StateSnapshot, table: RelationId) -> EngineResult<Option<i64>> {
    Ok(match snapshot.get(system_tables::TABLE_WATERMARKS, &table.to_be_bytes())? {
        Some(v) => Some(i64::from_be_bytes(v.as_ref().try_into().map_err(|_| EngineError::Invalid("corrupt table watermark".into()))?)),
        None => None,
    })
}

const OP_COLUMN: &str = "__sluice_op";

/// The key of change-log entry `seq`: big-endian, so entries scan in commit order.
pub fn log_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Encodes one change-log entry: the relation, then the changes as an Arrow IPC stream whose
/// last column is the op; the watermark the table reached with them, if any, rides in the
/// stream's schema metadata (so a replay delivers it again).
pub fn encode_log_entry(relation: RelationId, changes: &ChangeBatch, watermark: Option<Watermark>) -> EngineResult<Vec<u8>> {
    let data = changes.data();
    let mut fields: Vec<Field> = data.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(OP_COLUMN, DataType::Int8, false));
    let mut columns = data.columns().to_vec();
    columns.push(Arc::new(changes.ops().clone()));
    let mut metadata = std::collections::HashMap::new();
    if let Some(w) = watermark {
        metadata.insert(WATERMARK_COLUMN_KEY.to_string(), w.column.to_string());
        metadata.insert(WATERMARK_VALUE_KEY.to_string(), w.value.to_string());
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    let mut out = relation.to_be_bytes().to_vec();
    let mut writer = StreamWriter::try_new(&mut out, &schema)?;
    writer.write(&batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

const WATERMARK_COLUMN_KEY: &str = "sluice.watermark.column";
const WATERMARK_VALUE_KEY: &str = "sluice.watermark.value";

/// One change-log entry: the relation, its changes, and the watermark after them.
pub type LogEntry = (RelationId, ChangeBatch, Option<Watermark>);

/// Decodes a change-log entry written by [`encode_log_entry`].
pub fn decode_log_entry(value: &[u8]) -> EngineResult<LogEntry> {
    let corrupt = || EngineError::Invalid("corrupt change-log entry".into());
    let (relation, ipc) = value.split_at_checked(4).ok_or_else(corrupt)?;
    let relation = RelationId::from_be_bytes(relation.try_into().map_err(|_| corrupt())?);
    let reader = StreamReader::try_new(Cursor::new(ipc), None)?;
    let schema = reader.schema();
    let metadata = schema.metadata();
    let watermark = match (metadata.get(WATERMARK_COLUMN_KEY), metadata.get(WATERMARK_VALUE_KEY)) {
        (Some(c), Some(v)) => Some(Watermark { column: c.parse().map_err(|_| corrupt())?, value: v.parse().map_err(|_| corrupt())? }),
        _ => None,
    };
    let mut batches = Vec::new();
    for batch in reader {
        batches.push(batch?);
    }
    let batch = match batches.len() {
        0 => RecordBatch::new_empty(Arc::clone(&schema)),
        1 => batches.remove(0),
        _ => datafusion::arrow::compute::concat_batches(&schema, &batches)?,
    };
    let width = batch.num_columns().checked_sub(1).ok_or_else(corrupt)?;
    let ops = batch.column(width).as_any().downcast_ref::<Int8Array>().ok_or_else(corrupt)?.clone();
    let data = batch.project(&(0..width).collect::<Vec<_>>())?;
    let data = RecordBatch::try_new(Arc::new(Schema::new(data.schema().fields().clone())), data.columns().to_vec())?;
    Ok((relation, ChangeBatch::try_new(data, ops)?, watermark))
}

/// Every change-log entry of `snapshot`, in commit order.
pub fn pending_changes(snapshot: &dyn StateSnapshot) -> EngineResult<Vec<(u64, LogEntry)>> {
    let mut out = Vec::new();
    for kv in snapshot.scan(system_tables::CHANGE_LOG, KeyRange::all())? {
        let (key, value) = kv?;
        let seq = u64::from_be_bytes(key.as_ref().try_into().map_err(|_| EngineError::Invalid("corrupt change-log key".into()))?);
        out.push((seq, decode_log_entry(&value)?));
    }
    Ok(out)
}

/// Where a source reader stood at a checkpoint: how many records it had delivered, its
/// watermark, and its connector's own position (file offsets, Kafka offsets), which only the
/// connector interprets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourcePosition {
    /// Records delivered so far (for `datagen`, the offset of the next row).
    pub offset: u64,
    /// The source's watermark, if it declares one and it was set.
    pub watermark: Option<i64>,
    /// The connector's position, in its own encoding (empty: the start).
    pub state: Vec<u8>,
}

/// Marks the stored form that carries a connector state (earlier forms were 8 or 16 bytes).
const POSITION_FORMAT: u8 = 0xA5;

impl SourcePosition {
    /// The stored form: the offset (8 bytes, big-endian), a format byte, a watermark flag and
    /// the watermark (8 bytes) if set, then the connector state.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(18 + self.state.len());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.push(POSITION_FORMAT);
        match self.watermark {
            Some(w) => {
                out.push(1);
                out.extend_from_slice(&w.to_be_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.state);
        out
    }

    /// Decodes [`SourcePosition::encode`]'s output (and the earlier 8- and 16-byte forms).
    pub fn decode(v: &[u8]) -> EngineResult<Self> {
        let corrupt = || EngineError::Invalid("corrupt source offset".into());
        let word = |at: usize| -> EngineResult<[u8; 8]> { v.get(at..at + 8).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt()) };
        let offset = u64::from_be_bytes(word(0)?);
        if v.len() == 8 || (v.len() == 16 && v[8] != POSITION_FORMAT) {
            let watermark = if v.len() == 16 { Some(i64::from_be_bytes(word(8)?)) } else { None };
            return Ok(Self { offset, watermark, state: Vec::new() });
        }
        if v.get(8) != Some(&POSITION_FORMAT) {
            return Err(corrupt());
        }
        let (watermark, rest) = match v.get(9) {
            Some(1) => (Some(i64::from_be_bytes(word(10)?)), 18),
            Some(0) => (None, 10),
            _ => return Err(corrupt()),
        };
        Ok(Self { offset, watermark, state: v.get(rest..).ok_or_else(corrupt)?.to_vec() })
    }
}

/// The committed position of source reader `reader` (the start if it never checkpointed).
pub fn source_position(snapshot: &dyn StateSnapshot, reader: RelationId) -> EngineResult<SourcePosition> {
    Ok(match snapshot.get(system_tables::SOURCE_OFFSETS, &reader.to_be_bytes())? {
        Some(v) => SourcePosition::decode(&v)?,
        None => SourcePosition::default(),
    })
}

/// Why view `view` stopped, if a checkpoint recorded that it did.
pub fn recorded_failure(snapshot: &dyn StateSnapshot, view: TableId) -> EngineResult<Option<String>> {
    Ok(snapshot
        .get(system_tables::FAILED_VIEWS, &view.to_be_bytes())?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}

/// A `u64` counter of [`system_tables::COUNTERS`], if it was ever written.
pub fn read_counter(snapshot: &dyn StateSnapshot, name: &str) -> EngineResult<Option<u64>> {
    match snapshot.get(system_tables::COUNTERS, name.as_bytes())? {
        Some(v) => Ok(Some(u64::from_be_bytes(
            v.as_ref().try_into().map_err(|_| EngineError::Invalid(format!("corrupt counter {name}")))?,
        ))),
        None => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn log_entries_round_trip() {
        let changes = ChangeBatch::from_pretty(
            "
            I T
            + 1 /a
            - 2 .
            ",
        )
        .unwrap();
        let encoded = encode_log_entry(42, &changes, None).unwrap();
        let (relation, decoded, watermark) = decode_log_entry(&encoded).unwrap();
        assert_eq!(relation, 42);
        assert_eq!(decoded, changes);
        assert_eq!(watermark, None);
        let marked = Watermark { column: 1, value: -5 };
        let encoded = encode_log_entry(42, &changes, Some(marked)).unwrap();
        assert_eq!(decode_log_entry(&encoded).unwrap().2, Some(marked));
        assert!(decode_log_entry(&encoded[..6]).is_err());
    }

    #[test]
    fn source_positions_and_rejected_records_round_trip() {
        for position in [
            SourcePosition::default(),
            SourcePosition { offset: 7, watermark: Some(-3), state: b"files".to_vec() },
            SourcePosition { offset: 7, watermark: None, state: vec![1; 6] },
        ] {
            assert_eq!(SourcePosition::decode(&position.encode()).unwrap(), position);
        }
        let old: Vec<u8> = [9u64.to_be_bytes(), 5i64.to_be_bytes()].concat();
        assert_eq!(SourcePosition::decode(&old).unwrap(), SourcePosition { offset: 9, watermark: Some(5), state: vec![] });
        let record = RejectedRecord::new("/var/log/a.log", 42, &[b'x'; 5000], "column status: 'abc' is not an INT");
        assert_eq!(record.raw.len(), RAW_BYTES_KEPT);
        assert_eq!(RejectedRecord::decode(&record.encode()).unwrap(), record);
        assert!(RejectedRecord::decode(&record.encode()[..20]).is_err());
    }
}
