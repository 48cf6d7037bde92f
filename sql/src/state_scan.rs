//! [`StateScan`]: a query's scan of a table's or a view's rows, read from the statement's
//! snapshot a batch at a time.
//!
//! Why: a table or view may be many times the memory limit (its state lives in RocksDB), and
//! a query that decoded all of it before the first row (`count(*)` over a view of 50M rows)
//! would hold all of it at once. The scan keeps the snapshot and the last key it returned,
//! and reads the next batch from there when DataFusion asks for it, on a blocking thread
//! (RocksDB reads block).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::ExecutionPlan;

/// Reads up to one batch of rows after a key (from the first if None), returning them with
/// the last row's key, or None past the end. Holds its snapshot.
pub(crate) type ReadChunk = dyn Fn(Option<&[u8]>) -> DfResult<Option<(RecordBatch, Vec<u8>)>> + Send + Sync;

/// One partition streaming a relation's rows through a [`ReadChunk`].
pub(crate) struct StateScan {
    schema: SchemaRef,
    read: Arc<ReadChunk>,
}

impl fmt::Debug for StateScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateScan").field("schema", &self.schema).finish_non_exhaustive()
    }
}

impl StateScan {
    /// The execution plan reading `schema`'s rows through `read`, with `projection` applied.
    pub(crate) fn plan(schema: SchemaRef, read: Arc<ReadChunk>, projection: Option<&Vec<usize>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let partition: Arc<dyn PartitionStream> = Arc::new(Self { schema: Arc::clone(&schema), read });
        Ok(Arc::new(StreamingTableExec::try_new(schema, vec![partition], projection, [], false, None)?))
    }
}

impl PartitionStream for StateScan {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let read = Arc::clone(&self.read);
        // The state is the key to read after (None: from the first); the stream ends when a
        // read finds no more rows.
        let batches = futures::stream::try_unfold(None::<Vec<u8>>, move |after| {
            let read = Arc::clone(&read);
            async move {
                let chunk = tokio::task::spawn_blocking(move || read(after.as_deref()))
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))??;
                Ok(chunk.map(|(batch, last)| (batch, Some(last))))
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.schema), batches))
    }
}
