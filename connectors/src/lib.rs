//! # sluice-connectors: getting records from the outside world into rows
//!
//! ```text
//!   bytes (a file's lines, an HTTP body, Kafka messages)
//!     └─ RecordParser (ENCODE JSON | CSV | LOG) ──► Arrow RecordBatch + RejectedRecords
//!   FileSource: glob → files oldest first → complete lines → parser → SourceOutput
//! ```
//!
//! Parsing goes straight to Arrow columns: JSON through `arrow-json`'s tape decoder (no
//! per-row `serde_json::Value`), CSV through the `csv` crate's record splitter, access logs
//! through a hand-written byte scanner (no library parses Apache's formats into columns).
//! A record that does not parse, or whose value does not fit its column, is rejected on its
//! own (with where it was and why) rather than failing its batch: the source's error policy
//! decides what happens to it.
//!
//! This crate depends on `engine` (for the [`sluice_engine::source::SourceConnector`] trait
//! its connectors implement) and never on SQL: `sql` turns `WITH (...)` and `FORMAT ...`
//! options into the types here.

pub mod file;
pub mod format;
pub mod kafka;
pub mod kafka_sink;
pub mod log_format;

/// Why a connector or format could not be set up from its options.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// An option is missing, unknown or has a value the connector cannot use.
    #[error("{0}")]
    InvalidOption(String),
    /// A column the format cannot fill.
    #[error("{0}")]
    InvalidColumn(String),
}

/// Results of setting up connectors.
pub type ConnectorResult<T> = Result<T, ConnectorError>;

/// Refuses the first option that is neither one of `own` (the connector's, `connector`
/// among them), nor one of `used` (understood by the caller), nor — with `properties` — a
/// `properties.*` pass-through; the error names `what` and the options it knows.
pub fn check_options(
    options: &std::collections::BTreeMap<String, String>,
    own: &[&str],
    used: &[&str],
    properties: bool,
    what: &str,
) -> ConnectorResult<()> {
    let known = |key: &str| own.contains(&key) || used.contains(&key) || (properties && key.starts_with("properties."));
    match options.keys().find(|k| !known(k)) {
        None => Ok(()),
        Some(unknown) => {
            let mut names: Vec<&str> = own.iter().copied().filter(|k| *k != "connector").collect();
            if properties {
                names.push("properties.*");
            }
            Err(ConnectorError::InvalidOption(format!("unknown option {unknown} for {what} (known: {})", names.join(", "))))
        }
    }
}

/// A boolean option (`true`/`false`, any case), or `default` when absent.
pub fn bool_option(options: &std::collections::BTreeMap<String, String>, key: &str, default: bool) -> ConnectorResult<bool> {
    match options.get(key).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(v) => Err(ConnectorError::InvalidOption(format!("option {key} = '{v}' must be 'true' or 'false'"))),
    }
}
