//! # sluice-engine: Arrow data over the state store
//!
//! The engine owns how rows look in memory (Arrow `RecordBatch`es) and how they are laid out in
//! the state store. Today it provides [`StateTable`]: a relation of one Arrow schema kept in one
//! storage table, keyed by some of its columns. Tables use it for their rows; the incremental
//! operators of later issues (aggregates, joins, materialized views) keep their state through
//! the same type, so the durability work changes one place.
//!
//! ```text
//!   RecordBatch ──encode_keys / encode_values──► (memcomparable key, value) ──► WriteBatch
//!   StateSnapshot ──scan──► (key, value)* ──decode_values──► RecordBatch
//! ```
//!
//! Materialized views run here: [`ChangeBatch`]es (rows with an insert/delete op) flow through
//! [`Operator`]s built from a [`plan::StreamPlan`] by the [`Dataflow`] runtime, which commits
//! every view's state at barriers through the [`EpochCommitter`].
//!
//! The engine depends only on `storage` (and Arrow through DataFusion's re-export); it never
//! sees SQL text, the catalog or the wire protocol.

pub mod archive;
pub mod changelog;
mod commit;
pub mod dataflow;
mod error;
pub mod exchange;
pub mod operator;
pub mod plan;
pub mod recovery;
pub mod sink;
pub mod source;
pub mod watermark;
mod state_table;

pub use changelog::{ChangeBatch, Op};
pub use commit::EpochCommitter;
pub use dataflow::{Backfill, Dataflow, DataflowConfig, SourceReader, ViewDefinition};
pub use error::{EngineError, EngineResult};
pub use operator::Operator;
pub use state_table::{StateTable, SCAN_BATCH_ROWS};

/// How PostgreSQL names the SQL type Sluice stores as Arrow type `t` (`integer`, `numeric(10,2)`,
/// `timestamp with time zone`, ...), for messages and DESCRIBE: one mapping, so an error from
/// a connector and a column's description name a type the same way.
pub fn postgres_type_name(t: &datafusion::arrow::datatypes::DataType) -> String {
    use datafusion::arrow::datatypes::DataType;
    match t {
        DataType::Boolean => "boolean".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(p, s) => format!("numeric({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp without time zone".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Interval(_) => "interval".into(),
        DataType::Binary | DataType::LargeBinary => "bytea".into(),
        other => other.to_string(),
    }
}

/// Arrow, as re-exported by DataFusion: one copy of the crate for the whole workspace.
pub use datafusion::arrow;
