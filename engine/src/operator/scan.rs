//! [`ScanOperator`]: the entry of a relation's changes into a view.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::SchemaRef;

use super::Operator;
use crate::watermark::Watermark;
use crate::{ChangeBatch, EngineError, EngineResult};

/// Reads a relation's changes, keeping the columns the view uses (projection pushed into the
/// scan by the planner) under the names the plan gave them.
///
/// Semantics with retractions: every change passes with its op. Stateless. The snapshot part
/// of "snapshot, then changes" is not this operator's: the dataflow feeds a new view the
/// relation's contents as inserts before its first live change (see `dataflow`).
#[derive(Debug)]
pub struct ScanOperator {
    columns: Vec<usize>,
    schema: SchemaRef,
}

impl ScanOperator {
    /// A scan keeping `columns` (positions in the relation) as the fields of `schema`.
    pub fn try_new(columns: Vec<usize>, schema: SchemaRef) -> EngineResult<Self> {
        if columns.len() != schema.fields().len() {
            return Err(EngineError::Invalid(format!(
                "scan of {} columns into a schema of {}",
                columns.len(),
                schema.fields().len()
            )));
        }
        Ok(Self { columns, schema })
    }
}

impl Operator for ScanOperator {
    fn name(&self) -> &str {
        "Scan"
    }

    /// A promise about relation column `c` holds for every output column kept from it.
    fn on_watermark(&mut self, _input: usize, watermark: Watermark) -> EngineResult<Vec<Watermark>> {
        Ok(self
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| **c == watermark.column)
            .map(|(i, _)| Watermark { column: i, value: watermark.value })
            .collect())
    }

    fn process(&mut self, changes: ChangeBatch) -> EngineResult<Vec<ChangeBatch>> {
        let data = changes.data();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (i, field) in self.columns.iter().zip(self.schema.fields()) {
            let column = data.columns().get(*i).ok_or_else(|| {
                EngineError::Invalid(format!("scan column {i} is outside a relation of {} columns", data.num_columns()))
            })?;
            if column.data_type() != field.data_type() {
                return Err(EngineError::Invalid(format!(
                    "scan column {i} is {}, the plan expects {}",
                    column.data_type(),
                    field.data_type()
                )));
            }
            columns.push(Arc::clone(column));
        }
        Ok(vec![changes.with_columns(Arc::clone(&self.schema), columns)?])
    }
}
