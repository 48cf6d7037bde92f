//! # sluice-history: every source's events kept as Parquet, and batch queries over them
//!
//! The job HDFS and Spark batch did in the old stack. Each source's accepted rows reach a
//! durable queue in the state store with the checkpoint that read them (`sluice-engine`'s
//! `archive` module); this crate turns that queue into Parquet files on an `object_store`,
//! laid out by event time, and answers a plain `SELECT` over a source with the files plus the
//! queue, as of one snapshot.
//!
//! ```text
//!   HISTORY_QUEUE (state store) ──archiver round──► <source>/date=YYYY-MM-DD/hour=HH/<id>-<first>-<last>.parquet
//!                                 one commit: HISTORY_FILES += files, HISTORY_QUEUE -= entries
//!   SELECT … FROM source ──► HISTORY_FILES pruned by time ──► Parquet scan ─┐
//!                            HISTORY_QUEUE (same snapshot) ──► entry by entry ─┴► UNION ALL
//! ```
//!
//! Exactly once: at every committed epoch each accepted row is either in the queue or in
//! exactly one listed file. Files a crash left unlisted are deleted at start-up, before any
//! archiver runs.

mod archiver;
mod compaction;
mod files_exec;
pub mod manifest;
mod pins;
mod queue_exec;
mod scan;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use sluice_engine::plan::RelationId;
use sluice_engine::EpochCommitter;
use sluice_storage::StateSnapshot;

pub use archiver::HistorySpec;
pub use compaction::CompactionPolicy;
pub use manifest::ArchivedFile;
pub use store::HistoryStore;

/// Why history could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The object store cannot be used (unreachable, refuses writes, misconfigured).
    #[error("{0}")]
    Unusable(String),
    /// The object store failed an operation.
    #[error("history store: {0}")]
    ObjectStore(#[from] datafusion::object_store::Error),
    /// The state store failed.
    #[error(transparent)]
    Storage(#[from] sluice_storage::StorageError),
    /// The queue could not be read.
    #[error(transparent)]
    Engine(#[from] sluice_engine::EngineError),
    /// Rows could not be split or converted.
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// A Parquet file could not be written or read.
    #[error("{0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// Stored history metadata is unreadable.
    #[error("{0}")]
    Corrupt(String),
}

/// What the archiver and the scans of one source did since the server started.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SourceActivity {
    /// Rows archived.
    pub rows_archived: u64,
    /// Why the last round failed, if it did (cleared by a success).
    pub last_error: Option<String>,
    /// Batch queries over the source.
    pub scans: u64,
    /// Archived files those queries read (after pruning).
    pub files_scanned: u64,
    /// Small files merged away by compaction.
    pub files_compacted: u64,
    /// Files those queries skipped because they could not be read.
    pub files_skipped: u64,
    /// The last skipped file and why.
    pub last_skipped: Option<String>,
}

/// Per-source activity counters, shared by the archivers and the scans.
#[derive(Debug, Default)]
pub struct HistoryStatus {
    sources: Mutex<HashMap<RelationId, SourceActivity>>,
}

impl HistoryStatus {
    fn update(&self, id: RelationId, f: impl FnOnce(&mut SourceActivity)) {
        f(self.sources.lock().unwrap_or_else(|p| p.into_inner()).entry(id).or_default());
    }

    fn record_round(&self, id: RelationId, rows: usize, error: Option<String>) {
        self.update(id, |a| {
            a.rows_archived += rows as u64;
            a.last_error = error;
        });
    }

    fn record_compaction(&self, id: RelationId, inputs: usize) {
        if inputs > 0 {
            self.update(id, |a| a.files_compacted += inputs as u64);
        }
    }

    /// Source `id`'s counters.
    pub fn of(&self, id: RelationId) -> SourceActivity {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned().unwrap_or_default()
    }
}

/// The history of every source of one database: the store, the archivers, the scans.
pub struct History {
    store: HistoryStore,
    committer: Arc<EpochCommitter>,
    archivers: Mutex<HashMap<RelationId, tokio::task::JoinHandle<()>>>,
    status: Arc<HistoryStatus>,
    pins: Arc<pins::ScanPins>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("store", &self.store.location()).finish_non_exhaustive()
    }
}

impl History {
    /// Opens the history kept in `store` for the database whose state `committer` commits:
    /// checks that the store works, then deletes the files no committed epoch lists (a crash
    /// between writing files and committing them). Must run before any archiver starts.
    pub async fn open(store: HistoryStore, committer: Arc<EpochCommitter>) -> Result<Self, HistoryError> {
        store.probe().await?;
        let listed = manifest::all_paths(committer.store().snapshot().as_ref())?;
        let deleted = archiver::delete_unlisted(&store, None, &listed, &|_| true).await?;
        if deleted > 0 {
            tracing::info!(files = deleted, "deleted history files no checkpoint committed");
        }
        Ok(Self { store, committer, archivers: Mutex::new(HashMap::new()), status: Arc::default(), pins: Arc::default() })
    }

    /// The store.
    pub fn store(&self) -> &HistoryStore {
        &self.store
    }

    /// Activity counters.
    pub fn status(&self) -> &HistoryStatus {
        &self.status
    }

    /// Starts archiving `spec`'s source (its queue is fed by the dataflow).
    pub fn start(&self, spec: HistorySpec) {
        let id = spec.id;
        let task = tokio::spawn(archiver::run(
            spec,
            self.store.clone(),
            Arc::clone(&self.committer),
            Arc::clone(&self.status),
            Arc::clone(&self.pins),
        ));
        if let Some(old) = self.archivers.lock().unwrap_or_else(|p| p.into_inner()).insert(id, task) {
            old.abort();
        }
    }

    /// Stops archiving source `id`; returns once no round of it can commit any more.
    pub async fn stop(&self, id: RelationId) {
        let task = self.archivers.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Deletes the files of dropped source `id` (named `name`), in the background.
    pub fn delete_files(&self, id: RelationId, name: &str) {
        let store = self.store.clone();
        let prefix = format!("{name}/");
        tokio::spawn(async move {
            let keep = std::collections::HashSet::new();
            match archiver::delete_unlisted(&store, Some(&prefix), &keep, &|owner| owner == id).await {
                Ok(n) => tracing::info!(source = id, files = n, "dropped source's history deleted"),
                Err(e) => tracing::warn!(source = id, error = %e, "cannot delete a dropped source's history"),
            }
        });
    }

    /// Plans a batch query over `spec`'s source as of `snapshot`, producing `columns` (the
    /// archived columns; text may be `Utf8View`), counting the files it reads.
    #[allow(clippy::too_many_arguments)]
    pub fn scan(
        &self,
        state: &dyn Session,
        snapshot: &Arc<dyn StateSnapshot>,
        spec: &HistorySpec,
        columns: &SchemaRef,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let pin = Arc::new(self.pins.pin());
        let status = Arc::clone(&self.status);
        let id = spec.id;
        let report: files_exec::SkipReport = Arc::new(move |path: &str, reason: &str| {
            status.update(id, |a| {
                a.files_skipped += 1;
                a.last_skipped = Some(format!("{path}: {reason}"));
            });
        });
        let scan = scan::plan_scan(state, snapshot, &self.store, (spec, columns), (projection, filters, limit), report, pin)?;
        tracing::debug!(source = %spec.name, files = scan.files_scanned, of = scan.files_total, "history scan");
        self.status.update(spec.id, |a| {
            a.scans += 1;
            a.files_scanned += scan.files_scanned as u64;
        });
        Ok(scan.plan)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use sluice_storage::{MemoryStateStore, WriteBatch};

    fn file(path: &str) -> ArchivedFile {
        ArchivedFile {
            path: path.into(),
            partition: "date=2015-05-17/hour=10".into(),
            hour: Some(0),
            rows: 1,
            bytes: 6,
            min_time: None,
            max_time: None,
            first_seq: 0,
            last_seq: 0,
            written_at: 0,
        }
    }

    /// What a crash between writing files and committing them leaves is deleted at start-up;
    /// listed files and files that are not Sluice's stay.
    #[tokio::test]
    async fn opening_deletes_history_files_no_commit_lists() {
        let dir = tempfile::tempdir().unwrap();
        let hour = dir.path().join("s/date=2015-05-17/hour=10");
        std::fs::create_dir_all(&hour).unwrap();
        for name in ["7-000000000000-000000000003.parquet", "7-000000000004-000000000009.parquet", "notes.parquet"] {
            std::fs::write(hour.join(name), b"parquet").unwrap();
        }
        let committer = Arc::new(EpochCommitter::new(Arc::new(MemoryStateStore::new())));
        let mut write = WriteBatch::new();
        manifest::add(&mut write, 7, &file("s/date=2015-05-17/hour=10/7-000000000000-000000000003.parquet")).unwrap();
        committer.commit(write).unwrap();

        History::open(HistoryStore::local(dir.path()).unwrap(), committer).await.unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(&hour).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, vec!["7-000000000000-000000000003.parquet".to_string(), "notes.parquet".into()]);
        assert!(!dir.path().join("_sluice_probe").exists(), "the start-up probe cleans up after itself");
    }
}
