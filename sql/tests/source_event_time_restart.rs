//! A watermarked source across restarts: its reader resumes at the checkpointed offset with
//! the checkpointed watermark and late-row count, so after any number of restarts every
//! generated row is counted exactly once — in the view or in `sluice_late_rows` — and the
//! late rows are numbered without gaps or repeats.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{number, run};
use sluice_sql::{DataflowConfig, Database, Session};
use sluice_storage::{MemoryStateStore, StateStore};

const ROWS: i64 = 300_000;

async fn open(store: &Arc<dyn StateStore>) -> (Arc<Database>, Session) {
    let config = DataflowConfig { parallelism: 2, checkpoint_interval: Duration::from_millis(50), ..DataflowConfig::default() };
    let (db, _) = Database::open(Arc::clone(store), config).await.unwrap();
    let session = db.session("sluice", "restart", 1);
    (db, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_rows_are_counted_once_in_the_view_or_as_late_across_restarts() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
    let (mut db, mut session) = open(&store).await;
    run(
        &mut session,
        &format!(
            "CREATE SOURCE clicks (n BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1 second') \
             WITH (connector = 'datagen', datagen.rows.per.second = '100000', datagen.max.rows = '{ROWS}', \
                   fields.n.kind = 'sequence', fields.ts.disorder = '1020ms'); \
             CREATE MATERIALIZED VIEW per_second AS \
               SELECT window_start, count(*) AS rows, sum(n) AS total \
               FROM TUMBLE(clicks, ts, INTERVAL '1 second') GROUP BY window_start"
        ),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut restarts = 0;
    loop {
        run(&mut session, "FLUSH").await;
        let counted = number(&mut session, "SELECT sum(rows) FROM per_second").await;
        let late = number(&mut session, "SELECT sum(late_rows) FROM sluice_watermarks WHERE object = 'clicks'").await;
        assert!(counted + late <= ROWS, "{counted} counted and {late} late: more rows than generated");
        if counted + late == ROWS {
            assert!(late > 0 && late < 10_000 && restarts >= 3, "late {late}, restarts {restarts}: not the test intended");
            let kept = number(&mut session, "SELECT count(*) FROM sluice_late_rows WHERE object = 'clicks'").await;
            let distinct = number(&mut session, "SELECT count(DISTINCT seq) FROM sluice_late_rows WHERE object = 'clicks'").await;
            let highest = number(&mut session, "SELECT max(seq) FROM sluice_late_rows WHERE object = 'clicks'").await;
            assert_eq!((kept, distinct, highest), (late, late, late - 1), "late rows numbered with a gap or a repeat");
            // Every row exactly once: the sequence column (1..=ROWS) sums to n(n+1)/2 over the
            // view and the late rows.
            let in_view = number(&mut session, "SELECT sum(total) FROM per_second").await;
            let in_late = number(
                &mut session,
                "SELECT sum(CAST(split_part(split_part(row, ',', 1), '=', 2) AS BIGINT)) FROM sluice_late_rows WHERE object = 'clicks'",
            )
            .await;
            assert_eq!(in_view + in_late, ROWS * (ROWS + 1) / 2, "a row was lost or counted twice");
            break;
        }
        assert!(Instant::now() < deadline, "the source did not finish: {counted} counted, {late} late");
        if restarts < 6 && counted > 0 {
            // Stop without a final checkpoint: what the last periodic one holds is what survives.
            db.dataflow().shutdown().await;
            // Answered with an error once the dataflow thread has stopped (nothing more commits).
            let _ = db.dataflow().flush().await;
            drop(session);
            drop(db);
            (db, session) = open(&store).await;
            restarts += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
