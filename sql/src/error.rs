//! The errors of SQL processing, with DataFusion's errors classified once, here.

use datafusion::arrow::error::ArrowError;
use datafusion::common::{DataFusionError, SchemaError};
use sluice_engine::EngineError;
use sluice_storage::StorageError;

/// Result alias for the SQL layer.
pub type SqlResult<T> = Result<T, SqlError>;

/// Which data exception (SQLSTATE class 22) occurred.
///
/// Kept apart from [`SqlError`] so the wire layer maps each to its own code while the message
/// stays with the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataErrorKind {
    /// Text that does not parse as the target type (`'abc'::int`, bad JSON).
    InvalidTextRepresentation,
    /// A number out of the range of its type.
    NumericOverflow,
    /// Division by zero.
    DivisionByZero,
    /// A string longer than its `VARCHAR(n)`.
    StringTooLong,
    /// A date or time that does not parse.
    InvalidDatetime,
    /// Any other data exception.
    Other,
}

/// An error of parsing, planning or executing a statement.
///
/// User errors (syntax, unknown names, bad data, unsupported features) are separate variants so
/// that `server` can give each its SQLSTATE; `Internal` marks a Sluice bug.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The statement does not parse.
    #[error("{0}")]
    Syntax(String),
    /// A table or view name that does not exist.
    #[error("relation \"{0}\" does not exist")]
    UndefinedTable(String),
    /// A column name that does not exist.
    #[error("column {0} does not exist")]
    UndefinedColumn(String),
    /// A function (or a function signature) that does not exist.
    #[error("{0}")]
    UndefinedFunction(String),
    /// A column reference that matches several columns.
    #[error("{0}")]
    AmbiguousColumn(String),
    /// CREATE of a name that is taken.
    #[error("relation \"{0}\" already exists")]
    DuplicateTable(String),
    /// A column named twice.
    #[error("column \"{0}\" specified more than once")]
    DuplicateColumn(String),
    /// A table definition that makes no sense (bad primary key, ...).
    #[error("{0}")]
    InvalidDefinition(String),
    /// Values of types that cannot be combined.
    #[error("{0}")]
    TypeMismatch(String),
    /// Bad data: a literal that does not parse, an overflow, a division by zero.
    #[error("{message}")]
    Data {
        /// Which data exception.
        kind: DataErrorKind,
        /// What went wrong, naming the value.
        message: String,
    },
    /// NULL written to a NOT NULL column.
    #[error("null value in column \"{column}\" of relation \"{table}\" violates not-null constraint")]
    NotNull {
        /// The table written to.
        table: String,
        /// The column that got NULL.
        column: String,
    },
    /// A construct Sluice does not support yet; the message names it (build it with
    /// [`SqlError::unsupported`]).
    #[error("{0}")]
    Unsupported(String),
    /// A write that would give two rows the same primary key.
    #[error("{0}")]
    UniqueViolation(String),
    /// A statement too deeply nested to plan safely.
    #[error("{0}")]
    TooComplex(String),
    /// A semantic error that fits no other variant.
    #[error("{0}")]
    Plan(String),
    /// A statement not allowed in the current transaction state.
    #[error("{0}")]
    InvalidTransactionState(String),
    /// `SHOW` of a setting that does not exist.
    #[error("{0}")]
    UndefinedParameter(String),
    /// A parameter value that does not match its declared type.
    #[error("{0}")]
    InvalidParameter(String),
    /// An argument or option value out of its domain (a window size of zero, an unknown
    /// connector option).
    #[error("{0}")]
    InvalidParameterValue(String),
    /// DROP of an object others depend on, without CASCADE.
    #[error("{0}")]
    DependentObjects(String),
    /// A statement for one kind of object naming another kind (DROP TABLE of a view).
    #[error("{0}")]
    WrongObjectType(String),
    /// A misuse of event-time windows (EMIT ON WINDOW CLOSE without a watermarked window,
    /// SESSION without a gap).
    #[error("{0}")]
    Windowing(String),
    /// A read of a materialized view that stopped on an error.
    #[error("{0}")]
    ViewFailed(String),
    /// Out of memory or another resource limit.
    #[error("{0}")]
    ResourcesExhausted(String),
    /// The state store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Source history could not be written or read (the object store failed, a file is
    /// missing or unreadable).
    #[error(transparent)]
    History(#[from] sluice_history::HistoryError),
    /// A broken invariant inside Sluice.
    #[error("internal error: {0}")]
    Internal(String),
}

impl SqlError {
    /// "`what` is not supported yet".
    pub fn unsupported(what: impl std::fmt::Display) -> Self {
        SqlError::Unsupported(format!("{what} is not supported yet"))
    }

    /// Shorthand for an [`SqlError::Data`].
    pub fn data(kind: DataErrorKind, message: impl Into<String>) -> Self {
        SqlError::Data { kind, message: message.into() }
    }
}

impl From<EngineError> for SqlError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Arrow(a) => from_arrow(a),
            EngineError::Storage(s) => SqlError::Storage(s),
            EngineError::Expression(e) => from_datafusion(e),
            EngineError::Invalid(m) => SqlError::Internal(m),
        }
    }
}

impl From<ArrowError> for SqlError {
    fn from(e: ArrowError) -> Self {
        from_arrow(e)
    }
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        from_datafusion(e)
    }
}

/// Wraps a [`SqlError`] raised inside a DataFusion callback (a table provider, a sink) so that
/// [`from_datafusion`] can recover it unchanged.
pub fn to_datafusion(e: SqlError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

fn from_arrow(e: ArrowError) -> SqlError {
    use DataErrorKind::*;
    match e {
        ArrowError::DivideByZero => SqlError::data(DivisionByZero, "division by zero"),
        ArrowError::ArithmeticOverflow(m) => SqlError::data(NumericOverflow, overflow_message(&m)),
        ArrowError::ComputeError(m) if m.contains("Overflow") || m.contains("overflow") => {
            SqlError::data(NumericOverflow, overflow_message(&m))
        }
        ArrowError::CastError(m) | ArrowError::ParseError(m) => cast_error(m),
        ArrowError::ExternalError(inner) => match inner.downcast::<SqlError>() {
            Ok(sql) => *sql,
            Err(other) => match other.downcast::<DataFusionError>() {
                Ok(df) => from_datafusion(*df),
                Err(other) => SqlError::Internal(other.to_string()),
            },
        },
        ArrowError::MemoryError(m) => SqlError::ResourcesExhausted(m),
        ArrowError::InvalidArgumentError(m) => SqlError::data(Other, m),
        ArrowError::NotYetImplemented(m) => SqlError::Unsupported(m),
        ArrowError::ComputeError(m) if m.contains("too large to store") => {
            SqlError::data(NumericOverflow, format!("numeric field overflow: {m}"))
        }
        other => SqlError::Internal(other.to_string()),
    }
}

fn overflow_message(m: &str) -> String {
    format!("value out of range: {}", m.trim_start_matches("Overflow happened on: "))
}

fn cast_error(m: String) -> SqlError {
    use DataErrorKind::*;
    let lower = m.to_ascii_lowercase();
    // "Cannot cast string '3000000000' to value of Int32 type": a number, just too big.
    let quoted_number = m
        .split('\'')
        .nth(1)
        .is_some_and(|v| v.trim().parse::<f64>().is_ok_and(f64::is_finite) && lower.contains("int"));
    if quoted_number {
        return SqlError::data(NumericOverflow, format!("value out of range: {m}"));
    }
    if lower.contains("overflow") || lower.contains("out of range") || lower.contains("can't cast value")
        || lower.contains("too large to store")
        || lower.contains("too large") || lower.contains("cannot be represented")
    {
        SqlError::data(NumericOverflow, format!("value out of range: {m}"))
    } else if lower.contains("timestamp") || lower.contains("date") || lower.contains("time") {
        SqlError::data(InvalidDatetime, format!("invalid input syntax for date/time: {m}"))
    } else {
        SqlError::data(InvalidTextRepresentation, format!("invalid input syntax: {m}"))
    }
}

/// Classifies a DataFusion error into the [`SqlError`] a user should see.
pub fn from_datafusion(e: DataFusionError) -> SqlError {
    match e {
        DataFusionError::Context(_, inner) => from_datafusion(*inner),
        DataFusionError::Diagnostic(_, inner) => from_datafusion(*inner),
        DataFusionError::Shared(inner) => match std::sync::Arc::try_unwrap(inner) {
            Ok(inner) => from_datafusion(inner),
            Err(shared) => from_message(&shared.to_string()),
        },
        DataFusionError::Collection(mut errors) if !errors.is_empty() => {
            from_datafusion(errors.remove(0))
        }
        DataFusionError::ArrowError(a, _) => from_arrow(*a),
        DataFusionError::External(inner) => match inner.downcast::<SqlError>() {
            Ok(sql) => *sql,
            Err(other) => match other.downcast::<ArrowError>() {
                Ok(a) => from_arrow(*a),
                Err(other) => match other.downcast::<DataFusionError>() {
                    Ok(df) => from_datafusion(*df),
                    Err(other) => match other.downcast::<sluice_history::HistoryError>() {
                        Ok(h) => SqlError::History(*h),
                        Err(other) => SqlError::Internal(other.to_string()),
                    },
                },
            },
        },
        DataFusionError::SQL(p, _) => SqlError::Syntax(format!("syntax error: {p}")),
        DataFusionError::ObjectStore(e) => SqlError::History(sluice_history::HistoryError::ObjectStore(*e)),
        DataFusionError::ParquetError(e) => SqlError::History(sluice_history::HistoryError::Parquet(*e)),
        DataFusionError::SchemaError(s, _) => match *s {
            SchemaError::FieldNotFound { field, .. } => {
                SqlError::UndefinedColumn(format!("\"{}\"", field.name))
            }
            SchemaError::AmbiguousReference { field } => {
                SqlError::AmbiguousColumn(format!("column reference \"{}\" is ambiguous", field.name))
            }
            SchemaError::DuplicateQualifiedField { name, .. }
            | SchemaError::DuplicateUnqualifiedField { name } => SqlError::DuplicateColumn(name),
        },
        DataFusionError::NotImplemented(m) => SqlError::Unsupported(m),
        DataFusionError::ResourcesExhausted(m) => SqlError::ResourcesExhausted(m),
        DataFusionError::Internal(m) => SqlError::Internal(m),
        DataFusionError::Plan(m) | DataFusionError::Execution(m) => from_message(&m),
        other => from_message(&other.to_string()),
    }
}

/// Classifies a planning or execution message by its text: DataFusion reports these as plain
/// strings.
fn from_message(m: &str) -> SqlError {
    use DataErrorKind::*;
    let lower = m.to_ascii_lowercase();
    if let Some(rest) = m.strip_prefix("table '") {
        let name = rest.split('\'').next().unwrap_or(rest);
        let short = name.rsplit('.').next().unwrap_or(name);
        if rest.contains("not found") {
            return SqlError::UndefinedTable(short.to_string());
        }
    }
    if lower.contains("inconsistent data length across values list") {
        return SqlError::Syntax("VALUES lists must all be the same length".into());
    }
    if lower.contains("division by zero") || lower.contains("divide by zero") {
        SqlError::data(DivisionByZero, "division by zero")
    } else if lower.contains("overflow") || lower.contains("out of range") || lower.contains("too large to store") {
        SqlError::data(NumericOverflow, format!("value out of range: {m}"))
    } else if lower.contains("invalid function") || lower.contains("unknown function")
        || lower.contains("no function matches")
        || lower.contains("function does not exist")
    {
        SqlError::UndefinedFunction(m.to_string())
    } else if lower.contains("cannot be cast") || lower.contains("cannot infer common")
        || lower.contains("cannot coerce") || lower.contains("type mismatch")
        || lower.contains("does not support")
            && (lower.contains("type") || lower.contains("argument"))
    {
        SqlError::TypeMismatch(m.to_string())
    } else if lower.contains("unsupported") || lower.contains("not supported") || lower.contains("correlated")
        || lower.contains("not yet supported") || lower.contains("not implemented")
    {
        SqlError::Unsupported(m.to_string())
    } else {
        SqlError::Plan(m.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_datafusion_errors() {
        let e = from_datafusion(DataFusionError::Plan("table 'sluice.public.nope' not found".into()));
        assert!(matches!(e, SqlError::UndefinedTable(ref t) if t == "nope"), "{e:?}");
        let e = from_datafusion(DataFusionError::ArrowError(Box::new(ArrowError::DivideByZero), None));
        assert!(matches!(e, SqlError::Data { kind: DataErrorKind::DivisionByZero, .. }));
        let e = from_datafusion(DataFusionError::Context(
            "ctx".into(),
            Box::new(DataFusionError::ArrowError(
                Box::new(ArrowError::CastError("Cannot cast string 'abc' to value of Int32 type".into())),
                None,
            )),
        ));
        assert!(matches!(e, SqlError::Data { kind: DataErrorKind::InvalidTextRepresentation, .. }), "{e:?}");
        let inner = to_datafusion(SqlError::NotNull { table: "t".into(), column: "c".into() });
        assert!(matches!(from_datafusion(inner), SqlError::NotNull { .. }));
    }
}
