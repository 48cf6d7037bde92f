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
pub use state_table::StateTable;

/// Arrow, as re-exported by DataFusion: one copy of the crate for the whole workspace.
pub use datafusion::arrow;
