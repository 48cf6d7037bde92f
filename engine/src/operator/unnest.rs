//! [`UnnestOperator`]: one row per element of a list column.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int8Array, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, SchemaRef};

use super::Operator;
use crate::watermark::Watermark;
use crate::{ChangeBatch, EngineError, EngineResult};

/// `unnest(list)`: each input row becomes one row per element of its list, the other columns
/// repeated. `HOP` windows are planned as the unnest of the list of windows a row falls in.
///
/// Semantics with retractions: a change's op is copied to each of its rows; the expansion is
/// deterministic, so a delete expands to exactly the rows its insert did. Stateless.
#[derive(Debug)]
pub struct UnnestOperator {
    list_column: usize,
    sources: Vec<usize>,
    preserve_nulls: bool,
    schema: SchemaRef,
}

impl UnnestOperator {
    /// Unnests input column `list_column`; output column `j` comes from input column
    /// `sources[j]` (the element when it is the list column).
    pub fn try_new(list_column: usize, sources: Vec<usize>, preserve_nulls: bool, schema: SchemaRef) -> EngineResult<Self> {
        if sources.len() != schema.fields().len() {
            return Err(EngineError::Invalid("unnest: one source column per output column".into()));
        }
        Ok(Self { list_column, sources, preserve_nulls, schema })
    }
}

impl Operator for UnnestOperator {
    fn name(&self) -> &str {
        "Unnest"
    }

    /// Output columns copy input columns (the element column copies the list's elements, and
    /// a promise about a list column bounds all its elements), so promises follow the copies.
    fn on_watermark(&mut self, _input: usize, watermark: Watermark) -> EngineResult<Vec<Watermark>> {
        Ok(self
            .sources
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == watermark.column)
            .map(|(j, _)| Watermark { column: j, value: watermark.value })
            .collect())
    }

    fn process(&mut self, changes: ChangeBatch) -> EngineResult<Vec<ChangeBatch>> {
        let data = changes.data();
        let list = data
            .columns()
            .get(self.list_column)
            .ok_or_else(|| EngineError::Invalid("unnest column outside the input".into()))?;
        let (offsets, values): (Vec<usize>, ArrayRef) = match list.data_type() {
            DataType::List(_) => {
                let l = list.as_list::<i32>();
                (l.value_offsets().iter().map(|o| *o as usize).collect(), Arc::clone(l.values()))
            }
            DataType::LargeList(_) => {
                let l = list.as_list::<i64>();
                (l.value_offsets().iter().map(|o| *o as usize).collect(), Arc::clone(l.values()))
            }
            other => return Err(EngineError::Invalid(format!("unnest of a {other} column"))),
        };
        let mut rows = Vec::new();
        // `None` picks a NULL element (a NULL list kept by `preserve_nulls`).
        let mut elements: Vec<Option<u32>> = Vec::new();
        for row in 0..data.num_rows() {
            if list.is_null(row) {
                if self.preserve_nulls {
                    rows.push(row as u32);
                    elements.push(None);
                }
                continue;
            }
            for element in offsets[row]..offsets[row + 1] {
                rows.push(row as u32);
                elements.push(Some(element as u32));
            }
        }
        if rows.is_empty() {
            return Ok(vec![]);
        }
        let rows = UInt32Array::from(rows);
        let elements = UInt32Array::from(elements);
        let mut columns = Vec::with_capacity(self.sources.len());
        for source in &self.sources {
            columns.push(if *source == self.list_column {
                take(values.as_ref(), &elements, None)?
            } else {
                take(data.column(*source).as_ref(), &rows, None)?
            });
        }
        let ops = take(changes.ops(), &rows, None)?;
        let ops: Int8Array = ops.as_primitive::<datafusion::arrow::datatypes::Int8Type>().clone();
        Ok(vec![ChangeBatch::try_new(
            datafusion::arrow::array::RecordBatch::try_new(Arc::clone(&self.schema), columns)?,
            ops,
        )?])
    }
}
