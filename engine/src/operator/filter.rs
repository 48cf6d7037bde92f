//! [`FilterOperator`]: keeps the changes whose row satisfies a predicate.

use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::physical_expr::PhysicalExpr;

use super::{evaluate, Operator};
use crate::watermark::Watermark;
use crate::{ChangeBatch, EngineError, EngineResult};

/// `WHERE predicate` over a changelog.
///
/// Semantics with retractions: a change passes iff its row satisfies the predicate, whatever
/// its op. Because the predicate is deterministic, the delete of a row passes exactly when its
/// earlier insert did, so the output is itself a valid changelog. NULL counts as false, as in
/// SQL. Stateless.
#[derive(Debug)]
pub struct FilterOperator {
    predicate: Arc<dyn PhysicalExpr>,
}

impl FilterOperator {
    /// A filter on `predicate`, which must be boolean.
    pub fn try_new(predicate: Arc<dyn PhysicalExpr>, input: &datafusion::arrow::datatypes::Schema) -> EngineResult<Self> {
        let t = predicate.data_type(input)?;
        if t != DataType::Boolean {
            return Err(EngineError::Invalid(format!("filter predicate must be boolean, is {t}")));
        }
        Ok(Self { predicate })
    }
}

impl Operator for FilterOperator {
    fn name(&self) -> &str {
        "Filter"
    }

    /// A filter keeps some rows and changes none: every promise holds for its output.
    fn on_watermark(&mut self, _input: usize, watermark: Watermark) -> EngineResult<Vec<Watermark>> {
        Ok(vec![watermark])
    }

    fn process(&mut self, changes: ChangeBatch) -> EngineResult<Vec<ChangeBatch>> {
        let mask = evaluate(&self.predicate, changes.data())?;
        let kept = changes.filter(mask.as_boolean())?;
        Ok(if kept.num_rows() == 0 { vec![] } else { vec![kept] })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::logical_expr::Operator as BinaryOp;
    use datafusion::physical_expr::expressions::{binary, col, lit};

    #[test]
    fn keeps_matching_inserts_and_their_retractions() {
        let input = ChangeBatch::from_pretty(" I T\n + 1 a\n + 5 b\n - 5 b\n + . c\n - 1 a\n + 7 d").unwrap();
        let schema = input.schema();
        let predicate = binary(col("c0", &schema).unwrap(), BinaryOp::Gt, lit(2i64), &schema).unwrap();
        let mut filter = FilterOperator::try_new(predicate, &schema).unwrap();
        let out = filter.process(input).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to_pretty(), "+ 5 b\n- 5 b\n+ 7 d\n");
    }

    #[test]
    fn nothing_out_for_nothing_matching_and_non_boolean_refused() {
        let input = ChangeBatch::from_pretty(" I\n + 1").unwrap();
        let schema = input.schema();
        let never = binary(col("c0", &schema).unwrap(), BinaryOp::Gt, lit(9i64), &schema).unwrap();
        assert!(FilterOperator::try_new(never, &schema).unwrap().process(input).unwrap().is_empty());
        assert!(FilterOperator::try_new(col("c0", &schema).unwrap(), &schema).is_err());
    }
}
