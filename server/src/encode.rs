//! Arrow results to PostgreSQL rows: type OIDs, text and binary formats.
//!
//! Value encoding is `arrow-pg`'s (made for exactly this), except JSONB, which Arrow stores as
//! tagged text and PostgreSQL sends with a version byte in binary.

use std::sync::Arc;

use arrow_pg::datatypes::into_pg_type;
use arrow_pg::encoder::encode_value;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, SchemaRef, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType,
};
use std::panic::AssertUnwindSafe;

use futures::{Stream, StreamExt};
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::api::Type;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use sluice_sql::{is_json_field, is_varchar_field, varchar_max_len, SqlError};

use sluice_sql::pgtext;
use crate::sqlstate::to_pg_error;

/// The PostgreSQL type of an Arrow field.
pub fn pg_type(field: &datafusion::arrow::datatypes::Field) -> PgWireResult<Type> {
    if is_json_field(field) {
        return Ok(Type::JSONB);
    }
    if is_varchar_field(field) {
        return Ok(Type::VARCHAR);
    }
    match field.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(Type::TEXT),
        other => into_pg_type(other),
    }
}

/// The PostgreSQL type for a parameter whose type the planner inferred (TEXT if unknown).
pub fn parameter_pg_type(field: Option<&datafusion::arrow::datatypes::FieldRef>) -> Type {
    field.and_then(|f| pg_type(f).ok()).unwrap_or(Type::TEXT)
}

/// RowDescription fields for `schema` in the requested formats.
pub fn field_infos(schema: &SchemaRef, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let info = FieldInfo::new(f.name().clone(), None, None, pg_type(f)?, format.format_for(i));
            Ok(match type_modifier(f) {
                Some(modifier) => info.with_type_modifier(modifier),
                None => info,
            })
        })
        .collect()
}

/// PostgreSQL's `atttypmod` for the field: drivers read a numeric's precision and scale and a
/// varchar's length from it (both offset by 4, as PostgreSQL stores them).
fn type_modifier(field: &datafusion::arrow::datatypes::Field) -> Option<i32> {
    match field.data_type() {
        DataType::Decimal128(precision, scale) if *scale >= 0 => {
            Some(((i32::from(*precision) << 16) | i32::from(*scale)) + 4)
        }
        _ => varchar_max_len(field).and_then(|n| i32::try_from(n).ok()).map(|n| n + 4),
    }
}

fn encode_batch(batch: &RecordBatch, fields: &Arc<Vec<FieldInfo>>) -> Vec<PgWireResult<DataRow>> {
    let mut encoder = DataRowEncoder::new(Arc::clone(fields));
    let schema = batch.schema();
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut result = Ok(());
        for (col, pg_field) in fields.iter().enumerate() {
            let array = batch.column(col);
            result = if array.is_null(row) {
                // Checked here for every type: arrow-pg reads some null slots as values.
                encoder.encode_field(&None::<i8>)
            } else if *pg_field.datatype() == Type::JSONB {
                encode_jsonb(&mut encoder, array.as_ref(), row)
            } else if pg_field.format() == FieldFormat::Text && needs_postgres_text(array.data_type()) {
                encode_postgres_text(&mut encoder, array.as_ref(), row)
            } else {
                encode_value(&mut encoder, array, row, schema.field(col), pg_field)
            };
            if result.is_err() {
                break;
            }
        }
        rows.push(result.map(|()| encoder.take_row()));
    }
    rows
}

/// Types whose text form Sluice writes itself (see `pgtext`).
fn needs_postgres_text(t: &DataType) -> bool {
    matches!(t, DataType::Float32 | DataType::Float64 | DataType::Timestamp(..))
}

fn encode_postgres_text(encoder: &mut DataRowEncoder, array: &dyn Array, row: usize) -> PgWireResult<()> {
    use datafusion::arrow::datatypes::{Float32Type, Float64Type, TimeUnit};
    if array.is_null(row) {
        return encoder.encode_field(&None::<String>);
    }
    let text = match array.data_type() {
        DataType::Float64 => Some(pgtext::float8(array.as_primitive::<Float64Type>().value(row))),
        DataType::Float32 => Some(pgtext::float4(array.as_primitive::<Float32Type>().value(row))),
        DataType::Timestamp(unit, tz) => {
            let micros = match unit {
                TimeUnit::Second => array.as_primitive::<TimestampSecondType>().value(row).checked_mul(1_000_000),
                TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().value(row).checked_mul(1_000),
                TimeUnit::Microsecond => Some(array.as_primitive::<TimestampMicrosecondType>().value(row)),
                TimeUnit::Nanosecond => Some(array.as_primitive::<TimestampNanosecondType>().value(row).div_euclid(1_000)),
            };
            match tz {
                Some(_) => micros.and_then(pgtext::timestamptz),
                None => micros.and_then(pgtext::timestamp),
            }
        }
        _ => None,
    };
    let text = text.ok_or_else(|| {
        PgWireError::ApiError(format!("value of type {} out of the printable range", array.data_type()).into())
    })?;
    encoder.encode_field(&Some(text))
}

fn encode_jsonb(encoder: &mut DataRowEncoder, array: &dyn Array, row: usize) -> PgWireResult<()> {
    if array.is_null(row) {
        return encoder.encode_field(&None::<JsonbText>);
    }
    let text = match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(row),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row),
        DataType::Utf8View => array.as_string_view().value(row),
        other => return Err(PgWireError::ApiError(format!("a jsonb value held as {other}").into())),
    };
    encoder.encode_field(&Some(JsonbText(text.to_string())))
}

/// Stored JSONB text (already in PostgreSQL's layout) on the wire: as is in text format, after
/// the version byte 1 in binary.
#[derive(Debug)]
struct JsonbText(String);

impl postgres_types::ToSql for JsonbText {
    fn to_sql(&self, _ty: &Type, out: &mut bytes::BytesMut) -> Result<postgres_types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0.as_bytes());
        Ok(postgres_types::IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    postgres_types::to_sql_checked!();
}

impl pgwire::types::ToSqlText for JsonbText {
    fn to_sql_text(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
        _format_options: &pgwire::types::format::FormatOptions,
    ) -> Result<postgres_types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(postgres_types::IsNull::No)
    }
}

/// Encodes a stream of batches as a stream of DataRows.
pub fn encode_stream(
    batches: impl Stream<Item = datafusion::error::Result<RecordBatch>> + Send + 'static,
    fields: Arc<Vec<FieldInfo>>,
) -> impl Stream<Item = PgWireResult<DataRow>> + Send + 'static {
    // A panic while computing rows (a library bug) ends this result with an error instead of
    // the connection.
    AssertUnwindSafe(batches).catch_unwind().flat_map(move |batch| {
        let rows = match batch {
            Ok(Ok(batch)) => encode_batch(&batch, &fields),
            Ok(Err(e)) => vec![Err(to_pg_error(&SqlError::from(e)))],
            Err(panic) => vec![Err(to_pg_error(&SqlError::Internal(format!(
                "the query panicked: {}",
                crate::pg::panic_message(&*panic)
            ))))],
        };
        futures::stream::iter(rows)
    })
}
