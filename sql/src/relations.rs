//! Materialized views and sources in the catalog, and their DataFusion table providers.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use sluice_engine::operator::{expand_view_rows, view_state_table};
use sluice_engine::plan::{RelationId, StreamPlan};
use sluice_engine::{Dataflow, StateTable};
use sluice_engine::SCAN_BATCH_ROWS;
use sluice_storage::StateStore;

use crate::error::{to_datafusion, SqlError, SqlResult};
use crate::provider::ReadSnapshot;

/// A materialized view as the catalog knows it.
///
/// Why the definition is kept as SQL text and plan: the text is what SHOW and restarts use
/// (re-planning it against the same catalog gives the same plan); the plan is what runs.
#[derive(Debug)]
pub struct ViewEntry {
    /// The view's relation id, also the state table of its rows.
    pub id: RelationId,
    /// The view's name.
    pub name: String,
    /// `CREATE MATERIALIZED VIEW ...` as given.
    pub definition: String,
    /// The view's columns.
    pub schema: SchemaRef,
    /// The relations it reads, by name.
    pub depends_on: Vec<String>,
    /// The tables it reads (their writes feed it).
    pub tables: Vec<RelationId>,
    /// Its operators.
    pub plan: StreamPlan,
    /// Its rows.
    pub rows: StateTable,
    /// Its columns that carry a watermark (views reading it can close windows on them).
    pub watermark_columns: Vec<usize>,
    /// Its source readers: (reader id, source name).
    pub readers: Vec<(RelationId, String)>,
}

impl ViewEntry {
    /// A catalog entry for a view whose rows live in state table `id`.
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        id: RelationId,
        name: String,
        definition: String,
        schema: SchemaRef,
        depends_on: Vec<String>,
        tables: Vec<RelationId>,
        plan: StreamPlan,
        watermark_columns: Vec<usize>,
        readers: Vec<(RelationId, String)>,
    ) -> SqlResult<Self> {
        let rows = view_state_table(id, &schema, plan.layout)?;
        Ok(Self { id, name, definition, schema, depends_on, tables, plan, rows, watermark_columns, readers })
    }
}

/// A source as the catalog knows it.
#[derive(Debug)]
pub struct SourceEntry {
    /// Its catalog id (creation order).
    pub id: sluice_storage::TableId,
    /// Its name.
    pub name: String,
    /// Its columns.
    pub schema: SchemaRef,
    /// What reads it.
    pub setup: crate::connector::SourceSetup,
    /// Its event time, if it declares a watermark.
    pub watermark: Option<sluice_engine::dataflow::SourceWatermark>,
    /// How its history is archived; None with `history = 'false'`.
    pub history: Option<sluice_history::HistorySpec>,
}

/// Reads a materialized view's rows as of the statement's snapshot.
pub struct ViewTable {
    entry: Arc<ViewEntry>,
    store: Arc<dyn StateStore>,
    dataflow: Dataflow,
}

impl fmt::Debug for ViewTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ViewTable").field("name", &self.entry.name).finish()
    }
}

impl ViewTable {
    /// The provider of `entry`.
    pub fn new(entry: Arc<ViewEntry>, store: Arc<dyn StateStore>, dataflow: Dataflow) -> Self {
        Self { entry, store, dataflow }
    }

    /// The catalog entry.
    pub fn entry(&self) -> &Arc<ViewEntry> {
        &self.entry
    }
}

#[async_trait]
impl TableProvider for ViewTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.entry.schema)
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
        if let Some(reason) = self.dataflow.failure(self.entry.id) {
            return Err(to_datafusion(SqlError::ViewFailed(format!(
                "materialized view \"{}\" stopped on an error: {reason}",
                self.entry.name
            ))));
        }
        let snapshot = ReadSnapshot::of(state, &self.store);
        let entry = Arc::clone(&self.entry);
        let read = move |after: Option<&[u8]>| {
            let chunk = entry.rows.scan_chunk(snapshot.as_ref(), after, SCAN_BATCH_ROWS).map_err(|e| to_datafusion(e.into()))?;
            chunk
                .map(|(stored, last)| {
                    let rows = expand_view_rows(&stored, &entry.schema, entry.plan.layout).map_err(|e| to_datafusion(e.into()))?;
                    Ok((rows, last))
                })
                .transpose()
        };
        crate::state_scan::StateScan::plan(Arc::clone(&self.entry.schema), Arc::new(read), projection)
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

/// A source in DataFusion's catalog: views name it, and a SELECT over it is a batch query
/// over its history (archived files plus the rows not yet archived, as of the statement's
/// snapshot).
pub struct SourceTable {
    entry: Arc<SourceEntry>,
    /// The columns queries see: the source's own, or with strings as `Utf8View` for batch
    /// queries (see [`SourceTable::for_batch_queries`]).
    columns: SchemaRef,
    /// The source's columns as batch queries see them, made once (every batch statement
    /// looks the source up).
    batch_columns: SchemaRef,
    history: Option<Arc<sluice_history::History>>,
    store: Arc<dyn StateStore>,
    dataflow: Dataflow,
}

impl fmt::Debug for SourceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceTable").field("name", &self.entry.name).finish()
    }
}

impl SourceTable {
    /// The provider of `entry`, reading its history from `history` (None: the database keeps
    /// no history).
    pub fn new(
        entry: Arc<SourceEntry>,
        history: Option<Arc<sluice_history::History>>,
        store: Arc<dyn StateStore>,
        dataflow: Dataflow,
    ) -> Self {
        let columns = Arc::clone(&entry.schema);
        let batch_columns = with_string_views(&entry.schema);
        Self { entry, columns, batch_columns, history, store, dataflow }
    }

    /// The same source as batch queries read it: string columns are `Utf8View`, which the
    /// Parquet reader fills without copying strings (see [`with_string_views`]).
    /// Materialized views plan over [`SourceTable::new`]'s columns, which their operators,
    /// state and connectors share.
    pub fn for_batch_queries(&self) -> Self {
        Self {
            entry: Arc::clone(&self.entry),
            columns: Arc::clone(&self.batch_columns),
            batch_columns: Arc::clone(&self.batch_columns),
            history: self.history.clone(),
            store: Arc::clone(&self.store),
            dataflow: self.dataflow.clone(),
        }
    }

    /// The catalog entry.
    pub fn entry(&self) -> &Arc<SourceEntry> {
        &self.entry
    }
}

/// `schema` with its text columns as `Utf8View` (JSONB columns stay `Utf8`, which the JSON
/// functions take). Why: the Parquet reader then hands out views into its decoded pages
/// instead of copying every string into a new buffer, and DataFusion groups, hashes and
/// compares view strings without further copies (a third less time for a scan-aggregate over
/// strings, BENCHMARKS.md "History"). Materialized views keep `Utf8`, which their state
/// encodings and connectors use, so a view's backfill reads history with the archived schema.
fn with_string_views(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 if !crate::types::is_json_field(f) => f.as_ref().clone().with_data_type(DataType::Utf8View),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

#[async_trait]
impl TableProvider for SourceTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.columns)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let name = &self.entry.name;
        let Some(history) = &self.history else {
            return Err(to_datafusion(SqlError::unsupported(format_args!(
                "SELECT from source \"{name}\" in a server without a history store (sources keep their rows \
                 in history under `sluice serve`; create a materialized view over it)"
            ))));
        };
        let Some(spec) = &self.entry.history else {
            return Err(to_datafusion(SqlError::unsupported(format_args!(
                "SELECT from source \"{name}\", which keeps no history (history = 'false'); \
                 create a materialized view over it"
            ))));
        };
        if let Some(reason) = self.dataflow.failure(self.entry.id) {
            return Err(to_datafusion(SqlError::ViewFailed(format!(
                "the history of source \"{name}\" stopped on an error: {reason}"
            ))));
        }
        let snapshot = ReadSnapshot::of(state, &self.store);
        history.scan(state, &snapshot, spec, &self.columns, projection, filters, limit)
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}
