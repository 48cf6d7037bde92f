//! [`MaterializeOperator`]: keeps a view's rows in a state table that SELECT reads.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use sluice_storage::{Epoch, StateStore, TableId, WriteBatch};

use super::{FastHash, Operator, MAP_ENTRY_OVERHEAD};
use crate::{ChangeBatch, EngineError, EngineResult, Op, StateTable};

/// Name of the multiplicity column of a view's state table.
pub const COUNT_COLUMN: &str = "__count";

/// The state table layout of a view with columns `view`: every column is part of the key,
/// followed by how many times the row is in the view.
///
/// Why a multiset keyed by the whole row: a view may hold duplicate rows (`SELECT url FROM
/// t`), and a delete must remove one copy of exactly the row it names; keying by the row and
/// counting copies makes both an update of one key.
pub fn view_state_table(id: TableId, view: &Schema) -> EngineResult<StateTable> {
    let mut fields: Vec<Field> = view.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    fields.push(Field::new(COUNT_COLUMN, DataType::Int64, false));
    let key = (0..view.fields().len()).collect();
    StateTable::try_new(id, Arc::new(Schema::new(fields)), key)
}

/// The rows of a view's state table as the view's rows: each stored row repeated as many
/// times as its count, the count column dropped.
pub fn expand_view_rows(stored: &RecordBatch, view: &SchemaRef) -> EngineResult<RecordBatch> {
    let width = view.fields().len();
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
/// defined on this view see them. State: a multiset keyed by the whole row (see
/// [`view_state_table`]); this epoch's count changes are kept in memory and written at the
/// barrier, so a SELECT — which reads the last committed epoch — sees every view at the same
/// barrier.
pub struct MaterializeOperator {
    state: StateTable,
    store: Arc<dyn StateStore>,
    /// This epoch's changes, kept to gather the changed rows at the barrier.
    pending: Vec<RecordBatch>,
    /// Per changed row (by key): where one copy of it is in `pending`, and its count change.
    deltas: HashMap<Vec<u8>, ((usize, usize), i64), FastHash>,
    /// Estimated memory of `pending` and `deltas` (see [`Operator::dirty_bytes`]).
    dirty_bytes: usize,
}

impl std::fmt::Debug for MaterializeOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaterializeOperator").field("state", &self.state).finish()
    }
}

impl MaterializeOperator {
    /// Materializes rows of `view` into state table `table` of `store`.
    pub fn try_new(table: TableId, view: &Schema, store: Arc<dyn StateStore>) -> EngineResult<Self> {
        Ok(Self { state: view_state_table(table, view)?, store, pending: Vec::new(), deltas: HashMap::default(), dirty_bytes: 0 })
    }
}

impl Operator for MaterializeOperator {
    fn name(&self) -> &str {
        "Materialize"
    }

    /// The view's rows are its input's rows: the promises hold for the view.
    fn on_watermark(&mut self, _input: usize, watermark: crate::watermark::Watermark) -> EngineResult<Vec<crate::watermark::Watermark>> {
        Ok(vec![watermark])
    }

    fn process(&mut self, changes: ChangeBatch) -> EngineResult<Vec<ChangeBatch>> {
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
        self.dirty_bytes += changes.data().get_array_memory_size();
        self.pending.push(changes.data().clone());
        Ok(vec![changes])
    }

    fn dirty_bytes(&self) -> usize {
        self.dirty_bytes
    }

    fn on_barrier(&mut self, _epoch: Epoch, write: &mut WriteBatch) -> EngineResult<Vec<ChangeBatch>> {
        self.dirty_bytes = 0;
        if self.deltas.is_empty() {
            self.pending.clear();
            return Ok(vec![]);
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
        self.pending.clear();
        Ok(vec![])
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
        let mut op = MaterializeOperator::try_new(7, &schema, Arc::clone(&store)).unwrap();
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
        let rows = expand_view_rows(&stored[0], &schema).unwrap();
        let text = ChangeBatch::inserts(rows).to_pretty();
        assert_eq!(text, "+ 1 a\n+ 3 c\n");
    }

    #[test]
    fn an_unbalanced_delete_is_an_error() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let delete = ChangeBatch::from_pretty(" I\n - 1").unwrap();
        let mut op = MaterializeOperator::try_new(7, &delete.schema(), store).unwrap();
        op.process(delete).unwrap();
        assert!(op.on_barrier(1, &mut WriteBatch::new()).is_err());
    }
}
