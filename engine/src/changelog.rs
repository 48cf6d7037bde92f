//! Changelog batches: Arrow rows that each say whether they are inserted or deleted.
//!
//! Why an explicit change column: incremental operators must retract what they emitted
//! before (an aggregate's old total, a row that stopped matching a join). Every row of a
//! [`ChangeBatch`] is an insert (`+1`) or a delete (`-1`); an update is an adjacent
//! delete + insert pair. A view's contents are the sum of all changes it received.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int32Array, Int64Array, Int8Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};

use crate::{EngineError, EngineResult};

/// Whether a row is added to or removed from the relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// The row is added.
    Insert,
    /// The row is removed (it was inserted before).
    Delete,
}

impl Op {
    /// The value stored in the op column.
    pub fn code(self) -> i8 {
        match self {
            Op::Insert => 1,
            Op::Delete => -1,
        }
    }

    fn from_code(code: i8) -> Option<Self> {
        match code {
            1 => Some(Op::Insert),
            -1 => Some(Op::Delete),
            _ => None,
        }
    }
}

/// Rows with an op each, over one schema.
///
/// Invariant (checked by [`ChangeBatch::try_new`]): one non-null op per row, each `+1` or `-1`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeBatch {
    data: RecordBatch,
    ops: Int8Array,
}

impl ChangeBatch {
    /// Changes from `data` and one op per row.
    pub fn try_new(data: RecordBatch, ops: Int8Array) -> EngineResult<Self> {
        if ops.len() != data.num_rows() {
            return Err(EngineError::Invalid(format!("{} ops for {} rows", ops.len(), data.num_rows())));
        }
        if ops.null_count() > 0 || ops.values().iter().any(|o| Op::from_code(*o).is_none()) {
            return Err(EngineError::Invalid("ops must be +1 (insert) or -1 (delete)".into()));
        }
        Ok(Self { data, ops })
    }

    /// Every row of `data` inserted.
    pub fn inserts(data: RecordBatch) -> Self {
        let ops = Int8Array::from(vec![Op::Insert.code(); data.num_rows()]);
        Self { data, ops }
    }

    /// Every row of `data` deleted.
    pub fn deletes(data: RecordBatch) -> Self {
        let ops = Int8Array::from(vec![Op::Delete.code(); data.num_rows()]);
        Self { data, ops }
    }

    /// The rows.
    pub fn data(&self) -> &RecordBatch {
        &self.data
    }

    /// The op of each row (`+1` / `-1`).
    pub fn ops(&self) -> &Int8Array {
        &self.ops
    }

    /// The op of row `i`.
    pub fn op(&self, i: usize) -> Op {
        if self.ops.value(i) < 0 { Op::Delete } else { Op::Insert }
    }

    /// The schema of the rows.
    pub fn schema(&self) -> SchemaRef {
        self.data.schema()
    }

    /// Number of changes.
    pub fn num_rows(&self) -> usize {
        self.data.num_rows()
    }

    /// Bytes of memory the batch's arrays hold (buffers shared with other batches counted
    /// whole): what queueing or buffering it costs.
    pub fn memory_size(&self) -> usize {
        self.data.get_array_memory_size() + self.ops.get_array_memory_size()
    }

    /// The changes of `batches` (all of one schema, at least one), in order.
    pub fn concat(batches: &[ChangeBatch]) -> EngineResult<Self> {
        let first = batches.first().ok_or_else(|| EngineError::Invalid("no changes to concatenate".into()))?;
        if batches.len() == 1 {
            return Ok(first.clone());
        }
        let data = datafusion::arrow::compute::concat_batches(&first.schema(), batches.iter().map(|b| &b.data))?;
        let ops: Vec<&dyn datafusion::arrow::array::Array> = batches.iter().map(|b| &b.ops as &dyn datafusion::arrow::array::Array).collect();
        let ops = datafusion::arrow::compute::concat(&ops)?;
        Self::try_new(data, ops.as_primitive::<datafusion::arrow::datatypes::Int8Type>().clone())
    }

    /// Empties `pending` (changes gathered since the last checkpoint) into one batch; None
    /// when there is nothing to write.
    pub fn take_concat(pending: &mut Vec<ChangeBatch>) -> EngineResult<Option<Self>> {
        if pending.is_empty() {
            return Ok(None);
        }
        let changes = Self::concat(&std::mem::take(pending))?;
        Ok((changes.num_rows() > 0).then_some(changes))
    }

    /// The changes whose row `mask` selects (NULL does not select), ops kept.
    pub fn filter(&self, mask: &BooleanArray) -> EngineResult<Self> {
        let data = filter_record_batch(&self.data, mask)?;
        let ops = datafusion::arrow::compute::filter(&self.ops, mask)?;
        Self::try_new(data, ops.as_primitive::<datafusion::arrow::datatypes::Int8Type>().clone())
    }

    /// The same changes with other columns (for instance a projection of these rows).
    pub fn with_columns(&self, schema: SchemaRef, columns: Vec<ArrayRef>) -> EngineResult<Self> {
        // The row count is explicit: `count(*)` reads changes with no columns at all.
        let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(self.ops.len()));
        Self::try_new(RecordBatch::try_new_with_options(schema, columns, &options)?, self.ops.clone())
    }

    /// Builds changes from a compact text literal, for tests and examples.
    ///
    /// The first line gives one type letter per column — `I` BIGINT, `i` INT, `F` DOUBLE, `T`
    /// TEXT, `B` BOOLEAN, `S` TIMESTAMP (written as microseconds since the epoch); each further line is an op (`+` or `-`) and the row's values
    /// separated by spaces, `.` for NULL. Columns are named `c0`, `c1`, ...
    ///
    /// ```text
    ///  I T
    ///  + 1 a
    ///  - 1 a
    ///  + 2 .
    /// ```
    pub fn from_pretty(text: &str) -> EngineResult<Self> {
        let bad = |m: String| EngineError::Invalid(format!("bad changelog literal: {m}"));
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let header: Vec<&str> = lines.next().ok_or_else(|| bad("no header".into()))?.split_whitespace().collect();
        let types = header
            .iter()
            .map(|t| match *t {
                "I" => Ok(DataType::Int64),
                "i" => Ok(DataType::Int32),
                "F" => Ok(DataType::Float64),
                "T" => Ok(DataType::Utf8),
                "B" => Ok(DataType::Boolean),
                "S" => Ok(DataType::Timestamp(TimeUnit::Microsecond, None)),
                other => Err(bad(format!("unknown type letter {other}"))),
            })
            .collect::<EngineResult<Vec<_>>>()?;
        let mut ops = Vec::new();
        let mut cells: Vec<Vec<Option<String>>> = vec![Vec::new(); types.len()];
        for line in lines {
            let mut words = line.split_whitespace();
            ops.push(match words.next() {
                Some("+") => Op::Insert.code(),
                Some("-") => Op::Delete.code(),
                other => return Err(bad(format!("row must start with + or -, got {other:?}"))),
            });
            let values: Vec<&str> = words.collect();
            if values.len() != types.len() {
                return Err(bad(format!("{line:?} has {} values for {} columns", values.len(), types.len())));
            }
            for (column, value) in cells.iter_mut().zip(values) {
                column.push((value != ".").then(|| value.to_string()));
            }
        }
        let parse = |v: &Option<String>, t: &DataType| -> EngineResult<()> {
            match (v, t) {
                (None, _) | (_, DataType::Utf8) => Ok(()),
                (Some(v), DataType::Boolean) if v == "t" || v == "f" => Ok(()),
                (Some(v), DataType::Float64) => v.parse::<f64>().map(|_| ()).map_err(|e| bad(format!("{v}: {e}"))),
                (Some(v), _) => v.parse::<i64>().map(|_| ()).map_err(|e| bad(format!("{v}: {e}"))),
            }
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(types.len());
        for (values, t) in cells.iter().zip(&types) {
            for v in values {
                parse(v, t)?;
            }
            let num = |v: &Option<String>| v.as_ref().and_then(|v| v.parse::<i64>().ok());
            columns.push(match t {
                DataType::Int64 => Arc::new(values.iter().map(num).collect::<Int64Array>()),
                DataType::Int32 => Arc::new(values.iter().map(|v| num(v).and_then(|n| i32::try_from(n).ok())).collect::<Int32Array>()),
                DataType::Float64 => Arc::new(values.iter().map(|v| v.as_ref().and_then(|v| v.parse().ok())).collect::<Float64Array>()),
                DataType::Boolean => Arc::new(values.iter().map(|v| v.as_ref().map(|v| v == "t")).collect::<BooleanArray>()),
                DataType::Timestamp(..) => Arc::new(values.iter().map(num).collect::<TimestampMicrosecondArray>()),
                _ => Arc::new(values.iter().map(|v| v.as_deref()).collect::<StringArray>()),
            });
        }
        let fields: Vec<Field> = types.iter().enumerate().map(|(i, t)| Field::new(format!("c{i}"), t.clone(), true)).collect();
        let data = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        Self::try_new(data, Int8Array::from(ops))
    }

    /// The changes in [`ChangeBatch::from_pretty`]'s format (rows only, no header), so tests
    /// compare readable text.
    pub fn to_pretty(&self) -> String {
        let mut out = String::new();
        for row in 0..self.num_rows() {
            out.push(if self.op(row) == Op::Insert { '+' } else { '-' });
            for column in self.data.columns() {
                out.push(' ');
                if column.is_null(row) {
                    out.push('.');
                    continue;
                }
                let text = match column.data_type() {
                    DataType::Int64 => column.as_primitive::<Int64Type>().value(row).to_string(),
                    DataType::Int32 => column.as_primitive::<Int32Type>().value(row).to_string(),
                    DataType::Float64 => column.as_primitive::<Float64Type>().value(row).to_string(),
                    DataType::Boolean => if column.as_boolean().value(row) { "t" } else { "f" }.to_string(),
                    DataType::Timestamp(TimeUnit::Microsecond, _) => {
                        column.as_primitive::<TimestampMicrosecondType>().value(row).to_string()
                    }
                    DataType::Utf8 => column.as_string::<i32>().value(row).to_string(),
                    other => format!("<{other}>"),
                };
                out.push_str(&text);
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pretty_round_trip() {
        let text = "+ 1 a t 1.5\n- 1 a t 1.5\n+ 2 . . .\n";
        let batch = ChangeBatch::from_pretty(&format!(" I T B F\n{text}")).unwrap();
        assert_eq!(batch.num_rows(), 3);
        assert_eq!(batch.op(1), Op::Delete);
        assert_eq!(batch.to_pretty(), text);
    }

    #[test]
    fn bad_literals_and_ops_are_errors() {
        assert!(ChangeBatch::from_pretty(" I\n * 1").is_err());
        assert!(ChangeBatch::from_pretty(" I\n + x").is_err());
        assert!(ChangeBatch::from_pretty(" I I\n + 1").is_err());
        assert!(ChangeBatch::from_pretty(" Q\n + 1").is_err());
        let data = ChangeBatch::from_pretty(" I\n + 1").unwrap().data().clone();
        assert!(ChangeBatch::try_new(data.clone(), Int8Array::from(vec![0])).is_err());
        assert!(ChangeBatch::try_new(data, Int8Array::from(vec![1, 1])).is_err());
    }

    #[test]
    fn filter_keeps_ops_and_treats_null_as_false() {
        let batch = ChangeBatch::from_pretty(" I\n + 1\n - 2\n + 3").unwrap();
        let mask = BooleanArray::from(vec![Some(false), Some(true), None]);
        assert_eq!(batch.filter(&mask).unwrap().to_pretty(), "- 2\n");
    }
}
