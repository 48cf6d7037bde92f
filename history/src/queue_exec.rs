//! Reading a source's rows not yet archived (its history queue) as part of a batch query.
//!
//! Why a node of our own instead of a memory scan built at planning: the queue can hold many
//! checkpoints' rows when the archiver falls behind (an object store that is down), and a
//! memory scan would decode all of them before the query starts, for every query, even one
//! that stops after ten rows. This node reads the statement's snapshot one entry at a time on
//! a blocking thread and hands its batches on through a channel of two, so a query holds
//! about one entry, and a query that ends early stops the reading.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use sluice_engine::archive::queued_entries;
use sluice_engine::plan::RelationId;
use sluice_storage::StateSnapshot;

/// Batches decoded ahead of the consumer.
const READ_AHEAD: usize = 2;

/// Scans source `source`'s history queue as of one snapshot, entry by entry.
pub struct QueuedRowsExec {
    snapshot: Arc<dyn StateSnapshot>,
    source: RelationId,
    /// The source's columns as archived (what entries are decoded as).
    archived: SchemaRef,
    /// The columns the scan produces (the archived ones, strings possibly as `Utf8View`).
    columns: SchemaRef,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for QueuedRowsExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuedRowsExec").field("source", &self.source).field("epoch", &self.snapshot.epoch()).finish()
    }
}

impl QueuedRowsExec {
    /// Reads source `source`'s queue in `snapshot`, entries decoded as `archived`, cast to
    /// `columns` (same names, types that may differ) and then narrowed to `projection`.
    pub fn new(
        snapshot: Arc<dyn StateSnapshot>,
        source: RelationId,
        archived: SchemaRef,
        columns: SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> DfResult<Self> {
        let projected = match &projection {
            Some(indices) => Arc::new(columns.project(indices)?),
            None => Arc::clone(&columns),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(projected),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self { snapshot, source, archived, columns, projection, properties: Arc::new(properties) })
    }
}

impl DisplayAs for QueuedRowsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "QueuedRowsExec: source={}", self.source)
    }
}

impl ExecutionPlan for QueuedRowsExec {
    fn name(&self) -> &str {
        "QueuedRowsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("QueuedRowsExec has no children".into()))
        }
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!("QueuedRowsExec has one partition, asked for {partition}")));
        }
        let mut builder = RecordBatchReceiverStreamBuilder::new(self.schema(), READ_AHEAD);
        let tx = builder.tx();
        let (snapshot, source, archived) = (Arc::clone(&self.snapshot), self.source, Arc::clone(&self.archived));
        let columns = Arc::clone(&self.columns);
        let projection = self.projection.clone();
        builder.spawn_blocking(move || {
            let external = |e: sluice_engine::EngineError| DataFusionError::External(Box::new(e));
            let needs_cast = columns != archived;
            for entry in queued_entries(snapshot.as_ref(), source, &archived).map_err(external)? {
                for rows in entry.map_err(external)?.batches {
                    let rows = if needs_cast {
                        let cast = rows
                            .columns()
                            .iter()
                            .zip(columns.fields())
                            .map(|(column, field)| cast(column, field.data_type()))
                            .collect::<Result<Vec<_>, _>>()?;
                        RecordBatch::try_new(Arc::clone(&columns), cast)?
                    } else {
                        rows
                    };
                    let rows = match &projection {
                        Some(indices) => rows.project(indices)?,
                        None => rows,
                    };
                    // A closed channel: the query stopped reading (LIMIT, error, cancel).
                    if rows.num_rows() > 0 && tx.blocking_send(Ok(rows)).is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        });
        Ok(builder.build())
    }
}
