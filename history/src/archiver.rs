//! Turning a source's history queue into Parquet files, exactly once.
//!
//! One round: read the committed queue entries (up to [`ROWS_PER_ROUND`] rows), split their
//! rows by the hour of their event time, write one Parquet file per hour, then commit, in one
//! epoch, the files' listing and the entries' removal. The file names are made of the
//! source id and the entries' sequence numbers, so a round that a crash cut short (files
//! written, commit lost) writes the same files under the same names when it runs again, and
//! anything else unlisted is deleted at start-up: no duplicates, no gaps, no half files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStoreExt, PutPayload};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use futures::StreamExt;
use sluice_engine::archive::{queued_rows, reclaim_archived, remove_archived, QueuedRows};
use sluice_engine::plan::RelationId;
use sluice_engine::EpochCommitter;
use sluice_storage::WriteBatch;

use crate::compaction::{self, CompactionPolicy};
use crate::manifest::{self, ArchivedFile};
use crate::pins::{Retired, ScanPins};
use crate::store::HistoryStore;
use crate::HistoryError;

/// Rows archived per round at most.
const ROWS_PER_ROUND: usize = 1_000_000;
/// Bytes of decoded rows archived per round at most: a round holds its rows about three times
/// over (decoded, split by hour, encoded as Parquet), so wide rows must not fill a round by
/// count alone (a round of a million 100-byte rows took a flooding source's peak RSS from
/// 599 MB to 872 MB at a 512 MB limit; BENCHMARKS.md).
const BYTES_PER_ROUND: usize = 32 << 20;
/// How often at most the state store is asked to give back the space of archived queue
/// entries (a manual compaction of the source's queue range).
const RECLAIM_INTERVAL: Duration = Duration::from_secs(60);

const HOUR_MICROS: i64 = 3_600_000_000;

/// How a source's history is kept.
#[derive(Debug, Clone)]
pub struct HistorySpec {
    /// The source's id.
    pub id: RelationId,
    /// Its name: the prefix of its files.
    pub name: String,
    /// Its columns, as archived.
    pub schema: SchemaRef,
    /// The column whose hour places a row (the watermark column, else the first timestamp
    /// column); None: rows go by the time their checkpoint was written.
    pub time_column: Option<usize>,
    /// How often the queue is archived.
    pub flush_interval: Duration,
    /// Partitions whose hour ended longer ago than this are deleted; None keeps everything.
    pub retention: Option<Duration>,
    /// When and how far small files are merged.
    pub compaction: CompactionPolicy,
}

impl HistorySpec {
    /// The event-time column for `schema`: `watermark` if declared, else the first timestamp
    /// column.
    pub fn time_column_of(schema: &SchemaRef, watermark: Option<usize>) -> Option<usize> {
        watermark.or_else(|| schema.fields().iter().position(|f| matches!(f.data_type(), DataType::Timestamp(_, _))))
    }
}

/// `date=YYYY-MM-DD/hour=HH` of the hour starting at `hour` (None: rows without event time).
fn partition_name(hour: Option<i64>) -> String {
    const NONE: &str = "__HIVE_DEFAULT_PARTITION__";
    match hour.and_then(chrono::DateTime::from_timestamp_micros) {
        Some(t) => t.format("date=%Y-%m-%d/hour=%H").to_string(),
        None => format!("date={NONE}/hour={NONE}"),
    }
}

/// A source's time column as microseconds (whatever its unit and zone).
fn micros(column: &ArrayRef) -> Result<TimestampMicrosecondArray, HistoryError> {
    let as_micros = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    as_micros
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .cloned()
        .ok_or_else(|| HistoryError::Corrupt("the event-time column is not a timestamp".into()))
}

/// The rows of `entries` grouped by the hour they belong to.
fn split_by_hour(spec: &HistorySpec, entries: &[QueuedRows]) -> Result<BTreeMap<Option<i64>, Vec<RecordBatch>>, HistoryError> {
    let mut groups: BTreeMap<Option<i64>, Vec<RecordBatch>> = BTreeMap::new();
    for entry in entries {
        let Some(column) = spec.time_column else {
            let hour = Some(entry.written_at.div_euclid(HOUR_MICROS) * HOUR_MICROS);
            groups.entry(hour).or_default().extend(entry.batches.iter().cloned());
            continue;
        };
        for batch in &entry.batches {
            let times = micros(batch.column(column))?;
            let mut indices: BTreeMap<Option<i64>, Vec<u32>> = BTreeMap::new();
            for (i, time) in times.iter().enumerate() {
                indices.entry(time.map(|t| t.div_euclid(HOUR_MICROS) * HOUR_MICROS)).or_default().push(i as u32);
            }
            // The common case, a batch's rows all in one hour, keeps the batch as it is.
            if indices.len() == 1 {
                if let Some(hour) = indices.into_keys().next() {
                    groups.entry(hour).or_default().push(batch.clone());
                }
                continue;
            }
            for (hour, rows) in indices {
                groups.entry(hour).or_default().push(take_record_batch(batch, &UInt32Array::from(rows))?);
            }
        }
    }
    Ok(groups)
}

/// How history files are written: Snappy pages, statistics on every column.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder().set_compression(Compression::SNAPPY).build()
}

/// Encodes `batches` (all of `schema`) as one Parquet file. The writer gathers row groups
/// itself, so the batches are not concatenated first.
fn encode_parquet(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, HistoryError> {
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, SchemaRef::clone(schema), Some(writer_properties()))?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.close()?;
    Ok(out)
}

/// Every row of the Parquet file `bytes` (an error if any part of it does not decode).
pub fn decode_parquet(bytes: bytes::Bytes) -> Result<Vec<RecordBatch>, HistoryError> {
    let mut out = Vec::new();
    for batch in datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()? {
        out.push(batch?);
    }
    Ok(out)
}

/// The smallest and largest event time of `batches`.
fn time_range(spec: &HistorySpec, batches: &[RecordBatch]) -> Result<(Option<i64>, Option<i64>), HistoryError> {
    let Some(column) = spec.time_column else { return Ok((None, None)) };
    let (mut min, mut max) = (None, None);
    for batch in batches {
        let times = micros(batch.column(column))?;
        min = min.into_iter().chain(datafusion::arrow::compute::min(&times)).min();
        max = max.into_iter().chain(datafusion::arrow::compute::max(&times)).max();
    }
    Ok((min, max))
}

/// Archives up to [`ROWS_PER_ROUND`] queued rows of `spec`'s source; returns how many.
async fn archive_round(spec: &HistorySpec, store: &HistoryStore, committer: &EpochCommitter) -> Result<usize, HistoryError> {
    let snapshot = committer.store().snapshot();
    let entries = queued_rows(snapshot.as_ref(), spec.id, &spec.schema, ROWS_PER_ROUND, BYTES_PER_ROUND)?;
    drop(snapshot);
    let (Some(first), Some(last)) = (entries.first().map(|e| e.seq), entries.last().map(|e| e.seq)) else {
        return Ok(0);
    };
    let rows: usize = entries.iter().map(QueuedRows::num_rows).sum();
    let groups = split_by_hour(spec, &entries)?;
    let mut write = WriteBatch::new();
    let now = chrono::Utc::now().timestamp_micros();
    for (hour, batches) in groups {
        let row_count = batches.iter().map(RecordBatch::num_rows).sum::<usize>() as u64;
        if row_count == 0 {
            continue;
        }
        let (min_time, max_time) = time_range(spec, &batches)?;
        let schema = SchemaRef::clone(&spec.schema);
        let bytes = tokio::task::spawn_blocking(move || encode_parquet(&schema, &batches))
            .await
            .map_err(|e| HistoryError::Corrupt(format!("the Parquet encoder stopped: {e}")))??;
        let partition = partition_name(hour);
        let path = format!("{}/{partition}/{}-{first:012}-{last:012}.parquet", spec.name, spec.id);
        let size = bytes.len() as u64;
        store.object_store().put(&Path::from(path.as_str()), PutPayload::from(bytes)).await?;
        let file = ArchivedFile {
            path,
            partition,
            hour,
            rows: row_count,
            bytes: size,
            min_time,
            max_time,
            first_seq: first,
            last_seq: last,
            written_at: now,
        };
        manifest::add(&mut write, spec.id, &file)?;
    }
    remove_archived(&mut write, spec.id, entries.iter().map(|e| e.seq), last);
    write.set_durability(sluice_storage::Durability::Checkpoint);
    committer.commit(write)?;
    tracing::debug!(source = %spec.name, rows, first, last, "archived");
    Ok(rows)
}

/// Removes from `spec`'s history the partitions whose hour ended more than the retention
/// ago; returns the paths removed (to delete once no query can be reading them).
pub fn expire(spec: &HistorySpec, committer: &EpochCommitter) -> Result<Vec<String>, HistoryError> {
    let Some(retention) = spec.retention else { return Ok(Vec::new()) };
    let horizon = chrono::Utc::now().timestamp_micros() - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    let snapshot = committer.store().snapshot();
    let expired: Vec<ArchivedFile> = manifest::files(snapshot.as_ref(), spec.id)?
        .into_iter()
        .filter(|f| f.hour.is_some_and(|h| h + HOUR_MICROS <= horizon))
        .collect();
    drop(snapshot);
    if expired.is_empty() {
        return Ok(Vec::new());
    }
    let mut write = WriteBatch::new();
    for file in &expired {
        manifest::remove(&mut write, spec.id, &file.path);
    }
    write.set_durability(sluice_storage::Durability::Checkpoint);
    committer.commit(write)?;
    tracing::info!(source = %spec.name, files = expired.len(), "history past its retention removed");
    Ok(expired.into_iter().map(|f| f.path).collect())
}

/// Whether `path` is named like a file the archiver writes.
fn is_history_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some(stem) = name.strip_suffix(".parquet") else { return false };
    let stem = stem.strip_suffix("-c").unwrap_or(stem);
    let parts: Vec<&str> = stem.split('-').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Deletes every history file in `store` under `prefix` that `keep` does not hold and whose
/// source id `owned` accepts: what a crash left between writing files and committing them,
/// or a dropped source's files. Returns how many were deleted.
pub async fn delete_unlisted(
    store: &HistoryStore,
    prefix: Option<&str>,
    keep: &std::collections::HashSet<String>,
    owned: &(dyn Fn(RelationId) -> bool + Sync),
) -> Result<usize, HistoryError> {
    let prefix = prefix.map(Path::from);
    let mut listing = store.object_store().list(prefix.as_ref());
    let mut doomed = Vec::new();
    while let Some(meta) = listing.next().await {
        let path = meta?.location.to_string();
        if !is_history_file(&path) || keep.contains(&path) {
            continue;
        }
        let name = path.rsplit('/').next().unwrap_or(&path);
        let id = name.split('-').next().and_then(|id| id.parse::<RelationId>().ok());
        if id.is_some_and(owned) {
            doomed.push(path);
        }
    }
    for path in &doomed {
        delete_quietly(store, path).await;
    }
    Ok(doomed.len())
}

/// Deletes `path`, logging (not failing on) an error: an undeleted file is only garbage.
pub async fn delete_quietly(store: &HistoryStore, path: &str) {
    match store.object_store().delete(&Path::from(path)).await {
        Ok(()) | Err(datafusion::object_store::Error::NotFound { .. }) => {}
        Err(e) => tracing::warn!(%path, error = %e, "cannot delete a history file"),
    }
}

/// Deletes the retired files no query can be reading any more.
pub async fn delete_retired(store: &HistoryStore, retired: &mut Retired, pins: &ScanPins) {
    for path in retired.due(pins) {
        delete_quietly(store, &path).await;
    }
}

/// Runs `spec`'s archiving until aborted: every flush interval, the whole committed queue is
/// archived, then small files are merged, expired partitions removed, and retired files no
/// query reads any more deleted.
pub async fn run(
    spec: HistorySpec,
    store: HistoryStore,
    committer: Arc<EpochCommitter>,
    status: Arc<crate::HistoryStatus>,
    pins: Arc<ScanPins>,
) {
    let mut retired = Retired::default();
    let mut unreadable = compaction::UnreadableFiles::default();
    let mut timer = tokio::time::interval(spec.flush_interval.max(Duration::from_millis(10)));
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Space to reclaim: archived rows since the last reclaim, or whatever an earlier run of
    // the server left (so it is reclaimed once at start).
    let mut reclaim_due = true;
    let mut last_reclaim: Option<tokio::time::Instant> = None;
    loop {
        timer.tick().await;
        let mut caught_up = false;
        loop {
            match archive_round(&spec, &store, &committer).await {
                Ok(rows) => {
                    status.record_round(spec.id, rows, None);
                    reclaim_due |= rows > 0;
                    if rows < ROWS_PER_ROUND {
                        caught_up = true;
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(source = %spec.name, error = %e, "archiving failed; retrying at the next interval");
                    status.record_round(spec.id, 0, Some(e.to_string()));
                    break;
                }
            }
        }
        // The state store's space of archived entries, given back once the queue is short
        // (what is left moves) and at most once a minute.
        if caught_up && reclaim_due && last_reclaim.is_none_or(|at| at.elapsed() >= RECLAIM_INTERVAL) {
            let state = Arc::clone(committer.store());
            let id = spec.id;
            let reclaimed = tokio::task::spawn_blocking(move || reclaim_archived(state.as_ref(), id).map_err(|e| e.to_string()))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            if let Err(error) = reclaimed {
                tracing::warn!(source = %spec.name, %error, "cannot reclaim the archived queue's space");
            }
            reclaim_due = false;
            last_reclaim = Some(tokio::time::Instant::now());
        }
        match compaction::compact(&spec, &store, &committer, &mut unreadable).await {
            Ok((done, paths)) => {
                status.record_compaction(spec.id, done.inputs);
                retired.add(paths);
            }
            Err(e) => tracing::warn!(source = %spec.name, error = %e, "compaction failed; retrying at the next interval"),
        }
        match expire(&spec, &committer) {
            Ok(paths) => retired.add(paths),
            Err(e) => tracing::warn!(source = %spec.name, error = %e, "cannot expire history"),
        }
        delete_retired(&store, &mut retired, &pins).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_and_file_names() {
        assert_eq!(partition_name(Some(1_431_856_800_000_000)), "date=2015-05-17/hour=10");
        assert_eq!(partition_name(None), "date=__HIVE_DEFAULT_PARTITION__/hour=__HIVE_DEFAULT_PARTITION__");
        assert!(is_history_file("s/date=2015-05-17/hour=10/12-000000000001-000000000004.parquet"));
        assert!(is_history_file("s/date=2015-05-17/hour=10/12-000000000001-000000000004-c.parquet"));
        assert!(!is_history_file("s/date=2015-05-17/hour=10/notes.parquet"));
        assert!(!is_history_file("_sluice_probe"));
    }
}
