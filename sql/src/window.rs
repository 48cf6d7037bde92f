//! The window table functions `TUMBLE(rel, time_col, size [, offset])` and
//! `HOP(rel, time_col, slide, size)`.
//!
//! Why they plan into ordinary relational operators: a tumbling window is a function of the
//! row (`window_start = start of the window containing time_col`), so TUMBLE is a projection;
//! a hopping window puts each row in `size / slide` windows, so HOP is a projection to the
//! list of those windows and an unnest. Batch queries (DataFusion) and views (the stream
//! planner) then run the same plan through operators they already have, and a view's answer
//! equals the batch answer by construction.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, ListBuilder, PrimitiveBuilder};
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit, TimestampMicrosecondType};
use datafusion::common::{DFSchema, Result, ScalarValue, UnnestOptions};
use datafusion::logical_expr::planner::{PlannedRelation, RelationPlanner, RelationPlannerContext, RelationPlanning};
use datafusion::logical_expr::{
    col, lit, ExprSchemable, ColumnarValue, Expr, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::sql::sqlparser::ast::{self, FunctionArg, FunctionArgExpr, TableFactor};

use crate::database::{CATALOG_NAME, SCHEMA_NAME};
use crate::error::{to_datafusion, SqlError};
use datafusion::catalog::{CatalogProviderList, TableProvider};
use datafusion::common::TableReference;
use datafusion::datasource::provider_as_source;

/// Name of the column TUMBLE and HOP add for the window's start.
pub const WINDOW_START: &str = "window_start";
/// Name of the column TUMBLE and HOP add for the window's end (exclusive).
pub const WINDOW_END: &str = "window_end";

/// Plans `TUMBLE(...)` and `HOP(...)` in FROM.
#[derive(Debug)]
pub struct WindowRelationPlanner {
    catalogs: Arc<dyn CatalogProviderList>,
}

impl WindowRelationPlanner {
    /// A planner resolving relation names in `catalogs`.
    pub fn new(catalogs: Arc<dyn CatalogProviderList>) -> Self {
        Self { catalogs }
    }

    fn resolve(&self, reference: &TableReference) -> Result<Arc<dyn TableProvider>> {
        let missing = || to_datafusion(SqlError::UndefinedTable(reference.table().to_string()));
        let catalog = self.catalogs.catalog(reference.catalog().unwrap_or(CATALOG_NAME)).ok_or_else(missing)?;
        let schema = catalog.schema(reference.schema().unwrap_or(SCHEMA_NAME)).ok_or_else(missing)?;
        // The catalog is in memory: the lookup completes at once.
        futures::executor::block_on(schema.table(reference.table()))?.ok_or_else(missing)
    }
}

fn invalid(message: impl Into<String>) -> datafusion::error::DataFusionError {
    to_datafusion(SqlError::InvalidParameterValue(message.into()))
}

/// The microseconds of a constant interval argument.
fn interval_micros(function: &str, what: &str, expr: &Expr) -> Result<i64> {
    let micros = match expr {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) => {
            if v.months != 0 {
                return Err(invalid(format!("{function} {what} must not be given in months or years")));
            }
            i64::from(v.days) * 86_400_000_000 + v.nanoseconds / 1_000
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => {
            i64::from(v.days) * 86_400_000_000 + i64::from(v.milliseconds) * 1_000
        }
        Expr::Cast(cast) => return interval_micros(function, what, &cast.expr),
        other => return Err(invalid(format!("{function} {what} must be a constant interval, not {other}"))),
    };
    Ok(micros)
}

fn unnamed_expr(function: &str, arg: &FunctionArg) -> Result<ast::Expr> {
    match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
        other => Err(invalid(format!("{function}: unsupported argument {other}"))),
    }
}

impl WindowRelationPlanner {
    /// `SESSION(relation, time_column, gap [, key ...])`: the keys are the other GROUP BY
    /// columns of the query (added by the session's rewrite before planning) or given here.
    fn plan_session(
        &self,
        args: &ast::TableFunctionArgs,
        alias: &Option<ast::TableAlias>,
        context: &mut dyn RelationPlannerContext,
    ) -> Result<RelationPlanning> {
        if args.args.len() < 3 {
            return Err(to_datafusion(SqlError::Windowing(format!(
                "SESSION takes (relation, time_column, gap): the gap {} missing",
                if args.args.len() < 2 { "and the time column are" } else { "is" }
            ))));
        }
        let relation_name = match unnamed_expr("SESSION", &args.args[0])? {
            ast::Expr::Identifier(ident) => ast::ObjectName::from(vec![ident]),
            ast::Expr::CompoundIdentifier(parts) => ast::ObjectName::from(parts),
            other => return Err(invalid(format!("SESSION: the first argument must name a relation, not {other}"))),
        };
        let reference = context.object_name_to_table_reference(relation_name)?;
        let provider = self.resolve(&reference)?;
        let scan = LogicalPlanBuilder::scan(reference.clone(), provider_as_source(Arc::clone(&provider)), None)?.build()?;
        let column_of = |expr: ast::Expr, context: &mut dyn RelationPlannerContext, what: &str| -> Result<usize> {
            match context.sql_to_expr(expr, scan.schema())? {
                Expr::Column(c) => scan.schema().index_of_column(&c),
                other => Err(invalid(format!("SESSION: the {what} must be a column of the relation, not {other}"))),
            }
        };
        let time = column_of(unnamed_expr("SESSION", &args.args[1])?, context, "time column")?;
        let time_type = scan.schema().field(time).data_type().clone();
        if !matches!(time_type, DataType::Timestamp(TimeUnit::Microsecond, _)) {
            return Err(invalid(format!("SESSION: the time column must be a timestamp or timestamptz, not {time_type}")));
        }
        let gap_expr = context.sql_to_expr(unnamed_expr("SESSION", &args.args[2])?, &DFSchema::empty())?;
        let gap = interval_micros("SESSION", "gap", &gap_expr)?;
        if gap <= 0 {
            return Err(invalid("SESSION gap must be positive"));
        }
        let mut keys = Vec::new();
        for arg in &args.args[3..] {
            let key = column_of(unnamed_expr("SESSION", arg)?, context, "session key")?;
            if key != time && !keys.contains(&key) {
                keys.push(key);
            }
        }
        let table = Arc::new(SessionTable::new(provider, reference.table().to_string(), keys, time, gap));
        let plan = LogicalPlanBuilder::scan(reference, provider_as_source(table), None)?.build()?;
        Ok(RelationPlanning::Planned(Box::new(PlannedRelation::new(plan, alias.clone()))))
    }
}

/// A relation's rows with the `window_start` and `window_end` of their session, as a table:
/// batch queries compute the sessions when they scan it; the stream planner turns its scan
/// into a scan of the relation and a session-window operator.
#[derive(Debug)]
pub struct SessionTable {
    /// The relation sessions are made of.
    pub input: Arc<dyn TableProvider>,
    /// Its name.
    pub input_name: String,
    /// Columns of the input whose values each have their own sessions.
    pub keys: Vec<usize>,
    /// The input's time column.
    pub time: usize,
    /// The gap that ends a session, in microseconds.
    pub gap: i64,
    schema: datafusion::arrow::datatypes::SchemaRef,
}

impl SessionTable {
    fn new(input: Arc<dyn TableProvider>, input_name: String, keys: Vec<usize>, time: usize, gap: i64) -> Self {
        let input_schema = input.schema();
        let time_type = input_schema.field(time).data_type().clone();
        let mut fields: Vec<Field> = input_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(WINDOW_START, time_type.clone(), true));
        fields.push(Field::new(WINDOW_END, time_type, true));
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        Self { input, input_name, keys, time, gap, schema }
    }
}

#[async_trait::async_trait]
impl TableProvider for SessionTable {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::View
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let plan = self.input.scan(state, None, &[], None).await?;
        let batches = datafusion::physical_plan::collect(plan, state.task_ctx()).await?;
        let rows = datafusion::arrow::compute::concat_batches(&self.input.schema(), &batches)?;
        let (starts, ends) = sluice_engine::operator::session_windows(&rows, &self.keys, self.time, self.gap)
            .map_err(|e| to_datafusion(SqlError::from(e)))?;
        let all = sluice_engine::operator::with_bounds(&rows, &starts, &ends, &self.schema)
            .map_err(|e| to_datafusion(SqlError::from(e)))?;
        // A row without a time is in no session.
        let in_session = datafusion::arrow::compute::is_not_null(all.column(all.num_columns() - 1))?;
        let kept = datafusion::arrow::compute::filter_record_batch(&all, &in_session)?;
        Ok(datafusion::datasource::memory::MemorySourceConfig::try_new_exec(&[vec![kept]], Arc::clone(&self.schema), projection.cloned())?)
    }
}

impl RelationPlanner for WindowRelationPlanner {
    fn plan_relation(&self, relation: TableFactor, context: &mut dyn RelationPlannerContext) -> Result<RelationPlanning> {
        let TableFactor::Table { name, args: Some(args), alias, .. } = &relation else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        let function = name.to_string().to_ascii_uppercase();
        let arity = match function.as_str() {
            "TUMBLE" => 3..=4,
            "HOP" => 4..=4,
            "SESSION" => return self.plan_session(args, alias, context),
            _ => return Ok(RelationPlanning::Original(Box::new(relation))),
        };
        if !arity.contains(&args.args.len()) {
            let expected = if function == "TUMBLE" {
                "TUMBLE(relation, time_column, size [, offset])"
            } else {
                "HOP(relation, time_column, slide, size)"
            };
            return Err(invalid(format!("{function} takes {expected}, got {} arguments", args.args.len())));
        }
        let relation_name = match unnamed_expr(&function, &args.args[0])? {
            ast::Expr::Identifier(ident) => ast::ObjectName::from(vec![ident]),
            ast::Expr::CompoundIdentifier(parts) => ast::ObjectName::from(parts),
            other => return Err(invalid(format!("{function}: the first argument must name a relation, not {other}"))),
        };
        // DataFusion resolves the tables a statement names before planning it, and does not
        // look inside table-function arguments; so the relation is looked up here.
        let reference = context.object_name_to_table_reference(relation_name)?;
        let provider = self.resolve(&reference)?;
        let input = LogicalPlanBuilder::scan(reference, provider_as_source(provider), None)?.build()?;
        let time = context.sql_to_expr(unnamed_expr(&function, &args.args[1])?, input.schema())?;
        let time_type = time.get_type(input.schema())?;
        if !matches!(time_type, DataType::Timestamp(TimeUnit::Microsecond, _)) {
            return Err(invalid(format!(
                "{function}: the time column must be a timestamp or timestamptz, not {time_type}"
            )));
        }
        let mut constant = |i: usize, what: &str| -> Result<i64> {
            let expr = context.sql_to_expr(unnamed_expr(&function, &args.args[i])?, &DFSchema::empty())?;
            interval_micros(&function, what, &expr)
        };
        let input_columns: Vec<Expr> = input.schema().columns().into_iter().map(Expr::Column).collect();
        let plan = if function == "TUMBLE" {
            let size = constant(2, "size")?;
            let offset = if args.args.len() == 4 { constant(3, "offset")? } else { 0 };
            if size <= 0 {
                return Err(invalid("TUMBLE size must be positive"));
            }
            let start = Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
                Arc::new(ScalarUDF::new_from_impl(TumbleStart::new())),
                vec![time, lit(size), lit(offset)],
            ));
            let mut exprs = input_columns.clone();
            exprs.push(start.alias(WINDOW_START));
            let started = LogicalPlanBuilder::from(input).project(exprs)?.build()?;
            let mut exprs = input_columns;
            exprs.push(col(WINDOW_START));
            exprs.push((col(WINDOW_START) + lit(ScalarValue::new_interval_mdn(0, 0, size * 1_000))).alias(WINDOW_END));
            LogicalPlanBuilder::from(started).project(exprs)?.build()?
        } else {
            let slide = constant(2, "slide")?;
            let size = constant(3, "size")?;
            if slide <= 0 || size <= 0 {
                return Err(invalid("HOP slide and size must be positive"));
            }
            if size % slide != 0 {
                return Err(invalid("HOP size must be a whole multiple of its slide"));
            }
            if size / slide > MAX_HOP_WINDOWS {
                return Err(invalid(format!("HOP puts each row in size / slide windows, at most {MAX_HOP_WINDOWS}")));
            }
            let starts = Expr::ScalarFunction(datafusion::logical_expr::expr::ScalarFunction::new_udf(
                Arc::new(ScalarUDF::new_from_impl(HopStarts::new())),
                vec![time, lit(slide), lit(size)],
            ));
            let mut exprs = input_columns.clone();
            exprs.push(starts.alias(HOP_WINDOWS));
            let listed = LogicalPlanBuilder::from(input).project(exprs)?.build()?;
            let unnested = LogicalPlanBuilder::from(listed)
                .unnest_column_with_options(HOP_WINDOWS, UnnestOptions::new().with_preserve_nulls(false))?
                .build()?;
            let mut exprs = input_columns;
            exprs.push(col(HOP_WINDOWS).alias(WINDOW_START));
            exprs.push((col(HOP_WINDOWS) + lit(ScalarValue::new_interval_mdn(0, 0, size * 1_000))).alias(WINDOW_END));
            LogicalPlanBuilder::from(unnested).project(exprs)?.build()?
        };
        Ok(RelationPlanning::Planned(Box::new(PlannedRelation::new(plan, alias.clone()))))
    }
}

/// Windows per row a HOP may create.
const MAX_HOP_WINDOWS: i64 = 1024;
/// The temporary column holding a row's HOP windows before the unnest.
const HOP_WINDOWS: &str = "__sluice_hop_windows";

/// `sluice_tumble_start(ts, size_us, offset_us)`: the start of the tumbling window holding `ts`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TumbleStart {
    signature: Signature,
}

impl TumbleStart {
    fn new() -> Self {
        Self { signature: Signature::any(3, Volatility::Immutable) }
    }
}

fn constant_i64(value: &ColumnarValue) -> Result<i64> {
    match value {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(v))) => Ok(*v),
        _ => Err(invalid("window sizes must be constants")),
    }
}

impl ScalarUDFImpl for TumbleStart {
    fn name(&self) -> &str {
        "sluice_tumble_start"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let size = constant_i64(&args.args[1])?;
        let offset = constant_i64(&args.args[2])?;
        let times = args.args[0].to_array(args.number_rows)?;
        let starts = times
            .as_primitive::<TimestampMicrosecondType>()
            .unary::<_, TimestampMicrosecondType>(|t| t - (t - offset).rem_euclid(size));
        let data_type = times.data_type().clone();
        Ok(ColumnarValue::Array(Arc::new(starts).to_data().into_builder().data_type(data_type).build().map(datafusion::arrow::array::make_array)?))
    }
}

/// `sluice_hop_starts(ts, slide_us, size_us)`: the starts of the `size / slide` hopping windows
/// holding `ts`, oldest first (an empty list for NULL).
#[derive(Debug, PartialEq, Eq, Hash)]
struct HopStarts {
    signature: Signature,
}

impl HopStarts {
    fn new() -> Self {
        Self { signature: Signature::any(3, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for HopStarts {
    fn name(&self) -> &str {
        "sluice_hop_starts"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new("item", arg_types[0].clone(), true))))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let slide = constant_i64(&args.args[1])?;
        let size = constant_i64(&args.args[2])?;
        let windows = size / slide;
        let times = args.args[0].to_array(args.number_rows)?;
        let data_type = times.data_type().clone();
        let values = PrimitiveBuilder::<TimestampMicrosecondType>::new().with_data_type(data_type.clone());
        let mut lists = ListBuilder::new(values).with_field(Arc::new(Field::new("item", data_type, true)));
        let times = times.as_primitive::<TimestampMicrosecondType>();
        for row in 0..times.len() {
            if times.is_valid(row) {
                let last = times.value(row) - times.value(row).rem_euclid(slide);
                for k in (0..windows).rev() {
                    lists.values().append_value(last - k * slide);
                }
            }
            lists.append(true);
        }
        Ok(ColumnarValue::Array(Arc::new(lists.finish()) as ArrayRef))
    }
}
