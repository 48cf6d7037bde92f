//! Functions PostgreSQL clients call while connecting (`version()`, `current_database()`, ...),
//! registered beside DataFusion's own.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{create_udf, ColumnarValue, ScalarUDF, Volatility};

/// The `version()` string. Clients such as SQLAlchemy parse "PostgreSQL X.Y" out of it, so it
/// leads with the protocol-compatible PostgreSQL version.
pub fn version_string() -> String {
    format!("PostgreSQL 15.0 (Sluice {}) on x86_64, a streaming database", env!("CARGO_PKG_VERSION"))
}

fn constant_text(name: &str, value: String) -> ScalarUDF {
    let value = ScalarValue::Utf8(Some(value));
    create_udf(
        name,
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| Ok(ColumnarValue::Scalar(value.clone()))),
    )
}

/// The per-session functions: their values depend on who connected to which database.
pub fn session_functions(database: &str, user: &str, backend_pid: i32) -> Vec<ScalarUDF> {
    let pid = ScalarValue::Int32(Some(backend_pid));
    vec![
        constant_text("version", version_string()),
        constant_text("current_database", database.to_string()),
        constant_text("current_schema", "public".to_string()),
        constant_text("current_user", user.to_string()),
        constant_text("session_user", user.to_string()),
        create_udf(
            "pg_backend_pid",
            vec![],
            DataType::Int32,
            Volatility::Stable,
            Arc::new(move |_args: &[ColumnarValue]| Ok(ColumnarValue::Scalar(pid.clone()))),
        ),
    ]
}
