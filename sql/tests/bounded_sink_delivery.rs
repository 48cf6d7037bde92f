//! A new sink's first delivery (its view's current rows) is bounded like a view's backfill:
//! the view is read a chunk at a time, written to the outbox as entries of at most
//! `SINK_ENTRY_ROWS` rows, and past `epoch_memory_limit` the entries written so far commit
//! early. Until the sink's catalog entry commits, the CREATE is recorded; a restart after one
//! that did not finish deletes the entries it committed, so nothing is ever delivered for a
//! sink that does not exist. The delivery task reads the outbox one entry at a time.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{open_with_epoch_limit, rows, run, FillingStore};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use sluice_engine::dataflow::SINK_ENTRY_ROWS;
use sluice_engine::recovery::{creating_sinks, system_tables};
use sluice_engine::sink::{SinkConnector, SinkDefinition};
use sluice_engine::{ChangeBatch, EngineResult, Op};
use sluice_sql::{Database, Session};
use sluice_storage::{KeyRange, MemoryStateStore, StateStore, WriteBatch};

const KEYS: i64 = 150_000;
const VIEW: &str = "CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n, sum(v) AS s FROM t GROUP BY k";
/// An id no object of the test's catalog takes.
const SINK: u32 = 1_000_000;

/// A sink that keeps what it is sent: the size of each delivery, and every inserted row as
/// `k -> (n, s)`. It takes nothing until `open` (so that its deliveries' commits do not mix
/// with the CREATE's in the epoch count).
#[derive(Debug, Default)]
struct KeepingSink {
    open: AtomicBool,
    deliveries: Mutex<Vec<usize>>,
    rows: Mutex<BTreeMap<i64, (i64, i64)>>,
}

#[async_trait]
impl SinkConnector for KeepingSink {
    async fn deliver(&self, changes: &ChangeBatch) -> EngineResult<()> {
        while !self.open.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let data = changes.data();
        let (k, n, s) =
            (data.column(0).as_primitive::<Int64Type>(), data.column(1).as_primitive::<Int64Type>(), data.column(2).as_primitive::<Int64Type>());
        let mut rows = self.rows.lock().unwrap();
        for i in 0..changes.num_rows() {
            assert_eq!(changes.op(i), Op::Insert, "a first delivery is inserts only");
            assert!(rows.insert(k.value(i), (n.value(i), s.value(i))).is_none(), "key {} delivered twice", k.value(i));
        }
        self.deliveries.lock().unwrap().push(changes.num_rows());
        Ok(())
    }
}

async fn open(store: Arc<dyn StateStore>, epoch_memory_limit: usize) -> (Arc<Database>, Session) {
    open_with_epoch_limit(store, epoch_memory_limit, "sink").await
}

/// Table `t` with `KEYS` rows, each its own key, and view `per_k` over it.
async fn fill(session: &mut Session) {
    run(session, "CREATE TABLE t (k BIGINT, v BIGINT)").await;
    for first in (0..KEYS).step_by(5000) {
        let values: Vec<String> = (first..first + 5000).map(|k| format!("({k}, {})", k % 7)).collect();
        run(session, &format!("INSERT INTO t VALUES {}", values.join(", "))).await;
    }
    run(session, VIEW).await;
    run(session, "FLUSH").await;
}

/// Starts sink `SINK` on `per_k` with `connector`.
async fn create_sink(db: &Database, connector: Arc<KeepingSink>) -> EngineResult<()> {
    let view = db.view("per_k").unwrap().id;
    let definition =
        SinkDefinition { id: SINK, name: "keeping".into(), view, connector, catalog: Some(WriteBatch::new()) };
    db.dataflow().create_sink(definition).await
}

/// The outbox entries of `SINK` as of the last commit of `store`.
fn outbox_entries(store: &dyn StateStore) -> usize {
    store.snapshot().scan(system_tables::SINK_OUTBOX, KeyRange::prefix(&SINK.to_be_bytes())).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_delivery_is_written_in_entries_and_commits_as_it_goes() {
    for (limit, bounded) in [(256 << 10, true), (usize::MAX, false)] {
        let store = Arc::new(MemoryStateStore::new());
        let (db, mut session) = open(store.clone(), limit).await;
        fill(&mut session).await;
        let sink = Arc::new(KeepingSink::default());
        let before = store.committed_epoch();
        create_sink(&db, Arc::clone(&sink)).await.unwrap();
        let epochs = store.committed_epoch() - before;
        // The settling epoch that records the CREATE, then each entry but the last (64k rows,
        // far over 256 KB encoded) commits early, and the last commits with the catalog entry
        // and the end of the record. Without the limit: the settling epoch and one with
        // everything.
        let entries = (KEYS as usize).div_ceil(SINK_ENTRY_ROWS) as u64;
        let expected = if bounded { 1 + (entries - 1) + 1 } else { 2 };
        assert_eq!(epochs, expected, "epochs of the first delivery (limit {limit})");
        assert_eq!(outbox_entries(store.as_ref()) as u64, entries, "outbox entries of the first delivery");
        assert!(creating_sinks(store.snapshot().as_ref()).unwrap().is_empty(), "a created sink is still recorded as being created");
        sink.open.store(true, Ordering::SeqCst);

        // Delivery drains the outbox one entry at a time; every row of the view arrives once.
        let mut waited = 0;
        while sink.rows.lock().unwrap().len() < KEYS as usize || outbox_entries(store.as_ref()) > 0 {
            assert!(waited < 600, "the first delivery did not arrive in a minute");
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += 1;
        }
        let deliveries = sink.deliveries.lock().unwrap().clone();
        assert_eq!(deliveries.len() as u64, entries, "deliveries {deliveries:?}");
        assert!(deliveries.iter().all(|n| *n <= SINK_ENTRY_ROWS), "deliveries {deliveries:?}");
        let delivered = sink.rows.lock().unwrap().clone();
        let (n, s): (i64, i64) = delivered.values().fold((0, 0), |(n, s), (dn, ds)| (n + dn, s + ds));
        let view = rows(&mut session, "SELECT count(*), sum(n), sum(s), min(k), max(k) FROM per_k").await.unwrap();
        let first = delivered.keys().next().copied().unwrap();
        let last = delivered.keys().last().copied().unwrap();
        assert_eq!(view, vec![format!("{}|{n}|{s}|{first}|{last}", delivered.len())]);
        assert_eq!(delivered.len() as i64, KEYS);
        db.dataflow().shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_drops_the_entries_of_an_unfinished_create_sink() {
    let inner = Arc::new(MemoryStateStore::new());
    let filling = Arc::new(FillingStore::new(Arc::clone(&inner)));
    let (db, mut session) = open(filling.clone(), 256 << 10).await;
    fill(&mut session).await;
    // The disk fills after the epoch that records the CREATE and the first early commit.
    filling.fail_from.store(inner.committed_epoch() + 3, Ordering::SeqCst);
    let sink = Arc::new(KeepingSink::default());
    sink.open.store(true, Ordering::SeqCst);
    let error = create_sink(&db, Arc::clone(&sink)).await.unwrap_err().to_string();
    assert!(error.contains("no space left on device"), "{error}");
    assert_eq!(creating_sinks(inner.snapshot().as_ref()).unwrap(), vec![SINK], "the unfinished CREATE is not recorded");
    assert!(outbox_entries(inner.as_ref()) > 0, "the first delivery committed nothing before the disk filled up");
    db.dataflow().shutdown().await;
    drop(session);
    drop(db);
    assert!(sink.deliveries.lock().unwrap().is_empty(), "a sink whose CREATE failed delivered rows");

    // The restart deletes the partial first delivery and the record of the CREATE.
    let (db, mut session) = open(inner.clone(), 256 << 10).await;
    assert!(creating_sinks(inner.snapshot().as_ref()).unwrap().is_empty(), "the unfinished CREATE is still recorded after a restart");
    assert_eq!(outbox_entries(inner.as_ref()), 0, "the partial first delivery survived the restart");
    // The view itself is whole, and a new CREATE delivers all of it.
    let view = rows(&mut session, "SELECT count(*) FROM per_k").await.unwrap();
    assert_eq!(view, vec![KEYS.to_string()]);
    create_sink(&db, Arc::clone(&sink)).await.unwrap();
    let mut waited = 0;
    while sink.rows.lock().unwrap().len() < KEYS as usize {
        assert!(waited < 600, "the first delivery did not arrive in a minute");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    db.dataflow().shutdown().await;
}
