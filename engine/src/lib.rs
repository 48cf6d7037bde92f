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
//! The dataflow vocabulary is in place — [`ChangeBatch`] (rows with an insert/delete op),
//! [`Message`] (changes and barriers) and the [`Operator`] trait with the stateless
//! operators — and is wired into views by the incremental-views issue.
//!
//! The engine depends only on `storage` (and Arrow through DataFusion's re-export); it never
//! sees SQL text, the catalog or the wire protocol.

pub mod changelog;
mod error;
pub mod operator;
mod state_table;

pub use changelog::{ChangeBatch, Message, Op};
pub use error::{EngineError, EngineResult};
pub use operator::Operator;
pub use state_table::StateTable;

/// Arrow, as re-exported by DataFusion: one copy of the crate for the whole workspace.
pub use datafusion::arrow;
