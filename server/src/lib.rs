//! # sluice-server: the `sluice` binary
//!
//! ```text
//!   psql / drivers ──TCP──► pgwire (pg.rs) ──► sql::Session ──► results ──► encode.rs ──► DataRows
//!   curl / Prometheus ──► HTTP (http.rs): /health, /metrics
//! ```
//!
//! This crate owns the process: the command line, the listeners, the data directory lock,
//! shutdown on SIGTERM / Ctrl-C, and the single mapping of errors to SQLSTATE codes
//! (`sqlstate.rs`).

pub mod cli;
pub mod bench;
pub mod demo;
mod encode;
pub mod bench_ingest;
mod history_store;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod pg;
mod sqlstate;

use std::fs::{self, File};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use sluice_sql::Database;
use sluice_storage::{RocksOptions, RocksStateStore, StorageError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::pg::ConnectionHandlers;

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory cannot be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another server holds the data directory.
    #[error("data directory {0} is in use by another sluice process")]
    DataDirLocked(PathBuf),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    /// The state directory cannot be used (not writable, corrupt, another version's).
    #[error("state directory: {0}")]
    State(#[from] StorageError),
    /// The database could not start.
    #[error("cannot start the database: {0}")]
    Database(#[from] sluice_sql::SqlError),
    /// The history store cannot be used.
    #[error("{0}")]
    History(#[from] sluice_history::HistoryError),
}

/// Where the server keeps its data and where it listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Data directory (state, history, lock file).
    pub data_dir: PathBuf,
    /// pgwire listen address.
    pub pg_addr: SocketAddr,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// Time between the dataflow's periodic barriers (checkpoints).
    pub checkpoint_interval: std::time::Duration,
    /// Instances per stateful operator (`None`: one per core).
    pub parallelism: Option<usize>,
    /// Bytes the process may use (`--memory-limit`), shared out by [`MemoryBudget`].
    pub memory_limit: usize,
    /// Where sources' history goes (`--object-store`); None: `<data_dir>/history`.
    pub object_store: Option<String>,
}

/// How `--memory-limit` is shared out.
///
/// Why a split: the process's memory is the state store's cache and write buffers, the
/// current epoch's dirty state (groups touched since the last checkpoint, batches on their
/// way to operators and sinks), and everything else (the binary and its runtime, queries,
/// connections, allocator slack). Each of the first two gets a fixed share with its own
/// mechanism to stay inside it — RocksDB's cache and write-buffer manager evict and flush, the
/// dataflow ends an epoch early — and the last quarter is left to the rest.
///
/// The epoch's quarter is spent four times over by one epoch's estimate: operators estimate
/// their dirty state, which the barrier encodes into the epoch's write batch, which the
/// commit copies again into RocksDB's batch, and the allocator keeps freed memory for about a
/// second before returning it. So an epoch ends early once its estimate passes a sixteenth
/// of the limit (measured: a passthrough view's peak RSS went from 894 MB to 469 MB at a
/// 512 MB limit, at the same throughput; BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Bytes for RocksDB's block cache and memtables (half).
    pub state_store: usize,
    /// Bytes of estimated dirty state an epoch may hold before it is ended early (a
    /// sixteenth: the real cost of those bytes is about four times that, the quarter).
    pub epoch: usize,
}

impl MemoryBudget {
    /// The shares of a process-wide limit of `limit` bytes.
    pub fn of(limit: usize) -> Self {
        Self { state_store: limit / 2, epoch: limit / 16 }
    }
}

/// A running server: its database and the addresses it actually listens on (useful when a
/// port of 0 was asked for).
pub struct RunningServer {
    /// The database.
    pub db: Arc<Database>,
    /// Bound pgwire address.
    pub pg_addr: SocketAddr,
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The memory governor's loop (see [`memory`]), stopped with the server.
    governor: tokio::task::JoinHandle<()>,
    _lock: File,
}

fn lock_data_dir(dir: &PathBuf) -> Result<File, ServerError> {
    let err = |source| ServerError::DataDir { path: dir.clone(), source };
    fs::create_dir_all(dir).map_err(err)?;
    let mut lock = File::options().create(true).truncate(false).write(true).open(dir.join("LOCK")).map_err(err)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Err(ServerError::DataDirLocked(dir.clone())),
        Err(fs::TryLockError::Error(e)) => return Err(err(e)),
    }
    lock.set_len(0).map_err(err)?;
    writeln!(lock, "{}", std::process::id()).map_err(err)?;
    Ok(lock)
}

impl RunningServer {
    /// Starts the listeners.
    pub async fn start(config: ServerConfig) -> Result<Self, ServerError> {
        let lock = lock_data_dir(&config.data_dir)?;
        let started = std::time::Instant::now();
        let state_dir = config.data_dir.join("state");
        if config.memory_limit < memory::SMALLEST_HELD_LIMIT {
            tracing::warn!(
                limit_mb = config.memory_limit >> 20,
                smallest_held_mb = memory::SMALLEST_HELD_LIMIT >> 20,
                "the memory limit is below what the process needs to stay inside it: state and epochs stay bounded, \
                 but the resident set will pass the limit"
            );
        }
        let budget = MemoryBudget::of(config.memory_limit);
        let options = RocksOptions { memory_limit: budget.state_store };
        let store = tokio::task::spawn_blocking(move || RocksStateStore::open(state_dir, &options))
            .await
            .map_err(|e| StorageError::Backend(format!("opening the state store panicked: {e}")))??;
        let defaults = sluice_sql::DataflowConfig::default();
        let dataflow = sluice_sql::DataflowConfig {
            checkpoint_interval: config.checkpoint_interval,
            parallelism: config.parallelism.unwrap_or(defaults.parallelism).max(1),
            epoch_memory_limit: budget.epoch,
            ..defaults
        };
        let history = crate::history_store::open(config.object_store.as_deref(), &config.data_dir)?;
        let store: Arc<dyn sluice_storage::StateStore> = Arc::new(store);
        let (db, recovered) = Database::open_with_history(Arc::clone(&store), dataflow, Some(history)).await?;
        let governor = memory::spawn(config.memory_limit, budget, store, db.dataflow().clone());
        let took = started.elapsed();
        info!(
            epoch = recovered.epoch,
            tables = recovered.tables,
            sources = recovered.sources,
            views = recovered.views,
            replayed_changes = recovered.replayed_changes,
            took_ms = took.as_millis() as u64,
            "recovered the data directory"
        );
        println!(
            "sluice recovered {} tables, {} sources, {} materialized views at epoch {} ({} table changes replayed) in {:.3} s",
            recovered.tables,
            recovered.sources,
            recovered.views,
            recovered.epoch,
            recovered.replayed_changes,
            took.as_secs_f64()
        );
        let metrics = Arc::new(Metrics::default());
        let (shutdown, shutdown_rx) = watch::channel(false);

        let pg_listener = TcpListener::bind(config.pg_addr).await.map_err(|source| ServerError::Bind { addr: config.pg_addr, source })?;
        let http_listener = TcpListener::bind(config.http_addr).await.map_err(|source| ServerError::Bind { addr: config.http_addr, source })?;
        let pg_addr = pg_listener.local_addr().map_err(|source| ServerError::Bind { addr: config.pg_addr, source })?;
        let http_addr = http_listener.local_addr().map_err(|source| ServerError::Bind { addr: config.http_addr, source })?;

        let pg_task = tokio::spawn(accept_pg(pg_listener, Arc::clone(&db), Arc::clone(&metrics), shutdown_rx.clone()));
        let router = http::router(Arc::clone(&db), metrics);
        let mut http_shutdown = shutdown_rx;
        let http_task = tokio::spawn(async move {
            let result = axum::serve(http_listener, router)
                .with_graceful_shutdown(async move {
                    let _ = http_shutdown.wait_for(|stop| *stop).await.map(|_| ());
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %ServerError::Http(e), "HTTP server stopped");
            }
        });
        info!(%pg_addr, %http_addr, data_dir = %config.data_dir.display(), "sluice is ready");
        Ok(Self { db, pg_addr, http_addr, shutdown, tasks: vec![pg_task, http_task], governor, _lock: lock })
    }

    /// Stops accepting connections, waits for the listeners to close and takes a last
    /// checkpoint, so that a clean restart has nothing to replay.
    pub async fn stop(self) {
        self.governor.abort();
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        if let Err(e) = self.db.flush().await {
            warn!(error = %e, "the last checkpoint failed; the next start replays from the one before");
        }
        self.db.dataflow().shutdown().await;
        info!("sluice stopped");
    }
}

async fn accept_pg(listener: TcpListener, db: Arc<Database>, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let handlers = ConnectionHandlers::new(Arc::clone(&db), Arc::clone(&metrics));
                    tokio::spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                            tracing::debug!(%peer, error = %e, "client connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => break,
        }
    }
}

/// Runs a server until `until` completes.
pub async fn serve(config: ServerConfig, until: impl Future<Output = ()>) -> Result<(), ServerError> {
    let server = RunningServer::start(config).await?;
    println!(
        "sluice serving pgwire on {} and HTTP on {}  (connect: psql -h {} -p {} -U sluice)",
        server.pg_addr,
        server.http_addr,
        server.pg_addr.ip(),
        server.pg_addr.port()
    );
    until.await;
    server.stop().await;
    Ok(())
}

/// A future that completes on Ctrl-C or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is first polled, so a
/// signal that arrives right after the server says it is ready is never missed (it would
/// otherwise kill the process with the default action).
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => info!("Ctrl-C received, shutting down"),
                        _ = terminate.recv() => info!("SIGTERM received, shutting down"),
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    warn!(error = %e, "cannot listen for signals; stop the server by killing it");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                warn!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    }
}
