//! Source history through `sluice serve`: the real access log archived as Parquet through a
//! kill -9 in the middle of archiving, then queried with plain SELECTs and read by DuckDB,
//! both compared with an independent reference parser; pruning by event time measured in
//! files scanned; pushed rows visible before they are archived; generated data equal to a
//! view over the same source; retention and DROP SOURCE deleting files; the same history in a
//! real S3-compatible server (moto's, on loopback) through a kill -9, and clear start-up
//! errors for an S3 store that cannot be used.
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_sqllogictest::probe::{append, connect, post, rows, wait_for_records, workspace};
use sluice_sqllogictest::{S3Server, SluiceServer};
use tokio_postgres::Client;

fn run_json(program: &str, args: &[&Path]) -> Option<serde_json::Value> {
    let output = std::process::Command::new(program).args(args).output().ok()?;
    assert!(output.status.success(), "{program}: {}", String::from_utf8_lossy(&output.stderr));
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

/// Waits until the archiver has emptied `source`'s queue and archived `rows` rows.
async fn wait_archived(client: &Client, source: &str, rows_wanted: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        rows(client, "FLUSH").await;
        let state = rows(client, &format!("SELECT archived_rows, queued_rows FROM sluice_history WHERE source = '{source}'")).await;
        if state == vec![vec![rows_wanted.to_string(), "0".to_string()]] {
            return;
        }
        assert!(Instant::now() < deadline, "history of {source} stuck at {state:?}, want {rows_wanted} archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until compaction has merged every partition of `source` into one file.
async fn wait_compacted(client: &Client, source: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let sql = format!("SELECT count(*) FROM sluice_history_files WHERE source = '{source}' GROUP BY partition HAVING count(*) > 1");
    while !rows(client, &sql).await.is_empty() {
        assert!(Instant::now() < deadline, "{source}'s partitions were not compacted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `present()` (the files in the store) equals the listed files of every source:
/// files merged away are deleted once no query can read them.
async fn wait_store_equals_list(client: &Client, prefix: &str, present: impl Fn() -> Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut listed: Vec<String> = rows(client, &format!("SELECT '{prefix}' || path FROM sluice_history_files"))
            .await
            .into_iter()
            .map(|r| r[0].clone())
            .collect();
        listed.sort();
        let present = present();
        if present == listed {
            return;
        }
        assert!(Instant::now() < deadline, "files in the store {present:?} are not the listed ones {listed:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A predicate on `ts` for the hour of `partition` (`date=YYYY-MM-DD/hour=HH`).
fn within_hour(partition: &str) -> String {
    let (date, hour) = partition.split_once('/').unwrap();
    let start = format!("{} {}:00:00", date.trim_start_matches("date="), hour.trim_start_matches("hour="));
    format!("ts >= '{start}' AND ts < TIMESTAMP '{start}' + INTERVAL '1 hour'")
}

async fn map(client: &Client, sql: &str) -> BTreeMap<String, String> {
    rows(client, sql).await.into_iter().map(|r| (r[0].clone(), r[1..].join(","))).collect()
}

fn parquet_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.push(path.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

const SOURCE: &str = "CREATE SOURCE access_log (
       remote_addr VARCHAR, remote_user VARCHAR, ts TIMESTAMPTZ, method VARCHAR, path VARCHAR,
       protocol VARCHAR, status INT, bytes BIGINT, referer VARCHAR, user_agent VARCHAR
     ) WITH (connector = 'file', path = '{logs}/access.log', follow = 'true', poll.interval = '20ms',
             history.flush.interval = '50ms')
     FORMAT PLAIN ENCODE LOG (format = 'combined')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_archived_through_a_kill_9_equals_the_reference_in_sql_and_in_duckdb() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt"));
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let data = dir.path().join("data");
    let original = std::fs::read(workspace().join("testdata/apache_combined_2015.log")).unwrap();
    let lines: Vec<&[u8]> = original.split_inclusive(|b| *b == b'\n').collect();
    let log = logs.join("access.log");
    append(&log, &lines[..5_000].concat());

    let server = SluiceServer::start_in(&bin, &data, &[]).unwrap();
    let client = connect(server.port).await;
    client.batch_execute(&SOURCE.replace("{logs}", &logs.display().to_string())).await.unwrap();
    wait_for_records(&client, "access_log", 5_000).await;
    // The rest arrives while rounds are archiving; the server is killed in the middle.
    for chunk in lines[5_000..].chunks(500) {
        append(&log, &chunk.concat());
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.kill();

    let server = SluiceServer::start_in(&bin, &data, &[]).unwrap();
    let client = connect(server.port).await;
    wait_for_records(&client, "access_log", 10_000).await;
    let reference = run_json("python3", &[&workspace().join("scripts/access_log_reference.py"), &log]).unwrap();
    let accepted = reference["rows"].as_u64().unwrap();
    wait_archived(&client, "access_log", accepted).await;

    // Plain SELECTs over the history equal the reference: nothing lost, nothing doubled.
    let status = map(&client, "SELECT status, count(*) FROM access_log GROUP BY status").await;
    let want: BTreeMap<String, String> =
        reference["status"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    assert_eq!(status, want, "requests per status");
    let hours: BTreeMap<String, String> = map(
        &client,
        "SELECT date_trunc('hour', ts), count(*), sum(coalesce(bytes, 0)) FROM access_log GROUP BY 1",
    )
    .await
    .into_iter()
    .map(|(k, v)| (k.trim_end_matches("+00").to_string(), v))
    .collect();
    let want_hours: BTreeMap<String, String> = reference["hours"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), format!("{},{}", v[0], v[1])))
        .collect();
    assert_eq!(hours, want_hours, "requests and bytes per hour");
    assert_eq!(
        rows(&client, "SELECT count(DISTINCT remote_addr) FROM access_log").await,
        vec![vec![reference["clients"].to_string()]]
    );

    // Compaction merges each hour's small files into one (the partitions are quiet), and the
    // files merged away are deleted: every file on disk is listed (a crash's unlisted files
    // were deleted at start-up), and the partitions are the hours of the events.
    wait_compacted(&client, "access_log").await;
    let compacted = rows(&client, "SELECT files_compacted FROM sluice_history WHERE source = 'access_log'").await;
    assert!(compacted[0][0].parse::<u64>().unwrap() > 0, "small files were merged");
    let history = data.join("history");
    wait_store_equals_list(&client, "", || parquet_files(&history)).await;
    let listed = parquet_files(&history);
    assert_eq!(map(&client, "SELECT status, count(*) FROM access_log GROUP BY status").await, want, "after compaction");
    assert_eq!(
        rows(&client, "SELECT count(DISTINCT partition) FROM sluice_history_files").await,
        vec![vec![want_hours.len().to_string()]]
    );
    assert_eq!(
        rows(&client, "SELECT partitions FROM sluice_history WHERE source = 'access_log'").await,
        vec![vec![want_hours.len().to_string()]]
    );

    // A one-hour query opens only that hour's files.
    let hour_files = rows(&client, "SELECT count(*) FROM sluice_history_files WHERE partition = 'date=2015-05-18/hour=10'").await;
    let before = rows(&client, "SELECT files_scanned FROM sluice_history WHERE source = 'access_log'").await;
    let n = rows(
        &client,
        "SELECT count(*) FROM access_log WHERE ts >= '2015-05-18 10:00:00+00' AND ts < '2015-05-18 11:00:00+00'",
    )
    .await;
    assert_eq!(n[0][0], reference["hours"]["2015-05-18 10:00:00"][0].to_string());
    let after = rows(&client, "SELECT files_scanned FROM sluice_history WHERE source = 'access_log'").await;
    let scanned = after[0][0].parse::<u64>().unwrap() - before[0][0].parse::<u64>().unwrap();
    assert_eq!(scanned.to_string(), hour_files[0][0], "files scanned for one hour");
    assert!(scanned < listed.len() as u64 / 10);

    // History joins live views in one query.
    client
        .batch_execute("CREATE MATERIALIZED VIEW live_status AS SELECT status, count(*) AS n FROM access_log GROUP BY status")
        .await
        .unwrap();
    wait_for_records(&client, "access_log", 10_000).await;
    let joined = rows(
        &client,
        "SELECT count(*) FROM live_status v JOIN (SELECT status, count(*) AS n FROM access_log GROUP BY status) h
         USING (status) WHERE v.n = h.n",
    )
    .await;
    assert_eq!(joined[0][0], want.len().to_string(), "the live view equals its history");

    // A reader that is not Sluice reads the same rows from the files.
    let duckdb = run_json("python3", &[&workspace().join("scripts/history_reader.py"), &history, Path::new("access_log")])
        .expect("python3 runs scripts/history_reader.py (DuckDB is installed by scripts/test.sh)");
    assert_eq!(duckdb["rows"].as_u64().unwrap(), accepted);
    assert_eq!(duckdb["status"], reference["status"]);
    assert_eq!(duckdb["hours"], reference["hours"]);
    assert_eq!(duckdb["clients"], reference["clients"]);
    assert_eq!(duckdb["files"].as_array().unwrap().len(), listed.len());
    server.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_rows_are_queryable_before_and_after_archiving_and_generated_rows_equal_their_view() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = SluiceServer::start_in(&bin, &data, &[]).unwrap();
    let client = connect(server.port).await;
    client
        .batch_execute(
            "CREATE SOURCE clicks (user_id BIGINT, url VARCHAR, ts TIMESTAMP)
               WITH (connector = 'http', history.flush.interval = '1 hour') FORMAT PLAIN ENCODE JSON;
             CREATE SOURCE gen (id BIGINT, amount INT, ts TIMESTAMP)
               WITH (connector = 'datagen', datagen.rows.per.second = '0', datagen.max.rows = '20000',
                     fields.id.kind = 'sequence', fields.id.end = '1000000', fields.amount.min = '1', fields.amount.max = '100',
                     history.flush.interval = '100ms');
             CREATE MATERIALIZED VIEW gen_totals AS SELECT count(*) AS n, sum(amount) AS total, min(ts) AS first, max(ts) AS last FROM gen;",
        )
        .await
        .unwrap();
    // Pushed rows: acknowledged, then at once visible to SELECT although not archived (the
    // flush interval is an hour).
    let body = "{\"user_id\": 1, \"url\": \"/a\", \"ts\": \"2026-11-01 10:15:00\"}\n\
                {\"user_id\": 2, \"url\": \"/b\", \"ts\": \"2026-11-01 11:30:00\"}\n\
                {\"user_id\": 1, \"url\": \"/a\", \"ts\": \"2026-11-01 11:45:00\"}\n";
    let (status, reply) = post(server.http_port, "/ingest/clicks", body.as_bytes());
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("\"accepted\":3"), "{reply}");
    rows(&client, "FLUSH").await;
    assert_eq!(
        rows(&client, "SELECT url, count(*) FROM clicks GROUP BY url ORDER BY url").await,
        vec![vec!["/a".to_string(), "2".into()], vec!["/b".into(), "1".into()]]
    );
    assert_eq!(rows(&client, "SELECT queued_rows, files FROM sluice_history WHERE source = 'clicks'").await, vec![vec!["3".to_string(), "0".into()]]);
    // More checkpoints, so the queue holds several entries: read one after another, in order,
    // and a query that stops early (LIMIT) stops reading them.
    for user in 3..6 {
        let body = format!("{{\"user_id\": {user}, \"url\": \"/c\", \"ts\": \"2026-11-01 12:0{user}:00\"}}\n");
        let (status, reply) = post(server.http_port, "/ingest/clicks", body.as_bytes());
        assert_eq!(status, 200, "{reply}");
        rows(&client, "FLUSH").await;
    }
    assert_eq!(rows(&client, "SELECT count(*), sum(user_id) FROM clicks").await, vec![vec!["6".to_string(), "16".into()]]);
    assert_eq!(rows(&client, "SELECT user_id FROM clicks WHERE url = '/c' LIMIT 1").await.len(), 1);
    assert_eq!(
        rows(&client, "SELECT user_id FROM clicks ORDER BY ts DESC LIMIT 2").await,
        vec![vec!["5".to_string()], vec!["4".into()]]
    );
    assert_eq!(rows(&client, "SELECT queued_rows FROM sluice_history WHERE source = 'clicks'").await, vec![vec!["6".to_string()]]);

    // Generated rows: the history equals the view over the same source.
    wait_for_records(&client, "gen", 20_000).await;
    wait_archived(&client, "gen", 20_000).await;
    let view = rows(&client, "SELECT n, total, first, last FROM gen_totals").await;
    let batch = rows(&client, "SELECT count(*), sum(amount), min(ts), max(ts) FROM gen").await;
    assert_eq!(view, batch);
    assert_eq!(rows(&client, "SELECT count(DISTINCT id), min(id), max(id) FROM gen").await, vec![vec!["20000".to_string(), "1".into(), "20000".into()]]);

    // Restart: the pushed rows, still queued, survive; the generated ones are not archived twice.
    server.stop().unwrap();
    let server = SluiceServer::start_in(&bin, &data, &[]).unwrap();
    let client = connect(server.port).await;
    assert_eq!(rows(&client, "SELECT count(*) FROM clicks").await, vec![vec!["6".to_string()]]);
    assert_eq!(rows(&client, "SELECT count(*), sum(amount) FROM gen").await, vec![batch[0][..2].to_vec()]);

    // DROP SOURCE removes the files.
    let gen_dir = data.join("history/gen");
    assert!(!parquet_files(&gen_dir).is_empty());
    client.batch_execute("DROP SOURCE gen CASCADE").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !parquet_files(&gen_dir).is_empty() {
        assert!(Instant::now() < deadline, "the dropped source's files stay");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rows(&client, "SELECT * FROM sluice_history WHERE source = 'gen'").await.is_empty());
    server.stop().unwrap();
}

/// `n` JSON click records, user ids `first..first + n`, one second of event time apart from
/// 2026-11-01 00:00 on (so later calls are never behind a watermark).
fn clicks_body(first: u64, n: u64) -> String {
    (first..first + n)
        .map(|i| {
            format!(
                "{{\"user_id\": {i}, \"url\": \"/p{}\", \"ts\": \"2026-11-01 {:02}:{:02}:{:02}\"}}\n",
                i % 7,
                i / 3600,
                i / 60 % 60,
                i % 60
            )
        })
        .collect()
}

/// Every view equals its query run in batch over the sources' history, which holds
/// `expected_rows` rows.
async fn views_equal_history(client: &Client, views: &[(&str, &str, &str)], expected_rows: (u64, u64)) {
    rows(client, "FLUSH").await;
    assert_eq!(
        rows(client, "SELECT (SELECT count(*) FROM archived), (SELECT count(*) FROM queued)").await,
        vec![vec![expected_rows.0.to_string(), expected_rows.1.to_string()]]
    );
    for (name, _, batch) in views {
        let view = rows(client, &format!("SELECT * FROM {name} ORDER BY 1, 2, 3")).await;
        assert_eq!(view, rows(client, batch).await, "view {name} differs from its query over the source's history");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_view_over_a_pushed_source_starts_from_its_history_then_follows_live_rows() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = SluiceServer::start_in(&bin, &data, &[]).unwrap();
    let client = connect(server.port).await;
    // `archived` is archived to files at once; `queued` keeps its rows in the queue (an hour
    // between archiving rounds).
    client
        .batch_execute(
            "CREATE SOURCE archived (user_id BIGINT, url VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1 minute')
               WITH (connector = 'http', history.flush.interval = '100ms') FORMAT PLAIN ENCODE JSON;
             CREATE SOURCE queued (user_id BIGINT, url VARCHAR, ts TIMESTAMP)
               WITH (connector = 'http', history.flush.interval = '1 hour') FORMAT PLAIN ENCODE JSON;",
        )
        .await
        .unwrap();
    // Rows pushed while no view reads either source.
    let (status, reply) = post(server.http_port, "/ingest/archived", clicks_body(0, 3000).as_bytes());
    assert_eq!(status, 200, "{reply}");
    wait_archived(&client, "archived", 3000).await;
    assert!(rows(&client, "SELECT files FROM sluice_history WHERE source = 'archived'").await[0][0] != "0");
    let (status, reply) = post(server.http_port, "/ingest/queued", clicks_body(10_000, 500).as_bytes());
    assert_eq!(status, 200, "{reply}");
    rows(&client, "FLUSH").await;
    // These are acknowledged but in no checkpoint yet when the views are created (no FLUSH):
    // the view's creation must see them exactly once.
    let (status, reply) = post(server.http_port, "/ingest/queued", clicks_body(20_000, 250).as_bytes());
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = post(server.http_port, "/ingest/archived", clicks_body(30_000, 100).as_bytes());
    assert_eq!(status, 200, "{reply}");

    let views = [
        ("per_url", "SELECT url, count(*) AS n, sum(user_id) AS s FROM archived GROUP BY url", "SELECT url, count(*), sum(user_id) FROM archived GROUP BY url ORDER BY url"),
        ("per_hour", "SELECT window_start, count(*) AS n, count(DISTINCT url) AS urls FROM TUMBLE(archived, ts, INTERVAL '1 hour') GROUP BY window_start",
         "SELECT date_trunc('hour', ts), count(*), count(DISTINCT url) FROM archived GROUP BY 1 ORDER BY 1"),
        ("both", "SELECT url, count(*) AS n, max(user_id) AS top FROM (SELECT * FROM archived UNION ALL SELECT * FROM queued) GROUP BY url",
         "SELECT url, count(*), max(user_id) FROM (SELECT * FROM archived UNION ALL SELECT * FROM queued) GROUP BY url ORDER BY url"),
        ("queued_rows", "SELECT user_id, url, ts FROM queued", "SELECT user_id, url, ts FROM queued ORDER BY 1, 2, 3"),
    ];
    for (name, query, _) in &views {
        client.batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {query}")).await.unwrap();
    }
    views_equal_history(&client, &views, (3100, 750)).await;
    assert_eq!(rows(&client, "SELECT sum(n) FROM per_hour").await, vec![vec!["3100".to_string()]]);

    // Live rows after the views exist: counted once.
    let (status, reply) = post(server.http_port, "/ingest/archived", clicks_body(40_000, 700).as_bytes());
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = post(server.http_port, "/ingest/queued", clicks_body(50_000, 50).as_bytes());
    assert_eq!(status, 200, "{reply}");
    views_equal_history(&client, &views, (3800, 800)).await;

    // After a restart the views resume from their checkpoints (no second backfill), and a view
    // created now starts from the history as it is now.
    server.stop().unwrap();
    let server = SluiceServer::start_in(&bin, &data, &[]).unwrap();
    let client = connect(server.port).await;
    views_equal_history(&client, &views, (3800, 800)).await;
    client.batch_execute("CREATE MATERIALIZED VIEW late_comer AS SELECT count(*) AS n, sum(user_id) AS s FROM archived").await.unwrap();
    assert_eq!(
        rows(&client, "SELECT n, s FROM late_comer").await,
        rows(&client, "SELECT count(*), sum(user_id) FROM archived").await
    );
    server.stop().unwrap();
}

/// moto's S3 server, or None (the test is skipped) when moto is not installed and
/// `SLUICE_REQUIRE_S3` is unset.
fn s3_server() -> Option<S3Server> {
    match S3Server::start().unwrap() {
        Some(server) => Some(server),
        None if std::env::var_os("SLUICE_REQUIRE_S3").is_some() => {
            panic!("SLUICE_REQUIRE_S3 is set but moto is not installed (python3 -m pip install 'moto[server]')")
        }
        None => {
            eprintln!("skipped: moto is not installed (python3 -m pip install 'moto[server]')");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_in_an_s3_compatible_server_is_exactly_once_through_a_kill_9() {
    let Some(s3) = s3_server() else { return };
    s3.create_bucket("sluice-history").unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = ["--object-store", "s3://sluice-history/events/v1"];
    let env = s3.env();

    // 60,000 generated rows, one event second apart: about 17 event hours, archived every
    // 50 ms while the server is killed in the middle.
    let server = SluiceServer::start_with_env(&bin, &data, &store, &env).unwrap();
    let client = connect(server.port).await;
    client
        .batch_execute(
            "CREATE SOURCE gen (id BIGINT, amount INT, ts TIMESTAMP)
               WITH (connector = 'datagen', datagen.rows.per.second = '20000', datagen.max.rows = '60000',
                     fields.id.kind = 'sequence', fields.id.end = '1000000000', fields.amount.min = '1', fields.amount.max = '100',
                     fields.ts.step = '1 second', history.flush.interval = '50ms');
             CREATE MATERIALIZED VIEW gen_totals AS SELECT count(*) AS n, sum(amount) AS total, min(ts) AS first, max(ts) AS last FROM gen;",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let archived = rows(&client, "SELECT archived_rows FROM sluice_history WHERE source = 'gen'").await;
        if archived[0][0].parse::<u64>().unwrap() > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing archived to S3");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();

    let server = SluiceServer::start_with_env(&bin, &data, &store, &env).unwrap();
    let client = connect(server.port).await;
    wait_for_records(&client, "gen", 60_000).await;
    wait_archived(&client, "gen", 60_000).await;
    assert_eq!(
        rows(&client, "SELECT location FROM sluice_history WHERE source = 'gen'").await[0][0],
        "s3://sluice-history/events/v1/gen/"
    );
    // While compaction merges the small files, every query sees every row once.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert_eq!(
            rows(&client, "SELECT count(*), sum(id) FROM gen").await,
            vec![vec!["60000".to_string(), (60_000u64 * 60_001 / 2).to_string()]]
        );
        let unmerged = "SELECT 1 FROM sluice_history_files GROUP BY partition HAVING count(*) > 1";
        if rows(&client, unmerged).await.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "gen's partitions were not compacted");
    }
    // Every row once: the history equals the view over the same source, ids 1..=60000.
    let view = rows(&client, "SELECT n, total, first, last FROM gen_totals").await;
    let batch = rows(&client, "SELECT count(*), sum(amount), min(ts), max(ts) FROM gen").await;
    assert_eq!(view, batch);
    assert_eq!(
        rows(&client, "SELECT count(DISTINCT id), min(id), max(id) FROM gen").await,
        vec![vec!["60000".to_string(), "1".into(), "60000".into()]]
    );
    // The bucket holds exactly the listed files, under the prefix, one partition per hour.
    wait_store_equals_list(&client, "events/v1/", || s3.keys("sluice-history", "").unwrap()).await;
    let hours = rows(&client, "SELECT count(DISTINCT date_trunc('hour', ts)) FROM gen").await;
    assert_eq!(rows(&client, "SELECT count(DISTINCT partition) FROM sluice_history_files").await, hours);
    // A one-hour query reads only that hour's objects.
    let first_hour = rows(&client, "SELECT partition FROM sluice_history_files ORDER BY partition LIMIT 1 OFFSET 3").await;
    let hour_files = rows(&client, &format!("SELECT count(*) FROM sluice_history_files WHERE partition = '{}'", first_hour[0][0])).await;
    let before = rows(&client, "SELECT files_scanned FROM sluice_history WHERE source = 'gen'").await;
    let n = rows(&client, &format!("SELECT count(*) FROM gen WHERE {}", within_hour(&first_hour[0][0]))).await;
    assert_eq!(n, vec![vec!["3600".to_string()]], "a whole event hour in the middle of the run");
    let after = rows(&client, "SELECT files_scanned FROM sluice_history WHERE source = 'gen'").await;
    let scanned = after[0][0].parse::<u64>().unwrap() - before[0][0].parse::<u64>().unwrap();
    assert_eq!(scanned.to_string(), hour_files[0][0], "objects read for one hour");

    // DROP SOURCE deletes the objects.
    client.batch_execute("DROP SOURCE gen CASCADE").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s3.keys("sluice-history", "events/v1/gen/").unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the dropped source's objects stay");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().unwrap();
}

/// `sluice serve` with `store` as its object store: its exit status and what it printed.
fn serve_until_exit(bin: &Path, data: &Path, store: &str, env: &[(String, String)]) -> (bool, String) {
    let output = std::process::Command::new(bin)
        .args(["serve", "--pg-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(["--object-store", store])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_store_that_cannot_be_used_stops_the_server_at_start_up_with_the_reason() {
    let Some(s3) = s3_server() else { return };
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt"));
    let dir = tempfile::tempdir().unwrap();

    let (ok, stderr) = serve_until_exit(&bin, &dir.path().join("a"), "s3://no-such-bucket/x", &s3.env());
    assert!(!ok);
    assert!(stderr.contains("s3://no-such-bucket/x") && stderr.contains("cannot be written"), "{stderr}");

    // Nothing listens on this port: unreachable, reported within the few retries.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut env = s3.env();
    env[0].1 = format!("http://127.0.0.1:{closed}");
    let (ok, stderr) = serve_until_exit(&bin, &dir.path().join("b"), "s3://bucket", &env);
    assert!(!ok);
    assert!(stderr.contains("s3://bucket (endpoint http://127.0.0.1:") && stderr.contains("cannot be written"), "{stderr}");

    let (ok, stderr) = serve_until_exit(&bin, &dir.path().join("c"), "s3://", &s3.env());
    assert!(!ok);
    assert!(stderr.contains("bucket name is missing"), "{stderr}");
    let (ok, stderr) = serve_until_exit(&bin, &dir.path().join("d"), "gs://bucket", &s3.env());
    assert!(!ok);
    assert!(stderr.contains("'gs' object stores are not supported"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_truncated_and_corrupt_files_are_skipped_reported_and_counted() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = SluiceServer::start_in(&bin, &data, &[]).unwrap();
    let client = connect(server.port).await;
    // 20,000 rows one event second apart: six event hours, one file each once compacted.
    client
        .batch_execute(
            "CREATE SOURCE gen (id BIGINT, ts TIMESTAMP)
               WITH (connector = 'datagen', datagen.rows.per.second = '0', datagen.max.rows = '20000',
                     fields.id.kind = 'sequence', fields.id.end = '1000000000', fields.ts.step = '1 second',
                     history.flush.interval = '50ms');",
        )
        .await
        .unwrap();
    wait_for_records(&client, "gen", 20_000).await;
    wait_archived(&client, "gen", 20_000).await;
    wait_compacted(&client, "gen").await;
    let history = data.join("history");
    wait_store_equals_list(&client, "", || parquet_files(&history)).await;

    let files = rows(&client, "SELECT path, rows, partition FROM sluice_history_files ORDER BY partition").await;
    assert!(files.len() >= 5, "{files:?}");
    let [missing, truncated, garbage] = [&files[1], &files[2], &files[3]];
    std::fs::remove_file(history.join(&missing[0])).unwrap();
    let bytes = std::fs::read(history.join(&truncated[0])).unwrap();
    std::fs::write(history.join(&truncated[0]), &bytes[..bytes.len() / 2]).unwrap();
    let size = std::fs::metadata(history.join(&garbage[0])).unwrap().len() as usize;
    std::fs::write(history.join(&garbage[0]), vec![0x5a; size]).unwrap();
    let lost: u64 = [missing, truncated, garbage].iter().map(|f| f[1].parse::<u64>().unwrap()).sum();

    // The query answers from the readable files; each bad file is skipped whole and counted.
    let count = rows(&client, "SELECT count(*), count(DISTINCT id) FROM gen").await;
    assert_eq!(count, vec![vec![(20_000 - lost).to_string(), (20_000 - lost).to_string()]]);
    let status = rows(&client, "SELECT files_skipped, last_skipped FROM sluice_history WHERE source = 'gen'").await;
    assert_eq!(status[0][0], "3");
    let reported = &status[0][1];
    assert!(
        [missing, truncated, garbage].iter().any(|f| reported.contains(f[0].as_str())),
        "the report names a skipped file: {reported}"
    );
    // A query that touches only a good hour skips nothing.
    let good = &files[0][2];
    rows(&client, &format!("SELECT count(*) FROM gen WHERE {}", within_hour(good))).await;
    assert_eq!(rows(&client, "SELECT files_skipped FROM sluice_history WHERE source = 'gen'").await[0][0], "3");
    // The server is still up, and the files stay listed for an operator to look at.
    assert_eq!(rows(&client, "SELECT count(*) FROM sluice_history_files").await[0][0], files.len().to_string());
    server.stop().unwrap();
}
