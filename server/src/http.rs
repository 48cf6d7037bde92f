//! The HTTP port: health, metrics, and ingest.
//!
//! ```text
//! GET  /health                    "ok"
//! GET  /metrics                   Prometheus text
//! POST /ingest/<source>           a body of records in the source's ENCODE (JSON lines, CSV,
//!                                 log lines) → 200 {"accepted","rejected","late","errors"}
//!                                 once durable; 404 unknown source; 400 unreadable body or
//!                                 not an http source; 413 body too large; 429 too many
//!                                 requests in flight (retry later)
//! ```
//!
//! Backpressure: at most [`INGEST_IN_FLIGHT`] ingest requests are held at once (each with a
//! body of at most [`INGEST_MAX_BODY`]); beyond that a request is answered 429 at once with
//! `Retry-After`, so memory stays bounded however fast clients post. A request in flight
//! waits for the dataflow's bounded input queue, so a slow pipeline slows the replies.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sluice_sql::{Database, IngestError};
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// Ingest requests held at once at most.
pub const INGEST_IN_FLIGHT: usize = 8;

/// Largest ingest body accepted.
pub const INGEST_MAX_BODY: usize = 64 << 20;

#[derive(Clone)]
struct HttpState {
    db: Arc<Database>,
    metrics: Arc<Metrics>,
    ingest_permits: Arc<Semaphore>,
}

/// The HTTP routes.
pub fn router(db: Arc<Database>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move { s.metrics.render(s.db.table_names().len(), s.db.state_bytes()) }),
        )
        .route("/ingest/{source}", post(ingest).layer(DefaultBodyLimit::max(INGEST_MAX_BODY)))
        .with_state(HttpState { db, metrics, ingest_permits: Arc::new(Semaphore::new(INGEST_IN_FLIGHT)) })
}

fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body + "\n").into_response()
}

async fn ingest(State(state): State<HttpState>, Path(source): Path<String>, body: Bytes) -> Response {
    let Ok(_permit) = state.ingest_permits.try_acquire() else {
        let mut response = json_error(StatusCode::TOO_MANY_REQUESTS, "too many ingest requests in flight; retry later");
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return response;
    };
    match state.db.ingest(&source, &body).await {
        Ok(report) => {
            let body = serde_json::json!({
                "accepted": report.accepted,
                "rejected": report.rejected,
                "late": report.late,
                "errors": report.errors,
            });
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string() + "\n").into_response()
        }
        Err(e @ IngestError::UnknownSource(_)) => json_error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e @ (IngestError::NotPushed(..) | IngestError::UnreadableBody(_))) => {
            json_error(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(IngestError::Sql(e)) => {
            tracing::error!(error = %e, %source, "ingest failed");
            json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}
