//! [`ProjectOperator`]: computes the output columns of each change.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::physical_expr::PhysicalExpr;

use super::{evaluate, Operator};
use crate::{ChangeBatch, EngineResult};

/// `SELECT expr, ...` over a changelog.
///
/// Semantics with retractions: each change keeps its op and gets its row mapped through the
/// expressions; since they are deterministic, a delete maps to exactly the row its insert
/// mapped to. Stateless.
#[derive(Debug)]
pub struct ProjectOperator {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
}

impl ProjectOperator {
    /// A projection computing `exprs` (named) over rows of `input`.
    pub fn try_new(exprs: Vec<(Arc<dyn PhysicalExpr>, String)>, input: &Schema) -> EngineResult<Self> {
        let mut fields = Vec::with_capacity(exprs.len());
        for (expr, name) in &exprs {
            let t = expr.data_type(input)?;
            let nullable = expr.nullable(input)?;
            fields.push(Field::new(name, t, nullable));
        }
        Ok(Self { exprs: exprs.into_iter().map(|(e, _)| e).collect(), schema: Arc::new(Schema::new(fields)) })
    }

    /// The schema of the output rows.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
}

impl Operator for ProjectOperator {
    fn name(&self) -> &str {
        "Project"
    }

    fn process(&mut self, changes: ChangeBatch) -> EngineResult<Vec<ChangeBatch>> {
        let columns = self.exprs.iter().map(|e| evaluate(e, changes.data())).collect::<EngineResult<Vec<ArrayRef>>>()?;
        Ok(vec![changes.with_columns(Arc::clone(&self.schema), columns)?])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::logical_expr::Operator as BinaryOp;
    use datafusion::physical_expr::expressions::{binary, col, lit};

    #[test]
    fn maps_rows_and_keeps_ops() {
        let input = ChangeBatch::from_pretty(" I T\n + 1 a\n - 1 a\n + . b").unwrap();
        let schema = input.schema();
        let doubled = binary(col("c0", &schema).unwrap(), BinaryOp::Multiply, lit(2i64), &schema).unwrap();
        let mut project = ProjectOperator::try_new(
            vec![(col("c1", &schema).unwrap(), "name".into()), (doubled, "twice".into())],
            &schema,
        )
        .unwrap();
        let out = project.process(input).unwrap();
        assert_eq!(out[0].to_pretty(), "+ a 2\n- a 2\n+ b .\n");
        assert_eq!(project.schema().field(1).name(), "twice");
    }
}
