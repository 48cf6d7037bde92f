//! Merging a partition's small files into large ones, without a moment where a query could
//! see a row missing or doubled.
//!
//! A steady source writes one file per hour per archiving round: hundreds of small files an
//! hour, each costing a request and a footer read per query. Compaction picks, in a partition,
//! the files smaller than half the target size, and merges as many as fit in the target into
//! one file named after the sequence range they cover (`<id>-<first>-<last>-c.parquet`). One
//! commit then lists the merged file and unlists its inputs, so every snapshot sees either the
//! inputs or the merged file, never both, never neither. The inputs are deleted once no query
//! can still be reading them (`pins`). A crash before the commit leaves the merged file
//! unlisted; after it, the inputs; either is deleted at start-up.
//!
//! When: a partition with at least `min_files` small files, or a quiet one (no new file for
//! [`QUIET_ROUNDS`] flush intervals) with at least two.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStoreExt, PutPayload};
use datafusion::parquet::arrow::ArrowWriter;
use sluice_engine::EpochCommitter;
use sluice_storage::WriteBatch;

use crate::archiver::{decode_parquet, writer_properties, HistorySpec};
use crate::manifest::{self, ArchivedFile};
use crate::store::HistoryStore;
use crate::HistoryError;

/// A partition that got no new file for this many flush intervals is merged even when it has
/// fewer than `min_files` small files.
pub const QUIET_ROUNDS: u32 = 10;

/// Bytes of input merged per call at most, so that archiving is never held up for long.
const BYTES_PER_CALL: u64 = 512 << 20;

/// How a source's files are compacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// The size a merged file aims at; files of half of it or more are left alone.
    pub target_bytes: u64,
    /// Small files in a partition that start a merge.
    pub min_files: usize,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self { target_bytes: 128 << 20, min_files: 10 }
    }
}

/// What one call merged.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Files merged away.
    pub inputs: usize,
    /// Files written.
    pub outputs: usize,
}

/// The groups of files to merge, per partition: small files in sequence order, as many as
/// fit in the target, when the partition is due.
fn plan(spec: &HistorySpec, policy: &CompactionPolicy, files: Vec<ArchivedFile>, skip: &HashSet<String>, now: i64) -> Vec<Vec<ArchivedFile>> {
    let quiet_micros = i64::try_from((spec.flush_interval * QUIET_ROUNDS).as_micros()).unwrap_or(i64::MAX);
    let mut partitions: BTreeMap<String, Vec<ArchivedFile>> = BTreeMap::new();
    let mut newest: BTreeMap<String, i64> = BTreeMap::new();
    for file in files {
        let latest = newest.entry(file.partition.clone()).or_insert(i64::MIN);
        *latest = (*latest).max(file.written_at);
        if file.bytes < policy.target_bytes / 2 && !skip.contains(&file.path) {
            partitions.entry(file.partition.clone()).or_default().push(file);
        }
    }
    let mut groups = Vec::new();
    let mut budget = BYTES_PER_CALL;
    for (partition, mut small) in partitions {
        let quiet = newest.get(&partition).is_some_and(|t| now.saturating_sub(*t) >= quiet_micros);
        if small.len() < 2 || (small.len() < policy.min_files.max(2) && !quiet) {
            continue;
        }
        small.sort_by_key(|f| f.first_seq);
        let mut group = Vec::new();
        let mut bytes = 0;
        for file in small {
            if bytes + file.bytes > policy.target_bytes && group.len() >= 2 {
                break;
            }
            bytes += file.bytes;
            group.push(file);
        }
        if group.len() < 2 || bytes > budget {
            continue;
        }
        budget -= bytes;
        groups.push(group);
    }
    groups
}

/// How long compaction leaves a file it could not read alone before trying it again.
pub const UNREADABLE_RETRY: Duration = Duration::from_secs(600);

/// Files compaction could not read, and since when.
///
/// Why they are tried again after [`UNREADABLE_RETRY`] rather than never: an operator may put
/// a lost file back, and a read may have failed for a passing reason; why not at once: a file
/// that is really damaged would be fetched and decoded again every flush interval.
#[derive(Debug, Default)]
pub struct UnreadableFiles {
    since: HashMap<String, Instant>,
}

impl UnreadableFiles {
    /// Notes that `path` could not be read.
    pub fn insert(&mut self, path: String) {
        self.since.insert(path, Instant::now());
    }

    /// The files to leave alone now; those noted longer ago than the retry interval are forgotten.
    fn current(&mut self) -> HashSet<String> {
        self.since.retain(|_, since| since.elapsed() < UNREADABLE_RETRY);
        self.since.keys().cloned().collect()
    }
}

/// Merges `group` (one partition's files, in sequence order) into one file and commits the
/// swap. A file that cannot be read is left out of the merge (and noted in `unreadable`, so
/// calls for a while leave it alone); the rest are merged if at least two remain.
async fn merge(
    spec: &HistorySpec,
    store: &HistoryStore,
    committer: &EpochCommitter,
    group: Vec<ArchivedFile>,
    unreadable: &mut UnreadableFiles,
) -> Result<Option<Vec<String>>, HistoryError> {
    let mut inputs = Vec::with_capacity(group.len());
    for file in group {
        let read = store.object_store().get(&Path::from(file.path.as_str())).await;
        match read {
            Ok(result) => inputs.push((file, result.bytes().await?)),
            Err(datafusion::object_store::Error::NotFound { .. }) => {
                tracing::warn!(path = %file.path, "history file missing: left out of compaction");
                unreadable.insert(file.path);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let schema = spec.schema.clone();
    let (merged, inputs, bad) = tokio::task::spawn_blocking(move || -> Result<_, HistoryError> {
        let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(writer_properties()))?;
        let mut kept = Vec::new();
        let mut bad = Vec::new();
        for (file, bytes) in inputs {
            // The whole file decodes before any of it reaches the merged file.
            match decode_parquet(bytes) {
                Ok(batches) => {
                    for batch in &batches {
                        writer.write(batch)?;
                    }
                    kept.push(file);
                }
                Err(e) => {
                    tracing::warn!(path = %file.path, error = %e, "history file unreadable: left out of compaction");
                    bad.push(file.path);
                }
            }
        }
        Ok((writer.into_inner()?, kept, bad))
    })
    .await
    .map_err(|e| HistoryError::Corrupt(format!("the compaction task stopped: {e}")))??;
    for path in bad {
        unreadable.insert(path);
    }
    let (Some(first), Some(first_seq), Some(last_seq)) =
        (inputs.first(), inputs.iter().map(|f| f.first_seq).min(), inputs.iter().map(|f| f.last_seq).max())
    else {
        return Ok(None);
    };
    if inputs.len() < 2 {
        return Ok(None);
    }
    let merged_file = ArchivedFile {
        path: format!("{}/{}/{}-{first_seq:012}-{last_seq:012}-c.parquet", spec.name, first.partition, spec.id),
        partition: first.partition.clone(),
        hour: first.hour,
        rows: inputs.iter().map(|f| f.rows).sum(),
        bytes: merged.len() as u64,
        min_time: inputs.iter().filter_map(|f| f.min_time).min(),
        max_time: inputs.iter().filter_map(|f| f.max_time).max(),
        first_seq,
        last_seq,
        written_at: chrono::Utc::now().timestamp_micros(),
    };
    store.object_store().put(&Path::from(merged_file.path.as_str()), PutPayload::from(merged)).await?;
    let mut write = WriteBatch::new();
    for input in &inputs {
        manifest::remove(&mut write, spec.id, &input.path);
    }
    manifest::add(&mut write, spec.id, &merged_file)?;
    write.set_durability(sluice_storage::Durability::Checkpoint);
    committer.commit(write)?;
    tracing::debug!(source = %spec.name, partition = %merged_file.partition, inputs = inputs.len(), "history compacted");
    Ok(Some(inputs.into_iter().map(|f| f.path).collect()))
}

/// Merges the small files of `spec`'s partitions that are due; returns what it merged and
/// the paths it retired (to delete once no query can be reading them).
pub async fn compact(
    spec: &HistorySpec,
    store: &HistoryStore,
    committer: &EpochCommitter,
    unreadable: &mut UnreadableFiles,
) -> Result<(Compacted, Vec<String>), HistoryError> {
    let snapshot = committer.store().snapshot();
    let files = manifest::files(snapshot.as_ref(), spec.id)?;
    drop(snapshot);
    let mut done = Compacted::default();
    let mut retired = Vec::new();
    let skip = unreadable.current();
    for group in plan(spec, &spec.compaction, files, &skip, chrono::Utc::now().timestamp_micros()) {
        if let Some(paths) = merge(spec, store, committer, group, unreadable).await? {
            done.inputs += paths.len();
            done.outputs += 1;
            retired.extend(paths);
        }
    }
    Ok((done, retired))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    use std::time::Duration;

    fn spec() -> HistorySpec {
        HistorySpec {
            id: 7,
            name: "s".into(),
            schema: Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)])),
            time_column: None,
            flush_interval: Duration::from_secs(1),
            retention: None,
            compaction: CompactionPolicy { target_bytes: 1000, min_files: 3 },
        }
    }

    fn file(partition: &str, seq: u64, bytes: u64, written_at: i64) -> ArchivedFile {
        ArchivedFile {
            path: format!("s/{partition}/7-{seq:012}-{seq:012}.parquet"),
            partition: partition.into(),
            hour: Some(0),
            rows: 1,
            bytes,
            min_time: None,
            max_time: None,
            first_seq: seq,
            last_seq: seq,
            written_at,
        }
    }

    #[test]
    fn busy_partitions_merge_at_min_files_quiet_ones_at_two_large_files_stay() {
        let spec = spec();
        let policy = spec.compaction;
        let now = 100_000_000;
        let busy = |n: u64| (0..n).map(|i| file("a", i, 100, now)).collect::<Vec<_>>();
        assert!(plan(&spec, &policy, busy(2), &HashSet::new(), now).is_empty(), "busy, below min_files");
        let groups = plan(&spec, &policy, busy(3), &HashSet::new(), now);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].len(), 3);
        let quiet = vec![file("b", 1, 100, 0), file("b", 2, 100, 0)];
        assert_eq!(plan(&spec, &policy, quiet, &HashSet::new(), now)[0].len(), 2, "quiet partition");
        let large = vec![file("c", 1, 600, 0), file("c", 2, 100, 0)];
        assert!(plan(&spec, &policy, large, &HashSet::new(), now).is_empty(), "a file of half the target stays");
        // The target bounds a group; what does not fit waits for the next call.
        let many = (0..12).map(|i| file("d", i, 300, 0)).collect::<Vec<_>>();
        let groups = plan(&spec, &policy, many, &HashSet::new(), now);
        assert_eq!(groups[0].iter().map(|f| f.first_seq).collect::<Vec<_>>(), vec![0, 1, 2]);
        // Unreadable files are left out.
        let skip: HashSet<String> = [file("e", 1, 100, 0).path].into();
        assert!(plan(&spec, &policy, vec![file("e", 1, 100, 0), file("e", 2, 100, 0)], &skip, now).is_empty());
    }
}
