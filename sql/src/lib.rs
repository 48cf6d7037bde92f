//! # sluice-sql: statements in, results out
//!
//! ```text
//!  SQL text ──sqlparser──► Statement ──Session::execute──┬─► DDL / SHOW / SET: catalog & settings
//!                                                        └─► query / DML: DataFusion LogicalPlan
//!                                                              │  TableProvider = StoredTable
//!                                                              ▼
//!                                              engine::StateTable ──► storage::StateStore
//! ```
//!
//! This crate owns the catalog, the per-connection [`Session`] and the classification of every
//! failure into a [`SqlError`]. It never touches the wire protocol: `server` turns
//! [`StatementOutcome`]s into pgwire messages and [`SqlError`]s into SQLSTATE codes.

mod batch_catalog;
mod catalog;
mod connector;
mod database;
mod datagen;
mod error;
mod event_time;
mod functions;
mod history_status;
mod ingest;
mod naming;
mod params;
mod persist;
mod pg_semantics;
pub mod pgtext;
mod provider;
mod relations;
mod session;
mod source_status;
mod state_scan;
mod statement;
mod stream_planner;
mod types;
mod window;

pub use catalog::{ColumnDef, TableDef, ROW_ID_COLUMN};
pub use datagen::{parse_duration_text, parse_size_text};
pub use database::{normalize_ident, Database, RecoverySummary, RelationKind, CATALOG_NAME, SCHEMA_NAME};
pub use statement::{CreateSource, ObjectKind, ParsedStatement};
pub use sluice_engine::DataflowConfig;
pub use error::{DataErrorKind, SqlError, SqlResult};
pub use functions::version_string;
pub use ingest::{IngestError, IngestReport};
pub use naming::digits_with_point;
pub use params::{bind_parameters, declared_parameter_types, parameter_count, BoundParam};
pub use session::{parse_statements, Session, StatementDescription, StatementOutcome, StatementOutput, TransactionChange};
pub use types::{is_json_field, is_varchar_field, normalize_jsonb, varchar_max_len, SqlType};

/// DataFusion's SQL parser, re-exported so that `server` needs no direct dependency on it.
pub use datafusion::sql::sqlparser;
