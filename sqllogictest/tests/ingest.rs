//! Ingestion through `sluice serve`: file sources over a real access log (checked against an
//! independent reference parser, through appends, rotation and a kill -9), JSON and CSV
//! files with bad records under both error policies.
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_sqllogictest::SluiceServer;
use sluice_sqllogictest::probe::{append, connect, post, rows, wait_for_records, workspace};
use tokio_postgres::Client;



/// The reference answers of `scripts/access_log_reference.py` over `log`.
fn reference(log: &Path) -> serde_json::Value {
    let output = std::process::Command::new("python3")
        .arg(workspace().join("scripts/access_log_reference.py"))
        .arg(log)
        .output()
        .expect("python3 runs the reference parser");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

async fn check_against_reference(client: &Client, reference: &serde_json::Value) {
    let status: BTreeMap<String, String> =
        rows(client, "SELECT status, n FROM by_status").await.into_iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    let want: BTreeMap<String, String> =
        reference["status"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    assert_eq!(status, want, "requests per status");
    let hours: BTreeMap<String, (String, String)> = rows(client, "SELECT window_start, n, total_bytes FROM per_hour")
        .await
        .into_iter()
        .map(|r| (r[0].trim_end_matches("+00").to_string(), (r[1].clone(), r[2].clone())))
        .collect();
    let want: BTreeMap<String, (String, String)> = reference["hours"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), (v[0].to_string(), v[1].to_string())))
        .collect();
    assert_eq!(hours, want, "requests and bytes per hour");
    let methods: BTreeMap<String, String> =
        rows(client, "SELECT method, n FROM by_method").await.into_iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    let want: BTreeMap<String, String> =
        reference["methods"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    assert_eq!(methods, want, "requests per method");
    assert_eq!(rows(client, "SELECT clients FROM clients").await, vec![vec![reference["clients"].to_string()]]);
}

const VIEWS: &str = "
    CREATE MATERIALIZED VIEW by_status AS SELECT status, count(*) AS n FROM access_log GROUP BY status;
    CREATE MATERIALIZED VIEW per_hour AS
      SELECT window_start, count(*) AS n, sum(bytes) AS total_bytes
      FROM TUMBLE(access_log, ts, INTERVAL '1 hour') GROUP BY window_start;
    CREATE MATERIALIZED VIEW by_method AS
      SELECT method, count(*) AS n FROM access_log WHERE method IS NOT NULL GROUP BY method;
    CREATE MATERIALIZED VIEW clients AS SELECT count(DISTINCT remote_addr) AS clients FROM access_log;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_log_followed_through_appends_rotation_and_kill_9_equals_the_reference() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt"));
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let data = dir.path().join("data");
    let original = std::fs::read(workspace().join("testdata/apache_combined_2015.log")).unwrap();
    let lines: Vec<&[u8]> = original.split_inclusive(|b| *b == b'\n').collect();
    assert_eq!(lines.len(), 10_000);
    let part = |range: std::ops::Range<usize>| lines[range].concat();

    // The first 5,000 lines exist before the source does.
    append(&logs.join("access.log"), &part(0..5_000));
    let server = SluiceServer::start_in(&bin, &data, &[]).unwrap();
    let client = connect(server.port).await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE access_log (
               remote_addr VARCHAR, remote_user VARCHAR, ts TIMESTAMPTZ, method VARCHAR, path VARCHAR,
               protocol VARCHAR, status INT, bytes BIGINT, referer VARCHAR, user_agent VARCHAR,
               WATERMARK FOR ts AS ts - INTERVAL '1 minute'
             ) WITH (connector = 'file', path = '{}/access.log*', follow = 'true', poll.interval = '20ms')
             FORMAT PLAIN ENCODE LOG (format = 'combined');
             {VIEWS}",
            logs.display()
        ))
        .await
        .unwrap();
    wait_for_records(&client, "access_log", 5_000).await;
    let first = reference(&logs.join("access.log"));
    check_against_reference(&client, &first).await;

    // Appends, then rename-and-create rotation with more lines in both files.
    append(&logs.join("access.log"), &part(5_000..7_000));
    wait_for_records(&client, "access_log", 7_000).await;
    append(&logs.join("access.log"), &part(7_000..7_500));
    std::fs::rename(logs.join("access.log"), logs.join("access.log.1")).unwrap();
    append(&logs.join("access.log"), &part(7_500..10_000));
    wait_for_records(&client, "access_log", 10_000).await;
    let all = reference(&workspace().join("testdata/apache_combined_2015.log"));
    assert_eq!(all["rows"], 9_999);
    check_against_reference(&client, &all).await;

    // The malformed line is in sluice_errors once per view reading the source, with the file
    // it is in and its offset there.
    let malformed_at = all["malformed"][0]["offset"].as_u64().unwrap() - part(0..7_500).len() as u64;
    let errors = rows(&client, "SELECT view, partition, record_offset, error, raw FROM sluice_errors WHERE view IS NOT NULL ORDER BY view").await;
    assert_eq!(errors.len(), 4, "{errors:?}");
    for error in &errors {
        assert_eq!(error[1], logs.join("access.log").display().to_string());
        assert_eq!(error[2], malformed_at.to_string());
        assert!(error[3].contains("unterminated quoted user agent"), "{}", error[3]);
        assert!(error[4].starts_with("46.118.127.106 - - [20/May/2015:12:05:17"), "{}", error[4]);
    }
    let counters = rows(&client, "SELECT records, errors, late_rows, error_policy FROM sluice_sources WHERE view IS NOT NULL").await;
    assert!(counters.iter().all(|r| r == &["10000", "1", "0", "skip"]), "{counters:?}");

    // kill -9 and restart: nothing is read twice, and lines appended while it was down are
    // read (these repeat the log's first lines, three days behind the watermark: late rows).
    drop(client);
    server.kill();
    append(&logs.join("access.log"), &part(0..10));
    let server = SluiceServer::start_in(&bin, &data, &[]).unwrap();
    let client = connect(server.port).await;
    wait_for_records(&client, "access_log", 10_010).await;
    check_against_reference(&client, &all).await;
    let counters = rows(&client, "SELECT records, errors, late_rows FROM sluice_sources WHERE view IS NOT NULL").await;
    assert!(counters.iter().all(|r| r == &["10010", "1", "10"]), "{counters:?}");
    assert_eq!(rows(&client, "SELECT count(*) FROM sluice_errors WHERE view IS NOT NULL").await, vec![vec!["4".to_string()]]);
    let late = rows(&client, "SELECT count(*) FROM sluice_late_rows WHERE object = 'access_log' AND view IS NOT NULL").await;
    assert_eq!(late, vec![vec!["40".to_string()]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_csv_files_reject_bad_records_by_policy() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt"));
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("events.jsonl");
    std::fs::write(
        &json,
        concat!(
            "{\"user_id\": 1, \"url\": \"/a\", \"ts\": \"2026-11-01 10:00:00\"}\n",
            "{\"user_id\": \"one\", \"url\": \"/b\", \"ts\": \"2026-11-01 10:00:01\"}\n",
            "{\"user_id\": 2, \"url\": \"/a\", \"ts\": \"2026-11-01 10:00:02\", \"extra\": [1, 2]}\n",
            "{\"url\": \"/c\"}\n",
            "{broken\n",
        ),
    )
    .unwrap();
    let csv = dir.path().join("events.csv");
    std::fs::write(&csv, "url,user_id,ts\n/a,1,2026-11-01 10:00:00\n/b,x,2026-11-01 10:00:01\n\"/c,d\",3,\n").unwrap();
    let server = SluiceServer::start(&bin).unwrap();
    let client = connect(server.port).await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE events (user_id BIGINT, url VARCHAR, ts TIMESTAMP)
               WITH (connector = 'file', path = '{json}') FORMAT PLAIN ENCODE JSON;
             CREATE SOURCE strict_events (user_id BIGINT, url VARCHAR, ts TIMESTAMP)
               WITH (connector = 'file', path = '{json}', error.policy = 'fail') FORMAT PLAIN ENCODE JSON;
             CREATE SOURCE csv_events (user_id BIGINT, url VARCHAR, ts TIMESTAMP)
               WITH (connector = 'file', path = '{csv}') FORMAT PLAIN ENCODE CSV (header = 'true');
             CREATE MATERIALIZED VIEW per_url AS SELECT url, count(*) AS n, sum(user_id) AS users FROM events GROUP BY url;
             CREATE MATERIALIZED VIEW strict_count AS SELECT count(*) AS n FROM strict_events;
             CREATE MATERIALIZED VIEW csv_rows AS SELECT user_id, url, ts FROM csv_events;",
            json = json.display(),
            csv = csv.display()
        ))
        .await
        .unwrap();
    wait_for_records(&client, "events", 5).await;
    wait_for_records(&client, "csv_events", 3).await;
    assert_eq!(
        rows(&client, "SELECT url, n, users FROM per_url ORDER BY url").await,
        vec![vec!["/a", "2", "3"], vec!["/c", "1", "NULL"]]
    );
    let errors = rows(&client, "SELECT source, record_offset, error FROM sluice_errors WHERE view IS NOT NULL ORDER BY source, seq").await;
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(errors[0][0], "csv_events");
    assert_eq!(errors[0][2], "column user_id: 'x' is not a valid bigint");
    assert_eq!(errors[1][0..2], ["events".to_string(), "57".to_string()]);
    assert!(errors[1][2].starts_with("invalid JSON record"), "{}", errors[1][2]);
    assert_eq!(
        rows(&client, "SELECT user_id, url, ts FROM csv_rows ORDER BY user_id").await,
        vec![vec!["1", "/a", "2026-11-01 10:00:00"], vec!["3", "/c,d", "NULL"]]
    );
    // Under error.policy = 'fail' the first bad record stops the view, naming the record.
    let deadline = Instant::now() + Duration::from_secs(60);
    let error = loop {
        client.simple_query("FLUSH").await.unwrap();
        match client.simple_query("SELECT n FROM strict_count").await {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "strict_count never failed"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let db = error.as_db_error().unwrap();
    assert_eq!(db.code().code(), "55000");
    assert!(db.message().contains("offset 57") && db.message().contains("error.policy = 'fail'"), "{}", db.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_answers_once_durable_and_survives_kill_9() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A long checkpoint interval: what survives the kill is what the replies promised, not a
    // checkpoint that happened to run.
    let server = SluiceServer::start_in(&bin, &data, &["--checkpoint-interval", "1h"]).unwrap();
    let client = connect(server.port).await;
    client
        .batch_execute(
            "CREATE SOURCE beacons (user_id BIGINT, url VARCHAR, ts TIMESTAMP,
               WATERMARK FOR ts AS ts - INTERVAL '5 seconds')
             WITH (connector = 'http') FORMAT PLAIN ENCODE JSON;
             CREATE SOURCE beacons_csv (url VARCHAR, n INT) WITH (connector = 'http', error.policy = 'fail')
               FORMAT PLAIN ENCODE CSV;
             CREATE SOURCE files (a INT) WITH (connector = 'file', path = '/nonexistent/*') FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW per_url AS SELECT url, count(*) AS n, sum(user_id) AS users FROM beacons GROUP BY url;
             CREATE MATERIALIZED VIEW per_second AS
               SELECT window_start, count(*) AS n FROM TUMBLE(beacons, ts, INTERVAL '1 second') GROUP BY window_start;
             CREATE MATERIALIZED VIEW csv_total AS SELECT sum(n) AS total FROM beacons_csv;",
        )
        .await
        .unwrap();
    let port = server.http_port;
    let body = concat!(
        "{\"user_id\": 1, \"url\": \"/a\", \"ts\": \"2026-11-01 10:00:00\"}\n",
        "{\"user_id\": 2, \"url\": \"/a\", \"ts\": \"2026-11-01 10:00:10\"}\n",
        "{\"user_id\": \"three\", \"url\": \"/b\", \"ts\": \"2026-11-01 10:00:11\"}\n",
        "{\"user_id\": 4, \"url\": \"/b\", \"ts\": \"2026-11-01 10:00:11\"}\n",
        "{\"user_id\": 5, \"url\": \"/c\", \"ts\": \"2026-11-01 10:00:01\"}\n",
    );
    let (status, reply) = post(port, "/ingest/beacons", body.as_bytes());
    assert_eq!(status, 200, "{reply}");
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!((reply["accepted"].as_u64(), reply["rejected"].as_u64(), reply["late"].as_u64()), (Some(3), Some(1), Some(1)));
    assert!(reply["errors"][0].as_str().unwrap().starts_with("offset 114: invalid JSON record"), "{reply}");

    let (status, reply) = post(port, "/ingest/beacons_csv", b"/a,1\n/b,2\n");
    assert_eq!(status, 200, "{reply}");
    // Under error.policy = 'fail' a body with a bad record is refused whole.
    let (status, reply) = post(port, "/ingest/beacons_csv", b"/a,1\n/b,two\n");
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("refused whole") && reply.contains("'two' is not a valid integer"), "{reply}");
    // Unknown sources, sources that read themselves, and bodies with nothing readable.
    assert_eq!(post(port, "/ingest/nosuch", b"{}\n").0, 404);
    let (status, reply) = post(port, "/ingest/files", b"{\"a\": 1}\n");
    assert_eq!(status, 400);
    assert!(reply.contains("is not an http source"), "{reply}");
    assert_eq!(post(port, "/ingest/beacons", b"").0, 400);
    let (status, reply) = post(port, "/ingest/beacons", b"garbage\n");
    assert_eq!(status, 400);
    assert!(reply.contains("no record of the body could be read"), "{reply}");

    // Killed before any checkpoint: the acknowledged rows come back from the change log.
    drop(client);
    server.kill();
    let server = SluiceServer::start_in(&bin, &data, &[]).unwrap();
    let client = connect(server.port).await;
    client.simple_query("FLUSH").await.unwrap();
    assert_eq!(
        rows(&client, "SELECT url, n, users FROM per_url ORDER BY url").await,
        vec![vec!["/a", "2", "3"], vec!["/b", "1", "4"]]
    );
    assert_eq!(
        rows(&client, "SELECT window_start, n FROM per_second ORDER BY window_start").await,
        vec![vec!["2026-11-01 10:00:00", "1"], vec!["2026-11-01 10:00:10", "1"], vec!["2026-11-01 10:00:11", "1"]]
    );
    assert_eq!(rows(&client, "SELECT total FROM csv_total").await, vec![vec!["3"]]);
    assert_eq!(
        rows(&client, "SELECT source, view, records, errors, late_rows FROM sluice_sources WHERE connector = 'http' ORDER BY source").await,
        vec![vec!["beacons", "NULL", "5", "1", "1"], vec!["beacons_csv", "NULL", "2", "0", "0"]]
    );
    let errors = rows(&client, "SELECT source, view, partition, record_offset FROM sluice_errors").await;
    assert_eq!(errors, vec![vec!["beacons", "NULL", "POST /ingest/beacons", "114"]]);
    let late = rows(&client, "SELECT object, view, event_time FROM sluice_late_rows").await;
    assert_eq!(late, vec![vec!["beacons", "NULL", "2026-11-01 10:00:01+00"]]);
    let watermarks = rows(&client, "SELECT object, column_name, watermark FROM sluice_watermarks WHERE kind = 'source'").await;
    assert_eq!(watermarks, vec![vec!["beacons", "ts", "2026-11-01 10:00:06+00"]]);
}

/// Lines no format can read: every one must be rejected alone, counted, and leave the server
/// running; the good lines around them are kept. (A trailing comma, `{"n": 1,}`, is not here:
/// arrow-json's decoder accepts it.)
fn malformed_corpus() -> Vec<Vec<u8>> {
    let mut corpus: Vec<Vec<u8>> = vec![
        b"\xff\xfe not utf-8 \xc3\x28".to_vec(),
        b"\0\0\0\0".to_vec(),
        b"{".to_vec(),
        b"}".to_vec(),
        b"[1, 2, 3]".to_vec(),
        b"\"just a string\"".to_vec(),
        b"{\"n\": }".to_vec(),
        b"{\"n\": 99999999999999999999999}".to_vec(),
        b"{\"n\": \"twelve\"}".to_vec(),
        b"{\"n\": 1} {\"n\": 2}".to_vec(),
        b"\"unterminated".to_vec(),
        b"1.2.3.4 - - [32/Foo/2015:99:99:99 +0000] \"GET / HTTP/1.1\" 200 1 \"-\" \"-\"".to_vec(),
        b"a,\"unbalanced,quote".to_vec(),
    ];
    corpus.push(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes());
    corpus.push(format!("{{\"n\": \"{}\"}}", "x".repeat(200_000)).into_bytes());
    corpus
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_of_malformed_lines_is_rejected_line_by_line_and_the_server_keeps_running() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt"));
    let dir = tempfile::tempdir().unwrap();
    let corpus = malformed_corpus();
    let mut file = Vec::new();
    for (i, bad) in corpus.iter().enumerate() {
        file.extend_from_slice(format!("{{\"n\": {i}}}\n").as_bytes());
        file.extend_from_slice(bad);
        file.push(b'\n');
    }
    let path = dir.path().join("corpus.txt");
    std::fs::write(&path, &file).unwrap();
    let server = SluiceServer::start(&bin).unwrap();
    let client = connect(server.port).await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE j (n INT) WITH (connector = 'file', path = '{p}') FORMAT PLAIN ENCODE JSON;
             CREATE SOURCE c (n INT, m INT) WITH (connector = 'file', path = '{p}') FORMAT PLAIN ENCODE CSV;
             CREATE SOURCE l (remote_addr VARCHAR, ts TIMESTAMP, status INT) WITH (connector = 'file', path = '{p}')
               FORMAT PLAIN ENCODE LOG (format = 'common');
             CREATE MATERIALIZED VIEW jn AS SELECT count(*) AS rows, sum(n) AS total FROM j;
             CREATE MATERIALIZED VIEW cn AS SELECT count(*) AS rows FROM c;
             CREATE MATERIALIZED VIEW ln AS SELECT count(*) AS rows FROM l;",
            p = path.display()
        ))
        .await
        .unwrap();
    let records = (2 * corpus.len()) as u64;
    for source in ["j", "c", "l"] {
        wait_for_records(&client, source, records).await;
    }
    let n = corpus.len() as u64;
    // JSON: the numbered lines are rows; every corpus line is rejected.
    assert_eq!(rows(&client, "SELECT rows, total FROM jn").await, vec![vec![n.to_string(), (n * (n - 1) / 2).to_string()]]);
    let errors = rows(&client, "SELECT source, count(*) FROM sluice_errors WHERE view IS NOT NULL GROUP BY source ORDER BY source").await;
    let counts: BTreeMap<String, u64> = errors.into_iter().map(|r| (r[0].clone(), r[1].parse().unwrap())).collect();
    assert_eq!(counts.get("j"), Some(&n), "{counts:?}");
    // CSV and LOG reject every line (none has their shape), the numbered ones included.
    assert_eq!(rows(&client, "SELECT rows FROM cn").await, vec![vec!["0".to_string()]]);
    assert_eq!(counts.get("c"), Some(&(2 * n)), "{counts:?}");
    assert_eq!(rows(&client, "SELECT rows FROM ln").await, vec![vec!["0".to_string()]]);
    assert_eq!(counts.get("l"), Some(&(2 * n)), "{counts:?}");
    // Raw text is kept cut to 4 KiB, and the server answers.
    let longest = rows(&client, "SELECT max(length(raw)) FROM sluice_errors").await;
    assert_eq!(longest, vec![vec!["4096".to_string()]]);
    assert_eq!(rows(&client, "SELECT 1").await, vec![vec!["1".to_string()]]);
}
