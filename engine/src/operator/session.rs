//! [`SessionWindowOperator`]: `SESSION(rel, time_col, gap)` windows, per value of the session
//! keys, maintained under inserts and deletes.
//!
//! A session is a maximal run of a key's rows (in time order) whose consecutive times are less
//! than `gap` apart; its window is `[first time, last time + gap)`. Every row is emitted with
//! its session's `window_start` and `window_end`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use datafusion::arrow::compute::{concat_batches, interleave_record_batch, sort_to_indices, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimestampMicrosecondType};
use datafusion::arrow::row::{RowConverter, SortField};
use sluice_storage::{Epoch, KeyRange, StateStore, TableId, WriteBatch};

use super::{Operator, MAP_ENTRY_OVERHEAD};
use crate::watermark::Watermark;
use crate::{ChangeBatch, EngineError, EngineResult, Op, StateTable};

/// Per row: its session's start and end (None: the row is in no session).
pub type SessionBounds = (Vec<Option<i64>>, Vec<Option<i64>>);

/// The session bounds of `times` (one key's rows, any order): per row its session's start and
/// end, or NULL for a row without a time (it is in no session).
pub fn assign_sessions(times: &dyn Array, gap: i64) -> EngineResult<SessionBounds> {
    if !crate::watermark::is_event_time_type(times.data_type()) {
        return Err(EngineError::Invalid(format!("a session's time column is {}", times.data_type())));
    }
    let values = times.as_primitive::<TimestampMicrosecondType>();
    let order = sort_to_indices(times, None, None)?;
    let mut starts = vec![None; values.len()];
    let mut ends = vec![None; values.len()];
    let mut run: Vec<usize> = Vec::new();
    let flush = |run: &mut Vec<usize>, starts: &mut Vec<Option<i64>>, ends: &mut Vec<Option<i64>>| {
        if let (Some(first), Some(last)) = (run.first(), run.last()) {
            let (start, end) = (values.value(*first), values.value(*last).saturating_add(gap));
            for row in run.drain(..) {
                starts[row] = Some(start);
                ends[row] = Some(end);
            }
        }
    };
    for row in order.values().iter().map(|r| *r as usize) {
        if values.is_null(row) {
            continue;
        }
        if let Some(previous) = run.last() {
            if values.value(row).saturating_sub(values.value(*previous)) >= gap {
                flush(&mut run, &mut starts, &mut ends);
            }
        }
        run.push(row);
    }
    flush(&mut run, &mut starts, &mut ends);
    Ok((starts, ends))
}

/// The rows of `rows` grouped by their values of `keys`, with each row's session bounds.
pub fn session_windows(rows: &RecordBatch, keys: &[usize], time: usize, gap: i64) -> EngineResult<SessionBounds> {
    let mut starts = vec![None; rows.num_rows()];
    let mut ends = vec![None; rows.num_rows()];
    let mut groups: HashMap<Vec<u8>, Vec<u32>> = HashMap::new();
    if keys.is_empty() {
        groups.insert(Vec::new(), (0..rows.num_rows() as u32).collect());
    } else {
        let columns: Vec<ArrayRef> = keys.iter().map(|k| Arc::clone(rows.column(*k))).collect();
        let codec = RowConverter::new(columns.iter().map(|c| SortField::new(c.data_type().clone())).collect())?;
        let encoded = codec.convert_columns(&columns)?;
        for row in 0..rows.num_rows() {
            groups.entry(encoded.row(row).data().to_vec()).or_default().push(row as u32);
        }
    }
    for members in groups.values() {
        let indices = UInt32Array::from(members.clone());
        let times = datafusion::arrow::compute::take(rows.column(time).as_ref(), &indices, None)?;
        let (s, e) = assign_sessions(times.as_ref(), gap)?;
        for (i, row) in members.iter().enumerate() {
            starts[*row as usize] = s[i];
            ends[*row as usize] = e[i];
        }
    }
    Ok((starts, ends))
}

/// `rows` with `window_start` and `window_end` columns of `output`'s types appended.
pub fn with_bounds(rows: &RecordBatch, starts: &[Option<i64>], ends: &[Option<i64>], output: &SchemaRef) -> EngineResult<RecordBatch> {
    let width = rows.num_columns();
    let tz = match output.field(width).data_type() {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    };
    let mut columns = rows.columns().to_vec();
    columns.push(Arc::new(TimestampMicrosecondArray::from(starts.to_vec()).with_timezone_opt(tz.clone())));
    columns.push(Arc::new(TimestampMicrosecondArray::from(ends.to_vec()).with_timezone_opt(tz)));
    Ok(RecordBatch::try_new(Arc::clone(output), columns)?)
}

/// Session windows over a changelog.
///
/// Semantics with retractions: a row that arrives between two sessions of its key, less than
/// `gap` from both, merges them: every row of the old sessions is retracted with its old bounds
/// and inserted with the merged ones; a delete can split a session the same way. So the output
/// is always the batch assignment of sessions over the input so far (rows without a time are
/// in no session and emit nothing).
///
/// State: the key's rows of open sessions, as a multiset keyed by (session keys, time, row), so
/// that one key's rows are one key range in time order. At a barrier, each key touched in the
/// epoch is recomputed from its stored rows and the epoch's changes, and the difference of the
/// two assignments is emitted. Watermarks: with a watermark `W` on the time column, a session
/// ending at or before `W` can no longer grow (a new row would be at or after `W`): its rows
/// leave the state, and after the barrier the operator promises `window_end ≥ W` downstream,
/// which lets a windowed aggregate over `window_end` close it.
pub struct SessionWindowOperator {
    input: SchemaRef,
    output: SchemaRef,
    keys: Vec<usize>,
    time: usize,
    gap: i64,
    state: StateTable,
    /// State column `j` holds input column `order[j]`.
    order: Vec<usize>,
    key_codec: Option<RowConverter>,
    row_codec: RowConverter,
    output_codec: RowConverter,
    store: Arc<dyn StateStore>,
    pending: Vec<RecordBatch>,
    /// Per key (encoded session keys): this epoch's changes as (batch, row, sign).
    deltas: HashMap<Vec<u8>, Vec<(usize, usize, i64)>>,
    /// Estimated memory of `pending` and `deltas` (see [`Operator::dirty_bytes`]).
    dirty_bytes: usize,
    watermark: Option<i64>,
    released: Option<i64>,
    /// Keys by the end of their earliest open session: re-examined when the watermark passes.
    timers: BTreeMap<i64, HashSet<Vec<u8>>>,
    /// Whether `timers` covers the stored keys (false after a restart until the first scan).
    timers_loaded: bool,
    release: Vec<Watermark>,
}

impl std::fmt::Debug for SessionWindowOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionWindowOperator").field("keys", &self.keys).field("time", &self.time).field("gap", &self.gap).finish()
    }
}

impl SessionWindowOperator {
    /// Sessions of rows of `input` per value of the `keys` columns, by the `time` column, with
    /// `gap` microseconds of inactivity closing a session; state in table `table` of `store`.
    pub fn try_new(
        input: &Schema,
        keys: Vec<usize>,
        time: usize,
        gap: i64,
        table: TableId,
        store: Arc<dyn StateStore>,
    ) -> EngineResult<Self> {
        let time_field = input.fields().get(time).ok_or_else(|| EngineError::Invalid("session time column outside the input".into()))?;
        if !crate::watermark::is_event_time_type(time_field.data_type()) || gap <= 0 {
            return Err(EngineError::Invalid("a session needs a timestamp column and a positive gap".into()));
        }
        if keys.iter().any(|k| *k >= input.fields().len() || *k == time) {
            return Err(EngineError::Invalid("session keys must be other input columns".into()));
        }
        let mut order: Vec<usize> = keys.clone();
        order.push(time);
        order.extend((0..input.fields().len()).filter(|c| !keys.contains(c) && *c != time));
        let mut fields: Vec<Field> = order.iter().map(|c| input.field(*c).clone().with_nullable(true)).collect();
        fields.push(Field::new("__count", DataType::Int64, false));
        let state = StateTable::try_new(table, Arc::new(Schema::new(fields)), (0..order.len()).collect())?;
        let key_codec = if keys.is_empty() {
            None
        } else {
            Some(RowConverter::new(keys.iter().map(|k| SortField::new(input.field(*k).data_type().clone())).collect())?)
        };
        let mut output_fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        output_fields.push(Field::new("window_start", time_field.data_type().clone(), true));
        output_fields.push(Field::new("window_end", time_field.data_type().clone(), true));
        let output = Arc::new(Schema::new(output_fields));
        Ok(Self {
            row_codec: RowConverter::new(input.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect())?,
            output_codec: RowConverter::new(output.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect())?,
            input: Arc::new(input.clone()),
            output,
            keys,
            time,
            gap,
            state,
            order,
            key_codec,
            store,
            pending: Vec::new(),
            deltas: HashMap::new(),
            dirty_bytes: 0,
            watermark: None,
            released: None,
            timers: BTreeMap::new(),
            timers_loaded: false,
            release: Vec::new(),
        })
    }

    /// The schema of the output rows: the input's, then `window_start` and `window_end`.
    pub fn schema(&self) -> &SchemaRef {
        &self.output
    }

    /// The encoded session keys of every row of `rows` (input order).
    fn key_prefixes(&self, rows: &RecordBatch) -> EngineResult<Vec<Vec<u8>>> {
        match &self.key_codec {
            None => Ok(vec![Vec::new(); rows.num_rows()]),
            Some(codec) => {
                let columns: Vec<ArrayRef> = self.keys.iter().map(|k| Arc::clone(rows.column(*k))).collect();
                let encoded = codec.convert_columns(&columns)?;
                Ok((0..rows.num_rows()).map(|r| encoded.row(r).data().to_vec()).collect())
            }
        }
    }

    /// The stored rows of key `prefix` in input column order, one row per copy.
    fn load(&self, snapshot: &dyn sluice_storage::StateSnapshot, prefix: &[u8]) -> EngineResult<RecordBatch> {
        let mut values = Vec::new();
        for kv in snapshot.scan(self.state.id(), KeyRange::prefix(prefix))? {
            values.push(kv?.1);
        }
        if values.is_empty() {
            return Ok(RecordBatch::new_empty(Arc::clone(&self.input)));
        }
        let stored = self.state.decode_values(values.iter().map(|v| v.as_ref()))?;
        let counts = stored.column(self.order.len()).as_primitive::<Int64Type>();
        let mut copies = Vec::new();
        for (row, count) in counts.values().iter().enumerate() {
            copies.extend(std::iter::repeat_n(row as u32, (*count).max(0) as usize));
        }
        let stored = take_record_batch(&stored, &UInt32Array::from(copies))?;
        let mut columns: Vec<ArrayRef> = vec![Arc::clone(stored.column(0)); self.input.fields().len()];
        for (j, c) in self.order.iter().enumerate() {
            columns[*c] = Arc::clone(stored.column(j));
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.input), columns)?)
    }

    /// Rows of `rows` (input order) with a count, in the state's column order.
    fn state_rows(&self, rows: &RecordBatch, counts: Vec<i64>) -> EngineResult<RecordBatch> {
        let mut columns: Vec<ArrayRef> = self.order.iter().map(|c| Arc::clone(rows.column(*c))).collect();
        columns.push(Arc::new(Int64Array::from(counts)));
        Ok(RecordBatch::try_new(Arc::clone(self.state.schema()), columns)?)
    }

    /// The rows at `at` (batch, row) of this epoch's input, as one batch.
    fn gather(&self, at: &[(usize, usize)]) -> EngineResult<RecordBatch> {
        if at.is_empty() {
            return Ok(RecordBatch::new_empty(Arc::clone(&self.input)));
        }
        let batches: Vec<&RecordBatch> = self.pending.iter().collect();
        Ok(interleave_record_batch(&batches, at)?)
    }

    /// Recomputes key `prefix` from its stored rows and `changes` (this epoch's rows of the
    /// key, by position in the epoch's input, with a sign): writes
    /// its new rows, evicts its closed sessions, re-arms its timer, and returns the output's
    /// deletes and inserts.
    fn settle(
        &mut self,
        snapshot: &dyn sluice_storage::StateSnapshot,
        prefix: &[u8],
        changes: &[(usize, usize, i64)],
        write: &mut WriteBatch,
    ) -> EngineResult<(Option<RecordBatch>, Option<RecordBatch>)> {
        let old = self.load(snapshot, prefix)?;
        let positions = |sign: i64| -> Vec<(usize, usize)> {
            changes.iter().filter(|(_, _, s)| *s == sign).map(|(b, r, _)| (*b, *r)).collect()
        };
        let inserted = self.gather(&positions(1))?;
        let deleted = self.gather(&positions(-1))?;
        // The new multiset: the old rows, plus inserts, minus deletes (by whole-row equality).
        let all = concat_batches(&self.input, [&old, &inserted])?;
        let encoded = self.row_codec.convert_columns(all.columns())?;
        let mut alive = vec![true; all.num_rows()];
        let mut by_row: HashMap<&[u8], Vec<usize>> = HashMap::new();
        for i in 0..all.num_rows() {
            by_row.entry(encoded.row(i).data()).or_default().push(i);
        }
        let deleted = self.row_codec.convert_columns(deleted.columns())?;
        for row in 0..deleted.num_rows() {
            let slot = by_row.get_mut(deleted.row(row).data()).and_then(|v| v.pop());
            match slot {
                Some(i) => alive[i] = false,
                None => return Err(EngineError::Invalid("a session window received a delete of a row it does not hold".into())),
            }
        }
        let survivors: Vec<u32> = (0..all.num_rows()).filter(|i| alive[*i]).map(|i| i as u32).collect();
        let new = take_record_batch(&all, &UInt32Array::from(survivors))?;
        let (old_starts, old_ends) = assign_sessions(old.column(self.time).as_ref(), self.gap)?;
        let (new_starts, new_ends) = assign_sessions(new.column(self.time).as_ref(), self.gap)?;
        // State: each distinct row's new count (rows without a time are never stored).
        let count_rows = |rows: &RecordBatch| -> EngineResult<HashMap<Vec<u8>, (usize, i64)>> {
            let encoded = self.row_codec.convert_columns(rows.columns())?;
            let mut counts: HashMap<Vec<u8>, (usize, i64)> = HashMap::new();
            for i in 0..rows.num_rows() {
                counts.entry(encoded.row(i).data().to_vec()).or_insert((i, 0)).1 += 1;
            }
            Ok(counts)
        };
        let before = count_rows(&old)?;
        let after = count_rows(&new)?;
        let mut put = Vec::new();
        let mut put_counts = Vec::new();
        let mut gone = Vec::new();
        for (row, (i, n)) in &after {
            if before.get(row).map(|(_, m)| *m) != Some(*n) {
                put.push(*i as u32);
                put_counts.push(*n);
            }
        }
        for (row, (i, _)) in &before {
            if !after.contains_key(row) {
                gone.push(*i as u32);
            }
        }
        if !put.is_empty() {
            let rows = take_record_batch(&new, &UInt32Array::from(put))?;
            self.state.write_rows(&self.state_rows(&rows, put_counts)?, write)?;
        }
        if !gone.is_empty() {
            let rows = take_record_batch(&old, &UInt32Array::from(gone))?;
            let n = rows.num_rows();
            self.state.delete_rows(&self.state_rows(&rows, vec![0; n])?, write)?;
        }
        // Closed sessions leave the state (their rows stay in the output); the earliest open
        // one arms the key's timer.
        let mut closed = Vec::new();
        let mut earliest_open: Option<i64> = None;
        for (i, end) in new_ends.iter().enumerate() {
            let Some(end) = end else { continue };
            if self.watermark.is_some_and(|w| *end <= w) {
                closed.push(i);
            } else {
                earliest_open = Some(earliest_open.map_or(*end, |e| e.min(*end)));
            }
        }
        if !closed.is_empty() {
            let encoded = self.row_codec.convert_columns(new.columns())?;
            let mut seen = HashSet::new();
            let unique: Vec<u32> = closed.into_iter().filter(|i| seen.insert(encoded.row(*i).data().to_vec())).map(|i| i as u32).collect();
            let rows = take_record_batch(&new, &UInt32Array::from(unique))?;
            let n = rows.num_rows();
            self.state.delete_rows(&self.state_rows(&rows, vec![0; n])?, write)?;
        }
        if let Some(end) = earliest_open {
            self.timers.entry(end).or_default().insert(prefix.to_vec());
        }
        // Output: the difference of the two assignments (rows without a time have none).
        let old_out = with_bounds(&old, &old_starts, &old_ends, &self.output)?;
        let new_out = with_bounds(&new, &new_starts, &new_ends, &self.output)?;
        let old_keys = self.output_codec.convert_columns(old_out.columns())?;
        let new_keys = self.output_codec.convert_columns(new_out.columns())?;
        // Per output row: its net count change, and where its old and new copies are.
        type Net = (i64, Vec<u32>, Vec<u32>);
        let mut net: HashMap<&[u8], Net> = HashMap::new();
        for i in (0..old_out.num_rows()).filter(|i| old_ends[*i].is_some()) {
            let entry = net.entry(old_keys.row(i).data()).or_default();
            entry.0 -= 1;
            entry.1.push(i as u32);
        }
        for i in (0..new_out.num_rows()).filter(|i| new_ends[*i].is_some()) {
            let entry = net.entry(new_keys.row(i).data()).or_default();
            entry.0 += 1;
            entry.2.push(i as u32);
        }
        let mut retract = Vec::new();
        let mut add = Vec::new();
        for (n, olds, news) in net.into_values() {
            if n < 0 {
                retract.extend(olds.into_iter().take((-n) as usize));
            } else if n > 0 {
                add.extend(news.into_iter().take(n as usize));
            }
        }
        let pick = |rows: &RecordBatch, at: Vec<u32>| -> EngineResult<Option<RecordBatch>> {
            if at.is_empty() {
                return Ok(None);
            }
            Ok(Some(take_record_batch(rows, &UInt32Array::from(at))?))
        };
        Ok((pick(&old_out, retract)?, pick(&new_out, add)?))
    }
}

impl Operator for SessionWindowOperator {
    fn name(&self) -> &str {
        "SessionWindow"
    }

    fn process(&mut self, changes: ChangeBatch) -> EngineResult<Vec<ChangeBatch>> {
        let rows = changes.data().clone();
        let prefixes = self.key_prefixes(&rows)?;
        let batch = self.pending.len();
        let times = rows.column(self.time);
        for (row, prefix) in prefixes.into_iter().enumerate() {
            // A row without a time is in no session: nothing to keep or emit.
            if times.is_null(row) {
                continue;
            }
            let sign = if changes.op(row) == Op::Insert { 1 } else { -1 };
            let prefix_bytes = prefix.len();
            let entry = self.deltas.entry(prefix).or_insert_with(|| {
                self.dirty_bytes += MAP_ENTRY_OVERHEAD + size_of::<(Vec<u8>, Vec<(usize, usize, i64)>)>() + prefix_bytes;
                Vec::new()
            });
            entry.push((batch, row, sign));
            self.dirty_bytes += size_of::<(usize, usize, i64)>();
        }
        self.dirty_bytes += rows.get_array_memory_size();
        self.pending.push(rows);
        Ok(Vec::new())
    }

    fn dirty_bytes(&self) -> usize {
        self.dirty_bytes
    }

    fn on_barrier(&mut self, _epoch: Epoch, write: &mut WriteBatch) -> EngineResult<Vec<ChangeBatch>> {
        self.dirty_bytes = 0;
        let snapshot = self.store.snapshot();
        let mut examine: HashMap<Vec<u8>, Vec<(usize, usize, i64)>> = std::mem::take(&mut self.deltas);
        if let Some(watermark) = self.watermark {
            if !self.timers_loaded {
                // After a restart: every stored key may hold sessions the watermark closes.
                // The stored sessions are read a chunk at a time: only their distinct keys
                // are kept, never the whole state.
                let mut prefixes = HashSet::new();
                for batch in self.state.scan_batches(snapshot.as_ref())? {
                    let batch = batch?;
                    let columns: Vec<ArrayRef> = (0..self.keys.len()).map(|j| Arc::clone(batch.column(j))).collect();
                    match &self.key_codec {
                        Some(codec) => {
                            let encoded = codec.convert_columns(&columns)?;
                            prefixes.extend((0..batch.num_rows()).map(|r| encoded.row(r).data().to_vec()));
                        }
                        None if batch.num_rows() > 0 => {
                            prefixes.insert(Vec::new());
                        }
                        None => {}
                    }
                }
                for prefix in prefixes {
                    examine.entry(prefix).or_default();
                }
                self.timers_loaded = true;
            }
            let due: Vec<i64> = self.timers.range(..=watermark).map(|(t, _)| *t).collect();
            for at in due {
                for prefix in self.timers.remove(&at).unwrap_or_default() {
                    examine.entry(prefix).or_default();
                }
            }
        }
        let mut deletes = Vec::new();
        let mut inserts = Vec::new();
        let mut prefixes: Vec<Vec<u8>> = examine.keys().cloned().collect();
        prefixes.sort();
        for prefix in prefixes {
            let changes = examine.remove(&prefix).unwrap_or_default();
            let (retract, add) = self.settle(snapshot.as_ref(), &prefix, &changes, write)?;
            deletes.extend(retract);
            inserts.extend(add);
        }
        self.pending.clear();
        if let Some(w) = self.watermark {
            if self.released.is_none_or(|r| r < w) {
                self.released = Some(w);
                self.release.push(Watermark { column: self.input.fields().len() + 1, value: w });
            }
        }
        let mut out = Vec::new();
        if !deletes.is_empty() {
            out.push(ChangeBatch::deletes(concat_batches(&self.output, &deletes)?));
        }
        if !inserts.is_empty() {
            out.push(ChangeBatch::inserts(concat_batches(&self.output, &inserts)?));
        }
        Ok(out)
    }

    fn on_watermark(&mut self, _input: usize, watermark: Watermark) -> EngineResult<Vec<Watermark>> {
        if watermark.column == self.time {
            self.watermark = Some(self.watermark.map_or(watermark.value, |w| w.max(watermark.value)));
        }
        Ok(Vec::new())
    }

    fn released_watermarks(&mut self) -> Vec<Watermark> {
        std::mem::take(&mut self.release)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_storage::MemoryStateStore;

    use crate::operator::consolidate;

    fn step(op: &mut SessionWindowOperator, store: &Arc<dyn StateStore>, epoch: u64, view: &mut BTreeMap<String, i64>) {
        let mut write = WriteBatch::new();
        let out = op.on_barrier(epoch, &mut write).unwrap();
        store.commit(epoch, write).unwrap();
        consolidate(&out, view);
    }

    #[test]
    fn a_bridging_row_merges_sessions_and_a_delete_splits_them() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let schema = ChangeBatch::from_pretty("I S").unwrap().schema();
        let mut op = SessionWindowOperator::try_new(&schema, vec![0], 1, 10, 30, Arc::clone(&store)).unwrap();
        let mut view = BTreeMap::new();
        op.process(ChangeBatch::from_pretty("I S\n+ 1 0\n+ 1 5\n+ 1 20\n+ 2 0\n+ 1 .").unwrap()).unwrap();
        step(&mut op, &store, 1, &mut view);
        let rows: Vec<&str> = view.keys().map(String::as_str).collect();
        assert_eq!(rows, vec!["1 0 0 15", "1 20 20 30", "1 5 0 15", "2 0 0 10"]);
        // 12 is within 10 of both 5 and 20: one session from 0 to 30.
        op.process(ChangeBatch::from_pretty("I S\n+ 1 12").unwrap()).unwrap();
        step(&mut op, &store, 2, &mut view);
        let rows: Vec<&str> = view.keys().map(String::as_str).collect();
        assert_eq!(rows, vec!["1 0 0 30", "1 12 0 30", "1 20 0 30", "1 5 0 30", "2 0 0 10"]);
        op.process(ChangeBatch::from_pretty("I S\n- 1 12").unwrap()).unwrap();
        step(&mut op, &store, 3, &mut view);
        let rows: Vec<&str> = view.keys().map(String::as_str).collect();
        assert_eq!(rows, vec!["1 0 0 15", "1 20 20 30", "1 5 0 15", "2 0 0 10"]);
    }

    #[test]
    fn sessions_the_watermark_closes_leave_the_state() {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
        let schema = ChangeBatch::from_pretty("I S").unwrap().schema();
        let mut op = SessionWindowOperator::try_new(&schema, vec![0], 1, 10, 30, Arc::clone(&store)).unwrap();
        let mut view = BTreeMap::new();
        op.process(ChangeBatch::from_pretty("I S\n+ 1 0\n+ 2 40\n+ 1 50").unwrap()).unwrap();
        step(&mut op, &store, 1, &mut view);
        let stored = || store.snapshot().scan(30, KeyRange::all()).unwrap().count();
        assert_eq!(stored(), 3);
        op.on_watermark(0, Watermark { column: 1, value: 45 }).unwrap();
        step(&mut op, &store, 2, &mut view);
        assert_eq!(stored(), 2, "the session of key 1 ending at 10 is closed");
        assert_eq!(op.released_watermarks(), vec![Watermark { column: 3, value: 45 }]);
        op.on_watermark(0, Watermark { column: 1, value: 100 }).unwrap();
        step(&mut op, &store, 3, &mut view);
        assert_eq!(stored(), 0);
        assert_eq!(view.len(), 3, "closing changes no output row");
    }
}
