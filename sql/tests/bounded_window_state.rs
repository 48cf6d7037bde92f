//! A long-running windowed view keeps a bounded number of state rows: two million
//! out-of-order rows of a watermarked `datagen` source (timestamps up to 3 s behind, watermark
//! 2 s behind the largest, so some rows are late) through one-second TUMBLE windows — 2,000
//! windows in all — in both emit modes. Sampled after every FLUSH, the aggregates' state must
//! stay at the few windows the watermark has not closed; and no row may be lost: the default
//! view's counts plus the late rows add up to every row generated.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{number, run};
use sluice_sql::{DataflowConfig, Database};
use sluice_storage::{KeyRange, MemoryStateStore, StateStore};

const ROWS: i64 = 2_000_000;

fn state_rows(db: &Database, store: &Arc<dyn StateStore>, view: &str) -> usize {
    let entry = db.view(view).unwrap();
    let snapshot = store.snapshot();
    entry.plan.state_tables().iter().map(|t| snapshot.scan(*t, KeyRange::all()).unwrap().count()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_state_stays_bounded_over_millions_of_rows() {
    let store: Arc<dyn StateStore> = Arc::new(MemoryStateStore::new());
    let config = DataflowConfig { parallelism: 2, ..DataflowConfig::default() };
    let db = Database::with_dataflow(Arc::clone(&store), config).unwrap();
    let mut session = db.session("sluice", "bounded", 1);
    run(
        &mut session,
        &format!(
            "CREATE SOURCE clicks (user_id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '2 seconds') \
             WITH (connector = 'datagen', datagen.rows.per.second = '0', datagen.max.rows = '{ROWS}', \
                   fields.user_id.min = '0', fields.user_id.max = '99', fields.ts.disorder = '3 seconds'); \
             CREATE MATERIALIZED VIEW per_second AS \
               SELECT window_start, count(*) AS n, count(DISTINCT user_id) AS users \
               FROM TUMBLE(clicks, ts, INTERVAL '1 second') GROUP BY window_start; \
             CREATE MATERIALIZED VIEW per_second_final AS \
               SELECT window_start, count(*) AS n, count(DISTINCT user_id) AS users \
               FROM TUMBLE(clicks, ts, INTERVAL '1 second') GROUP BY window_start EMIT ON WINDOW CLOSE; \
             CREATE MATERIALIZED VIEW sessions_final AS \
               SELECT user_id, window_start, window_end, count(*) AS n \
               FROM SESSION(clicks, ts, INTERVAL '50 milliseconds') GROUP BY user_id, window_start, window_end \
               EMIT ON WINDOW CLOSE"
        ),
    )
    .await;
    // Rows are 1 ms apart: 1,000 per window. Open windows: the 2 s of delay, the 3 s of
    // disorder and one epoch's worth of new ones. Without eviction the state would hold all
    // 2,000 windows and their 100 users each.
    let bound = |windows: usize| windows * (1 + 100);
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut samples = 0;
    let mut largest = (0usize, 0usize);
    let mut largest_sessions = 0usize;
    loop {
        run(&mut session, "FLUSH").await;
        let late = number(&mut session, "SELECT sum(late_rows) FROM sluice_watermarks WHERE object = 'clicks' AND view = 'per_second'").await;
        let counted = number(&mut session, "SELECT sum(n) FROM per_second").await;
        let default_state = state_rows(&db, &store, "per_second");
        let final_state = state_rows(&db, &store, "per_second_final");
        if default_state.max(final_state) > 2_000 {
            eprintln!("sample {samples}: state {default_state} / {final_state}");
        }
        largest = (largest.0.max(default_state), largest.1.max(final_state));
        largest_sessions = largest_sessions.max(state_rows(&db, &store, "sessions_final"));
        samples += 1;
        // Each view has its own reader of the source: the other one may still be behind.
        let readers_agree = number(
            &mut session,
            "SELECT count(DISTINCT CAST(watermark AS VARCHAR)) + count(DISTINCT late_rows) FROM sluice_watermarks WHERE object = 'clicks'",
        )
        .await
            == 2;
        if counted + late == ROWS && readers_agree {
            assert!(late > 0, "the disorder made no row late");
            break;
        }
        assert!(counted + late <= ROWS, "{counted} counted and {late} late rows: more than the {ROWS} generated");
        assert!(Instant::now() < deadline, "the source did not finish: {counted} counted, {late} late");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The windows emitted so far are each final and emitted once.
    let emitted = number(&mut session, "SELECT count(*) FROM per_second_final").await;
    let distinct = number(&mut session, "SELECT count(DISTINCT window_start) FROM per_second_final").await;
    assert_eq!(emitted, distinct, "a window was emitted twice");
    assert!(emitted > 1_900, "only {emitted} of 2,000 windows closed");
    let closed_in_both = number(
        &mut session,
        "SELECT count(*) FROM per_second_final f JOIN per_second d ON f.window_start = d.window_start \
         WHERE f.n = d.n AND f.users = d.users",
    )
    .await;
    assert_eq!(closed_in_both, emitted, "a closed window's final row differs from the default view's");
    assert!(samples > 1);
    let limit = bound(40);
    assert!(largest.0 <= limit && largest.1 <= limit, "state grew to {largest:?} rows (bound {limit})");
    // Sessions: the rows of open sessions (the last seconds of rows) and their groups; without
    // eviction, all two million rows.
    assert!(largest_sessions <= 100_000, "session state grew to {largest_sessions} rows");
    let sessions = number(&mut session, "SELECT sum(n) FROM sessions_final").await;
    assert!(sessions > ROWS / 2, "only {sessions} rows in closed sessions");
    eprintln!("largest state: windows {largest:?}, sessions {largest_sessions}");
}
