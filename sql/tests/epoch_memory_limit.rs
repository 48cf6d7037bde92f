//! An epoch whose dirty state passes `epoch_memory_limit` ends early. With an hour between
//! periodic checkpoints and no FLUSH, a grouped view over a table fed many new groups must
//! still become readable, epoch by epoch, because the dataflow checkpoints by itself each time
//! the operators hold more than the limit. Each early epoch is a whole checkpoint: what a
//! query sees before the final FLUSH is some prefix of the inserts, and after it the view
//! equals the batch answer exactly. The same inserts into a database without the limit stay
//! invisible until FLUSH.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{number, rows, run};
use sluice_sql::{DataflowConfig, Database, Session};
use sluice_storage::{MemoryStateStore, StateStore};

const INSERTS: i64 = 40;
const ROWS_PER_INSERT: i64 = 1000;

/// A database whose checkpoints are an hour apart, with the view `per_k` (a group per key)
/// over table `t`, ending epochs early past `epoch_memory_limit` bytes.
async fn database(epoch_memory_limit: usize) -> Session {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
    let config = DataflowConfig {
        parallelism: 2,
        checkpoint_interval: Duration::from_secs(3600),
        epoch_memory_limit,
        ..DataflowConfig::default()
    };
    let db = Database::with_dataflow(store, config).unwrap();
    let mut session = db.session("sluice", "epochs", 1);
    run(
        &mut session,
        "CREATE TABLE t (k BIGINT, v BIGINT); \
         CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n, sum(v) AS s FROM t GROUP BY k",
    )
    .await;
    session
}

/// Inserts keys `0 .. INSERTS * ROWS_PER_INSERT` in order, `ROWS_PER_INSERT` per statement,
/// each key a new group (~1 KB of dirty state in the aggregate).
async fn insert_all(session: &mut Session) {
    for insert in 0..INSERTS {
        let values: Vec<String> =
            (0..ROWS_PER_INSERT).map(|i| insert * ROWS_PER_INSERT + i).map(|k| format!("({k}, {})", k % 7)).collect();
        run(session, &format!("INSERT INTO t VALUES {}", values.join(", "))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_end_early_when_their_dirty_state_passes_the_limit() {
    // The 256 KB limit is passed every few hundred new groups; the other database has none.
    let mut limited = database(256 << 10).await;
    let mut unlimited = database(usize::MAX).await;
    insert_all(&mut limited).await;
    insert_all(&mut unlimited).await;
    // No FLUSH and no periodic checkpoint for an hour: only early epochs make rows visible.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut visible = 0;
    while visible == 0 {
        assert!(Instant::now() < deadline, "no epoch ended early: the view stayed empty");
        tokio::time::sleep(Duration::from_millis(100)).await;
        visible = number(&mut limited, "SELECT count(*) FROM per_k").await;
    }
    assert!(visible <= INSERTS * ROWS_PER_INSERT, "{visible} groups of {}", INSERTS * ROWS_PER_INSERT);
    // A checkpoint is a prefix of the inserts (keys were inserted in order): the visible groups
    // are keys 0 .. visible, each whole and none doubled.
    assert_eq!(number(&mut limited, "SELECT max(k) + 1 FROM per_k").await, visible);
    assert_eq!(number(&mut limited, "SELECT count(*) FROM per_k WHERE n <> 1").await, 0);
    // Without the limit nothing ended the epoch: the same inserts are not visible yet.
    assert_eq!(number(&mut unlimited, "SELECT count(*) FROM per_k").await, 0);
    for session in [&mut limited, &mut unlimited] {
        run(session, "FLUSH").await;
        let view = rows(session, "SELECT count(*), sum(n), sum(s) FROM per_k").await.unwrap();
        let batch = rows(session, "SELECT count(DISTINCT k), count(*), sum(v) FROM t").await.unwrap();
        assert_eq!(view, batch);
        let keys = INSERTS * ROWS_PER_INSERT;
        assert_eq!(view, vec![format!("{keys}|{keys}|{}", (0..keys).map(|k| k % 7).sum::<i64>())]);
    }
}
