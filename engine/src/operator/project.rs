//! [`ProjectOperator`]: computes the output columns of each change.

use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, Array, ArrayRef, AsArray, RecordBatch, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMicrosecondType};
use datafusion::physical_expr::PhysicalExpr;

use super::{evaluate, Operator};
use crate::watermark::{is_event_time_type, Watermark};
use crate::{ChangeBatch, EngineError, EngineResult};

/// `SELECT expr, ...` over a changelog.
///
/// Semantics with retractions: each change keeps its op and gets its row mapped through the
/// expressions; since they are deterministic, a delete maps to exactly the row its insert
/// mapped to. Stateless.
///
/// Watermarks: an output expression that is a non-decreasing function of one input column
/// (see [`crate::watermark::monotone_column`]) turns a promise `column ≥ w` into the promise
/// `output ≥ f(w)`, computed by evaluating the expression itself on `w`. For a list (HOP's
/// windows) the promise is about every element, so it is the list's smallest element.
#[derive(Debug)]
pub struct ProjectOperator {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
    input: SchemaRef,
    /// Per output column: the input column it is a non-decreasing function of, if any.
    monotone_in: Vec<Option<usize>>,
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
        let monotone_in = vec![None; exprs.len()];
        Ok(Self {
            exprs: exprs.into_iter().map(|(e, _)| e).collect(),
            schema: Arc::new(Schema::new(fields)),
            input: Arc::new(input.clone()),
            monotone_in,
        })
    }

    /// Declares, per output column, the input column its expression is a non-decreasing
    /// function of (the planner's analysis of the logical expressions).
    pub fn with_monotone_columns(mut self, monotone_in: Vec<Option<usize>>) -> EngineResult<Self> {
        if monotone_in.len() != self.exprs.len() {
            return Err(EngineError::Invalid("one monotonicity entry per projected column".into()));
        }
        self.monotone_in = monotone_in;
        Ok(self)
    }

    /// The value of output column `output` for a row whose column `column` is `value` and
    /// whose other columns are NULL (the watermark's image), as a time.
    fn image(&self, output: usize, column: usize, value: i64) -> EngineResult<Option<i64>> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.input.fields().len());
        for (i, field) in self.input.fields().iter().enumerate() {
            if i == column {
                let DataType::Timestamp(_, tz) = field.data_type() else { return Ok(None) };
                columns.push(Arc::new(TimestampMicrosecondArray::from(vec![value]).with_timezone_opt(tz.clone())));
            } else {
                columns.push(new_null_array(field.data_type(), 1));
            }
        }
        // Every other column is NULL, so the image row's schema lets every column be.
        let nullable: Vec<Field> = self.input.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
        let row = RecordBatch::try_new(Arc::new(Schema::new(nullable)), columns)?;
        let image = evaluate(&self.exprs[output], &row)?;
        let smallest = |values: &ArrayRef| -> Option<i64> {
            if !is_event_time_type(values.data_type()) {
                return None;
            }
            let times = values.as_primitive::<TimestampMicrosecondType>();
            (0..times.len()).filter(|i| times.is_valid(*i)).map(|i| times.value(i)).min()
        };
        Ok(match image.data_type() {
            DataType::List(_) if image.is_valid(0) => smallest(&image.as_list::<i32>().value(0)),
            DataType::LargeList(_) if image.is_valid(0) => smallest(&image.as_list::<i64>().value(0)),
            _ if image.is_valid(0) => smallest(&image),
            _ => None,
        })
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

    fn on_watermark(&mut self, _input: usize, watermark: Watermark) -> EngineResult<Vec<Watermark>> {
        let mut out = Vec::new();
        for output in 0..self.exprs.len() {
            if self.monotone_in[output] != Some(watermark.column) {
                continue;
            }
            if let Some(value) = self.image(output, watermark.column, watermark.value)? {
                out.push(Watermark { column: output, value });
            }
        }
        Ok(out)
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
