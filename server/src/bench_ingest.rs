//! `sluice bench-ingest`: parse and ingest throughput of a file in one of the source formats.
//!
//! Two figures per run, both over the same file:
//! * `parse`: the format's parser alone over the file's bytes (read into memory first), on
//!   one thread — rows per second per core of turning bytes into Arrow rows;
//! * `ingest`: a file source of a fresh database read by a `count(*)` view, from CREATE to
//!   the last record absorbed at a checkpoint — the whole path (reading, parsing, the
//!   dataflow, checkpoints), with the process's CPU seconds, so rows per CPU-second is the
//!   figure per core.
//!
//! With `--kafka host:port`, the ingest stage reads the file's lines from a Kafka topic
//! instead (produced first, in batches, to a fresh topic of `--partitions` partitions), so
//! the figure covers the Kafka connector end to end.
//!
//! Inputs: `csv` and `json` files of the peers' bid rows (`auction, bidder, price,
//! date_time`; `scripts/bench_ingest_inputs.py` writes the JSON twin of `gen_bids.py`'s
//! CSV), `log` files of combined-format access-log lines.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sluice_connectors::format::Encode;
use sluice_connectors::log_format::LogFormat;
use sluice_sql::{parse_statements, Database, DataflowConfig, SqlError};
use sluice_storage::{MemoryStateStore, RocksOptions, RocksStateStore, StateStore};

/// Settings of one ingest benchmark.
#[derive(Debug, Clone)]
pub struct IngestBenchOptions {
    /// The input file.
    pub input: PathBuf,
    /// `csv`, `json` or `log`.
    pub format: String,
    /// `memory` or `rocksdb`.
    pub store: String,
    /// A Kafka broker to ingest through, instead of the file.
    pub kafka: Option<String>,
    /// Partitions of the Kafka topic.
    pub partitions: i32,
}

/// Produces every line of `bytes` as one message to a fresh topic; returns its name.
async fn produce_lines(bootstrap: &str, partitions: i32, bytes: &[u8]) -> Result<String, SqlError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let kafka = |e: rdkafka::error::KafkaError| SqlError::Internal(format!("kafka: {e}"));
    let topic = format!("sluice_bench_{}", std::process::id());
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).create().map_err(kafka)?;
    for result in admin
        .create_topics(&[NewTopic::new(&topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .map_err(kafka)?
    {
        result.map_err(|(t, e)| SqlError::Internal(format!("kafka: cannot create {t}: {e}")))?;
    }
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .create()
        .map_err(kafka)?;
    let started = Instant::now();
    let mut pending = Vec::new();
    let mut produced = 0u64;
    for (i, line) in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(&topic).partition(i as i32 % partitions.max(1)).payload(line);
        pending.push(producer.send(record, Duration::from_secs(60)));
        produced += 1;
        if pending.len() >= 50_000 {
            for result in futures::future::join_all(pending.drain(..)).await {
                result.map_err(|(e, _)| kafka(e))?;
            }
        }
    }
    for result in futures::future::join_all(pending).await {
        result.map_err(|(e, _)| kafka(e))?;
    }
    println!("PRODUCED topic={topic} messages={produced} wall_s={:.2}", started.elapsed().as_secs_f64());
    Ok(topic)
}

/// Bytes per parse chunk (as the file source reads).
const CHUNK_BYTES: usize = 1 << 20;

fn columns(format: &str) -> Result<(&'static str, SchemaRef, Encode, &'static str), SqlError> {
    let bids = || {
        Arc::new(Schema::new(vec![
            Field::new("auction", DataType::Int64, true),
            Field::new("bidder", DataType::Int64, true),
            Field::new("price", DataType::Int64, true),
            Field::new("date_time", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]))
    };
    Ok(match format {
        "csv" => (
            "auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP",
            bids(),
            Encode::Csv { header: false, delimiter: b',' },
            "ENCODE CSV",
        ),
        "json" => ("auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP", bids(), Encode::Json, "ENCODE JSON"),
        "log" => {
            let tz: Arc<str> = Arc::from("+00:00");
            let text = |name: &str| Field::new(name, DataType::Utf8, true);
            let schema = Arc::new(Schema::new(vec![
                text("remote_addr"),
                text("remote_user"),
                Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some(tz)), true),
                text("method"),
                text("path"),
                text("protocol"),
                Field::new("status", DataType::Int32, true),
                Field::new("bytes", DataType::Int64, true),
                text("referer"),
                text("user_agent"),
            ]));
            (
                "remote_addr VARCHAR, remote_user VARCHAR, ts TIMESTAMPTZ, method VARCHAR, path VARCHAR, \
                 protocol VARCHAR, status INT, bytes BIGINT, referer VARCHAR, user_agent VARCHAR",
                schema,
                Encode::Log(LogFormat::Combined),
                "ENCODE LOG (format = 'combined')",
            )
        }
        other => return Err(SqlError::InvalidParameterValue(format!("unknown format '{other}': use csv, json or log"))),
    })
}

/// CPU seconds this process used so far (Linux; 0 elsewhere).
fn process_cpu_seconds() -> f64 {
    crate::bench::stat_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// Runs the benchmark, printing `RESULT` lines.
pub async fn run(options: IngestBenchOptions) -> Result<(), SqlError> {
    let (ddl_columns, schema, encode, encode_clause) = columns(&options.format)?;
    let bytes = std::fs::read(&options.input)
        .map_err(|e| SqlError::InvalidParameterValue(format!("cannot read {}: {e}", options.input.display())))?;
    let megabytes = bytes.len() as f64 / 1e6;

    // Parse only, one thread.
    let mut parser = encode.parser(Arc::clone(&schema)).map_err(|e| SqlError::Internal(e.to_string()))?;
    let started = Instant::now();
    let (mut rows, mut rejected_count) = (0u64, 0u64);
    let mut at = 0;
    while at < bytes.len() {
        let mut end = (at + CHUNK_BYTES).min(bytes.len());
        if end < bytes.len() {
            end = bytes[at..end].iter().rposition(|b| *b == b'\n').map_or(end, |p| at + p + 1);
        }
        let mut rejected = Vec::new();
        let batch = parser.parse(&bytes[at..end], at as u64, "bench", &mut rejected).map_err(|e| SqlError::Internal(e.to_string()))?;
        rows += batch.num_rows() as u64;
        rejected_count += rejected.len() as u64;
        at = end;
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "RESULT system=sluice stage=parse format={} rows={rows} rejected={rejected_count} mb={megabytes:.1} wall_s={wall:.2} \
         rows_per_s={:.0} mb_per_s={:.1}",
        options.format,
        rows as f64 / wall,
        megabytes / wall
    );
    let topic = match &options.kafka {
        Some(bootstrap) => Some(produce_lines(bootstrap, options.partitions, &bytes).await?),
        None => None,
    };
    drop(bytes);

    // The whole path: a file (or Kafka) source read by a count(*) view.
    let store: Arc<dyn StateStore> = match options.store.as_str() {
        "memory" => Arc::new(MemoryStateStore::new()),
        "rocksdb" => {
            let dir = std::env::temp_dir().join(format!("sluice-bench-ingest-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Arc::new(RocksStateStore::open(&dir, &RocksOptions { memory_limit: 512 << 20 })?)
        }
        other => return Err(SqlError::InvalidParameterValue(format!("unknown store '{other}': use memory or rocksdb"))),
    };
    let db = Database::with_dataflow(store, DataflowConfig::default())?;
    let mut session = db.session("sluice", "bench", 0);
    let path = options.input.display().to_string().replace('\'', "''");
    let with = match (&options.kafka, &topic) {
        (Some(bootstrap), Some(topic)) => {
            format!("connector = 'kafka', topic = '{topic}', properties.bootstrap.server = '{bootstrap}'")
        }
        _ => format!("connector = 'file', path = '{path}'"),
    };
    let ddl = format!("CREATE SOURCE input ({ddl_columns}) WITH ({with}) FORMAT PLAIN {encode_clause}");
    for stmt in parse_statements(&ddl)? {
        session.execute(&stmt).await?;
    }
    let total = rows + rejected_count;
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    for stmt in parse_statements("CREATE MATERIALIZED VIEW n AS SELECT count(*) AS n FROM input")? {
        session.execute(&stmt).await?;
    }
    loop {
        db.dataflow().flush().await?;
        let status = db.source_records("input");
        if status.iter().all(|r| *r >= total) && !status.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu_before;
    println!(
        "RESULT system=sluice stage=ingest from={} format={} rows={rows} wall_s={wall:.2} rows_per_s={:.0} cpu_s={cpu:.2} \
         rows_per_cpu_s={:.0}",
        if options.kafka.is_some() { "kafka" } else { "file" },
        options.format,
        rows as f64 / wall,
        rows as f64 / cpu.max(0.01)
    );
    // The view holds every row.
    let mut counted = String::new();
    for stmt in parse_statements("SELECT n FROM n")? {
        if let sluice_sql::StatementOutput::Rows { stream, .. } = session.execute(&stmt).await?.output {
            use futures::TryStreamExt;
            let batches: Vec<datafusion::arrow::array::RecordBatch> = stream.try_collect().await.map_err(SqlError::from)?;
            for batch in &batches {
                for row in 0..batch.num_rows() {
                    counted = datafusion::arrow::util::display::array_value_to_string(batch.column(0), row).unwrap_or_default();
                }
            }
        }
    }
    println!("VERIFY sluice format={} view_rows={counted} expected={rows}", options.format);
    db.dataflow().shutdown().await;
    Ok(())
}
