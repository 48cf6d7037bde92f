//! [`Database`]: the shared state of one Sluice process — catalog, state store, DataFusion
//! context — and the DDL that changes it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use datafusion::common::config::Dialect;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{
    self, ColumnOption, CreateTable, Ident, ObjectName, TableConstraint,
};
use datafusion::common::TableReference;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::logical_expr::LogicalPlan;
use sluice_engine::plan::StreamPlan;
use sluice_engine::operator::ViewLayout;
use sluice_engine::dataflow::ViewStart;
use sluice_engine::dataflow::SourceWatermark;
use sluice_engine::{Backfill, Dataflow, DataflowConfig, EpochCommitter, SourceReader, ViewDefinition};
use sluice_storage::{StateStore, TableId, WriteBatch};

use crate::catalog::{ColumnDef, TableDef, WatermarkDef};
use crate::persist::{self, CatalogRecord};
use datafusion::execution::FunctionRegistry;

use crate::error::{SqlError, SqlResult};
use crate::event_time::{LateRowEntry, SystemTable, SystemTableKind, WatermarkRow};
use crate::pg_semantics::{CheckedBigintSums, PostgresSemantics};
use crate::provider::{StoredTable, TableWriter};
use crate::relations::{SourceEntry, SourceTable, ViewEntry, ViewTable};
use crate::statement::{CreateSource, WatermarkClause};
use crate::stream_planner::{ReadRelation, StreamPlanner};
use crate::window::WindowRelationPlanner;
use crate::session::Session;
use crate::types::{SqlType, UTC};

/// A view's stream plan, the relations it reads, its columns, and which of them carry a
/// watermark.
type PlannedView = (StreamPlan, Vec<(String, ReadRelation)>, SchemaRef, Vec<usize>);

/// The catalog name DataFusion resolves tables in.
pub const CATALOG_NAME: &str = "sluice";
/// The only schema, as in a fresh PostgreSQL database.
pub const SCHEMA_NAME: &str = "public";

/// One Sluice database: every session of the process shares it.
///
/// Why a single shared DataFusion [`SessionContext`]: its catalog holds one provider per table,
/// view and source, so an object created by one client is immediately visible to all;
/// sessions clone the context's state to add their own functions and settings without copying
/// the catalog.
pub struct Database {
    ctx: SessionContext,
    writer: Arc<TableWriter>,
    dataflow: Dataflow,
    tables: RwLock<BTreeMap<String, Arc<StoredTable>>>,
    views: RwLock<BTreeMap<String, Arc<ViewEntry>>>,
    sources: RwLock<BTreeMap<String, Arc<SourceEntry>>>,
    /// Sinks by name: (id, the view they send, "connector FORMAT x ENCODE y").
    sinks: RwLock<BTreeMap<String, (TableId, String, String)>>,
    next_table_id: AtomicU32,
    /// Serializes DDL of views and sources (their planning, creation and dependency checks).
    ddl: tokio::sync::Mutex<()>,
    /// Sources' history (set once, before the catalog is restored; unset: no history store,
    /// as in embedded tests and benchmarks).
    history: std::sync::OnceLock<Arc<sluice_history::History>>,
}

/// What kind of relation a name denotes, for DROP and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    /// A table.
    Table,
    /// A materialized view.
    MaterializedView,
    /// A source.
    Source,
}

impl RelationKind {
    /// The words PostgreSQL uses for it.
    pub fn words(self) -> &'static str {
        match self {
            RelationKind::Table => "table",
            RelationKind::MaterializedView => "materialized view",
            RelationKind::Source => "source",
        }
    }
}

impl Database {
    /// A database over a new, empty `store`, with the default dataflow settings. Must be
    /// called inside a tokio runtime. (A store that may hold a catalog is opened with
    /// [`Database::open`].)
    pub fn new(store: Arc<dyn StateStore>) -> SqlResult<Arc<Self>> {
        Self::with_dataflow(store, DataflowConfig::default())
    }

    /// A database over a new, empty `store` whose views run with `config`. Must be called
    /// inside a tokio runtime.
    pub fn with_dataflow(store: Arc<dyn StateStore>, config: DataflowConfig) -> SqlResult<Arc<Self>> {
        let mut config_options = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG_NAME, SCHEMA_NAME)
            .with_target_partitions(2);
        {
            let options = config_options.options_mut();
            options.sql_parser.dialect = Dialect::PostgreSQL;
            options.sql_parser.map_string_types_to_utf8view = false;
            options.sql_parser.parse_float_as_decimal = true;
            options.execution.time_zone = Some(UTC.to_string());
        }
        let mut state = SessionContext::new_with_config(config_options).state();
        // Cannot fail: these only need registering.
        let _ = state.register_function_rewrite(Arc::new(PostgresSemantics::new()));
        let _ = state.register_relation_planner(Arc::new(WindowRelationPlanner::new(Arc::clone(state.catalog_list()))));
        state.add_analyzer_rule(Arc::new(CheckedBigintSums));
        let ctx = SessionContext::new_with_state(state);
        let committer = Arc::new(EpochCommitter::new(store));
        let dataflow = Dataflow::start(Arc::clone(&committer), config)?;
        let db = Arc::new(Self {
            ctx,
            writer: Arc::new(TableWriter::new(committer, dataflow.clone())),
            dataflow,
            tables: RwLock::new(BTreeMap::new()),
            views: RwLock::new(BTreeMap::new()),
            sources: RwLock::new(BTreeMap::new()),
            sinks: RwLock::new(BTreeMap::new()),
            next_table_id: AtomicU32::new(1),
            ddl: tokio::sync::Mutex::new(()),
            history: std::sync::OnceLock::new(),
        });
        for kind in [
            SystemTableKind::Watermarks,
            SystemTableKind::LateRows,
            SystemTableKind::Sources,
            SystemTableKind::Errors,
            SystemTableKind::Sinks,
            SystemTableKind::History,
            SystemTableKind::HistoryFiles,
        ] {
            let table = SystemTable::new(kind, Arc::downgrade(&db));
            db.ctx.register_table(TableReference::bare(kind.name()), Arc::new(table))?;
        }
        Ok(db)
    }

    /// The rows of `sluice_watermarks`: every table and source reader with a watermark, and
    /// every view column that carries one.
    pub(crate) fn watermark_rows(&self, snapshot: &dyn sluice_storage::StateSnapshot) -> SqlResult<Vec<WatermarkRow>> {
        use sluice_engine::recovery::{late_rows_counter, read_counter, table_watermark};
        let status = self.dataflow.event_time_status();
        let mut rows = Vec::new();
        for table in self.tables_read().values() {
            let def = table.def();
            let Some(watermark) = &def.watermark else { continue };
            rows.push(WatermarkRow {
                object: def.name.clone(),
                kind: "table",
                view: None,
                column: def.columns[watermark.column].name.clone(),
                watermark: table_watermark(snapshot, def.id)?,
                late_rows: Some(read_counter(snapshot, &late_rows_counter(def.id))?.unwrap_or(0)),
            });
        }
        let sources = self.sources_read();
        for entry in sources.values() {
            let Some(watermark) = &entry.watermark else { continue };
            if !matches!(entry.setup.input, crate::connector::SourceInput::Push(_)) {
                continue;
            }
            rows.push(WatermarkRow {
                object: entry.name.clone(),
                kind: "source",
                view: None,
                column: entry.schema.field(watermark.time_column).name().clone(),
                watermark: table_watermark(snapshot, entry.id)?,
                late_rows: Some(read_counter(snapshot, &late_rows_counter(entry.id))?.unwrap_or(0)),
            });
        }
        for view in self.views_read().values() {
            for (reader, source) in &view.readers {
                let Some(entry) = sources.get(source) else { continue };
                let Some(watermark) = &entry.watermark else { continue };
                rows.push(WatermarkRow {
                    object: source.clone(),
                    kind: "source",
                    view: Some(view.name.clone()),
                    column: entry.schema.field(watermark.time_column).name().clone(),
                    watermark: status.watermarks.get(reader).and_then(|c| c.get(&watermark.time_column)).copied(),
                    late_rows: Some(status.late_rows.get(reader).copied().unwrap_or(0)),
                });
            }
            for column in &view.watermark_columns {
                rows.push(WatermarkRow {
                    object: view.name.clone(),
                    kind: "materialized view",
                    view: None,
                    column: view.schema.field(*column).name().clone(),
                    watermark: status.watermarks.get(&view.id).and_then(|c| c.get(column)).copied(),
                    late_rows: None,
                });
            }
        }
        rows.sort_by(|a, b| (&a.object, &a.view, &a.column).cmp(&(&b.object, &b.view, &b.column)));
        Ok(rows)
    }

    /// Ingests `body` into source `source` (`POST /ingest/<source>`); returns once the rows
    /// are durable.
    pub async fn ingest(&self, source: &str, body: &[u8]) -> Result<crate::IngestReport, crate::IngestError> {
        let entry = self
            .sources_read()
            .get(source)
            .cloned()
            .ok_or_else(|| crate::IngestError::UnknownSource(source.to_string()))?;
        crate::ingest::ingest(&entry, &self.writer, body).await
    }

    /// Records consumed so far by each reader of source `source` (for benchmarks).
    pub fn source_records(&self, source: &str) -> Vec<u64> {
        let status = self.dataflow.event_time_status();
        let mut out = Vec::new();
        for view in self.views_read().values() {
            for (reader, name) in &view.readers {
                if name == source {
                    out.push(status.records.get(reader).copied().unwrap_or(0));
                }
            }
        }
        out
    }

    /// The rows of `sluice_sinks`.
    pub(crate) fn sink_rows(&self, snapshot: &dyn sluice_storage::StateSnapshot) -> SqlResult<Vec<crate::source_status::SinkRow>> {
        let status = self.dataflow.event_time_status();
        let mut rows = Vec::new();
        for (name, (id, view, kind)) in self.sinks.read().unwrap_or_else(|p| p.into_inner()).iter() {
            let delivered = status.sinks.get(id).cloned().unwrap_or_default();
            rows.push(crate::source_status::SinkRow {
                name: name.clone(),
                view: view.clone(),
                kind: kind.clone(),
                pending: sluice_engine::sink::pending_entries(snapshot, *id)?,
                delivered,
            });
        }
        Ok(rows)
    }

    /// The rows of `sluice_sources`: every view's reader of every source.
    pub(crate) fn source_reader_rows(
        &self,
        snapshot: &dyn sluice_storage::StateSnapshot,
    ) -> SqlResult<Vec<crate::source_status::SourceReaderRow>> {
        use sluice_engine::source::ErrorPolicy;
        let status = self.dataflow.event_time_status();
        let sources = self.sources_read();
        let policy = |entry: &SourceEntry| match entry.setup.error_policy {
            ErrorPolicy::Skip => "skip",
            ErrorPolicy::Fail => "fail",
        };
        let mut rows = Vec::new();
        for entry in sources.values() {
            if !matches!(entry.setup.input, crate::connector::SourceInput::Push(_)) {
                continue;
            }
            use sluice_engine::recovery::{late_rows_counter, read_counter, source_errors_counter};
            rows.push(crate::source_status::SourceReaderRow {
                source: entry.name.clone(),
                connector: entry.setup.kind.clone(),
                view: None,
                records: read_counter(snapshot, &crate::ingest::records_counter(entry.id))?.unwrap_or(0),
                errors: read_counter(snapshot, &source_errors_counter(entry.id))?.unwrap_or(0),
                late_rows: read_counter(snapshot, &late_rows_counter(entry.id))?.unwrap_or(0),
                error_policy: policy(entry),
                position: None,
            });
        }
        let history_readers: Vec<(TableId, String)> = match self.history.get() {
            Some(_) => sources
                .values()
                .filter(|e| e.history.is_some() && matches!(e.setup.input, crate::connector::SourceInput::Pull(_)))
                .map(|e| (e.id, e.name.clone()))
                .collect(),
            None => Vec::new(),
        };
        // A pulled source's history reader is listed with no view.
        let readers = history_readers.into_iter().map(|(reader, source)| (None, reader, source)).chain(
            self.views_read()
                .values()
                .flat_map(|view| view.readers.iter().map(|(reader, source)| (Some(view.name.clone()), *reader, source.clone())))
                .collect::<Vec<_>>(),
        );
        for (view, reader, source) in readers {
            let Some(entry) = sources.get(&source) else { continue };
            let committed = sluice_engine::recovery::source_position(snapshot, reader)?;
            rows.push(crate::source_status::SourceReaderRow {
                connector: entry.setup.kind.clone(),
                source,
                view,
                records: status.records.get(&reader).copied().unwrap_or(0).max(committed.offset),
                errors: status.source_errors.get(&reader).copied().unwrap_or(0),
                late_rows: status.late_rows.get(&reader).copied().unwrap_or(0),
                error_policy: policy(entry),
                position: (!committed.state.is_empty()).then(|| String::from_utf8_lossy(&committed.state).into_owned()),
            });
        }
        rows.sort_by(|a, b| (&a.source, &a.view).cmp(&(&b.source, &b.view)));
        Ok(rows)
    }

    /// Who records source rows under each relation id: a pushed source under its own id, a
    /// view's reader of a pulled source under the reader's (source name, view name).
    fn source_relations(&self) -> std::collections::HashMap<TableId, (String, Option<String>)> {
        let mut owners = std::collections::HashMap::new();
        for entry in self.sources_read().values() {
            owners.insert(entry.id, (entry.name.clone(), None));
        }
        for view in self.views_read().values() {
            for (reader, source) in &view.readers {
                owners.insert(*reader, (source.clone(), Some(view.name.clone())));
            }
        }
        owners
    }

    /// The rows of `sluice_errors`, by source reader, oldest first.
    pub(crate) fn error_rows(&self, snapshot: &dyn sluice_storage::StateSnapshot) -> SqlResult<Vec<crate::source_status::ErrorRow>> {
        let owners = self.source_relations();
        let mut rows = Vec::new();
        for (reader, seq, record) in sluice_engine::recovery::source_errors(snapshot)? {
            let Some((source, view)) = owners.get(&reader) else { continue };
            rows.push(crate::source_status::ErrorRow { source: source.clone(), view: view.clone(), seq, record });
        }
        rows.sort_by(|a, b| (&a.source, &a.view, a.seq).cmp(&(&b.source, &b.view, b.seq)));
        Ok(rows)
    }

    /// The rows of `sluice_late_rows`, by table or source reader, oldest first.
    pub(crate) fn late_row_entries(&self, snapshot: &dyn sluice_storage::StateSnapshot) -> SqlResult<Vec<LateRowEntry>> {
        let mut owners: std::collections::HashMap<TableId, (String, &'static str, Option<String>)> =
            self.source_relations().into_iter().map(|(id, (source, view))| (id, (source, "source", view))).collect();
        for table in self.tables_read().values() {
            owners.insert(table.def().id, (table.def().name.clone(), "table", None));
        }
        let mut entries = Vec::new();
        for (relation, seq, row) in sluice_engine::recovery::late_rows(snapshot)? {
            let Some((object, kind, view)) = owners.get(&relation) else { continue };
            entries.push(LateRowEntry { object: object.clone(), kind, view: view.clone(), seq, row });
        }
        entries.sort_by(|a, b| (&a.object, &a.view, a.seq).cmp(&(&b.object, &b.view, b.seq)));
        Ok(entries)
    }

    /// Opens the database kept in `store`: rebuilds every table, source and view its catalog
    /// holds, resumes the views over their last checkpoint and replays the table changes they
    /// had not absorbed, and resumes source readers at their committed offsets.
    ///
    /// Fails, rather than starting empty, if the catalog cannot be read or a view cannot be
    /// rebuilt exactly as it was planned.
    pub async fn open(store: Arc<dyn StateStore>, config: DataflowConfig) -> SqlResult<(Arc<Self>, RecoverySummary)> {
        Self::open_with_history(store, config, None).await
    }

    /// [`Database::open`], keeping every source's history in `history`: files no checkpoint
    /// committed are deleted first, then each source's archiving resumes with the catalog.
    pub async fn open_with_history(
        store: Arc<dyn StateStore>,
        config: DataflowConfig,
        history: Option<sluice_history::HistoryStore>,
    ) -> SqlResult<(Arc<Self>, RecoverySummary)> {
        let db = Self::with_dataflow(store, config)?;
        if let Some(store) = history {
            let history = sluice_history::History::open(store, Arc::clone(db.writer.committer())).await?;
            history.store().register(&db.ctx);
            let _ = db.history.set(Arc::new(history));
        }
        let summary = db.restore().await?;
        Ok((db, summary))
    }

    /// Starts archiving `entry`'s accepted rows, if it keeps history and the database has a
    /// history store: a pulled source gets its own reader (resuming at its checkpointed
    /// position), a pushed source's writes are logged for the feed.
    async fn start_history(&self, entry: &SourceEntry) -> SqlResult<()> {
        let (Some(history), Some(spec)) = (self.history.get(), &entry.history) else { return Ok(()) };
        let reader = match &entry.setup.input {
            crate::connector::SourceInput::Pull(connector) => Some(SourceReader {
                relation: entry.id,
                source: entry.name.clone(),
                connector: Arc::clone(connector),
                watermark: entry.watermark.clone(),
                error_policy: entry.setup.error_policy,
            }),
            crate::connector::SourceInput::Push(_) => {
                self.writer.lock().await.add(entry.id);
                None
            }
        };
        let definition = sluice_engine::archive::ArchiveDefinition { id: entry.id, name: entry.name.clone(), reader };
        self.dataflow.create_archive(definition).await?;
        history.start(spec.clone());
        Ok(())
    }

    /// The rows of `sluice_history` (and `sluice_history_files`): every source that keeps
    /// history.
    pub(crate) fn history_rows(&self, snapshot: &dyn sluice_storage::StateSnapshot) -> SqlResult<Vec<crate::history_status::HistoryRow>> {
        let Some(history) = self.history.get() else { return Ok(Vec::new()) };
        let mut rows = Vec::new();
        for entry in self.sources_read().values() {
            if entry.history.is_none() {
                continue;
            }
            let (_, queued_rows) = sluice_engine::archive::queued_counts(snapshot, entry.id)?;
            rows.push(crate::history_status::HistoryRow {
                source: entry.name.clone(),
                location: history.store().location().to_string(),
                files: sluice_history::manifest::files(snapshot, entry.id)?,
                queued_rows,
                retention: entry.setup.history.retention.as_ref().map(|(_, text)| text.clone()),
                activity: history.status().of(entry.id),
            });
        }
        Ok(rows)
    }

    /// Whether a source named `name` exists.
    pub(crate) fn has_source(&self, name: &str) -> bool {
        self.sources_read().contains_key(name)
    }

    async fn restore(self: &Arc<Self>) -> SqlResult<RecoverySummary> {
        let _ddl = self.ddl.lock().await;
        let snapshot = self.store().snapshot();
        let records = persist::load(snapshot.as_ref())?;
        let mut summary = RecoverySummary { epoch: snapshot.epoch(), ..RecoverySummary::default() };
        let highest = records
            .iter()
            .flat_map(|r| match r {
                CatalogRecord::View { id, plan_ids, .. } => plan_ids.iter().copied().chain([*id]).collect::<Vec<_>>(),
                other => vec![other.id()],
            })
            .max()
            .unwrap_or(0);
        let next_id = sluice_engine::recovery::read_counter(snapshot.as_ref(), persist::NEXT_OBJECT_ID)?.unwrap_or(1).max(u64::from(highest) + 1);
        self.next_table_id.store(u32::try_from(next_id).unwrap_or(u32::MAX), Ordering::Relaxed);
        let pending = sluice_engine::recovery::pending_changes(snapshot.as_ref())?;
        let next_row_id = sluice_engine::recovery::read_counter(snapshot.as_ref(), persist::NEXT_ROW_ID)?.unwrap_or(1);
        let next_log_seq = pending.last().map(|(seq, _)| seq + 1).unwrap_or(1);
        self.writer.resume(i64::try_from(next_row_id).unwrap_or(i64::MAX), next_log_seq);
        let session = self.session(CATALOG_NAME, "sluice", 0);
        for record in records {
            match record {
                CatalogRecord::Table(def) => {
                    self.register_table(def)?;
                    summary.tables += 1;
                }
                CatalogRecord::Source { id, name, columns, options, created_at_micros, watermark, format } => {
                    let entry = self.add_source(source_entry(id, name, columns, &options, format.as_ref(), created_at_micros, watermark)?)?;
                    self.start_history(&entry).await?;
                    summary.sources += 1;
                }
                CatalogRecord::View { id, name, definition, plan_ids, explain, append_only } => {
                    let cannot = |why: String| {
                        SqlError::Internal(format!("materialized view \"{name}\" cannot be restored: {why}"))
                    };
                    let statements = crate::parse_statements(&definition).map_err(|e| cannot(e.to_string()))?;
                    let create = match statements.as_slice() {
                        [crate::statement::ParsedStatement::Sql(ast::Statement::CreateView(create))] => create,
                        _ => return Err(cannot(format!("its definition is not one CREATE MATERIALIZED VIEW: {definition}"))),
                    };
                    let (_, plan, names, emit_on_close) =
                        session.plan_view_query(create).await.map_err(|e| cannot(e.to_string()))?;
                    let layout = if append_only { ViewLayout::AppendOnly } else { ViewLayout::Counted };
                    let restored = RestoredView { id, plan_ids, explain, layout };
                    self.start_view(&name, &definition, &plan, &names, Some(restored), emit_on_close).await?;
                    summary.views += 1;
                }
                CatalogRecord::Sink { id, name, view, options, format } => {
                    let definition = SinkDefinitionText { id, name, view, options, format };
                    self.start_sink(definition, None).await?;
                }
            }
        }
        summary.replayed_changes = pending.len();
        for (seq, (relation, changes, watermark)) in pending {
            self.dataflow.send_changes(relation, changes, seq, watermark).await?;
        }
        Ok(summary)
    }

    /// Queues the id counter into a DDL's batch, so that ids are never handed out twice.
    fn persist_next_id(&self, batch: &mut WriteBatch) {
        persist::put_counter(batch, persist::NEXT_OBJECT_ID, u64::from(self.next_table_id.load(Ordering::Relaxed)));
    }

    /// Commits a DDL's catalog change durably.
    fn commit_ddl(&self, mut batch: WriteBatch) -> SqlResult<()> {
        self.persist_next_id(&mut batch);
        batch.set_durability(sluice_storage::Durability::Checkpoint);
        self.writer.committer().commit(batch)?;
        Ok(())
    }

    /// A new client session.
    pub fn session(self: &Arc<Self>, database: &str, user: &str, backend_pid: i32) -> Session {
        Session::new(Arc::clone(self), database, user, backend_pid)
    }

    pub(crate) fn context(&self) -> &SessionContext {
        &self.ctx
    }

    pub(crate) fn store(&self) -> &Arc<dyn StateStore> {
        self.writer.store()
    }

    /// Approximate bytes of state in the store (see `StateStore::approximate_bytes`).
    pub fn state_bytes(&self) -> Option<u64> {
        self.store().approximate_bytes()
    }

    /// The dataflow running the views.
    pub fn dataflow(&self) -> &Dataflow {
        &self.dataflow
    }

    fn tables_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<StoredTable>>> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    fn tables_write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<StoredTable>>> {
        self.tables.write().unwrap_or_else(|p| p.into_inner())
    }

    fn views_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<ViewEntry>>> {
        self.views.read().unwrap_or_else(|p| p.into_inner())
    }

    fn views_write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<ViewEntry>>> {
        self.views.write().unwrap_or_else(|p| p.into_inner())
    }

    fn sources_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<SourceEntry>>> {
        self.sources.read().unwrap_or_else(|p| p.into_inner())
    }

    fn sources_write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<SourceEntry>>> {
        self.sources.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Names of every table, sorted.
    pub fn table_names(&self) -> Vec<String> {
        self.tables_read().keys().cloned().collect()
    }

    /// Names of every materialized view, sorted.
    pub fn view_names(&self) -> Vec<String> {
        self.views_read().keys().cloned().collect()
    }

    /// Names of every source, sorted.
    pub fn source_names(&self) -> Vec<String> {
        self.sources_read().keys().cloned().collect()
    }

    /// The definition of table `name`.
    pub fn table(&self, name: &str) -> Option<Arc<TableDef>> {
        self.tables_read().get(name).map(|t| Arc::clone(t.def()))
    }

    /// The materialized view `name`.
    pub fn view(&self, name: &str) -> Option<Arc<ViewEntry>> {
        self.views_read().get(name).cloned()
    }

    /// The columns of source `name`.
    pub fn source_schema(&self, name: &str) -> Option<SchemaRef> {
        self.sources_read().get(name).map(|s| Arc::clone(&s.schema))
    }

    /// What `name` denotes, if anything.
    pub fn relation_kind(&self, name: &str) -> Option<RelationKind> {
        if self.tables_read().contains_key(name) {
            Some(RelationKind::Table)
        } else if self.views_read().contains_key(name) {
            Some(RelationKind::MaterializedView)
        } else if self.sources_read().contains_key(name) {
            Some(RelationKind::Source)
        } else {
            None
        }
    }

    fn allocate_id(&self) -> TableId {
        self.next_table_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Executes `CREATE TABLE`. Returns false if the table existed and `IF NOT EXISTS` was given.
    pub(crate) fn create_table(
        &self,
        create: &CreateTable,
        watermark: Option<&WatermarkClause>,
        append_only: bool,
    ) -> SqlResult<bool> {
        reject_create_options(create)?;
        let name = table_name(&create.name)?;
        let mut tables = self.tables_write();
        if tables.contains_key(&name) || self.views_read().contains_key(&name) || self.sources_read().contains_key(&name) {
            if create.if_not_exists {
                return Ok(false);
            }
            return Err(SqlError::DuplicateTable(name));
        }
        let mut def = table_def(create, name.clone(), self.allocate_id())?;
        if append_only && !def.primary_key.is_empty() {
            return Err(SqlError::InvalidDefinition(format!(
                "APPEND ONLY table \"{name}\" cannot have a primary key (an insert of an existing key would replace a row)"
            )));
        }
        def.append_only = append_only;
        if let Some(clause) = watermark {
            if !append_only {
                return Err(SqlError::InvalidDefinition(format!(
                    "table \"{name}\" declares a WATERMARK and must be APPEND ONLY: updates and deletes could change windows the watermark has closed"
                )));
            }
            def.watermark = Some(crate::event_time::watermark_def(clause, &def.user_schema(), &name)?);
        }
        let provider = Arc::new(StoredTable::try_new(Arc::new(def.clone()), Arc::clone(&self.writer))?);
        let mut batch = WriteBatch::new();
        CatalogRecord::Table(def).put(&mut batch)?;
        self.commit_ddl(batch)?;
        self.ctx.register_table(TableReference::bare(name.clone()), provider.clone())?;
        tables.insert(name, provider);
        Ok(true)
    }

    /// Registers a table read back from the catalog.
    fn register_table(&self, def: TableDef) -> SqlResult<()> {
        let name = def.name.clone();
        let provider = Arc::new(StoredTable::try_new(Arc::new(def), Arc::clone(&self.writer))?);
        self.ctx.register_table(TableReference::bare(name.clone()), provider.clone())?;
        self.tables_write().insert(name, provider);
        Ok(())
    }

    /// Names of every sink, sorted.
    pub fn sink_names(&self) -> Vec<String> {
        self.sinks.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// The sinks reading view `view`.
    fn sinks_of(&self, view: &str) -> Vec<String> {
        self.sinks.read().unwrap_or_else(|p| p.into_inner()).iter().filter(|(_, (_, v, _))| v == view).map(|(n, _)| n.clone()).collect()
    }

    /// Executes `CREATE SINK ... FROM view`. Returns false if it existed and `IF NOT EXISTS`
    /// was given.
    pub(crate) async fn create_sink(&self, create: &crate::statement::CreateSink) -> SqlResult<bool> {
        let _ddl = self.ddl.lock().await;
        let name = table_name(&create.name)?;
        if self.sinks.read().unwrap_or_else(|p| p.into_inner()).contains_key(&name) {
            if create.if_not_exists {
                return Ok(false);
            }
            return Err(SqlError::DuplicateTable(format!("sink \"{name}\"")));
        }
        if self.relation_kind(&name).is_some() {
            return Err(SqlError::DuplicateTable(name));
        }
        let view = table_name(&create.from)?;
        match self.relation_kind(&view) {
            Some(RelationKind::MaterializedView) => {}
            None => return Err(SqlError::UndefinedTable(view)),
            Some(other) => {
                return Err(SqlError::WrongObjectType(format!(
                    "\"{view}\" is a {}: a sink sends the changes of a materialized view (CREATE SINK ... FROM view)",
                    other.words()
                )))
            }
        }
        let definition = SinkDefinitionText {
            id: self.allocate_id(),
            name,
            view,
            options: create.options.clone(),
            format: create.format.clone(),
        };
        let mut catalog = WriteBatch::new();
        CatalogRecord::Sink {
            id: definition.id,
            name: definition.name.clone(),
            view: definition.view.clone(),
            options: definition.options.clone(),
            format: definition.format.clone(),
        }
        .put(&mut catalog)?;
        self.persist_next_id(&mut catalog);
        self.start_sink(definition, Some(catalog)).await?;
        Ok(true)
    }

    /// Builds sink `definition`'s connector and starts it (a new sink commits `catalog`).
    async fn start_sink(&self, definition: SinkDefinitionText, catalog: Option<WriteBatch>) -> SqlResult<()> {
        let view = self
            .views_read()
            .get(&definition.view)
            .cloned()
            .ok_or_else(|| SqlError::UndefinedTable(definition.view.clone()))?;
        let connector = crate::connector::sink_connector(&definition.name, &definition.options, definition.format.as_ref(), &view.schema)?;
        self.dataflow
            .create_sink(sluice_engine::sink::SinkDefinition {
                id: definition.id,
                name: definition.name.clone(),
                view: view.id,
                connector,
                catalog,
            })
            .await?;
        let kind = format!(
            "{} {}",
            definition.options.get("connector").map(|c| c.to_ascii_lowercase()).unwrap_or_default(),
            definition.format.as_ref().map(|f| format!("FORMAT {} ENCODE {}", f.format, f.encode)).unwrap_or_default()
        );
        self.sinks.write().unwrap_or_else(|p| p.into_inner()).insert(definition.name, (definition.id, definition.view, kind));
        Ok(())
    }

    /// Executes `DROP SINK name`.
    pub(crate) async fn drop_sink(&self, name: &ObjectName, if_exists: bool) -> SqlResult<Vec<String>> {
        let _ddl = self.ddl.lock().await;
        let name = table_name(name)?;
        self.drop_sink_entry(&name, if_exists).await
    }

    async fn drop_sink_entry(&self, name: &str, if_exists: bool) -> SqlResult<Vec<String>> {
        let Some((id, _, _)) = self.sinks.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned() else {
            if if_exists {
                return Ok(vec![format!("sink \"{name}\" does not exist, skipping")]);
            }
            return Err(SqlError::UndefinedTable(format!("sink \"{name}\"")));
        };
        let mut catalog = WriteBatch::new();
        persist::delete(&mut catalog, id);
        self.dataflow.drop_sink(id, catalog).await?;
        self.sinks.write().unwrap_or_else(|p| p.into_inner()).remove(name);
        Ok(Vec::new())
    }

    /// Executes `CREATE SOURCE`. Returns false if it existed and `IF NOT EXISTS` was given.
    pub(crate) async fn create_source(&self, create: &CreateSource) -> SqlResult<bool> {
        let _ddl = self.ddl.lock().await;
        let name = table_name(&create.name)?;
        if self.relation_kind(&name).is_some() {
            if create.if_not_exists {
                return Ok(false);
            }
            return Err(SqlError::DuplicateTable(name));
        }
        if !create.constraints.is_empty() {
            return Err(SqlError::unsupported("constraints on a source"));
        }
        let mut columns = Vec::with_capacity(create.columns.len());
        for col in &create.columns {
            let col_name = normalize_ident(&col.name);
            if columns.iter().any(|c: &ColumnDef| c.name == col_name) {
                return Err(SqlError::DuplicateColumn(col_name));
            }
            if let Some(option) = col.options.first() {
                return Err(SqlError::unsupported(format_args!("column option {} on a source", option.option)));
            }
            columns.push(ColumnDef { name: col_name, sql_type: SqlType::from_ast(&col.data_type)?, not_null: false });
        }
        if columns.is_empty() {
            return Err(SqlError::InvalidDefinition(format!("source \"{name}\" must have at least one column")));
        }
        let created_at = chrono::Utc::now().timestamp_micros();
        let schema = Arc::new(Schema::new(columns.iter().map(|c| c.sql_type.field(&c.name)).collect::<Vec<_>>()));
        let watermark = match &create.watermark {
            Some(clause) => Some(crate::event_time::watermark_def(clause, &schema, &name)?),
            None => None,
        };
        let id = self.allocate_id();
        let record = CatalogRecord::Source {
            id,
            name: name.clone(),
            columns: columns.clone(),
            options: create.options.clone(),
            created_at_micros: created_at,
            watermark: watermark.clone(),
            format: create.format.clone(),
        };
        // Checked before anything is written: bad options leave no trace.
        let entry = source_entry(id, name, columns, &create.options, create.format.as_ref(), created_at, watermark)?;
        let mut batch = WriteBatch::new();
        record.put(&mut batch)?;
        self.commit_ddl(batch)?;
        let entry = self.add_source(entry)?;
        self.start_history(&entry).await?;
        Ok(true)
    }

    fn add_source(&self, entry: SourceEntry) -> SqlResult<Arc<SourceEntry>> {
        let entry = Arc::new(entry);
        let name = entry.name.clone();
        let table = SourceTable::new(Arc::clone(&entry), self.history.get().cloned(), Arc::clone(self.store()), self.dataflow.clone());
        self.ctx.register_table(TableReference::bare(name.clone()), Arc::new(table))?;
        self.sources_write().insert(name, Arc::clone(&entry));
        Ok(entry)
    }

    /// Plans the stream of a materialized view over `plan` (DataFusion's optimized plan of its
    /// query); `names` are its column names.
    fn plan_view(
        &self,
        plan: &LogicalPlan,
        names: &[String],
        allocate: &dyn Fn() -> TableId,
        emit_on_close: bool,
    ) -> SqlResult<PlannedView> {
        let (mut stream, reads) = StreamPlanner::new(allocate).build(plan)?;
        // Which columns of each relation read carry a watermark, and which relations only grow.
        let mut marked: std::collections::HashMap<TableId, Vec<usize>> = std::collections::HashMap::new();
        let mut grows_only: std::collections::HashMap<TableId, bool> = std::collections::HashMap::new();
        for (_, read) in &reads {
            match read {
                ReadRelation::Table(table) => {
                    marked.insert(table.def().id, table.def().watermark.iter().map(|w| w.column).collect());
                    grows_only.insert(table.def().id, table.def().append_only);
                }
                ReadRelation::View(id) => {
                    let view = self.views_read().values().find(|v| v.id == *id).cloned();
                    marked.insert(*id, view.as_ref().map(|v| v.watermark_columns.clone()).unwrap_or_default());
                    grows_only.insert(*id, view.is_some_and(|v| v.plan.layout == ViewLayout::AppendOnly));
                }
                ReadRelation::Source { reader, watermark, .. } => {
                    marked.insert(*reader, watermark.iter().map(|w| w.time_column).collect());
                    grows_only.insert(*reader, true);
                }
                ReadRelation::PushSource { id, time_column } => {
                    marked.insert(*id, time_column.iter().copied().collect());
                    grows_only.insert(*id, true);
                }
            }
        }
        if stream.inserts_only(&|relation| grows_only.get(&relation).copied().unwrap_or(false)) {
            stream.layout = ViewLayout::AppendOnly;
        }
        let view_watermarks = stream
            .assign_windows(&|relation| marked.get(&relation).cloned().unwrap_or_default(), emit_on_close)
            .map_err(SqlError::Windowing)?;
        let view_watermarks: Vec<usize> =
            view_watermarks.iter().enumerate().filter(|(_, m)| **m).map(|(i, _)| i).collect();
        let fields: Vec<Field> = plan
            .schema()
            .fields()
            .iter()
            .zip(names)
            .map(|(f, name)| f.as_ref().clone().with_name(name).with_nullable(true))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        sluice_engine::dataflow::check_plan(&stream, self.writer.committer())
            .map_err(|e| {
                let reason = e.to_string();
                SqlError::unsupported(format_args!(
                    "this materialized view ({})",
                    reason.trim_start_matches("internal engine error: ")
                ))
            })?;
        Ok((stream, reads, schema, view_watermarks))
    }

    /// `EXPLAIN CREATE MATERIALIZED VIEW`: the operator graph, one operator per line.
    pub(crate) fn explain_view(&self, name: &str, plan: &LogicalPlan, names: &[String], emit_on_close: bool) -> SqlResult<String> {
        let (stream, _, _, _) = self.plan_view(plan, names, &|| self.allocate_id(), emit_on_close)?;
        Ok(stream.explain(name))
    }

    /// Executes `CREATE MATERIALIZED VIEW`: plans it, starts it over the current contents of
    /// what it reads, and registers it once it holds them. Returns false if it existed and
    /// `IF NOT EXISTS` was given.
    pub(crate) async fn create_view(
        &self,
        name: &str,
        definition: &str,
        plan: &LogicalPlan,
        names: &[String],
        if_not_exists: bool,
        emit_on_close: bool,
    ) -> SqlResult<bool> {
        let _ddl = self.ddl.lock().await;
        if self.relation_kind(name).is_some() {
            if if_not_exists {
                return Ok(false);
            }
            return Err(SqlError::DuplicateTable(name.to_string()));
        }
        self.start_view(name, definition, plan, names, None, emit_on_close).await?;
        Ok(true)
    }

    /// Plans view `name` and starts it: a new view (`restored` is `None`) over the current
    /// contents of what it reads, committed with its catalog entry; or a view of the catalog
    /// over its committed state, with the state-table ids it was first planned with.
    async fn start_view(
        &self,
        name: &str,
        definition: &str,
        plan: &LogicalPlan,
        names: &[String],
        restored: Option<RestoredView>,
        emit_on_close: bool,
    ) -> SqlResult<()> {
        let allocated = std::sync::Mutex::new(Vec::new());
        let replay = std::sync::Mutex::new(restored.as_ref().map(|r| r.plan_ids.iter().copied().collect::<std::collections::VecDeque<_>>()));
        let allocate = || {
            let mut replay = replay.lock().unwrap_or_else(|p| p.into_inner());
            let id = match replay.as_mut() {
                // Past the recorded ids: a fresh id, which the check below reports.
                Some(ids) => ids.pop_front().unwrap_or_else(|| self.allocate_id()),
                None => self.allocate_id(),
            };
            allocated.lock().unwrap_or_else(|p| p.into_inner()).push(id);
            id
        };
        let (mut stream, reads, schema, watermark_columns) = self.plan_view(plan, names, &allocate, emit_on_close)?;
        if let Some(restored) = &restored {
            // Its rows are stored as they were when it was created.
            stream.layout = restored.layout;
        }
        let plan_ids = allocated.into_inner().unwrap_or_else(|p| p.into_inner());
        let explain = stream.explain(name);
        if let Some(restored) = &restored {
            if plan_ids != restored.plan_ids || explain != restored.explain {
                return Err(SqlError::Internal(format!(
                    "materialized view \"{name}\" cannot be restored: this version of Sluice plans it differently \
                     (state tables {plan_ids:?}, was {:?}; plan:\n{explain}\nwas:\n{})",
                    restored.plan_ids, restored.explain
                )));
            }
        }
        let id = match &restored {
            Some(restored) => restored.id,
            None => self.allocate_id(),
        };
        let mut tables = Vec::new();
        let mut backfill = Vec::new();
        let mut readers = Vec::new();
        let mut reader_names = Vec::new();
        let mut depends_on = Vec::new();
        let waiting = {
            // Under the write lock: the tables' snapshot and the view's place in the dataflow's
            // input are taken at the same point of the commit order.
            let mut feeds = self.writer.lock().await;
            // A new view over a pushed source starts from the source's history. The rows the
            // source accepted last are still in the dataflow, not yet in the history queue:
            // a barrier puts them there, and the write lock keeps new ones out until the view
            // is in the dataflow's input.
            let reads_history = restored.is_none()
                && reads.iter().any(|(_, read)| matches!(read, ReadRelation::PushSource { id, .. } if self.history_of(*id).is_some()));
            if reads_history {
                self.dataflow.flush().await?;
            }
            let snapshot = self.store().snapshot();
            for (relation_name, read) in reads {
                if !depends_on.contains(&relation_name) {
                    depends_on.push(relation_name.clone());
                }
                match read {
                    ReadRelation::Table(table) => {
                        let relation = table.def().id;
                        if !tables.contains(&relation) {
                            tables.push(relation);
                            let watermark = match &table.def().watermark {
                                Some(def) => sluice_engine::recovery::table_watermark(snapshot.as_ref(), relation)?
                                    .map(|value| sluice_engine::watermark::Watermark { column: def.column, value }),
                                None => None,
                            };
                            backfill.push(Backfill::Table {
                                relation,
                                state: Arc::clone(table.state()),
                                columns: table.def().columns.len(),
                                snapshot: Arc::clone(&snapshot),
                                watermark,
                            });
                        }
                    }
                    ReadRelation::View(relation) => backfill.push(Backfill::View { relation }),
                    // A new view over a pushed source reads its history first; one that keeps
                    // no history has no rows to start from (the view gets the rows pushed from
                    // now on).
                    ReadRelation::PushSource { id, .. } => {
                        if !tables.contains(&id) {
                            tables.push(id);
                            if restored.is_none() {
                                backfill.extend(self.history_backfill(id, &snapshot)?);
                            }
                        }
                    }
                    ReadRelation::Source { reader, source, setup, watermark } => {
                        let crate::connector::SourceInput::Pull(connector) = setup.input else {
                            return Err(SqlError::Internal(format!("source \"{source}\" has no reader")));
                        };
                        reader_names.push((reader, relation_name.clone()));
                        readers.push(SourceReader { relation: reader, source, connector, watermark, error_policy: setup.error_policy });
                    }
                }
            }
            let start = match &restored {
                Some(_) => ViewStart::Restore,
                None => {
                    let mut catalog = WriteBatch::new();
                    CatalogRecord::View {
                        id,
                        name: name.to_string(),
                        definition: definition.to_string(),
                        plan_ids: plan_ids.clone(),
                        explain: explain.clone(),
                        append_only: stream.layout == ViewLayout::AppendOnly,
                    }
                    .put(&mut catalog)?;
                    self.persist_next_id(&mut catalog);
                    ViewStart::New { backfill, catalog }
                }
            };
            let definition = ViewDefinition { id, name: name.to_string(), plan: stream.clone(), schema: Arc::clone(&schema), start, readers };
            let waiting = self.dataflow.create_view(definition).await?;
            for table in &tables {
                feeds.add(*table);
            }
            waiting
        };
        let created = waiting.await.map_err(|_| SqlError::Internal("the dataflow stopped".into()))?;
        if let Err(e) = created {
            let mut feeds = self.writer.lock().await;
            for table in &tables {
                feeds.remove(*table);
            }
            // The view could not hold the current rows (bad data in them, such as an overflow).
            let reason = e.to_string();
            let reason = reason.trim_start_matches("internal engine error: ");
            return Err(SqlError::ViewFailed(format!(
                "materialized view \"{name}\" cannot be created over the current rows: {reason}"
            )));
        }
        let entry = Arc::new(ViewEntry::try_new(
            id,
            name.to_string(),
            definition.to_string(),
            schema,
            depends_on,
            tables,
            stream,
            watermark_columns,
            reader_names,
        )?);
        let provider = ViewTable::new(Arc::clone(&entry), Arc::clone(self.store()), self.dataflow.clone());
        self.ctx.register_table(TableReference::bare(name.to_string()), Arc::new(provider))?;
        self.views_write().insert(name.to_string(), entry);
        Ok(())
    }

    /// The history of source `id` and where it is kept, if it keeps one.
    fn history_of(&self, id: TableId) -> Option<(Arc<SourceEntry>, Arc<sluice_history::History>)> {
        let history = self.history.get()?;
        let entry = self.sources_read().values().find(|e| e.id == id).cloned()?;
        entry.history.is_some().then(|| (entry, Arc::clone(history)))
    }

    /// A pushed source's history as of `snapshot` (archived files and queue), as rows for a
    /// new view to start from, followed by the source's watermark. The files are read by a
    /// task on the runtime, two batches ahead of the dataflow thread that pulls them, so the
    /// history never has to fit in memory; the scan's plan (and its pin on the files) lives
    /// until the last file is read.
    fn history_backfill(&self, id: TableId, snapshot: &Arc<dyn sluice_storage::StateSnapshot>) -> SqlResult<Option<Backfill>> {
        let Some((entry, history)) = self.history_of(id) else {
            return Ok(None);
        };
        let Some(spec) = &entry.history else {
            return Ok(None);
        };
        let name = entry.name.clone();
        if let Some(reason) = self.dataflow.failure(id) {
            return Err(SqlError::ViewFailed(format!("the history of source \"{name}\" stopped on an error: {reason}")));
        }
        let state = self.ctx.state();
        let plan = history.scan(&state, snapshot, spec, &spec.schema, None, &[], None)?;
        let mut stream = datafusion::physical_plan::execute_stream(Arc::clone(&plan), state.task_ctx())?;
        let (sender, mut receiver) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let _plan = plan;
            while let Some(batch) = futures::StreamExt::next(&mut stream).await {
                let failed = batch.is_err();
                if sender.send(batch).await.is_err() || failed {
                    return;
                }
            }
        });
        let rows = std::iter::from_fn(move || receiver.blocking_recv()).map(move |batch| {
            batch.map_err(|e| sluice_engine::EngineError::Invalid(format!("reading the history of source \"{name}\": {e}")))
        });
        let watermark = match &entry.watermark {
            Some(w) => sluice_engine::recovery::table_watermark(snapshot.as_ref(), id)?
                .map(|value| sluice_engine::watermark::Watermark { column: w.time_column, value }),
            None => None,
        };
        Ok(Some(Backfill::Rows { relation: id, rows: Box::new(rows), watermark }))
    }

    /// The views that read `name`, directly or through other views, newest first (the order
    /// to drop them in).
    fn dependents(&self, name: &str) -> Vec<Arc<ViewEntry>> {
        let views = self.views_read();
        let mut found: Vec<Arc<ViewEntry>> = Vec::new();
        let mut frontier = vec![name.to_string()];
        while let Some(current) = frontier.pop() {
            for view in views.values() {
                if view.depends_on.contains(&current) && !found.iter().any(|f| f.id == view.id) {
                    found.push(Arc::clone(view));
                    frontier.push(view.name.clone());
                }
            }
        }
        // Ids grow with creation, and a view only reads older ones.
        found.sort_by_key(|v| std::cmp::Reverse(v.id));
        found
    }

    /// Executes `DROP TABLE | MATERIALIZED VIEW | SOURCE name [CASCADE]`. Returns the notices
    /// to show (skipped names, cascaded drops).
    pub(crate) async fn drop_relation(
        &self,
        kind: RelationKind,
        name: &ObjectName,
        if_exists: bool,
        cascade: bool,
    ) -> SqlResult<Vec<String>> {
        let _ddl = self.ddl.lock().await;
        let name = table_name(name)?;
        let words = kind.words();
        match self.relation_kind(&name) {
            None if if_exists => return Ok(vec![format!("{words} \"{name}\" does not exist, skipping")]),
            None => return Err(SqlError::UndefinedTable(name)),
            Some(actual) if actual != kind => {
                return Err(SqlError::WrongObjectType(format!(
                    "\"{name}\" is not a {words}; use DROP {} to remove a {}",
                    actual.words().to_ascii_uppercase(),
                    actual.words()
                )));
            }
            Some(_) => {}
        }
        let dependents = self.dependents(&name);
        let mut notices = Vec::new();
        // Sinks of the view dropped and of the views dropped with it.
        let mut sinks: Vec<String> = dependents.iter().flat_map(|d| self.sinks_of(&d.name)).collect();
        if kind == RelationKind::MaterializedView {
            sinks.extend(self.sinks_of(&name));
        }
        if !sinks.is_empty() && !cascade {
            return Err(SqlError::DependentObjects(format!(
                "cannot drop {words} {name} because sink{} {} depend{} on it; use DROP ... CASCADE to drop them too",
                if sinks.len() > 1 { "s" } else { "" },
                sinks.join(", "),
                if sinks.len() > 1 { "" } else { "s" }
            )));
        }
        for sink in &sinks {
            self.drop_sink_entry(sink, true).await?;
            notices.push(format!("drop cascades to sink {sink}"));
        }
        if !dependents.is_empty() {
            let names: Vec<&str> = dependents.iter().rev().map(|d| d.name.as_str()).collect();
            if !cascade {
                return Err(SqlError::DependentObjects(format!(
                    "cannot drop {words} {name} because other objects depend on it (materialized view{} {}); \
                     use DROP ... CASCADE to drop the dependent objects too",
                    if names.len() > 1 { "s" } else { "" },
                    names.join(", ")
                )));
            }
            for dependent in &dependents {
                self.drop_view_entry(dependent).await?;
                notices.push(format!("drop cascades to materialized view {}", dependent.name));
            }
            notices.reverse();
        }
        match kind {
            RelationKind::Table => self.drop_table(&name).await?,
            RelationKind::MaterializedView => {
                if let Some(view) = self.view(&name) {
                    self.drop_view_entry(&view).await?;
                }
            }
            RelationKind::Source => {
                let source = self.sources_read().get(&name).cloned();
                if let Some(source) = source {
                    let mut batch = WriteBatch::new();
                    persist::delete(&mut batch, source.id);
                    match (self.history.get(), &source.history) {
                        (Some(history), Some(_)) => {
                            // The archiver stops before the catalog entry, queue and file list
                            // go, so no round can list a file of a dropped source.
                            history.stop(source.id).await;
                            self.persist_next_id(&mut batch);
                            self.dataflow.drop_archive(source.id, batch).await?;
                            if matches!(source.setup.input, crate::connector::SourceInput::Push(_)) {
                                self.writer.lock().await.remove(source.id);
                            }
                            history.delete_files(source.id, &source.name);
                        }
                        _ => self.commit_ddl(batch)?,
                    }
                }
                self.ctx.deregister_table(TableReference::bare(name.clone()))?;
                self.sources_write().remove(&name);
            }
        }
        Ok(notices)
    }

    async fn drop_view_entry(&self, view: &ViewEntry) -> SqlResult<()> {
        self.ctx.deregister_table(TableReference::bare(view.name.clone()))?;
        self.views_write().remove(&view.name);
        {
            let mut feeds = self.writer.lock().await;
            for table in &view.tables {
                feeds.remove(*table);
            }
        }
        let mut catalog = WriteBatch::new();
        persist::delete(&mut catalog, view.id);
        self.dataflow.drop_view(view.id, catalog).await?;
        Ok(())
    }

    async fn drop_table(&self, name: &str) -> SqlResult<()> {
        let removed = {
            let mut tables = self.tables_write();
            let Some(table) = tables.remove(name) else { return Err(SqlError::UndefinedTable(name.to_string())) };
            self.ctx.deregister_table(TableReference::bare(name.to_string()))?;
            table
        };
        let state = Arc::clone(removed.state());
        let id = removed.def().id;
        self.writer
            .write(|snapshot, _| {
                use sluice_engine::recovery::{late_rows_counter, system_tables};
                let mut batch = WriteBatch::new();
                state.clear(&mut batch);
                persist::delete(&mut batch, id);
                // Its watermark and late rows go with it.
                batch.delete(system_tables::TABLE_WATERMARKS, id.to_be_bytes().to_vec());
                batch.delete(system_tables::COUNTERS, late_rows_counter(id).into_bytes());
                for kv in snapshot.scan(system_tables::LATE_ROWS, sluice_storage::KeyRange::prefix(&id.to_be_bytes()))? {
                    let (key, _) = kv?;
                    batch.delete(system_tables::LATE_ROWS, key.to_vec());
                }
                self.persist_next_id(&mut batch);
                batch.set_durability(sluice_storage::Durability::Checkpoint);
                Ok((batch, vec![], ()))
            })
            .await?;
        Ok(())
    }

    /// `FLUSH`: returns once every change committed before it is visible in every view.
    pub async fn flush(&self) -> SqlResult<()> {
        self.dataflow.flush().await?;
        Ok(())
    }
}

/// What [`Database::open`] rebuilt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoverySummary {
    /// The last committed epoch of the store.
    pub epoch: u64,
    /// Tables restored.
    pub tables: usize,
    /// Sources restored.
    pub sources: usize,
    /// Materialized views restored.
    pub views: usize,
    /// Table changes committed after the last checkpoint, replayed into the views.
    pub replayed_changes: usize,
}

/// A sink as its catalog record describes it.
struct SinkDefinitionText {
    id: TableId,
    name: String,
    view: String,
    options: std::collections::BTreeMap<String, String>,
    format: Option<crate::catalog::FormatClause>,
}

/// A view of the catalog being restarted.
struct RestoredView {
    id: TableId,
    plan_ids: Vec<TableId>,
    explain: String,
    /// The layout its rows were stored in.
    layout: ViewLayout,
}

/// A source's entry: its columns and its connector (which `created_at` anchors for datagen).
fn source_entry(
    id: TableId,
    name: String,
    columns: Vec<ColumnDef>,
    options: &std::collections::BTreeMap<String, String>,
    format: Option<&crate::catalog::FormatClause>,
    created_at: i64,
    watermark: Option<WatermarkDef>,
) -> SqlResult<SourceEntry> {
    let schema = Arc::new(Schema::new(columns.iter().map(|c| c.sql_type.field(&c.name)).collect::<Vec<_>>()));
    let setup = crate::connector::source_setup(&name, &schema, options, format, created_at)?;
    let watermark = match watermark {
        Some(def) => {
            let expr = crate::event_time::compile_watermark(&def, &schema)?;
            Some(SourceWatermark { time_column: def.column, expr, idle_timeout: setup.idle_timeout })
        }
        None => None,
    };
    let history = setup.history.enabled.then(|| sluice_history::HistorySpec {
        id,
        name: name.clone(),
        schema: Arc::clone(&schema),
        time_column: sluice_history::HistorySpec::time_column_of(&schema, watermark.as_ref().map(|w| w.time_column)),
        flush_interval: setup.history.flush_interval,
        retention: setup.history.retention.as_ref().map(|(d, _)| *d),
        compaction: setup.history.compaction,
    });
    Ok(SourceEntry { id, name, schema, setup, watermark, history })
}

/// Normalizes an identifier as PostgreSQL does: unquoted names fold to lower case.
pub fn normalize_ident(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// The normalized table name of `public.t`, `t` or `sluice.public.t`.
pub fn table_name(name: &ObjectName) -> SqlResult<String> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| p.as_ident().map(normalize_ident).ok_or_else(|| SqlError::Syntax(format!("invalid name {name}"))))
        .collect::<SqlResult<_>>()?;
    match parts.as_slice() {
        [table] => Ok(table.clone()),
        [schema, table] if schema == SCHEMA_NAME => Ok(table.clone()),
        [catalog, schema, table] if schema == SCHEMA_NAME && catalog == CATALOG_NAME => Ok(table.clone()),
        _ => Err(SqlError::unsupported(format_args!("schemas other than \"{SCHEMA_NAME}\" (in {name})"))),
    }
}

fn reject_create_options(create: &CreateTable) -> SqlResult<()> {
    let unsupported = |what: &str| Err(SqlError::unsupported(what));
    if create.or_replace {
        return unsupported("CREATE OR REPLACE TABLE");
    }
    if create.temporary {
        return unsupported("CREATE TEMPORARY TABLE");
    }
    if create.external {
        return unsupported("CREATE EXTERNAL TABLE");
    }
    if create.query.is_some() {
        return unsupported("CREATE TABLE AS");
    }
    if create.like.is_some() || create.clone.is_some() {
        return unsupported("CREATE TABLE LIKE/CLONE");
    }
    Ok(())
}

fn table_def(create: &CreateTable, name: String, id: u32) -> SqlResult<TableDef> {
    if create.columns.is_empty() {
        return Err(SqlError::InvalidDefinition(format!("table \"{name}\" must have at least one column")));
    }
    let mut columns: Vec<ColumnDef> = Vec::with_capacity(create.columns.len());
    let mut primary_key: Option<Vec<usize>> = None;
    let mut set_primary_key = |key: Vec<usize>| -> SqlResult<()> {
        if primary_key.replace(key).is_some() {
            return Err(SqlError::InvalidDefinition(format!(
                "multiple primary keys for table \"{name}\" are not allowed"
            )));
        }
        Ok(())
    };
    for (index, col) in create.columns.iter().enumerate() {
        let col_name = normalize_ident(&col.name);
        if columns.iter().any(|c| c.name == col_name) {
            return Err(SqlError::DuplicateColumn(col_name));
        }
        let sql_type = SqlType::from_ast(&col.data_type)?;
        let mut not_null = false;
        for option in &col.options {
            match &option.option {
                ColumnOption::Null => not_null = false,
                ColumnOption::NotNull => not_null = true,
                ColumnOption::PrimaryKey(_) => {
                    not_null = true;
                    set_primary_key(vec![index])?;
                }
                other => {
                    return Err(SqlError::unsupported(format_args!("column option {other}")));
                }
            }
        }
        columns.push(ColumnDef { name: col_name, sql_type, not_null });
    }
    for constraint in &create.constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) => {
                let mut key = Vec::with_capacity(pk.columns.len());
                for c in &pk.columns {
                    let ast::Expr::Identifier(ident) = &c.column.expr else {
                        return Err(SqlError::unsupported(format_args!("primary key on expression {}", c.column.expr)));
                    };
                    let col_name = normalize_ident(ident);
                    let position = columns.iter().position(|c| c.name == col_name).ok_or_else(|| {
                        SqlError::UndefinedColumn(format!("\"{col_name}\" named in key"))
                    })?;
                    if key.contains(&position) {
                        return Err(SqlError::DuplicateColumn(col_name));
                    }
                    key.push(position);
                }
                for i in &key {
                    columns[*i].not_null = true;
                }
                set_primary_key(key)?;
            }
            other => return Err(SqlError::unsupported(format_args!("table constraint {other}"))),
        }
    }
    if let Some(key) = &primary_key {
        if let Some(bad) = key.iter().find(|i| matches!(columns[**i].sql_type, SqlType::Jsonb)) {
            return Err(SqlError::InvalidDefinition(format!(
                "column \"{}\" of type jsonb cannot be part of a primary key",
                columns[*bad].name
            )));
        }
    }
    Ok(TableDef { id, name, columns, primary_key: primary_key.unwrap_or_default(), append_only: false, watermark: None })
}
