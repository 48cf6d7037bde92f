//! `connector = 'kafka'`: the messages of a Kafka topic, one record per message.
//!
//! ```text
//! WITH (connector = 'kafka', topic = 'page_views',
//!       properties.bootstrap.server = '127.0.0.1:9092',
//!       scan.startup.mode = 'earliest' | 'latest',
//!       properties.<librdkafka option> = '...')        passed to the client as is
//! FORMAT PLAIN ENCODE JSON | CSV | LOG
//! ```
//!
//! Exactly-once replay: the reader assigns itself every partition of the topic (no consumer
//! group rebalancing) at the offsets stored in Sluice's checkpoint, which is the truth; a
//! partition it has no offset for starts at the startup mode, resolved to a number at once
//! (so that a restart before the first checkpoint does not move `latest`). After each batch
//! it also commits the offsets it reached to its consumer group (`sluice-<source>-<reader>`,
//! or `properties.group.id`), asynchronously, for monitoring only: those may run ahead of the
//! checkpoint. Partitions added to the topic are found every `partition.discovery.interval`
//! and read from their start.
//!
//! Tasks: a gathering task receives all partitions' messages and hands each partition's chunk
//! to that partition's parsing task; the reader delivers parsed chunks in each partition's
//! order, advancing that partition's offset with each.
//!
//! Records: a message's value is one record (a JSON value's line breaks are blanks; a CSV or
//! log message may hold several lines); a message without a value is rejected. A rejected
//! record names `topic/partition` and its Kafka offset. The source's watermark is the minimum
//! over partitions (idle ones excepted after `watermark.idle.timeout`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sluice_engine::source::{RejectedRecord, SourceBatch, SourceConnector, SourceOutput, SourcePosition};
use sluice_engine::{EngineError, EngineResult};

use crate::format::{Encode, RecordParser};
use crate::{ConnectorError, ConnectorResult};

/// Messages gathered into one batch at most.
const BATCH_MESSAGES: usize = 4096;

/// How long a batch waits for more messages once it has one.
const BATCH_WAIT: Duration = Duration::from_millis(50);

/// Where a Kafka reader starts on a partition it has no checkpointed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupMode {
    /// The partition's first message still kept.
    Earliest,
    /// The messages produced after the reader starts.
    Latest,
}

/// A Kafka source's settings.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    /// The topic.
    pub topic: String,
    /// Client options (`bootstrap.servers` and every `properties.*` option).
    pub client: BTreeMap<String, String>,
    /// Where to start on a new partition.
    pub startup: StartupMode,
    /// How often to look for new partitions.
    pub discovery_interval: Duration,
    /// How records are encoded.
    pub encode: Encode,
    /// The source's columns.
    pub schema: SchemaRef,
    /// The source's name (for the consumer group).
    pub source: String,
}

impl KafkaSource {
    /// The source `WITH (connector = 'kafka', ...)` describes; `used` are options the caller
    /// understood.
    pub fn from_options(
        source: &str,
        options: &BTreeMap<String, String>,
        used: &[&str],
        encode: Option<Encode>,
        schema: SchemaRef,
        parse_duration: impl Fn(&str, &str) -> Result<Duration, String>,
    ) -> ConnectorResult<Self> {
        let own = ["connector", "topic", "properties.bootstrap.server", "scan.startup.mode", "partition.discovery.interval"];
        crate::check_options(options, &own, used, true, "a kafka source")?;
        let (topic, client) = topic_and_client(options, "a kafka source")?;
        for managed in ["enable.auto.commit", "enable.auto.offset.store"] {
            if client.contains_key(managed) {
                return Err(ConnectorError::InvalidOption(format!(
                    "properties.{managed} cannot be set: Sluice's checkpoint decides the offsets"
                )));
            }
        }
        let startup = match options.get("scan.startup.mode").map(|m| m.to_ascii_lowercase()).as_deref() {
            None | Some("earliest") => StartupMode::Earliest,
            Some("latest") => StartupMode::Latest,
            Some(other) => {
                return Err(ConnectorError::InvalidOption(format!(
                    "scan.startup.mode = '{other}' is not a startup mode (earliest, latest)"
                )))
            }
        };
        let discovery_interval = match options.get("partition.discovery.interval") {
            Some(text) => parse_duration("partition.discovery.interval", text).map_err(ConnectorError::InvalidOption)?,
            None => Duration::from_secs(10),
        };
        let encode = encode.ok_or_else(|| {
            ConnectorError::InvalidOption("a kafka source needs FORMAT PLAIN ENCODE JSON | CSV | LOG".into())
        })?;
        // The client must accept the options now, not when a view first reads the source.
        config(&client, "sluice-check").create_native_config().map_err(|e| {
            ConnectorError::InvalidOption(format!("the Kafka client refuses the properties: {e}"))
        })?;
        Ok(Self { topic, client, startup, discovery_interval, encode, schema, source: source.to_string() })
    }
}

/// The `topic` option and the Kafka client settings (every `properties.*` option, with
/// `bootstrap.server` spelled as librdkafka wants it) of `what`; both are required.
pub(crate) fn topic_and_client(
    options: &BTreeMap<String, String>,
    what: &str,
) -> ConnectorResult<(String, BTreeMap<String, String>)> {
    let mut client = BTreeMap::new();
    for (key, value) in options {
        if let Some(property) = key.strip_prefix("properties.") {
            // RisingWave and Flink spell it without the s.
            let property = if property == "bootstrap.server" { "bootstrap.servers" } else { property };
            client.insert(property.to_string(), value.clone());
        }
    }
    let topic = options
        .get("topic")
        .cloned()
        .ok_or_else(|| ConnectorError::InvalidOption(format!("{what} needs WITH (topic = '...')")))?;
    if !client.contains_key("bootstrap.servers") {
        return Err(ConnectorError::InvalidOption(format!("{what} needs WITH (properties.bootstrap.server = 'host:port')")));
    }
    Ok((topic, client))
}

fn config(client: &BTreeMap<String, String>, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("group.id", group);
    for (key, value) in client {
        config.set(key, value);
    }
    config.set("enable.auto.commit", "false").set("enable.auto.offset.store", "false");
    config
}

/// The position as stored: the next offset of every partition.
#[derive(Debug, Default, Serialize, Deserialize)]
struct KafkaPosition {
    partitions: BTreeMap<i32, i64>,
}

fn kafka_error(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Invalid(format!("kafka: {what}: {e}"))
}

/// One partition's messages of a batch: their bytes (one record per line), each message's
/// (byte start, offset), and the offset after the last.
#[derive(Default)]
struct PartitionChunk {
    bytes: Vec<u8>,
    starts: Vec<(u64, i64)>,
    rejected: Vec<RejectedRecord>,
    next_offset: i64,
    records: u64,
}

/// One partition's chunk, parsed.
struct Parsed {
    rows: datafusion::arrow::array::RecordBatch,
    rejected: Vec<RejectedRecord>,
    next_offset: i64,
    records: u64,
}

/// What the gathering task tells the reader, in order.
enum Event {
    /// A partition discovered after the start is read from this offset.
    Assigned(i32, i64),
    /// A partition's next chunk, parsed (chunks of one partition arrive in order).
    Parsed(i32, Parsed),
    /// Reading cannot go on.
    Failed(EngineError),
}

/// Tasks aborted when this is dropped (the reader stopped or failed).
#[derive(Default)]
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Parses one partition's chunk; rejected records get their message's Kafka offset.
fn parse_chunk(parser: &mut dyn RecordParser, name: &str, chunk: PartitionChunk) -> EngineResult<Parsed> {
    let mut rejected = chunk.rejected;
    let first_rejected = rejected.len();
    let rows = parser.parse(&chunk.bytes, 0, name, &mut rejected)?;
    // A record's byte position in the chunk → the offset of the message holding it.
    for record in &mut rejected[first_rejected..] {
        let at = chunk.starts.partition_point(|(start, _)| *start <= record.offset);
        record.offset = chunk.starts.get(at.saturating_sub(1)).map_or(0, |(_, offset)| *offset as u64);
    }
    rejected.sort_by_key(|r| r.offset);
    Ok(Parsed { rows, rejected, next_offset: chunk.next_offset, records: chunk.records })
}

/// Owns the consumer's side: assigns partitions, gathers their messages into chunks and hands
/// each chunk to its partition's parsing task (one per partition, on the runtime's threads).
struct Gatherer {
    source: Arc<KafkaSource>,
    consumer: Arc<StreamConsumer>,
    workers: BTreeMap<i32, tokio::sync::mpsc::Sender<PartitionChunk>>,
    events: tokio::sync::mpsc::Sender<Event>,
    tasks: Tasks,
}

impl Gatherer {
    /// The topic's partitions, from the broker.
    async fn partitions(&self) -> EngineResult<Vec<i32>> {
        let consumer = Arc::clone(&self.consumer);
        let topic = self.source.topic.clone();
        tokio::task::spawn_blocking(move || {
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).map_err(|e| kafka_error("metadata", e))?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            Ok(partitions)
        })
        .await
        .map_err(|e| kafka_error("metadata", e))?
    }

    /// Assigns the partitions not yet read, each at `known`'s offset (the checkpoint's), else
    /// at the startup mode resolved to an offset (`initial`: the reader's first assignment;
    /// partitions found later start at their beginning). Returns the new partitions' starts.
    async fn assign_new(&mut self, known: &BTreeMap<i32, i64>, initial: bool) -> EngineResult<Vec<(i32, i64)>> {
        let partitions = self.partitions().await?;
        let fresh: Vec<i32> = partitions.into_iter().filter(|p| !self.workers.contains_key(p)).collect();
        let mut starts = Vec::with_capacity(fresh.len());
        for partition in fresh {
            let start = match known.get(&partition) {
                Some(offset) => *offset,
                None => {
                    let consumer = Arc::clone(&self.consumer);
                    let topic = self.source.topic.clone();
                    let (low, high) =
                        tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10)))
                            .await
                            .map_err(|e| kafka_error("offsets", e))?
                            .map_err(|e| kafka_error("offsets", e))?;
                    if initial && self.source.startup == StartupMode::Latest {
                        high
                    } else {
                        low
                    }
                }
            };
            starts.push((partition, start));
        }
        if starts.is_empty() {
            return Ok(starts);
        }
        let mut list = TopicPartitionList::new();
        for (partition, start) in &starts {
            list.add_partition_offset(&self.source.topic, *partition, Offset::Offset(*start)).map_err(|e| kafka_error("assign", e))?;
            let mut parser =
                self.source.encode.parser(SchemaRef::clone(&self.source.schema)).map_err(|e| EngineError::Invalid(e.to_string()))?;
            let (chunks, mut incoming) = tokio::sync::mpsc::channel::<PartitionChunk>(2);
            let events = self.events.clone();
            let name = format!("{}/{partition}", self.source.topic);
            let partition = *partition;
            self.tasks.0.push(tokio::spawn(async move {
                while let Some(chunk) = incoming.recv().await {
                    let event = match parse_chunk(parser.as_mut(), &name, chunk) {
                        Ok(parsed) => Event::Parsed(partition, parsed),
                        Err(e) => Event::Failed(e),
                    };
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
            }));
            self.workers.insert(partition, chunks);
        }
        self.consumer.incremental_assign(&list).map_err(|e| kafka_error("assign", e))?;
        tracing::info!(topic = %self.source.topic, partitions = ?starts, "kafka partitions assigned");
        Ok(starts)
    }

    /// Gathers messages into per-partition chunks and dispatches them, looking for new
    /// partitions every discovery interval, until the reader stops listening.
    async fn run(mut self) {
        let json = self.source.encode == Encode::Json;
        let mut last_discovery = Instant::now();
        loop {
            if last_discovery.elapsed() >= self.source.discovery_interval {
                last_discovery = Instant::now();
                match self.assign_new(&BTreeMap::new(), false).await {
                    Ok(starts) => {
                        for (partition, start) in starts {
                            if self.events.send(Event::Assigned(partition, start)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, topic = %self.source.topic, "looking for new kafka partitions failed"),
                }
            }
            // A batch: the first message waits up to the discovery interval, the rest up to
            // BATCH_WAIT after it.
            let mut chunks: BTreeMap<i32, PartitionChunk> = BTreeMap::new();
            let mut gathered = 0;
            let mut deadline = Instant::now() + self.source.discovery_interval;
            while gathered < BATCH_MESSAGES {
                let wait = deadline.saturating_duration_since(Instant::now());
                let message = match tokio::time::timeout(wait, self.consumer.recv()).await {
                    Err(_) => break,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, topic = %self.source.topic, "kafka fetch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        break;
                    }
                    Ok(Ok(message)) => message,
                };
                if gathered == 0 {
                    deadline = Instant::now() + BATCH_WAIT;
                }
                gathered += 1;
                let chunk = chunks.entry(message.partition()).or_default();
                chunk.next_offset = message.offset() + 1;
                chunk.records += 1;
                match message.payload() {
                    None => chunk.rejected.push(RejectedRecord::new(
                        format!("{}/{}", self.source.topic, message.partition()),
                        message.offset() as u64,
                        &[],
                        "the message has no value",
                    )),
                    Some(payload) => {
                        chunk.starts.push((chunk.bytes.len() as u64, message.offset()));
                        let at = chunk.bytes.len();
                        chunk.bytes.extend_from_slice(payload);
                        if json {
                            for byte in &mut chunk.bytes[at..] {
                                if matches!(*byte, b'\n' | b'\r') {
                                    *byte = b' ';
                                }
                            }
                        }
                        chunk.bytes.push(b'\n');
                    }
                }
            }
            for (partition, chunk) in chunks {
                let Some(worker) = self.workers.get(&partition) else {
                    let _ = self.events.send(Event::Failed(kafka_error("partition", format!("{partition} is not assigned")))).await;
                    return;
                };
                if worker.send(chunk).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Commits `position` to the consumer group, for monitoring.
fn commit_for_monitoring(consumer: &StreamConsumer, topic: &str, position: &KafkaPosition) {
    let mut list = TopicPartitionList::new();
    for (partition, offset) in &position.partitions {
        if list.add_partition_offset(topic, *partition, Offset::Offset(*offset)).is_err() {
            return;
        }
    }
    if let Err(e) = consumer.commit(&list, CommitMode::Async) {
        tracing::debug!(error = %e, "kafka offset commit (monitoring only) failed");
    }
}

#[async_trait]
impl SourceConnector for KafkaSource {
    async fn run(&self, from: SourcePosition, out: &mut SourceOutput) -> EngineResult<()> {
        let mut position: KafkaPosition = if from.state.is_empty() {
            KafkaPosition::default()
        } else {
            serde_json::from_slice(&from.state).map_err(|e| EngineError::Invalid(format!("corrupt kafka source position: {e}")))?
        };
        let group = self.client.get("group.id").cloned().unwrap_or_else(|| format!("sluice-{}-{}", self.source, out.reader_id()));
        let consumer: StreamConsumer = config(&self.client, &group).create().map_err(|e| kafka_error("client", e))?;
        let consumer = Arc::new(consumer);
        let (events, mut incoming) = tokio::sync::mpsc::channel(16);
        let mut gatherer = Gatherer {
            source: Arc::new(self.clone()),
            consumer: Arc::clone(&consumer),
            workers: BTreeMap::new(),
            events,
            tasks: Tasks::default(),
        };
        for (partition, start) in gatherer.assign_new(&position.partitions, true).await? {
            position.partitions.insert(partition, start);
        }
        let state = |position: &KafkaPosition| serde_json::to_vec(position).unwrap_or_default();
        let mut records = from.offset;
        if from.state.is_empty() {
            // The resolved start offsets become the position at once.
            let batch = SourceBatch {
                partition: 0,
                rows: datafusion::arrow::array::RecordBatch::new_empty(SchemaRef::clone(&self.schema)),
                rejected: Vec::new(),
                offset: records,
                state: state(&position),
            };
            if !out.emit(batch).await {
                return Ok(());
            }
        }
        let _gathering = Tasks(vec![tokio::spawn(gatherer.run())]);
        while let Some(event) = incoming.recv().await {
            match event {
                Event::Assigned(partition, start) => {
                    position.partitions.entry(partition).or_insert(start);
                }
                Event::Parsed(partition, parsed) => {
                    position.partitions.insert(partition, parsed.next_offset);
                    records += parsed.records;
                    let batch = SourceBatch {
                        partition: partition as u32,
                        rows: parsed.rows,
                        rejected: parsed.rejected,
                        offset: records,
                        state: state(&position),
                    };
                    if !out.emit(batch).await {
                        return Ok(());
                    }
                    if incoming.is_empty() {
                        commit_for_monitoring(&consumer, &self.topic, &position);
                    }
                }
                Event::Failed(e) => return Err(e),
            }
        }
        Err(kafka_error("reader", "the gathering task stopped"))
    }
}
