//! Materialized views and sources in the catalog, and their DataFusion table providers.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use sluice_engine::operator::{expand_view_rows, view_state_table};
use sluice_engine::plan::{RelationId, StreamPlan};
use sluice_engine::{Dataflow, StateTable};
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
        let rows = view_state_table(id, &schema)?;
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
        let stored = self.entry.rows.scan_all(snapshot.as_ref()).map_err(|e| to_datafusion(e.into()))?;
        let batches = stored
            .iter()
            .map(|b| expand_view_rows(b, &self.entry.schema))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| to_datafusion(e.into()))?;
        Ok(MemorySourceConfig::try_new_exec(&[batches], Arc::clone(&self.entry.schema), projection.cloned())?)
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

/// A source in DataFusion's catalog, so that views can name it; it holds no rows to SELECT.
#[derive(Debug)]
pub struct SourceTable {
    entry: Arc<SourceEntry>,
}

impl SourceTable {
    /// The provider of `entry`.
    pub fn new(entry: Arc<SourceEntry>) -> Self {
        Self { entry }
    }

    /// The catalog entry.
    pub fn entry(&self) -> &Arc<SourceEntry> {
        &self.entry
    }
}

#[async_trait]
impl TableProvider for SourceTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.entry.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(to_datafusion(SqlError::unsupported(format_args!(
            "SELECT from source \"{}\" (a source keeps no rows until source history arrives; \
             create a materialized view over it)",
            self.entry.name
        ))))
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}
