//! The operator contract and the operators, one per file.
//!
//! An operator consumes changes and emits changes. Only [`Operator::process`] is required;
//! stateful operators also flush their dirty state into the epoch's write batch when a barrier
//! passes ([`Operator::on_barrier`]). Watermarks ([`crate::watermark`]) reach operators through
//! [`Operator::on_watermark`]; an operator that releases them only with its barrier output (an
//! aggregate) hands them over in [`Operator::released_watermarks`].

mod filter;
mod hash_aggregate;
mod materialize;
mod project;
mod scan;
mod session;
mod union;
mod unnest;

pub use filter::FilterOperator;
pub use hash_aggregate::{AggregateCall, AggregateKind, HashAggregateOperator, WindowKey};
pub use materialize::{expand_view_rows, view_state_table, MaterializeOperator, ViewLayout, COUNT_COLUMN};
pub use project::ProjectOperator;
pub use scan::ScanOperator;
pub use session::{assign_sessions, session_windows, with_bounds, SessionWindowOperator};
pub use union::UnionOperator;
pub use unnest::UnnestOperator;

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::physical_expr::PhysicalExpr;
use sluice_storage::{Epoch, WriteBatch};

use crate::watermark::Watermark;
use crate::{ChangeBatch, EngineResult};

/// The hasher of operators' in-memory maps: keys are encoded rows, not attacker-chosen
/// strings, so DataFusion's fast non-cryptographic hash (foldhash) is the right trade.
pub(crate) type FastHash = datafusion::common::hash_utils::RandomState;

/// What one entry of a per-epoch hash map costs beyond its key bytes and its payload's inline
/// size: the table's slot and control byte, the key's heap block, allocator rounding. An
/// estimate for [`Operator::dirty_bytes`], not an exact count.
pub(crate) const MAP_ENTRY_OVERHEAD: usize = 64;

/// `expr` evaluated over every row of `batch`, as one array.
pub(crate) fn evaluate(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> EngineResult<ArrayRef> {
    Ok(expr.evaluate(batch)?.into_array(batch.num_rows())?)
}

/// One step of a dataflow.
pub trait Operator: Send {
    /// A short name for plans and logs (`Filter`, `Project`, ...).
    fn name(&self) -> &str;

    /// Processes one batch of changes and returns the changes to send downstream (possibly
    /// none). Must be deterministic: replaying the same input gives the same output, which is
    /// what makes recovery by replay exact.
    fn process(&mut self, changes: ChangeBatch) -> EngineResult<Vec<ChangeBatch>>;

    /// Epoch `epoch` ends here: write dirty state into `write` (committed atomically with every
    /// other operator's) and return any changes that became final. Stateless operators keep
    /// the default.
    fn on_barrier(&mut self, _epoch: Epoch, _write: &mut WriteBatch) -> EngineResult<Vec<ChangeBatch>> {
        Ok(Vec::new())
    }

    /// Input `input` (position among the operator's inputs) promises `watermark`: no later
    /// change has a smaller value in that column. Returns the promises the operator's output
    /// can make at once, about its own columns. The default forgets it: an operator that does
    /// not know how its output relates to its input promises nothing.
    fn on_watermark(&mut self, _input: usize, _watermark: Watermark) -> EngineResult<Vec<Watermark>> {
        Ok(Vec::new())
    }

    /// This operator is instance `index` of `count` parallel instances that own disjoint keys
    /// (see `exchange`); an operator that scans its own state (closing windows) must then
    /// handle only the keys it owns. The default ignores it.
    fn set_shard(&mut self, _index: usize, _count: usize) {}

    /// Approximate bytes of memory the operator holds for the current epoch: state touched
    /// since the last barrier (dirty groups, buffered changes) that only the next barrier
    /// writes out. The dataflow ends an epoch early when its operators together hold more
    /// than their budget, so that a flooding input cannot grow an epoch without bound.
    /// Operators that keep nothing between barriers keep the default.
    fn dirty_bytes(&self) -> usize {
        0
    }

    /// Promises the operator can make only after the output of the barrier just run (an
    /// aggregate emits the closed windows' rows at the barrier, and only then promises that
    /// nothing below them follows).
    fn released_watermarks(&mut self) -> Vec<Watermark> {
        Vec::new()
    }
}

/// Adds the rows of `batches` to `into` (row text → net count), dropping rows that net to
/// zero: what a view holds after these changes. For operator tests.
#[cfg(test)]
pub(crate) fn consolidate(batches: &[ChangeBatch], into: &mut std::collections::BTreeMap<String, i64>) {
    for batch in batches {
        for line in batch.to_pretty().lines() {
            let (op, row) = line.split_at(1);
            *into.entry(row.trim().to_string()).or_insert(0) += if op == "+" { 1 } else { -1 };
        }
    }
    into.retain(|_, n| *n != 0);
}
