//! Sinks: a view's changes delivered to the outside world, per checkpoint, at least once.
//!
//! ```text
//!  view output ──changes──► RunningSink.pending
//!  barrier     ──► outbox entry (sink, seq) = the epoch's changes, in the checkpoint's batch
//!  commit      ──► delivery task: outbox entries in seq order → SinkConnector::deliver
//!                   (retried until it succeeds) → entry deleted (its own commit)
//!  restart     ──► entries still in the outbox are delivered again
//! ```
//!
//! Why an outbox: the changes a sink must send are final only once their checkpoint commits
//! (before that, a crash replays them and the view may produce them again), and a connector
//! that fails (a broker down) must not stop the views. The outbox holds each epoch's changes
//! durably with the state that produced them; delivery trails the checkpoints. A crash after
//! an entry was sent but before its deletion committed sends it again: at-least-once, which
//! an upsert consumer absorbs (the same keys get the same values).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_storage::{KeyRange, StateSnapshot, WriteBatch};
use tokio::sync::Notify;

use crate::commit::EpochCommitter;
use crate::plan::RelationId;
use crate::recovery::{decode_log_entry, encode_log_entry, system_tables};
use crate::{ChangeBatch, EngineError, EngineResult};

/// Where a sink sends its view's changes.
#[async_trait]
pub trait SinkConnector: Send + Sync + std::fmt::Debug {
    /// Sends one checkpoint's changes; returns once the destination has them (or fails, and
    /// is called again with the same changes).
    async fn deliver(&self, changes: &ChangeBatch) -> EngineResult<()>;
}

/// Everything the dataflow needs to run a sink.
pub struct SinkDefinition {
    /// The sink's id.
    pub id: RelationId,
    /// Its name, for logs.
    pub name: String,
    /// The view whose changes it sends.
    pub view: RelationId,
    /// Where it sends them.
    pub connector: Arc<dyn SinkConnector>,
    /// A new sink: its catalog entry, committed with the last outbox entries of its first
    /// delivery (the view's current rows, as inserts). None: a sink restored after a restart.
    pub catalog: Option<WriteBatch>,
}

/// How a sink's deliveries went since the server started (for `sluice_sinks`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SinkStatus {
    /// Outbox entries (checkpoints' changes) delivered.
    pub delivered_entries: u64,
    /// Changes (rows inserted or deleted) in them.
    pub delivered_changes: u64,
    /// Why the last delivery attempt failed, if it did (cleared by a success).
    pub last_error: Option<String>,
}

/// How many outbox entries of `sink` wait for delivery.
pub fn pending_entries(snapshot: &dyn StateSnapshot, sink: RelationId) -> EngineResult<u64> {
    let mut count = 0;
    for kv in snapshot.scan(system_tables::SINK_OUTBOX, KeyRange::prefix(&sink.to_be_bytes()))? {
        kv?;
        count += 1;
    }
    Ok(count)
}

/// A sink in the dataflow.
pub(crate) struct RunningSink {
    pub(crate) id: RelationId,
    pub(crate) view: RelationId,
    /// Changes since the last checkpoint.
    pub(crate) pending: Vec<ChangeBatch>,
    /// The next outbox entry's number.
    pub(crate) next_seq: u64,
    /// The next outbox entry's number as of the last checkpoint: the delivery task sends only
    /// the entries below it. An entry of a later, unlogged epoch may still vanish in a crash
    /// and come back with other rows (the sources replay from the checkpoint), so sending it
    /// could send rows that, after the crash, are sent again or were never final.
    pub(crate) checkpointed_seq: Arc<AtomicU64>,
    pub(crate) notify: Arc<Notify>,
    pub(crate) delivery: tokio::task::JoinHandle<()>,
}

/// The key of outbox entry `seq` of sink `sink`.
pub(crate) fn outbox_key(sink: RelationId, seq: u64) -> Vec<u8> {
    let mut key = sink.to_be_bytes().to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The entry number in an outbox key (None if the key is not one).
fn outbox_seq(key: &[u8]) -> Option<u64> {
    key.get(4..12).and_then(|seq| seq.try_into().ok()).map(u64::from_be_bytes)
}

/// Sink `sink`'s oldest outbox entry after key `after` (from the first if None), decoded.
///
/// Why one at a time: an outbox grows while its destination is down (hours of checkpoints,
/// or a large view's first delivery), and the delivery task must not hold all of it.
/// Starting after the last key delivered skips the deleted entries before it.
pub(crate) fn next_outbox_entry(
    snapshot: &dyn StateSnapshot,
    sink: RelationId,
    after: Option<&[u8]>,
) -> EngineResult<Option<(Vec<u8>, ChangeBatch)>> {
    let mut range = KeyRange::prefix(&sink.to_be_bytes());
    if let Some(after) = after {
        range.start = std::ops::Bound::Excluded(after.to_vec());
    }
    match snapshot.scan(system_tables::SINK_OUTBOX, range)?.next() {
        Some(kv) => {
            let (key, value) = kv?;
            let (_, changes, _) = decode_log_entry(&value)?;
            Ok(Some((key.to_vec(), changes)))
        }
        None => Ok(None),
    }
}

/// Deletes every outbox entry of sink `sink` as of `snapshot` in `write` (a dropped sink, or
/// one whose CREATE did not finish).
pub(crate) fn delete_outbox(snapshot: &dyn StateSnapshot, sink: RelationId, write: &mut WriteBatch) -> EngineResult<()> {
    for kv in snapshot.scan(system_tables::SINK_OUTBOX, KeyRange::prefix(&sink.to_be_bytes()))? {
        let (key, _) = kv?;
        write.delete(system_tables::SINK_OUTBOX, key.to_vec());
    }
    Ok(())
}

/// The number after the last outbox entry of `sink` (0 if none).
///
/// One backward seek: a sink whose broker was down for long may have a long outbox.
pub(crate) fn next_outbox_seq(snapshot: &dyn StateSnapshot, sink: RelationId) -> EngineResult<u64> {
    let Some(key) = snapshot.last_key(system_tables::SINK_OUTBOX, KeyRange::prefix(&sink.to_be_bytes()))? else {
        return Ok(0);
    };
    let seq = outbox_seq(&key);
    Ok(seq.ok_or_else(|| EngineError::Invalid("corrupt outbox key".into()))? + 1)
}

impl RunningSink {
    /// Writes the changes gathered since the last checkpoint as the next outbox entry.
    pub(crate) fn checkpoint(&mut self, write: &mut WriteBatch) -> EngineResult<()> {
        let Some(changes) = ChangeBatch::take_concat(&mut self.pending)? else { return Ok(()) };
        write.put(system_tables::SINK_OUTBOX, outbox_key(self.id, self.next_seq), encode_log_entry(self.id, &changes, None)?);
        self.next_seq += 1;
        Ok(())
    }
}

/// Delivers sink `sink`'s outbox entries each time `notify` fires, oldest first, retrying a
/// failed delivery with backoff (the views go on meanwhile; the outbox grows).
pub(crate) async fn delivery_loop(
    sink: RelationId,
    name: String,
    connector: Arc<dyn SinkConnector>,
    committer: Arc<EpochCommitter>,
    notify: Arc<Notify>,
    checkpointed_seq: Arc<AtomicU64>,
    status: Arc<std::sync::Mutex<crate::dataflow::EventTimeStatus>>,
) {
    let record = |update: &dyn Fn(&mut SinkStatus)| {
        let mut status = status.lock().unwrap_or_else(|p| p.into_inner());
        update(status.sinks.entry(sink).or_default());
    };
    // The key of the last entry delivered: the next one is after it (entries are numbered in
    // the order they commit, and delivery is their only reader).
    let mut delivered: Option<Vec<u8>> = None;
    loop {
        notify.notified().await;
        loop {
            let snapshot = committer.store().snapshot();
            let entry = match next_outbox_entry(snapshot.as_ref(), sink, delivered.as_deref()) {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::error!(sink = %name, error = %e, "cannot read the sink's outbox");
                    break;
                }
            };
            drop(snapshot);
            let Some((key, changes)) = entry else { break };
            // Entries of epochs after the last checkpoint wait for the next one (see
            // `RunningSink::checkpointed_seq`).
            if outbox_seq(&key).is_none_or(|seq| seq >= checkpointed_seq.load(Ordering::Acquire)) {
                break;
            }
            let mut backoff = Duration::from_millis(100);
            while let Err(e) = connector.deliver(&changes).await {
                tracing::warn!(sink = %name, error = %e, retry_in = ?backoff, "sink delivery failed");
                let reason = e.to_string();
                record(&|s| s.last_error = Some(reason.clone()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            let rows = changes.num_rows() as u64;
            drop(changes);
            record(&|s| {
                s.delivered_entries += 1;
                s.delivered_changes += rows;
                s.last_error = None;
            });
            let mut write = WriteBatch::new();
            write.delete(system_tables::SINK_OUTBOX, key.clone());
            if let Err(e) = committer.commit(write) {
                tracing::error!(sink = %name, error = %e, "cannot record a sink delivery");
                return;
            }
            delivered = Some(key);
        }
    }
}
