//! [`ShardedOperator`]: one stateful operator run as several parallel instances, rows routed
//! by a hash of their key.
//!
//! Why this shape: a stateful operator's work (state lookups, hashing, encoding) is per key,
//! and keys are independent, so instances that each own a disjoint set of keys can run on
//! different cores with no coordination but the barrier. A row's key is hashed into one of
//! [`VIRTUAL_PARTITIONS`] virtual partitions, and partition `p` belongs to instance
//! `p mod instances`: the state itself is keyed by the row's key, never by instance, so a
//! restart with another parallelism reads the same state.
//!
//! Protocol: changes are split by instance and sent down bounded channels (a slow instance
//! slows its sender: backpressure, not buffering). On a barrier every instance flushes its
//! state into its own write batch and hands back its output; the sharded operator merges the
//! batches and concatenates the outputs in instance order, so the result is deterministic. An
//! error inside an instance surfaces at the next barrier.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::common::hash_utils::{create_hashes, RandomState};
use datafusion::physical_expr::PhysicalExpr;
use sluice_storage::{Epoch, WriteBatch};

use crate::operator::evaluate;
use crate::watermark::Watermark;
use crate::{ChangeBatch, EngineError, EngineResult, Operator};

/// How many virtual partitions keys are hashed into; instances own whole partitions.
pub const VIRTUAL_PARTITIONS: u64 = 256;

/// Change batches queued per instance before the sender waits. Enough to keep an instance
/// busy while the sender splits the next batch; more only buys memory: each queued row is
/// cheap, but becomes dirty state (hundreds of bytes per new group) once processed, so a deep
/// queue lets an epoch overshoot its memory limit by the queue's rows times that.
const QUEUE_DEPTH: usize = 4;

enum ShardCommand {
    /// Changes, with the bytes the sender added to the instance's `queued` for them (taken
    /// off again, the same figure, when the instance picks them up).
    Changes(ChangeBatch, usize),
    Watermark(usize, Watermark),
    Barrier(Epoch),
}

/// An instance's barrier output: its changes, its writes, and the promises it releases.
type BarrierResult = EngineResult<(Vec<ChangeBatch>, WriteBatch, Vec<Watermark>)>;

/// What an instance holds in memory, for [`Operator::dirty_bytes`]: bytes of change batches
/// queued to it (added by the sender, subtracted as it takes them) and of its operator's
/// dirty state plus the output it holds until the barrier (stored after each command).
///
/// A queued batch is charged at what the instance's last batch grew its state by per byte
/// (`growth`), not at its own size: a row of a new group costs hundreds of bytes of state
/// once processed but tens while queued, so charging queued rows at their size let an epoch
/// that ended at its limit go on to hold two to four times that once the queues drained
/// (BENCHMARKS.md, the recovery flood).
struct HeldBytes {
    queued: AtomicUsize,
    dirty: AtomicUsize,
    /// Bytes of held state the last processed batch added per byte of its own, in
    /// thousandths, at least 1000 (a queued batch holds at least itself).
    growth: AtomicUsize,
}

impl Default for HeldBytes {
    fn default() -> Self {
        Self { queued: AtomicUsize::new(0), dirty: AtomicUsize::new(0), growth: AtomicUsize::new(GROWTH_UNIT) }
    }
}

/// [`HeldBytes::growth`] of a batch that adds only itself.
const GROWTH_UNIT: usize = 1000;

/// The largest [`HeldBytes::growth`] charged: a tiny batch opening a group measures a large
/// ratio that says nothing about the next, larger batch.
const MAX_GROWTH: usize = 64 * GROWTH_UNIT;

struct Instance {
    held: Arc<HeldBytes>,
    commands: SyncSender<ShardCommand>,
    results: Receiver<BarrierResult>,
    thread: Option<JoinHandle<()>>,
}

impl Instance {
    /// Queues `changes` for the instance, counting their bytes as queued until it takes them.
    /// Fails if the instance has stopped.
    fn enqueue(&self, changes: ChangeBatch) -> Result<(), ()> {
        let growth = self.held.growth.load(Ordering::Relaxed);
        let bytes = changes.memory_size().saturating_mul(growth) / GROWTH_UNIT;
        self.held.queued.fetch_add(bytes, Ordering::Relaxed);
        self.commands.send(ShardCommand::Changes(changes, bytes)).map_err(|_| ())
    }
}

/// A stateful operator split into instances by key (see the module doc).
pub struct ShardedOperator {
    name: String,
    key: Vec<Arc<dyn PhysicalExpr>>,
    /// Whether the operator passes its input through as it goes (materialize): the sharded
    /// operator then forwards its input itself and drops the instances' outputs.
    passthrough: bool,
    /// Whether rows belong to no instance in particular (an append-only view's
    /// materialize): whole batches then go to the instances in turn, `next` first, with no
    /// hashing and no splitting.
    spread: bool,
    next: usize,
    instances: Vec<Instance>,
    hashes: Vec<u64>,
    /// Promises released by the last barrier (the smallest over the instances, per column).
    released: Vec<Watermark>,
}

impl std::fmt::Debug for ShardedOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedOperator").field("name", &self.name).field("instances", &self.instances.len()).finish()
    }
}

fn run_instance(
    mut op: Box<dyn Operator>,
    passthrough: bool,
    commands: Receiver<ShardCommand>,
    results: SyncSender<BarrierResult>,
    held: Arc<HeldBytes>,
) {
    let mut failed: Option<EngineError> = None;
    let mut pending: Vec<ChangeBatch> = Vec::new();
    let mut pending_bytes = 0;
    for command in commands {
        match command {
            ShardCommand::Changes(changes, bytes) => {
                held.queued.fetch_sub(bytes, Ordering::Relaxed);
                if failed.is_some() {
                    continue;
                }
                let size = changes.memory_size();
                let before = op.dirty_bytes() + pending_bytes;
                match op.process(changes) {
                    Ok(out) if !passthrough => {
                        pending_bytes += out.iter().map(ChangeBatch::memory_size).sum::<usize>();
                        pending.extend(out);
                    }
                    Ok(_) => {}
                    Err(e) => failed = Some(e),
                }
                let after = op.dirty_bytes() + pending_bytes;
                if size > 0 {
                    let growth = after.saturating_sub(before).saturating_mul(GROWTH_UNIT) / size;
                    held.growth.store(growth.clamp(GROWTH_UNIT, MAX_GROWTH), Ordering::Relaxed);
                }
                held.dirty.store(after, Ordering::Relaxed);
            }
            ShardCommand::Watermark(input, watermark) => {
                if failed.is_some() {
                    continue;
                }
                // A keyed instance releases promises only with its barrier output.
                if let Err(e) = op.on_watermark(input, watermark) {
                    failed = Some(e);
                }
            }
            ShardCommand::Barrier(epoch) => {
                let result = match failed.take() {
                    Some(e) => Err(e),
                    None => {
                        let mut write = WriteBatch::new();
                        op.on_barrier(epoch, &mut write).map(|out| {
                            let mut all = std::mem::take(&mut pending);
                            if !passthrough {
                                all.extend(out);
                            }
                            (all, write, op.released_watermarks())
                        })
                    }
                };
                pending_bytes = 0;
                held.dirty.store(op.dirty_bytes(), Ordering::Relaxed);
                if results.send(result).is_err() {
                    return;
                }
            }
        }
    }
}

/// The instance (of `instances`) owning each row of `keys` (one array per key column).
pub(crate) fn owners(keys: &[ArrayRef], instances: usize, hashes: &mut Vec<u64>) -> EngineResult<Vec<usize>> {
    let rows = keys.first().map_or(0, |k| k.len());
    hashes.clear();
    hashes.resize(rows, 0);
    if !keys.is_empty() {
        create_hashes(keys, &RandomState::with_seed(0), hashes)?;
    }
    Ok(hashes.iter().map(|h| ((h % VIRTUAL_PARTITIONS) % instances as u64) as usize).collect())
}

impl ShardedOperator {
    /// Runs `instances` (at least one) as parallel instances keyed by `key`, expressions over
    /// the input rows. `passthrough` as for materialize (see the field).
    pub fn try_new(
        name: &str,
        key: Vec<Arc<dyn PhysicalExpr>>,
        instances: Vec<Box<dyn Operator>>,
        passthrough: bool,
    ) -> EngineResult<Self> {
        if instances.is_empty() {
            return Err(EngineError::Invalid("a sharded operator needs an instance".into()));
        }
        let mut running = Vec::with_capacity(instances.len());
        let count = instances.len();
        for (i, mut op) in instances.into_iter().enumerate() {
            op.set_shard(i, count);
            let (commands, command_rx) = sync_channel(QUEUE_DEPTH);
            let (result_tx, results) = sync_channel(1);
            let held = Arc::new(HeldBytes::default());
            let instance_held = Arc::clone(&held);
            let thread = std::thread::Builder::new()
                .name("sluice-shard".into())
                .stack_size(16 << 20)
                .spawn(move || run_instance(op, passthrough, command_rx, result_tx, instance_held))
                .map_err(|e| EngineError::Invalid(format!("cannot start instance {i} of {name}: {e}")))?;
            running.push(Instance { held, commands, results, thread: Some(thread) });
        }
        Ok(Self {
            name: name.to_string(),
            key,
            passthrough,
            spread: false,
            next: 0,
            instances: running,
            hashes: Vec::new(),
            released: Vec::new(),
        })
    }

    /// Runs `instances` that may each take any row (see the `spread` field), such as an
    /// append-only view's materialize. `passthrough` as for [`ShardedOperator::try_new`].
    pub fn spreading(name: &str, instances: Vec<Box<dyn Operator>>, passthrough: bool) -> EngineResult<Self> {
        let mut sharded = Self::try_new(name, Vec::new(), instances, passthrough)?;
        sharded.spread = true;
        Ok(sharded)
    }

    fn stopped(&self) -> EngineError {
        EngineError::Invalid(format!("an instance of {} stopped", self.name))
    }
}

impl Operator for ShardedOperator {
    fn name(&self) -> &str {
        &self.name
    }

    fn process(&mut self, changes: ChangeBatch) -> EngineResult<Vec<ChangeBatch>> {
        let n = self.instances.len();
        let out = if self.passthrough { vec![changes.clone()] } else { vec![] };
        if n == 1 {
            return self.instances[0].enqueue(changes).map(|()| out).map_err(|_| self.stopped());
        }
        if self.spread {
            let at = self.next;
            self.next = (at + 1) % n;
            return self.instances[at].enqueue(changes).map(|()| out).map_err(|_| self.stopped());
        }
        let rows = changes.num_rows();
        let keys: Vec<ArrayRef> = self.key.iter().map(|e| evaluate(e, changes.data())).collect::<EngineResult<_>>()?;
        // No key (a global aggregate): everything belongs to instance 0.
        let owners = if keys.is_empty() { vec![0; rows] } else { owners(&keys, n, &mut self.hashes)? };
        let mut selected: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (row, owner) in owners.into_iter().enumerate() {
            selected[owner].push(row as u32);
        }
        for (instance, rows) in self.instances.iter().zip(selected) {
            if rows.is_empty() {
                continue;
            }
            let indices = UInt32Array::from(rows);
            let data = take_record_batch(changes.data(), &indices)?;
            let ops = datafusion::arrow::compute::take(changes.ops(), &indices, None)?;
            let part = ChangeBatch::try_new(
                data,
                datafusion::arrow::array::AsArray::as_primitive::<datafusion::arrow::datatypes::Int8Type>(&ops).clone(),
            )?;
            instance.enqueue(part).map_err(|_| self.stopped())?;
        }
        Ok(out)
    }

    fn on_barrier(&mut self, epoch: Epoch, write: &mut WriteBatch) -> EngineResult<Vec<ChangeBatch>> {
        for instance in &self.instances {
            instance.commands.send(ShardCommand::Barrier(epoch)).map_err(|_| self.stopped())?;
        }
        let mut out = Vec::new();
        let mut first_error = None;
        let mut released: Option<std::collections::BTreeMap<usize, i64>> = None;
        for instance in &self.instances {
            match instance.results.recv().map_err(|_| self.stopped())? {
                Ok((changes, batch, watermarks)) => {
                    out.extend(changes);
                    write.append(batch);
                    // A column's promise holds for the whole operator only if every instance
                    // makes it; they all saw the same watermarks, so they agree.
                    let mine: std::collections::BTreeMap<usize, i64> = watermarks.iter().map(|w| (w.column, w.value)).collect();
                    released = Some(match released {
                        None => mine,
                        Some(all) => all
                            .into_iter()
                            .filter_map(|(c, v)| mine.get(&c).map(|m| (c, v.min(*m))))
                            .collect(),
                    });
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.released =
            released.unwrap_or_default().into_iter().map(|(column, value)| Watermark { column, value }).collect();
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    fn on_watermark(&mut self, input: usize, watermark: Watermark) -> EngineResult<Vec<Watermark>> {
        if self.passthrough {
            // The input passes through as it comes, and so do the promises about it.
            return Ok(vec![watermark]);
        }
        for instance in &self.instances {
            instance.commands.send(ShardCommand::Watermark(input, watermark)).map_err(|_| self.stopped())?;
        }
        Ok(Vec::new())
    }

    fn released_watermarks(&mut self) -> Vec<Watermark> {
        std::mem::take(&mut self.released)
    }

    fn dirty_bytes(&self) -> usize {
        self.instances
            .iter()
            .map(|i| i.held.queued.load(Ordering::Relaxed).saturating_add(i.held.dirty.load(Ordering::Relaxed)))
            .sum()
    }
}

impl Drop for ShardedOperator {
    fn drop(&mut self) {
        // Closing the command channels ends the instance threads.
        for instance in &mut self.instances {
            let (closed, _) = sync_channel(0);
            instance.commands = closed;
            if let Some(thread) = instance.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::mpsc::{channel, Receiver, Sender};

    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;

    use super::*;

    /// Holds ten bytes of dirty state per byte of input, and waits at each batch until the
    /// test lets it go (after saying that it has taken the batch).
    struct TenfoldState {
        dirty: usize,
        taken: Sender<()>,
        go: Receiver<()>,
    }

    impl Operator for TenfoldState {
        fn name(&self) -> &str {
            "TenfoldState"
        }

        fn process(&mut self, changes: ChangeBatch) -> EngineResult<Vec<ChangeBatch>> {
            let _ = self.taken.send(());
            let _ = self.go.recv();
            self.dirty += 10 * changes.memory_size();
            Ok(Vec::new())
        }

        fn on_barrier(&mut self, _epoch: Epoch, _write: &mut WriteBatch) -> EngineResult<Vec<ChangeBatch>> {
            self.dirty = 0;
            Ok(Vec::new())
        }

        fn dirty_bytes(&self) -> usize {
            self.dirty
        }
    }

    fn batch(rows: i64) -> ChangeBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        ChangeBatch::inserts(RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..rows))]).unwrap())
    }

    /// A batch still in an instance's queue counts as the state it will become, measured on
    /// the instance's last batch, so that an epoch ended at its limit does not go on to hold
    /// several times that once the queue drains.
    #[test]
    fn a_queued_batch_counts_as_the_state_the_last_batch_grew_into() {
        let (taken_tx, taken) = channel();
        let (go_tx, go_rx) = channel();
        let op = TenfoldState { dirty: 0, taken: taken_tx, go: go_rx };
        let mut sharded = ShardedOperator::try_new("agg", Vec::new(), vec![Box::new(op)], false).unwrap();
        // Declared after the operator so that it drops first: a failed assertion then frees an
        // instance waiting for it, instead of hanging in the operator's drop (which joins it).
        let go = go_tx;
        let size = batch(1000).memory_size();
        // The first batch: taken, so no longer queued, and not processed yet: nothing held.
        sharded.process(batch(1000)).unwrap();
        taken.recv().unwrap();
        assert_eq!(sharded.dirty_bytes(), 0);
        go.send(()).unwrap();
        // The barrier waits for the instance: the batch has grown into ten times its size.
        sharded.on_barrier(1, &mut WriteBatch::new()).unwrap();
        assert_eq!(sharded.dirty_bytes(), 0, "the barrier wrote the state out");
        // One batch taken (the instance waits in it) and one queued behind it: the queued one
        // counts as the ten times its size that the last batch grew into.
        sharded.process(batch(1000)).unwrap();
        taken.recv().unwrap();
        sharded.process(batch(1000)).unwrap();
        assert_eq!(sharded.dirty_bytes(), 10 * size);
        // The taken one processed and the queued one taken: the same bytes, now as state.
        go.send(()).unwrap();
        taken.recv().unwrap();
        assert_eq!(sharded.dirty_bytes(), 10 * size);
        go.send(()).unwrap();
        sharded.on_barrier(2, &mut WriteBatch::new()).unwrap();
        assert_eq!(sharded.dirty_bytes(), 0);
    }
}
