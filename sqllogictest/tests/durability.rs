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
