//! State larger than the memory limit: a view whose RocksDB state is several times
//! `--memory-limit` must still be exact (checked against the closed form of its input), and
//! survive a restart.
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::PathBuf;

use sluice_sqllogictest::SluiceServer;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const LIMIT_MB: u64 = 16;
const ROWS: u64 = 400_000;
const GROUPS: u64 = 200_000;

async fn connect(port: u16) -> Client {
    let (client, connection) =
        tokio_postgres::Config::new().host("127.0.0.1").port(port).user("sluice").dbname("sluice").connect(NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn one_row(client: &Client, sql: &str) -> Vec<String> {
    for message in client.simple_query(sql).await.unwrap() {
        if let SimpleQueryMessage::Row(row) = message {
            return (0..row.len()).map(|i| row.get(i).unwrap_or("NULL").to_string()).collect();
        }
    }
    panic!("{sql} returned no row");
}

/// Bytes of RocksDB table files in the server's state directory: the state as it sits on disk.
///
/// Read from the directory rather than from a gauge, so the precondition below does not hang on
/// the moment a flush or compaction is sampled at.
fn state_bytes_on_disk(data: &std::path::Path) -> u64 {
    std::fs::read_dir(data.join("state"))
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "sst"))
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.len())
        .sum()
}

async fn check_view(client: &Client) {
    // Every group k holds the rows k and k + GROUPS (k = 0 holds GROUPS and 2 × GROUPS).
    let totals = one_row(client, "SELECT count(*), sum(n), sum(s) FROM big_groups").await;
    assert_eq!(totals, vec![GROUPS.to_string(), ROWS.to_string(), (ROWS * (ROWS + 1) / 2).to_string()]);
    let wrong = one_row(
        client,
        &format!(
            "SELECT count(*) FROM big_groups WHERE n <> 2 OR top <> (CASE WHEN k = 0 THEN {ROWS} ELSE k + {GROUPS} END) \
             OR length(first_tag) <> 100"
        ),
    )
    .await;
    assert_eq!(wrong, vec!["0".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_with_state_several_times_the_memory_limit_is_exact() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let limit = format!("{LIMIT_MB}MB");
    let server = SluiceServer::start_in(&bin, &data, &["--memory-limit", &limit]).unwrap();
    let client = connect(server.port).await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE big (seq BIGINT, tag VARCHAR) WITH (connector = 'datagen', datagen.rows.per.second = '0', \
               datagen.max.rows = '{ROWS}', fields.seq.kind = 'sequence', fields.tag.length = '100', fields.tag.seed = '3');
             CREATE MATERIALIZED VIEW big_groups AS
               SELECT seq % {GROUPS} AS k, count(*) AS n, sum(seq) AS s, max(seq) AS top, min(tag) AS first_tag
               FROM big GROUP BY seq % {GROUPS};"
        ))
        .await
        .unwrap();
    loop {
        client.batch_execute("FLUSH").await.unwrap();
        let n = one_row(&client, "SELECT coalesce(sum(n), 0) FROM big_groups").await;
        if n[0] == ROWS.to_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    check_view(&client).await;
    let bytes = state_bytes_on_disk(&data);
    eprintln!("state: {} MB with a {LIMIT_MB} MB memory limit", bytes >> 20);
    assert!(bytes > (3 * LIMIT_MB) << 20, "the state ({bytes} bytes) should outgrow the memory limit for this test to mean anything");
    drop(client);
    server.stop().unwrap();
    let server = SluiceServer::start_in(&bin, &data, &["--memory-limit", &limit]).unwrap();
    let client = connect(server.port).await;
    check_view(&client).await;
}

/// A disk that fills up mid-run (simulated with a per-file size limit: RocksDB's write-ahead log
/// stops growing, as on a full disk, with EFBIG instead of ENOSPC). Every write from then on is
/// refused with SQLSTATE 58030 naming the state store, the server stays up and answers reads,
/// and a restart with room again has exactly the acknowledged rows, in the table and in the view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_with_58030_and_loses_no_acknowledged_row() {
    let Ok(prlimit) = which("prlimit") else {
        assert!(std::env::var_os("SLUICE_REQUIRE_PRLIMIT").is_none(), "prlimit (util-linux) is not installed");
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    };
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The wrapper ignores SIGXFSZ (so a write past the limit fails instead of killing the
    // process; the disposition survives exec) and caps every file the server writes at 3 MB.
    let wrapper = dir.path().join("full-disk.sh");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\ntrap '' XFSZ\nexec {} --fsize=3000000 -- {} \"$@\"\n", prlimit.display(), bin.display()),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let server = SluiceServer::start_in(&wrapper, &data, &[]).unwrap();
    let client = connect(server.port).await;
    client
        .batch_execute(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, pad TEXT);
             CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(id) AS s FROM t;",
        )
        .await
        .unwrap();
    let (mut acknowledged, mut sum) = (0u64, 0u64);
    let mut refusal = None;
    for batch in 0..400u64 {
        let (first, last) = (batch * 500, batch * 500 + 499);
        let insert = format!("INSERT INTO t SELECT v, repeat('x', 200) FROM generate_series({first}, {last}) AS g(v)");
        match client.simple_query(&insert).await {
            Ok(_) => {
                acknowledged += 500;
                sum += (first..=last).sum::<u64>();
            }
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refusal = refusal.expect("the size limit was never reached");
    let db_error = refusal.as_db_error().expect("an error from the server");
    assert_eq!(db_error.code().code(), "58030", "{db_error}");
    assert!(db_error.message().contains("state store"), "{db_error}");
    assert!(acknowledged > 0, "no write succeeded before the disk filled");
    // Later writes are refused the same way; reads still work.
    let again = client.simple_query("INSERT INTO t VALUES (-1, 'late')").await.unwrap_err();
    assert_eq!(again.as_db_error().map(|e| e.code().code()), Some("58030"), "{again}");
    assert_eq!(one_row(&client, "SELECT 1 + 1").await, vec!["2"]);
    server.kill();

    // Room again: every acknowledged row is there, nothing else, and the view agrees.
    let server = SluiceServer::start_in(&bin, &data, &[]).unwrap();
    let client = connect(server.port).await;
    let expected = vec![acknowledged.to_string(), sum.to_string()];
    assert_eq!(one_row(&client, "SELECT count(*), sum(id) FROM t").await, expected);
    client.batch_execute("FLUSH").await.unwrap();
    assert_eq!(one_row(&client, "SELECT n, s FROM totals").await, expected);
    // And it takes writes again.
    client.batch_execute("INSERT INTO t VALUES (-1, 'after'); FLUSH").await.unwrap();
    assert_eq!(one_row(&client, "SELECT n FROM totals").await, vec![(acknowledged + 1).to_string()]);
    server.stop().unwrap();
}

/// The path of `program` on PATH.
fn which(program: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|p| p.is_file()))
        .ok_or(())
}
