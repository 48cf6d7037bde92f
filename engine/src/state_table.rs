//! [`StateTable`]: a keyed relation stored in one state-store table.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use bytes::Bytes;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use sluice_storage::{KeyRange, StateSnapshot, TableId, WriteBatch};

use crate::{EngineError, EngineResult};

/// All rows of `rows` in one buffer, and each row's slice of it, in order.
///
/// Why: an epoch queues millions of keys and values; one allocation per batch instead of one
/// per row keeps the allocator out of the hot path and lets the whole epoch's writes be freed
/// at once when it commits.
fn packed(rows: &Rows) -> (Bytes, impl Iterator<Item = Bytes> + '_) {
    let mut buffer = Vec::with_capacity(rows.iter().map(|r| r.data().len()).sum());
    for row in rows.iter() {
        buffer.extend_from_slice(row.data());
    }
    let buffer = Bytes::from(buffer);
    let whole = buffer.clone();
    let mut start = 0;
    let slices = rows.iter().map(move |row| {
        let end = start + row.data().len();
        let slice = buffer.slice(start..end);
        start = end;
        slice
    });
    (whole, slices)
}

/// A relation of one Arrow schema, stored as `key → row` in one storage table.
///
/// Why: every piece of relational state (a table's rows, an aggregate's groups, a view's
/// contents) needs the same three things — a memcomparable key so that range scans come back
/// in key order, a value that decodes back to Arrow without loss, and batched writes into an
/// epoch's [`WriteBatch`]. Both encodings use Arrow's row format (`arrow::row`), which is
/// vectorised, order-preserving and decodes to arrays.
///
/// Semantics: writing a row whose key exists overwrites it (upsert); deleting by a row uses
/// only its key columns. The value holds every column, key columns included, so a scan
/// returns whole rows without re-assembling keys.
///
/// Invariant: the encoding is tied to the Arrow version; the durable backend records a
/// format version beside the data and refuses a mismatch.
pub struct StateTable {
    id: TableId,
    schema: SchemaRef,
    key_indices: Vec<usize>,
    key_codec: RowConverter,
    value_codec: RowConverter,
    /// Whether rows are stored many to a value (see [`StateTable::try_new_packed`]).
    packed: bool,
}

impl std::fmt::Debug for StateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateTable")
            .field("id", &self.id)
            .field("schema", &self.schema)
            .field("key_indices", &self.key_indices)
            .field("packed", &self.packed)
            .finish()
    }
}

/// Rows decoded per output batch of a scan.
pub const SCAN_BATCH_ROWS: usize = 8192;

/// Bytes of encoded rows a packed table puts in one stored value before it starts the next
/// (see [`StateTable::try_new_packed`]). Large enough that the store's cost per key (its
/// index and filter entries, a memtable insert) is spread over a hundred rows or more;
/// small enough that a value stays well inside the durable store's LSM tree (it moves values
/// of 64 KB and more to blob files) and a scan's first rows come back without decoding much.
const PACK_BYTES: usize = 16 << 10;

/// Bytes of the row count at the head of a packed value, and of the length before each row.
const PACK_LENGTH_BYTES: usize = 4;

impl StateTable {
    /// A state table `id` holding rows of `schema`, keyed by the columns at `key_indices`.
    ///
    /// Fails if the key is empty or names a missing column, or if a column type has no row
    /// encoding.
    pub fn try_new(id: TableId, schema: SchemaRef, key_indices: Vec<usize>) -> EngineResult<Self> {
        if key_indices.is_empty() {
            return Err(EngineError::Invalid(format!("state table {id} has no key columns")));
        }
        if let Some(bad) = key_indices.iter().find(|i| **i >= schema.fields().len()) {
            return Err(EngineError::Invalid(format!(
                "state table {id}: key column {bad} is outside a schema of {} columns",
                schema.fields().len()
            )));
        }
        let key_codec = RowConverter::new(
            key_indices
                .iter()
                .map(|i| SortField::new(schema.field(*i).data_type().clone()))
                .collect(),
        )?;
        let value_codec = RowConverter::new(
            schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect(),
        )?;
        Ok(Self { id, schema, key_indices, key_codec, value_codec, packed: false })
    }

    /// Like [`StateTable::try_new`], but storing rows many to a value: each call of
    /// [`StateTable::write_rows`] stores its rows, in key order, as values of about
    /// [`PACK_BYTES`], each under the key of its first row: the pack's row count, then each
    /// row's length and encoding (the count lets a scan size its batches without walking the
    /// rows twice).
    ///
    /// Why: an append-only view writes every row once and never looks one up. Stored one per
    /// key, each of its rows cost the durable store a memtable insert and an index and filter
    /// entry when flushed, which with small rows was most of its CPU time (BENCHMARKS.md,
    /// durable state).
    ///
    /// What the caller promises: every row ever written has a key of its own, and no row
    /// written later falls between the first and last key of one earlier call (arrival keys
    /// do both), so that the stored values, in key order, hold the rows in key order. A
    /// packed table can be scanned and dropped; its rows cannot be deleted one by one.
    pub fn try_new_packed(id: TableId, schema: SchemaRef, key_indices: Vec<usize>) -> EngineResult<Self> {
        Ok(Self { packed: true, ..Self::try_new(id, schema, key_indices)? })
    }

    /// The storage table id.
    pub fn id(&self) -> TableId {
        self.id
    }

    /// The schema of the stored rows.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Positions of the key columns in the schema.
    pub fn key_indices(&self) -> &[usize] {
        &self.key_indices
    }

    fn check_schema(&self, batch: &RecordBatch) -> EngineResult<()> {
        let expected = self.schema.fields().iter().map(|f| f.data_type());
        let actual = batch.schema_ref().fields().iter().map(|f| f.data_type());
        if batch.num_columns() != self.schema.fields().len() || !expected.eq(actual) {
            return Err(EngineError::Invalid(format!(
                "state table {}: batch schema {:?} does not match {:?}",
                self.id,
                batch.schema(),
                self.schema
            )));
        }
        Ok(())
    }

    /// The memcomparable keys of `batch`'s rows.
    pub fn encode_keys(&self, batch: &RecordBatch) -> EngineResult<Rows> {
        self.check_schema(batch)?;
        let key_columns: Vec<ArrayRef> =
            self.key_indices.iter().map(|i| Arc::clone(batch.column(*i))).collect();
        Ok(self.key_codec.convert_columns(&key_columns)?)
    }

    /// The memcomparable keys of rows given by their key columns alone (in key order), for
    /// point lookups.
    pub fn encode_key_columns(&self, key_columns: &[ArrayRef]) -> EngineResult<Rows> {
        let expected = self.key_indices.iter().map(|i| self.schema.field(*i).data_type());
        if key_columns.len() != self.key_indices.len() || !expected.eq(key_columns.iter().map(|c| c.data_type())) {
            return Err(EngineError::Invalid(format!("state table {}: key columns do not match the key", self.id)));
        }
        Ok(self.key_codec.convert_columns(key_columns)?)
    }

    /// Queues an upsert of every row of `batch` into `write`; returns about how many bytes of
    /// memory the queued writes take (each operation's own size plus its key and value).
    pub fn write_rows(&self, batch: &RecordBatch, write: &mut WriteBatch) -> EngineResult<usize> {
        let keys = self.encode_keys(batch)?;
        let values = self.value_codec.convert_columns(batch.columns())?;
        if self.packed {
            return self.write_packs(&keys, &values, write);
        }
        let (key_buffer, keys) = packed(&keys);
        let (value_buffer, values) = packed(&values);
        for (key, value) in keys.zip(values) {
            write.put(self.id, key, value);
        }
        Ok(batch.num_rows() * size_of::<sluice_storage::WriteOp>() + key_buffer.len() + value_buffer.len())
    }

    /// Queues the rows whose keys are `keys` and encoded values `values` as packs (see
    /// [`StateTable::try_new_packed`]); returns about how many bytes of memory they take.
    fn write_packs(&self, keys: &Rows, values: &Rows, write: &mut WriteBatch) -> EngineResult<usize> {
        if keys.num_rows() == 0 {
            return Ok(0);
        }
        if (1..keys.num_rows()).any(|i| keys.row(i - 1) >= keys.row(i)) {
            return Err(EngineError::Invalid(format!(
                "state table {}: rows written to a packed table must come in increasing key order",
                self.id
            )));
        }
        // Every pack in one buffer, each with its first row's index and where it starts; each
        // pack's count is filled in once the next one starts.
        let mut buffer = Vec::with_capacity(values.size() + PACK_LENGTH_BYTES * (values.num_rows() + 1));
        let mut packs: Vec<(usize, usize)> = Vec::new();
        let mut pack_start = 0;
        for (i, row) in values.iter().enumerate() {
            if i == 0 || buffer.len() - pack_start >= PACK_BYTES {
                if let Some((first, start)) = packs.last() {
                    write_pack_count(&mut buffer, *start, i - first);
                }
                pack_start = buffer.len();
                packs.push((i, pack_start));
                buffer.extend_from_slice(&[0; PACK_LENGTH_BYTES]);
            }
            let length = u32::try_from(row.data().len()).map_err(|_| {
                EngineError::Invalid(format!("state table {}: a row of 4 GB or more cannot be stored", self.id))
            })?;
            buffer.extend_from_slice(&length.to_le_bytes());
            buffer.extend_from_slice(row.data());
        }
        if let Some((first, start)) = packs.last() {
            write_pack_count(&mut buffer, *start, values.num_rows() - first);
        }
        let buffer = Bytes::from(buffer);
        let mut key_bytes = 0;
        for (n, (first_row, start)) in packs.iter().enumerate() {
            let end = packs.get(n + 1).map_or(buffer.len(), |next| next.1);
            let key = keys.row(*first_row).data();
            key_bytes += key.len();
            write.put(self.id, Bytes::copy_from_slice(key), buffer.slice(*start..end));
        }
        Ok(packs.len() * size_of::<sluice_storage::WriteOp>() + key_bytes + buffer.len())
    }

    /// Calls `row` with each encoded row of `value`, one stored value of this table: the
    /// value itself, or the rows of a pack.
    fn each_stored_row<'a>(&self, value: &'a [u8], mut row: impl FnMut(&'a [u8])) -> EngineResult<()> {
        if !self.packed {
            row(value);
            return Ok(());
        }
        let truncated = || EngineError::Invalid(format!("state table {}: a stored pack of rows is truncated", self.id));
        let (_, mut rest) = value.split_first_chunk::<PACK_LENGTH_BYTES>().ok_or_else(truncated)?;
        while !rest.is_empty() {
            let (length, tail) = rest.split_first_chunk::<PACK_LENGTH_BYTES>().ok_or_else(truncated)?;
            let length = u32::from_le_bytes(*length) as usize;
            if tail.len() < length {
                return Err(truncated());
            }
            let (encoded, tail) = tail.split_at(length);
            row(encoded);
            rest = tail;
        }
        Ok(())
    }

    /// Decodes stored values (whole values as the store holds them: packs, for a packed
    /// table) into a batch of this table's schema.
    fn decode_stored(&self, values: &[Bytes]) -> EngineResult<RecordBatch> {
        let mut rows = Vec::with_capacity(values.len());
        for value in values {
            let before = rows.len();
            self.each_stored_row(value, |row| rows.push(row))?;
            if rows.len() - before != self.rows_in(value)? {
                return Err(EngineError::Invalid(format!(
                    "state table {}: a stored pack of rows does not hold the rows its count says",
                    self.id
                )));
            }
        }
        self.decode_values(rows)
    }

    /// Rows in stored value `value` (1 unless the table is packed: its count, read from the
    /// head; the rows are checked against it when they are decoded).
    fn rows_in(&self, value: &[u8]) -> EngineResult<usize> {
        if !self.packed {
            return Ok(1);
        }
        let (count, _) = value.split_first_chunk::<PACK_LENGTH_BYTES>().ok_or_else(|| {
            EngineError::Invalid(format!("state table {}: a stored pack of rows is truncated", self.id))
        })?;
        Ok(u32::from_le_bytes(*count) as usize)
    }

    /// Queues the deletion of every row of `batch` (by key) into `write`.
    ///
    /// Fails on a packed table, whose rows are not stored under keys of their own.
    pub fn delete_rows(&self, batch: &RecordBatch, write: &mut WriteBatch) -> EngineResult<()> {
        if self.packed {
            return Err(EngineError::Invalid(format!("state table {}: rows of a packed table cannot be deleted one by one", self.id)));
        }
        let keys = self.encode_keys(batch)?;
        for key in packed(&keys).1 {
            write.delete(self.id, key);
        }
        Ok(())
    }

    /// Queues the removal of every row of the table.
    pub fn clear(&self, write: &mut WriteBatch) {
        write.drop_table(self.id);
    }

    /// Decodes encoded rows (the stored values of a table that is not packed) back into a
    /// batch of this table's schema.
    pub fn decode_values<'a>(
        &self,
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> EngineResult<RecordBatch> {
        let parser = self.value_codec.parser();
        let rows: Vec<_> = values.into_iter().collect();
        let columns = self.value_codec.convert_rows(rows.iter().map(|v| parser.parse(v)))?;
        let columns = columns.into_iter().map(zero_null_slots).collect::<EngineResult<Vec<_>>>()?;
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

    /// About `rows` rows of the table as of `snapshot`, in key order, starting after stored
    /// key `after` (from the first key if None), with the last stored key read to continue
    /// from; None past the last row. Exactly `rows` (fewer at the end) unless the table is
    /// packed, whose chunks end with a whole pack: at least `rows`, and less than a pack more.
    ///
    /// Why: a query over a table or view larger than memory reads it a batch at a time, each
    /// from the same snapshot, instead of decoding it all first (see `scan_all`).
    pub fn scan_chunk(
        &self,
        snapshot: &dyn StateSnapshot,
        after: Option<&[u8]>,
        rows: usize,
    ) -> EngineResult<Option<(RecordBatch, Vec<u8>)>> {
        let start = match after {
            Some(key) => std::ops::Bound::Excluded(key.to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        let range = KeyRange { start, end: std::ops::Bound::Unbounded };
        let mut values: Vec<bytes::Bytes> = Vec::with_capacity(rows.min(SCAN_BATCH_ROWS));
        let mut last = None;
        let mut read = 0;
        for kv in snapshot.scan(self.id, range)? {
            let (key, value) = kv?;
            read += self.rows_in(&value)?;
            values.push(value);
            last = Some(key);
            if read >= rows.max(1) {
                break;
            }
        }
        match last {
            Some(key) => Ok(Some((self.decode_stored(&values)?, key.to_vec()))),
            None => Ok(None),
        }
    }

    /// Every row of the table as of `snapshot`, in key order, in batches of about
    /// [`SCAN_BATCH_ROWS`] rows (at most that many unless the table is packed, see
    /// [`StateTable::scan_chunk`]), decoded one batch at a time as the iterator is advanced
    /// (one pass over the store, so a table larger than memory is never held whole).
    pub fn scan_batches<'a>(
        &'a self,
        snapshot: &'a dyn StateSnapshot,
    ) -> EngineResult<impl Iterator<Item = EngineResult<RecordBatch>> + 'a> {
        let mut pairs = snapshot.scan(self.id, KeyRange::all())?;
        let mut pending: Vec<bytes::Bytes> = Vec::with_capacity(SCAN_BATCH_ROWS);
        Ok(std::iter::from_fn(move || {
            pending.clear();
            let mut read = 0;
            for kv in pairs.by_ref() {
                let value = match kv {
                    Ok((_, value)) => value,
                    Err(e) => return Some(Err(e.into())),
                };
                read += match self.rows_in(&value) {
                    Ok(rows) => rows,
                    Err(e) => return Some(Err(e)),
                };
                pending.push(value);
                if read >= SCAN_BATCH_ROWS {
                    break;
                }
            }
            (!pending.is_empty()).then(|| self.decode_stored(&pending))
        }))
    }

    /// Every row of the table as of `snapshot`, in key order, in batches of at most
    /// [`SCAN_BATCH_ROWS`] rows (see [`StateTable::scan_batches`]).
    pub fn scan_all(&self, snapshot: &dyn StateSnapshot) -> EngineResult<Vec<RecordBatch>> {
        self.scan_batches(snapshot)?.collect()
    }
}

/// Writes `rows`, a pack's row count, into its head at `start` of `buffer` (see
/// [`StateTable::try_new_packed`]). A pack holds at most one batch's rows, far below 2^32.
fn write_pack_count(buffer: &mut [u8], start: usize, rows: usize) {
    let count = u32::try_from(rows).unwrap_or(u32::MAX);
    buffer[start..start + PACK_LENGTH_BYTES].copy_from_slice(&count.to_le_bytes());
}

/// Sets the value slots under NULLs of a fixed-width column to zero.
///
/// Arrow leaves those slots undefined and the row format decodes them to the type's minimum
/// (the key encoding flips the sign bit of zero). Kernels that compute on every slot and mask
/// nulls afterwards can then overflow and panic (DataFusion's `date_trunc` does); zeros are
/// harmless to all of them.
fn zero_null_slots(column: ArrayRef) -> EngineResult<ArrayRef> {
    if column.null_count() == 0 || !column.data_type().is_primitive() {
        return Ok(column);
    }
    let valid = datafusion::arrow::compute::is_not_null(&column)?;
    let nulls = datafusion::arrow::array::new_null_array(column.data_type(), column.len());
    Ok(datafusion::arrow::compute::kernels::zip::zip(&valid, &column, &nulls)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use sluice_storage::{MemoryStateStore, StateStore};

    fn table() -> StateTable {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        StateTable::try_new(3, schema, vec![0]).unwrap()
    }

    fn batch(t: &StateTable, ids: &[i64], names: &[Option<&str>]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::clone(t.schema()),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(names.to_vec())),
            ],
        )
        .unwrap()
    }

    fn dump(t: &StateTable, store: &dyn StateStore) -> String {
        pretty_format_batches(&t.scan_all(store.snapshot().as_ref()).unwrap()).unwrap().to_string()
    }

    #[test]
    fn upsert_delete_and_scan_in_key_order() {
        let store = MemoryStateStore::new();
        let t = table();
        let mut w = WriteBatch::new();
        t.write_rows(&batch(&t, &[10, -5, 3], &[Some("ten"), None, Some("three")]), &mut w).unwrap();
        store.commit(1, w).unwrap();
        let mut w = WriteBatch::new();
        t.write_rows(&batch(&t, &[3], &[Some("THREE")]), &mut w).unwrap();
        t.delete_rows(&batch(&t, &[10], &[None]), &mut w).unwrap();
        store.commit(2, w).unwrap();
        let expected = "\
+----+-------+
| id | name  |
+----+-------+
| -5 |       |
| 3  | THREE |
+----+-------+";
        assert_eq!(dump(&t, &store), expected);
    }

    #[test]
    fn scan_splits_into_bounded_batches() {
        let store = MemoryStateStore::new();
        let t = table();
        let n = SCAN_BATCH_ROWS as i64 * 2 + 7;
        let ids: Vec<i64> = (0..n).collect();
        let names: Vec<Option<&str>> = ids.iter().map(|_| Some("x")).collect();
        let mut w = WriteBatch::new();
        t.write_rows(&batch(&t, &ids, &names), &mut w).unwrap();
        store.commit(1, w).unwrap();
        let batches = t.scan_all(store.snapshot().as_ref()).unwrap();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), n as usize);
    }

    #[test]
    fn null_slots_decode_to_zero() {
        use datafusion::arrow::array::{Array, AsArray};
        use datafusion::arrow::datatypes::{Int64Type, TimestampMicrosecondType, TimeUnit};
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        let t = StateTable::try_new(1, Arc::clone(&schema), vec![0]).unwrap();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(datafusion::arrow::array::TimestampMicrosecondArray::from(vec![None, Some(5)])),
            ],
        )
        .unwrap();
        let store = MemoryStateStore::new();
        let mut w = WriteBatch::new();
        t.write_rows(&batch, &mut w).unwrap();
        store.commit(1, w).unwrap();
        let read = &t.scan_all(store.snapshot().as_ref()).unwrap()[0];
        let ts = read.column(1).as_primitive::<TimestampMicrosecondType>();
        assert!(ts.is_null(0));
        assert_eq!(ts.values()[0], 0, "a NULL's slot must hold zero");
        assert_eq!(ts.value(1), 5);
        assert_eq!(read.column(0).as_primitive::<Int64Type>().value(1), 2);
    }

    #[test]
    fn rejects_bad_keys_and_mismatched_batches() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        assert!(StateTable::try_new(1, Arc::clone(&schema), vec![]).is_err());
        assert!(StateTable::try_new(1, Arc::clone(&schema), vec![1]).is_err());
        let t = table();
        let other = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap();
        assert!(t.write_rows(&other, &mut WriteBatch::new()).is_err());
    }

    /// A chunked scan returns every row once, in key order, resuming after the last key.
    #[test]
    fn chunks_cover_the_table_in_key_order() {
        let store = sluice_storage::MemoryStateStore::new();
        let t = table();
        let mut w = WriteBatch::new();
        t.write_rows(&batch(&t, &[5, 1, 4, 2, 3], &[Some("e"), Some("a"), Some("d"), Some("b"), Some("c")]), &mut w).unwrap();
        store.commit(1, w).unwrap();
        let snapshot = store.snapshot();
        let mut after: Option<Vec<u8>> = None;
        let mut sizes = Vec::new();
        let mut ids = Vec::new();
        while let Some((rows, last)) = t.scan_chunk(snapshot.as_ref(), after.as_deref(), 2).unwrap() {
            sizes.push(rows.num_rows());
            let column = datafusion::arrow::array::AsArray::as_primitive::<datafusion::arrow::datatypes::Int64Type>(rows.column(0));
            ids.extend(column.values().iter().copied());
            after = Some(last);
        }
        assert_eq!(sizes, vec![2, 2, 1]);
        assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    }

    /// A packed table stores a call's rows many to a value, yet scans return every row once
    /// in key order, whole chunks resume after the last pack, and what a packed table cannot
    /// do (deletes by row, rows out of order, a damaged pack) is an error.
    #[test]
    fn packed_rows_scan_like_rows_stored_one_per_key() {
        let store = MemoryStateStore::new();
        let schema = Arc::clone(table().schema());
        let t = StateTable::try_new_packed(4, schema, vec![0]).unwrap();
        let text = "x".repeat(100);
        let first: Vec<i64> = (0..1000).collect();
        let second: Vec<i64> = (1000..1010).collect();
        let mut w = WriteBatch::new();
        t.write_rows(&batch(&t, &first, &vec![Some(text.as_str()); 1000]), &mut w).unwrap();
        t.write_rows(&batch(&t, &second, &[None; 10]), &mut w).unwrap();
        let packs = w.len();
        assert!((3..100).contains(&packs), "1010 rows of about 110 bytes in {packs} values");
        store.commit(1, w).unwrap();
        let snapshot = store.snapshot();
        let ids = |batches: &[RecordBatch]| -> Vec<i64> {
            batches
                .iter()
                .flat_map(|b| datafusion::arrow::array::AsArray::as_primitive::<datafusion::arrow::datatypes::Int64Type>(b.column(0)).values().to_vec())
                .collect()
        };
        let all = t.scan_all(snapshot.as_ref()).unwrap();
        assert_eq!(ids(&all), (0..1010).collect::<Vec<_>>());
        assert_eq!(all.last().unwrap().column(1).null_count(), 10);
        let mut after: Option<Vec<u8>> = None;
        let mut chunks = Vec::new();
        while let Some((rows, last)) = t.scan_chunk(snapshot.as_ref(), after.as_deref(), 2).unwrap() {
            chunks.push(rows);
            after = Some(last);
        }
        assert_eq!(chunks.len(), packs, "a chunk of 2 rows is one whole pack");
        assert_eq!(ids(&chunks), (0..1010).collect::<Vec<_>>());

        assert!(t.delete_rows(&batch(&t, &[3], &[None]), &mut WriteBatch::new()).is_err());
        assert!(t.write_rows(&batch(&t, &[2000, 1999], &[None, None]), &mut WriteBatch::new()).is_err());
        let mut damaged = WriteBatch::new();
        damaged.put(4, Bytes::from_static(b"\xff"), Bytes::from_static(&[1, 0, 0, 0, 9, 0, 0, 0, 1]));
        store.commit(2, damaged).unwrap();
        let error = t.scan_all(store.snapshot().as_ref()).unwrap_err().to_string();
        assert!(error.contains("truncated"), "{error}");
        let mut miscounted = WriteBatch::new();
        miscounted.put(4, Bytes::from_static(b"\xff"), Bytes::from_static(&[2, 0, 0, 0, 1, 0, 0, 0, 0]));
        store.commit(3, miscounted).unwrap();
        let error = t.scan_all(store.snapshot().as_ref()).unwrap_err().to_string();
        assert!(error.contains("does not hold the rows its count says"), "{error}");
    }
}
