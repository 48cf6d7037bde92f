//! The `sluice` command line: parsing flags and running `serve` or `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use crate::{bench, bench_ingest, demo, serve, shutdown_signal, ServerConfig};
use tracing_subscriber::EnvFilter;

/// Sluice: a SQL-first streaming database speaking the PostgreSQL protocol.
#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: pgwire and HTTP listeners over a data directory.
    Serve(ServeArgs),
    /// Run the server with a live website-activity pipeline (a generated source of page views
    /// and materialized views over it), showing the views as they update.
    Demo {
        #[command(flatten)]
        server: ServeArgs,
        /// Page views generated per second (0: as fast as the views keep up).
        #[arg(long, default_value_t = 500)]
        rate: u64,
        /// Stop generating after this many page views.
        #[arg(long)]
        rows: Option<u64>,
        /// Print the views once all `--rows` page views are in, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Measure parse and ingest throughput of a file in a source format (see BENCHMARKS.md).
    BenchIngest {
        /// The input file.
        input: PathBuf,
        /// Its format: csv (bid rows), json (bid rows) or log (combined access log).
        #[arg(long)]
        format: String,
        /// Where operator state lives: rocksdb or memory.
        #[arg(long, default_value = "rocksdb")]
        store: String,
        /// Ingest through this Kafka broker (host:port) instead of reading the file.
        #[arg(long)]
        kafka: Option<String>,
        /// Partitions of the Kafka topic.
        #[arg(long, default_value_t = 2)]
        partitions: i32,
    },
    /// Measure view maintenance throughput on the peers' bid stream (see BENCHMARKS.md).
    Bench {
        /// Events per query.
        #[arg(long, default_value_t = 5_000_000)]
        events: u64,
        /// Distinct auctions (1000 as in the peers' input).
        #[arg(long, default_value_t = 1000)]
        auctions: u64,
        /// Queries to run, comma-separated: q0, filter_project, q5w, hop10, hop60, q5w_eowc, hop60_eowc.
        #[arg(long, default_value = "q0,filter_project,q5w,hop10", value_delimiter = ',')]
        queries: Vec<String>,
        /// Also print the rate of every chunk of this many events (0: off).
        #[arg(long, default_value_t = 0)]
        chunk: u64,
        /// Instances per stateful operator (default: one per core).
        #[arg(long)]
        parallelism: Option<usize>,
        /// Where operator state lives: rocksdb (as `serve` keeps it) or memory.
        #[arg(long, default_value = "rocksdb")]
        store: String,
        /// The memory limit, shared out as `serve` does (e.g. 512MB).
        #[arg(long, default_value = "512MB", value_parser = parse_bytes)]
        memory_limit: usize,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Directory for state and history.
    #[arg(long, default_value = "./sluice-data")]
    data_dir: PathBuf,
    /// Address for PostgreSQL clients.
    #[arg(long, default_value = "127.0.0.1:6543")]
    pg_addr: SocketAddr,
    /// Address for HTTP (health, metrics).
    #[arg(long, default_value = "127.0.0.1:6544")]
    http_addr: SocketAddr,
    /// Time between checkpoints: views' results become visible at each (e.g. `1s`, `200ms`).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    checkpoint_interval: Duration,
    /// Instances per stateful operator, each on its own thread (default: one per core).
    #[arg(long)]
    parallelism: Option<usize>,
    /// Memory the server may use (e.g. `512MB`, `2GiB`): half for the state store's cache
    /// and write buffers, a quarter for the current epoch's changes (an epoch that would hold
    /// more ends early), a quarter for the rest. State beyond it stays on disk.
    #[arg(long, default_value = "512MB", value_parser = parse_bytes)]
    memory_limit: usize,
    /// Where every source's history is kept as Parquet: a directory (`/path` or
    /// `file:///path`) or `s3://bucket/prefix` (credentials and endpoint from the AWS_*
    /// environment variables). Default: `<data-dir>/history`.
    #[arg(long)]
    object_store: Option<String>,
}

/// A memory size (see [`sluice_sql::parse_size_text`]) of at least 16MB.
fn parse_bytes(text: &str) -> Result<usize, String> {
    let bytes = sluice_sql::parse_size_text(text)?;
    if bytes < 16 << 20 {
        return Err(format!("a memory limit of '{text}' is too small: give at least 16MB"));
    }
    Ok(bytes)
}

/// A duration written `<n>ms`, `<n>s` or `<n>m`.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let duration = sluice_sql::parse_duration_text(text)?;
    if duration.is_zero() {
        return Err("the checkpoint interval must be positive".into());
    }
    Ok(duration)
}

impl ServeArgs {
    fn config(self) -> ServerConfig {
        ServerConfig {
            data_dir: self.data_dir,
            pg_addr: self.pg_addr,
            http_addr: self.http_addr,
            checkpoint_interval: self.checkpoint_interval,
            parallelism: self.parallelism,
            memory_limit: self.memory_limit,
            object_store: self.object_store,
        }
    }
}

/// Stack size of the runtime's threads.
const WORKER_STACK_BYTES: usize = 64 * 1024 * 1024;

/// Runs the `sluice` command line with the process's arguments.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Planning and evaluating deeply nested expressions recurses; generous stacks (reserved,
    // not committed, memory) keep a long generated OR-list from overflowing one.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(WORKER_STACK_BYTES)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args.config(), shutdown_signal()).await.map_err(|e| e.to_string()),
            Command::Bench { events, auctions, queries, chunk, parallelism, store, memory_limit } => {
                let parallelism = parallelism.unwrap_or_else(|| sluice_sql::DataflowConfig::default().parallelism);
                let options =
                    bench::BenchOptions { events, auctions: auctions.max(1), queries, chunk, parallelism, store, memory_limit };
                bench::run(options).await.map_err(|e| e.to_string())
            }
            Command::BenchIngest { input, format, store, kafka, partitions } => {
                let options = bench_ingest::IngestBenchOptions { input, format, store, kafka, partitions };
                bench_ingest::run(options).await.map_err(|e| e.to_string())
            }
            Command::Demo { server, rate, rows, once } => {
                let options = demo::DemoOptions { rate, rows, once };
                demo::run(server.config(), options, shutdown_signal()).await.map_err(|e| e.to_string())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}
