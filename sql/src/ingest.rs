//! HTTP ingest: `POST /ingest/<source>` delivers a body of records to a source declared
//! `WITH (connector = 'http')`.
//!
//! ```text
//!  body ──parser (the source's ENCODE)──► rows + rejected records
//!       ──watermark──► accepted rows + late rows
//!       ──TableWriter (one durable epoch)──► change-log entry (views' input), late rows,
//!                                             rejected records, counters, watermark
//!       ──► reply {accepted, rejected, late} once that epoch is on disk
//! ```
//!
//! Why the change log: rows pushed to Sluice exist nowhere else, so they must be durable
//! before the reply; the change log (the same one table writes use) holds them until a
//! checkpoint has absorbed them into every view, and a restart replays what it had not. A
//! request is all or nothing: it commits in one epoch.

use std::sync::Arc;

use sluice_engine::recovery::{
    late_rows_counter, read_counter, record_late_rows, record_source_errors, source_errors_counter,
    system_tables, table_watermark, LateRow,
};
use sluice_engine::source::{ErrorPolicy, RejectedRecord};
use sluice_engine::watermark::{split_late, Watermark, WatermarkGenerator};
use sluice_engine::ChangeBatch;

use crate::connector::SourceInput;
use crate::error::SqlError;
use crate::provider::TableWriter;
use crate::relations::SourceEntry;

/// What became of an ingested body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestReport {
    /// Rows committed.
    pub accepted: u64,
    /// Records that could not be rows (kept in `sluice_errors`).
    pub rejected: u64,
    /// Rows behind the source's watermark (kept in `sluice_late_rows`).
    pub late: u64,
    /// Why the first rejected records were rejected (`offset N: reason`).
    pub errors: Vec<String>,
}

/// Why a body was not ingested.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No source of that name.
    #[error("source \"{0}\" does not exist")]
    UnknownSource(String),
    /// The source reads its rows itself.
    #[error("source \"{0}\" is not an http source: it reads its rows itself (connector = '{1}')")]
    NotPushed(String, String),
    /// Nothing in the body could be read, or (under `error.policy = 'fail'`) something could not.
    #[error("{0}")]
    UnreadableBody(String),
    /// The database failed.
    #[error(transparent)]
    Sql(#[from] SqlError),
}

/// Reasons reported back per request at most.
const ERRORS_REPORTED: usize = 10;

fn counter_key(name: String) -> Vec<u8> {
    name.into_bytes()
}

/// The counter of rows accepted by pushed source `id`.
pub fn records_counter(id: u32) -> String {
    format!("records/{id}")
}

/// Ingests `body` into pushed source `entry` through `writer`; returns once it is durable.
pub async fn ingest(entry: &SourceEntry, writer: &TableWriter, body: &[u8]) -> Result<IngestReport, IngestError> {
    let SourceInput::Push(encode) = &entry.setup.input else {
        return Err(IngestError::NotPushed(entry.name.clone(), entry.setup.kind.clone()));
    };
    let mut parser = encode.parser(Arc::clone(&entry.schema)).map_err(|e| SqlError::Internal(e.to_string()))?;
    let mut rejected: Vec<RejectedRecord> = Vec::new();
    let partition = format!("POST /ingest/{}", entry.name);
    let rows = parser.parse(body, 0, &partition, &mut rejected).map_err(|e| SqlError::Internal(e.to_string()))?;
    let errors: Vec<String> =
        rejected.iter().take(ERRORS_REPORTED).map(|r| format!("offset {}: {}", r.offset, r.reason)).collect();
    if rows.num_rows() == 0 {
        return Err(IngestError::UnreadableBody(if rejected.is_empty() {
            "the body holds no records".to_string()
        } else {
            format!("no record of the body could be read: {}", errors.join("; "))
        }));
    }
    if entry.setup.error_policy == ErrorPolicy::Fail && !rejected.is_empty() {
        return Err(IngestError::UnreadableBody(format!(
            "the body was refused whole (error.policy = 'fail'): {}",
            errors.join("; ")
        )));
    }
    let id = entry.id;
    let rejected_count = rejected.len() as u64;
    let report = writer
        .write_durable(|snapshot, _feeds| {
            let (accepted, late, watermark) = match &entry.watermark {
                Some(spec) => {
                    let values = spec.expr.evaluate(&rows)?.into_array(rows.num_rows())?;
                    let mut generator = WatermarkGenerator::new(table_watermark(snapshot, id)?, std::time::Duration::MAX);
                    let split = split_late(&rows, spec.time_column, values.as_ref(), &mut generator, 0, std::time::Instant::now())?;
                    let late: Vec<LateRow> = split.late_rows(chrono::Utc::now().timestamp_micros());
                    let watermark = generator.current().map(|value| Watermark { column: spec.time_column, value });
                    (split.accepted, late, watermark)
                }
                None => (rows.clone(), Vec::new(), None),
            };
            let mut write = sluice_storage::WriteBatch::new();
            let report = IngestReport {
                accepted: accepted.num_rows() as u64,
                rejected: rejected_count,
                late: late.len() as u64,
                errors: errors.clone(),
            };
            if !late.is_empty() {
                let first = read_counter(snapshot, &late_rows_counter(id))?.unwrap_or(0);
                record_late_rows(&mut write, id, first, late);
            }
            if !rejected.is_empty() {
                let first = read_counter(snapshot, &source_errors_counter(id))?.unwrap_or(0);
                record_source_errors(&mut write, id, first, rejected);
            }
            if let Some(w) = watermark {
                write.put(system_tables::TABLE_WATERMARKS, id.to_be_bytes().to_vec(), w.value.to_be_bytes().to_vec());
            }
            let total = read_counter(snapshot, &records_counter(id))?.unwrap_or(0) + report.accepted + report.rejected + report.late;
            write.put(system_tables::COUNTERS, counter_key(records_counter(id)), total.to_be_bytes().to_vec());
            let changes: Vec<(u32, ChangeBatch, Option<Watermark>)> = vec![(id, ChangeBatch::inserts(accepted), watermark)];
            Ok((write, changes, report))
        })
        .await?;
    Ok(report)
}
