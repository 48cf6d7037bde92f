//! [`UnionOperator`]: `UNION ALL` of several inputs.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;

use super::Operator;
use crate::{ChangeBatch, EngineError, EngineResult};

/// Concatenates the changes of all its inputs.
///
/// Semantics with retractions: the union of multisets is their sum, so every change of every
/// input passes unchanged (renamed to the output schema). Stateless. Inputs have the same
/// column types: the planner coerces them as DataFusion does for the batch query.
#[derive(Debug)]
pub struct UnionOperator {
    schema: SchemaRef,
}

impl UnionOperator {
    /// A union emitting rows of `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        Self { schema }
    }
}

impl Operator for UnionOperator {
    fn name(&self) -> &str {
        "Union"
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
