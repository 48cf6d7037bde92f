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
use sluice_sqllogictest::probe::{connect, rows, wait_for_records};




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
    let errors = rows(&client, "SELECT partition, record_offset, error FROM sluice_errors WHERE view IS NOT NULL ORDER BY partition").await;
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
        let position = rows(&client, "SELECT position FROM sluice_sources WHERE source = 'new_views' AND view IS NOT NULL").await;
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
    assert_eq!(rows(&client, "SELECT count(*) FROM sluice_errors WHERE view IS NOT NULL").await, vec![vec!["2".to_string()]]);

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

/// Reads everything on `topic` (one partition) since the last call into `into`.
fn consume(consumer: &BaseConsumer, into: &mut Vec<(Option<String>, Option<String>)>) {
    use rdkafka::message::Message;
    while let Some(message) = consumer.poll(Duration::from_millis(200)) {
        let message = message.unwrap();
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        into.push((text(message.key()), text(message.payload())));
    }
}

fn reader(bootstrap: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", format!("verify-{topic}")).create().unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset(topic, 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&list).unwrap();
    consumer
}

/// The table an UPSERT topic describes: key → value, tombstones removing keys.
fn upserted(messages: &[(Option<String>, Option<String>)]) -> BTreeMap<String, serde_json::Value> {
    let mut table = BTreeMap::new();
    for (key, value) in messages {
        let key = key.clone().unwrap();
        match value {
            Some(v) => table.insert(key, serde_json::from_str(v).unwrap()),
            None => table.remove(&key),
        };
    }
    table
}

/// The table a DEBEZIUM topic describes: c/u insert `after` by key, d removes `before`'s key.
fn debezium_applied(messages: &[(Option<String>, Option<String>)]) -> BTreeMap<String, serde_json::Value> {
    let mut table = BTreeMap::new();
    for (key, value) in messages {
        let envelope: serde_json::Value = serde_json::from_str(value.as_deref().unwrap()).unwrap();
        let key = key.clone().unwrap();
        match envelope["op"].as_str().unwrap() {
            "c" | "u" => table.insert(key, envelope["after"].clone()),
            "d" => table.remove(&key),
            other => panic!("op {other}"),
        };
    }
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_view_to_kafka_sinks_with_retractions_through_kill_9() {
    let Some(broker) = broker() else { return };
    let bootstrap = broker.bootstrap();
    for (topic, partitions) in [("clicks", 2), ("rare_upsert", 1), ("rare_debezium", 1), ("sampled_plain", 1)] {
        create_topic(&bootstrap, topic, partitions).await;
    }
    let producer = producer(&bootstrap);
    // The first 600 clicks spread over 40 URLs (15 each); the later ones over /u0 ../u12 only,
    // which pass the HAVING bound and are retracted (tombstones, Debezium deletes) while the
    // others stay.
    let click = |i: u64| format!("{{\"id\": {i}, \"url\": \"/u{}\"}}", if i < 600 { i % 40 } else { i % 13 });
    let first: Vec<String> = (0..600).map(click).collect();
    produce(&producer, "clicks", 2, &first).await;

    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt"));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = SluiceServer::start_in(&bin, &data, &[]).unwrap();
    let client = connect(server.port).await;
    // One record per produce request: the test broker's known bug.
    let props = "properties.batch.num.messages = '1', properties.linger.ms = '0'";
    client
        .batch_execute(&format!(
            "CREATE SOURCE clicks (id BIGINT, url VARCHAR)
               WITH (connector = 'kafka', topic = 'clicks', properties.bootstrap.server = '{bootstrap}')
               FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW rare AS
               SELECT url, count(*) AS n, max(id) AS last_id FROM clicks GROUP BY url HAVING count(*) < 20;
             CREATE MATERIALIZED VIEW sampled AS SELECT id, url FROM clicks WHERE id % 10 = 0;
             CREATE SINK rare_upsert FROM rare WITH (connector = 'kafka', topic = 'rare_upsert',
               properties.bootstrap.server = '{bootstrap}', primary_key = 'url', {props}) FORMAT UPSERT ENCODE JSON;
             CREATE SINK rare_debezium FROM rare WITH (connector = 'kafka', topic = 'rare_debezium',
               properties.bootstrap.server = '{bootstrap}', primary_key = 'url', {props}) FORMAT DEBEZIUM ENCODE JSON;
             CREATE SINK sampled_plain FROM sampled WITH (connector = 'kafka', topic = 'sampled_plain',
               properties.bootstrap.server = '{bootstrap}', {props}) FORMAT PLAIN ENCODE JSON;"
        ))
        .await
        .unwrap();
    assert_eq!(
        rows(&client, "SHOW SINKS").await,
        vec![vec!["rare_debezium".to_string()], vec!["rare_upsert".to_string()], vec!["sampled_plain".to_string()]]
    );
    wait_for_records(&client, "clicks", 600).await;
    // More clicks in small steps, so that groups are updated and retracted across checkpoints.
    for step in 0..4u64 {
        let more: Vec<String> = (600 + step * 50..650 + step * 50).map(click).collect();
        produce(&producer, "clicks", 2, &more).await;
        wait_for_records(&client, "clicks", 650 + step * 50).await;
    }
    // kill -9 (undelivered outbox entries are sent after the restart), then more clicks.
    drop(client);
    server.kill();
    let last: Vec<String> = (800..1_000).map(click).collect();
    produce(&producer, "clicks", 2, &last).await;
    let server = SluiceServer::start_in(&bin, &data, &[]).unwrap();
    let client = connect(server.port).await;
    wait_for_records(&client, "clicks", 1_000).await;

    let view: BTreeMap<String, serde_json::Value> = rows(&client, "SELECT url, n, last_id FROM rare")
        .await
        .into_iter()
        .map(|r| {
            let value = serde_json::json!({"url": r[0], "n": r[1].parse::<i64>().unwrap(), "last_id": r[2].parse::<i64>().unwrap()});
            (serde_json::json!({"url": r[0]}).to_string(), value)
        })
        .collect();
    let sampled: std::collections::BTreeSet<String> = rows(&client, "SELECT id, url FROM sampled")
        .await
        .into_iter()
        .map(|r| serde_json::json!({"id": r[0].parse::<i64>().unwrap(), "url": r[1]}).to_string())
        .collect();
    assert_eq!(sampled.len(), 100);
    assert_eq!(view.len(), 27, "{view:?}");
    let (upsert, debezium, plain) = (reader(&bootstrap, "rare_upsert"), reader(&bootstrap, "rare_debezium"), reader(&bootstrap, "sampled_plain"));
    let (mut upsert_messages, mut debezium_messages, mut plain_messages) = (Vec::new(), Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        consume(&upsert, &mut upsert_messages);
        consume(&debezium, &mut debezium_messages);
        consume(&plain, &mut plain_messages);
        let plain_rows: std::collections::BTreeSet<String> = plain_messages
            .iter()
            .map(|(_, v)| serde_json::from_str::<serde_json::Value>(v.as_deref().unwrap()).unwrap().to_string())
            .collect();
        let done = upserted(&upsert_messages) == view && debezium_applied(&debezium_messages) == view && plain_rows == sampled;
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sinks never matched the views: upsert {:?}\ndebezium {:?}\nview {view:?}\nplain {} of {}",
            upserted(&upsert_messages),
            debezium_applied(&debezium_messages),
            plain_rows.len(),
            sampled.len()
        );
        client.simple_query("FLUSH").await.unwrap();
    }
    // Retractions reached the topics: tombstones, and Debezium deletes and updates.
    assert!(upsert_messages.iter().any(|(_, v)| v.is_none()), "no tombstone");
    let ops: std::collections::BTreeSet<String> = debezium_messages
        .iter()
        .map(|(_, v)| serde_json::from_str::<serde_json::Value>(v.as_deref().unwrap()).unwrap()["op"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ops, ["c", "d", "u"].iter().map(|s| s.to_string()).collect());
    assert!(plain_messages.len() >= sampled.len());

    // Every checkpoint's changes were delivered and left the outboxes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = rows(&client, "SELECT sink, pending_checkpoints, last_error FROM sluice_sinks ORDER BY sink").await;
        if status.iter().all(|r| r[1] == "0" && r[2] == "NULL") {
            assert_eq!(status.len(), 3);
            break;
        }
        assert!(Instant::now() < deadline, "sinks still pending: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered = rows(&client, "SELECT sum(delivered_changes) FROM sluice_sinks WHERE sink = 'sampled_plain'").await;
    assert!(delivered[0][0].parse::<u64>().unwrap() > 0, "{delivered:?}");

    // A view with sinks is not dropped without CASCADE; DROP SINK removes a sink.
    let error = client.batch_execute("DROP MATERIALIZED VIEW rare").await.unwrap_err();
    assert_eq!(error.as_db_error().unwrap().code().code(), "2BP01");
    client.batch_execute("DROP SINK rare_debezium; DROP MATERIALIZED VIEW rare CASCADE").await.unwrap();
    assert_eq!(rows(&client, "SHOW SINKS").await, vec![vec!["sampled_plain".to_string()]]);
}
