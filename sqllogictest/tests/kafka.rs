//! Kafka sources through `sluice serve`, against a real Kafka-API broker (tansu) on loopback,
//! with rdkafka as the test's producer: views equal what was produced, through a kill -9,
//! across partitions, with bad messages rejected and `scan.startup.mode = 'latest'`.
//!
//! Skipped when no broker is installed, unless `SLUICE_REQUIRE_KAFKA` is set (scripts/test.sh
//! installs one and sets it).
#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_sqllogictest::{KafkaBroker, SluiceServer};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

async fn connect(port: u16) -> Client {
    let (client, connection) =
        tokio_postgres::Config::new().host("127.0.0.1").port(port).user("sluice").dbname("sluice").connect(NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn rows(client: &Client, sql: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for message in client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")) {
        if let SimpleQueryMessage::Row(row) = message {
            out.push((0..row.len()).map(|i| row.get(i).unwrap_or("NULL").to_string()).collect());
        }
    }
    out
}

async fn wait_for_records(client: &Client, source: &str, records: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        client.simple_query("FLUSH").await.unwrap();
        let counts = rows(client, &format!("SELECT records FROM sluice_sources WHERE source = '{source}'")).await;
        if !counts.is_empty() && counts.iter().all(|r| r[0] == records.to_string()) {
            client.simple_query("FLUSH").await.unwrap();
            return;
        }
        assert!(Instant::now() < deadline, "readers of {source} stuck at {counts:?}, want {records}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn broker() -> Option<KafkaBroker> {
    match KafkaBroker::start().unwrap() {
        Some(broker) => Some(broker),
        None => {
            assert!(std::env::var_os("SLUICE_REQUIRE_KAFKA").is_none(), "a Kafka broker is required but tansu is not installed");
            eprintln!("skipped: no Kafka broker (tansu) installed");
            None
        }
    }
}

/// A producer sending one record per produce request (the broker's known bug, see
/// `../shared/kafka-broker.md`).
fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .set("enable.idempotence", "true")
        .create()
        .unwrap()
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", bootstrap).create().unwrap();
    let results = admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .unwrap();
    for result in results {
        result.unwrap();
    }
}

/// Produces `values` to `topic`, message `i` to partition `i % partitions`.
async fn produce(producer: &FutureProducer, topic: &str, partitions: i32, values: &[String]) {
    for (i, value) in values.iter().enumerate() {
        let record: FutureRecord<'_, (), String> = FutureRecord::to(topic).partition(i as i32 % partitions).payload(value);
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
}

/// The sum of the topic's high watermarks: must equal what was produced (the check that keeps
/// the one-record-per-batch workaround honest).
fn high_watermarks(bootstrap: &str, topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", "check").create().unwrap();
    (0..partitions).map(|p| consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).unwrap().1).sum()
}

fn event(i: u64) -> String {
    format!("{{\"user_id\": {}, \"url\": \"/p{}\", \"ts\": \"2026-11-01 10:{:02}:{:02}\"}}", i % 50, i % 7, (i / 60) % 60, i % 60)
}

/// What `per_url` must hold after events `0..n` (url → (count, sum of user ids)).
fn expected(n: u64) -> Vec<Vec<String>> {
    let mut per_url: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for i in 0..n {
        let entry = per_url.entry(format!("/p{}", i % 7)).or_default();
        entry.0 += 1;
        entry.1 += i % 50;
    }
    per_url.into_iter().map(|(url, (count, users))| vec![url, count.to_string(), users.to_string()]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_topic_read_exactly_once_through_kill_9() {
    let Some(broker) = broker() else { return };
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "page_views", 3).await;
    let producer = producer(&bootstrap);
    let first: Vec<String> = (0..1_500).map(event).collect();
    produce(&producer, "page_views", 3, &first).await;
    // Bad messages: not JSON, and a value that is not a number.
    produce(&producer, "page_views", 3, &["nope".to_string(), "{\"user_id\": \"x\", \"url\": \"/p1\"}".to_string()]).await;
    assert_eq!(high_watermarks(&bootstrap, "page_views", 3), 1_502);

    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = SluiceServer::start_in(&bin, &data, &[]).unwrap();
    let client = connect(server.port).await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE page_views (user_id BIGINT, url VARCHAR, ts TIMESTAMP)
               WITH (connector = 'kafka', topic = 'page_views', properties.bootstrap.server = '{bootstrap}',
                     scan.startup.mode = 'earliest', properties.group.id = 'sluice-test')
               FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW per_url AS SELECT url, count(*) AS n, sum(user_id) AS users FROM page_views GROUP BY url;"
        ))
        .await
        .unwrap();
    wait_for_records(&client, "page_views", 1_502).await;
    let valid_first = expected(1_500);
    assert_eq!(rows(&client, "SELECT url, n, users FROM per_url ORDER BY url").await, valid_first);
    let errors = rows(&client, "SELECT partition, record_offset, error FROM sluice_errors ORDER BY partition").await;
    assert_eq!(errors.len(), 2, "{errors:?}");
    // Messages 1500 and 1501 went to partitions 0 and 1, each the 501st there (offset 500).
    assert_eq!(errors[0][0..2], ["page_views/0".to_string(), "500".to_string()]);
    assert_eq!(errors[1][0..2], ["page_views/1".to_string(), "500".to_string()]);
    assert!(errors[1][2].contains("'x'") || errors[1][2].contains("\"x\""), "{}", errors[1][2]);

    // A source starting at the latest offsets sees only what is produced after it.
    client
        .batch_execute(&format!(
            "CREATE SOURCE new_views (user_id BIGINT, url VARCHAR, ts TIMESTAMP)
               WITH (connector = 'kafka', topic = 'page_views', properties.bootstrap.server = '{bootstrap}',
                     scan.startup.mode = 'latest')
               FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW new_count AS SELECT count(*) AS n FROM new_views;"
        ))
        .await
        .unwrap();
    // Its start ("latest", resolved to offsets) is checkpointed before anything else happens.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        client.simple_query("FLUSH").await.unwrap();
        let position = rows(&client, "SELECT position FROM sluice_sources WHERE source = 'new_views'").await;
        if position[0][0] != "NULL" {
            assert_eq!(position[0][0], r#"{"partitions":{"0":501,"1":501,"2":500}}"#);
            break;
        }
        assert!(Instant::now() < deadline, "the latest offsets were never checkpointed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // kill -9, produce more while it is down, restart: every message counted exactly once.
    drop(client);
    server.kill();
    let more: Vec<String> = (1_502..3_002).map(event).collect();
    produce(&producer, "page_views", 3, &more).await;
    let server = SluiceServer::start_in(&bin, &data, &[]).unwrap();
    let client = connect(server.port).await;
    wait_for_records(&client, "page_views", 3_002).await;
    wait_for_records(&client, "new_views", 1_500).await;
    let mut all: Vec<u64> = (0..1_500).collect();
    all.extend(1_502..3_002);
    let mut want: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for i in all {
        let entry = want.entry(format!("/p{}", i % 7)).or_default();
        entry.0 += 1;
        entry.1 += i % 50;
    }
    let want: Vec<Vec<String>> = want.into_iter().map(|(u, (c, s))| vec![u, c.to_string(), s.to_string()]).collect();
    assert_eq!(rows(&client, "SELECT url, n, users FROM per_url ORDER BY url").await, want);
    assert_eq!(rows(&client, "SELECT n FROM new_count").await, vec![vec!["1500".to_string()]]);
    assert_eq!(rows(&client, "SELECT count(*) FROM sluice_errors").await, vec![vec!["2".to_string()]]);

    // The offsets reached are also committed to the consumer group, for monitoring.
    let monitor: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).set("group.id", "sluice-test").create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..3 {
            list.add_partition("page_views", p);
        }
        let committed = monitor.committed_offsets(list, Duration::from_secs(10)).unwrap();
        let total: i64 = committed.elements().iter().filter_map(|e| e.offset().to_raw()).filter(|o| *o >= 0).sum();
        if total == 3_002 {
            break;
        }
        assert!(Instant::now() < deadline, "committed offsets sum to {total}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_source_options_are_checked() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt"));
    let server = SluiceServer::start(&bin).unwrap();
    let client = connect(server.port).await;
    for (sql, message) in [
        ("WITH (connector = 'kafka', properties.bootstrap.server = 'x:1') FORMAT PLAIN ENCODE JSON", "needs WITH (topic"),
        ("WITH (connector = 'kafka', topic = 't') FORMAT PLAIN ENCODE JSON", "properties.bootstrap.server"),
        ("WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = 'x:1')", "needs FORMAT PLAIN ENCODE"),
        (
            "WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = 'x:1', scan.startup.mode = 'middle') FORMAT PLAIN ENCODE JSON",
            "not a startup mode",
        ),
        (
            "WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = 'x:1', properties.no.such.option = '1') FORMAT PLAIN ENCODE JSON",
            "refuses the properties",
        ),
        (
            "WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = 'x:1', properties.enable.auto.commit = 'true') FORMAT PLAIN ENCODE JSON",
            "Sluice's checkpoint decides the offsets",
        ),
    ] {
        let error = client.batch_execute(&format!("CREATE SOURCE k (a INT) {sql}")).await.unwrap_err();
        let db = error.as_db_error().unwrap();
        assert_eq!(db.code().code(), "22023", "{sql}");
        assert!(db.message().contains(message), "{sql}: {}", db.message());
    }
}
