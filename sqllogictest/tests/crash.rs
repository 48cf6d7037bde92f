//! Kill -9 recovery: a real `sluice serve` is killed at random moments while it is written to,
//! restarted over the same data directory, and checked after each restart (see
//! `sluice_sqllogictest::crash`). Set `SLUICE_CRASH_SEED` to replay a run.
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use sluice_sqllogictest::crash::{run, CrashOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_and_tables_survive_repeated_kill_9() {
    let seed = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    eprintln!("crash test seed {seed} (SLUICE_CRASH_SEED={seed} replays the workload)");
    let dir = tempfile::tempdir().unwrap();
    let options = CrashOptions {
        bin: PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt")),
        data_dir: dir.path().join("data"),
        kills: 6,
        seed,
        source_rows: 200_000,
        max_run: Duration::from_millis(2500),
        // Epochs of 1 MB, most of them ended early and so unlogged, between checkpoints a
        // second apart: kills land between checkpoints with unlogged epochs to lose.
        memory_limit: Some("16MB".into()),
        checkpoint_interval: "1s".into(),
    };
    match run(&options).await {
        Ok(report) => {
            eprintln!(
                "crash test: {} kills, {} statements acknowledged, {} in-flight statements committed",
                report.kills, report.acknowledged, report.in_flight_committed
            );
            for line in &report.recoveries {
                eprintln!("  {line}");
            }
            assert_eq!(report.kills, 6);
            assert!(report.acknowledged > 0);
        }
        Err(e) => panic!("crash test (seed {seed}) failed: {e}"),
    }
}
