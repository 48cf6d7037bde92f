//! An epoch whose dirty state passes `epoch_memory_limit` ends early. With an hour between
//! periodic checkpoints and no FLUSH, a grouped view over a table fed many new groups must
//! still become readable, epoch by epoch, because the dataflow checkpoints by itself each time
//! the operators hold more than the limit. Each early epoch is a whole checkpoint: what a
//! query sees before the final FLUSH is some prefix of the inserts, and after it the view
//! equals the batch answer exactly.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{number, rows, run};
use sluice_sql::{DataflowConfig, Database};
use sluice_storage::{MemoryStateStore, StateStore};

const INSERTS: i64 = 40;
const ROWS_PER_INSERT: i64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_end_early_when_their_dirty_state_passes_the_limit() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
    let config = DataflowConfig {
        parallelism: 2,
        checkpoint_interval: Duration::from_secs(3600),
        epoch_memory_limit: 256 << 10,
        ..DataflowConfig::default()
    };
    let db = Database::with_dataflow(Arc::clone(&store), config).unwrap();
    let mut session = db.session("sluice", "epochs", 1);
    run(
        &mut session,
        "CREATE TABLE t (k BIGINT, v BIGINT); \
         CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n, sum(v) AS s FROM t GROUP BY k",
    )
    .await;
    // Every row a new group: ~1 KB of dirty state each in the aggregate, so the 256 KB limit
    // is passed every few hundred rows.
    for insert in 0..INSERTS {
        let values: Vec<String> =
            (0..ROWS_PER_INSERT).map(|i| insert * ROWS_PER_INSERT + i).map(|k| format!("({k}, {})", k % 7)).collect();
        run(&mut session, &format!("INSERT INTO t VALUES {}", values.join(", "))).await;
    }
    // No FLUSH and no periodic checkpoint for an hour: only early epochs make rows visible.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut visible = 0;
    while visible == 0 {
        assert!(Instant::now() < deadline, "no epoch ended early: the view stayed empty");
        tokio::time::sleep(Duration::from_millis(100)).await;
        visible = number(&mut session, "SELECT count(*) FROM per_k").await;
    }
    assert!(visible <= INSERTS * ROWS_PER_INSERT, "{visible} groups of {}", INSERTS * ROWS_PER_INSERT);
    // A checkpoint is a prefix of the inserts: each visible group is whole and none is doubled.
    assert_eq!(number(&mut session, "SELECT count(*) FROM per_k WHERE n <> 1").await, 0);
    run(&mut session, "FLUSH").await;
    let view = rows(&mut session, "SELECT count(*), sum(n), sum(s) FROM per_k").await.unwrap();
    let batch = rows(&mut session, "SELECT count(DISTINCT k), count(*), sum(v) FROM t").await.unwrap();
    assert_eq!(view, batch);
    assert_eq!(view, vec![format!("{}|{}|{}", INSERTS * ROWS_PER_INSERT, INSERTS * ROWS_PER_INSERT, {
        (0..INSERTS * ROWS_PER_INSERT).map(|k| k % 7).sum::<i64>()
    })]);
}
