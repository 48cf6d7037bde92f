use datafusion::arrow::error::ArrowError;
use sluice_storage::StorageError;

/// Result alias for the engine.
pub type EngineResult<T> = Result<T, EngineError>;

/// Errors raised while moving rows between Arrow and the state store.
///
/// `Arrow` and `Expression` errors usually come from user data (a cast that overflows, a
/// division by zero); `Storage` errors are
/// resource failures; `Invalid` marks a broken internal invariant.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// An Arrow compute or encoding error.
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    /// Evaluating an expression failed (often bad data: a division by zero, an overflow).
    #[error(transparent)]
    Expression(#[from] datafusion::error::DataFusionError),
    /// The state store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An internal invariant does not hold.
    #[error("internal engine error: {0}")]
    Invalid(String),
}
