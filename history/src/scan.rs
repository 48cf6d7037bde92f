//! A batch query over a source: its archived Parquet files that the query's time predicates
//! cannot rule out, plus its queued rows, all as of the statement's snapshot.
//!
//! Files are ruled out by DataFusion's `PruningPredicate` over the file list's min/max event
//! time (so every predicate shape DataFusion can reason about prunes: ranges, BETWEEN, OR,
//! casts); inside the files that remain, the Parquet reader prunes row groups on their
//! statistics with the same predicate and reads only the projected columns. Each file is read
//! whole or skipped whole (`files_exec`); the queue is read entry by entry (`queue_exec`).

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, TimestampMicrosecondArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::catalog::Session;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::Expr;
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::datasource::listing::PartitionedFile;
use sluice_storage::StateSnapshot;

use crate::archiver::HistorySpec;
use crate::files_exec::{ArchivedFilesExec, FileScan, SkipReport};
use crate::pins::ScanPin;
use crate::queue_exec::QueuedRowsExec;
use crate::manifest::{self, ArchivedFile};
use crate::store::HistoryStore;

/// The files' event-time ranges, as DataFusion's pruning reads them.
struct FileStatistics<'a> {
    files: &'a [ArchivedFile],
    time_column: Option<(String, Option<Arc<str>>)>,
}

impl FileStatistics<'_> {
    fn times(&self, column: &Column, pick: impl Fn(&ArchivedFile) -> Option<i64>) -> Option<ArrayRef> {
        let (name, zone) = self.time_column.as_ref()?;
        if &column.name != name {
            return None;
        }
        let values: TimestampMicrosecondArray = self.files.iter().map(pick).collect();
        Some(Arc::new(values.with_timezone_opt(zone.clone())))
    }
}

impl PruningStatistics for FileStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.times(column, |f| f.min_time)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.times(column, |f| f.max_time)
    }

    fn num_containers(&self) -> usize {
        self.files.len()
    }

    fn null_counts(&self, _column: &Column) -> Option<ArrayRef> {
        None
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(self.files.iter().map(|f| Some(f.rows)).collect::<UInt64Array>()))
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

/// What a scan reads: the plan, and how many files it opens.
pub struct HistoryScan {
    /// The plan.
    pub plan: Arc<dyn ExecutionPlan>,
    /// Archived files the plan reads (after pruning).
    pub files_scanned: usize,
    /// Archived files the source has.
    pub files_total: usize,
}

/// The Parquet scan of `file` alone.
pub(crate) fn one_file_scan(
    store: &HistoryStore,
    source: &Arc<ParquetSource>,
    file: &ArchivedFile,
    projection: Option<&Vec<usize>>,
    limit: Option<usize>,
) -> DfResult<FileScan> {
    let config = FileScanConfigBuilder::new(store.url().clone(), Arc::clone(source) as _)
        .with_file_groups(vec![FileGroup::new(vec![PartitionedFile::new(file.path.clone(), file.bytes)])])
        .with_projection_indices(projection.cloned())?
        .with_limit(limit)
        .build();
    Ok(FileScan { path: file.path.clone(), bytes: file.bytes, plan: DataSourceExec::from_data_source(config) })
}

/// Plans a scan of `spec`'s source as of `snapshot`, producing `columns` (the archived
/// columns, strings possibly as `Utf8View`): the query's projection, filters and limit as
/// DataFusion gave them; skipped files go to `report`; `pin` keeps the files listed
/// now from deletion while the plan lives.
pub fn plan_scan(
    state: &dyn Session,
    snapshot: &Arc<dyn StateSnapshot>,
    store: &HistoryStore,
    (spec, columns): (&HistorySpec, &SchemaRef),
    (projection, filters, limit): (Option<&Vec<usize>>, &[Expr], Option<usize>),
    report: SkipReport,
    pin: Arc<ScanPin>,
) -> DfResult<HistoryScan> {
    let schema = Arc::clone(columns);
    let files = manifest::files(snapshot.as_ref(), spec.id).map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    let files_total = files.len();
    let predicate = match conjunction(filters.iter().cloned()) {
        Some(expr) => {
            let df_schema = DFSchema::try_from(SchemaRef::clone(&schema))?;
            Some(state.create_physical_expr(expr, &df_schema)?)
        }
        None => None,
    };
    let time_column = spec.time_column.and_then(|c| {
        let field = schema.field(c);
        match field.data_type() {
            DataType::Timestamp(TimeUnit::Microsecond, zone) => Some((field.name().clone(), zone.clone())),
            _ => None,
        }
    });
    let keep = match &predicate {
        Some(predicate) if time_column.is_some() && !files.is_empty() => {
            // A predicate the pruner cannot reason about keeps every file.
            match PruningPredicateBuilder::new().with_file_schema(SchemaRef::clone(&schema)).build(Arc::clone(predicate)) {
                Some(pruning) => pruning.prune(&FileStatistics { files: &files, time_column })?,
                None => vec![true; files.len()],
            }
        }
        _ => vec![true; files.len()],
    };
    let selected: Vec<&ArchivedFile> = files.iter().zip(keep).filter(|(_, k)| *k).map(|(f, _)| f).collect();
    let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    if !selected.is_empty() {
        let mut source = ParquetSource::new(SchemaRef::clone(&schema));
        if let Some(predicate) = &predicate {
            source = source.with_predicate(Arc::clone(predicate));
        }
        let source = Arc::new(source);
        let scans = selected
            .iter()
            .map(|file| one_file_scan(store, &source, file, projection, limit))
            .collect::<DfResult<Vec<_>>>()?;
        let projected = scans[0].plan.schema();
        inputs.push(Arc::new(ArchivedFilesExec::new(
            scans,
            state.config().target_partitions(),
            projected,
            store.clone(),
            report,
            pin,
        )));
    }
    inputs.push(Arc::new(QueuedRowsExec::new(Arc::clone(snapshot), spec.id, Arc::clone(&spec.schema), schema, projection.cloned())?));
    Ok(HistoryScan { plan: UnionExec::try_new(inputs)?, files_scanned: selected.len(), files_total })
}
