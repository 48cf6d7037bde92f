//! Process-wide counters, served on `/metrics` in the Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the pgwire front end.
///
/// Why atomics and not a metrics library: a handful of counters read by one endpoint; the
/// observability issue replaces this with per-source and per-view metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: AtomicU64,
    statements: AtomicU64,
    statement_errors: AtomicU64,
}

impl Metrics {
    /// A client finished start-up.
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A statement started.
    pub fn statement_started(&self) {
        self.statements.fetch_add(1, Ordering::Relaxed);
    }

    /// A statement failed.
    pub fn statement_failed(&self) {
        self.statement_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in Prometheus text exposition format.
    pub fn render(&self, tables: usize, state_bytes: Option<u64>) -> String {
        let state = state_bytes
            .map(|b| format!("# TYPE sluice_state_bytes gauge\nsluice_state_bytes {b}\n"))
            .unwrap_or_default();
        format!(
            "# TYPE sluice_connections_total counter\nsluice_connections_total {}\n\
             # TYPE sluice_statements_total counter\nsluice_statements_total {}\n\
             # TYPE sluice_statement_errors_total counter\nsluice_statement_errors_total {}\n\
             # TYPE sluice_tables gauge\nsluice_tables {}\n{state}",
            self.connections.load(Ordering::Relaxed),
            self.statements.load(Ordering::Relaxed),
            self.statement_errors.load(Ordering::Relaxed),
            tables
        )
    }
}
