//! Planner rewrites that give DataFusion expressions PostgreSQL's meaning where the two differ
//! in ways that would otherwise produce wrong answers.
//!
//! [`PostgresSemantics`] runs as a DataFusion `FunctionRewrite`, before type coercion, on every
//! expression of every plan (with output names preserved):
//!
//! * **Integer `+ - *` fail on overflow** (22003) instead of wrapping around: rewritten to
//!   `sluice_checked_{add,sub,mul}`, which use Arrow's checked kernels.
//! * **`numeric` meets `float` as `float`**: PostgreSQL compares and combines a numeric with a
//!   double precision as double precision; DataFusion would cast the float to a decimal (and fail
//!   on Infinity/NaN, or compare inexactly).

use std::sync::Arc;

use datafusion::arrow::compute::kernels::numeric;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{plan_err, DFSchema, Result};
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::expr_rewriter::{FunctionRewrite, NamePreserver};
use datafusion::logical_expr::LogicalPlan;
use datafusion::optimizer::AnalyzerRule;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};

/// The rewrite registered with DataFusion's analyzer.
#[derive(Debug)]
pub struct PostgresSemantics {
    add: Arc<ScalarUDF>,
    sub: Arc<ScalarUDF>,
    mul: Arc<ScalarUDF>,
}

impl PostgresSemantics {
    /// The rewrite, with its checked-arithmetic functions.
    pub fn new() -> Self {
        let udf = |op| Arc::new(ScalarUDF::from(CheckedIntegerOp::new(op)));
        Self { add: udf(CheckedOp::Add), sub: udf(CheckedOp::Sub), mul: udf(CheckedOp::Mul) }
    }
}

fn integer_rank(t: &DataType) -> Option<u8> {
    match t {
        DataType::Int8 => Some(1),
        DataType::Int16 => Some(2),
        DataType::Int32 => Some(3),
        DataType::Int64 => Some(4),
        _ => None,
    }
}

fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float16 | DataType::Float32 | DataType::Float64)
}

fn is_decimal(t: &DataType) -> bool {
    matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..))
}

/// The type of `expr`, without re-deriving the types of whole subtrees already rewritten:
/// operands of a long `a + b + c + ...` chain would otherwise be typed again at every level.
fn quick_type(expr: &Expr, schema: &DFSchema) -> Option<DataType> {
    match expr {
        Expr::ScalarFunction(f) if f.func.name().starts_with("sluice_checked_") => {
            f.args.first().and_then(|a| quick_type(a, schema))
        }
        Expr::Cast(c) => Some(c.field.data_type().clone()),
        Expr::TryCast(c) => Some(c.field.data_type().clone()),
        Expr::Alias(a) => quick_type(&a.expr, schema),
        other => other.get_type(schema).ok(),
    }
}

fn is_comparison(op: Operator) -> bool {
    matches!(
        op,
        Operator::Eq | Operator::NotEq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
            | Operator::IsDistinctFrom | Operator::IsNotDistinctFrom
    )
}

fn cast_if_needed(expr: Expr, from: &DataType, to: &DataType) -> Expr {
    if from == to {
        expr
    } else {
        Expr::Cast(datafusion::logical_expr::Cast::new(Box::new(expr), to.clone()))
    }
}

impl FunctionRewrite for PostgresSemantics {
    fn name(&self) -> &str {
        "sluice_postgres_semantics"
    }

    fn rewrite(&self, expr: Expr, schema: &DFSchema, _config: &ConfigOptions) -> Result<Transformed<Expr>> {
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (Some(lt), Some(rt)) = (quick_type(&left, schema), quick_type(&right, schema)) else {
                    return Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr { left, op, right })));
                };
                if let (Some(lr), Some(rr)) = (integer_rank(&lt), integer_rank(&rt)) {
                    let udf = match op {
                        Operator::Plus => Some(&self.add),
                        Operator::Minus => Some(&self.sub),
                        Operator::Multiply => Some(&self.mul),
                        _ => None,
                    };
                    if let Some(udf) = udf {
                        let wider = if lr >= rr { lt.clone() } else { rt.clone() };
                        let args = vec![cast_if_needed(*left, &lt, &wider), cast_if_needed(*right, &rt, &wider)];
                        return Ok(Transformed::yes(udf.call(args)));
                    }
                }
                let mixes_numeric_and_float =
                    (is_float(&lt) && is_decimal(&rt)) || (is_decimal(&lt) && is_float(&rt));
                if mixes_numeric_and_float && (is_comparison(op) || op.is_numerical_operators()) {
                    let left = cast_if_needed(*left, &lt, &DataType::Float64);
                    let right = cast_if_needed(*right, &rt, &DataType::Float64);
                    return Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(Box::new(left), op, Box::new(right)))));
                }
                Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr { left, op, right })))
            }
            other => Ok(Transformed::no(other)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum CheckedOp {
    Add,
    Sub,
    Mul,
}

/// `a + b`, `a - b` or `a * b` on integers of one type, failing on overflow as PostgreSQL does.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CheckedIntegerOp {
    op: CheckedOp,
    name: &'static str,
    signature: Signature,
}

impl CheckedIntegerOp {
    fn new(op: CheckedOp) -> Self {
        let name = match op {
            CheckedOp::Add => "sluice_checked_add",
            CheckedOp::Sub => "sluice_checked_sub",
            CheckedOp::Mul => "sluice_checked_mul",
        };
        Self { op, name, signature: Signature::any(2, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for CheckedIntegerOp {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [a, b] if a == b && integer_rank(a).is_some() => Ok(a.clone()),
            other => plan_err!("{} expects two integers of one type, got {other:?}", self.name),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [a, b] = arrays.as_slice() else {
            return plan_err!("{} expects two arguments", self.name);
        };
        let result = match self.op {
            CheckedOp::Add => numeric::add(a, b)?,
            CheckedOp::Sub => numeric::sub(a, b)?,
            CheckedOp::Mul => numeric::mul(a, b)?,
        };
        let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        if all_scalar {
            Ok(ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&result, 0)?))
        } else {
            Ok(ColumnarValue::Array(result))
        }
    }
}

/// `sum(bigint)` is `numeric` in PostgreSQL, so large totals do not wrap around: this analyzer
/// rule (run after type coercion) casts a bigint argument of `sum` to `DECIMAL(38,0)`, keeps
/// the aggregate's output name, and recomputes the schemas above it.
#[derive(Debug, Default)]
pub struct NumericBigintSums;

impl AnalyzerRule for NumericBigintSums {
    fn name(&self) -> &str {
        "sluice_numeric_bigint_sums"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let rewritten = plan.transform_up_with_subqueries(|plan| {
            let plan = if let LogicalPlan::Aggregate(_) = &plan {
                let input_schema = Arc::clone(plan.inputs()[0].schema());
                let names = NamePreserver::new(&plan);
                plan.map_expressions(|expr| {
                    let saved = names.save(&expr);
                    let rewritten = expr.transform(|e| match e {
                        Expr::AggregateFunction(mut agg)
                            if agg.func.name() == "sum"
                                && agg.params.args.len() == 1
                                && agg.params.args[0].get_type(&input_schema).ok() == Some(DataType::Int64) =>
                        {
                            let arg = agg.params.args.remove(0);
                            agg.params.args.push(cast_if_needed(arg, &DataType::Int64, &DataType::Decimal128(38, 0)));
                            Ok(Transformed::yes(Expr::AggregateFunction(agg)))
                        }
                        other => Ok(Transformed::no(other)),
                    })?;
                    Ok(rewritten.update_data(|e| saved.restore(e)))
                })?
            } else {
                Transformed::no(plan)
            };
            // Schemas above a rewritten aggregate change type: recompute on the way up.
            Ok(Transformed::yes(plan.data.recompute_schema()?))
        })?;
        Ok(rewritten.data)
    }
}
