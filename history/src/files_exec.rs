//! Reading a query's archived files so that one unreadable file costs its own rows, not the
//! query: a file that is missing, truncated or corrupt is skipped whole, reported and counted.
//!
//! Why a node of our own instead of one `DataSourceExec` over every file: DataFusion's file
//! scan fails the whole stream on the first bad file, and may split files into byte ranges
//! across partitions, so nothing could tell which rows came from which file. Here each file is
//! its own one-file Parquet scan (projection, predicate and row-group pruning as before), run
//! one after another per output partition, and its rows are held back until the file has been
//! read to the end. A file that fails on the way is dropped with its rows, so a skip is never
//! a partial file. A very large file (more than [`HOLD_LIMIT`] of decoded rows) starts
//! passing its rows on before it ends; if it then fails, the query fails, naming it.
//!
//! Which failures skip: a file the store says is not there, one whose size is no longer the
//! written one, and one that, read again whole, does not decode. Any other failure (network,
//! permissions, the query's own errors) fails the query: skipping then would give a wrong
//! answer silently.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::object_store::path::Path;
use datafusion::object_store::ObjectStoreExt;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use futures::StreamExt;

use crate::pins::ScanPin;
use crate::store::HistoryStore;

/// Decoded rows of one file held back before they are passed on unconfirmed.
pub const HOLD_LIMIT: usize = 64 << 20;

/// Called with a skipped file's path and why it was skipped.
pub type SkipReport = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// One archived file and the one-file Parquet scan that reads it.
#[derive(Debug, Clone)]
pub struct FileScan {
    /// Its path in the history store.
    pub path: String,
    /// Its size as listed.
    pub bytes: u64,
    /// The scan.
    pub plan: Arc<dyn ExecutionPlan>,
}

/// Reads archived files one at a time per partition, skipping unreadable ones whole.
pub struct ArchivedFilesExec {
    partitions: Vec<Vec<FileScan>>,
    store: HistoryStore,
    report: SkipReport,
    hold_limit: usize,
    properties: Arc<PlanProperties>,
    /// Keeps retired files from deletion while this plan exists.
    _pin: Arc<ScanPin>,
}

impl fmt::Debug for ArchivedFilesExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchivedFilesExec").field("files", &self.partitions.iter().map(Vec::len).sum::<usize>()).finish()
    }
}

impl ArchivedFilesExec {
    /// Reads `files` (each a one-file scan producing `schema`) over `partitions` partitions.
    pub fn new(
        files: Vec<FileScan>,
        partitions: usize,
        schema: SchemaRef,
        store: HistoryStore,
        report: SkipReport,
        pin: Arc<ScanPin>,
    ) -> Self {
        let count = partitions.clamp(1, files.len().max(1));
        let mut groups: Vec<Vec<FileScan>> = vec![Vec::new(); count];
        for (i, file) in files.into_iter().enumerate() {
            groups[i % count].push(file);
        }
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(count),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self { partitions: groups, store, report, hold_limit: HOLD_LIMIT, properties: Arc::new(properties), _pin: pin }
    }

    /// Decoded bytes of a file held back before its rows pass on unconfirmed (default
    /// [`HOLD_LIMIT`]).
    #[cfg(test)]
    pub fn with_hold_limit(mut self, bytes: usize) -> Self {
        self.hold_limit = bytes;
        self
    }
}

impl DisplayAs for ArchivedFilesExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let files: usize = self.partitions.iter().map(Vec::len).sum();
        write!(f, "ArchivedFilesExec: files={files}, partitions={}", self.partitions.len())
    }
}

impl ExecutionPlan for ArchivedFilesExec {
    fn name(&self) -> &str {
        "ArchivedFilesExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("ArchivedFilesExec has no children".into()))
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let files = self
            .partitions
            .get(partition)
            .ok_or_else(|| DataFusionError::Internal(format!("ArchivedFilesExec has no partition {partition}")))?;
        let reader = FileReader {
            files: files.iter().cloned().collect(),
            context,
            store: self.store.clone(),
            report: Arc::clone(&self.report),
            hold_limit: self.hold_limit,
            current: None,
            ready: VecDeque::new(),
            done: false,
        };
        let stream = futures::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), stream)))
    }
}

/// The file being read: its rows so far, held back until it ends (or passed on, past the
/// hold limit).
struct Reading {
    file: FileScan,
    stream: SendableRecordBatchStream,
    held: Vec<RecordBatch>,
    held_bytes: usize,
    passing_on: bool,
}

/// One partition's files, read one after another.
struct FileReader {
    files: VecDeque<FileScan>,
    context: Arc<TaskContext>,
    store: HistoryStore,
    report: SkipReport,
    hold_limit: usize,
    current: Option<Reading>,
    ready: VecDeque<RecordBatch>,
    done: bool,
}

impl FileReader {
    async fn next(&mut self) -> Option<DfResult<RecordBatch>> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                return Some(Ok(batch));
            }
            if self.done {
                return None;
            }
            let Some(reading) = self.current.as_mut() else {
                let Some(file) = self.files.pop_front() else {
                    self.done = true;
                    return None;
                };
                match file.plan.execute(0, Arc::clone(&self.context)) {
                    Ok(stream) => {
                        self.current = Some(Reading { file, stream, held: Vec::new(), held_bytes: 0, passing_on: false })
                    }
                    Err(e) => {
                        if let Some(e) = self.skip_or_fail(&file, e, false).await {
                            return Some(Err(e));
                        }
                    }
                }
                continue;
            };
            match reading.stream.next().await {
                Some(Ok(batch)) if reading.passing_on => return Some(Ok(batch)),
                Some(Ok(batch)) => {
                    reading.held_bytes += batch.get_array_memory_size();
                    reading.held.push(batch);
                    if reading.held_bytes > self.hold_limit {
                        reading.passing_on = true;
                        self.ready.extend(reading.held.drain(..));
                    }
                }
                Some(Err(e)) => {
                    let Some(failed) = self.current.take() else { continue };
                    if let Some(e) = self.skip_or_fail(&failed.file, e, failed.passing_on).await {
                        return Some(Err(e));
                    }
                }
                None => {
                    if let Some(finished) = self.current.take() {
                        self.ready.extend(finished.held);
                    }
                }
            }
        }
    }

    /// Skips `file` (reporting it) if `error` says the file itself is unreadable and none of
    /// its rows were passed on; otherwise ends the stream with the error.
    async fn skip_or_fail(&mut self, file: &FileScan, error: DataFusionError, passed_on: bool) -> Option<DataFusionError> {
        match unreadable_file(&self.store, file, &error).await {
            Some(reason) if !passed_on => {
                tracing::warn!(path = %file.path, %reason, "history file skipped");
                (self.report)(&file.path, &reason);
                None
            }
            Some(reason) => {
                self.done = true;
                Some(DataFusionError::External(Box::new(crate::HistoryError::Corrupt(format!(
                    "history file {} became unreadable after part of it was returned: {reason}",
                    file.path
                )))))
            }
            None => {
                self.done = true;
                Some(error)
            }
        }
    }
}

/// The first error of type `T` in `error`'s chain of sources.
fn find<'a, T: std::error::Error + 'static>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Why `file` is unreadable, if `error` is about the file (missing, cut short, corrupt)
/// rather than about the store, the network or the query.
///
/// The scan's errors cannot say which: a store failure while reading a footer reaches us as
/// Parquet error text. So the file is looked at again: gone, or not the size it was written
/// with, it is unreadable; the same size, it is read whole here, and only if it then fails to
/// decode is it corrupt. A store error on the way means the store, not the file, failed.
async fn unreadable_file(store: &HistoryStore, file: &FileScan, error: &DataFusionError) -> Option<String> {
    use datafusion::object_store::Error as StoreError;
    let store_error = find::<StoreError>(error);
    // Decoding errors reach us as Parquet errors, or as Arrow errors carrying Parquet text
    // (a corrupt page met mid-stream); a query's own Arrow errors come here too, and are told
    // apart below by the file decoding fine.
    if store_error.is_none()
        && find::<datafusion::parquet::errors::ParquetError>(error).is_none()
        && find::<datafusion::arrow::error::ArrowError>(error).is_none()
    {
        return None;
    }
    const MISSING: &str = "the file is missing";
    if matches!(store_error, Some(StoreError::NotFound { .. })) {
        return Some(MISSING.to_string());
    }
    let path = Path::from(file.path.as_str());
    match store.object_store().head(&path).await {
        Ok(meta) if meta.size != file.bytes => return Some(format!("the file is {} bytes, {} were written", meta.size, file.bytes)),
        Ok(_) => {}
        Err(StoreError::NotFound { .. }) => return Some(MISSING.to_string()),
        Err(_) => return None,
    }
    let bytes = match store.object_store().get(&path).await {
        Ok(read) => read.bytes().await.ok()?,
        Err(StoreError::NotFound { .. }) => return Some(MISSING.to_string()),
        Err(_) => return None,
    };
    match tokio::task::spawn_blocking(move || crate::archiver::decode_parquet(bytes)).await {
        Ok(Err(e)) => Some(format!("the file is not valid Parquet: {e}")),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::manifest::ArchivedFile;
    use crate::pins::ScanPins;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::physical_plan::ParquetSource;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::basic::Compression;
    use datafusion::parquet::file::properties::WriterProperties;
    use datafusion::prelude::SessionContext;
    use std::sync::Mutex;

    /// A Parquet file of `rows` rows in row groups of 1,000 whose middle is overwritten, so its
    /// footer reads and its first row groups decode, but a later one does not.
    fn damaged_file(dir: &std::path::Path, name: &str, rows: i64) -> ArchivedFile {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let properties = WriterProperties::builder().set_compression(Compression::SNAPPY).set_max_row_group_row_count(Some(1_000)).build();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, Arc::clone(&schema), Some(properties)).unwrap();
        let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values((0..rows).map(|i| i * 7919 % 104_729)))]).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let (from, to) = (out.len() * 6 / 10, out.len() * 8 / 10);
        out[from..to].fill(0xff);
        std::fs::write(dir.join(name), &out).unwrap();
        ArchivedFile {
            path: name.into(),
            partition: String::new(),
            hour: None,
            rows: rows as u64,
            bytes: out.len() as u64,
            min_time: None,
            max_time: None,
            first_seq: 0,
            last_seq: 0,
            written_at: 0,
        }
    }

    async fn run(hold_limit: usize) -> (Result<usize, String>, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let store = HistoryStore::local(dir.path()).unwrap();
        let file = damaged_file(dir.path(), "1-000000000000-000000000000.parquet", 20_000);
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let source = Arc::new(ParquetSource::new(Arc::clone(&schema)));
        let scan = crate::scan::one_file_scan(&store, &source, &file, None, None).unwrap();
        let skipped = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&skipped);
        let report: SkipReport = Arc::new(move |path: &str, _why: &str| seen.lock().unwrap().push(path.to_string()));
        let pins = Arc::new(ScanPins::default());
        let exec = ArchivedFilesExec::new(vec![scan], 1, schema, store.clone(), report, Arc::new(pins.pin()))
            .with_hold_limit(hold_limit);
        let ctx = SessionContext::new();
        store.register(&ctx);
        let mut stream = exec.execute(0, ctx.task_ctx()).unwrap();
        let mut rows = 0;
        let result = loop {
            match stream.next().await {
                Some(Ok(batch)) => rows += batch.num_rows(),
                Some(Err(e)) => break Err(e.to_string()),
                None => break Ok(rows),
            }
        };
        let skipped = skipped.lock().unwrap().clone();
        (result, skipped)
    }

    #[tokio::test]
    async fn a_file_that_fails_midway_is_skipped_whole_or_fails_the_query_once_rows_passed_on() {
        // Held back until the end: the damaged file is skipped whole, none of its rows out.
        let (result, skipped) = run(HOLD_LIMIT).await;
        assert_eq!(result, Ok(0));
        assert_eq!(skipped, vec!["1-000000000000-000000000000.parquet".to_string()]);
        // Passed on before the damage: the query fails, naming the file, and skips nothing.
        let (result, skipped) = run(1).await;
        let error = result.unwrap_err();
        assert!(error.contains("1-000000000000-000000000000.parquet") && error.contains("after part of it was returned"), "{error}");
        assert!(skipped.is_empty());
    }
}
