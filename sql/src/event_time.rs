//! Event time in the SQL layer: `WATERMARK FOR` clauses checked and compiled, and the system
//! tables `sluice_watermarks` and `sluice_late_rows`.
//!
//! Why late rows are a table and not only a counter: RisingWave and Flink drop rows behind the
//! watermark silently, and users then cannot tell a slow producer from lost data. Sluice keeps
//! the last `LATE_ROWS_KEPT` (10,000) of each table or source reader, with their time and the
//! watermark they missed, queryable with SQL; the count of all of them is kept too.

use std::fmt;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Int64Array, IntervalMonthDayNanoArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, IntervalMonthDayNano, IntervalUnit, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::DFSchema;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use sluice_engine::watermark::is_event_time_type;

use crate::catalog::WatermarkDef;
use crate::database::Database;
use crate::error::{to_datafusion, SqlError, SqlResult};
use crate::statement::WatermarkClause;

/// Checks `WATERMARK FOR column AS expr` of `object` against its columns: the column must
/// exist and be a TIMESTAMP or TIMESTAMPTZ ([`compile_watermark`] checks the expression).
pub fn watermark_def(clause: &WatermarkClause, schema: &SchemaRef, object: &str) -> SqlResult<WatermarkDef> {
    let name = crate::database::normalize_ident(&clause.column);
    let (column, field) = schema
        .fields()
        .iter()
        .enumerate()
        .find(|(_, f)| f.name() == &name)
        .ok_or_else(|| SqlError::UndefinedColumn(format!("\"{name}\" named in WATERMARK FOR of \"{object}\"")))?;
    if !is_event_time_type(field.data_type()) {
        return Err(SqlError::TypeMismatch(format!(
            "WATERMARK FOR \"{name}\": the event-time column must be TIMESTAMP or TIMESTAMPTZ, not {}",
            crate::types::field_type_name(field)
        )));
    }
    // The expression is compiled (and its type checked) where it is used, before the
    // catalog entry commits: in the table's provider and the source's entry.
    Ok(WatermarkDef { column, expr: clause.expr.to_string() })
}

/// The watermark expression of `def` over rows of `schema`, ready to evaluate.
pub fn compile_watermark(def: &WatermarkDef, schema: &SchemaRef) -> SqlResult<Arc<dyn PhysicalExpr>> {
    let column = schema
        .fields()
        .get(def.column)
        .ok_or_else(|| SqlError::Internal(format!("watermark column {} out of range", def.column)))?;
    let ctx = SessionContext::new();
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let expr: Expr = ctx.parse_sql_expr(&def.expr, &df_schema)?;
    let physical = ctx.create_physical_expr(expr.clone(), &df_schema)?;
    let produced = physical.data_type(schema)?;
    let wanted = column.data_type();
    let same = match (&produced, wanted) {
        (DataType::Timestamp(TimeUnit::Microsecond, a), DataType::Timestamp(TimeUnit::Microsecond, b)) => {
            a.is_some() == b.is_some()
        }
        _ => false,
    };
    if !same {
        return Err(SqlError::TypeMismatch(format!(
            "the watermark expression {} computes {}, not the {} of column \"{}\"",
            def.expr,
            type_name(&produced),
            type_name(wanted),
            column.name()
        )));
    }
    Ok(physical)
}

fn type_name(t: &DataType) -> String {
    crate::types::field_type_name(&Field::new("value", t.clone(), true))
}

/// The columns of `sluice_watermarks`.
fn watermarks_schema() -> SchemaRef {
    let tz: Arc<str> = Arc::from(crate::types::UTC);
    Arc::new(Schema::new(vec![
        Field::new("object", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("view", DataType::Utf8, true),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("watermark", DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::clone(&tz))), true),
        Field::new("late_rows", DataType::Int64, true),
    ]))
}

/// The columns of `sluice_late_rows`.
fn late_rows_schema() -> SchemaRef {
    let tz: Arc<str> = Arc::from(crate::types::UTC);
    let time = || DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::clone(&tz)));
    Arc::new(Schema::new(vec![
        Field::new("object", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("view", DataType::Utf8, true),
        Field::new("seq", DataType::Int64, false),
        Field::new("event_time", time(), true),
        Field::new("watermark", time(), true),
        Field::new("lateness", DataType::Interval(IntervalUnit::MonthDayNano), true),
        Field::new("arrived_at", time(), false),
        Field::new("row", DataType::Utf8, false),
    ]))
}

/// One row of `sluice_watermarks`.
pub struct WatermarkRow {
    /// The table or source.
    pub object: String,
    /// `table`, `source` or `materialized view`.
    pub kind: &'static str,
    /// For a source reader or a view's own columns: the view.
    pub view: Option<String>,
    /// The column the watermark is about.
    pub column: String,
    /// The watermark, if set yet.
    pub watermark: Option<i64>,
    /// Rows dropped as late (tables and sources).
    pub late_rows: Option<u64>,
}

/// One row of `sluice_late_rows`.
pub struct LateRowEntry {
    /// The table or source.
    pub object: String,
    /// `table` or `source`.
    pub kind: &'static str,
    /// For a source: the view whose reader dropped it.
    pub view: Option<String>,
    /// Its number among the late rows of its table or reader.
    pub seq: u64,
    /// The row's record.
    pub row: sluice_engine::recovery::LateRow,
}

fn utc(values: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from_iter(values).with_timezone(crate::types::UTC))
}

/// `sluice_watermarks` as one batch.
pub fn watermarks_batch(rows: &[WatermarkRow]) -> SqlResult<RecordBatch> {
    Ok(RecordBatch::try_new(
        watermarks_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.object.as_str()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.kind))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.view.as_deref()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.column.as_str()))),
            utc(rows.iter().map(|r| r.watermark)),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.late_rows.map(|n| n as i64)))),
        ],
    )?)
}

/// `sluice_late_rows` as one batch.
pub fn late_rows_batch(rows: &[LateRowEntry]) -> SqlResult<RecordBatch> {
    let lateness = IntervalMonthDayNanoArray::from_iter(rows.iter().map(|r| match (r.row.watermark, r.row.event_time) {
        (Some(w), Some(t)) => w.checked_sub(t).map(|micros| IntervalMonthDayNano::new(0, 0, micros.saturating_mul(1_000))),
        _ => None,
    }));
    Ok(RecordBatch::try_new(
        late_rows_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.object.as_str()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.kind))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.view.as_deref()))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.seq as i64))),
            utc(rows.iter().map(|r| r.row.event_time)),
            utc(rows.iter().map(|r| r.row.watermark)),
            Arc::new(lateness),
            utc(rows.iter().map(|r| Some(r.row.arrived_at))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.row.row.as_str()))),
        ],
    )?)
}

/// Which system table a [`SystemTable`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemTableKind {
    /// `sluice_watermarks`.
    Watermarks,
    /// `sluice_late_rows`.
    LateRows,
    /// `sluice_sources`.
    Sources,
    /// `sluice_errors`.
    Errors,
    /// `sluice_sinks`.
    Sinks,
    /// `sluice_history`.
    History,
    /// `sluice_history_files`.
    HistoryFiles,
}

impl SystemTableKind {
    /// Its SQL name.
    pub fn name(self) -> &'static str {
        match self {
            SystemTableKind::Watermarks => "sluice_watermarks",
            SystemTableKind::LateRows => "sluice_late_rows",
            SystemTableKind::Sources => "sluice_sources",
            SystemTableKind::Errors => "sluice_errors",
            SystemTableKind::Sinks => "sluice_sinks",
            SystemTableKind::History => "sluice_history",
            SystemTableKind::HistoryFiles => "sluice_history_files",
        }
    }
}

/// A read-only table computed from the database's state when a query scans it.
pub struct SystemTable {
    kind: SystemTableKind,
    database: Weak<Database>,
}

impl fmt::Debug for SystemTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SystemTable({})", self.kind.name())
    }
}

impl SystemTable {
    /// The table `kind` of `database` (held weakly: the database owns its catalog).
    pub fn new(kind: SystemTableKind, database: Weak<Database>) -> Self {
        Self { kind, database }
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        match self.kind {
            SystemTableKind::Watermarks => watermarks_schema(),
            SystemTableKind::LateRows => late_rows_schema(),
            SystemTableKind::Sources => crate::source_status::sources_schema(),
            SystemTableKind::Errors => crate::source_status::errors_schema(),
            SystemTableKind::Sinks => crate::source_status::sinks_schema(),
            SystemTableKind::History => crate::history_status::history_schema(),
            SystemTableKind::HistoryFiles => crate::history_status::files_schema(),
        }
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let database = self
            .database
            .upgrade()
            .ok_or_else(|| to_datafusion(SqlError::Internal("the database is shutting down".into())))?;
        let snapshot = crate::provider::ReadSnapshot::of(state, database.store());
        let batch = match self.kind {
            SystemTableKind::Watermarks => watermarks_batch(&database.watermark_rows(snapshot.as_ref()).map_err(to_datafusion)?),
            SystemTableKind::LateRows => late_rows_batch(&database.late_row_entries(snapshot.as_ref()).map_err(to_datafusion)?),
            SystemTableKind::Sources => {
                crate::source_status::sources_batch(&database.source_reader_rows(snapshot.as_ref()).map_err(to_datafusion)?)
            }
            SystemTableKind::Errors => {
                crate::source_status::errors_batch(&database.error_rows(snapshot.as_ref()).map_err(to_datafusion)?)
            }
            SystemTableKind::Sinks => crate::source_status::sinks_batch(&database.sink_rows(snapshot.as_ref()).map_err(to_datafusion)?),
            SystemTableKind::History => {
                crate::history_status::history_batch(&database.history_rows(snapshot.as_ref()).map_err(to_datafusion)?)
            }
            SystemTableKind::HistoryFiles => {
                crate::history_status::files_batch(&database.history_rows(snapshot.as_ref()).map_err(to_datafusion)?)
            }
        }
        .map_err(to_datafusion)?;
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema(), projection.cloned())?)
    }
}
