//! # sluice-sqllogictest: SQL behaviour pinned over the wire
//!
//! ```text
//!  slt/*.slt ──► sqllogictest::Runner ──► WireClient (tokio-postgres) ──TCP──► sluice serve
//!                                                  (simple or extended)   └──► PostgreSQL (slt/pg/*)
//! ```
//!
//! Every file runs against a fresh `sluice serve` process twice: once with the simple query
//! protocol (text results) and once with the extended protocol (Parse/Bind/Describe/Execute,
//! binary results decoded here independently of the server). Files under `slt/pg/` also run
//! against a real PostgreSQL started for the test, so dialect drift shows as a failure.

mod client;
pub mod crash;
pub mod probe;
mod processes;

pub use client::{Protocol, WireClient, WireError};
pub use processes::{KafkaBroker, PostgresCluster, S3Server, SluiceServer};
