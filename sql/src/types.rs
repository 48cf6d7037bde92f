//! The SQL column types Sluice stores, and how each maps to Arrow.

use std::collections::HashMap;

use datafusion::arrow::datatypes::{DataType, Field, IntervalUnit, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, CharacterLength, ExactNumberInfo, TimezoneInfo};
use serde::{Deserialize, Serialize};

use crate::error::{DataErrorKind, SqlError, SqlResult};

/// Arrow field metadata key marking a `JSONB` column (the canonical Arrow JSON extension).
pub const EXTENSION_NAME_KEY: &str = "ARROW:extension:name";
/// Arrow extension name of JSON text.
pub const JSON_EXTENSION: &str = "arrow.json";

/// Arrow field metadata key naming the PostgreSQL type of a column whose Arrow type alone does
/// not say it (`VARCHAR` is Utf8 like `TEXT`, but clients expect OID 1043 for it).
pub const PG_TYPE_KEY: &str = "sluice.pg_type";

/// The time zone every `TIMESTAMPTZ` is stored and shown in.
pub const UTC: &str = "+00:00";

/// A column type as declared in `CREATE TABLE`.
///
/// Why not store the Arrow type alone: the declared type carries what Arrow cannot (a
/// `VARCHAR(n)` limit, `JSONB` versus text) and is what `SHOW COLUMNS` prints; it is also the
/// persisted form in the catalog, stable across Arrow upgrades.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SqlType {
    /// `BOOLEAN`
    Boolean,
    /// `SMALLINT`, 16-bit
    SmallInt,
    /// `INT`, 32-bit
    Int,
    /// `BIGINT`, 64-bit
    BigInt,
    /// `REAL`, 32-bit float
    Real,
    /// `DOUBLE PRECISION`, 64-bit float
    Double,
    /// `DECIMAL(p, s)` / `NUMERIC(p, s)`; an unconstrained `NUMERIC` is `(38, 10)`.
    Decimal {
        /// Total digits.
        precision: u8,
        /// Digits after the point.
        scale: i8,
    },
    /// `VARCHAR(n)` or `VARCHAR`
    Varchar {
        /// Maximum length in characters, if declared.
        max_len: Option<u32>,
    },
    /// `TEXT`
    Text,
    /// `DATE`
    Date,
    /// `TIMESTAMP` (without time zone), microseconds
    Timestamp,
    /// `TIMESTAMPTZ`, microseconds, shown in UTC
    Timestamptz,
    /// `INTERVAL` (months, days, nanoseconds)
    Interval,
    /// `BYTEA`
    Bytea,
    /// `JSONB` (stored as normalized JSON text)
    Jsonb,
}

fn unsupported_type(t: &ast::DataType) -> SqlError {
    SqlError::unsupported(format_args!("column type {t}"))
}

impl SqlType {
    /// The type of a parsed column definition.
    pub fn from_ast(t: &ast::DataType) -> SqlResult<Self> {
        use ast::DataType as D;
        Ok(match t {
            D::Boolean | D::Bool => SqlType::Boolean,
            D::SmallInt(_) | D::Int2(_) => SqlType::SmallInt,
            D::Int(_) | D::Integer(_) | D::Int4(_) => SqlType::Int,
            D::BigInt(_) | D::Int8(_) => SqlType::BigInt,
            D::Real | D::Float4 => SqlType::Real,
            D::Double(ExactNumberInfo::None) | D::DoublePrecision | D::Float8 => SqlType::Double,
            D::Float(info) => match info {
                ExactNumberInfo::Precision(p) if *p <= 24 => SqlType::Real,
                ExactNumberInfo::None | ExactNumberInfo::Precision(_) => SqlType::Double,
                ExactNumberInfo::PrecisionAndScale(..) => return Err(unsupported_type(t)),
            },
            D::Decimal(info) | D::Numeric(info) | D::Dec(info) => {
                let (precision, scale) = match info {
                    ExactNumberInfo::None => (38, 10),
                    ExactNumberInfo::Precision(p) => (*p, 0),
                    ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s),
                };
                if precision == 0 || precision > 38 {
                    return Err(SqlError::InvalidDefinition(format!(
                        "NUMERIC precision {precision} must be between 1 and 38"
                    )));
                }
                if scale < 0 || scale as u64 > precision {
                    return Err(SqlError::InvalidDefinition(format!(
                        "NUMERIC scale {scale} must be between 0 and precision {precision}"
                    )));
                }
                SqlType::Decimal { precision: precision as u8, scale: scale as i8 }
            }
            D::Varchar(len) | D::CharacterVarying(len) | D::CharVarying(len) => {
                let max_len = match len {
                    None | Some(CharacterLength::Max) => None,
                    Some(CharacterLength::IntegerLength { length, .. }) => {
                        if *length == 0 || *length > u32::MAX as u64 {
                            return Err(SqlError::InvalidDefinition(format!(
                                "length for type varchar must be at least 1, got {length}"
                            )));
                        }
                        Some(*length as u32)
                    }
                };
                SqlType::Varchar { max_len }
            }
            D::Text | D::String(None) => SqlType::Text,
            D::Date => SqlType::Date,
            D::Timestamp(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => {
                SqlType::Timestamp
            }
            D::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => SqlType::Timestamptz,
            D::Interval { fields: None, precision: None } => SqlType::Interval,
            D::Bytea => SqlType::Bytea,
            D::JSONB | D::JSON => SqlType::Jsonb,
            D::Custom(name, modifiers) if modifiers.is_empty() => {
                match name.to_string().to_ascii_lowercase().as_str() {
                    "timestamptz" => SqlType::Timestamptz,
                    "int2" => SqlType::SmallInt,
                    "int4" => SqlType::Int,
                    "int8" => SqlType::BigInt,
                    "float4" => SqlType::Real,
                    "float8" => SqlType::Double,
                    "jsonb" | "json" => SqlType::Jsonb,
                    _ => return Err(unsupported_type(t)),
                }
            }
            _ => return Err(unsupported_type(t)),
        })
    }

    /// The Arrow type values of this column have.
    pub fn arrow_type(&self) -> DataType {
        match self {
            SqlType::Boolean => DataType::Boolean,
            SqlType::SmallInt => DataType::Int16,
            SqlType::Int => DataType::Int32,
            SqlType::BigInt => DataType::Int64,
            SqlType::Real => DataType::Float32,
            SqlType::Double => DataType::Float64,
            SqlType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            SqlType::Varchar { .. } | SqlType::Text | SqlType::Jsonb => DataType::Utf8,
            SqlType::Date => DataType::Date32,
            SqlType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            SqlType::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            SqlType::Interval => DataType::Interval(IntervalUnit::MonthDayNano),
            SqlType::Bytea => DataType::Binary,
        }
    }

    /// An Arrow field of this type (nullable: NOT NULL is enforced when rows are written, with
    /// PostgreSQL's error, rather than by Arrow).
    pub fn field(&self, name: &str) -> Field {
        let field = Field::new(name, self.arrow_type(), true);
        match self {
            SqlType::Jsonb => field.with_metadata(HashMap::from([(
                EXTENSION_NAME_KEY.to_string(),
                JSON_EXTENSION.to_string(),
            )])),
            SqlType::Varchar { max_len } => {
                let name = match max_len {
                    Some(n) => format!("varchar({n})"),
                    None => "varchar".to_string(),
                };
                field.with_metadata(HashMap::from([(PG_TYPE_KEY.to_string(), name)]))
            }
            _ => field,
        }
    }

    /// The name PostgreSQL's `format_type` gives this type.
    pub fn display_name(&self) -> String {
        match self {
            SqlType::Boolean => "boolean".into(),
            SqlType::SmallInt => "smallint".into(),
            SqlType::Int => "integer".into(),
            SqlType::BigInt => "bigint".into(),
            SqlType::Real => "real".into(),
            SqlType::Double => "double precision".into(),
            SqlType::Decimal { precision, scale } => format!("numeric({precision},{scale})"),
            SqlType::Varchar { max_len: Some(n) } => format!("character varying({n})"),
            SqlType::Varchar { max_len: None } => "character varying".into(),
            SqlType::Text => "text".into(),
            SqlType::Date => "date".into(),
            SqlType::Timestamp => "timestamp without time zone".into(),
            SqlType::Timestamptz => "timestamp with time zone".into(),
            SqlType::Interval => "interval".into(),
            SqlType::Bytea => "bytea".into(),
            SqlType::Jsonb => "jsonb".into(),
        }
    }
}

/// The PostgreSQL name of the type of a computed column (a view's), for DESCRIBE.
pub fn field_type_name(field: &Field) -> String {
    if is_json_field(field) {
        return "jsonb".into();
    }
    match field.data_type() {
        DataType::Utf8 if is_varchar_field(field) => "character varying".into(),
        other => sluice_engine::postgres_type_name(other),
    }
}

/// Whether an Arrow field is a column declared `VARCHAR`.
pub fn is_varchar_field(field: &Field) -> bool {
    field.metadata().get(PG_TYPE_KEY).is_some_and(|t| t.starts_with("varchar"))
}

/// The `n` of a column declared `VARCHAR(n)`.
pub fn varchar_max_len(field: &Field) -> Option<u32> {
    let declared = field.metadata().get(PG_TYPE_KEY)?;
    declared.strip_prefix("varchar(")?.strip_suffix(')')?.parse().ok()
}

/// Whether an Arrow field holds JSON text.
pub fn is_json_field(field: &Field) -> bool {
    field.metadata().get(EXTENSION_NAME_KEY).map(String::as_str) == Some(JSON_EXTENSION)
}

/// Parses JSON text and prints it the way PostgreSQL prints `jsonb`: `", "` and `": "`
/// separators, object keys ordered by length then bytes, the last of duplicate keys kept.
pub fn normalize_jsonb(text: &str) -> SqlResult<String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        SqlError::data(
            DataErrorKind::InvalidTextRepresentation,
            format!("invalid input syntax for type json: {e}: {}", truncate(text, 64)),
        )
    })?;
    let mut out = String::with_capacity(text.len());
    write_jsonb(&value, &mut out);
    Ok(out)
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(max).collect::<String>())
    }
}

fn write_jsonb(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_jsonb(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(b.0)));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_jsonb(v, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn jsonb_prints_like_postgres() {
        assert_eq!(
            normalize_jsonb(r#"{"bb":1,"a":[1,2,{"z":null,"y":"x"}],"c":true}"#).unwrap(),
            r#"{"a": [1, 2, {"y": "x", "z": null}], "c": true, "bb": 1}"#
        );
        assert_eq!(normalize_jsonb(r#"{"a":1,"a":2}"#).unwrap(), r#"{"a": 2}"#);
        assert!(normalize_jsonb("{nope").is_err());
    }
}
