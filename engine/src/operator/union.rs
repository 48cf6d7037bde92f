//! [`UnionOperator`]: `UNION ALL` of several inputs.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;

use super::Operator;
use crate::watermark::Watermark;
use crate::{ChangeBatch, EngineError, EngineResult};

/// Concatenates the changes of all its inputs.
///
/// Semantics with retractions: the union of multisets is their sum, so every change of every
/// input passes unchanged (renamed to the output schema). Stateless but for watermarks: a
/// column's promise holds for the union only once every input made one, and it is the
/// smallest of them. Inputs have the same column types: the planner coerces them as DataFusion
/// does for the batch query.
#[derive(Debug)]
pub struct UnionOperator {
    schema: SchemaRef,
    inputs: usize,
    /// Per column: each input's latest promise.
    watermarks: HashMap<usize, Vec<Option<i64>>>,
    /// Per column: the promise made downstream.
    emitted: HashMap<usize, i64>,
}

impl UnionOperator {
    /// A union of `inputs` inputs emitting rows of `schema`.
    pub fn new(schema: SchemaRef, inputs: usize) -> Self {
        Self { schema, inputs: inputs.max(1), watermarks: HashMap::new(), emitted: HashMap::new() }
    }
}

impl Operator for UnionOperator {
    fn name(&self) -> &str {
        "Union"
    }

    fn on_watermark(&mut self, input: usize, watermark: Watermark) -> EngineResult<Vec<Watermark>> {
        let per_input = self.watermarks.entry(watermark.column).or_insert_with(|| vec![None; self.inputs]);
        let Some(slot) = per_input.get_mut(input) else {
            return Err(EngineError::Invalid(format!("union has no input {input}")));
        };
        *slot = Some(slot.map_or(watermark.value, |v| v.max(watermark.value)));
        let Some(min) = per_input.iter().copied().collect::<Option<Vec<i64>>>().and_then(|v| v.into_iter().min()) else {
            return Ok(Vec::new());
        };
        let emitted = self.emitted.get(&watermark.column).copied();
        if emitted.is_some_and(|e| e >= min) {
            return Ok(Vec::new());
        }
        self.emitted.insert(watermark.column, min);
        Ok(vec![Watermark { column: watermark.column, value: min }])
    }

    fn process(&mut self, changes: ChangeBatch) -> EngineResult<Vec<ChangeBatch>> {
        let types = changes.data().columns().iter().map(|c| c.data_type());
        if changes.data().num_columns() != self.schema.fields().len()
            || !types.eq(self.schema.fields().iter().map(|f| f.data_type()))
        {
            return Err(EngineError::Invalid("union input does not match the union's schema".into()));
        }
        Ok(vec![changes.with_columns(Arc::clone(&self.schema), changes.data().columns().to_vec())?])
    }
}
