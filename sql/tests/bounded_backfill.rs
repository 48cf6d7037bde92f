//! A new view's backfill is bounded like any other input: past `epoch_memory_limit` of dirty
//! state it commits and goes on, so creating a view over a table larger than memory does not
//! hold the whole result in one epoch. Until the view's catalog entry commits, the view is
//! recorded as being created; a restart after a CREATE that did not finish drops the partial
//! state it committed, and the ids it held (never recorded as used) serve the next CREATE
//! with no trace of the old rows.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::{open_with_epoch_limit, rows, run, FillingStore};
use sluice_sql::{Database, Session};
use sluice_storage::{KeyRange, MemoryStateStore, StateStore, TableId};

const KEYS: i64 = 120_000;
const VIEW: &str = "CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n, sum(v) AS s FROM t GROUP BY k";

async fn open(store: Arc<dyn StateStore>, epoch_memory_limit: usize) -> (Arc<Database>, Session) {
    open_with_epoch_limit(store, epoch_memory_limit, "backfill").await
}

/// Table `t` with `KEYS` rows, each its own key (a new group of `per_k` per row).
async fn fill(session: &mut Session) {
    run(session, "CREATE TABLE t (k BIGINT, v BIGINT)").await;
    for first in (0..KEYS).step_by(5000) {
        let values: Vec<String> = (first..first + 5000).map(|k| format!("({k}, {})", k % 7)).collect();
        run(session, &format!("INSERT INTO t VALUES {}", values.join(", "))).await;
    }
    run(session, "FLUSH").await;
}

/// `per_k` against the batch answer over `t`.
async fn check_view(session: &mut Session) {
    let view = rows(session, "SELECT count(*), sum(n), sum(s) FROM per_k").await.unwrap();
    let batch = rows(session, "SELECT count(DISTINCT k), count(*), sum(v) FROM t").await.unwrap();
    assert_eq!(view, batch);
    assert_eq!(view, vec![format!("{KEYS}|{KEYS}|{}", (0..KEYS).map(|k| k % 7).sum::<i64>())]);
}

/// The rows of `table` as of the last commit of `store`.
fn stored_rows(store: &dyn StateStore, table: TableId) -> usize {
    store.snapshot().scan(table, KeyRange::all()).unwrap().count()
}

/// The views `store` records as being created, with their state tables.
fn creating(store: &dyn StateStore) -> Vec<(u32, Vec<TableId>)> {
    sluice_engine::recovery::creating_views(store.snapshot().as_ref()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_past_the_epoch_limit_commits_as_it_goes() {
    for (limit, bounded) in [(256 << 10, true), (usize::MAX, false)] {
        let store = Arc::new(MemoryStateStore::new());
        let (_db, mut session) = open(store.clone(), limit).await;
        fill(&mut session).await;
        let before = store.committed_epoch();
        run(&mut session, VIEW).await;
        let epochs = store.committed_epoch() - before;
        if bounded {
            // 120k new groups at about a kilobyte of dirty state each, checked after every
            // chunk of 8192 rows read: an early epoch every chunk or two.
            assert!(epochs >= 6, "the backfill committed {epochs} epochs under a 256 KB limit");
        } else {
            // The settling epoch (which records the creation) and the view's first state
            // with its catalog entry.
            assert_eq!(epochs, 2, "without a limit the backfill is one epoch");
        }
        assert!(creating(store.as_ref()).is_empty(), "a created view is still recorded as being created");
        check_view(&mut session).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_drops_what_an_unfinished_create_committed() {
    let inner = Arc::new(MemoryStateStore::new());
    let filling = Arc::new(FillingStore::new(Arc::clone(&inner)));
    let (db, mut session) = open(filling.clone(), 256 << 10).await;
    fill(&mut session).await;
    // The disk fills after the epoch that records the CREATE and the backfill's first one.
    filling.fail_from.store(inner.committed_epoch() + 3, Ordering::SeqCst);
    let error = rows(&mut session, VIEW).await.unwrap_err().to_string();
    assert!(error.contains("no space left on device"), "{error}");
    let unfinished = creating(inner.as_ref());
    assert_eq!(unfinished.len(), 1, "the unfinished CREATE is not recorded");
    let tables = unfinished[0].1.clone();
    let partial: usize = tables.iter().map(|t| stored_rows(inner.as_ref(), *t)).sum();
    assert!(partial > 0, "the backfill committed nothing before the disk filled up");
    db.dataflow().shutdown().await;
    drop(session);
    drop(db);

    // The restart drops the partial state; the next CREATE gets the same ids back.
    let (_db, mut session) = open(inner.clone(), 256 << 10).await;
    assert!(creating(inner.as_ref()).is_empty(), "the unfinished CREATE is still recorded after a restart");
    for table in &tables {
        assert_eq!(stored_rows(inner.as_ref(), *table), 0, "state table {table} of the unfinished view survived the restart");
    }
    assert!(rows(&mut session, "SELECT * FROM per_k").await.is_err(), "the unfinished view exists after the restart");
    run(&mut session, VIEW).await;
    let view_table = tables.last().copied().unwrap();
    assert!(stored_rows(inner.as_ref(), view_table) > 0, "the new view did not reuse the unfinished view's ids");
    check_view(&mut session).await;
}
