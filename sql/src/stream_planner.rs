//! Turns a view's optimized DataFusion `LogicalPlan` into a [`StreamPlan`].
//!
//! Why DataFusion's plan: it has already resolved names, coerced types, pushed projections
//! into scans and rewritten `DISTINCT` into aggregates; a view's stream plan follows it node
//! for node, so the view computes what the batch query computes. Every node kind or
//! expression the engine cannot maintain incrementally is refused here with 0A000 naming it.

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DFSchemaRef, ScalarValue};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::{Distinct, Expr, LogicalPlan, Volatility};
use sluice_engine::operator::AggregateKind;
use sluice_engine::plan::{AggregateSpec, NodeKind, PlanNode, RelationId, StreamPlan};
use sluice_storage::TableId;

use crate::error::{SqlError, SqlResult};
use crate::provider::StoredTable;
use crate::relations::{SourceTable, ViewTable};
use crate::window::SessionTable;

/// A relation a view reads, as found while planning.
#[derive(Debug, Clone)]
pub enum ReadRelation {
    /// A table: its writes feed the view.
    Table(Arc<StoredTable>),
    /// Another materialized view.
    View(RelationId),
    /// A source whose rows are pushed to Sluice: its change-log entries feed the view, under
    /// the source's own id.
    PushSource {
        /// The source's id.
        id: RelationId,
        /// Its event-time column, if it declares a watermark.
        time_column: Option<usize>,
    },
    /// A source: the view gets its own reader, delivering under `reader`.
    Source {
        /// The reader's relation id.
        reader: RelationId,
        /// The source's name.
        source: String,
        /// What reads it.
        setup: crate::connector::SourceSetup,
        /// Its event time, if it declares a watermark.
        watermark: Option<sluice_engine::dataflow::SourceWatermark>,
    },
}

/// Builds one view's stream plan.
pub struct StreamPlanner<'a> {
    plan: StreamPlan,
    allocate: &'a dyn Fn() -> TableId,
    /// The relations read, by name, in first-read order.
    pub reads: Vec<(String, ReadRelation)>,
}

fn unsupported(what: impl std::fmt::Display) -> SqlError {
    SqlError::unsupported(format_args!("{what} in a materialized view"))
}

/// Refuses expressions whose value is not a function of the row (`now()`, `random()`): a view
/// keeps what they returned when a row arrived, which a batch query would not reproduce.
pub fn check_deterministic(plan: &LogicalPlan) -> SqlResult<()> {
    let mut found: Option<String> = None;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(f) = e {
                    if f.func.signature().volatility != Volatility::Immutable {
                        found = Some(f.func.name().to_string());
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    match found {
        Some(name) => Err(unsupported(format_args!("function {name}(), whose value changes over time,"))),
        None => Ok(()),
    }
}

impl<'a> StreamPlanner<'a> {
    /// A planner allocating state tables (and source reader ids) with `allocate`.
    pub fn new(allocate: &'a dyn Fn() -> TableId) -> Self {
        Self { plan: StreamPlan::default(), allocate, reads: Vec::new() }
    }

    /// Plans `plan`; the returned stream plan's root produces its rows.
    pub fn build(mut self, plan: &LogicalPlan) -> SqlResult<(StreamPlan, Vec<(String, ReadRelation)>)> {
        self.walk(plan)?;
        Ok((self.plan, self.reads))
    }

    fn push(&mut self, kind: NodeKind, inputs: Vec<usize>, schema: DFSchemaRef) -> usize {
        self.plan.push(PlanNode { kind, inputs, schema })
    }

    fn walk(&mut self, plan: &LogicalPlan) -> SqlResult<usize> {
        match plan {
            LogicalPlan::Projection(p) => {
                let input = self.walk(&p.input)?;
                Ok(self.push(NodeKind::Project { exprs: p.expr.clone() }, vec![input], Arc::clone(&p.schema)))
            }
            LogicalPlan::Filter(f) => {
                let input = self.walk(&f.input)?;
                Ok(self.push(NodeKind::Filter { predicate: f.predicate.clone() }, vec![input], Arc::clone(f.input.schema())))
            }
            LogicalPlan::SubqueryAlias(a) => {
                // Same rows under other qualifiers: a projection of the columns, renamed.
                let input = self.walk(&a.input)?;
                let exprs = a.input.schema().columns().into_iter().map(Expr::Column).collect();
                Ok(self.push(NodeKind::Project { exprs }, vec![input], Arc::clone(&a.schema)))
            }
            LogicalPlan::TableScan(scan) => {
                if scan.fetch.is_some() {
                    return Err(unsupported("LIMIT"));
                }
                let provider = source_as_provider(&scan.source)?;
                if let Some(session) = provider.downcast_ref::<SessionTable>() {
                    return self.session_scan(scan, session);
                }
                let name = scan.table_name.table().to_string();
                let width = provider.schema().fields().len();
                let columns = scan.projection.clone().unwrap_or_else(|| (0..width).collect());
                let relation = self.read(&name, provider)?;
                Ok(self.push(NodeKind::Scan { relation, name, columns }, vec![], Arc::clone(&scan.projected_schema)))
            }
            LogicalPlan::Aggregate(a) => {
                let input = self.walk(&a.input)?;
                if a.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
                    return Err(unsupported("GROUPING SETS, CUBE and ROLLUP"));
                }
                let group_count = a.group_expr.len();
                let mut calls = Vec::with_capacity(a.aggr_expr.len());
                for (i, expr) in a.aggr_expr.iter().enumerate() {
                    let output_type = a.schema.field(group_count + i).data_type().clone();
                    calls.push(self.aggregate_call(expr, output_type)?);
                }
                let state_table = (self.allocate)();
                Ok(self.push(
                    NodeKind::Aggregate { group_by: a.group_expr.clone(), calls, state_table, window: None },
                    vec![input],
                    Arc::clone(&a.schema),
                ))
            }
            LogicalPlan::Distinct(Distinct::All(input)) => {
                let at = self.walk(input)?;
                let group_by = input.schema().columns().into_iter().map(Expr::Column).collect();
                let state_table = (self.allocate)();
                Ok(self.push(
                    NodeKind::Aggregate { group_by, calls: vec![], state_table, window: None },
                    vec![at],
                    Arc::clone(input.schema()),
                ))
            }
            LogicalPlan::Distinct(Distinct::On(_)) => Err(unsupported("DISTINCT ON")),
            LogicalPlan::Union(u) => {
                let inputs = u.inputs.iter().map(|i| self.walk(i)).collect::<SqlResult<Vec<_>>>()?;
                Ok(self.push(NodeKind::Union, inputs, Arc::clone(&u.schema)))
            }
            LogicalPlan::Unnest(u) => {
                let [(list_column, unnest)] = u.list_type_columns.as_slice() else {
                    return Err(unsupported("unnest of several columns"));
                };
                if unnest.depth != 1 || !u.struct_type_columns.is_empty() {
                    return Err(unsupported("unnest of nested lists or structs"));
                }
                let input = self.walk(&u.input)?;
                Ok(self.push(
                    NodeKind::Unnest {
                        list_column: *list_column,
                        sources: u.dependency_indices.clone(),
                        preserve_nulls: u.options.preserve_nulls(),
                    },
                    vec![input],
                    Arc::clone(&u.schema),
                ))
            }
            // Row order means nothing in a view; ORDER BY without LIMIT keeps the same rows.
            LogicalPlan::Sort(s) if s.fetch.is_none() => self.walk(&s.input),
            LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => Err(unsupported("ORDER BY ... LIMIT (top-N)")),
            LogicalPlan::Join(_) => Err(unsupported("a join (or a subquery planned as one)")),
            LogicalPlan::Window(_) => Err(unsupported("a window function (OVER)")),
            LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => {
                Err(unsupported("a query reading no table, source or view"))
            }
            other => Err(unsupported(format_args!("{}", other.display().to_string().split(':').next().unwrap_or("this plan")))),
        }
    }

    /// A scan of `SESSION(...)`: a scan of the relation, the session-window operator, and the
    /// projection the scan asked for.
    fn session_scan(&mut self, scan: &datafusion::logical_expr::TableScan, session: &SessionTable) -> SqlResult<usize> {
        let input_schema = session.input.schema();
        let width = input_schema.fields().len();
        let relation = self.read(&session.input_name, Arc::clone(&session.input))?;
        let input = Arc::new(DFSchema::try_from_qualified_schema(session.input_name.as_str(), &input_schema)?);
        let name = session.input_name.clone();
        let at = self.push(NodeKind::Scan { relation, name, columns: (0..width).collect() }, vec![], input);
        let full = Arc::new(DFSchema::try_from_qualified_schema(scan.table_name.clone(), &session.schema())?);
        let state_table = (self.allocate)();
        let kind = NodeKind::SessionWindow {
            keys: session.keys.clone(),
            time_column: session.time,
            gap_micros: session.gap,
            state_table,
        };
        let windowed = self.push(kind, vec![at], Arc::clone(&full));
        match &scan.projection {
            None => Ok(windowed),
            Some(columns) => {
                let exprs = columns
                    .iter()
                    .map(|c| {
                        let (qualifier, field) = full.qualified_field(*c);
                        Expr::Column(Column::new(qualifier.cloned(), field.name()))
                    })
                    .collect();
                Ok(self.push(NodeKind::Project { exprs }, vec![windowed], Arc::clone(&scan.projected_schema)))
            }
        }
    }

    fn read(&mut self, name: &str, provider: Arc<dyn TableProvider>) -> SqlResult<RelationId> {
        let relation = if let Some(table) = provider.downcast_ref::<StoredTable>() {
            let id = table.def().id;
            if !self.reads.iter().any(|(n, _)| n == name) {
                self.reads.push((name.to_string(), ReadRelation::Table(table.clone_handle())));
            }
            id
        } else if let Some(view) = provider.downcast_ref::<ViewTable>() {
            let id = view.entry().id;
            if !self.reads.iter().any(|(n, _)| n == name) {
                self.reads.push((name.to_string(), ReadRelation::View(id)));
            }
            id
        } else if let Some(source) = provider
            .downcast_ref::<SourceTable>()
            .filter(|s| matches!(s.entry().setup.input, crate::connector::SourceInput::Push(_)))
        {
            let id = source.entry().id;
            if !self.reads.iter().any(|(n, _)| n == name) {
                let time_column = source.entry().watermark.as_ref().map(|w| w.time_column);
                self.reads.push((name.to_string(), ReadRelation::PushSource { id, time_column }));
            }
            id
        } else if let Some(source) = provider.downcast_ref::<SourceTable>() {
            // Each scan of a source gets its own reader: its own copy of the stream.
            let reader = (self.allocate)();
            self.reads.push((
                name.to_string(),
                ReadRelation::Source {
                    reader,
                    source: source.entry().name.clone(),
                    setup: source.entry().setup.clone(),
                    watermark: source.entry().watermark.clone(),
                },
            ));
            reader
        } else {
            return Err(unsupported(format_args!("reading \"{name}\" (only tables, sources and materialized views)")));
        };
        Ok(relation)
    }

    fn aggregate_call(&mut self, expr: &Expr, output_type: datafusion::arrow::datatypes::DataType) -> SqlResult<AggregateSpec> {
        let agg = match expr {
            Expr::Alias(alias) => return self.aggregate_call(&alias.expr, output_type),
            Expr::AggregateFunction(agg) => agg,
            other => return Err(unsupported(format_args!("aggregate expression {other}"))),
        };
        let AggregateFunction { func, params: AggregateFunctionParams { args, distinct, filter, order_by, .. } } = agg;
        let name = func.name().to_ascii_lowercase();
        if filter.is_some() {
            return Err(unsupported(format_args!("{name}(...) FILTER (WHERE ...)")));
        }
        let is_constant = |e: &Expr| matches!(e, Expr::Literal(v, _) if !v.is_null());
        let kind = match (name.as_str(), *distinct) {
            ("count", false) if args.is_empty() || args.iter().all(is_constant) => AggregateKind::CountStar,
            ("count", false) => AggregateKind::Count,
            ("count", true) => AggregateKind::CountDistinct,
            ("sum", false) => AggregateKind::Sum,
            ("avg", false) | ("mean", false) => AggregateKind::Avg,
            ("min", _) => AggregateKind::Min,
            ("max", _) => AggregateKind::Max,
            ("bool_and", _) => AggregateKind::BoolAnd,
            ("bool_or", _) => AggregateKind::BoolOr,
            ("string_agg", false) => AggregateKind::StringAgg,
            (other, true) => return Err(unsupported(format_args!("{other}(DISTINCT ...)"))),
            (other, false) => return Err(unsupported(format_args!("aggregate function {other}()"))),
        };
        let arg = match kind {
            AggregateKind::CountStar => None,
            _ => match args.as_slice() {
                [arg] => Some(arg.clone()),
                [arg, _separator] if kind == AggregateKind::StringAgg => Some(arg.clone()),
                _ => return Err(unsupported(format_args!("{name}() with {} arguments", args.len()))),
            },
        };
        let mut separator = None;
        if kind == AggregateKind::StringAgg {
            separator = match args.get(1) {
                Some(Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _)) => {
                    Some(s.clone())
                }
                Some(Expr::Literal(v, _)) if v.is_null() => None,
                _ => return Err(unsupported("string_agg() with a separator that is not a constant")),
            };
            // The engine joins values in value order: ORDER BY the value itself, ascending, is
            // that order; any other order is refused.
            match order_by.as_slice() {
                [] => {}
                [sort] if sort.asc && Some(&sort.expr) == arg.as_ref() => {}
                _ => return Err(unsupported("string_agg(... ORDER BY) other than by the value, ascending")),
            }
        } else if !order_by.is_empty() {
            return Err(unsupported(format_args!("{name}(... ORDER BY ...)")));
        }
        let values_table = kind.keeps_values().then(|| (self.allocate)());
        Ok(AggregateSpec { kind, arg, output_type, values_table, separator })
    }
}

