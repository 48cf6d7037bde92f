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
}

impl std::fmt::Debug for StateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateTable")
            .field("id", &self.id)
            .field("schema", &self.schema)
            .field("key_indices", &self.key_indices)
            .finish()
    }
}

/// Rows decoded per output batch of a scan.
pub const SCAN_BATCH_ROWS: usize = 8192;

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
        Ok(Self { id, schema, key_indices, key_codec, value_codec })
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
        let (key_buffer, keys) = packed(&keys);
        let (value_buffer, values) = packed(&values);
        for (key, value) in keys.zip(values) {
            write.put(self.id, key, value);
        }
        Ok(batch.num_rows() * size_of::<sluice_storage::WriteOp>() + key_buffer.len() + value_buffer.len())
    }

    /// Queues the deletion of every row of `batch` (by key) into `write`.
    pub fn delete_rows(&self, batch: &RecordBatch, write: &mut WriteBatch) -> EngineResult<()> {
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

    /// Decodes stored values back into a batch of this table's schema.
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

    /// Up to `rows` rows of the table as of `snapshot`, in key order, starting after key
    /// `after` (from the first key if None), with the last row's key to continue from; None
    /// past the last row.
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
        for kv in snapshot.scan(self.id, range)?.take(rows.max(1)) {
            let (key, value) = kv?;
            values.push(value);
            last = Some(key);
        }
        match last {
            Some(key) => Ok(Some((self.decode_values(values.iter().map(|v| v.as_ref()))?, key.to_vec()))),
            None => Ok(None),
        }
    }

    /// Every row of the table as of `snapshot`, in key order, in batches of at most
    /// [`SCAN_BATCH_ROWS`] rows, decoded one batch at a time as the iterator is advanced (one
    /// pass over the store, so a table larger than memory is never held whole).
    pub fn scan_batches<'a>(
        &'a self,
        snapshot: &'a dyn StateSnapshot,
    ) -> EngineResult<impl Iterator<Item = EngineResult<RecordBatch>> + 'a> {
        let mut pairs = snapshot.scan(self.id, KeyRange::all())?;
        let mut pending: Vec<bytes::Bytes> = Vec::with_capacity(SCAN_BATCH_ROWS);
        Ok(std::iter::from_fn(move || {
            pending.clear();
            for kv in pairs.by_ref() {
                match kv {
                    Ok((_, value)) => pending.push(value),
                    Err(e) => return Some(Err(e.into())),
                }
                if pending.len() == SCAN_BATCH_ROWS {
                    break;
                }
            }
            (!pending.is_empty()).then(|| self.decode_values(pending.iter().map(|v| v.as_ref())))
        }))
    }

    /// Every row of the table as of `snapshot`, in key order, in batches of at most
    /// [`SCAN_BATCH_ROWS`] rows (see [`StateTable::scan_batches`]).
    pub fn scan_all(&self, snapshot: &dyn StateSnapshot) -> EngineResult<Vec<RecordBatch>> {
        self.scan_batches(snapshot)?.collect()
    }
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
}
