//! Runs every `.slt` file under `sqllogictest/slt/` over pgwire against a fresh `sluice serve`,
//! in both query protocols; files under `slt/pg/` also run against a real PostgreSQL.
//!
//! `cargo test -p sluice-sqllogictest --test slt -- [FILTER] [--complete]`
//! * FILTER: run only files whose path contains it;
//! * `--complete`: rewrite the expected results from Sluice's answers (simple protocol).
//!
//! Set `SLUICE_REQUIRE_POSTGRES=1` to fail (instead of skipping the PostgreSQL runs) when
//! PostgreSQL is not installed.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sluice_sqllogictest::{PostgresCluster, Protocol, SluiceServer, WireClient};
use sqllogictest::{default_column_validator, default_normalizer, default_validator, Runner};

/// The `sluice` binary under test: `$SLUICE_BIN` if set, else this package's `sluice-slt`
/// (the same command line, built by cargo from the current sources).
fn sluice_binary() -> PathBuf {
    std::env::var_os("SLUICE_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt")))
}

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            slt_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "slt") {
            out.push(path);
        }
    }
}

fn runner(port: u16, database: &'static str, protocol: Protocol) -> Runner<WireClient, impl sqllogictest::MakeConnection<Conn = WireClient>> {
    let mut runner = Runner::new(move || async move {
        WireClient::connect(port, "sluice", database, protocol).await.map(WireClient::with_view_oracle)
    });
    let engine = match protocol {
        Protocol::Simple => "simple",
        Protocol::Extended => "extended",
    };
    runner.add_label(engine);
    runner
}

struct Tally {
    passed: usize,
    failed: Vec<String>,
}

impl Tally {
    fn record(&mut self, what: String, result: Result<(), String>) {
        match result {
            Ok(()) => {
                println!("ok      {what}");
                self.passed += 1;
            }
            Err(e) => {
                println!("FAILED  {what}\n{e}\n");
                self.failed.push(what);
            }
        }
    }
}

async fn run_on_sluice(file: &Path, protocol: Protocol) -> Result<(), String> {
    let server = SluiceServer::start(&sluice_binary()).map_err(|e| e.to_string())?;
    let mut runner = runner(server.port, "sluice", protocol);
    runner.add_label("sluice");
    runner.run_file_async(file).await.map_err(|e| e.display(true).to_string())
}

async fn run_on_postgres(pg: &PostgresCluster, file: &Path, index: usize, protocol: Protocol) -> Result<(), String> {
    let database: &'static str = Box::leak(format!("slt_{index}_{protocol:?}").to_lowercase().into_boxed_str());
    let admin = WireClient::connect(pg.port, "postgres", "postgres", Protocol::Simple).await.map_err(|e| e.to_string())?;
    admin.client().batch_execute(&format!("CREATE DATABASE {database}")).await.map_err(|e| e.to_string())?;
    let mut runner = Runner::new(move || WireClient::connect(pg.port, "postgres", database, protocol));
    runner.add_label("postgres");
    runner.run_file_async(file).await.map_err(|e| e.display(true).to_string())
}

async fn complete(file: &Path) -> Result<(), String> {
    let server = SluiceServer::start(&sluice_binary()).map_err(|e| e.to_string())?;
    let mut runner = runner(server.port, "sluice", Protocol::Simple);
    runner.add_label("sluice");
    runner
        .update_test_file(file, " ", default_validator, default_normalizer, default_column_validator)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let regenerate = args.iter().any(|a| a == "--complete");
    let filter = args.iter().find(|a| !a.starts_with('-')).cloned();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("slt");
    let mut files = Vec::new();
    slt_files(&root, &mut files);
    files.retain(|f| filter.as_ref().is_none_or(|needle| f.to_string_lossy().contains(needle.as_str())));

    let mut tally = Tally { passed: 0, failed: Vec::new() };
    if regenerate {
        for file in &files {
            tally.record(format!("complete {}", file.display()), complete(file).await);
        }
    } else {
        let needs_pg = files.iter().any(|f| f.starts_with(root.join("pg")));
        let postgres = if needs_pg {
            match PostgresCluster::start() {
                Ok(Some(pg)) => Some(pg),
                Ok(None) if std::env::var_os("SLUICE_REQUIRE_POSTGRES").is_none() => {
                    println!("PostgreSQL is not installed: skipping the runs against PostgreSQL");
                    None
                }
                Ok(None) => {
                    println!("SLUICE_REQUIRE_POSTGRES is set but PostgreSQL is not installed");
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    println!("cannot start PostgreSQL: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            None
        };
        for (index, file) in files.iter().enumerate() {
            let name = file.strip_prefix(&root).unwrap_or(file).display().to_string();
            for protocol in [Protocol::Simple, Protocol::Extended] {
                tally.record(format!("sluice/{protocol:?} {name}"), run_on_sluice(file, protocol).await);
            }
            if let (Some(pg), true) = (&postgres, file.starts_with(root.join("pg"))) {
                for protocol in [Protocol::Simple, Protocol::Extended] {
                    tally.record(format!("postgres/{protocol:?} {name}"), run_on_postgres(pg, file, index, protocol).await);
                }
            }
        }
    }
    println!();
    for failed in &tally.failed {
        println!("failed: {failed}");
    }
    println!("slt: {} passed, {} failed", tally.passed, tally.failed.len());
    if tally.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
