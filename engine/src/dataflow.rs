//! The dataflow runtime: every materialized view's operators, fed by the changes of tables
//! and sources, advanced by barriers.
//!
//! ```text
//!   DML commit ──Changes──┐
//!   source reader ────────┼──► command channel ──► dataflow thread: views in creation order
//!   FLUSH / ticker ─Barrier┘        (FIFO)            op → op → … → Materialize ──► dependents
//!                                                     barrier: on_barrier() → one commit
//! ```
//!
//! Why one ordered channel: a DML statement commits to the store and enqueues its changes
//! while holding the table lock, and `CREATE MATERIALIZED VIEW` takes its snapshot of the
//! tables and enqueues the view under the same lock. So the channel order is the commit
//! order, and a new view sees the snapshot, then exactly the changes committed after it —
//! nothing missed, nothing doubled. A barrier enqueued after a change is processed after it,
//! which is all `FLUSH` needs.
//!
//! Why a dedicated thread: operators are synchronous, CPU-bound code; running them on the
//! async runtime would stall the connections' tasks.
//!
//! Consistency: all views' state is written in one batch per barrier and committed as one
//! epoch, so a SELECT (which reads one snapshot) sees every view at the same barrier.
//!
//! Errors: a view whose operator fails (an overflow, a division by zero in its expressions)
//! stops, and so do the views defined on it; reading them reports the error. Other views go
//! on.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{create_physical_expr, PhysicalExpr};
use sluice_storage::{Durability, Epoch, StateSnapshot, TableId, WriteBatch};
use tokio::sync::{mpsc, oneshot};

use crate::archive::{clear_queue, next_queue_seq, ArchiveDefinition, RunningArchive};
use crate::commit::EpochCommitter;
use crate::exchange::ShardedOperator;
use datafusion::physical_expr::expressions::Column;
use crate::operator::{
    expand_view_rows, AggregateCall, ViewLayout, FilterOperator, HashAggregateOperator, MaterializeOperator, ProjectOperator,
    ScanOperator, SessionWindowOperator, UnionOperator, UnnestOperator, WindowKey,
};
use crate::plan::{NodeKind, RelationId, StreamPlan};
use crate::recovery::{
    creating_view_entry, late_rows_counter, log_key, read_counter, record_late_rows, recorded_failure, source_position, system_tables,
    record_source_errors, source_errors_counter, LateRow, RejectedRecord, SourcePosition,
};
use crate::sink::{delivery_loop, next_outbox_seq, outbox_key, RunningSink, SinkDefinition};
use crate::source::{ErrorPolicy, SourceBatch, SourceConnector};
use crate::watermark::{split_late, Watermark, WatermarkGenerator};
use crate::{ChangeBatch, EngineError, EngineResult, Operator, StateTable};

/// A stored table's rows as of one snapshot, read [`crate::state_table::SCAN_BATCH_ROWS`] at a
/// time and shaped by `shape`: a new view's backfill from a table or view, which must not
/// have to fit in memory.
struct StoredRows<F> {
    table: Arc<StateTable>,
    snapshot: Arc<dyn StateSnapshot>,
    /// The key of the last row read; None before the first chunk.
    after: Option<Vec<u8>>,
    finished: bool,
    shape: F,
}

impl<F: FnMut(RecordBatch) -> EngineResult<RecordBatch>> StoredRows<F> {
    fn new(table: Arc<StateTable>, snapshot: Arc<dyn StateSnapshot>, shape: F) -> Self {
        Self { table, snapshot, after: None, finished: false, shape }
    }
}

impl<F: FnMut(RecordBatch) -> EngineResult<RecordBatch>> Iterator for StoredRows<F> {
    type Item = EngineResult<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let chunk = self.table.scan_chunk(self.snapshot.as_ref(), self.after.as_deref(), crate::state_table::SCAN_BATCH_ROWS);
        match chunk {
            Ok(Some((batch, last))) => {
                self.after = Some(last);
                Some((self.shape)(batch))
            }
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(e) => {
                self.finished = true;
                Some(Err(e))
            }
        }
    }
}

/// The outbox entries of a new sink's first delivery as they are written (see
/// `Worker::first_delivery`): rows gathered into the next entry, and the entries not yet
/// committed.
struct OutboxEntries {
    sink: RelationId,
    next_seq: u64,
    /// Entries written since the last commit, and their encoded bytes.
    write: WriteBatch,
    written: usize,
    /// Rows of the next entry, their count and (estimated) bytes in memory.
    pending: Vec<ChangeBatch>,
    pending_rows: usize,
    pending_bytes: usize,
}

impl OutboxEntries {
    /// Encodes the pending rows, if any, as the next entry.
    fn seal(&mut self) -> EngineResult<()> {
        self.pending_rows = 0;
        self.pending_bytes = 0;
        let Some(changes) = ChangeBatch::take_concat(&mut self.pending)? else { return Ok(()) };
        let entry = crate::recovery::encode_log_entry(self.sink, &changes, None)?;
        self.written += entry.len();
        self.write.put(system_tables::SINK_OUTBOX, outbox_key(self.sink, self.next_seq), entry);
        self.next_seq += 1;
        Ok(())
    }
}

/// How a new view gets the current contents of a relation it reads.
pub enum Backfill {
    /// A table's rows as of the snapshot taken when the view was enqueued (the table's state
    /// table also holds hidden columns after the first `columns`).
    Table {
        /// The relation.
        relation: RelationId,
        /// The table's rows.
        state: Arc<StateTable>,
        /// How many leading columns are the table's own.
        columns: usize,
        /// The snapshot.
        snapshot: Arc<dyn StateSnapshot>,
        /// The table's watermark as of the snapshot, delivered after its rows.
        watermark: Option<Watermark>,
    },
    /// A view's current contents, read by the dataflow itself.
    View {
        /// The view.
        relation: RelationId,
    },
    /// Rows the caller reads for the dataflow, one batch at a time: a pushed source's
    /// history (archived files plus queue), which only the history crate can read. The
    /// dataflow settles every running view, commits, and only then pulls `rows`, so the
    /// caller must read them as of a snapshot taken after a barrier (see `Dataflow::flush`)
    /// with no new rows of `relation` since.
    Rows {
        /// The relation the rows arrive under.
        relation: RelationId,
        /// The rows, or the error that stops the view's creation. Pulled on the dataflow
        /// thread, which blocks on it (so it must not need the dataflow to make progress).
        rows: Box<dyn Iterator<Item = EngineResult<RecordBatch>> + Send>,
        /// The relation's watermark after the rows.
        watermark: Option<Watermark>,
    },
}

/// A reader the view starts: its own copy of a source's stream.
pub struct SourceReader {
    /// The relation id the reader's changes are delivered under (unique to this reader).
    pub relation: RelationId,
    /// The source's name, for errors.
    pub source: String,
    /// What it reads.
    pub connector: Arc<dyn SourceConnector>,
    /// The source's event time, if it declares a watermark.
    pub watermark: Option<SourceWatermark>,
    /// What to do with records the connector rejects.
    pub error_policy: ErrorPolicy,
}

/// Where a connector hands its batches: applies the source's watermark (late rows are set
/// aside) and error policy, and queues the rows for the dataflow with the position after them.
pub struct SourceOutput {
    relation: RelationId,
    source: String,
    sender: OutputTarget,
    event_time: Option<(SourceWatermark, WatermarkGenerator)>,
    error_policy: ErrorPolicy,
}

/// Where a [`SourceOutput`] sends.
enum OutputTarget {
    /// The dataflow.
    Dataflow(mpsc::Sender<Command>),
    /// A channel of raw batches (to read a connector directly).
    Batches(mpsc::Sender<SourceBatch>),
}

impl std::fmt::Debug for SourceOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceOutput").field("relation", &self.relation).field("source", &self.source).finish_non_exhaustive()
    }
}

impl SourceOutput {
    /// Delivers `batch`. Returns false when the reader must stop: its view is gone, or the
    /// batch holds a rejected record under `error.policy = 'fail'`.
    pub async fn emit(&mut self, batch: SourceBatch) -> bool {
        let sender = match &self.sender {
            OutputTarget::Batches(sender) => return sender.send(batch).await.is_ok(),
            OutputTarget::Dataflow(sender) => sender.clone(),
        };
        if self.error_policy == ErrorPolicy::Fail {
            if let Some(record) = batch.rejected.first() {
                let error = format!(
                    "source \"{}\" could not read the record at {} offset {}: {} (error.policy = 'fail')",
                    self.source, record.partition, record.offset, record.reason
                );
                self.fail(error).await;
                return false;
            }
        }
        let (changes, watermark, late) = match self.event_time.as_mut() {
            None => (ChangeBatch::inserts(batch.rows), None, Vec::new()),
            Some((spec, generator)) => match apply_source_watermark(&batch.rows, batch.partition, spec, generator) {
                Ok(split) => split,
                Err(e) => {
                    self.fail(e.to_string()).await;
                    return false;
                }
            },
        };
        let position = InputPosition::Source(SourcePosition {
            offset: batch.offset,
            watermark: watermark.map(|w| w.value),
            state: batch.state,
        });
        let command = Command::Changes { relation: self.relation, changes, position, watermark, late, rejected: batch.rejected };
        sender.send(command).await.is_ok()
    }

    /// The id of the reader this output belongs to (unique per view and source).
    pub fn reader_id(&self) -> RelationId {
        self.relation
    }

    /// Stops the reader's view with `error`.
    pub async fn fail(&mut self, error: String) {
        match &self.sender {
            OutputTarget::Dataflow(sender) => {
                let _ = sender.send(Command::ReaderFailed { relation: self.relation, error }).await;
            }
            OutputTarget::Batches(_) => tracing::warn!(source = %self.source, %error, "source reader failed"),
        }
    }

    /// An output that hands every batch, as the connector made it, to `sender`: for reading
    /// a connector without a dataflow (tests, tools).
    pub fn to_channel(source: &str, sender: mpsc::Sender<SourceBatch>) -> Self {
        Self { relation: 0, source: source.to_string(), sender: OutputTarget::Batches(sender), event_time: None, error_policy: ErrorPolicy::Skip }
    }
}

/// A source's `WATERMARK FOR column AS expr`.
#[derive(Debug, Clone)]
pub struct SourceWatermark {
    /// The event-time column.
    pub time_column: usize,
    /// The watermark expression, over the source's columns.
    pub expr: Arc<dyn PhysicalExpr>,
    /// How long a partition may deliver nothing before it stops holding the watermark back.
    pub idle_timeout: Duration,
}

/// How a view starts running.
pub enum ViewStart {
    /// A view being created: it reads the current contents of its inputs, and `catalog` (the
    /// view's catalog entry) commits in the same checkpoint as its first state, so that a
    /// crash leaves either no view or a working one.
    New {
        /// Current contents of the relations it reads.
        backfill: Vec<Backfill>,
        /// Writes to commit with the view's first state.
        catalog: WriteBatch,
    },
    /// A view that existed before a restart: its state is in the store as of the last
    /// checkpoint, its source readers resume at their committed offsets, and the change log
    /// replays what it had not absorbed.
    Restore,
}

/// Everything the dataflow needs to run a new view.
pub struct ViewDefinition {
    /// The view's relation id, also the state table of its rows.
    pub id: RelationId,
    /// Its name, for logs.
    pub name: String,
    /// Its operators.
    pub plan: StreamPlan,
    /// Its columns as users see them.
    pub schema: SchemaRef,
    /// How it starts.
    pub start: ViewStart,
    /// Source readers to start once the view is running.
    pub readers: Vec<SourceReader>,
}

/// Where a batch of changes comes from, so that a checkpoint can record how far each input
/// has been absorbed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum InputPosition {
    /// Change-log entry `seq` of a table write (deleted by the checkpoint that absorbs it).
    Log(u64),
    /// A source reader's position after these changes.
    Source(SourcePosition),
}

/// A message between operators: changes, or a promise about the changes to come.
#[derive(Debug, Clone)]
enum Message {
    Changes(ChangeBatch),
    Watermark(Watermark),
}

// Changes is by far the most frequent command, so boxing it to shrink the others would cost an
// allocation per batch for nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    Changes {
        relation: RelationId,
        changes: ChangeBatch,
        position: InputPosition,
        /// The relation's watermark after these changes.
        watermark: Option<Watermark>,
        /// Rows of a source reader dropped as late.
        late: Vec<LateRow>,
        /// Records a source reader's connector could not read.
        rejected: Vec<RejectedRecord>,
    },
    CreateView { view: Box<ViewDefinition>, done: oneshot::Sender<EngineResult<()>> },
    CreateSink { sink: Box<SinkDefinition>, done: oneshot::Sender<EngineResult<()>> },
    CreateArchive { archive: Box<ArchiveDefinition>, done: oneshot::Sender<EngineResult<()>> },
    DropArchive { id: RelationId, catalog: WriteBatch, done: oneshot::Sender<EngineResult<()>> },
    DropSink { id: RelationId, catalog: WriteBatch, done: oneshot::Sender<EngineResult<()>> },
    DropView { id: RelationId, catalog: WriteBatch, done: oneshot::Sender<EngineResult<()>> },
    Barrier { done: Option<oneshot::Sender<EngineResult<Epoch>>> },
    ReaderFailed { relation: RelationId, error: String },
    Shutdown,
}

/// A source batch through its watermark: the accepted rows, the watermark after them (about
/// the event-time column), and the late rows.
fn apply_source_watermark(
    batch: &datafusion::arrow::array::RecordBatch,
    partition: u32,
    spec: &SourceWatermark,
    generator: &mut WatermarkGenerator,
) -> EngineResult<(ChangeBatch, Option<Watermark>, Vec<LateRow>)> {
    let values = crate::operator::evaluate(&spec.expr, batch)?;
    let now = std::time::Instant::now();
    let split = split_late(batch, spec.time_column, values.as_ref(), generator, partition, now)?;
    let late = split.late_rows(crate::recovery::now_micros());
    let watermark = generator.current().map(|value| Watermark { column: spec.time_column, value });
    Ok((ChangeBatch::inserts(split.accepted), watermark, late))
}

/// [`DataflowConfig::epoch_memory_limit`] unless set: a quarter of the server's default
/// memory limit.
pub const DEFAULT_EPOCH_MEMORY_LIMIT: usize = 128 << 20;

/// Rows per outbox entry of a new sink's first delivery (the view's current rows), at most:
/// each entry is one `SinkConnector::deliver` call, so a large view goes out in pieces a
/// connector can hold, and the delivery task holds one piece at a time. (An entry of wide rows
/// ends sooner, at [`SINK_ENTRY_BYTES`].)
pub const SINK_ENTRY_ROWS: usize = 64 * 1024;

/// Bytes in memory of one outbox entry of a new sink's first delivery, at most (about: the
/// rows' Arrow size, estimated per chunk).
pub const SINK_ENTRY_BYTES: usize = 8 << 20;

/// Settings of the dataflow.
#[derive(Debug, Clone)]
pub struct DataflowConfig {
    /// Time between two periodic barriers.
    pub checkpoint_interval: Duration,
    /// Commands (change batches, barriers) queued at most before senders wait.
    pub channel_capacity: usize,
    /// Instances of each stateful operator (aggregates, materialize), each on its own thread
    /// and owning the keys of its virtual partitions (see `exchange`).
    pub parallelism: usize,
    /// Bytes the current epoch may hold in memory (operators' dirty state, batches queued to
    /// their instances, rows waiting for sinks and history) before the dataflow ends it early
    /// with a checkpoint of its own. Without it an input faster than the views grows an epoch,
    /// and the memory it holds, with no bound but the checkpoint interval.
    pub epoch_memory_limit: usize,
}

impl Default for DataflowConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        // A barrier waits behind every queued batch, so the queue must stay short for the
        // checkpoint interval to hold (and the epoch's dirty state with it) when the views are
        // slower than their input: 16 batches keep the pipeline busy without that.
        Self {
            checkpoint_interval: Duration::from_secs(1),
            channel_capacity: 16,
            parallelism: cores,
            epoch_memory_limit: DEFAULT_EPOCH_MEMORY_LIMIT,
        }
    }
}

/// Event-time progress the dataflow reports (for `sluice_watermarks`): per relation (a view
/// or a source reader), the watermark of each column that has one, and per source reader the
/// rows dropped as late so far.
#[derive(Debug, Default, Clone)]
pub struct EventTimeStatus {
    /// Relation → column → watermark (microseconds).
    pub watermarks: HashMap<RelationId, std::collections::BTreeMap<usize, i64>>,
    /// Source reader → late rows counted (committed and not yet committed).
    pub late_rows: HashMap<RelationId, u64>,
    /// Source reader → records rejected (committed and not yet committed).
    pub source_errors: HashMap<RelationId, u64>,
    /// Source reader → records consumed (as of the last batch absorbed).
    pub records: HashMap<RelationId, u64>,
    /// Sink → its deliveries since the server started.
    pub sinks: HashMap<RelationId, crate::sink::SinkStatus>,
}

/// Handle to the dataflow thread. Cheap to clone.
#[derive(Clone)]
pub struct Dataflow {
    commands: mpsc::Sender<Command>,
    failures: Arc<Mutex<HashMap<RelationId, String>>>,
    status: Arc<Mutex<EventTimeStatus>>,
    /// The worker's epoch memory limit, which [`Dataflow::set_epoch_memory_limit`] changes.
    epoch_memory_limit: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Dataflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataflow").finish_non_exhaustive()
    }
}

fn stopped() -> EngineError {
    EngineError::Invalid("the dataflow has stopped".into())
}

impl Dataflow {
    /// Starts the dataflow thread and its barrier ticker. Must be called inside a tokio
    /// runtime (source readers and the ticker run on it).
    pub fn start(committer: Arc<EpochCommitter>, config: DataflowConfig) -> EngineResult<Self> {
        for view in crate::recovery::discard_unfinished_views(&committer)? {
            tracing::warn!(view, "dropped the partial state of a materialized view whose CREATE did not finish");
        }
        for sink in crate::recovery::discard_unfinished_sinks(&committer)? {
            tracing::warn!(sink, "dropped the partial first delivery of a sink whose CREATE did not finish");
        }
        let (commands, receiver) = mpsc::channel(config.channel_capacity.max(1));
        let failures = Arc::new(Mutex::new(HashMap::new()));
        let status = Arc::new(Mutex::new(EventTimeStatus::default()));
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| EngineError::Invalid("the dataflow must start inside a tokio runtime".into()))?;
        let worker = Worker {
            committer,
            views: Vec::new(),
            failures: Arc::clone(&failures),
            readers: HashMap::new(),
            runtime: runtime.clone(),
            commands: commands.clone(),
            barriers: 0,
            parallelism: config.parallelism.max(1),
            absorbed_log: Vec::new(),
            offsets: HashMap::new(),
            newly_failed: Vec::new(),
            halted: None,
            status: Arc::clone(&status),
            late_pending: HashMap::new(),
            late_counts: HashMap::new(),
            errors_pending: HashMap::new(),
            error_counts: HashMap::new(),
            sinks: Vec::new(),
            archives: Vec::new(),
            buffered_bytes: 0,
            epoch_memory_limit: Arc::new(AtomicUsize::new(config.epoch_memory_limit)),
        };
        let epoch_memory_limit = Arc::clone(&worker.epoch_memory_limit);
        std::thread::Builder::new()
            .name("sluice-dataflow".into())
            .stack_size(64 << 20)
            .spawn(move || worker.run(receiver))
            .map_err(|e| EngineError::Invalid(format!("cannot start the dataflow thread: {e}")))?;
        let ticker = commands.clone();
        let interval = config.checkpoint_interval;
        runtime.spawn(async move {
            let mut timer = tokio::time::interval(interval);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer.tick().await;
            loop {
                timer.tick().await;
                if ticker.send(Command::Barrier { done: None }).await.is_err() {
                    return;
                }
            }
        });
        Ok(Self { commands, failures, status, epoch_memory_limit })
    }

    /// Changes [`DataflowConfig::epoch_memory_limit`] from the next input batch on (a memory
    /// governor lowers it while the process is over its limit).
    pub fn set_epoch_memory_limit(&self, bytes: usize) {
        self.epoch_memory_limit.store(bytes, Ordering::Relaxed);
    }


    /// Enqueues the changes of `relation` that change-log entry `seq` holds (committed with
    /// the table write). Waits while the dataflow is behind. The checkpoint that absorbs them
    /// deletes the entry.
    /// `watermark` is the table's watermark after the changes, if it declares one.
    pub async fn send_changes(
        &self,
        relation: RelationId,
        changes: ChangeBatch,
        seq: u64,
        watermark: Option<Watermark>,
    ) -> EngineResult<()> {
        self.commands
            .send(Command::Changes {
                relation,
                changes,
                position: InputPosition::Log(seq),
                watermark,
                late: Vec::new(),
                rejected: Vec::new(),
            })
            .await
            .map_err(|_| stopped())
    }

    /// Watermarks of views and source readers, and late-row counts of source readers.
    pub fn event_time_status(&self) -> EventTimeStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Enqueues a new view; the returned receiver completes once the view holds the current
    /// contents of its inputs (committed and readable).
    pub async fn create_view(&self, view: ViewDefinition) -> EngineResult<oneshot::Receiver<EngineResult<()>>> {
        let (done, result) = oneshot::channel();
        self.commands.send(Command::CreateView { view: Box::new(view), done }).await.map_err(|_| stopped())?;
        Ok(result)
    }

    /// Starts a sink of a running view; completes once its catalog entry and the view's
    /// current rows (its first delivery) are committed.
    pub async fn create_sink(&self, sink: SinkDefinition) -> EngineResult<()> {
        let (done, result) = oneshot::channel();
        self.commands.send(Command::CreateSink { sink: Box::new(sink), done }).await.map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    /// Stops a sink and deletes what it had not delivered, committing `catalog` with it.
    pub async fn drop_sink(&self, id: RelationId, catalog: WriteBatch) -> EngineResult<()> {
        let (done, result) = oneshot::channel();
        self.commands.send(Command::DropSink { id, catalog, done }).await.map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    /// Starts feeding a source's accepted rows into its history queue: a pulled source's
    /// reader resumes at its committed position (the start, for a new source). Completes once
    /// the feed runs.
    pub async fn create_archive(&self, archive: ArchiveDefinition) -> EngineResult<()> {
        let (done, result) = oneshot::channel();
        self.commands.send(Command::CreateArchive { archive: Box::new(archive), done }).await.map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    /// Stops a source's history feed and deletes its queue, its file list, its reader's
    /// position and records, committing `catalog` in the same epoch. (The files themselves
    /// are the archiver's to delete.)
    pub async fn drop_archive(&self, id: RelationId, catalog: WriteBatch) -> EngineResult<()> {
        let (done, result) = oneshot::channel();
        self.commands.send(Command::DropArchive { id, catalog, done }).await.map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    /// Stops a view, stops its source readers and deletes its state, committing `catalog`
    /// (the removal of its catalog entry) in the same epoch.
    pub async fn drop_view(&self, id: RelationId, catalog: WriteBatch) -> EngineResult<()> {
        let (done, result) = oneshot::channel();
        self.commands.send(Command::DropView { id, catalog, done }).await.map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    /// Injects a barrier and waits until every change enqueued before it is committed in every
    /// view. Returns the committed epoch.
    pub async fn flush(&self) -> EngineResult<Epoch> {
        let (done, result) = oneshot::channel();
        self.commands.send(Command::Barrier { done: Some(done) }).await.map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    /// Why view `id` stopped, if it did.
    pub fn failure(&self, id: RelationId) -> Option<String> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// Stops the dataflow thread (after the commands already queued).
    ///
    /// Returns once the dataflow thread has let go of its operators and of the state store, so
    /// that a process can close the store and exit (RocksDB aborts if its background threads
    /// outlive the process's static destructors).
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
        self.commands.closed().await;
    }
}

/// One operator of a running view and the nodes its output goes to.
struct RuntimeNode {
    op: Box<dyn Operator>,
    inputs: Vec<usize>,
    downstream: Vec<usize>,
}

struct RunningView {
    id: RelationId,
    name: String,
    schema: SchemaRef,
    nodes: Vec<RuntimeNode>,
    /// Which nodes read which relation.
    scans: Vec<(RelationId, usize)>,
    materialize: Box<dyn Operator>,
    materialized: Arc<StateTable>,
    layout: ViewLayout,
    state_tables: Vec<TableId>,
    /// Its own source readers (relations no other view reads).
    readers: Vec<RelationId>,
    failed: bool,
}

struct Worker {
    committer: Arc<EpochCommitter>,
    /// In creation order, which is a topological order: a view only reads older views.
    views: Vec<RunningView>,
    failures: Arc<Mutex<HashMap<RelationId, String>>>,
    readers: HashMap<RelationId, tokio::task::JoinHandle<()>>,
    runtime: tokio::runtime::Handle,
    commands: mpsc::Sender<Command>,
    barriers: u64,
    parallelism: usize,
    /// Change-log entries absorbed since the last checkpoint.
    absorbed_log: Vec<u64>,
    /// Source readers' positions reached since the last checkpoint.
    offsets: HashMap<RelationId, SourcePosition>,
    /// Views that failed since the last checkpoint, with why.
    newly_failed: Vec<(RelationId, String)>,
    /// Why a checkpoint could not be written, after which nothing more is absorbed or
    /// committed (a restart recovers from the last checkpoint).
    halted: Option<String>,
    status: Arc<Mutex<EventTimeStatus>>,
    /// Source readers' late rows since the last checkpoint.
    late_pending: HashMap<RelationId, Vec<LateRow>>,
    /// Source readers' late rows recorded up to the last checkpoint (the next sequence number).
    late_counts: HashMap<RelationId, u64>,
    /// Source readers' rejected records since the last checkpoint.
    errors_pending: HashMap<RelationId, Vec<RejectedRecord>>,
    /// Source readers' rejected records counted up to the last checkpoint.
    error_counts: HashMap<RelationId, u64>,
    /// Sinks, each fed by one view.
    sinks: Vec<RunningSink>,
    /// Sources' history feeds.
    archives: Vec<RunningArchive>,
    /// Bytes of changes waiting in sinks' and history feeds' `pending` since the last
    /// checkpoint.
    buffered_bytes: usize,
    /// See [`DataflowConfig::epoch_memory_limit`]; shared with [`Dataflow`], which may change it.
    epoch_memory_limit: Arc<AtomicUsize>,
}

fn physical(expr: &Expr, input: &DFSchema) -> EngineResult<Arc<dyn PhysicalExpr>> {
    Ok(create_physical_expr(expr, input, &ExecutionProps::new(), &PhysicalPlanningContext::default())?)
}

/// Fails unless `actual` has the column types `expected` declares.
fn check_types(what: &str, actual: &Schema, expected: &Schema) -> EngineResult<()> {
    let same = actual.fields().len() == expected.fields().len()
        && actual.fields().iter().zip(expected.fields()).all(|(a, e)| a.data_type() == e.data_type());
    if same {
        return Ok(());
    }
    let show = |s: &Schema| s.fields().iter().map(|f| f.data_type().to_string()).collect::<Vec<_>>().join(", ");
    Err(EngineError::Invalid(format!("{what} computes ({}) where the plan has ({})", show(actual), show(expected))))
}

/// Checks that the engine can run `plan`: every operator builds and computes the types the
/// plan declares.
pub fn check_plan(plan: &StreamPlan, committer: &EpochCommitter) -> EngineResult<()> {
    instantiate(plan, committer, 1).map(|_| ())
}

/// A plan's operators, and which of them read which relation.
type Instantiated = (Vec<RuntimeNode>, Vec<(RelationId, usize)>);

/// The operators of `plan`, wired as in the plan.
fn instantiate(
    plan: &StreamPlan,
    committer: &EpochCommitter,
    parallelism: usize,
) -> EngineResult<Instantiated> {
    let mut nodes: Vec<RuntimeNode> = Vec::with_capacity(plan.nodes.len());
    let mut scans = Vec::new();
    for (at, node) in plan.nodes.iter().enumerate() {
        let schema: SchemaRef = Arc::new(node.schema.as_arrow().clone());
        let input = |i: usize| -> EngineResult<&datafusion::common::DFSchemaRef> {
            let position = *node.inputs.get(i).ok_or_else(|| EngineError::Invalid(format!("node {at} lacks input {i}")))?;
            if position >= at {
                return Err(EngineError::Invalid(format!("node {at} reads a later node {position}")));
            }
            Ok(&plan.nodes[position].schema)
        };
        let op: Box<dyn Operator> = match &node.kind {
            NodeKind::Scan { relation, columns, .. } => {
                scans.push((*relation, at));
                Box::new(ScanOperator::try_new(columns.clone(), schema)?)
            }
            NodeKind::Filter { predicate } => {
                let input = input(0)?;
                Box::new(FilterOperator::try_new(physical(predicate, input)?, input.as_arrow())?)
            }
            NodeKind::Project { exprs } => {
                let input = input(0)?;
                let monotone: Vec<Option<usize>> = exprs.iter().map(|e| crate::watermark::monotone_column(e, input)).collect();
                let exprs = exprs
                    .iter()
                    .zip(schema.fields())
                    .map(|(e, f)| Ok((physical(e, input)?, f.name().clone())))
                    .collect::<EngineResult<Vec<_>>>()?;
                let op = ProjectOperator::try_new(exprs, input.as_arrow())?.with_monotone_columns(monotone)?;
                check_types("a projection", op.schema(), &schema)?;
                Box::new(op)
            }
            NodeKind::Unnest { list_column, sources, preserve_nulls } => {
                Box::new(UnnestOperator::try_new(*list_column, sources.clone(), *preserve_nulls, schema)?)
            }
            NodeKind::Union => Box::new(UnionOperator::new(schema, node.inputs.len())),
            NodeKind::SessionWindow { keys, time_column, gap_micros, state_table } => {
                let input = input(0)?;
                let op = SessionWindowOperator::try_new(
                    input.as_arrow(),
                    keys.clone(),
                    *time_column,
                    *gap_micros,
                    *state_table,
                    Arc::clone(committer.store()),
                )?;
                check_types("a session window", op.schema(), &schema)?;
                Box::new(op)
            }
            NodeKind::Aggregate { group_by, calls, state_table, window } => {
                let input = input(0)?;
                let group_by = group_by
                    .iter()
                    .zip(schema.fields())
                    .map(|(e, f)| Ok((physical(e, input)?, f.name().clone())))
                    .collect::<EngineResult<Vec<_>>>()?;
                let offset = group_by.len();
                let calls = calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        Ok(AggregateCall {
                            kind: c.kind,
                            arg: c.arg.as_ref().map(|a| physical(a, input)).transpose()?,
                            name: schema.field(offset + i).name().clone(),
                            values_table: c.values_table,
                            separator: c.separator.clone(),
                        })
                    })
                    .collect::<EngineResult<Vec<_>>>()?;
                let build = || {
                    HashAggregateOperator::try_new(
                        input.as_arrow(),
                        group_by.clone(),
                        calls.clone(),
                        *state_table,
                        Arc::clone(committer.store()),
                        window.map(|w| WindowKey { group: w.group, input_column: w.input_column, emit_on_close: w.emit_on_close }),
                    )
                };
                let op = build()?;
                check_types("an aggregate", op.schema(), &schema)?;
                if parallelism > 1 && !group_by.is_empty() {
                    let mut instances: Vec<Box<dyn Operator>> = vec![Box::new(op)];
                    for _ in 1..parallelism {
                        instances.push(Box::new(build()?));
                    }
                    let key = group_by.iter().map(|(e, _)| Arc::clone(e)).collect();
                    Box::new(ShardedOperator::try_new("HashAggregate", key, instances, false)?)
                } else {
                    Box::new(op)
                }
            }
        };
        for input in &node.inputs {
            nodes[*input].downstream.push(at);
        }
        nodes.push(RuntimeNode { op, inputs: node.inputs.clone(), downstream: Vec::new() });
    }
    if nodes.is_empty() {
        return Err(EngineError::Invalid("an empty stream plan".into()));
    }
    Ok((nodes, scans))
}

impl RunningView {
    /// Pushes `message` into node `at` (as its input number `input`) and everything downstream
    /// of it; returns the view's own messages (what reached the materialize step).
    fn push(&mut self, at: usize, input: usize, message: Message) -> EngineResult<Vec<Message>> {
        let mut queue = VecDeque::from([(at, input, message)]);
        let mut out = Vec::new();
        while let Some((at, input, message)) = queue.pop_front() {
            let produced = self.run_node(at, input, message)?;
            self.route(at, produced, &mut queue, &mut out)?;
        }
        Ok(out)
    }

    fn run_node(&mut self, at: usize, input: usize, message: Message) -> EngineResult<Vec<Message>> {
        let op = &mut self.nodes[at].op;
        Ok(match message {
            Message::Changes(changes) => op.process(changes)?.into_iter().map(Message::Changes).collect(),
            Message::Watermark(w) => op.on_watermark(input, w)?.into_iter().map(Message::Watermark).collect(),
        })
    }

    fn route(
        &mut self,
        at: usize,
        produced: Vec<Message>,
        queue: &mut VecDeque<(usize, usize, Message)>,
        out: &mut Vec<Message>,
    ) -> EngineResult<()> {
        let root = self.nodes.len() - 1;
        for message in produced {
            if matches!(&message, Message::Changes(c) if c.num_rows() == 0) {
                continue;
            }
            for d in &self.nodes[at].downstream {
                for (input, from) in self.nodes[*d].inputs.iter().enumerate() {
                    if *from == at {
                        queue.push_back((*d, input, message.clone()));
                    }
                }
            }
            if at == root {
                match message {
                    Message::Changes(batch) => {
                        let renamed = batch.with_columns(Arc::clone(&self.schema), batch.data().columns().to_vec())?;
                        out.extend(self.materialize.process(renamed)?.into_iter().map(Message::Changes));
                    }
                    Message::Watermark(w) => {
                        out.extend(self.materialize.on_watermark(0, w)?.into_iter().map(Message::Watermark));
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs the barrier through the view's operators in plan order; returns the view's
    /// messages that the barrier released (changes, then the promises made after them).
    fn barrier(&mut self, epoch: Epoch, write: &mut WriteBatch) -> EngineResult<Vec<Message>> {
        let mut out = Vec::new();
        for at in 0..self.nodes.len() {
            let mut produced: Vec<Message> =
                self.nodes[at].op.on_barrier(epoch, write)?.into_iter().map(Message::Changes).collect();
            produced.extend(self.nodes[at].op.released_watermarks().into_iter().map(Message::Watermark));
            let mut queue = VecDeque::new();
            self.route(at, produced, &mut queue, &mut out)?;
            while let Some((next, input, message)) = queue.pop_front() {
                let produced = self.run_node(next, input, message)?;
                self.route(next, produced, &mut queue, &mut out)?;
            }
        }
        self.materialize.on_barrier(epoch, write)?;
        Ok(out)
    }
}

impl Worker {
    fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        while let Some(command) = receiver.blocking_recv() {
            if let Some(reason) = &self.halted {
                let error = || EngineError::Invalid(reason.clone());
                match command {
                    Command::Barrier { done: Some(done) } => {
                        let _ = done.send(Err(error()));
                    }
                    Command::CreateView { done, .. } => {
                        let _ = done.send(Err(error()));
                    }
                    Command::CreateSink { done, .. }
                    | Command::DropSink { done, .. }
                    | Command::CreateArchive { done, .. } => {
                        let _ = done.send(Err(error()));
                    }
                    Command::DropArchive { id, catalog, done } => {
                        let _ = done.send(self.drop_archive(id, catalog));
                    }
                    Command::DropView { id, catalog, done } => {
                        let _ = done.send(self.drop_view(id, catalog));
                    }
                    Command::Shutdown => break,
                    _ => {}
                }
                continue;
            }
            match command {
                Command::Changes { relation, changes, position, watermark, late, rejected } => {
                    self.deliver(relation, Message::Changes(changes), None);
                    if let Some(w) = watermark {
                        self.deliver(relation, Message::Watermark(w), None);
                    }
                    match position {
                        InputPosition::Log(seq) => self.absorbed_log.push(seq),
                        InputPosition::Source(position) => {
                            // A dropped view's reader may have queued rows before it stopped.
                            if self.reads(relation) {
                                self.status.lock().unwrap_or_else(|p| p.into_inner()).records.insert(relation, position.offset);
                                self.offsets.insert(relation, position);
                                if !late.is_empty() {
                                    let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
                                    *status.late_rows.entry(relation).or_insert(0) += late.len() as u64;
                                    self.late_pending.entry(relation).or_default().extend(late);
                                }
                                if !rejected.is_empty() {
                                    let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
                                    *status.source_errors.entry(relation).or_insert(0) += rejected.len() as u64;
                                    self.errors_pending.entry(relation).or_default().extend(rejected);
                                }
                            }
                        }
                    }
                    // After the bookkeeping above, so that the checkpoint carries the position
                    // of the rows it holds.
                    let held = self.epoch_bytes();
                    let limit = self.epoch_memory_limit.load(Ordering::Relaxed);
                    if held > limit {
                        tracing::debug!(held, limit, "epoch ended early: its memory limit is reached");
                        if let Err(e) = self.barrier(WriteBatch::new(), false) {
                            tracing::error!(error = %e, "barrier failed");
                        }
                    }
                }
                Command::Barrier { done } => {
                    // Every checkpoint makes the table writes before it power-safe, even with
                    // nothing of its own to write.
                    let result = self.barrier(WriteBatch::new(), true);
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "barrier failed");
                    }
                    if let Some(done) = done {
                        let _ = done.send(result);
                    }
                }
                Command::CreateView { view, done } => {
                    let result = self.create_view(*view);
                    let _ = done.send(result);
                }
                Command::CreateSink { sink, done } => {
                    let result = self.create_sink(*sink);
                    let _ = done.send(result);
                }
                Command::DropSink { id, catalog, done } => {
                    let _ = done.send(self.drop_sink(id, catalog));
                }
                Command::CreateArchive { archive, done } => {
                    let _ = done.send(self.create_archive(*archive));
                }
                Command::DropArchive { id, catalog, done } => {
                    let _ = done.send(self.drop_archive(id, catalog));
                }
                Command::DropView { id, catalog, done } => {
                    let _ = done.send(self.drop_view(id, catalog));
                }
                Command::ReaderFailed { relation, error } => {
                    if let Some(archive) = self.archives.iter_mut().find(|a| a.id == relation && a.has_reader && !a.failed) {
                        let reason = format!("source reader failed: {error}");
                        tracing::error!(source = %archive.name, %reason, "history feed stopped");
                        archive.failed = true;
                        archive.pending.clear();
                        self.failures.lock().unwrap_or_else(|p| p.into_inner()).insert(relation, reason.clone());
                        self.newly_failed.push((relation, reason));
                    } else if let Some(at) = self.views.iter().position(|v| v.scans.iter().any(|(r, _)| *r == relation)) {
                        self.fail(at, format!("source reader failed: {error}"));
                    }
                }
                Command::Shutdown => break,
            }
        }
        for (_, reader) in self.readers.drain() {
            reader.abort();
        }
        for sink in self.sinks.drain(..) {
            sink.delivery.abort();
        }
        // Everything the worker holds (operators, their instance threads, the store) goes
        // before the command channel closes, which is what `Dataflow::shutdown` waits for.
        drop(self);
        drop(receiver);
    }

    /// Bytes the current epoch holds in memory (see [`DataflowConfig::epoch_memory_limit`]).
    fn epoch_bytes(&self) -> usize {
        let operators: usize = self
            .views
            .iter()
            .filter(|v| !v.failed)
            .flat_map(|v| v.nodes.iter().map(|n| n.op.dirty_bytes()).chain([v.materialize.dirty_bytes()]))
            .sum();
        operators + self.buffered_bytes
    }

    /// Marks view `at` and every view reading it as failed.
    fn fail(&mut self, at: usize, reason: String) {
        let mut failing = vec![(at, reason)];
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((at, reason)) = failing.pop() {
            let view = &mut self.views[at];
            if view.failed {
                continue;
            }
            tracing::error!(view = %view.name, %reason, "materialized view stopped");
            view.failed = true;
            failures.insert(view.id, reason.clone());
            self.newly_failed.push((view.id, reason.clone()));
            let id = view.id;
            let name = view.name.clone();
            for (i, other) in self.views.iter().enumerate() {
                if other.scans.iter().any(|(r, _)| *r == id) {
                    failing.push((i, format!("it reads materialized view \"{name}\", which failed: {reason}")));
                }
            }
        }
    }

    /// Delivers a message of `relation` to the views reading it (or only to view `only`), and
    /// the views' resulting messages to the views reading them.
    fn deliver(&mut self, relation: RelationId, message: Message, only: Option<usize>) {
        if matches!(&message, Message::Changes(c) if c.num_rows() == 0) {
            return;
        }
        let mut pending = VecDeque::from([(relation, message, only)]);
        while let Some((relation, message, only)) = pending.pop_front() {
            if let (Message::Changes(changes), None) = (&message, only) {
                for sink in self.sinks.iter_mut().filter(|s| s.view == relation) {
                    self.buffered_bytes += changes.memory_size();
                    sink.pending.push(changes.clone());
                }
                for archive in self.archives.iter_mut().filter(|a| a.id == relation && !a.failed) {
                    self.buffered_bytes += changes.memory_size();
                    archive.pending.push(changes.clone());
                }
            }
            if let Message::Watermark(w) = &message {
                let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
                let columns = status.watermarks.entry(relation).or_default();
                let slot = columns.entry(w.column).or_insert(w.value);
                *slot = (*slot).max(w.value);
            }
            for at in 0..self.views.len() {
                if only.is_some_and(|o| o != at) || self.views[at].failed {
                    continue;
                }
                let entries: Vec<usize> =
                    self.views[at].scans.iter().filter(|(r, _)| *r == relation).map(|(_, node)| *node).collect();
                for node in entries {
                    match self.views[at].push(node, 0, message.clone()) {
                        Ok(out) => {
                            let id = self.views[at].id;
                            pending.extend(out.into_iter().map(|m| (id, m, None)));
                        }
                        Err(e) => {
                            self.fail(at, e.to_string());
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Ends an epoch: every view's dirty state, what the inputs have been absorbed up to,
    /// newly failed views and `extra` commit as one epoch. With `checkpoint`, the epoch is a
    /// checkpoint: it commits even with nothing to write, and it and every epoch before it
    /// are power-safe when it returns. Without, the epoch is unlogged (an epoch ended early by
    /// its memory share): a crash before the next checkpoint loses it, and the sources replay
    /// its input from the offsets of the checkpoint the store reopens at.
    fn barrier(&mut self, extra: WriteBatch, checkpoint: bool) -> EngineResult<Epoch> {
        let mut write = self.epoch_batch();
        write.append(extra);
        if checkpoint {
            self.commit_checkpoint(write, true)
        } else {
            self.commit_unlogged(write)
        }
    }

    /// Runs a barrier through every view and collects what the epoch writes.
    fn epoch_batch(&mut self) -> WriteBatch {
        self.buffered_bytes = 0;
        self.barriers += 1;
        let epoch = self.barriers;
        let mut write = WriteBatch::new();
        for at in 0..self.views.len() {
            if self.views[at].failed {
                continue;
            }
            match self.views[at].barrier(epoch, &mut write) {
                Ok(out) => {
                    let id = self.views[at].id;
                    for message in out {
                        self.deliver(id, message, None);
                    }
                }
                Err(e) => self.fail(at, e.to_string()),
            }
        }
        for seq in self.absorbed_log.drain(..) {
            write.delete(system_tables::CHANGE_LOG, log_key(seq).to_vec());
        }
        for sink in &mut self.sinks {
            if let Err(e) = sink.checkpoint(&mut write) {
                tracing::error!(sink = sink.id, error = %e, "a sink's changes could not be written");
            }
        }
        for archive in &mut self.archives {
            if let Err(e) = archive.checkpoint(&mut write) {
                tracing::error!(source = %archive.name, error = %e, "a source's rows could not be queued for history");
            }
        }
        for (reader, position) in self.offsets.drain() {
            write.put(system_tables::SOURCE_OFFSETS, reader.to_be_bytes().to_vec(), position.encode());
        }
        for (reader, rows) in self.late_pending.drain() {
            let first = self.late_counts.get(&reader).copied().unwrap_or(0);
            let next = record_late_rows(&mut write, reader, first, rows);
            self.late_counts.insert(reader, next);
        }
        for (reader, records) in self.errors_pending.drain() {
            let first = self.error_counts.get(&reader).copied().unwrap_or(0);
            let next = record_source_errors(&mut write, reader, first, records);
            self.error_counts.insert(reader, next);
        }
        for (view, reason) in self.newly_failed.drain(..) {
            write.put(system_tables::FAILED_VIEWS, view.to_be_bytes().to_vec(), reason.into_bytes());
        }
        write
    }

    /// Commits `write` as a checkpoint (see [`Worker::barrier`]); the sinks may then deliver
    /// every outbox entry written so far.
    fn commit_checkpoint(&mut self, mut write: WriteBatch, force: bool) -> EngineResult<Epoch> {
        write.set_durability(Durability::Checkpoint);
        match self.committer.commit_checkpoint(write, force) {
            Ok(epoch) => {
                for sink in &self.sinks {
                    sink.checkpointed_seq.store(sink.next_seq, Ordering::Release);
                    sink.notify.notify_one();
                }
                Ok(epoch)
            }
            Err(e) => {
                self.halt(&e.to_string());
                Err(e.into())
            }
        }
    }

    /// Commits `write` as an unlogged epoch (see [`Worker::barrier`]).
    fn commit_unlogged(&mut self, mut write: WriteBatch) -> EngineResult<Epoch> {
        write.set_durability(Durability::Unlogged);
        self.committer.commit(write).map_err(|e| {
            self.halt(&e.to_string());
            e.into()
        })
    }

    /// A checkpoint could not be written (a full or failing disk): the epoch's state is lost
    /// from memory, so no view may go on from it. Every view stops until a restart recovers
    /// them from the last committed checkpoint; nothing of this is recorded as a view
    /// failure, since the views themselves are sound.
    fn halt(&mut self, reason: &str) {
        let message = format!("a checkpoint could not be written ({reason}); restart the server to recover the views from the last checkpoint");
        tracing::error!(%message, "dataflow halted");
        self.halted = Some(message.clone());
        self.absorbed_log.clear();
        self.offsets.clear();
        self.late_pending.clear();
        self.errors_pending.clear();
        for archive in &mut self.archives {
            archive.pending.clear();
        }
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for view in &mut self.views {
            if !view.failed {
                view.failed = true;
                failures.insert(view.id, message.clone());
            }
        }
        self.newly_failed.clear();
    }

    fn create_view(&mut self, view: ViewDefinition) -> EngineResult<()> {
        let (nodes, scans) = instantiate(&view.plan, &self.committer, self.parallelism)?;
        let store = Arc::clone(self.committer.store());
        let layout = view.plan.layout;
        let materialize: Box<dyn Operator> = if self.parallelism > 1 {
            let instances = (0..self.parallelism)
                .map(|_| Ok(Box::new(MaterializeOperator::try_new(view.id, &view.schema, Arc::clone(&store), layout)?) as Box<dyn Operator>))
                .collect::<EngineResult<Vec<_>>>()?;
            match layout {
                ViewLayout::AppendOnly => Box::new(ShardedOperator::spreading("Materialize", instances, true)?),
                ViewLayout::Counted => {
                    let key = (0..view.schema.fields().len())
                        .map(|i| Arc::new(Column::new(view.schema.field(i).name(), i)) as Arc<dyn PhysicalExpr>)
                        .collect();
                    Box::new(ShardedOperator::try_new("Materialize", key, instances, true)?)
                }
            }
        } else {
            Box::new(MaterializeOperator::try_new(view.id, &view.schema, store, layout)?)
        };
        let materialized = Arc::new(crate::operator::view_state_table(view.id, &view.schema, layout)?);
        let mut state_tables = view.plan.state_tables();
        state_tables.push(view.id);
        let running = RunningView {
            id: view.id,
            name: view.name.clone(),
            schema: Arc::clone(&view.schema),
            nodes,
            scans,
            materialize,
            materialized,
            layout,
            state_tables,
            readers: view.readers.iter().map(|r| r.relation).collect(),
            failed: false,
        };
        let (backfill, catalog) = match view.start {
            ViewStart::Restore => {
                let snapshot = self.committer.store().snapshot();
                self.views.push(running);
                if let Some(reason) = recorded_failure(snapshot.as_ref(), view.id)? {
                    let at = self.views.len() - 1;
                    self.views[at].failed = true;
                    self.failures.lock().unwrap_or_else(|p| p.into_inner()).insert(view.id, reason);
                    return Ok(());
                }
                for reader in view.readers {
                    self.resume_reader(reader, snapshot.as_ref())?;
                }
                tracing::info!(view = %view.name, "materialized view restored");
                return Ok(());
            }
            ViewStart::New { backfill, catalog } => (backfill, catalog),
        };
        // Settle every running view first, so that views this one reads are committed. The
        // same epoch records that the view is being created: its backfill may commit partial
        // state over several epochs before its catalog entry exists, and a restart drops the
        // state such a record names (`discard_unfinished_views`).
        let mut intent = WriteBatch::new();
        let (key, tables) = creating_view_entry(view.id, &running.state_tables);
        intent.put(system_tables::CREATING_VIEWS, key, tables);
        self.barrier(intent, false)?;
        self.views.push(running);
        let at = self.views.len() - 1;
        let snapshot = self.committer.store().snapshot();
        for backfill in backfill {
            let mut watermarks = Vec::new();
            let (relation, rows): (RelationId, Box<dyn Iterator<Item = EngineResult<RecordBatch>> + Send>) = match backfill {
                Backfill::Table { relation, state, columns, snapshot, watermark } => {
                    watermarks.extend(watermark);
                    let projection: Vec<usize> = (0..columns).collect();
                    let shape = move |b: RecordBatch| b.project(&projection).map_err(EngineError::from);
                    (relation, Box::new(StoredRows::new(state, snapshot, shape)))
                }
                Backfill::View { relation } => {
                    let Some(source) = self.views.iter().find(|v| v.id == relation) else {
                        return self.abandon(at, format!("materialized view {relation} is not running"));
                    };
                    if source.failed {
                        return self.abandon(at, format!("materialized view \"{}\" has failed", source.name));
                    }
                    let status = self.status.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(columns) = status.watermarks.get(&relation) {
                        watermarks.extend(columns.iter().map(|(column, value)| Watermark { column: *column, value: *value }));
                    }
                    drop(status);
                    let (schema, layout) = (Arc::clone(&source.schema), source.layout);
                    let stored = Arc::clone(&source.materialized);
                    let shape = move |b: RecordBatch| expand_view_rows(&b, &schema, layout);
                    (relation, Box::new(StoredRows::new(stored, Arc::clone(&snapshot), shape)))
                }
                Backfill::Rows { relation, rows, watermark } => {
                    watermarks.extend(watermark);
                    (relation, rows)
                }
            };
            for batch in rows {
                let batch = match batch {
                    Ok(batch) => batch,
                    Err(e) => return self.abandon(at, e.to_string()),
                };
                if batch.num_rows() > 0 {
                    self.deliver(relation, Message::Changes(ChangeBatch::inserts(batch)), Some(at));
                }
                if self.views[at].failed {
                    // The view's state is discarded below; the rest need not be read.
                    break;
                }
                // A backfill larger than an epoch's memory commits as it goes, like any input.
                if self.epoch_bytes() > self.epoch_memory_limit.load(Ordering::Relaxed) {
                    tracing::debug!(view = %view.name, "backfill epoch ended early: its memory limit is reached");
                    self.barrier(WriteBatch::new(), false)?;
                }
            }
            for w in watermarks {
                self.deliver(relation, Message::Watermark(w), Some(at));
            }
        }
        // The view's first state and its catalog entry commit together, or (if it failed
        // over the current rows) the view is removed and its catalog entry never written.
        let mut write = self.epoch_batch();
        if self.views[at].failed {
            self.commit_checkpoint(write, false)?;
            let reason = self.failure(view.id);
            return self.abandon(at, reason);
        }
        write.append(catalog);
        write.delete(system_tables::CREATING_VIEWS, view.id.to_be_bytes().to_vec());
        self.commit_checkpoint(write, true)?;
        for reader in view.readers {
            self.late_counts.insert(reader.relation, 0);
            self.error_counts.insert(reader.relation, 0);
            self.start_reader(reader, SourcePosition::default());
        }
        tracing::info!(view = %view.name, "materialized view created");
        Ok(())
    }

    fn failure(&self, id: RelationId) -> String {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned().unwrap_or_default()
    }

    /// Removes the view being created at `at` and its state; returns the error for it.
    fn abandon(&mut self, at: usize, reason: String) -> EngineResult<()> {
        let view = self.views.remove(at);
        self.discard(&view, WriteBatch::new())?;
        Err(EngineError::Invalid(reason))
    }

    /// Deletes a removed view's state, reader offsets and failure, with `extra` (its catalog
    /// removal) in the same durable epoch.
    fn discard(&mut self, view: &RunningView, extra: WriteBatch) -> EngineResult<()> {
        let mut write = WriteBatch::new();
        for table in &view.state_tables {
            write.drop_table(*table);
        }
        let snapshot = self.committer.store().snapshot();
        // Only the view's own readers go with it: tables and views it read keep their state.
        for relation in &view.readers {
            self.forget_reader(*relation, snapshot.as_ref(), &mut write)?;
        }
        self.status.lock().unwrap_or_else(|p| p.into_inner()).watermarks.remove(&view.id);
        write.delete(system_tables::FAILED_VIEWS, view.id.to_be_bytes().to_vec());
        write.delete(system_tables::CREATING_VIEWS, view.id.to_be_bytes().to_vec());
        self.newly_failed.retain(|(id, _)| *id != view.id);
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&view.id);
        write.append(extra);
        write.set_durability(Durability::Checkpoint);
        self.committer.commit(write)?;
        Ok(())
    }

    /// Deletes a removed source reader's position, late rows, rejected records and counters.
    fn forget_reader(&mut self, relation: RelationId, snapshot: &dyn StateSnapshot, write: &mut WriteBatch) -> EngineResult<()> {
        write.delete(system_tables::SOURCE_OFFSETS, relation.to_be_bytes().to_vec());
        self.offsets.remove(&relation);
        self.late_counts.remove(&relation);
        self.late_pending.remove(&relation);
        self.error_counts.remove(&relation);
        self.errors_pending.remove(&relation);
        for table in [system_tables::LATE_ROWS, system_tables::SOURCE_ERRORS] {
            for kv in snapshot.scan(table, sluice_storage::KeyRange::prefix(&relation.to_be_bytes()))? {
                let (key, _) = kv?;
                write.delete(table, key.to_vec());
            }
        }
        write.delete(system_tables::COUNTERS, late_rows_counter(relation).into_bytes());
        write.delete(system_tables::COUNTERS, source_errors_counter(relation).into_bytes());
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.late_rows.remove(&relation);
        status.source_errors.remove(&relation);
        status.records.remove(&relation);
        status.watermarks.remove(&relation);
        Ok(())
    }

    /// Whether some running view or history feed reads `relation` with its own reader.
    fn reads(&self, relation: RelationId) -> bool {
        self.views.iter().any(|v| v.scans.iter().any(|(r, _)| *r == relation))
            || self.archives.iter().any(|a| a.id == relation && a.has_reader && !a.failed)
    }

    /// Resumes a reader at its committed position, with its committed counters.
    fn resume_reader(&mut self, reader: SourceReader, snapshot: &dyn StateSnapshot) -> EngineResult<()> {
        let from = source_position(snapshot, reader.relation)?;
        let late = read_counter(snapshot, &late_rows_counter(reader.relation))?.unwrap_or(0);
        let errors = read_counter(snapshot, &source_errors_counter(reader.relation))?.unwrap_or(0);
        self.late_counts.insert(reader.relation, late);
        self.error_counts.insert(reader.relation, errors);
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.late_rows.insert(reader.relation, late);
        status.source_errors.insert(reader.relation, errors);
        drop(status);
        self.start_reader(reader, from);
        Ok(())
    }

    fn create_archive(&mut self, archive: ArchiveDefinition) -> EngineResult<()> {
        if self.archives.iter().any(|a| a.id == archive.id) {
            return Err(EngineError::Invalid(format!("source \"{}\" already feeds its history", archive.name)));
        }
        let snapshot = self.committer.store().snapshot();
        let mut running = RunningArchive {
            id: archive.id,
            name: archive.name.clone(),
            pending: Vec::new(),
            next_seq: next_queue_seq(snapshot.as_ref(), archive.id)?,
            has_reader: archive.reader.is_some(),
            failed: false,
        };
        if let Some(reason) = recorded_failure(snapshot.as_ref(), archive.id)? {
            running.failed = true;
            self.failures.lock().unwrap_or_else(|p| p.into_inner()).insert(archive.id, reason);
            self.archives.push(running);
            return Ok(());
        }
        self.archives.push(running);
        if let Some(reader) = archive.reader {
            self.resume_reader(reader, snapshot.as_ref())?;
        }
        tracing::info!(source = %archive.name, "history feed started");
        Ok(())
    }

    fn drop_archive(&mut self, id: RelationId, catalog: WriteBatch) -> EngineResult<()> {
        let mut write = catalog;
        let snapshot = self.committer.store().snapshot();
        if let Some(at) = self.archives.iter().position(|a| a.id == id) {
            let archive = self.archives.remove(at);
            if archive.has_reader {
                if let Some(reader) = self.readers.remove(&id) {
                    reader.abort();
                }
                self.forget_reader(id, snapshot.as_ref(), &mut write)?;
            }
        }
        clear_queue(snapshot.as_ref(), id, &mut write)?;
        write.delete(system_tables::FAILED_VIEWS, id.to_be_bytes().to_vec());
        self.newly_failed.retain(|(failed, _)| *failed != id);
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        write.set_durability(Durability::Checkpoint);
        self.committer.commit(write)?;
        Ok(())
    }

    fn start_reader(&mut self, reader: SourceReader, from: SourcePosition) {
        let relation = reader.relation;
        if let (Some(spec), Some(w)) = (&reader.watermark, from.watermark) {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            status.watermarks.entry(relation).or_default().insert(spec.time_column, w);
        }
        let event_time = reader.watermark.map(|spec| {
            let generator = WatermarkGenerator::new(from.watermark, spec.idle_timeout);
            (spec, generator)
        });
        let mut out = SourceOutput {
            relation,
            source: reader.source,
            sender: OutputTarget::Dataflow(self.commands.clone()),
            event_time,
            error_policy: reader.error_policy,
        };
        let connector = reader.connector;
        let handle = self.runtime.spawn(async move {
            if let Err(e) = connector.run(from, &mut out).await {
                out.fail(e.to_string()).await;
            }
        });
        self.readers.insert(relation, handle);
    }

    fn create_sink(&mut self, mut sink: SinkDefinition) -> EngineResult<()> {
        let Some(view) = self.views.iter().find(|v| v.id == sink.view) else {
            return Err(EngineError::Invalid(format!("materialized view {} is not running", sink.view)));
        };
        if view.failed {
            return Err(EngineError::Invalid(format!("materialized view \"{}\" has failed", view.name)));
        }
        let next_seq = match sink.catalog.take() {
            None => next_outbox_seq(self.committer.store().snapshot().as_ref(), sink.id)?,
            Some(catalog) => match self.first_delivery(&sink, catalog) {
                Ok(next_seq) => next_seq,
                Err(e) => {
                    // Leave nothing behind: the entries committed so far and the intent go
                    // (a restart would drop them too, see `discard_unfinished_sinks`).
                    let mut write = WriteBatch::new();
                    let cleanup = self.delete_outbox(sink.id, &mut write).and_then(|()| {
                        write.delete(system_tables::CREATING_SINKS, sink.id.to_be_bytes().to_vec());
                        write.set_durability(Durability::Checkpoint);
                        Ok(self.committer.commit(write)?)
                    });
                    if let Err(cleanup) = cleanup {
                        tracing::warn!(sink = %sink.name, error = %cleanup, "a failed CREATE SINK left its partial first delivery for the next start to drop");
                    }
                    return Err(e);
                }
            },
        };
        let notify = Arc::new(tokio::sync::Notify::new());
        // Every entry so far is checkpointed: the first delivery's end was a checkpoint, and a
        // restored sink's entries are what the store reopened with.
        let checkpointed_seq = Arc::new(AtomicU64::new(next_seq));
        let delivery = self.runtime.spawn(delivery_loop(
            sink.id,
            sink.name.clone(),
            sink.connector,
            Arc::clone(&self.committer),
            Arc::clone(&notify),
            Arc::clone(&checkpointed_seq),
            Arc::clone(&self.status),
        ));
        notify.notify_one();
        self.sinks.push(RunningSink { id: sink.id, view: sink.view, pending: Vec::new(), next_seq, checkpointed_seq, notify, delivery });
        tracing::info!(sink = %sink.name, "sink started");
        Ok(())
    }

    /// A new sink's first delivery: the view's current rows as inserts, written to the sink's
    /// outbox as entries of at most [`SINK_ENTRY_ROWS`] rows (fewer for wide rows); returns
    /// the next entry's number.
    ///
    /// Settles the view first. The view is read a chunk at a time from one snapshot, and past
    /// the epoch's memory limit the entries written so far commit early, so a view larger than
    /// memory never has to be held at once. The epoch before the first chunk records the
    /// CREATE in [`system_tables::CREATING_SINKS`]; the sink's catalog entry commits with the
    /// last entries and the record's removal, so a crash part-way leaves either no sink (a
    /// restart drops the entries the record names) or a sink with its whole first delivery.
    fn first_delivery(&mut self, sink: &SinkDefinition, catalog: WriteBatch) -> EngineResult<u64> {
        let mut intent = WriteBatch::new();
        intent.put(system_tables::CREATING_SINKS, sink.id.to_be_bytes().to_vec(), Vec::new());
        self.barrier(intent, false)?;
        let view = self.views.iter().find(|v| v.id == sink.view).ok_or_else(|| EngineError::Invalid("view gone".into()))?;
        if view.failed {
            // Settling it ran the view into an error: its rows are not a result to send.
            return Err(EngineError::Invalid(format!("materialized view \"{}\" has failed", view.name)));
        }
        let (schema, layout) = (Arc::clone(&view.schema), view.layout);
        let shape = move |b: RecordBatch| expand_view_rows(&b, &schema, layout);
        let rows = StoredRows::new(Arc::clone(&view.materialized), self.committer.store().snapshot(), shape);
        let limit = self.epoch_memory_limit.load(Ordering::Relaxed);
        let mut entries = OutboxEntries { sink: sink.id, next_seq: 0, write: WriteBatch::new(), written: 0, pending: Vec::new(), pending_rows: 0, pending_bytes: 0 };
        for batch in rows {
            let batch = batch?;
            // A stored row counted n times expands to n rows, so a chunk may hold more than
            // an entry's rows: it is cut to fit.
            let bytes_per_row = batch.get_array_memory_size() / batch.num_rows().max(1);
            let mut offset = 0;
            while offset < batch.num_rows() {
                let take = (SINK_ENTRY_ROWS - entries.pending_rows).min(batch.num_rows() - offset);
                entries.pending.push(ChangeBatch::inserts(batch.slice(offset, take)));
                entries.pending_rows += take;
                entries.pending_bytes += take * bytes_per_row;
                offset += take;
                // An entry ends at its rows or (wide rows) its bytes; the entries commit early
                // past the epoch's memory share.
                if entries.pending_rows == SINK_ENTRY_ROWS || entries.pending_bytes >= SINK_ENTRY_BYTES {
                    entries.seal()?;
                }
                if entries.written > limit {
                    tracing::debug!(sink = %sink.name, "first delivery epoch ended early: its memory limit is reached");
                    // Unlogged, like any epoch ended early: a crash before the catalog's
                    // checkpoint discards the sink's entries (see `discard_unfinished_sinks`).
                    let mut early = std::mem::take(&mut entries.write);
                    early.set_durability(Durability::Unlogged);
                    self.committer.commit(early)?;
                    entries.written = 0;
                }
            }
        }
        entries.seal()?;
        let mut write = entries.write;
        write.append(catalog);
        write.delete(system_tables::CREATING_SINKS, sink.id.to_be_bytes().to_vec());
        write.set_durability(Durability::Checkpoint);
        self.committer.commit(write)?;
        Ok(entries.next_seq)
    }

    /// Deletes every outbox entry of sink `id` in `write`.
    fn delete_outbox(&self, id: RelationId, write: &mut WriteBatch) -> EngineResult<()> {
        crate::sink::delete_outbox(self.committer.store().snapshot().as_ref(), id, write)
    }

    fn drop_sink(&mut self, id: RelationId, catalog: WriteBatch) -> EngineResult<()> {
        let mut write = catalog;
        if let Some(at) = self.sinks.iter().position(|s| s.id == id) {
            let sink = self.sinks.remove(at);
            sink.delivery.abort();
        }
        self.status.lock().unwrap_or_else(|p| p.into_inner()).sinks.remove(&id);
        self.delete_outbox(id, &mut write)?;
        write.set_durability(Durability::Checkpoint);
        self.committer.commit(write)?;
        Ok(())
    }

    fn drop_view(&mut self, id: RelationId, catalog: WriteBatch) -> EngineResult<()> {
        let Some(at) = self.views.iter().position(|v| v.id == id) else {
            return Err(EngineError::Invalid(format!("no running view {id}")));
        };
        let view = self.views.remove(at);
        for (relation, _) in &view.scans {
            if let Some(reader) = self.readers.remove(relation) {
                reader.abort();
            }
        }
        self.discard(&view, catalog)
    }
}
