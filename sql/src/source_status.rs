//! The system tables about what sources read and sinks send: `sluice_sources` (per source
//! reader: records read, records rejected, late rows), `sluice_errors` (the rejected records
//! themselves) and `sluice_sinks` (per sink: outbox entries waiting and delivered — one per checkpoint
//! with changes, a new sink's first delivery in entries of up to 64k rows — and the last
//! error).
//!
//! Why per reader: every materialized view over a source runs its own reader (its own copy
//! of the stream, at its own position), so each reader meets a bad record once.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sluice_engine::recovery::RejectedRecord;

use crate::error::SqlResult;

fn utc_time() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(crate::types::UTC)))
}

/// The columns of `sluice_sources`.
pub fn sources_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("connector", DataType::Utf8, false),
        Field::new("view", DataType::Utf8, true),
        Field::new("records", DataType::Int64, false),
        Field::new("errors", DataType::Int64, false),
        Field::new("late_rows", DataType::Int64, false),
        Field::new("error_policy", DataType::Utf8, false),
        Field::new("position", DataType::Utf8, true),
    ]))
}

/// The columns of `sluice_errors`.
pub fn errors_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("view", DataType::Utf8, true),
        Field::new("seq", DataType::Int64, false),
        Field::new("partition", DataType::Utf8, false),
        Field::new("record_offset", DataType::Int64, false),
        Field::new("raw", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, false),
        Field::new("error_time", utc_time(), false),
    ]))
}

/// The columns of `sluice_sinks`.
pub fn sinks_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sink", DataType::Utf8, false),
        Field::new("view", DataType::Utf8, false),
        Field::new("connector", DataType::Utf8, false),
        Field::new("pending_checkpoints", DataType::Int64, false),
        Field::new("delivered_checkpoints", DataType::Int64, false),
        Field::new("delivered_changes", DataType::Int64, false),
        Field::new("last_error", DataType::Utf8, true),
    ]))
}

/// One row of `sluice_sinks`.
pub struct SinkRow {
    /// The sink.
    pub name: String,
    /// The view it sends.
    pub view: String,
    /// Its connector and format.
    pub kind: String,
    /// Checkpoints' changes in its outbox.
    pub pending: u64,
    /// Deliveries since the server started.
    pub delivered: sluice_engine::sink::SinkStatus,
}

/// `sluice_sinks` as one batch.
pub fn sinks_batch(rows: &[SinkRow]) -> SqlResult<RecordBatch> {
    Ok(RecordBatch::try_new(
        sinks_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.name.as_str()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.view.as_str()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.kind.as_str()))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.pending as i64))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.delivered.delivered_entries as i64))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.delivered.delivered_changes as i64))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.delivered.last_error.as_deref()))),
        ],
    )?)
}

/// One row of `sluice_sources`.
pub struct SourceReaderRow {
    /// The source.
    pub source: String,
    /// Its connector.
    pub connector: String,
    /// The view whose reader this is (None: a pushed source, read once for every view).
    pub view: Option<String>,
    /// Records consumed, as of the last checkpoint and since.
    pub records: u64,
    /// Records rejected.
    pub errors: u64,
    /// Rows dropped as late.
    pub late_rows: u64,
    /// `skip` or `fail`.
    pub error_policy: &'static str,
    /// The connector's checkpointed position, as text (files: each file's identity and
    /// offset; Kafka: each partition's next offset), if it has one.
    pub position: Option<String>,
}

/// One row of `sluice_errors`.
pub struct ErrorRow {
    /// The source.
    pub source: String,
    /// The view whose reader rejected it (None: a pushed source).
    pub view: Option<String>,
    /// Its number among the reader's rejected records.
    pub seq: u64,
    /// The record.
    pub record: RejectedRecord,
}

/// `sluice_sources` as one batch.
pub fn sources_batch(rows: &[SourceReaderRow]) -> SqlResult<RecordBatch> {
    let count = |f: fn(&SourceReaderRow) -> u64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| f(r) as i64)))
    };
    Ok(RecordBatch::try_new(
        sources_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.source.as_str()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.connector.as_str()))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.view.as_deref()))),
            count(|r| r.records),
            count(|r| r.errors),
            count(|r| r.late_rows),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.error_policy))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.position.as_deref()))),
        ],
    )?)
}

/// `sluice_errors` as one batch.
pub fn errors_batch(rows: &[ErrorRow]) -> SqlResult<RecordBatch> {
    Ok(RecordBatch::try_new(
        errors_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.source.as_str()))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.view.as_deref()))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.seq as i64))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.record.partition.as_str()))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.record.offset as i64))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| String::from_utf8_lossy(&r.record.raw).into_owned()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.record.reason.as_str()))),
            Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.record.at)).with_timezone(crate::types::UTC)),
        ],
    )?)
}
