//! `CREATE SINK ... FROM view WITH (connector = 'kafka', ...) FORMAT ... ENCODE JSON`: a
//! view's changes as Kafka messages, one checkpoint's changes per delivery.
//!
//! ```text
//! FORMAT PLAIN ENCODE JSON      value = the row; inserts only (a delete fails the delivery,
//!                               unless force_append_only = 'true' drops deletes)
//! FORMAT UPSERT ENCODE JSON     key = the primary_key columns; value = the row, or a
//!                               tombstone (no value) for a deleted key
//! FORMAT DEBEZIUM ENCODE JSON   value = {"before", "after", "op": c|u|d, "ts_ms", "source"};
//!                               key = the primary_key columns if given
//! ```
//!
//! Within one checkpoint's changes, a key's delete and insert (an update) become one message:
//! UPSERT the new row, DEBEZIUM op `u` with both rows. Rows are JSON objects, every column
//! present (NULL as null), timestamps as ISO-8601 text.
//!
//! Delivery is at-least-once (see `sluice_engine::sink`): the producer is idempotent, so a
//! retried send does not duplicate within a session, but a crash between a delivery and its
//! record in the checkpoint sends that checkpoint's messages again. An UPSERT consumer ends
//! with the same state either way; PLAIN and DEBEZIUM consumers may see a checkpoint's
//! messages twice. Exactly-once through Kafka transactions is not built: the test broker
//! does not support them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::writer::LineDelimited;
use datafusion::arrow::json::WriterBuilder;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_engine::sink::SinkConnector;
use sluice_engine::{ChangeBatch, EngineError, EngineResult, Op};

use crate::{bool_option, ConnectorError, ConnectorResult};

/// How a sink lays its changes out as messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    /// Rows as values; inserts only.
    Plain {
        /// Drop deletes instead of failing on them.
        force_append_only: bool,
    },
    /// Keyed rows and tombstones.
    Upsert,
    /// Debezium change envelopes.
    Debezium,
}

/// A Kafka sink.
pub struct KafkaSink {
    name: String,
    topic: String,
    config: ClientConfig,
    /// Created at the first delivery (so that defining a sink starts no client threads).
    producer: std::sync::Mutex<Option<FutureProducer>>,
    format: SinkFormat,
    /// Positions of the key columns (empty: no key).
    key: Vec<usize>,
    schema: SchemaRef,
    timeout: Duration,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink").field("name", &self.name).field("topic", &self.topic).field("format", &self.format).finish()
    }
}

impl KafkaSink {
    /// The sink `WITH (connector = 'kafka', ...) FORMAT format ENCODE encode (...)` describes,
    /// for a view of columns `schema`.
    pub fn from_options(
        name: &str,
        options: &BTreeMap<String, String>,
        format: &str,
        encode: &str,
        encode_options: &BTreeMap<String, String>,
        schema: SchemaRef,
    ) -> ConnectorResult<Self> {
        let own = ["connector", "topic", "properties.bootstrap.server", "primary_key", "force_append_only"];
        crate::check_options(options, &own, &[], true, "a kafka sink")?;
        if !encode.eq_ignore_ascii_case("JSON") {
            return Err(ConnectorError::InvalidOption(format!("a kafka sink writes ENCODE JSON, not {encode}")));
        }
        if let Some(unknown) = encode_options.keys().next() {
            return Err(ConnectorError::InvalidOption(format!("unknown option {unknown} for ENCODE JSON")));
        }
        let (topic, client) = crate::kafka::topic_and_client(options, "a kafka sink")?;
        let key: Vec<usize> = match options.get("primary_key") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|c| {
                    let c = c.trim();
                    schema.index_of(c).map_err(|_| {
                        ConnectorError::InvalidColumn(format!("primary_key column \"{c}\" is not a column of the view"))
                    })
                })
                .collect::<ConnectorResult<_>>()?,
        };
        let force_append_only = bool_option(options, "force_append_only", false)?;
        let format = match format.to_ascii_uppercase().as_str() {
            "PLAIN" => SinkFormat::Plain { force_append_only },
            "UPSERT" => {
                if key.is_empty() {
                    return Err(ConnectorError::InvalidOption(
                        "FORMAT UPSERT needs WITH (primary_key = 'col, ...'): the message key".into(),
                    ));
                }
                SinkFormat::Upsert
            }
            "DEBEZIUM" => SinkFormat::Debezium,
            other => {
                return Err(ConnectorError::InvalidOption(format!(
                    "FORMAT {other} is not a sink format (PLAIN, UPSERT, DEBEZIUM)"
                )))
            }
        };
        let mut config = ClientConfig::new();
        config.set("enable.idempotence", "true").set("acks", "all");
        for (key, value) in &client {
            config.set(key, value);
        }
        config
            .create_native_config()
            .map_err(|e| ConnectorError::InvalidOption(format!("the Kafka client refuses the properties: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            topic,
            config,
            producer: std::sync::Mutex::new(None),
            format,
            key,
            schema,
            timeout: Duration::from_secs(30),
        })
    }

    fn producer(&self) -> EngineResult<FutureProducer> {
        let mut slot = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(producer) = slot.as_ref() {
            return Ok(producer.clone());
        }
        let producer: FutureProducer =
            self.config.create().map_err(|e| EngineError::Invalid(format!("kafka sink \"{}\": {e}", self.name)))?;
        *slot = Some(producer.clone());
        Ok(producer)
    }
}

/// Each row of `batch` as a JSON object (every column, NULL as null).
fn json_rows(batch: &RecordBatch) -> EngineResult<Vec<String>> {
    let mut writer = WriterBuilder::new().with_explicit_nulls(true).build::<_, LineDelimited>(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let bytes = writer.into_inner();
    let text = String::from_utf8(bytes).map_err(|e| EngineError::Invalid(format!("JSON output is not UTF-8: {e}")))?;
    Ok(text.lines().map(str::to_string).collect())
}

/// One message to send: key and value (None: a tombstone).
type Message = (Option<String>, Option<String>);

impl KafkaSink {
    /// The messages for one checkpoint's changes.
    fn messages(&self, changes: &ChangeBatch) -> EngineResult<Vec<Message>> {
        let rows = json_rows(changes.data())?;
        let keys = if self.key.is_empty() { None } else { Some(json_rows(&changes.data().project(&self.key)?)?) };
        let ops: Vec<Op> = (0..changes.num_rows()).map(|i| changes.op(i)).collect();
        Ok(match self.format {
            SinkFormat::Plain { force_append_only } => {
                let mut out = Vec::with_capacity(rows.len());
                for (i, row) in rows.into_iter().enumerate() {
                    match ops[i] {
                        Op::Insert => out.push((keys.as_ref().map(|k| k[i].clone()), Some(row))),
                        Op::Delete if force_append_only => {}
                        Op::Delete => {
                            return Err(EngineError::Invalid(format!(
                                "sink \"{}\" is FORMAT PLAIN but its view deleted a row ({row}); use FORMAT UPSERT or \
                                 DEBEZIUM, or force_append_only = 'true' to drop deletes",
                                self.name
                            )))
                        }
                    }
                }
                out
            }
            SinkFormat::Upsert => {
                let keys = keys.unwrap_or_default();
                // Per key, in first-change order: the inserted row if any, else a tombstone.
                let mut order: Vec<String> = Vec::new();
                let mut latest: BTreeMap<String, Option<String>> = BTreeMap::new();
                for (i, row) in rows.into_iter().enumerate() {
                    let key = keys[i].clone();
                    let slot = latest.entry(key.clone()).or_insert_with(|| {
                        order.push(key);
                        None
                    });
                    if ops[i] == Op::Insert {
                        *slot = Some(row);
                    }
                }
                order.into_iter().map(|key| {
                    let value = latest.remove(&key).flatten();
                    (Some(key), value)
                }).collect()
            }
            SinkFormat::Debezium => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or_default();
                let envelope = |before: Option<&str>, after: Option<&str>, op: &str| {
                    format!(
                        "{{\"before\":{},\"after\":{},\"op\":\"{op}\",\"ts_ms\":{now},\"source\":{{\"name\":\"sluice\",\"sink\":{}}}}}",
                        before.unwrap_or("null"),
                        after.unwrap_or("null"),
                        serde_json::Value::String(self.name.clone())
                    )
                };
                match keys {
                    None => rows
                        .iter()
                        .enumerate()
                        .map(|(i, row)| match ops[i] {
                            Op::Insert => (None, Some(envelope(None, Some(row), "c"))),
                            Op::Delete => (None, Some(envelope(Some(row), None, "d"))),
                        })
                        .collect(),
                    Some(keys) => {
                        let mut order: Vec<String> = Vec::new();
                        let mut pairs: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
                        for (i, row) in rows.into_iter().enumerate() {
                            let key = keys[i].clone();
                            let slot = pairs.entry(key.clone()).or_insert_with(|| {
                                order.push(key);
                                (None, None)
                            });
                            match ops[i] {
                                Op::Delete if slot.0.is_none() => slot.0 = Some(row),
                                Op::Delete => {}
                                Op::Insert => slot.1 = Some(row),
                            }
                        }
                        order
                            .into_iter()
                            .filter_map(|key| {
                                let (before, after) = pairs.remove(&key)?;
                                let op = match (&before, &after) {
                                    (None, Some(_)) => "c",
                                    (Some(_), None) => "d",
                                    (Some(b), Some(a)) if b == a => return None,
                                    _ => "u",
                                };
                                Some((Some(key), Some(envelope(before.as_deref(), after.as_deref(), op))))
                            })
                            .collect()
                    }
                }
            }
        })
    }
}

#[async_trait]
impl SinkConnector for KafkaSink {
    async fn deliver(&self, changes: &ChangeBatch) -> EngineResult<()> {
        if changes.schema().fields().len() != self.schema.fields().len() {
            return Err(EngineError::Invalid(format!("sink \"{}\": the view's columns changed", self.name)));
        }
        let messages = Arc::new(self.messages(changes)?);
        let producer = self.producer()?;
        // Sent concurrently (the producer keeps each partition's order) and all awaited.
        let sends = messages.iter().map(|(key, value)| {
            let mut record: FutureRecord<'_, str, str> = FutureRecord::to(&self.topic);
            if let Some(key) = key {
                record = record.key(key.as_str());
            }
            if let Some(value) = value {
                record = record.payload(value.as_str());
            }
            producer.send(record, self.timeout)
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| EngineError::Invalid(format!("kafka sink \"{}\": {e}", self.name)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sink(format: &str, key: Option<&str>) -> KafkaSink {
        let schema = ChangeBatch::from_pretty("I T\n+ 1 a").unwrap().schema();
        let mut options: BTreeMap<String, String> =
            [("topic", "t"), ("properties.bootstrap.server", "127.0.0.1:1")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if let Some(key) = key {
            options.insert("primary_key".into(), key.into());
        }
        KafkaSink::from_options("s", &options, format, "JSON", &BTreeMap::new(), schema).unwrap()
    }

    #[test]
    fn upsert_keeps_the_last_row_per_key_and_tombstones_deleted_keys() {
        let sink = sink("UPSERT", Some("c0"));
        let changes = ChangeBatch::from_pretty("I T\n- 1 a\n+ 1 b\n+ 2 x\n- 3 y").unwrap();
        let messages = sink.messages(&changes).unwrap();
        assert_eq!(
            messages,
            vec![
                (Some("{\"c0\":1}".into()), Some("{\"c0\":1,\"c1\":\"b\"}".into())),
                (Some("{\"c0\":2}".into()), Some("{\"c0\":2,\"c1\":\"x\"}".into())),
                (Some("{\"c0\":3}".into()), None),
            ]
        );
    }

    #[test]
    fn debezium_pairs_an_update_and_plain_refuses_deletes() {
        let debezium = sink("DEBEZIUM", Some("c0"));
        let changes = ChangeBatch::from_pretty("I T\n- 1 a\n+ 1 b\n- 3 .").unwrap();
        let messages = debezium.messages(&changes).unwrap();
        assert_eq!(messages.len(), 2);
        let update: serde_json::Value = serde_json::from_str(messages[0].1.as_deref().unwrap()).unwrap();
        assert_eq!(update["op"], "u");
        assert_eq!(update["before"]["c1"], "a");
        assert_eq!(update["after"]["c1"], "b");
        let delete: serde_json::Value = serde_json::from_str(messages[1].1.as_deref().unwrap()).unwrap();
        assert_eq!((delete["op"].as_str(), delete["after"].is_null()), (Some("d"), true));
        assert!(delete["before"]["c1"].is_null());
        let plain = sink("PLAIN", None);
        assert!(plain.messages(&changes).is_err());
        assert!(KafkaSink::from_options("s", &BTreeMap::new(), "UPSERT", "JSON", &BTreeMap::new(), changes.schema()).is_err());
    }
}
