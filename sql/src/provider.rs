//! [`StoredTable`]: a DataFusion table provider over a table's rows in the state store.
//!
//! DataFusion plans every query and DML statement; this provider is where its plans touch
//! storage: `scan` reads a snapshot, `insert_into` / `delete_from` / `update` turn rows into
//! one atomic write batch each.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::compute::{cast_with_options, filter_record_batch, CastOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;
use sluice_engine::plan::RelationId;
use sluice_engine::recovery::{
    encode_log_entry, late_rows_counter, log_key, read_counter, record_late_rows, render_row, system_tables,
    table_watermark, LateRow,
};
use sluice_engine::watermark::{split_late, Watermark, WatermarkGenerator};
use sluice_engine::{ChangeBatch, Dataflow, EpochCommitter, StateTable, SCAN_BATCH_ROWS};
use sluice_storage::{StateSnapshot, StateStore, WriteBatch};
use tokio::sync::Mutex;

use crate::catalog::TableDef;
use crate::error::{to_datafusion, DataErrorKind, SqlError, SqlResult};
use crate::types::{normalize_jsonb, SqlType};

/// The snapshot one statement reads, put into the statement's DataFusion config so that every
/// table it scans is read at the same epoch.
#[derive(Clone)]
pub struct ReadSnapshot(pub Arc<dyn StateSnapshot>);

impl ReadSnapshot {
    /// The snapshot the statement running in `state` reads (a fresh one of `store` outside a
    /// statement, e.g. while DataFusion plans).
    pub fn of(state: &dyn Session, store: &Arc<dyn StateStore>) -> Arc<dyn StateSnapshot> {
        match state.config().get_extension::<ReadSnapshot>() {
            Some(s) => Arc::clone(&s.0),
            None => store.snapshot(),
        }
    }
}

impl fmt::Debug for ReadSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReadSnapshot(epoch {})", self.0.epoch())
    }
}

/// Changes one statement made, per relation, to hand to the dataflow after the commit, each
/// with the relation's watermark after them (tables that declare one).
pub type StatementChanges = Vec<(RelationId, ChangeBatch, Option<Watermark>)>;

/// Which tables feed materialized views (and by how many views), guarded by the write lock.
#[derive(Debug, Default)]
pub struct Feeds {
    readers: HashMap<RelationId, usize>,
}

impl Feeds {
    /// Whether some view reads `relation`: only then does a write compute its changes.
    pub fn feeds(&self, relation: RelationId) -> bool {
        self.readers.get(&relation).is_some_and(|n| *n > 0)
    }

    /// One more view reads `relation`.
    pub fn add(&mut self, relation: RelationId) {
        *self.readers.entry(relation).or_insert(0) += 1;
    }

    /// One view fewer reads `relation`.
    pub fn remove(&mut self, relation: RelationId) {
        if let Some(n) = self.readers.get_mut(&relation) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Serializes writes to tables, commits each statement's changes as one epoch and feeds them
/// to the dataflow in commit order.
///
/// Why one lock: UPDATE and DELETE read rows and write them back; holding the lock from the
/// read to the commit makes each DML statement atomic and isolated from the others. Enqueuing
/// the statement's changes before releasing it makes the dataflow's input order the commit
/// order, and `CREATE MATERIALIZED VIEW` takes its snapshot under the same lock (see
/// `sluice_engine::dataflow`).
pub struct TableWriter {
    committer: Arc<EpochCommitter>,
    dataflow: Dataflow,
    lock: Mutex<Feeds>,
    next_row_id: AtomicI64,
    /// Sequence number of the next change-log entry (see `sluice_engine::recovery`).
    next_log_seq: AtomicU64,
}

impl TableWriter {
    /// A writer committing through `committer` and feeding `dataflow`.
    pub fn new(committer: Arc<EpochCommitter>, dataflow: Dataflow) -> Self {
        Self {
            committer,
            dataflow,
            lock: Mutex::new(Feeds::default()),
            next_row_id: AtomicI64::new(1),
            next_log_seq: AtomicU64::new(1),
        }
    }

    /// Continues numbering after a restart: hidden row ids from `next_row_id`, change-log
    /// entries from `next_log_seq`.
    pub fn resume(&self, next_row_id: i64, next_log_seq: u64) {
        self.next_row_id.store(next_row_id, Ordering::Relaxed);
        self.next_log_seq.store(next_log_seq, Ordering::Relaxed);
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        self.committer.store()
    }

    /// The committer.
    pub fn committer(&self) -> &Arc<EpochCommitter> {
        &self.committer
    }

    /// Takes the write lock: no table write commits until the guard is dropped.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, Feeds> {
        self.lock.lock().await
    }

    /// Runs `f` holding the write lock: `f` reads a fresh snapshot and returns the writes to
    /// commit, the changes they make to relations views may read, and a result; the writes
    /// commit as the next epoch and the changes are enqueued before the lock is released.
    pub async fn write<T>(
        &self,
        f: impl FnOnce(&dyn StateSnapshot, &Feeds) -> SqlResult<(WriteBatch, StatementChanges, T)>,
    ) -> SqlResult<T> {
        self.write_with(false, f).await
    }

    /// Like [`TableWriter::write`], but the epoch is on disk (fsynced) before it returns: for
    /// writes acknowledged to a client that keeps no copy (HTTP ingest).
    pub async fn write_durable<T>(
        &self,
        f: impl FnOnce(&dyn StateSnapshot, &Feeds) -> SqlResult<(WriteBatch, StatementChanges, T)>,
    ) -> SqlResult<T> {
        self.write_with(true, f).await
    }

    async fn write_with<T>(
        &self,
        durable: bool,
        f: impl FnOnce(&dyn StateSnapshot, &Feeds) -> SqlResult<(WriteBatch, StatementChanges, T)>,
    ) -> SqlResult<T> {
        let feeds = self.lock.lock().await;
        let snapshot = self.committer.store().snapshot();
        let (mut batch, changes, out) = f(snapshot.as_ref(), &feeds)?;
        if durable {
            batch.set_durability(sluice_storage::Durability::Synced);
        }
        // Changes views read are logged in the same epoch as the rows: until a checkpoint
        // absorbs them, the log is what a restart replays into the views.
        let mut logged = Vec::with_capacity(changes.len());
        for (relation, changes, watermark) in changes {
            if feeds.feeds(relation) && changes.num_rows() > 0 {
                let seq = self.next_log_seq.fetch_add(1, Ordering::Relaxed);
                batch.put(system_tables::CHANGE_LOG, log_key(seq).to_vec(), encode_log_entry(relation, &changes, watermark)?);
                logged.push((seq, relation, changes, watermark));
            }
        }
        if !batch.is_empty() {
            let next_row_id = self.next_row_id.load(Ordering::Relaxed);
            crate::persist::put_counter(&mut batch, crate::persist::NEXT_ROW_ID, next_row_id as u64);
        }
        self.committer.commit(batch)?;
        for (seq, relation, changes, watermark) in logged {
            self.dataflow.send_changes(relation, changes, seq, watermark).await?;
        }
        Ok(out)
    }

    /// Allocates `n` consecutive hidden row ids.
    fn allocate_row_ids(&self, n: usize) -> Int64Array {
        let first = self.next_row_id.fetch_add(n as i64, Ordering::Relaxed);
        Int64Array::from_iter_values(first..first + n as i64)
    }
}

/// A table's rows as a DataFusion [`TableProvider`].
pub struct StoredTable {
    def: Arc<TableDef>,
    state: Arc<StateTable>,
    user_schema: SchemaRef,
    writer: Arc<TableWriter>,
    /// The compiled watermark expression, for a table that declares one.
    watermark: Option<Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
}

impl fmt::Debug for StoredTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredTable").field("name", &self.def.name).finish()
    }
}

impl StoredTable {
    /// The provider for `def`, writing through `writer`.
    pub fn try_new(def: Arc<TableDef>, writer: Arc<TableWriter>) -> SqlResult<Self> {
        let state = Arc::new(StateTable::try_new(def.id, def.stored_schema(), def.key_indices())?);
        let user_schema = def.user_schema();
        let watermark = match &def.watermark {
            Some(w) => Some(crate::event_time::compile_watermark(w, &user_schema)?),
            None => None,
        };
        Ok(Self { def, state, user_schema, writer, watermark })
    }

    /// Refuses UPDATE and DELETE on an APPEND ONLY table.
    fn check_changeable(&self, what: &str) -> SqlResult<()> {
        if self.def.append_only {
            return Err(SqlError::WrongObjectType(format!(
                "cannot {what} table \"{}\": it is APPEND ONLY (rows can only be inserted)",
                self.def.name
            )));
        }
        Ok(())
    }

    /// Splits an INSERT's rows (in statement order) by the table's watermark, advancing it
    /// row by row: the accepted rows, the late rows' records, and the watermark after them.
    fn split_by_watermark(
        &self,
        snapshot: &dyn StateSnapshot,
        prepared: &[RecordBatch],
    ) -> SqlResult<(Vec<RecordBatch>, Vec<LateRow>, Option<i64>)> {
        let (Some(expr), Some(def)) = (&self.watermark, &self.def.watermark) else {
            return Ok((prepared.to_vec(), Vec::new(), None));
        };
        let mut generator = WatermarkGenerator::new(table_watermark(snapshot, self.def.id)?, std::time::Duration::MAX);
        let arrived_at = chrono::Utc::now().timestamp_micros();
        let now = std::time::Instant::now();
        let mut accepted = Vec::with_capacity(prepared.len());
        let mut late = Vec::new();
        for batch in prepared {
            let user = self.user_rows(batch)?;
            let values = expr.evaluate(&user)?.into_array(user.num_rows())?;
            let split = split_late(batch, def.column, values.as_ref(), &mut generator, 0, now)?;
            let late_user = self.user_rows(&split.late)?;
            for (i, (event_time, watermark)) in split.late_times.iter().enumerate() {
                late.push(LateRow { event_time: *event_time, watermark: *watermark, arrived_at, row: render_row(&late_user, i) });
            }
            accepted.push(split.accepted);
        }
        Ok((accepted, late, generator.current()))
    }

    /// The table definition.
    pub fn def(&self) -> &Arc<TableDef> {
        &self.def
    }

    /// The state table holding the rows.
    pub fn state(&self) -> &Arc<StateTable> {
        &self.state
    }

    /// The stored rows (hidden row id included) as of `snapshot` that `filters` match, as one
    /// batch: the rows of the primary keys the filters pin down, or else the table read
    /// [`SCAN_BATCH_ROWS`] rows at a time, each chunk filtered before the next is read.
    ///
    /// Why chunks: an UPDATE or DELETE without a key filter must look at every row, but should
    /// hold only the rows it changes, not the whole table (which may be larger than memory).
    fn matching_stored(&self, state: &dyn Session, snapshot: &dyn StateSnapshot, filters: &[Expr]) -> SqlResult<RecordBatch> {
        let predicate = self.row_predicate(state, filters)?;
        let matching = |stored: RecordBatch| -> SqlResult<RecordBatch> {
            match &predicate {
                Some(predicate) if stored.num_rows() > 0 => predicate.filter(&stored),
                _ => Ok(stored),
            }
        };
        if let Some(batch) = self.key_lookup(snapshot, filters)? {
            return matching(batch);
        }
        let mut kept = Vec::new();
        for chunk in self.state.scan_batches(snapshot)? {
            let chunk = matching(chunk?)?;
            if chunk.num_rows() > 0 {
                kept.push(chunk);
            }
        }
        Ok(datafusion::arrow::compute::concat_batches(self.state.schema(), &kept)?)
    }

    /// If `filters` fix every primary-key column to literal values (`k = 1`, `k IN (1, 2)`),
    /// reads just those keys. `None` when they do not (read everything instead).
    fn key_lookup(&self, snapshot: &dyn StateSnapshot, filters: &[Expr]) -> SqlResult<Option<RecordBatch>> {
        if self.def.has_row_id() {
            return Ok(None);
        }
        let stored = self.state.schema();
        let mut candidates: Vec<Option<Vec<ScalarValue>>> = vec![None; self.def.primary_key.len()];
        for filter in filters {
            let (column, values) = match filter {
                Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => match (left.as_ref(), right.as_ref()) {
                    (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => (c, vec![v.clone()]),
                    _ => continue,
                },
                Expr::InList(InList { expr, list, negated: false }) => match expr.as_ref() {
                    Expr::Column(c) => {
                        let values: Option<Vec<ScalarValue>> =
                            list.iter().map(|e| if let Expr::Literal(v, _) = e { Some(v.clone()) } else { None }).collect();
                        match values {
                            Some(v) => (c, v),
                            None => continue,
                        }
                    }
                    _ => continue,
                },
                _ => continue,
            };
            if let Some(slot) = self.def.primary_key.iter().position(|i| self.def.columns[*i].name == column.name) {
                candidates[slot] = Some(values);
            }
        }
        // One key per combination; only single-valued keys for composite primary keys.
        let Some(values) = candidates.into_iter().collect::<Option<Vec<_>>>() else { return Ok(None) };
        let rows = if values.len() == 1 { values[0].len() } else if values.iter().all(|v| v.len() == 1) { 1 } else { return Ok(None) };
        let mut columns: Vec<ArrayRef> =
            stored.fields().iter().map(|f| datafusion::arrow::array::new_null_array(f.data_type(), rows)).collect();
        for (slot, column) in self.def.primary_key.iter().enumerate() {
            let target = stored.field(*column).data_type();
            let typed = values[slot].iter().map(|v| v.cast_to(target)).collect::<Result<Vec<_>, _>>();
            let Ok(typed) = typed else { return Ok(None) };
            columns[*column] = ScalarValue::iter_to_array(typed)?;
        }
        let keys = self.state.encode_keys(&RecordBatch::try_new(Arc::clone(stored), columns)?)?;
        let mut found = Vec::new();
        for key in keys.iter() {
            if let Some(value) = snapshot.get(self.state.id(), key.data())? {
                found.push(value);
            }
        }
        Ok(Some(self.state.decode_values(found.iter().map(|v| v.as_ref()))?))
    }

    /// Checks and completes user rows before they are stored: casts to the column types,
    /// enforces NOT NULL and `VARCHAR(n)`, normalizes JSONB, and appends hidden row ids.
    fn prepare_rows(&self, columns: Vec<ArrayRef>, with_row_ids: Option<ArrayRef>) -> SqlResult<RecordBatch> {
        let rows = columns.first().map(|c| c.len()).unwrap_or(0);
        let mut out = Vec::with_capacity(columns.len() + 1);
        for (column, def) in columns.into_iter().zip(&self.def.columns) {
            let target = def.sql_type.arrow_type();
            let column = if column.data_type() == &target {
                column
            } else {
                cast_with_options(&column, &target, &CastOptions { safe: false, ..Default::default() })?
            };
            if def.not_null && column.null_count() > 0 {
                return Err(SqlError::NotNull { table: self.def.name.clone(), column: def.name.clone() });
            }
            let column = match &def.sql_type {
                SqlType::Varchar { max_len: Some(max) } => {
                    let strings = column.as_string::<i32>();
                    if let Some(long) = strings.iter().flatten().find(|s| s.chars().count() > *max as usize) {
                        return Err(SqlError::data(
                            DataErrorKind::StringTooLong,
                            format!("value too long for type character varying({max}): '{long}'"),
                        ));
                    }
                    column
                }
                SqlType::Jsonb => {
                    let strings = column.as_string::<i32>();
                    let normalized = strings
                        .iter()
                        .map(|v| v.map(normalize_jsonb).transpose())
                        .collect::<SqlResult<StringArray>>()?;
                    Arc::new(normalized) as ArrayRef
                }
                _ => column,
            };
            out.push(column);
        }
        if self.def.has_row_id() {
            let ids = match with_row_ids {
                Some(ids) => ids,
                None => Arc::new(self.writer.allocate_row_ids(rows)) as ArrayRef,
            };
            out.push(ids);
        }
        Ok(RecordBatch::try_new(Arc::clone(self.state.schema()), out)?)
    }

    /// The WHERE clause of an UPDATE or DELETE planned once against the stored schema; None
    /// without one (every row matches).
    fn row_predicate(&self, state: &dyn Session, filters: &[Expr]) -> SqlResult<Option<RowPredicate>> {
        if filters.is_empty() {
            return Ok(None);
        }
        let df_schema = DFSchema::try_from(Arc::clone(self.state.schema()))?;
        let exprs = filters
            .iter()
            .map(|filter| Ok(state.create_physical_expr(unqualify(filter.clone())?, &df_schema)?))
            .collect::<SqlResult<Vec<_>>>()?;
        Ok(Some(RowPredicate { exprs }))
    }
}

impl StoredTable {
    /// The user columns of stored rows (without the hidden row id).
    pub fn user_rows(&self, stored: &RecordBatch) -> SqlResult<RecordBatch> {
        let columns = stored.columns()[..self.def.columns.len()].to_vec();
        Ok(RecordBatch::try_new(Arc::clone(&self.user_schema), columns)?)
    }

    /// The changes an INSERT of `prepared` makes: inserts, and for a primary key that already
    /// has a row (stored, or inserted earlier by the same statement) the delete of that row
    /// just before the insert that replaces it.
    fn insert_changes(&self, snapshot: &dyn StateSnapshot, prepared: &[RecordBatch]) -> SqlResult<ChangeBatch> {
        let mut sources: Vec<RecordBatch> = Vec::with_capacity(prepared.len() + 1);
        for batch in prepared {
            sources.push(self.user_rows(batch)?);
        }
        if self.def.has_row_id() {
            let data = datafusion::arrow::compute::concat_batches(&self.user_schema, &sources)?;
            return Ok(ChangeBatch::inserts(data));
        }
        let mut picks: Vec<(usize, usize)> = Vec::new();
        let mut ops: Vec<i8> = Vec::new();
        let mut latest: HashMap<Vec<u8>, (usize, usize)> = HashMap::new();
        let mut replaced: Vec<bytes::Bytes> = Vec::new();
        let mut replaced_at: Vec<usize> = Vec::new();
        for (b, batch) in prepared.iter().enumerate() {
            let keys = self.state.encode_keys(batch)?;
            for row in 0..batch.num_rows() {
                let key = keys.row(row).data();
                match latest.get(key) {
                    Some(previous) => {
                        picks.push(*previous);
                        ops.push(-1);
                    }
                    None => {
                        if let Some(old) = snapshot.get(self.state.id(), key)? {
                            replaced.push(old);
                            replaced_at.push(picks.len());
                            picks.push((usize::MAX, replaced.len() - 1));
                            ops.push(-1);
                        }
                    }
                }
                picks.push((b, row));
                ops.push(1);
                latest.insert(key.to_vec(), (b, row));
            }
        }
        if !replaced.is_empty() {
            let old = self.state.decode_values(replaced.iter().map(|v| v.as_ref()))?;
            sources.push(self.user_rows(&old)?);
            let old_source = sources.len() - 1;
            for at in replaced_at {
                picks[at].0 = old_source;
            }
        }
        let mut columns = Vec::with_capacity(self.def.columns.len());
        for column in 0..self.def.columns.len() {
            let arrays: Vec<&dyn Array> = sources.iter().map(|s| s.column(column).as_ref()).collect();
            columns.push(datafusion::arrow::compute::interleave(&arrays, &picks)?);
        }
        let data = RecordBatch::try_new(Arc::clone(&self.user_schema), columns)?;
        Ok(ChangeBatch::try_new(data, datafusion::arrow::array::Int8Array::from(ops))?)
    }

    /// An UPDATE that changes primary keys must not land a row on a key another row keeps
    /// (PostgreSQL: 23505); unlike INSERT's upsert, that would silently delete the other row.
    fn check_moved_keys(&self, snapshot: &dyn StateSnapshot, old: &RecordBatch, new: &RecordBatch) -> SqlResult<()> {
        if self.def.has_row_id() {
            return Ok(());
        }
        let old_keys = self.state.encode_keys(old)?;
        let vacated: HashSet<&[u8]> = old_keys.iter().map(|k| k.data()).collect();
        let new_keys = self.state.encode_keys(new)?;
        let mut taken: HashSet<&[u8]> = HashSet::with_capacity(new_keys.num_rows());
        for key in new_keys.iter() {
            let key = key.data();
            let collides = !taken.insert(key) || (!vacated.contains(key) && snapshot.get(self.state.id(), key)?.is_some());
            if collides {
                return Err(SqlError::UniqueViolation(format!(
                    "duplicate key value violates unique constraint \"{}_pkey\"",
                    self.def.name
                )));
            }
        }
        Ok(())
    }
}

/// Strips table qualifiers: DML filters and assignments are evaluated against the table's own
/// unqualified schema.
fn unqualify(expr: Expr) -> SqlResult<Expr> {
    if expr.exists(|e| Ok(matches!(e, Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_))))? {
        return Err(SqlError::unsupported("subqueries in UPDATE or DELETE"));
    }
    Ok(expr
        .transform(|e| match e {
            Expr::Column(c) if c.relation.is_some() => {
                Ok(Transformed::yes(Expr::Column(Column::new_unqualified(c.name))))
            }
            other => Ok(Transformed::no(other)),
        })?
        .data)
}

/// A plan that returns one row: the number of rows a DML statement changed.
fn count_plan(count: u64) -> DfResult<Arc<dyn ExecutionPlan>> {
    let schema = Arc::new(Schema::new(vec![Field::new("count", DataType::UInt64, false)]));
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(UInt64Array::from(vec![count]))])?;
    Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None)?)
}

#[async_trait]
impl TableProvider for StoredTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.user_schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let snapshot = ReadSnapshot::of(state, self.writer.store());
        // The hidden row id, if any, is the last column: the user columns come first.
        let width = self.def.columns.len();
        let user_schema = Arc::clone(&self.user_schema);
        let user_rows = move |b: RecordBatch| RecordBatch::try_new(Arc::clone(&user_schema), b.columns()[..width].to_vec());
        if let Some(batch) = self.key_lookup(snapshot.as_ref(), filters).map_err(to_datafusion)? {
            return Ok(MemorySourceConfig::try_new_exec(&[vec![user_rows(batch)?]], Arc::clone(&self.user_schema), projection.cloned())?);
        }
        // Every row: streamed from the snapshot a batch at a time (a table may be larger than
        // memory).
        let table = Arc::clone(&self.state);
        let read = move |after: Option<&[u8]>| {
            let chunk = table.scan_chunk(snapshot.as_ref(), after, SCAN_BATCH_ROWS).map_err(|e| to_datafusion(e.into()))?;
            chunk.map(|(stored, last)| Ok((user_rows(stored)?, last))).transpose()
        };
        crate::state_scan::StateScan::plan(Arc::clone(&self.user_schema), Arc::new(read), projection)
    }

    /// Filters are offered to `scan` to find primary-key lookups; DataFusion still applies them
    /// all (Inexact), so a scan may return more rows than match, never fewer.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(to_datafusion(SqlError::unsupported(format_args!("INSERT mode {insert_op}"))));
        }
        let sink = TableSink { table: self.clone_handle(), schema: Arc::clone(&self.user_schema) };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    async fn delete_from(&self, state: &dyn Session, filters: Vec<Expr>) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.check_changeable("DELETE from").map_err(to_datafusion)?;
        let deleted = self
            .writer
            .write(|snapshot, feeds| {
                let doomed = self.matching_stored(state, snapshot, &filters)?;
                let mut batch = WriteBatch::new();
                self.state.delete_rows(&doomed, &mut batch)?;
                let mut changes = Vec::new();
                if feeds.feeds(self.def.id) && doomed.num_rows() > 0 {
                    changes.push((self.def.id, ChangeBatch::deletes(self.user_rows(&doomed)?), None));
                }
                Ok((batch, changes, doomed.num_rows() as u64))
            })
            .await
            .map_err(to_datafusion)?;
        count_plan(deleted)
    }

    async fn update(
        &self,
        state: &dyn Session,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.check_changeable("UPDATE").map_err(to_datafusion)?;
        let updated = self
            .writer
            .write(|snapshot, feeds| {
                let old = self.matching_stored(state, snapshot, &filters)?;
                let df_schema = DFSchema::try_from(Arc::clone(self.state.schema()))?;
                let mut columns: Vec<ArrayRef> = (0..self.def.columns.len()).map(|i| Arc::clone(old.column(i))).collect();
                for (name, expr) in &assignments {
                    let (index, _) = self
                        .def
                        .column(name)
                        .ok_or_else(|| SqlError::UndefinedColumn(format!("\"{name}\"")))?;
                    let expr = state.create_physical_expr(unqualify(expr.clone())?, &df_schema)?;
                    columns[index] = expr.evaluate(&old)?.into_array(old.num_rows())?;
                }
                let row_ids = self.def.has_row_id().then(|| Arc::clone(old.column(self.def.columns.len())));
                let new = self.prepare_rows(columns, row_ids)?;
                self.check_moved_keys(snapshot, &old, &new)?;
                let mut batch = WriteBatch::new();
                self.state.delete_rows(&old, &mut batch)?;
                self.state.write_rows(&new, &mut batch)?;
                let mut changes = Vec::new();
                if feeds.feeds(self.def.id) && old.num_rows() > 0 {
                    changes.push((self.def.id, ChangeBatch::deletes(self.user_rows(&old)?), None));
                    changes.push((self.def.id, ChangeBatch::inserts(self.user_rows(&new)?), None));
                }
                Ok((batch, changes, old.num_rows() as u64))
            })
            .await
            .map_err(to_datafusion)?;
        count_plan(updated)
    }
}

/// An UPDATE's or DELETE's WHERE clause, each conjunct a physical expression over the stored
/// schema.
struct RowPredicate {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
}

impl RowPredicate {
    /// The rows of `stored` every conjunct holds for (NULL counts as false).
    fn filter(&self, stored: &RecordBatch) -> SqlResult<RecordBatch> {
        let mut mask: Option<BooleanArray> = None;
        for expr in &self.exprs {
            let value = expr.evaluate(stored)?.into_array(stored.num_rows())?;
            let value = value.as_boolean_opt().ok_or_else(|| {
                SqlError::TypeMismatch(format!("argument of WHERE must be type boolean, not {}", value.data_type()))
            })?;
            mask = Some(match mask {
                None => value.clone(),
                Some(m) => datafusion::arrow::compute::and(&m, value)?,
            });
        }
        match mask {
            Some(mask) => Ok(filter_record_batch(stored, &mask)?),
            None => Ok(stored.clone()),
        }
    }
}

impl StoredTable {
    /// Another handle on the same table.
    pub(crate) fn clone_handle(&self) -> Arc<StoredTable> {
        Arc::new(StoredTable {
            def: Arc::clone(&self.def),
            state: Arc::clone(&self.state),
            user_schema: Arc::clone(&self.user_schema),
            writer: Arc::clone(&self.writer),
            watermark: self.watermark.clone(),
        })
    }
}

/// The sink of `INSERT`: collects the statement's rows and commits them as one write batch.
struct TableSink {
    table: Arc<StoredTable>,
    schema: SchemaRef,
}

impl fmt::Debug for TableSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableSink({})", self.table.def.name)
    }
}

impl DisplayAs for TableSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TableSink: table={}", self.table.def.name)
    }
}

#[async_trait]
impl DataSink for TableSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(&self, mut data: SendableRecordBatchStream, _context: &Arc<TaskContext>) -> DfResult<u64> {
        let mut prepared = Vec::new();
        while let Some(batch) = data.next().await {
            let batch = batch?;
            prepared.push(self.table.prepare_rows(batch.columns().to_vec(), None).map_err(to_datafusion)?);
        }
        let table = &self.table;
        let count = table
            .writer
            .write(|snapshot, feeds| {
                let mut write = WriteBatch::new();
                let mut count = 0u64;
                // Rows behind the watermark are not inserted: they go to sluice_late_rows.
                let (accepted, late, watermark) = table.split_by_watermark(snapshot, &prepared)?;
                for batch in &accepted {
                    table.state.write_rows(batch, &mut write)?;
                    count += batch.num_rows() as u64;
                }
                if !late.is_empty() {
                    let id = table.def.id;
                    let first = read_counter(snapshot, &late_rows_counter(id))?.unwrap_or(0);
                    record_late_rows(&mut write, id, first, late);
                }
                if let Some(w) = watermark {
                    write.put(system_tables::TABLE_WATERMARKS, table.def.id.to_be_bytes().to_vec(), w.to_be_bytes().to_vec());
                }
                let watermark = match (&table.def.watermark, watermark) {
                    (Some(def), Some(value)) => Some(Watermark { column: def.column, value }),
                    _ => None,
                };
                let changes = if feeds.feeds(table.def.id) {
                    vec![(table.def.id, table.insert_changes(snapshot, &accepted)?, watermark)]
                } else {
                    vec![]
                };
                Ok((write, changes, count))
            })
            .await
            .map_err(to_datafusion)?;
        Ok(count)
    }
}
