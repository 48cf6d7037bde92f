//! The one place where Sluice errors become SQLSTATE codes.

use pgwire::error::{ErrorInfo, PgWireError};
use sluice_sql::{DataErrorKind, SqlError};

/// The SQLSTATE code of `e`.
pub fn sqlstate(e: &SqlError) -> &'static str {
    match e {
        SqlError::Syntax(_) => "42601",
        SqlError::UndefinedTable(_) => "42P01",
        SqlError::UndefinedColumn(_) => "42703",
        SqlError::UndefinedFunction(_) => "42883",
        SqlError::AmbiguousColumn(_) => "42702",
        SqlError::DuplicateTable(_) => "42P07",
        SqlError::DuplicateColumn(_) => "42701",
        SqlError::InvalidDefinition(_) => "42P16",
        SqlError::TypeMismatch(_) => "42804",
        SqlError::Data { kind, .. } => match kind {
            DataErrorKind::InvalidTextRepresentation => "22P02",
            DataErrorKind::NumericOverflow => "22003",
            DataErrorKind::DivisionByZero => "22012",
            DataErrorKind::StringTooLong => "22001",
            DataErrorKind::InvalidDatetime => "22007",
            DataErrorKind::Other => "22000",
        },
        SqlError::NotNull { .. } => "23502",
        SqlError::Unsupported(_) => "0A000",
        SqlError::UniqueViolation(_) => "23505",
        SqlError::TooComplex(_) => "54001",
        SqlError::Plan(_) => "42000",
        SqlError::InvalidTransactionState(_) => "25P02",
        SqlError::UndefinedParameter(_) => "42704",
        SqlError::InvalidParameter(_) => "08P01",
        SqlError::InvalidParameterValue(_) => "22023",
        SqlError::DependentObjects(_) => "2BP01",
        SqlError::WrongObjectType(_) => "42809",
        SqlError::Windowing(_) => "42P20",
        SqlError::ViewFailed(_) => "55000",
        SqlError::ResourcesExhausted(_) => "53000",
        SqlError::Storage(_) => "58030",
        SqlError::History(sluice_history::HistoryError::Corrupt(_) | sluice_history::HistoryError::Parquet(_)) => "XX001",
        SqlError::History(_) => "58030",
        SqlError::Internal(_) => "XX000",
    }
}

/// `e` as a pgwire error response.
pub fn to_pg_error(e: &SqlError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(e)))
}

/// `e` as the fields of an ErrorResponse.
pub fn error_info(e: &SqlError) -> ErrorInfo {
    if matches!(e, SqlError::Internal(_) | SqlError::Storage(_)) {
        tracing::error!(error = %e, "statement failed with an internal error");
    }
    ErrorInfo::new("ERROR".to_owned(), sqlstate(e).to_owned(), e.to_string())
}
