//! The `sluice` command line: parsing flags and running `serve` or `demo`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use crate::{demo, serve, shutdown_signal, ServerConfig};
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
    /// Run the server with a website-activity data set loaded, and print example queries.
    Demo {
        #[command(flatten)]
        server: ServeArgs,
        /// Number of generated page views.
        #[arg(long, default_value_t = 100_000)]
        rows: u64,
        /// Exit after loading and printing, instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
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
}

impl ServeArgs {
    fn config(self) -> ServerConfig {
        ServerConfig { data_dir: self.data_dir, pg_addr: self.pg_addr, http_addr: self.http_addr }
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
            Command::Demo { server, rows, once } => {
                let signal = shutdown_signal();
                let until = async move {
                    if !once {
                        signal.await
                    }
                };
                demo::run(server.config(), rows, until).await.map_err(|e| e.to_string())
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
