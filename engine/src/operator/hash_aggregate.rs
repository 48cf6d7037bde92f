//! [`HashAggregateOperator`]: `GROUP BY` with `count`, `count(DISTINCT)`, `sum`, `avg`, `min`,
//! `max`, `bool_and`, `bool_or` and `string_agg`, maintained under inserts and deletes, its
//! state in [`StateTable`]s.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;
use sluice_storage::{Epoch, StateStore, TableId, WriteBatch};

use super::{evaluate, FastHash, Operator, MAP_ENTRY_OVERHEAD};
use crate::watermark::Watermark;
use crate::{ChangeBatch, EngineError, EngineResult, Op, StateTable};

/// A group touched this epoch whose window closed: its state key, and the (call, multiset key)
/// entries it wrote this epoch.
type ClosedGroup = (Vec<u8>, Vec<(usize, Vec<u8>)>);

/// The group key of a windowed aggregate that carries a watermark, and how windows are emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowKey {
    /// Which group-by expression (by position) is the window column.
    pub group: usize,
    /// The input column that expression reads (watermarks arrive about input columns).
    pub input_column: usize,
    /// EMIT ON WINDOW CLOSE: a window's row is emitted once, when the watermark passes it,
    /// instead of being updated as rows arrive.
    pub emit_on_close: bool,
}

/// The aggregate functions the operator maintains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateKind {
    /// `count(*)`: rows in the group.
    CountStar,
    /// `count(x)`: non-NULL values.
    Count,
    /// `sum(x)` over BIGINT or DOUBLE PRECISION; NULL when the group has no non-NULL value.
    Sum,
    /// `avg(x)` as DOUBLE PRECISION; NULL when the group has no non-NULL value.
    Avg,
    /// `min(x)`; NULL when the group has no non-NULL value. Needs a multiset state table.
    Min,
    /// `max(x)`; NULL when the group has no non-NULL value. Needs a multiset state table.
    Max,
    /// `count(DISTINCT x)`: distinct non-NULL values. Needs a multiset state table.
    CountDistinct,
    /// `bool_and(x)`: true when every non-NULL value is true; NULL when there is none.
    BoolAnd,
    /// `bool_or(x)`: true when some value is true; NULL when there is no non-NULL value.
    BoolOr,
    /// `string_agg(x, separator)`: the non-NULL values joined, in value order (PostgreSQL
    /// leaves the order unspecified without ORDER BY). Needs a multiset state table.
    StringAgg,
}

impl AggregateKind {
    /// The SQL function name.
    pub fn sql_name(self) -> &'static str {
        match self {
            AggregateKind::CountStar | AggregateKind::Count => "count",
            AggregateKind::CountDistinct => "count_distinct",
            AggregateKind::Sum => "sum",
            AggregateKind::Avg => "avg",
            AggregateKind::Min => "min",
            AggregateKind::Max => "max",
            AggregateKind::BoolAnd => "bool_and",
            AggregateKind::BoolOr => "bool_or",
            AggregateKind::StringAgg => "string_agg",
        }
    }

    /// Whether the function keeps each group's values with their counts (a multiset), because
    /// its result cannot be updated from the old result alone when a row is deleted.
    pub fn keeps_values(self) -> bool {
        matches!(self, AggregateKind::Min | AggregateKind::Max | AggregateKind::CountDistinct | AggregateKind::StringAgg)
    }
}

/// One aggregate of the operator's output: a function and its argument.
#[derive(Debug, Clone)]
pub struct AggregateCall {
    /// The function.
    pub kind: AggregateKind,
    /// Its argument (ignored by `count(*)`).
    pub arg: Option<Arc<dyn PhysicalExpr>>,
    /// Output column name.
    pub name: String,
    /// For the functions that [keep values](AggregateKind::keeps_values): the state table
    /// holding each group's values with their counts, so that deleting the current extreme
    /// finds the next one.
    pub values_table: Option<TableId>,
    /// For `string_agg`: the separator.
    pub separator: Option<String>,
}

/// The running state of one aggregate in one group.
#[derive(Debug, Clone)]
enum Accumulator {
    Count(i64),
    IntSum { sum: i64, values: i64 },
    FloatSum { sum: f64, values: i64 },
    DecimalSum { sum: i128, values: i64 },
    /// Count of true values and of non-NULL values.
    Bools { trues: i64, values: i64 },
    /// The number of distinct values, maintained from the multiset's 0 ↔ 1 transitions.
    Distinct(i64),
    /// The current min, max or joined string (a one-row array), derived from the value
    /// multiset.
    Extreme(Option<ArrayRef>),
}

#[derive(Debug, Clone)]
struct Group {
    /// The group key's values (one-row arrays, in group-by order).
    key: Vec<ArrayRef>,
    rows: i64,
    accumulators: Vec<Accumulator>,
}

/// A group touched in the current epoch, and the output row it had before it.
#[derive(Debug)]
struct Dirty {
    group: Group,
    emitted_before: Option<Group>,
    /// Per call: for min/max, the group's committed values, read once at first touch.
    committed_values: Vec<ValueCounts>,
    /// Per call: for min/max, the count change of each value this epoch.
    value_deltas: Vec<ValueCounts>,
}

/// Estimated memory of a one-row array slice: the `Arc`, the array struct with its data
/// type, and a shared handle on the input's buffer.
const ONE_ROW_ARRAY_BYTES: usize = 160;
/// Estimated memory of one entry of a [`ValueCounts`] beyond its key bytes.
const VALUE_COUNT_BYTES: usize = 64 + ONE_ROW_ARRAY_BYTES;

/// Values by multiset key (memcomparable, so in value order): the value and its row count.
type ValueCounts = BTreeMap<Vec<u8>, (ArrayRef, i64)>;

/// The values of one `min`/`max` argument per group, with how many rows hold each.
///
/// Keyed by (group columns, value): Arrow's row format encodes columns one after another, so
/// the key of a group's values starts with the group's key, and a prefix scan lists them in
/// value order — the first is the min, the last the max.
struct ValueMultiset {
    state: StateTable,
    group_codec: Option<RowConverter>,
}

/// `SELECT keys, aggregates FROM input GROUP BY keys`, incrementally.
///
/// Semantics with retractions: an insert adds its row to its group's accumulators, a delete
/// subtracts it (count and sum are invertible, so no history is kept). `min` and `max` are not
/// invertible: they keep each group's values with their counts ([`ValueMultiset`]), so deleting
/// the current extreme yields the next one. Output is emitted at
/// barriers: for each group changed in the epoch, the delete of the row emitted before (if
/// any) and the insert of the new row (if the group still has rows) — so the output is a
/// changelog whose sum is always the batch `GROUP BY` of the input so far. Groups with no rows
/// left emit only their delete. (A global aggregate's empty-input row is the planner's job.)
///
/// State: one row per group in a [`StateTable`] keyed by the group columns (row count and each
/// accumulator), read on first touch in an epoch and written back at the barrier into the
/// epoch's write batch; the store is the truth, memory holds only the current epoch's groups.
///
/// Windows ([`WindowKey`]): when a watermark promises that no more rows come for windows below
/// `W`, the barrier evicts those groups from state (their rows in the view are final), so a
/// windowed view's state stays bounded. The window column leads the state key, so the closed
/// groups are one key range. With EMIT ON WINDOW CLOSE the operator emits nothing while a
/// window is open and one insert per group when it closes: an append-only output. After the
/// barrier's output the operator promises `window ≥ W` downstream.
pub struct HashAggregateOperator {
    group_by: Vec<(Arc<dyn PhysicalExpr>, String)>,
    calls: Vec<AggregateCall>,
    key_codec: RowConverter,
    state: StateTable,
    store: Arc<dyn StateStore>,
    output: SchemaRef,
    /// Encodes output rows, to spot a group whose output did not change.
    output_codec: RowConverter,
    input: Schema,
    multisets: Vec<Option<ValueMultiset>>,
    dirty: HashMap<OwnedRow, Dirty, FastHash>,
    /// Estimated memory of `dirty` (see [`Operator::dirty_bytes`]).
    dirty_bytes: usize,
    /// For a global aggregate: whether its one row has been emitted (it is, at the first
    /// barrier, even over empty input, as PostgreSQL answers one row for `SELECT count(*)`).
    global_started: bool,
    /// The group columns in state-key order (the window column first).
    key_order: Vec<usize>,
    window: Option<WindowKey>,
    /// The latest watermark on the window column, applied at the next barrier.
    pending_watermark: Option<i64>,
    /// Windows below this were evicted (and, with EMIT ON WINDOW CLOSE, emitted).
    closed_below: Option<i64>,
    /// Promises to make after the barrier's output.
    release: Vec<Watermark>,
    /// Which instance of how many this is, when the operator runs sharded by group key.
    shard: Option<(usize, usize)>,
}

impl std::fmt::Debug for HashAggregateOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashAggregateOperator").field("calls", &self.calls).field("output", &self.output).finish()
    }
}

impl HashAggregateOperator {
    /// An aggregate over rows of `input`, keeping its state in table `table` of `store`.
    pub fn try_new(
        input: &Schema,
        group_by: Vec<(Arc<dyn PhysicalExpr>, String)>,
        calls: Vec<AggregateCall>,
        table: TableId,
        store: Arc<dyn StateStore>,
        window: Option<WindowKey>,
    ) -> EngineResult<Self> {
        if let Some(w) = window {
            if w.group >= group_by.len() {
                return Err(EngineError::Invalid(format!("window key {} of {} group columns", w.group, group_by.len())));
            }
        }
        let mut key_order: Vec<usize> = (0..group_by.len()).collect();
        if let Some(w) = window {
            key_order.retain(|g| *g != w.group);
            key_order.insert(0, w.group);
        }
        let mut key_types = Vec::with_capacity(group_by.len());
        let mut output_fields = Vec::new();
        let mut state_fields = Vec::new();
        for (expr, name) in &group_by {
            let t = expr.data_type(input)?;
            key_types.push(SortField::new(t.clone()));
            output_fields.push(Field::new(name, t.clone(), true));
            state_fields.push(Field::new(name, t, true));
        }
        state_fields.push(Field::new("__rows", DataType::Int64, false));
        for (i, call) in calls.iter().enumerate() {
            let arg_type = match (&call.kind, &call.arg) {
                (AggregateKind::CountStar, _) => None,
                (_, Some(arg)) => Some(arg.data_type(input)?),
                (kind, None) => return Err(EngineError::Invalid(format!("{kind:?} needs an argument"))),
            };
            let out_type = match (call.kind, &arg_type) {
                (AggregateKind::CountStar | AggregateKind::Count | AggregateKind::CountDistinct, _) => DataType::Int64,
                (AggregateKind::Min | AggregateKind::Max, Some(t)) => t.clone(),
                (AggregateKind::Avg, Some(DataType::Int64 | DataType::Float64)) => DataType::Float64,
                (AggregateKind::Sum, Some(t @ (DataType::Int64 | DataType::Float64))) => t.clone(),
                (AggregateKind::Sum, Some(DataType::Decimal128(p, s))) => DataType::Decimal128((*p + 10).min(38), *s),
                (AggregateKind::BoolAnd | AggregateKind::BoolOr, Some(DataType::Boolean)) => DataType::Boolean,
                (AggregateKind::StringAgg, Some(DataType::Utf8 | DataType::LargeUtf8)) => DataType::LargeUtf8,
                (kind, t) => {
                    let over = t.as_ref().map_or_else(|| "no argument".to_string(), |t| t.to_string());
                    return Err(EngineError::Invalid(format!("{}() over {over} is not supported", kind.sql_name())));
                }
            };
            output_fields.push(Field::new(&call.name, out_type, true));
            let acc_type = match (call.kind, &arg_type) {
                (AggregateKind::Sum | AggregateKind::Avg, Some(DataType::Float64)) => DataType::Float64,
                (AggregateKind::Sum, Some(DataType::Decimal128(_, s))) => DataType::Decimal128(38, *s),
                _ => DataType::Int64,
            };
            state_fields.push(Field::new(format!("__acc{i}"), acc_type, false));
            state_fields.push(Field::new(format!("__values{i}"), DataType::Int64, false));
        }
        if key_types.is_empty() {
            // A global aggregate hashes every row to one constant key.
            key_types.push(SortField::new(DataType::Int64));
        } else {
            key_types = key_order.iter().map(|g| key_types[*g].clone()).collect();
        }
        let key_indices = key_order.clone();
        // A global aggregate has no key columns: its one state row gets a constant key column.
        let (state_schema, key_indices) = if key_indices.is_empty() {
            let mut fields = vec![Field::new("__global", DataType::Int64, false)];
            fields.extend(state_fields);
            (Schema::new(fields), vec![0])
        } else {
            (Schema::new(state_fields), key_indices)
        };
        let state = StateTable::try_new(table, Arc::new(state_schema), key_indices)?;
        let mut multisets = Vec::with_capacity(calls.len());
        for call in &calls {
            if !call.kind.keeps_values() {
                multisets.push(None);
                continue;
            }
            let (Some(values_table), Some(arg)) = (call.values_table, &call.arg) else {
                return Err(EngineError::Invalid(format!("{:?} needs a values table", call.kind)));
            };
            let mut fields: Vec<Field> = output_fields[..group_by.len()].to_vec();
            fields.push(Field::new("__value", arg.data_type(input)?, false));
            fields.push(Field::new("__count", DataType::Int64, false));
            let mut key: Vec<usize> = key_order.clone();
            key.push(group_by.len());
            let group_codec = if group_by.is_empty() {
                None
            } else {
                Some(RowConverter::new(key_order.iter().map(|g| SortField::new(fields[*g].data_type().clone())).collect())?)
            };
            multisets.push(Some(ValueMultiset { state: StateTable::try_new(values_table, Arc::new(Schema::new(fields)), key)?, group_codec }));
        }
        Ok(Self {
            group_by,
            calls,
            key_codec: RowConverter::new(key_types)?,
            state,
            store,
            output_codec: RowConverter::new(
                output_fields.iter().map(|f| SortField::new(f.data_type().clone())).collect(),
            )?,
            output: Arc::new(Schema::new(output_fields)),
            input: input.clone(),
            multisets,
            dirty: HashMap::default(),
            dirty_bytes: 0,
            global_started: false,
            key_order,
            window,
            pending_watermark: None,
            closed_below: None,
            release: Vec::new(),
            shard: None,
        })
    }

    /// Group columns (one-row or full arrays, in group-by order) in state-key order.
    fn in_key_order(&self, columns: &[ArrayRef]) -> Vec<ArrayRef> {
        self.key_order.iter().map(|g| Arc::clone(&columns[*g])).collect()
    }

    /// The window value of a group (NULL windows sort, and close, first).
    fn window_value(&self, group: &Group) -> Option<i64> {
        let w = self.window?;
        let column = group.key.get(w.group)?;
        if column.is_null(0) || !crate::watermark::is_event_time_type(column.data_type()) {
            return None;
        }
        Some(column.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>().value(0))
    }

    /// The state-key prefix of windows starting at `value` (keys of smaller windows sort
    /// before it: the window column leads the key).
    fn window_prefix(&self, value: i64) -> EngineResult<Vec<u8>> {
        let Some(w) = self.window else { return Err(EngineError::Invalid("no window key".into())) };
        let t = self.output.field(w.group).data_type().clone();
        let DataType::Timestamp(_, tz) = &t else {
            return Err(EngineError::Invalid(format!("window column of type {t}")));
        };
        let array: ArrayRef =
            Arc::new(datafusion::arrow::array::TimestampMicrosecondArray::from(vec![value]).with_timezone_opt(tz.clone()));
        let codec = RowConverter::new(vec![SortField::new(t)])?;
        Ok(codec.convert_columns(&[array])?.row(0).data().to_vec())
    }

    /// Per row of `rows` (state rows whose first columns are the group columns): whether this
    /// instance owns its group (always, unless the operator runs sharded).
    fn owned_rows(&self, rows: &RecordBatch) -> EngineResult<Vec<bool>> {
        match self.shard {
            Some((index, count)) if count > 1 => {
                let group_columns: Vec<ArrayRef> = (0..self.group_by.len()).map(|g| Arc::clone(rows.column(g))).collect();
                Ok(crate::exchange::owners(&group_columns, count, &mut Vec::new())?.into_iter().map(|o| o == index).collect())
            }
            _ => Ok(vec![true; rows.num_rows()]),
        }
    }

    /// Closes the windows below the pending watermark: deletes their groups (and value
    /// multisets) from state and returns, with EMIT ON WINDOW CLOSE, the final rows of the
    /// closed groups that were not touched this epoch (`closed_dirty` holds those that were,
    /// by state key, and the multiset keys they wrote).
    fn close_windows(
        &mut self,
        write: &mut WriteBatch,
        closed_dirty: &[ClosedGroup],
    ) -> EngineResult<Vec<Group>> {
        let Some(watermark) = self.pending_watermark else { return Ok(Vec::new()) };
        let Some(window) = self.window else { return Ok(Vec::new()) };
        if self.closed_below.is_some_and(|c| c >= watermark) {
            return Ok(Vec::new());
        }
        let start = match self.closed_below {
            Some(c) => std::ops::Bound::Included(self.window_prefix(c)?),
            None => std::ops::Bound::Unbounded,
        };
        let range = sluice_storage::KeyRange { start, end: std::ops::Bound::Excluded(self.window_prefix(watermark)?) };
        let snapshot = self.store.snapshot();
        let dirty_keys: std::collections::HashSet<&[u8]> = closed_dirty.iter().map(|(k, _)| k.as_slice()).collect();
        let mut emitted = Vec::new();
        let (keys, values) = scan_range(snapshot.as_ref(), self.state.id(), &range)?;
        if !keys.is_empty() {
            let rows = self.state.decode_values(values.iter().map(|v| v.as_ref()))?;
            // Sharded, every instance sees the whole state: each emits only the groups it owns.
            let owned = self.owned_rows(&rows)?;
            for (i, key) in keys.iter().enumerate() {
                if !owned[i] {
                    continue;
                }
                write.delete(self.state.id(), key.clone());
                if !window.emit_on_close || dirty_keys.contains(key.as_slice()) {
                    continue;
                }
                // The scan already read the group's state: decode it, no second read.
                let key_values: Vec<ArrayRef> = (0..self.group_by.len()).map(|g| rows.column(g).slice(i, 1)).collect();
                let (group, _) = self.group_from_state(&rows.slice(i, 1), &key_values)?;
                if group.rows > 0 {
                    emitted.push(group);
                }
            }
        }
        for (dirty_key, _) in closed_dirty {
            write.delete(self.state.id(), dirty_key.clone());
        }
        for multiset in self.multisets.iter().flatten() {
            let (keys, values) = scan_range(snapshot.as_ref(), multiset.state.id(), &range)?;
            if keys.is_empty() {
                continue;
            }
            let owned = match self.shard {
                Some((_, count)) if count > 1 => self.owned_rows(&multiset.state.decode_values(values.iter().map(|v| v.as_ref()))?)?,
                _ => vec![true; keys.len()],
            };
            for (key, owned) in keys.into_iter().zip(owned) {
                if owned {
                    write.delete(multiset.state.id(), key);
                }
            }
        }
        for (_, written) in closed_dirty {
            for (call, key) in written {
                if let Some(Some(multiset)) = self.multisets.get(*call) {
                    write.delete(multiset.state.id(), key.clone());
                }
            }
        }
        self.closed_below = Some(watermark);
        self.release.push(Watermark { column: window.group, value: watermark });
        Ok(emitted)
    }

    /// The schema of the output rows: group columns, then one column per aggregate.
    pub fn schema(&self) -> &SchemaRef {
        &self.output
    }

    fn is_global(&self) -> bool {
        self.group_by.is_empty()
    }

    fn empty_accumulators(&self, input_types: &[Option<DataType>]) -> Vec<Accumulator> {
        self.calls
            .iter()
            .zip(input_types)
            .map(|(call, t)| match (call.kind, t) {
                (AggregateKind::CountStar | AggregateKind::Count, _) => Accumulator::Count(0),
                (AggregateKind::Min | AggregateKind::Max | AggregateKind::StringAgg, _) => Accumulator::Extreme(None),
                (AggregateKind::CountDistinct, _) => Accumulator::Distinct(0),
                (AggregateKind::BoolAnd | AggregateKind::BoolOr, _) => Accumulator::Bools { trues: 0, values: 0 },
                (_, Some(DataType::Float64)) => Accumulator::FloatSum { sum: 0.0, values: 0 },
                (_, Some(DataType::Decimal128(..))) => Accumulator::DecimalSum { sum: 0, values: 0 },
                _ => Accumulator::IntSum { sum: 0, values: 0 },
            })
            .collect()
    }

    /// The stored state of the group whose key columns are `key` (one row each), if any, and
    /// per call the group's committed values (for min/max; empty for the others).
    ///
    /// `encoded` is the group's state-table key: the operator's key codec and the state
    /// table's encode the same columns the same way, so the hashing key is reused as is.
    fn load(
        &self,
        snapshot: &dyn sluice_storage::StateSnapshot,
        encoded: &[u8],
        key: &[ArrayRef],
    ) -> EngineResult<(Option<Group>, Vec<ValueCounts>)> {
        let Some(value) = snapshot.get(self.state.id(), encoded)? else {
            return Ok((None, vec![ValueCounts::new(); self.calls.len()]));
        };
        let row = self.state.decode_values([value.as_ref()])?;
        let (group, committed_values) = self.group_from_state(&row, key)?;
        Ok((Some(group), committed_values))
    }

    /// The group whose key columns are `key` from its decoded state row `row` (one row), and
    /// per call its committed values (for min/max; empty for the others).
    fn group_from_state(&self, row: &RecordBatch, key: &[ArrayRef]) -> EngineResult<(Group, Vec<ValueCounts>)> {
        let mut committed_values = vec![ValueCounts::new(); self.calls.len()];
        let offset = if self.is_global() { 1 } else { self.group_by.len() };
        let rows = row.column(offset).as_primitive::<Int64Type>().value(0);
        let mut accumulators = Vec::with_capacity(self.calls.len());
        for (i, call) in self.calls.iter().enumerate() {
            let acc = row.column(offset + 1 + 2 * i);
            let values = row.column(offset + 2 + 2 * i).as_primitive::<Int64Type>().value(0);
            accumulators.push(match (call.kind, acc.data_type()) {
                (AggregateKind::CountStar | AggregateKind::Count, _) => {
                    Accumulator::Count(acc.as_primitive::<Int64Type>().value(0))
                }
                (AggregateKind::Min | AggregateKind::Max | AggregateKind::StringAgg, _) => {
                    committed_values[i] = self.stored_values(i, key)?;
                    Accumulator::Extreme(self.derived(i, &committed_values[i])?)
                }
                (AggregateKind::CountDistinct, _) => Accumulator::Distinct(acc.as_primitive::<Int64Type>().value(0)),
                (AggregateKind::BoolAnd | AggregateKind::BoolOr, _) => {
                    Accumulator::Bools { trues: acc.as_primitive::<Int64Type>().value(0), values }
                }
                (_, DataType::Decimal128(..)) => Accumulator::DecimalSum {
                    sum: acc.as_primitive::<datafusion::arrow::datatypes::Decimal128Type>().value(0),
                    values,
                },
                (_, DataType::Float64) => Accumulator::FloatSum { sum: acc.as_primitive::<Float64Type>().value(0), values },
                _ => Accumulator::IntSum { sum: acc.as_primitive::<Int64Type>().value(0), values },
            });
        }
        Ok((Group { key: key.to_vec(), rows, accumulators }, committed_values))
    }

    /// The committed (multiset key → value, count) entries of call `call`'s values in the
    /// group `key`, in value order.
    fn stored_values(&self, call: usize, key: &[ArrayRef]) -> EngineResult<ValueCounts> {
        let Some(Some(multiset)) = self.multisets.get(call) else { return Ok(BTreeMap::new()) };
        let range = match &multiset.group_codec {
            Some(codec) => sluice_storage::KeyRange::prefix(codec.convert_columns(&self.in_key_order(key))?.row(0).data()),
            None => sluice_storage::KeyRange::all(),
        };
        let snapshot = self.store.snapshot();
        let mut entries = BTreeMap::new();
        let mut values = Vec::new();
        let mut keys = Vec::new();
        for kv in snapshot.scan(multiset.state.id(), range)? {
            let (k, v) = kv?;
            keys.push(k.to_vec());
            values.push(v);
        }
        if values.is_empty() {
            return Ok(entries);
        }
        let rows = multiset.state.decode_values(values.iter().map(|v| v.as_ref()))?;
        let width = rows.num_columns();
        let counts = rows.column(width - 1).as_primitive::<Int64Type>();
        for (i, k) in keys.into_iter().enumerate() {
            entries.insert(k, (rows.column(width - 2).slice(i, 1), counts.value(i)));
        }
        Ok(entries)
    }

    /// Applies this epoch's value deltas of group `group` to the multisets: writes the new
    /// counts and sets the group's min/max accumulators.
    fn settle_values(&self, dirty: &mut Dirty, write: &mut WriteBatch) -> EngineResult<()> {
        for (call, deltas) in dirty.value_deltas.iter().enumerate() {
            let Some(Some(multiset)) = self.multisets.get(call) else { continue };
            if deltas.is_empty() {
                continue;
            }
            let kind = self.calls[call].kind;
            let mut entries = std::mem::take(&mut dirty.committed_values[call]);
            let snapshot = self.store.snapshot();
            let mut distinct_change = 0i64;
            for (k, (value, delta)) in deltas {
                if *delta == 0 {
                    continue;
                }
                if kind == AggregateKind::CountDistinct && !entries.contains_key(k) {
                    // Only the touched values' counts are needed: read them one by one.
                    let committed = match snapshot.get(multiset.state.id(), k)? {
                        Some(stored) => {
                            let row = multiset.state.decode_values([stored.as_ref()])?;
                            row.column(row.num_columns() - 1).as_primitive::<Int64Type>().value(0)
                        }
                        None => 0,
                    };
                    entries.insert(k.clone(), (Arc::clone(value), committed));
                }
                let entry = entries.entry(k.clone()).or_insert_with(|| (Arc::clone(value), 0));
                let before = entry.1;
                entry.1 += delta;
                distinct_change += i64::from(entry.1 > 0) - i64::from(before > 0);
                let mut columns: Vec<ArrayRef> = dirty.group.key.clone();
                columns.push(Arc::clone(&entry.0));
                columns.push(Arc::new(Int64Array::from(vec![entry.1])));
                let row = RecordBatch::try_new(Arc::clone(multiset.state.schema()), columns)?;
                match entry.1 {
                    0 => multiset.state.delete_rows(&row, write)?,
                    n if n > 0 => {
                        multiset.state.write_rows(&row, write)?;
                    }
                    _ => return Err(EngineError::Invalid("a value was deleted more often than inserted".into())),
                }
            }
            entries.retain(|_, (_, n)| *n > 0);
            dirty.group.accumulators[call] = match &dirty.group.accumulators[call] {
                Accumulator::Distinct(n) => Accumulator::Distinct(n + distinct_change),
                _ => Accumulator::Extreme(self.derived(call, &entries)?),
            };
        }
        Ok(())
    }

    /// The result of a min, max or string_agg call from its group's values.
    fn derived(&self, call: usize, entries: &ValueCounts) -> EngineResult<Option<ArrayRef>> {
        let kind = self.calls[call].kind;
        if kind != AggregateKind::StringAgg {
            return Ok(extreme(kind, entries));
        }
        if entries.is_empty() {
            return Ok(None);
        }
        let separator = self.calls[call].separator.as_deref().unwrap_or("");
        let mut joined = String::new();
        let mut first = true;
        for (value, count) in entries.values() {
            let text = match value.data_type() {
                DataType::LargeUtf8 => value.as_string::<i64>().value(0).to_string(),
                _ => value.as_string::<i32>().value(0).to_string(),
            };
            for _ in 0..*count {
                if !first {
                    joined.push_str(separator);
                }
                first = false;
                joined.push_str(&text);
            }
        }
        Ok(Some(Arc::new(datafusion::arrow::array::LargeStringArray::from(vec![joined]))))
    }

    /// The group columns of `groups`, one column per group-by expression.
    fn key_columns(&self, groups: &[&Group]) -> EngineResult<Vec<ArrayRef>> {
        (0..self.group_by.len())
            .map(|i| {
                let parts: Vec<&dyn Array> = groups.iter().map(|g| g.key[i].as_ref()).collect();
                Ok(datafusion::arrow::compute::concat(&parts)?)
            })
            .collect()
    }

    /// The output rows of `groups`: group columns, then each aggregate's result.
    fn output_batch(&self, groups: &[&Group]) -> EngineResult<RecordBatch> {
        let mut columns = self.key_columns(groups)?;
        for (i, call) in self.calls.iter().enumerate() {
            let t = self.output.field(columns.len()).data_type().clone();
            let accs = groups.iter().map(|g| &g.accumulators[i]);
            let column: ArrayRef = match (call.kind, &t) {
                (AggregateKind::Min | AggregateKind::Max | AggregateKind::StringAgg, _) => {
                    let null = datafusion::arrow::array::new_null_array(&t, 1);
                    let parts: Vec<&dyn Array> = accs
                        .map(|a| match a {
                            Accumulator::Extreme(Some(v)) => v.as_ref(),
                            _ => null.as_ref(),
                        })
                        .collect();
                    datafusion::arrow::compute::concat(&parts)?
                }
                (AggregateKind::BoolAnd | AggregateKind::BoolOr, _) => {
                    Arc::new(datafusion::arrow::array::BooleanArray::from_iter(accs.map(|a| match a {
                        Accumulator::Bools { trues, values } if *values > 0 => {
                            Some(if call.kind == AggregateKind::BoolAnd { trues == values } else { *trues > 0 })
                        }
                        _ => None,
                    })))
                }
                (AggregateKind::CountStar | AggregateKind::Count | AggregateKind::CountDistinct, _) => {
                    Arc::new(Int64Array::from_iter_values(accs.map(|a| match a {
                        Accumulator::Count(n) | Accumulator::Distinct(n) => *n,
                        _ => 0,
                    })))
                }
                (_, DataType::Decimal128(..)) => Arc::new(
                    datafusion::arrow::array::Decimal128Array::from_iter(accs.map(|a| match a {
                        Accumulator::DecimalSum { sum, values } if *values > 0 => Some(*sum),
                        _ => None,
                    }))
                    .with_data_type(t.clone()),
                ),
                (AggregateKind::Sum, DataType::Int64) => Arc::new(Int64Array::from_iter(accs.map(|a| match a {
                    Accumulator::IntSum { sum, values } if *values > 0 => Some(*sum),
                    _ => None,
                }))),
                (_, _) => Arc::new(Float64Array::from_iter(accs.map(|a| match a {
                    Accumulator::FloatSum { sum, values } if *values > 0 => {
                        Some(if call.kind == AggregateKind::Avg { sum / *values as f64 } else { *sum })
                    }
                    Accumulator::IntSum { sum, values } if *values > 0 => Some(*sum as f64 / *values as f64),
                    _ => None,
                }))),
            };
            columns.push(column);
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.output), columns)?)
    }

    /// The state rows of `groups` (see the struct doc for the layout).
    fn state_batch(&self, groups: &[&Group]) -> EngineResult<RecordBatch> {
        let mut columns: Vec<ArrayRef> = if self.is_global() {
            vec![Arc::new(Int64Array::from(vec![0; groups.len()]))]
        } else {
            self.key_columns(groups)?
        };
        columns.push(Arc::new(Int64Array::from_iter_values(groups.iter().map(|g| g.rows))));
        let offset = columns.len();
        for i in 0..self.calls.len() {
            let acc_type = self.state.schema().field(offset + 2 * i).data_type().clone();
            let accs = || groups.iter().map(move |g| &g.accumulators[i]);
            let acc: ArrayRef = match &acc_type {
                DataType::Float64 => Arc::new(Float64Array::from_iter_values(accs().map(|a| match a {
                    Accumulator::FloatSum { sum, .. } => *sum,
                    _ => 0.0,
                }))),
                DataType::Decimal128(..) => Arc::new(
                    datafusion::arrow::array::Decimal128Array::from_iter_values(accs().map(|a| match a {
                        Accumulator::DecimalSum { sum, .. } => *sum,
                        _ => 0,
                    }))
                    .with_data_type(acc_type.clone()),
                ),
                _ => Arc::new(Int64Array::from_iter_values(accs().map(|a| match a {
                    Accumulator::Count(n) | Accumulator::Distinct(n) => *n,
                    Accumulator::IntSum { sum, .. } => *sum,
                    Accumulator::Bools { trues, .. } => *trues,
                    // Kept in the value multiset, not in the group row.
                    _ => 0,
                }))),
            };
            columns.push(acc);
            columns.push(Arc::new(Int64Array::from_iter_values(accs().map(|a| match a {
                Accumulator::IntSum { values, .. }
                | Accumulator::FloatSum { values, .. }
                | Accumulator::DecimalSum { values, .. }
                | Accumulator::Bools { values, .. } => *values,
                _ => 0,
            }))));
        }
        Ok(RecordBatch::try_new(Arc::clone(self.state.schema()), columns)?)
    }
}

/// The keys and values of `range` of `table`.
fn scan_range(
    snapshot: &dyn sluice_storage::StateSnapshot,
    table: TableId,
    range: &sluice_storage::KeyRange,
) -> EngineResult<(Vec<Vec<u8>>, Vec<bytes::Bytes>)> {
    let mut keys = Vec::new();
    let mut values = Vec::new();
    for kv in snapshot.scan(table, range.clone())? {
        let (k, v) = kv?;
        keys.push(k.to_vec());
        values.push(v);
    }
    Ok((keys, values))
}

/// The smallest (min) or largest (max) value of a multiset ordered by key.
fn extreme(kind: AggregateKind, entries: &ValueCounts) -> Option<ArrayRef> {
    let entry = if kind == AggregateKind::Min { entries.values().next() } else { entries.values().next_back() };
    entry.map(|(value, _)| Arc::clone(value))
}

fn apply(acc: &mut Accumulator, value: Option<(&ArrayRef, usize)>, sign: i64) -> EngineResult<()> {
    let overflow = || EngineError::Arrow(datafusion::arrow::error::ArrowError::ArithmeticOverflow("sum overflows BIGINT".into()));
    match acc {
        Accumulator::Count(n) => *n += sign,
        // These change through the value multiset (see `settle_values`).
        Accumulator::Extreme(_) | Accumulator::Distinct(_) => {}
        Accumulator::Bools { trues, values } => {
            if let Some((array, row)) = value {
                if array.as_boolean().value(row) {
                    *trues += sign;
                }
                *values += sign;
            }
        }
        Accumulator::DecimalSum { sum, values } => {
            if let Some((array, row)) = value {
                let v = array.as_primitive::<datafusion::arrow::datatypes::Decimal128Type>().value(row);
                let decimal_overflow =
                    || EngineError::Arrow(datafusion::arrow::error::ArrowError::ArithmeticOverflow("sum overflows numeric".into()));
                *sum = sum.checked_add(v.checked_mul(i128::from(sign)).ok_or_else(decimal_overflow)?).ok_or_else(decimal_overflow)?;
                *values += sign;
            }
        }
        Accumulator::IntSum { sum, values } => {
            if let Some((array, row)) = value {
                let v = array.as_primitive::<Int64Type>().value(row);
                *sum = sum.checked_add(v.checked_mul(sign).ok_or_else(overflow)?).ok_or_else(overflow)?;
                *values += sign;
            }
        }
        Accumulator::FloatSum { sum, values } => {
            if let Some((array, row)) = value {
                *sum += array.as_primitive::<Float64Type>().value(row) * sign as f64;
                *values += sign;
            }
        }
    }
    Ok(())
}

impl Operator for HashAggregateOperator {
    fn name(&self) -> &str {
        "HashAggregate"
    }

    fn process(&mut self, changes: ChangeBatch) -> EngineResult<Vec<ChangeBatch>> {
        let rows = changes.num_rows();
        let eval = |e: &Arc<dyn PhysicalExpr>| evaluate(e, changes.data());
        let keys: Vec<ArrayRef> = self.group_by.iter().map(|(e, _)| eval(e)).collect::<EngineResult<_>>()?;
        let args: Vec<Option<ArrayRef>> = self
            .calls
            .iter()
            .map(|c| match (&c.kind, &c.arg) {
                (AggregateKind::CountStar, _) | (_, None) => Ok(None),
                (_, Some(arg)) => eval(arg).map(Some),
            })
            .collect::<EngineResult<_>>()?;
        let arg_types: Vec<Option<DataType>> = args.iter().map(|a| a.as_ref().map(|a| a.data_type().clone())).collect();
        let hashed: Vec<ArrayRef> =
            if keys.is_empty() { vec![Arc::new(Int64Array::from(vec![0; rows]))] } else { self.in_key_order(&keys) };
        let encoded = self.key_codec.convert_columns(&hashed)?;
        // Multiset keys (group columns, value) of every row, encoded once per batch.
        let multiset_keys = self
            .multisets
            .iter()
            .zip(&args)
            .map(|(multiset, arg)| match (multiset, arg) {
                (Some(multiset), Some(arg)) => {
                    let mut columns = self.in_key_order(&keys);
                    columns.push(Arc::clone(arg));
                    multiset.state.encode_key_columns(&columns).map(Some)
                }
                _ => Ok(None),
            })
            .collect::<EngineResult<Vec<_>>>()?;
        let snapshot = self.store.snapshot();
        for row in 0..rows {
            let key = encoded.row(row).owned();
            if !self.dirty.contains_key(&key) {
                let key_values: Vec<ArrayRef> = keys.iter().map(|k| k.slice(row, 1)).collect();
                let (stored, committed_values) = self.load(snapshot.as_ref(), key.as_ref().as_ref(), &key_values)?;
                let group = stored.clone().unwrap_or_else(|| Group {
                    key: key_values,
                    rows: 0,
                    accumulators: self.empty_accumulators(&arg_types),
                });
                let emitted_before = stored.filter(|g| g.rows > 0 || self.is_global());
                let value_deltas = vec![ValueCounts::new(); self.calls.len()];
                let copies = 1 + usize::from(emitted_before.is_some());
                self.dirty_bytes += size_of::<(OwnedRow, Dirty)>()
                    + MAP_ENTRY_OVERHEAD
                    + key.as_ref().as_ref().len()
                    + copies * (keys.len() * ONE_ROW_ARRAY_BYTES + self.calls.len() * size_of::<Accumulator>())
                    + 2 * self.calls.len() * size_of::<ValueCounts>()
                    + committed_values.iter().map(|v| v.len() * VALUE_COUNT_BYTES).sum::<usize>();
                self.dirty.insert(key.clone(), Dirty { group, emitted_before, committed_values, value_deltas });
            }
            let sign = if changes.op(row) == Op::Insert { 1 } else { -1 };
            let Some(dirty) = self.dirty.get_mut(&key) else { continue };
            for (call, (arg, multiset_key)) in args.iter().zip(&multiset_keys).enumerate() {
                let (Some(arg), Some(multiset_key)) = (arg, multiset_key) else { continue };
                if arg.is_null(row) {
                    continue;
                }
                let entry = dirty.value_deltas[call].entry(multiset_key.row(row).data().to_vec()).or_insert_with(|| {
                    self.dirty_bytes += VALUE_COUNT_BYTES + multiset_key.row(row).data().len();
                    (arg.slice(row, 1), 0)
                });
                entry.1 += sign;
            }
            dirty.group.rows += sign;
            for (acc, arg) in dirty.group.accumulators.iter_mut().zip(&args) {
                let value = match arg {
                    Some(a) if a.is_null(row) => None,
                    Some(a) => Some((a, row)),
                    None => None,
                };
                let counts_row = match acc {
                    Accumulator::Count(_) => arg.is_none() || value.is_some(),
                    _ => true,
                };
                if counts_row {
                    apply(acc, value, sign)?;
                }
            }
        }
        Ok(Vec::new())
    }

    fn dirty_bytes(&self) -> usize {
        self.dirty_bytes
    }

    fn on_barrier(&mut self, _epoch: Epoch, write: &mut WriteBatch) -> EngineResult<Vec<ChangeBatch>> {
        if self.is_global() && !self.global_started && self.dirty.is_empty() {
            // The first barrier of a global aggregate: its row exists even over no input.
            let global_key = self.key_codec.convert_columns(&[Arc::new(Int64Array::from(vec![0])) as ArrayRef])?;
            let (stored, committed_values) = self.load(self.store.snapshot().as_ref(), global_key.row(0).data(), &[])?;
            if stored.is_none() {
                let arg_types: Vec<Option<DataType>> =
                    self.calls.iter().map(|c| c.arg.as_ref().and_then(|a| a.data_type(&self.input).ok())).collect();
                let group = Group { key: vec![], rows: 0, accumulators: self.empty_accumulators(&arg_types) };
                let value_deltas = vec![ValueCounts::new(); self.calls.len()];
                let key = self.key_codec.convert_columns(&[Arc::new(Int64Array::from(vec![0])) as ArrayRef])?.row(0).owned();
                self.dirty.insert(key, Dirty { group, emitted_before: None, committed_values, value_deltas });
            }
        }
        self.global_started = true;
        self.dirty_bytes = 0;
        let mut drained: Vec<(OwnedRow, Dirty)> = self.dirty.drain().collect();
        for (_, dirty) in &mut drained {
            self.settle_values(dirty, write)?;
            if dirty.group.rows < 0 {
                return Err(EngineError::Invalid("a group received more deletes than inserts".into()));
            }
        }
        // Windows the pending watermark closes (NULL windows close with the first one).
        let closing = self.pending_watermark.filter(|w| self.closed_below.is_none_or(|c| c < *w));
        let closed: Vec<bool> = drained
            .iter()
            .map(|(_, d)| closing.is_some_and(|w| self.window_value(&d.group).is_none_or(|v| v < w)))
            .collect();
        let emit_on_close = self.window.is_some_and(|w| w.emit_on_close);
        // A global aggregate keeps its row (and its state row) when its input empties.
        let global = self.is_global();
        let exists: Vec<bool> = drained.iter().map(|(_, d)| d.group.rows > 0 || global).collect();
        let kept: Vec<&Group> = drained.iter().zip(&exists).filter(|(_, e)| **e).map(|((_, d), _)| &d.group).collect();
        let gone: Vec<&Group> = drained.iter().zip(&exists).filter(|(_, e)| !**e).map(|((_, d), _)| &d.group).collect();
        // A group whose window closes at this barrier is deleted below: its state is not written.
        let still_open: Vec<&Group> = drained
            .iter()
            .zip(&exists)
            .zip(&closed)
            .filter(|((_, e), c)| **e && !**c)
            .map(|(((_, d), _), _)| &d.group)
            .collect();
        if !still_open.is_empty() {
            self.state.write_rows(&self.state_batch(&still_open)?, write)?;
        }
        if !gone.is_empty() {
            self.state.delete_rows(&self.state_batch(&gone)?, write)?;
        }
        let mut out = Vec::new();
        if emit_on_close {
            // Open windows emit nothing; a closing window emits its final row once.
            let finished: Vec<&Group> = drained
                .iter()
                .zip(&exists)
                .zip(&closed)
                .filter(|((_, e), c)| **e && **c)
                .map(|(((_, d), _), _)| &d.group)
                .collect();
            if !finished.is_empty() {
                out.push(ChangeBatch::inserts(self.output_batch(&finished)?));
            }
        } else {
            out = self.changed_rows(&drained, &exists, &kept)?;
        }
        if closing.is_some() {
            let closed_dirty: Vec<ClosedGroup> = drained
                .iter()
                .zip(&closed)
                .filter(|(_, c)| **c)
                .map(|((key, d), _)| {
                    let written = d
                        .value_deltas
                        .iter()
                        .enumerate()
                        .flat_map(|(call, deltas)| deltas.keys().map(move |k| (call, k.clone())))
                        .collect();
                    (key.as_ref().as_ref().to_vec(), written)
                })
                .collect();
            let finished = self.close_windows(write, &closed_dirty)?;
            if !finished.is_empty() {
                let finished: Vec<&Group> = finished.iter().collect();
                out.push(ChangeBatch::inserts(self.output_batch(&finished)?));
            }
        }
        Ok(out)
    }

    fn on_watermark(&mut self, _input: usize, watermark: Watermark) -> EngineResult<Vec<Watermark>> {
        if let Some(w) = self.window {
            if w.input_column == watermark.column {
                self.pending_watermark = Some(self.pending_watermark.map_or(watermark.value, |p| p.max(watermark.value)));
            }
        }
        Ok(Vec::new())
    }

    fn released_watermarks(&mut self) -> Vec<Watermark> {
        std::mem::take(&mut self.release)
    }

    fn set_shard(&mut self, index: usize, count: usize) {
        self.shard = Some((index, count));
    }
}

impl HashAggregateOperator {
    /// The default emit mode's output for this epoch's groups: the delete of each group's
    /// previous row and the insert of its new one, except where the two are equal.
    fn changed_rows(&self, drained: &[(OwnedRow, Dirty)], exists: &[bool], kept: &[&Group]) -> EngineResult<Vec<ChangeBatch>> {
        let befores: Vec<&Group> = drained.iter().filter_map(|(_, d)| d.emitted_before.as_ref()).collect();
        let before_batch = if befores.is_empty() { None } else { Some(self.output_batch(&befores)?) };
        let after_batch = if kept.is_empty() { None } else { Some(self.output_batch(kept)?) };
        let mut keep_before = vec![true; befores.len()];
        let mut keep_after = vec![true; kept.len()];
        if let (Some(before), Some(after)) = (&before_batch, &after_batch) {
            let before_rows = self.output_codec.convert_columns(before.columns())?;
            let after_rows = self.output_codec.convert_columns(after.columns())?;
            let (mut b, mut a) = (0, 0);
            for ((_, dirty), exists) in drained.iter().zip(exists) {
                match (dirty.emitted_before.is_some(), *exists) {
                    (true, true) => {
                        if before_rows.row(b) == after_rows.row(a) {
                            keep_before[b] = false;
                            keep_after[a] = false;
                        }
                        b += 1;
                        a += 1;
                    }
                    (true, false) => b += 1,
                    (false, true) => a += 1,
                    (false, false) => {}
                }
            }
        }
        let mut out = Vec::new();
        for (batch, keep, make) in [
            (before_batch, keep_before, ChangeBatch::deletes as fn(RecordBatch) -> ChangeBatch),
            (after_batch, keep_after, ChangeBatch::inserts as fn(RecordBatch) -> ChangeBatch),
        ] {
            let Some(batch) = batch else { continue };
            let batch = if keep.iter().all(|k| *k) {
                batch
            } else {
                datafusion::arrow::compute::filter_record_batch(&batch, &datafusion::arrow::array::BooleanArray::from(keep))?
            };
            if batch.num_rows() > 0 {
                out.push(make(batch));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use datafusion::physical_expr::expressions::col;
    use sluice_storage::MemoryStateStore;

    use super::*;

    use crate::operator::consolidate;

    fn operator(schema: &Schema, store: &Arc<dyn StateStore>, grouped: bool) -> HashAggregateOperator {
        let group_by = if grouped { vec![(col("c0", schema).unwrap(), "g".to_string())] } else { vec![] };
        let call = |kind, arg: Option<&str>, name: &str| AggregateCall {
            kind,
            arg: arg.map(|a| col(a, schema).unwrap()),
            name: name.into(),
            values_table: match kind {
                AggregateKind::Min => Some(10),
                AggregateKind::Max => Some(11),
                _ => None,
            },
            separator: None,
        };
        HashAggregateOperator::try_new(
            schema,
            group_by,
            vec![
                call(AggregateKind::CountStar, None, "n"),
                call(AggregateKind::Count, Some("c1"), "n1"),
                call(AggregateKind::Sum, Some("c1"), "s"),
                call(AggregateKind::Avg, Some("c2"), "a"),
                call(AggregateKind::Min, Some("c1"), "lo"),
                call(AggregateKind::Max, Some("c2"), "hi"),
            ],
            9,
            Arc::clone(store),
            None,
        )
        .unwrap()
    }

    /// An input row: group, integer value, float value.
    type Row = (i64, Option<i64>, Option<f64>);

    /// The batch GROUP BY of the rows left, in the operator's output text.
    fn batch_answer(live: &[Row], grouped: bool) -> BTreeMap<String, i64> {
        let mut groups: BTreeMap<i64, Vec<Row>> = BTreeMap::new();
        for (g, v, f) in live {
            groups.entry(if grouped { *g } else { 0 }).or_default().push((*g, *v, *f));
        }
        let mut answer = BTreeMap::new();
        if !grouped && groups.is_empty() {
            // A global aggregate answers one row over empty input.
            answer.insert("0 0 . . . .".to_string(), 1);
        }
        for (g, rows) in groups {
            let ints: Vec<i64> = rows.iter().filter_map(|r| r.1).collect();
            let floats: Vec<f64> = rows.iter().filter_map(|r| r.2).collect();
            let sum = if ints.is_empty() { ".".into() } else { ints.iter().sum::<i64>().to_string() };
            let avg = if floats.is_empty() { ".".into() } else { (floats.iter().sum::<f64>() / floats.len() as f64).to_string() };
            let key = if grouped { format!("{g} ") } else { String::new() };
            let lo = ints.iter().min().map(|v| v.to_string()).unwrap_or_else(|| ".".into());
            let hi = floats.iter().copied().reduce(f64::max).map(|v| v.to_string()).unwrap_or_else(|| ".".into());
            answer.insert(format!("{key}{} {} {sum} {avg} {lo} {hi}", rows.len(), ints.len()), 1);
        }
        answer
    }

    #[test]
    fn dirty_bytes_grow_with_the_epochs_groups_and_reset_at_the_barrier() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let schema = ChangeBatch::from_pretty(" I I F").unwrap().schema();
        let mut op = operator(&schema, &store, true);
        assert_eq!(op.dirty_bytes(), 0);
        let rows = |from: i64| {
            let lines: String = (from..from + 1000).map(|g| format!(" + {g} 1 1.5\n")).collect();
            ChangeBatch::from_pretty(&format!(" I I F\n{lines}")).unwrap()
        };
        op.process(rows(0)).unwrap();
        let thousand = op.dirty_bytes();
        // Every group costs at least its map entry, key and accumulators.
        assert!(thousand >= 1000 * (size_of::<(OwnedRow, Dirty)>() + 6 * size_of::<Accumulator>()), "{thousand}");
        op.process(rows(0)).unwrap();
        assert_eq!(op.dirty_bytes(), thousand, "the same groups and values again cost nothing new");
        op.process(rows(1000)).unwrap();
        assert!(op.dirty_bytes() >= 2 * thousand - 1000 * 64, "{}", op.dirty_bytes());
        op.on_barrier(1, &mut WriteBatch::new()).unwrap();
        assert_eq!(op.dirty_bytes(), 0);
    }

    fn run(grouped: bool, seed: u64) {
        let mut seed = seed;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let mut live: Vec<Row> = Vec::new();
        let mut output = BTreeMap::new();
        let schema = ChangeBatch::from_pretty(" I I F").unwrap().schema();
        let mut op = operator(&schema, &store, grouped);
        let mut epoch = 0;
        for _step in 0..30 {
            let mut text = String::from(" I I F\n");
            for _ in 0..next(20) {
                if !live.is_empty() && next(3) == 0 {
                    let (g, v, f) = live.remove(next(live.len() as u64) as usize);
                    let show = |x: Option<String>| x.unwrap_or_else(|| ".".into());
                    text.push_str(&format!("- {g} {} {}\n", show(v.map(|v| v.to_string())), show(f.map(|f| f.to_string()))));
                } else {
                    let row = (next(5) as i64, (next(4) > 0).then(|| next(100) as i64 - 50), (next(4) > 0).then(|| next(8) as f64 / 4.0));
                    live.push(row);
                    let show = |x: Option<String>| x.unwrap_or_else(|| ".".into());
                    text.push_str(&format!("+ {} {} {}\n", row.0, show(row.1.map(|v| v.to_string())), show(row.2.map(|f| f.to_string()))));
                }
            }
            let changes = ChangeBatch::from_pretty(&text).unwrap();
            if changes.num_rows() > 0 {
                assert!(op.process(changes).unwrap().is_empty(), "output waits for the barrier");
            }
            if next(2) == 0 {
                epoch += 1;
                let mut write = WriteBatch::new();
                consolidate(&op.on_barrier(epoch, &mut write).unwrap(), &mut output);
                store.commit(epoch, write).unwrap();
                assert_eq!(output, batch_answer(&live, grouped), "after epoch {epoch}");
                if next(3) == 0 {
                    // A restart: a new operator over the same committed state.
                    op = operator(&schema, &store, grouped);
                }
            }
        }
        let mut write = WriteBatch::new();
        consolidate(&op.on_barrier(epoch + 1, &mut write).unwrap(), &mut output);
        assert_eq!(output, batch_answer(&live, grouped));
    }

    #[test]
    fn grouped_incremental_equals_batch_across_restarts() {
        for seed in [1u64, 7, 42, 1234] {
            run(true, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        }
    }

    #[test]
    fn global_incremental_equals_batch() {
        for seed in [3u64, 11] {
            run(false, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        }
    }

    #[test]
    fn deleting_the_extreme_finds_the_next_one() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let first = ChangeBatch::from_pretty(" I I F\n + 0 1 1\n + 0 5 5\n + 0 9 9\n + 1 7 .").unwrap();
        let mut op = operator(&first.schema(), &store, true);
        op.process(first).unwrap();
        let mut write = WriteBatch::new();
        let out: String = op.on_barrier(1, &mut write).unwrap().iter().map(|b| b.to_pretty()).collect();
        store.commit(1, write).unwrap();
        let mut lines: Vec<&str> = out.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, ["+ 0 3 3 15 5 1 9", "+ 1 1 1 7 . 7 ."]);
        op.process(ChangeBatch::from_pretty(" I I F\n - 0 9 9\n - 0 1 1").unwrap()).unwrap();
        let mut write = WriteBatch::new();
        let out: String = op.on_barrier(2, &mut write).unwrap().iter().map(|b| b.to_pretty()).collect();
        assert_eq!(out, "- 0 3 3 15 5 1 9\n+ 0 1 1 5 5 5 5\n");
    }

    #[test]
    fn unsupported_calls_are_refused() {
        let schema = ChangeBatch::from_pretty(" I T").unwrap().schema();
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let sum_text =
            AggregateCall { kind: AggregateKind::Sum, arg: Some(col("c1", &schema).unwrap()), name: "s".into(), values_table: None, separator: None };
        assert!(HashAggregateOperator::try_new(&schema, vec![], vec![sum_text], 1, Arc::clone(&store), None).is_err());
        let count_nothing = AggregateCall { kind: AggregateKind::Count, arg: None, name: "n".into(), values_table: None, separator: None };
        assert!(HashAggregateOperator::try_new(&schema, vec![], vec![count_nothing], 1, Arc::clone(&store), None).is_err());
        let min_without_table =
            AggregateCall { kind: AggregateKind::Min, arg: Some(col("c1", &schema).unwrap()), name: "m".into(), values_table: None, separator: None };
        assert!(HashAggregateOperator::try_new(&schema, vec![], vec![min_without_table], 1, store, None).is_err());
    }

    /// group by window (c0), sum(c1), max(c1); the window column carries watermarks.
    fn windowed(store: &Arc<dyn StateStore>, emit_on_close: bool) -> HashAggregateOperator {
        let schema = ChangeBatch::from_pretty("S I").unwrap().schema();
        let call = |kind, name: &str, values_table| AggregateCall {
            kind,
            arg: Some(col("c1", &schema).unwrap()),
            name: name.into(),
            values_table,
            separator: None,
        };
        HashAggregateOperator::try_new(
            &schema,
            vec![(col("c0", &schema).unwrap(), "w".to_string())],
            vec![call(AggregateKind::Sum, "s", None), call(AggregateKind::Max, "hi", Some(21))],
            20,
            Arc::clone(store),
            Some(WindowKey { group: 0, input_column: 0, emit_on_close }),
        )
        .unwrap()
    }

    fn state_rows(store: &Arc<dyn StateStore>, table: TableId) -> usize {
        store.snapshot().scan(table, sluice_storage::KeyRange::all()).unwrap().count()
    }

    fn step(op: &mut HashAggregateOperator, store: &Arc<dyn StateStore>, epoch: u64) -> (String, Vec<Watermark>) {
        let mut write = WriteBatch::new();
        let out = op.on_barrier(epoch, &mut write).unwrap();
        store.commit(epoch, write).unwrap();
        let mut lines: Vec<String> = out.iter().flat_map(|b| b.to_pretty().lines().map(str::to_string).collect::<Vec<_>>()).collect();
        lines.sort();
        (lines.join("\n"), op.released_watermarks())
    }

    #[test]
    fn emit_on_window_close_emits_each_window_once_when_the_watermark_passes_it_and_forgets_it() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let mut op = windowed(&store, true);
        op.process(ChangeBatch::from_pretty("S I\n+ 0 1\n+ 0 2\n+ 60 5\n+ 120 7").unwrap()).unwrap();
        assert_eq!(step(&mut op, &store, 1), (String::new(), vec![]), "open windows emit nothing");
        assert_eq!(state_rows(&store, 20), 3);
        op.on_watermark(0, Watermark { column: 0, value: 60 }).unwrap();
        // Window 60 changes in the same epoch; only window 0 closes.
        op.process(ChangeBatch::from_pretty("S I\n+ 60 9\n- 60 5").unwrap()).unwrap();
        let (out, released) = step(&mut op, &store, 2);
        assert_eq!(out, "+ 0 3 2");
        assert_eq!(released, vec![Watermark { column: 0, value: 60 }]);
        assert_eq!(state_rows(&store, 20), 2);
        assert_eq!(state_rows(&store, 21), 2, "window 0's values are gone");
        op.on_watermark(0, Watermark { column: 0, value: 1000 }).unwrap();
        let (out, _) = step(&mut op, &store, 3);
        assert_eq!(out, "+ 120 7 7\n+ 60 9 9");
        assert_eq!(state_rows(&store, 20), 0);
        assert_eq!(state_rows(&store, 21), 0);
        // An older watermark closes nothing more.
        op.on_watermark(0, Watermark { column: 0, value: 500 }).unwrap();
        assert_eq!(step(&mut op, &store, 4), (String::new(), vec![]));
    }

    #[test]
    fn the_default_mode_updates_windows_and_evicts_the_closed_ones_without_output() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let mut op = windowed(&store, false);
        op.process(ChangeBatch::from_pretty("S I\n+ 0 1\n+ 60 5").unwrap()).unwrap();
        assert_eq!(step(&mut op, &store, 1).0, "+ 0 1 1\n+ 60 5 5");
        op.process(ChangeBatch::from_pretty("S I\n+ 0 2").unwrap()).unwrap();
        op.on_watermark(0, Watermark { column: 0, value: 60 }).unwrap();
        let (out, released) = step(&mut op, &store, 2);
        assert_eq!(out, "+ 0 3 2\n- 0 1 1", "the closing window's last update still goes out");
        assert_eq!(released, vec![Watermark { column: 0, value: 60 }]);
        assert_eq!(state_rows(&store, 20), 1);
        assert_eq!(state_rows(&store, 21), 1);
    }
}
