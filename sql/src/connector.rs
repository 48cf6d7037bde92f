//! A source's `WITH (connector = ...)` and `FORMAT ... ENCODE ...` clauses, turned into the
//! connector that reads it.
//!
//! ```text
//! connector = 'datagen'  generated rows (no FORMAT)                 see datagen.rs
//! connector = 'file'     path, follow, poll.interval + FORMAT PLAIN ENCODE JSON | CSV | LOG
//! connector = 'kafka'    topic, properties.bootstrap.server, scan.startup.mode, properties.*
//!                        + FORMAT PLAIN ENCODE JSON | CSV | LOG
//! connector = 'http'     rows POSTed to /ingest/<source> + FORMAT PLAIN ENCODE JSON | CSV | LOG
//! every connector        error.policy = 'skip' | 'fail', watermark.idle.timeout,
//!                        history = 'true' | 'false', history.retention, history.flush.interval
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use sluice_connectors::file::FileSource;
use sluice_connectors::format::Encode;
use sluice_connectors::ConnectorError;
use sluice_engine::source::{ErrorPolicy, SourceConnector};

use crate::catalog::FormatClause;
use crate::error::{SqlError, SqlResult};

/// Options every connector understands.
const COMMON_OPTIONS: [&str; 8] = [
    "connector",
    "error.policy",
    "watermark.idle.timeout",
    "history",
    "history.retention",
    "history.flush.interval",
    "history.compaction.target.size",
    "history.compaction.min.files",
];

/// How a source's history is kept (`history`, `history.retention`, `history.flush.interval`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Whether accepted rows are archived (`history = 'false'` turns it off).
    pub enabled: bool,
    /// Partitions older than this are deleted, with the text as written.
    pub retention: Option<(std::time::Duration, String)>,
    /// How often the queued rows are written as files.
    pub flush_interval: std::time::Duration,
    /// How small files are merged.
    pub compaction: sluice_history::CompactionPolicy,
}

/// The default time between two archiving rounds: files of about this much data each, merged
/// later by compaction.
const DEFAULT_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

fn history_options(options: &BTreeMap<String, String>) -> SqlResult<HistoryOptions> {
    let enabled = match options.get("history").map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => return Err(invalid(format!("history = '{other}' is not a boolean ('true' or 'false')"))),
    };
    let retention = match options.get("history.retention") {
        Some(text) => {
            let retention = crate::datagen::parse_duration("history.retention", text)?;
            if retention.is_zero() {
                return Err(invalid("option history.retention: must be longer than 0".into()));
            }
            Some((retention, text.clone()))
        }
        None => None,
    };
    let flush_interval = match options.get("history.flush.interval") {
        Some(text) => crate::datagen::parse_duration("history.flush.interval", text)?,
        None => DEFAULT_FLUSH_INTERVAL,
    };
    let mut compaction = sluice_history::CompactionPolicy::default();
    if let Some(text) = options.get("history.compaction.target.size") {
        let bytes = crate::datagen::parse_size_text(text)
            .map_err(|e| invalid(format!("option history.compaction.target.size: {e}")))?;
        if bytes < 1 << 10 {
            return Err(invalid(format!("option history.compaction.target.size: '{text}' is too small (at least 1KB)")));
        }
        compaction.target_bytes = bytes as u64;
    }
    if let Some(text) = options.get("history.compaction.min.files") {
        compaction.min_files = match text.trim().parse::<usize>() {
            Ok(n) if n >= 2 => n,
            _ => return Err(invalid(format!("option history.compaction.min.files: '{text}' is not a whole number of at least 2"))),
        };
    }
    if !enabled && options.keys().any(|k| k.starts_with("history.")) {
        return Err(invalid("history options given with history = 'false'".into()));
    }
    Ok(HistoryOptions { enabled, retention, flush_interval, compaction })
}

/// What reads a source, and how it treats bad records.
#[derive(Debug, Clone)]
pub struct SourceSetup {
    /// The connector's name (`datagen`, `file`, `http`).
    pub kind: String,
    /// Where its rows come from.
    pub input: SourceInput,
    /// What to do with records that are not rows.
    pub error_policy: ErrorPolicy,
    /// How long a partition may be silent before the watermark stops waiting for it.
    pub idle_timeout: std::time::Duration,
    /// How its history is kept.
    pub history: HistoryOptions,
}

/// How a source's rows arrive.
#[derive(Debug, Clone)]
pub enum SourceInput {
    /// Read by a connector: every view over the source runs its own reader.
    Pull(Arc<dyn SourceConnector>),
    /// Pushed to Sluice (`POST /ingest/<source>`) in this encoding: each request's rows are
    /// committed to the change log, like a table write, and every view over the source gets
    /// them from there.
    Push(Encode),
}

fn invalid(message: String) -> SqlError {
    SqlError::InvalidParameterValue(message)
}

fn from_connector(error: ConnectorError) -> SqlError {
    match error {
        ConnectorError::InvalidOption(message) => SqlError::InvalidParameterValue(message),
        ConnectorError::InvalidColumn(message) => SqlError::InvalidDefinition(message),
    }
}

/// The connector sink `sink` declares, for a view of columns `schema`.
pub fn sink_connector(
    sink: &str,
    options: &BTreeMap<String, String>,
    format: Option<&FormatClause>,
    schema: &SchemaRef,
) -> SqlResult<Arc<dyn sluice_engine::sink::SinkConnector>> {
    match options.get("connector").map(|c| c.to_ascii_lowercase()).as_deref() {
        Some("kafka") => {}
        Some(other) => {
            return Err(SqlError::unsupported(format_args!("sink connector '{other}' (Sluice sinks to kafka today)")))
        }
        None => return Err(invalid(format!("sink \"{sink}\" needs WITH (connector = '...')"))),
    }
    let format = format.ok_or_else(|| {
        invalid("a kafka sink needs FORMAT PLAIN | UPSERT | DEBEZIUM ENCODE JSON".into())
    })?;
    let connector = sluice_connectors::kafka_sink::KafkaSink::from_options(
        sink,
        options,
        &format.format,
        &format.encode,
        &format.options,
        SchemaRef::clone(schema),
    )
    .map_err(from_connector)?;
    Ok(Arc::new(connector))
}

/// The connector source `source` of columns `schema` declares.
pub fn source_setup(
    source: &str,
    schema: &SchemaRef,
    options: &BTreeMap<String, String>,
    format: Option<&FormatClause>,
    created_at_micros: i64,
) -> SqlResult<SourceSetup> {
    let kind = match options.get("connector") {
        Some(c) => c.to_ascii_lowercase(),
        None => return Err(invalid(format!("source \"{source}\" needs WITH (connector = '...')"))),
    };
    let error_policy = match options.get("error.policy").map(|p| p.to_ascii_lowercase()).as_deref() {
        None | Some("skip") => ErrorPolicy::Skip,
        Some("fail") => ErrorPolicy::Fail,
        Some(other) => return Err(invalid(format!("error.policy = '{other}' is not a policy (skip, fail)"))),
    };
    let idle_timeout = match options.get("watermark.idle.timeout") {
        Some(text) => crate::datagen::parse_duration("watermark.idle.timeout", text)?,
        None => std::time::Duration::from_secs(60),
    };
    let history = history_options(options)?;
    let encode = match format {
        None => None,
        Some(clause) => {
            if clause.format != "PLAIN" {
                return Err(invalid(format!(
                    "FORMAT {} is for sinks: a source reads FORMAT PLAIN ENCODE ...",
                    clause.format
                )));
            }
            Some(Encode::from_clause(&clause.encode, &clause.options, schema).map_err(from_connector)?)
        }
    };
    let input = match kind.as_str() {
        "datagen" => {
            if encode.is_some() {
                return Err(invalid("a datagen source generates rows: it takes no FORMAT ... ENCODE clause".into()));
            }
            SourceInput::Pull(Arc::new(crate::datagen::spec_from_options(schema, options, created_at_micros, &COMMON_OPTIONS)?))
        }
        "file" => SourceInput::Pull(Arc::new(
            FileSource::from_options(options, &COMMON_OPTIONS, encode, SchemaRef::clone(schema), |key, text| {
                crate::datagen::parse_duration_text(text).map_err(|e| format!("option {key}: {e}"))
            })
            .map_err(from_connector)?,
        )),
        "http" => {
            if let Some(unknown) = options.keys().find(|k| !COMMON_OPTIONS.contains(&k.as_str())) {
                return Err(invalid(format!("unknown option {unknown} for an http source")));
            }
            SourceInput::Push(encode.ok_or_else(|| {
                invalid("an http source needs FORMAT PLAIN ENCODE JSON | CSV | LOG (the format of the bodies POSTed)".into())
            })?)
        }
        "kafka" => SourceInput::Pull(Arc::new(
            sluice_connectors::kafka::KafkaSource::from_options(
                source,
                options,
                &COMMON_OPTIONS,
                encode,
                SchemaRef::clone(schema),
                |key, text| crate::datagen::parse_duration_text(text).map_err(|e| format!("option {key}: {e}")),
            )
            .map_err(from_connector)?,
        )),
        other => return Err(invalid(format!("unknown connector '{other}' for source \"{source}\" (known: datagen, file, http, kafka)"))),
    };
    Ok(SourceSetup { kind, input, error_policy, idle_timeout, history })
}
