//! `sluice-crash [--kills N] [--seed S] [--rows R] [--bin PATH] [--data-dir DIR]
//! [--memory-limit SIZE] [--checkpoint-interval DURATION]`: the crash harness of the test suite
//! (`sluice_sqllogictest::crash`) for longer runs. A small memory limit (the test suite's: 16MB,
//! with 1s checkpoints) makes most epochs unlogged, so kills lose them.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use sluice_sqllogictest::crash::{run, CrashOptions};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut kills = 50;
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let mut rows = 1_000_000;
    let mut bin = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("sluice"))).unwrap_or_default();
    let mut data_dir = None;
    let mut memory_limit = None;
    let mut checkpoint_interval = "200ms".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_default();
        match arg.as_str() {
            "--kills" => kills = value.parse().unwrap_or(kills),
            "--seed" => seed = value.parse().unwrap_or(seed),
            "--rows" => rows = value.parse().unwrap_or(rows),
            "--bin" => bin = PathBuf::from(value),
            "--data-dir" => data_dir = Some(PathBuf::from(value)),
            "--memory-limit" => memory_limit = Some(value),
            "--checkpoint-interval" => checkpoint_interval = value,
            other => {
                eprintln!(
                    "unknown argument {other}; use --kills N --seed S --rows R --bin PATH --data-dir DIR \
                     --memory-limit SIZE --checkpoint-interval DURATION"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot make a scratch directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let data_dir = data_dir.unwrap_or_else(|| scratch.path().join("data"));
    println!("sluice-crash: {kills} kills, seed {seed}, {rows} source rows, binary {}, data {}", bin.display(), data_dir.display());
    let options = CrashOptions { bin, data_dir, kills, seed, source_rows: rows, max_run: Duration::from_millis(3000), memory_limit, checkpoint_interval };
    match run(&options).await {
        Ok(report) => {
            println!(
                "PASS: {} kills, {} statements acknowledged, {} in-flight statements committed",
                report.kills, report.acknowledged, report.in_flight_committed
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("FAIL (seed {seed}): {e}");
            ExitCode::FAILURE
        }
    }
}
