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
    /// Counters that must survive a restart (next object id, next hidden row id).
    pub const COUNTERS: TableId = u32::MAX - 4;
}

const OP_COLUMN: &str = "__sluice_op";

/// The key of change-log entry `seq`: big-endian, so entries scan in commit order.
pub fn log_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Encodes one change-log entry: the relation, then the changes as an Arrow IPC stream whose
/// last column is the op.
pub fn encode_log_entry(relation: RelationId, changes: &ChangeBatch) -> EngineResult<Vec<u8>> {
    let data = changes.data();
    let mut fields: Vec<Field> = data.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(OP_COLUMN, DataType::Int8, false));
    let mut columns = data.columns().to_vec();
    columns.push(Arc::new(changes.ops().clone()));
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    let mut out = relation.to_be_bytes().to_vec();
    let mut writer = StreamWriter::try_new(&mut out, &schema)?;
    writer.write(&batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

/// Decodes a change-log entry written by [`encode_log_entry`].
pub fn decode_log_entry(value: &[u8]) -> EngineResult<(RelationId, ChangeBatch)> {
    let corrupt = || EngineError::Invalid("corrupt change-log entry".into());
    let (relation, ipc) = value.split_at_checked(4).ok_or_else(corrupt)?;
    let relation = RelationId::from_be_bytes(relation.try_into().map_err(|_| corrupt())?);
    let reader = StreamReader::try_new(Cursor::new(ipc), None)?;
    let schema = reader.schema();
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
    Ok((relation, ChangeBatch::try_new(data, ops)?))
}

/// Every change-log entry of `snapshot`, in commit order.
pub fn pending_changes(snapshot: &dyn StateSnapshot) -> EngineResult<Vec<(u64, RelationId, ChangeBatch)>> {
    let mut out = Vec::new();
    for kv in snapshot.scan(system_tables::CHANGE_LOG, KeyRange::all())? {
        let (key, value) = kv?;
        let seq = u64::from_be_bytes(key.as_ref().try_into().map_err(|_| EngineError::Invalid("corrupt change-log key".into()))?);
        let (relation, changes) = decode_log_entry(&value)?;
        out.push((seq, relation, changes));
    }
    Ok(out)
}

/// The committed offset of source reader `reader` (0 if it never checkpointed).
pub fn source_offset(snapshot: &dyn StateSnapshot, reader: RelationId) -> EngineResult<u64> {
    Ok(match snapshot.get(system_tables::SOURCE_OFFSETS, &reader.to_be_bytes())? {
        Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| EngineError::Invalid("corrupt source offset".into()))?),
        None => 0,
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
        let encoded = encode_log_entry(42, &changes).unwrap();
        let (relation, decoded) = decode_log_entry(&encoded).unwrap();
        assert_eq!(relation, 42);
        assert_eq!(decoded, changes);
        assert!(decode_log_entry(&encoded[..6]).is_err());
    }
}
