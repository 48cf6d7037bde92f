//! The system tables about source history: `sluice_history` (per source: what is archived,
//! what waits in the queue, how queries used it) and `sluice_history_files` (per archived
//! file). `SHOW HISTORY FOR source` sums the files per partition.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sluice_history::ArchivedFile;

use crate::error::SqlResult;

fn utc_time() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from(crate::types::UTC)))
}

/// One row of `sluice_history`.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    /// The source.
    pub source: String,
    /// Where its files are.
    pub location: String,
    /// Its archived files.
    pub files: Vec<ArchivedFile>,
    /// Rows accepted and not yet archived.
    pub queued_rows: u64,
    /// `history.retention`, as written.
    pub retention: Option<String>,
    /// The archiver's and the scans' counters.
    pub activity: sluice_history::SourceActivity,
}

/// The columns of `sluice_history`.
pub fn history_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("location", DataType::Utf8, false),
        Field::new("partitions", DataType::Int64, false),
        Field::new("files", DataType::Int64, false),
        Field::new("archived_rows", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("queued_rows", DataType::Int64, false),
        Field::new("oldest", utc_time(), true),
        Field::new("newest", utc_time(), true),
        Field::new("retention", DataType::Utf8, true),
        Field::new("scans", DataType::Int64, false),
        Field::new("files_scanned", DataType::Int64, false),
        Field::new("files_compacted", DataType::Int64, false),
        Field::new("files_skipped", DataType::Int64, false),
        Field::new("last_skipped", DataType::Utf8, true),
        Field::new("last_error", DataType::Utf8, true),
    ]))
}

/// The columns of `sluice_history_files`.
pub fn files_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("partition", DataType::Utf8, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("min_time", utc_time(), true),
        Field::new("max_time", utc_time(), true),
    ]))
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn times(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(values.collect::<TimestampMicrosecondArray>().with_timezone(crate::types::UTC))
}

/// `sluice_history`'s rows as a batch.
pub fn history_batch(rows: &[HistoryRow]) -> SqlResult<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| Some(r.source.as_str())).collect::<StringArray>()),
        Arc::new(rows.iter().map(|r| Some(format!("{}/{}/", r.location.trim_end_matches('/'), r.source))).collect::<StringArray>()),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| {
            let partitions: std::collections::BTreeSet<&str> = r.files.iter().map(|f| f.partition.as_str()).collect();
            partitions.len() as i64
        }))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.files.len() as i64))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| count(r.files.iter().map(|f| f.rows).sum()))) ),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| count(r.files.iter().map(|f| f.bytes).sum())))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| count(r.queued_rows)))),
        times(rows.iter().map(|r| r.files.iter().filter_map(|f| f.min_time).min())),
        times(rows.iter().map(|r| r.files.iter().filter_map(|f| f.max_time).max())),
        Arc::new(rows.iter().map(|r| r.retention.as_deref()).collect::<StringArray>()),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| count(r.activity.scans)))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| count(r.activity.files_scanned)))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| count(r.activity.files_compacted)))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| count(r.activity.files_skipped)))),
        Arc::new(rows.iter().map(|r| r.activity.last_skipped.as_deref()).collect::<StringArray>()),
        Arc::new(rows.iter().map(|r| r.activity.last_error.as_deref()).collect::<StringArray>()),
    ];
    Ok(RecordBatch::try_new(history_schema(), columns)?)
}

/// `sluice_history_files`' rows as a batch.
pub fn files_batch(rows: &[HistoryRow]) -> SqlResult<RecordBatch> {
    let files: Vec<(&str, &ArchivedFile)> = rows.iter().flat_map(|r| r.files.iter().map(move |f| (r.source.as_str(), f))).collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(files.iter().map(|(s, _)| Some(*s)).collect::<StringArray>()),
        Arc::new(files.iter().map(|(_, f)| Some(f.partition.as_str())).collect::<StringArray>()),
        Arc::new(files.iter().map(|(_, f)| Some(f.path.as_str())).collect::<StringArray>()),
        Arc::new(Int64Array::from_iter_values(files.iter().map(|(_, f)| count(f.rows)))),
        Arc::new(Int64Array::from_iter_values(files.iter().map(|(_, f)| count(f.bytes)))),
        times(files.iter().map(|(_, f)| f.min_time)),
        times(files.iter().map(|(_, f)| f.max_time)),
    ];
    Ok(RecordBatch::try_new(files_schema(), columns)?)
}

/// The query `SHOW HISTORY FOR source` runs: its files summed per partition.
pub fn show_history_query(source: &str) -> String {
    format!(
        "SELECT partition, count(*) AS files, sum(rows) AS rows, sum(bytes) AS bytes, min(min_time) AS min_time, \
         max(max_time) AS max_time FROM sluice_history_files WHERE source = '{}' GROUP BY partition ORDER BY partition",
        source.replace('\'', "''")
    )
}
