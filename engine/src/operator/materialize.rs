//! [`MaterializeOperator`]: keeps a view's rows in a state table that SELECT reads.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use sluice_storage::{Epoch, StateStore, TableId, WriteBatch};

use super::{FastHash, Operator, MAP_ENTRY_OVERHEAD};
use crate::{ChangeBatch, EngineError, EngineResult, Op, StateTable};

/// Name of the multiplicity column of a view's state table ([`ViewLayout::Counted`]).
pub const COUNT_COLUMN: &str = "__count";
/// Names of the two key columns of an append-only view's state table
/// ([`ViewLayout::AppendOnly`]).
const ARRIVAL_COLUMNS: [&str; 2] = ["__epoch", "__seq"];

/// Bits of an arrival sequence number below the instance index: an instance numbers at most
/// 2^40 rows under one `__epoch`.
const ARRIVAL_SEQ_BITS: u32 = 40;

/// How a view's rows are kept in its state table.
///
/// Why two layouts: in general a view's changelog carries deletes, which must find the row
/// they name, so rows are keyed by their contents. A view whose changelog can only ever
/// insert (it reads sources and append-only tables through filters and projections) never
/// looks a row up: its rows are keyed by their arrival instead, and written without reading
/// anything first, which is what makes a passthrough view cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ViewLayout {
    /// A multiset keyed by the whole row: every column is part of the key, followed by how
    /// many times the row is in the view (`__count`). A view may hold duplicate rows
    /// (`SELECT url FROM t`), and a delete must remove one copy of exactly the row it names;
    /// keying by the row and counting copies makes both an update of one key.
    #[default]
    Counted,
    /// Every row stored once, keyed by its arrival: the view's columns followed by `__epoch`
    /// and `__seq`, the key. `__epoch` is one past the store's committed epoch as of the
    /// operator instance's last barrier (or its start); `__seq` counts the instance's rows
    /// since its `__epoch` last changed, with the instance index in its high bits. No two rows
    /// get the same key: the committed epoch never goes back, so an instance's `__epoch`
    /// never does either, and its count restarts only when `__epoch` grows; and a stored row's
    /// `__epoch` is at most the epoch that committed it (that commit came after the barrier
    /// it was read at), so after a restart every new `__epoch` is past every stored one.
    ///
    /// The rows of one batch are stored many to a value ([`StateTable::try_new_packed`]):
    /// their arrival keys increase and no later row's key falls among them, which is what a
    /// packed table asks.
    AppendOnly,
}

/// The state table layout of a view with columns `view` (see [`ViewLayout`]).
pub fn view_state_table(id: TableId, view: &Schema, layout: ViewLayout) -> EngineResult<StateTable> {
    let mut fields: Vec<Field> = view.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    let width = fields.len();
    let key = match layout {
        ViewLayout::Counted => {
            fields.push(Field::new(COUNT_COLUMN, DataType::Int64, false));
            (0..width).collect()
        }
        ViewLayout::AppendOnly => {
            fields.extend(ARRIVAL_COLUMNS.iter().map(|name| Field::new(*name, DataType::Int64, false)));
            let key = vec![width, width + 1];
            return StateTable::try_new_packed(id, Arc::new(Schema::new(fields)), key);
        }
    };
    StateTable::try_new(id, Arc::new(Schema::new(fields)), key)
}

/// The rows of a view's state table as the view's rows: for [`ViewLayout::Counted`] each
/// stored row repeated as many times as its count, the count dropped; for
/// [`ViewLayout::AppendOnly`] the stored rows without their arrival key.
pub fn expand_view_rows(stored: &RecordBatch, view: &SchemaRef, layout: ViewLayout) -> EngineResult<RecordBatch> {
    let width = view.fields().len();
    if layout == ViewLayout::AppendOnly {
        return Ok(RecordBatch::try_new(Arc::clone(view), stored.columns()[..width].to_vec())?);
    }
    let counts = stored.column(width).as_primitive::<Int64Type>();
    let mut indices = Vec::with_capacity(stored.num_rows());
    for (row, count) in counts.values().iter().enumerate() {
        for _ in 0..*count {
            indices.push(row as u32);
        }
    }
    let indices = datafusion::arrow::array::UInt32Array::from(indices);
    let columns = stored.columns()[..width]
        .iter()
        .map(|c| datafusion::arrow::compute::take(c.as_ref(), &indices, None))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(Arc::clone(view), columns)?)
}

/// The last operator of every view: applies the view's changes to its state table.
///
/// Semantics with retractions: an insert adds one copy of its row, a delete removes one (a
/// delete of a row the view does not hold is an internal error: it would mean an upstream
/// operator emitted an unbalanced changelog). Changes pass through unchanged, so views
/// defined on this view see them. State: see [`ViewLayout`]; this epoch's changes are kept
/// in memory and written at the barrier, so a SELECT — which reads the last committed epoch —
/// sees every view at the same barrier. With [`ViewLayout::AppendOnly`] a delete is an
/// internal error (the planner chose that layout because none can come), and the barrier
/// writes the epoch's rows blind, reading nothing.
pub struct MaterializeOperator {
    state: StateTable,
    store: Arc<dyn StateStore>,
    layout: ViewLayout,
    /// This instance's index among the view's parallel instances (the high bits of
    /// `__seq` in [`ViewLayout::AppendOnly`]).
    instance: usize,
    /// [`ViewLayout::AppendOnly`]: the `__epoch` of the next rows, and how many rows have
    /// had it.
    arrival_epoch: i64,
    arrival_count: i64,
    /// [`ViewLayout::AppendOnly`]: this epoch's rows, already encoded (their keys are known
    /// on arrival), handed over whole at the barrier.
    writes: WriteBatch,
    /// [`ViewLayout::Counted`]: this epoch's changes, kept to gather the changed rows at the
    /// barrier.
    pending: Vec<RecordBatch>,
    /// Per changed row (by key): where one copy of it is in `pending`, and its count change
    /// ([`ViewLayout::Counted`] only).
    deltas: HashMap<Vec<u8>, ((usize, usize), i64), FastHash>,
    /// Estimated memory of `pending` and `deltas`, or of `writes` (see
    /// [`Operator::dirty_bytes`]).
    dirty_bytes: usize,
}

impl std::fmt::Debug for MaterializeOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaterializeOperator").field("state", &self.state).field("layout", &self.layout).finish()
    }
}

impl MaterializeOperator {
    /// Materializes rows of `view` into state table `table` of `store`, laid out as `layout`.
    pub fn try_new(table: TableId, view: &Schema, store: Arc<dyn StateStore>, layout: ViewLayout) -> EngineResult<Self> {
        let arrival_epoch = next_arrival_epoch(store.as_ref())?;
        Ok(Self {
            state: view_state_table(table, view, layout)?,
            store,
            layout,
            instance: 0,
            arrival_epoch,
            arrival_count: 0,
            writes: WriteBatch::new(),
            pending: Vec::new(),
            deltas: HashMap::default(),
            dirty_bytes: 0,
        })
    }

    fn process_counted(&mut self, changes: &ChangeBatch) -> EngineResult<()> {
        let keys = self.state.encode_key_columns(changes.data().columns())?;
        let batch = self.pending.len();
        for row in 0..changes.num_rows() {
            let sign = if changes.op(row) == Op::Insert { 1 } else { -1 };
            let key = keys.row(row).data();
            let entry = self.deltas.entry(key.to_vec()).or_insert_with(|| {
                self.dirty_bytes += MAP_ENTRY_OVERHEAD + size_of::<(Vec<u8>, ((usize, usize), i64))>() + key.len();
                ((batch, row), 0)
            });
            entry.1 += sign;
        }
        Ok(())
    }

    fn barrier_counted(&mut self, write: &mut WriteBatch) -> EngineResult<()> {
        if self.deltas.is_empty() {
            return Ok(());
        }
        let snapshot = self.store.snapshot();
        let mut positions = Vec::with_capacity(self.deltas.len());
        let mut counts = Vec::with_capacity(self.deltas.len());
        for (key, (position, delta)) in self.deltas.drain() {
            if delta == 0 {
                continue;
            }
            let stored = match snapshot.get(self.state.id(), &key)? {
                Some(value) => {
                    let row = self.state.decode_values([value.as_ref()])?;
                    row.column(row.num_columns() - 1).as_primitive::<Int64Type>().value(0)
                }
                None => 0,
            };
            let count = stored + delta;
            if count < 0 {
                return Err(EngineError::Invalid("a view received a delete of a row it does not hold".into()));
            }
            positions.push(position);
            counts.push(count);
        }
        if !positions.is_empty() {
            let width = self.state.schema().fields().len() - 1;
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(width + 1);
            for column in 0..width {
                let arrays: Vec<&dyn Array> = self.pending.iter().map(|b| b.column(column).as_ref()).collect();
                columns.push(interleave(&arrays, &positions)?);
            }
            let kept: Vec<bool> = counts.iter().map(|c| *c > 0).collect();
            columns.push(Arc::new(Int64Array::from(counts)));
            let rows = RecordBatch::try_new(Arc::clone(self.state.schema()), columns)?;
            let kept = datafusion::arrow::array::BooleanArray::from(kept);
            let removed = datafusion::arrow::compute::not(&kept)?;
            self.state.write_rows(&datafusion::arrow::compute::filter_record_batch(&rows, &kept)?, write)?;
            self.state.delete_rows(&datafusion::arrow::compute::filter_record_batch(&rows, &removed)?, write)?;
        }
        Ok(())
    }

    /// Encodes `changes` (inserts only) under fresh arrival keys into this epoch's writes
    /// (see [`ViewLayout::AppendOnly`]).
    fn process_append_only(&mut self, changes: &ChangeBatch) -> EngineResult<()> {
        if changes.ops().values().iter().any(|op| *op != Op::Insert.code()) {
            return Err(EngineError::Invalid("an append-only view received a delete".into()));
        }
        let rows = changes.num_rows() as i64;
        if self.arrival_count + rows > 1 << ARRIVAL_SEQ_BITS {
            return Err(EngineError::Invalid("a view instance received more than 2^40 rows between two checkpoints".into()));
        }
        let first = ((self.instance as i64) << ARRIVAL_SEQ_BITS) + self.arrival_count;
        let mut columns = changes.data().columns().to_vec();
        columns.push(Arc::new(Int64Array::from_value(self.arrival_epoch, changes.num_rows())));
        columns.push(Arc::new(Int64Array::from_iter_values(first..first + rows)));
        self.arrival_count += rows;
        let stored = RecordBatch::try_new(Arc::clone(self.state.schema()), columns)?;
        self.dirty_bytes += self.state.write_rows(&stored, &mut self.writes)?;
        Ok(())
    }
}

/// The `__epoch` for rows arriving after now (see [`ViewLayout::AppendOnly`]).
fn next_arrival_epoch(store: &dyn StateStore) -> EngineResult<i64> {
    store
        .committed_epoch()
        .checked_add(1)
        .and_then(|e| i64::try_from(e).ok())
        .ok_or_else(|| EngineError::Invalid("the committed epoch is past the range of an arrival key".into()))
}

impl Operator for MaterializeOperator {
    fn name(&self) -> &str {
        "Materialize"
    }

    /// The view's rows are its input's rows: the promises hold for the view.
    fn on_watermark(&mut self, _input: usize, watermark: crate::watermark::Watermark) -> EngineResult<Vec<crate::watermark::Watermark>> {
        Ok(vec![watermark])
    }

    fn set_shard(&mut self, index: usize, _count: usize) {
        self.instance = index;
    }

    fn process(&mut self, changes: ChangeBatch) -> EngineResult<Vec<ChangeBatch>> {
        match self.layout {
            ViewLayout::Counted => {
                self.process_counted(&changes)?;
                self.dirty_bytes += changes.data().get_array_memory_size();
                self.pending.push(changes.data().clone());
            }
            ViewLayout::AppendOnly => self.process_append_only(&changes)?,
        }
        Ok(vec![changes])
    }

    fn dirty_bytes(&self) -> usize {
        self.dirty_bytes
    }

    fn on_barrier(&mut self, _epoch: Epoch, write: &mut WriteBatch) -> EngineResult<Vec<ChangeBatch>> {
        self.dirty_bytes = 0;
        let written = match self.layout {
            ViewLayout::Counted => self.barrier_counted(write),
            ViewLayout::AppendOnly => {
                write.append(std::mem::take(&mut self.writes));
                let next = next_arrival_epoch(self.store.as_ref())?;
                if next > self.arrival_epoch {
                    self.arrival_epoch = next;
                    self.arrival_count = 0;
                }
                Ok(())
            }
        };
        self.pending.clear();
        self.deltas.clear();
        written.map(|()| vec![])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use sluice_storage::MemoryStateStore;

    use super::*;

    #[test]
    fn keeps_duplicates_and_removes_one_copy_per_delete() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let first = ChangeBatch::from_pretty(" I T\n + 1 a\n + 1 a\n + 2 .").unwrap();
        let schema = first.schema();
        let mut op = MaterializeOperator::try_new(7, &schema, Arc::clone(&store), ViewLayout::Counted).unwrap();
        assert_eq!(op.process(first.clone()).unwrap(), vec![first]);
        let mut write = WriteBatch::new();
        op.on_barrier(1, &mut write).unwrap();
        store.commit(1, write).unwrap();
        op.process(ChangeBatch::from_pretty(" I T\n - 1 a\n - 2 .\n + 3 c").unwrap()).unwrap();
        let mut write = WriteBatch::new();
        op.on_barrier(2, &mut write).unwrap();
        store.commit(2, write).unwrap();
        let snapshot = store.snapshot();
        let stored = op.state.scan_all(snapshot.as_ref()).unwrap();
        let rows = expand_view_rows(&stored[0], &schema, ViewLayout::Counted).unwrap();
        let text = ChangeBatch::inserts(rows).to_pretty();
        assert_eq!(text, "+ 1 a\n+ 3 c\n");
    }

    #[test]
    fn an_unbalanced_delete_is_an_error() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let delete = ChangeBatch::from_pretty(" I\n - 1").unwrap();
        let mut op = MaterializeOperator::try_new(7, &delete.schema(), store, ViewLayout::Counted).unwrap();
        op.process(delete).unwrap();
        assert!(op.on_barrier(1, &mut WriteBatch::new()).is_err());
    }

    /// Append-only rows are written blind under arrival keys: duplicates stay two rows, two
    /// instances and two barriers never reuse a key, and the rows read back in arrival order
    /// per instance.
    #[test]
    fn append_only_rows_get_unique_arrival_keys() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let first = ChangeBatch::from_pretty(" I T\n + 1 a\n + 1 a").unwrap();
        let schema = first.schema();
        let mut zero = MaterializeOperator::try_new(7, &schema, Arc::clone(&store), ViewLayout::AppendOnly).unwrap();
        let mut one = MaterializeOperator::try_new(7, &schema, Arc::clone(&store), ViewLayout::AppendOnly).unwrap();
        zero.set_shard(0, 2);
        one.set_shard(1, 2);
        zero.process(first.clone()).unwrap();
        one.process(ChangeBatch::from_pretty(" I T\n + 2 b").unwrap()).unwrap();
        let mut write = WriteBatch::new();
        zero.on_barrier(1, &mut write).unwrap();
        one.on_barrier(1, &mut write).unwrap();
        assert_eq!(write.len(), 2, "each batch's rows are one stored value (a pack)");
        store.commit(1, write).unwrap();
        // The same rows again in the next epoch, twice: new keys, nothing overwritten. The
        // first barrier saw epoch 0 committed, so these rows still have `__epoch` 1 and go
        // on counting; the second saw epoch 1, so the last rows start `__epoch` 2 afresh.
        for epoch in [2, 3] {
            zero.process(first.clone()).unwrap();
            let mut write = WriteBatch::new();
            zero.on_barrier(epoch, &mut write).unwrap();
            store.commit(epoch, write).unwrap();
        }
        let stored = zero.state.scan_all(store.snapshot().as_ref()).unwrap();
        let stored = datafusion::arrow::compute::concat_batches(zero.state.schema(), &stored).unwrap();
        let arrival: Vec<(i64, i64)> = (0..stored.num_rows())
            .map(|i| {
                let column = |c: usize| stored.column(c).as_primitive::<Int64Type>().value(i);
                (column(2), column(3))
            })
            .collect();
        let high = 1 << ARRIVAL_SEQ_BITS;
        assert_eq!(arrival, vec![(1, 0), (1, 1), (1, 2), (1, 3), (1, high), (2, 0), (2, 1)]);
        let rows = expand_view_rows(&stored, &schema, ViewLayout::AppendOnly).unwrap();
        assert_eq!(ChangeBatch::inserts(rows).to_pretty(), "+ 1 a\n+ 1 a\n+ 1 a\n+ 1 a\n+ 2 b\n+ 1 a\n+ 1 a\n");
    }

    #[test]
    fn a_delete_reaching_an_append_only_view_is_an_error() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let delete = ChangeBatch::from_pretty(" I\n + 1\n - 1").unwrap();
        let mut op = MaterializeOperator::try_new(7, &delete.schema(), store, ViewLayout::AppendOnly).unwrap();
        assert!(op.process(delete).is_err());
    }
}
