//! `sluice bench`: throughput of materialized views on the peers' input.
//!
//! The input is the Nexmark-like bid stream of `shared/peers/gen_bids.py` — the same events,
//! computed by the same formula — so Sluice's numbers can be set beside Flink's, Spark's and
//! DuckDB's from one run. Rows are handed straight to the dataflow as a table's changes: the
//! benchmark measures view maintenance (the operators, their state, the checkpoints), not
//! parsing or the INSERT path.
//!
//! Per query it prints a `RESULT` line like the peers' runners (events/s of wall time, and
//! events per CPU-second of the dataflow thread, which is the figure per core), optionally the
//! rate of each chunk of rows (to show the cost per row staying flat), and a `VERIFY` line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use futures::TryStreamExt;
use sluice_engine::ChangeBatch;
use sluice_sql::{parse_statements, Database, DataflowConfig, Session, SqlError, StatementOutput};
use sluice_storage::{MemoryStateStore, RocksOptions, RocksStateStore, StateStore};

/// The benchmark queries, named as in BENCHMARKS.md.
pub const QUERIES: &[(&str, &str)] = &[
    ("q0", "SELECT * FROM bids"),
    ("filter_project", "SELECT auction, price * 100 / 89 AS price_eur, date_time FROM bids WHERE price > 5000 AND bidder % 2 = 0"),
    (
        "q5w",
        "SELECT auction, window_start, count(*) AS cnt, sum(price) AS sum_price \
         FROM TUMBLE(bids, date_time, INTERVAL '10 seconds') GROUP BY auction, window_start",
    ),
    (
        "hop10",
        "SELECT auction, window_start, count(*) AS cnt, sum(price) AS sum_price \
         FROM HOP(bids, date_time, INTERVAL '1 second', INTERVAL '10 seconds') GROUP BY auction, window_start",
    ),
    (
        "hop60",
        "SELECT auction, window_start, count(*) AS cnt, sum(price) AS sum_price \
         FROM HOP(bids, date_time, INTERVAL '1 second', INTERVAL '60 seconds') GROUP BY auction, window_start",
    ),
    // The same windows as q5w, emitted once each when the watermark (1 s behind) passes them,
    // as Flink's window aggregation does; closed windows leave the state.
    (
        "q5w_eowc",
        "SELECT auction, window_start, count(*) AS cnt, sum(price) AS sum_price \
         FROM TUMBLE(bids, date_time, INTERVAL '10 seconds') GROUP BY auction, window_start EMIT ON WINDOW CLOSE",
    ),
    (
        "hop60_eowc",
        "SELECT auction, window_start, count(*) AS cnt, sum(price) AS sum_price \
         FROM HOP(bids, date_time, INTERVAL '1 second', INTERVAL '60 seconds') GROUP BY auction, window_start \
         EMIT ON WINDOW CLOSE",
    ),
];

/// Watermark delay of the `_eowc` queries' table, in microseconds.
const WATERMARK_DELAY_MICROS: i64 = 1_000_000;

/// Stored keys in the state tables of view `name`'s operators and of its rows (rows, but for
/// an append-only view's packs of rows).
fn state_keys(db: &Database, store: &Arc<dyn StateStore>, name: &str) -> Result<usize, SqlError> {
    let Some(view) = db.view(name) else { return Ok(0) };
    let snapshot = store.snapshot();
    let mut rows = 0;
    for table in view.plan.state_tables().into_iter().chain([view.id]) {
        for kv in snapshot.scan(table, sluice_storage::KeyRange::all())? {
            kv?;
            rows += 1;
        }
    }
    Ok(rows)
}

/// Settings of one benchmark run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events per query.
    pub events: u64,
    /// Distinct auctions (1000 in the peers' input; 100000 for the many-keys variant).
    pub auctions: u64,
    /// Which queries (names from [`QUERIES`]).
    pub queries: Vec<String>,
    /// Report the rate of every chunk of this many events (0: only the total).
    pub chunk: u64,
    /// Instances per stateful operator.
    pub parallelism: usize,
    /// Where state lives: `memory` or `rocksdb` (in a scratch directory, removed afterwards).
    pub store: String,
    /// The process's memory limit, shared out as `serve` does ([`crate::MemoryBudget`]).
    pub memory_limit: usize,
}

/// The store of one benchmark query, and the scratch directory to remove after it.
fn open_store(options: &BenchOptions, query: &str) -> Result<(Arc<dyn StateStore>, Option<std::path::PathBuf>), SqlError> {
    match options.store.as_str() {
        "memory" => Ok((Arc::new(MemoryStateStore::new()), None)),
        "rocksdb" => {
            let dir = std::env::temp_dir().join(format!("sluice-bench-{}-{query}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let budget = crate::MemoryBudget::of(options.memory_limit);
            let store = RocksStateStore::open(&dir, &RocksOptions { memory_limit: budget.state_store })?;
            Ok((Arc::new(store), Some(dir)))
        }
        other => Err(SqlError::InvalidParameterValue(format!("unknown store '{other}': use memory or rocksdb"))),
    }
}

const BATCH_ROWS: u64 = 8192;
/// Events after which the state is counted once (the "start" figure; the end is the other).
const STATE_SAMPLE_EVENTS: u64 = 1_000_000;
const BASE_MICROS: i64 = 1_767_225_600_000_000;

fn bids_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("bidder", DataType::Int64, true),
        Field::new("price", DataType::Int64, true),
        Field::new("date_time", DataType::Timestamp(TimeUnit::Microsecond, None), true),
    ]))
}

/// Events `first .. first + n` of gen_bids.py (with `auctions` auctions).
fn bids(schema: &SchemaRef, first: u64, n: u64, auctions: u64) -> Result<RecordBatch, SqlError> {
    let mut auction = Vec::with_capacity(n as usize);
    let mut bidder = Vec::with_capacity(n as usize);
    let mut price = Vec::with_capacity(n as usize);
    let mut time = Vec::with_capacity(n as usize);
    for i in first..first + n {
        let h = (i.wrapping_mul(2_654_435_761).wrapping_add(12_345)) & 0xFFFF_FFFF;
        auction.push(1000 + (h % auctions) as i64);
        bidder.push(1000 + ((h >> 7) % 10_000) as i64);
        price.push(100 + ((h >> 13) % 10_000) as i64);
        time.push(BASE_MICROS + i as i64 * 1000);
    }
    Ok(RecordBatch::try_new(
        Arc::clone(schema),
        vec![
            Arc::new(Int64Array::from(auction)),
            Arc::new(Int64Array::from(bidder)),
            Arc::new(Int64Array::from(price)),
            Arc::new(TimestampMicrosecondArray::from(time)),
        ],
    )?)
}

/// CPU seconds used so far by the dataflow's threads: the dataflow thread and the operator
/// instances (Linux; 0 elsewhere).
fn dataflow_cpu_seconds() -> f64 {
    threads_cpu_seconds(|name| matches!(name, "sluice-dataflow" | "sluice-shard"))
}

/// CPU seconds of RocksDB's own threads (flushes and compactions), which the dataflow's
/// writes cause but which run beside it.
fn store_cpu_seconds() -> f64 {
    threads_cpu_seconds(|name| name.starts_with("rocksdb"))
}

fn threads_cpu_seconds(counted: impl Fn(&str) -> bool) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let mut total = 0.0;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !counted(comm.trim()) {
            continue;
        }
        total += stat_cpu_seconds(&std::fs::read_to_string(task.path().join("stat")).unwrap_or_default());
    }
    total
}

/// User plus system CPU seconds in a `/proc/.../stat` line (0 if it cannot be read).
pub(crate) fn stat_cpu_seconds(stat: &str) -> f64 {
    // Fields after the parenthesised command: state is field 3; utime, stime are 14, 15.
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

async fn query_text(session: &mut Session, sql: &str) -> Result<String, SqlError> {
    let mut out = String::new();
    for stmt in parse_statements(sql)? {
        if let StatementOutput::Rows { stream, .. } = session.execute(&stmt).await?.output {
            let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(SqlError::from)?;
            for batch in &batches {
                for row in 0..batch.num_rows() {
                    let cells: Vec<String> = batch
                        .columns()
                        .iter()
                        .map(|c| datafusion::arrow::util::display::array_value_to_string(c, row).unwrap_or_default())
                        .collect();
                    out.push_str(&cells.join(" "));
                }
            }
        }
    }
    Ok(out)
}

async fn execute(session: &mut Session, sql: &str) -> Result<(), SqlError> {
    for stmt in parse_statements(sql)? {
        session.execute(&stmt).await?;
    }
    Ok(())
}

/// Runs the benchmark, printing its results.
pub async fn run(options: BenchOptions) -> Result<(), SqlError> {
    let schema = bids_schema();
    println!(
        "sluice bench: {} events per query, {} auctions, {} instance(s) per stateful operator, {} state store; \
         cpu = the dataflow's threads (the generator runs beside them)",
        options.events, options.auctions, options.parallelism, options.store
    );
    for (name, query) in QUERIES.iter().filter(|(n, _)| options.queries.iter().any(|q| q == n)) {
        // A fresh database per query, so that no other view shares the dataflow.
        let budget = crate::MemoryBudget::of(options.memory_limit);
        let config = DataflowConfig {
            parallelism: options.parallelism.max(1),
            epoch_memory_limit: budget.epoch,
            ..DataflowConfig::default()
        };
        let (store, scratch) = open_store(&options, name)?;
        let db = Database::with_dataflow(Arc::clone(&store), config)?;
        // As `serve` runs it (see `memory`); stopped with this query's database.
        let governor = crate::memory::spawn(options.memory_limit, budget, Arc::clone(&store), db.dataflow().clone());
        let mut session = db.session("sluice", "bench", 0);
        let event_time = name.ends_with("_eowc");
        let table_ddl = if event_time {
            "CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP, \
             WATERMARK FOR date_time AS date_time - INTERVAL '1 second') APPEND ONLY"
        } else {
            // Bids only ever arrive (as in Nexmark): views that keep them whole store them by
            // arrival (see `ViewLayout::AppendOnly`).
            "CREATE TABLE bids (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP) APPEND ONLY"
        };
        execute(&mut session, table_ddl).await?;
        execute(&mut session, &format!("CREATE MATERIALIZED VIEW {name} AS {query}")).await?;
        let table = db.table("bids").ok_or_else(|| SqlError::Internal("bids vanished".into()))?.id;
        let dataflow = db.dataflow().clone();
        let cpu_before = dataflow_cpu_seconds();
        let store_cpu_before = store_cpu_seconds();
        let started = Instant::now();
        let mut chunk_started = started;
        let mut chunk_cpu = cpu_before;
        let mut sent = 0;
        let mut chunk_from = 0;
        while sent < options.events {
            let n = BATCH_ROWS.min(options.events - sent);
            // As if each batch were a logged table write (its log entry number is `seq`).
            let seq = sent / BATCH_ROWS + 1;
            // Events are in time order: the watermark trails the batch's last one.
            let watermark = event_time.then(|| sluice_engine::watermark::Watermark {
                column: 3,
                value: BASE_MICROS + (sent + n - 1) as i64 * 1000 - WATERMARK_DELAY_MICROS,
            });
            dataflow.send_changes(table, ChangeBatch::inserts(bids(&schema, sent, n, options.auctions)?), seq, watermark).await?;
            sent += n;
            if sent / STATE_SAMPLE_EVENTS != (sent - n) / STATE_SAMPLE_EVENTS && sent / STATE_SAMPLE_EVENTS == 1 {
                dataflow.flush().await?;
                println!("STATE query={name} events={sent} state_keys={}", state_keys(&db, &store, name)?);
            }
            if options.chunk > 0 && (sent - chunk_from >= options.chunk || sent == options.events) {
                dataflow.flush().await?;
                let cpu = dataflow_cpu_seconds();
                let seconds = chunk_started.elapsed().as_secs_f64();
                let rows = sent - chunk_from;
                println!(
                    "CHUNK query={name} from={chunk_from} to={sent} events_per_s={:.0} events_per_cpu_s={:.0}",
                    rows as f64 / seconds,
                    rows as f64 / (cpu - chunk_cpu).max(0.01)
                );
                chunk_from = sent;
                chunk_started = Instant::now();
                chunk_cpu = cpu;
            }
        }
        dataflow.flush().await?;
        let wall = started.elapsed().as_secs_f64();
        let cpu = dataflow_cpu_seconds() - cpu_before;
        let store_cpu = store_cpu_seconds() - store_cpu_before;
        println!(
            "RESULT system=sluice query={name} events={} wall_s={wall:.2} events_per_s={:.0} cpu_s={cpu:.2} events_per_cpu_s={:.0} \
             store_cpu_s={store_cpu:.2} events_per_cpu_s_with_store={:.0}",
            options.events,
            options.events as f64 / wall,
            options.events as f64 / cpu.max(0.01),
            options.events as f64 / (cpu + store_cpu).max(0.01)
        );
        println!("STATE query={name} events={sent} state_keys={}", state_keys(&db, &store, name)?);
        // Before the VERIFY query, which reads the whole view into memory.
        // The process's peak: the benchmark runs one query per process when the figure matters.
        if let Some(peak) = crate::memory::peak_resident_bytes() {
            let parts: Vec<String> = store.memory_usage().iter().map(|(part, bytes)| format!("{part}_mb={}", bytes >> 20)).collect();
            println!(
                "MEMORY query={name} peak_rss_mb={} memory_limit_mb={} state_mb={} {}",
                peak >> 20,
                options.memory_limit >> 20,
                store.approximate_bytes().unwrap_or(0) >> 20,
                parts.join(" ")
            );
        }
        let verify = match *name {
            "q0" | "filter_project" => format!("SELECT count(*) FROM {name}"),
            _ => format!("SELECT count(*), sum(cnt), sum(sum_price) FROM {name}"),
        };
        println!("VERIFY sluice {name} {}", query_text(&mut session, &verify).await?);
        governor.abort();
        db.dataflow().shutdown().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(session);
        drop(db);
        if let Some(dir) = scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(())
}
