//! The HTTP port: health and metrics now; ingest and the dashboard in later issues.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use sluice_sql::Database;

use crate::metrics::Metrics;

#[derive(Clone)]
struct HttpState {
    db: Arc<Database>,
    metrics: Arc<Metrics>,
}

/// The HTTP routes.
pub fn router(db: Arc<Database>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move { s.metrics.render(s.db.table_names().len(), s.db.state_bytes()) }),
        )
        .with_state(HttpState { db, metrics })
}
