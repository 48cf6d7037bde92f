//! Planner rewrites that give DataFusion expressions PostgreSQL's meaning where the two differ
//! in ways that would otherwise produce wrong answers.
//!
//! [`PostgresSemantics`] runs as a DataFusion `FunctionRewrite`, before type coercion, on every
//! expression of every plan (with output names preserved):
//!
//! * **Integer `+ - *` fail on overflow** (22003) instead of wrapping around: rewritten to
//!   `sluice_checked_{add,sub,mul}`, which use Arrow's checked kernels.
//! * **Timestamps and floats cast to text read as PostgreSQL prints them** (`2026-01-02
//!   03:04:05`, `1e+20`), through `sluice_pg_text`.
//! * **`numeric` meets `float` as `float`**: PostgreSQL compares and combines a numeric with a
//!   double precision as double precision; DataFusion would cast the float to a decimal (and fail
//!   on Infinity/NaN, or compare inexactly).

use std::sync::Arc;

use datafusion::arrow::compute::kernels::numeric;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{plan_err, DFSchema, Result, ScalarValue};
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::expr_rewriter::FunctionRewrite;
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
    text: Arc<ScalarUDF>,
}

impl PostgresSemantics {
    /// The rewrite, with its checked-arithmetic functions.
    pub fn new() -> Self {
        let udf = |op| Arc::new(ScalarUDF::from(CheckedIntegerOp::new(op)));
        Self {
            add: udf(CheckedOp::Add),
            sub: udf(CheckedOp::Sub),
            mul: udf(CheckedOp::Mul),
            text: Arc::new(ScalarUDF::from(PostgresText::default())),
        }
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

/// The type PostgreSQL gives an integer literal next to `other`: int4 when the value fits in
/// int4 and `other` is at most int4 (or is itself a literal that fits), else its own type.
fn narrowed_literal_type(expr: &Expr, own: &DataType, other: &Expr, other_type: &DataType) -> DataType {
    let fits_int4 = |e: &Expr| matches!(e, Expr::Literal(ScalarValue::Int64(Some(v)), _) if i32::try_from(*v).is_ok());
    if fits_int4(expr) && (integer_rank(other_type).is_some_and(|r| r <= 3) || fits_int4(other)) {
        return DataType::Int32;
    }
    own.clone()
}

/// `expr` as type `to`: a literal is converted in place (so it stays a literal), anything else
/// is cast when its type differs.
fn cast_literal_or_expr(expr: Expr, to: &DataType) -> Expr {
    if let Expr::Literal(value, meta) = &expr {
        if let Ok(converted) = value.cast_to(to) {
            return Expr::Literal(converted, meta.clone());
        }
    }
    Expr::Cast(datafusion::logical_expr::Cast::new(Box::new(expr), to.clone()))
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
                        // PostgreSQL types an integer literal as int4 when it fits: `int_col + 1`
                        // stays int4 (and overflows as int4), `2147483647 + 1` overflows.
                        let (lt, rt) = (narrowed_literal_type(&left, &lt, &right, &rt), narrowed_literal_type(&right, &rt, &left, &lt));
                        let (lr, rr) = (integer_rank(&lt).unwrap_or(lr), integer_rank(&rt).unwrap_or(rr));
                        let wider = if lr >= rr { lt.clone() } else { rt.clone() };
                        let args = vec![
                            cast_literal_or_expr(*left, &wider),
                            cast_literal_or_expr(*right, &wider),
                        ];
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
            Expr::Cast(cast)
                if matches!(cast.field.data_type(), DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) =>
            {
                let source = quick_type(&cast.expr, schema);
                if source.as_ref().is_some_and(PostgresText::formats) {
                    let text = self.text.call(vec![*cast.expr]);
                    let text = cast_if_needed(text, &DataType::Utf8, cast.field.data_type());
                    return Ok(Transformed::yes(text));
                }
                Ok(Transformed::no(Expr::Cast(cast)))
            }
            other => Ok(Transformed::no(other)),
        }
    }
}

/// `value::text` for the types whose PostgreSQL text differs from Arrow's cast (timestamps,
/// floats).
#[derive(Debug, PartialEq, Eq, Hash)]
struct PostgresText {
    signature: Signature,
}

impl Default for PostgresText {
    fn default() -> Self {
        Self { signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl PostgresText {
    fn formats(t: &DataType) -> bool {
        matches!(t, DataType::Timestamp(..) | DataType::Float32 | DataType::Float64)
    }
}

impl ScalarUDFImpl for PostgresText {
    fn name(&self) -> &str {
        "sluice_pg_text"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::array::{Array, AsArray, StringArray};
        use datafusion::arrow::datatypes::{Float32Type, Float64Type, TimeUnit, TimestampMicrosecondType};
        let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(array) = arrays.first() else { return plan_err!("sluice_pg_text expects one argument") };
        let text: StringArray = match array.data_type() {
            DataType::Float64 => array.as_primitive::<Float64Type>().iter().map(|v| v.map(crate::pgtext::float8)).collect(),
            DataType::Float32 => array.as_primitive::<Float32Type>().iter().map(|v| v.map(crate::pgtext::float4)).collect(),
            DataType::Timestamp(_, zone) => {
                let micros = datafusion::arrow::compute::cast(array, &DataType::Timestamp(TimeUnit::Microsecond, zone.clone()))?;
                let micros = micros.as_primitive::<TimestampMicrosecondType>();
                let format = if zone.is_some() { crate::pgtext::timestamptz } else { crate::pgtext::timestamp };
                micros.iter().map(|v| v.and_then(format)).collect()
            }
            other => return plan_err!("sluice_pg_text cannot format {other}"),
        };
        if all_scalar && text.len() == 1 {
            Ok(ColumnarValue::Scalar(datafusion::common::ScalarValue::Utf8(text.is_valid(0).then(|| text.value(0).to_string()))))
        } else {
            Ok(ColumnarValue::Array(Arc::new(text)))
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

/// `bigint` as `DECIMAL(38,0)`, the argument of a checked `sum(bigint)`.
///
/// Why not a `CAST`: Arrow's integer-to-decimal cast checks every value against the target
/// precision, which no `bigint` can exceed (19 digits of 38); on a scan-and-sum that check cost
/// as much as the sum. This widens without it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct BigintToNumeric {
    signature: Signature,
}

impl Default for BigintToNumeric {
    fn default() -> Self {
        Self { signature: Signature::exact(vec![DataType::Int64], Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for BigintToNumeric {
    fn name(&self) -> &str {
        "sluice_bigint_to_numeric"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Decimal128(38, 0))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::{Decimal128Type, Int64Type};
        match args.args.as_slice() {
            [ColumnarValue::Scalar(ScalarValue::Int64(v))] => {
                Ok(ColumnarValue::Scalar(ScalarValue::Decimal128(v.map(i128::from), 38, 0)))
            }
            [ColumnarValue::Array(array)] if array.data_type() == &DataType::Int64 => {
                let widened = array
                    .as_primitive::<Int64Type>()
                    .unary::<_, Decimal128Type>(i128::from)
                    .with_precision_and_scale(38, 0)?;
                Ok(ColumnarValue::Array(Arc::new(widened)))
            }
            other => plan_err!("sluice_bigint_to_numeric expects one bigint, got {other:?}"),
        }
    }
}

/// `sum` over `bigint` fails on overflow (22003) instead of wrapping around.
///
/// PostgreSQL's `sum(bigint)` is `numeric` and never overflows; DataFusion's wraps silently. This
/// analyzer rule (run after type coercion) sums such arguments as `DECIMAL(38,0)` (widened by
/// `sluice_bigint_to_numeric`) and casts the
/// total back to `bigint` in a projection right above the aggregate, so every expression above
/// keeps the type it was planned with and a total beyond `bigint` is an error, never a wrong
/// number.
#[derive(Debug, Default)]
pub struct CheckedBigintSums;

impl AnalyzerRule for CheckedBigintSums {
    fn name(&self) -> &str {
        "sluice_checked_bigint_sums"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        Ok(plan.transform_up_with_subqueries(checked_sums)?.data)
    }
}

fn is_bigint_sum(expr: &Expr, input: &DFSchema) -> bool {
    let agg = match expr {
        Expr::Alias(a) => return is_bigint_sum(&a.expr, input),
        Expr::AggregateFunction(agg) => agg,
        _ => return false,
    };
    agg.func.name() == "sum" && agg.params.args.len() == 1 && agg.params.args[0].get_type(input).ok() == Some(DataType::Int64)
}

fn checked_sums(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Aggregate(aggregate) = plan else { return Ok(Transformed::no(plan)) };
    let input_schema = Arc::clone(aggregate.input.schema());
    if !aggregate.aggr_expr.iter().any(|e| is_bigint_sum(e, &input_schema)) {
        return Ok(Transformed::no(LogicalPlan::Aggregate(aggregate)));
    }
    let group_count = aggregate.group_expr.len();
    let mut widened = Vec::new();
    let mut aggr_expr = Vec::with_capacity(aggregate.aggr_expr.len());
    for (i, expr) in aggregate.aggr_expr.iter().enumerate() {
        if is_bigint_sum(expr, &input_schema) {
            let name = expr.schema_name().to_string();
            let decimal = expr.clone().transform(|e| match e {
                Expr::AggregateFunction(mut agg) => {
                    let arg = agg.params.args.remove(0);
                    agg.params.args.push(Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
                        Arc::new(ScalarUDF::new_from_impl(BigintToNumeric::default())),
                        vec![arg],
                    )));
                    Ok(Transformed::new(Expr::AggregateFunction(agg), true, datafusion::common::tree_node::TreeNodeRecursion::Stop))
                }
                other => Ok(Transformed::no(other)),
            })?;
            aggr_expr.push(decimal.data.alias(name));
            widened.push(group_count + i);
        } else {
            aggr_expr.push(expr.clone());
        }
    }
    let original_schema = Arc::clone(&aggregate.schema);
    let widened_plan = LogicalPlan::Aggregate(datafusion::logical_expr::Aggregate::try_new(
        Arc::clone(&aggregate.input),
        aggregate.group_expr.clone(),
        aggr_expr,
    )?);
    // Same names and types as the original aggregate's output: the sums come back as bigint.
    let projection = widened_plan
        .schema()
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            let column = Expr::Column(datafusion::common::Column::from((qualifier, field)));
            if widened.contains(&i) {
                let (_, original) = original_schema.qualified_field(i);
                cast_if_needed(column, field.data_type(), &DataType::Int64).alias(original.name().clone())
            } else {
                column
            }
        })
        .collect();
    let projected = LogicalPlan::Projection(datafusion::logical_expr::Projection::try_new(projection, Arc::new(widened_plan))?);
    Ok(Transformed::yes(projected))
}
