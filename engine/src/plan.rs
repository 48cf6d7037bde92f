//! The stream plan: what a materialized view computes, as a DAG of operator descriptions.
//!
//! Why a plan separate from the operators: the SQL layer decides *what* to compute (from
//! DataFusion's optimized `LogicalPlan`), the engine decides *how* (which operator, which
//! state table). The plan is plain data — node kinds, DataFusion logical expressions and
//! schemas, state-table ids — so it can be printed by `EXPLAIN`, checked before anything runs,
//! and instantiated again after a restart.

use std::fmt::{self, Write as _};

use datafusion::arrow::datatypes::DataType;
use datafusion::common::DFSchemaRef;
use datafusion::logical_expr::Expr;
use sluice_storage::TableId;

use crate::operator::{AggregateKind, ViewLayout};
use crate::watermark::monotone_column;

/// Identifies a relation whose changes flow into views: a table, a view, or one reader of a
/// source. Relations share the id space of state tables.
pub type RelationId = TableId;

/// One operator of a stream plan, with the positions of its inputs in [`StreamPlan::nodes`].
#[derive(Debug, Clone)]
pub struct PlanNode {
    /// What the operator does.
    pub kind: NodeKind,
    /// Positions of the input nodes; always smaller than this node's own position.
    pub inputs: Vec<usize>,
    /// The schema of the rows it emits (qualified names, as DataFusion planned them).
    pub schema: DFSchemaRef,
}

/// The operator kinds a view can be built from.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// The changes of a relation, restricted to some of its columns.
    Scan {
        /// Which relation.
        relation: RelationId,
        /// Its name, for EXPLAIN.
        name: String,
        /// The relation's columns to keep, in output order.
        columns: Vec<usize>,
    },
    /// Keeps the rows satisfying a predicate over the input schema.
    Filter {
        /// A boolean expression.
        predicate: Expr,
    },
    /// Computes one expression per output column.
    Project {
        /// The expressions, over the input schema.
        exprs: Vec<Expr>,
    },
    /// Expands a list column into one row per element.
    Unnest {
        /// The list column of the input.
        list_column: usize,
        /// For each output column, the input column it comes from.
        sources: Vec<usize>,
        /// Whether a NULL list gives one row with a NULL element (else no row).
        preserve_nulls: bool,
    },
    /// Concatenates its inputs (UNION ALL).
    Union,
    /// `SESSION(rel, time, gap)`: the input's rows with their session's `window_start` and
    /// `window_end` appended, sessions per value of `keys`.
    SessionWindow {
        /// Input columns whose values each have their own sessions.
        keys: Vec<usize>,
        /// The input's time column.
        time_column: usize,
        /// Inactivity that ends a session, in microseconds.
        gap_micros: i64,
        /// The state table of the open sessions' rows.
        state_table: TableId,
    },
    /// GROUP BY with aggregates.
    Aggregate {
        /// The group-by expressions, over the input schema.
        group_by: Vec<Expr>,
        /// The aggregates, in output order after the group columns.
        calls: Vec<AggregateSpec>,
        /// The state table of the groups.
        state_table: TableId,
        /// The group key whose windows close as the watermark passes (set by
        /// [`StreamPlan::assign_windows`]).
        window: Option<AggregateWindow>,
    },
}

/// The window column of an aggregate whose input carries a watermark on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregateWindow {
    /// Which group-by expression (a plain input column).
    pub group: usize,
    /// The input column it is.
    pub input_column: usize,
    /// EMIT ON WINDOW CLOSE.
    pub emit_on_close: bool,
}

/// One aggregate call of an [`NodeKind::Aggregate`].
#[derive(Debug, Clone)]
pub struct AggregateSpec {
    /// The function.
    pub kind: AggregateKind,
    /// Its argument over the input schema (none for `count(*)`).
    pub arg: Option<Expr>,
    /// The output type DataFusion planned for it; the engine checks that it computes the same.
    pub output_type: DataType,
    /// For functions that keep each group's values (min, max, count distinct, string_agg).
    pub values_table: Option<TableId>,
    /// For `string_agg`: the separator.
    pub separator: Option<String>,
}

/// A view's dataflow: nodes in topological order, the last one producing the view's rows.
#[derive(Debug, Clone, Default)]
pub struct StreamPlan {
    /// The operators; inputs come before the nodes that read them.
    pub nodes: Vec<PlanNode>,
    /// How the view's rows are stored (chosen with [`StreamPlan::inserts_only`] when the view
    /// is created, then kept: its stored rows are in that layout).
    pub layout: ViewLayout,
}

impl StreamPlan {
    /// Appends a node and returns its position.
    pub fn push(&mut self, node: PlanNode) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The position of the node producing the view's rows.
    pub fn root(&self) -> Option<usize> {
        self.nodes.len().checked_sub(1)
    }

    /// Whether the view's changes can only ever be inserts, given whether each relation it
    /// reads can only grow: sources and `APPEND ONLY` tables can, and what filters,
    /// projections, unnesting and unions of them make. Aggregates and session windows revise
    /// rows they emitted, so a view with one is never insert-only.
    pub fn inserts_only(&self, relation: &dyn Fn(RelationId) -> bool) -> bool {
        let mut only: Vec<bool> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let inputs = || node.inputs.iter().all(|i| only.get(*i).copied().unwrap_or(false));
            let this = match &node.kind {
                NodeKind::Scan { relation: r, .. } => relation(*r),
                NodeKind::Filter { .. } | NodeKind::Project { .. } | NodeKind::Unnest { .. } | NodeKind::Union => inputs(),
                NodeKind::SessionWindow { .. } | NodeKind::Aggregate { .. } => false,
            };
            only.push(this);
        }
        only.last().copied().unwrap_or(false)
    }

    /// Which output columns of each node carry a watermark, given which columns of each
    /// relation it reads do. Follows the operators' own rules (see each `on_watermark`).
    pub fn watermark_columns(&self, relation: &dyn Fn(RelationId) -> Vec<usize>) -> Vec<Vec<bool>> {
        let mut columns: Vec<Vec<bool>> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let width = node.schema.fields().len();
            let input = |i: usize| node.inputs.get(i).and_then(|p| columns.get(*p)).cloned().unwrap_or_default();
            let carries = match &node.kind {
                NodeKind::Scan { relation: r, columns: kept, .. } => {
                    let marked = relation(*r);
                    kept.iter().map(|c| marked.contains(c)).collect()
                }
                NodeKind::Filter { .. } => input(0),
                NodeKind::Project { exprs } => {
                    let from = input(0);
                    let schema = node.inputs.first().map(|p| &self.nodes[*p].schema);
                    exprs
                        .iter()
                        .map(|e| {
                            schema
                                .and_then(|s| monotone_column(e, s))
                                .is_some_and(|c| from.get(c).copied().unwrap_or(false))
                        })
                        .collect()
                }
                NodeKind::Unnest { sources, .. } => {
                    let from = input(0);
                    sources.iter().map(|s| from.get(*s).copied().unwrap_or(false)).collect()
                }
                NodeKind::Union => {
                    let inputs: Vec<Vec<bool>> = (0..node.inputs.len()).map(input).collect();
                    (0..width).map(|c| !inputs.is_empty() && inputs.iter().all(|i| i.get(c).copied().unwrap_or(false))).collect()
                }
                NodeKind::Aggregate { window, .. } => {
                    (0..width).map(|c| window.is_some_and(|w| w.group == c)).collect()
                }
                // Rows of open sessions are re-emitted when sessions merge, whatever their time:
                // only `window_end` (the last column) keeps a promise, the input time's.
                NodeKind::SessionWindow { time_column, .. } => {
                    let from = input(0);
                    let time_marked = from.get(*time_column).copied().unwrap_or(false);
                    (0..width).map(|c| c + 1 == width && time_marked).collect()
                }
            };
            columns.push(carries);
        }
        columns
    }

    /// Gives every aggregate grouping by a column that carries a watermark its window (the
    /// first such group key), with `emit_on_close`. Returns which of the view's columns carry
    /// a watermark. With `emit_on_close`, every aggregate must have a window (else the error
    /// names the first that has none), and there must be one.
    pub fn assign_windows(
        &mut self,
        relation: &dyn Fn(RelationId) -> Vec<usize>,
        emit_on_close: bool,
    ) -> Result<Vec<bool>, String> {
        let mut aggregates = 0;
        for at in 0..self.nodes.len() {
            // Each node's columns depend only on earlier nodes, already settled.
            let marked = self.watermark_columns(relation);
            let input_schema = self.nodes[at].inputs.first().map(|p| std::sync::Arc::clone(&self.nodes[*p].schema));
            let from = self.nodes[at].inputs.first().map(|p| marked[*p].clone()).unwrap_or_default();
            let NodeKind::Aggregate { group_by, window, .. } = &mut self.nodes[at].kind else { continue };
            aggregates += 1;
            let found = input_schema.and_then(|schema| {
                group_by.iter().enumerate().find_map(|(g, e)| {
                    let Expr::Column(c) = e else { return None };
                    let column = schema.index_of_column(c).ok()?;
                    from.get(column).copied().unwrap_or(false).then_some(AggregateWindow { group: g, input_column: column, emit_on_close })
                })
            });
            if found.is_none() && emit_on_close {
                let keys = group_by.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(", ");
                return Err(format!(
                    "EMIT ON WINDOW CLOSE needs every GROUP BY to include a window column whose watermark is declared (GROUP BY {keys} has none; declare WATERMARK FOR on the time column of the table or source and group by window_start or window_end)",
                    keys = if keys.is_empty() { "()".to_string() } else { keys }
                ));
            }
            *window = found;
        }
        if emit_on_close && aggregates == 0 {
            return Err("EMIT ON WINDOW CLOSE needs a GROUP BY over a window (TUMBLE or HOP) of a watermarked time column".into());
        }
        let marked = self.watermark_columns(relation);
        Ok(self.root().map(|r| marked[r].clone()).unwrap_or_default())
    }

    /// Every state table the plan's operators keep state in.
    pub fn state_tables(&self) -> Vec<TableId> {
        let mut tables = Vec::new();
        for node in &self.nodes {
            match &node.kind {
                NodeKind::Aggregate { calls, state_table, .. } => {
                    tables.push(*state_table);
                    tables.extend(calls.iter().filter_map(|c| c.values_table));
                }
                NodeKind::SessionWindow { state_table, .. } => tables.push(*state_table),
                _ => {}
            }
        }
        tables
    }

    /// The plan as text, one operator per line, the view's output first and each operator's
    /// inputs indented below it (a node read by several operators is printed once, then
    /// referred to by its number).
    pub fn explain(&self, view: &str) -> String {
        let mut out = match self.layout {
            ViewLayout::Counted => format!("Materialize {view}\n"),
            ViewLayout::AppendOnly => format!("Materialize {view} (append-only)\n"),
        };
        if let Some(root) = self.root() {
            let mut printed = vec![false; self.nodes.len()];
            self.explain_node(root, 1, &mut printed, &mut out);
        }
        out
    }

    fn explain_node(&self, at: usize, depth: usize, printed: &mut [bool], out: &mut String) {
        let indent = "  ".repeat(depth);
        if printed[at] {
            let _ = writeln!(out, "{indent}(see #{at})");
            return;
        }
        printed[at] = true;
        let node = &self.nodes[at];
        let _ = writeln!(out, "{indent}#{at} {}", DisplayNode(node));
        for input in &node.inputs {
            self.explain_node(*input, depth + 1, printed, out);
        }
    }
}

struct DisplayNode<'a>(&'a PlanNode);

fn join<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for DisplayNode<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let node = self.0;
        match &node.kind {
            NodeKind::Scan { name, columns, .. } => {
                let names = columns.iter().zip(node.schema.fields()).map(|(_, field)| field.name().clone());
                write!(f, "Scan {name} [{}]", join(names))
            }
            NodeKind::Filter { predicate } => write!(f, "Filter {predicate}"),
            NodeKind::Project { exprs } => write!(f, "Project [{}]", join(exprs)),
            NodeKind::Unnest { list_column, .. } => write!(f, "Unnest column #{list_column}"),
            NodeKind::Union => write!(f, "Union"),
            NodeKind::SessionWindow { keys, time_column, gap_micros, .. } => {
                let input = node.schema.fields();
                let names = keys.iter().map(|k| input.get(*k).map(|f| f.name().clone()).unwrap_or_default());
                let time = input.get(*time_column).map(|f| f.name().clone()).unwrap_or_default();
                write!(f, "SessionWindow keys=[{}] time={time} gap={gap_micros}us", join(names))
            }
            NodeKind::Aggregate { group_by, calls, window, .. } => {
                let calls = calls.iter().map(|c| match (&c.kind, &c.arg) {
                    (AggregateKind::CountStar, _) => "count(*)".to_string(),
                    (kind, Some(arg)) => format!("{}({arg})", kind.sql_name()),
                    (kind, None) => format!("{}()", kind.sql_name()),
                });
                write!(f, "HashAggregate group=[{}] aggregates=[{}]", join(group_by), join(calls))?;
                if let Some(w) = window {
                    let key = group_by.get(w.group).map(|e| e.to_string()).unwrap_or_default();
                    let emit = if w.emit_on_close { "on window close" } else { "on update" };
                    write!(f, " window=[{key}] emit=[{emit}]")?;
                }
                Ok(())
            }
        }
    }
}
