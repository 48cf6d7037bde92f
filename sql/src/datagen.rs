//! The `datagen` connector's options: `CREATE SOURCE ... WITH (connector = 'datagen', ...)`.
//!
//! ```text
//! datagen.rows.per.second = 1000        rows per second (0: as fast as views take them)
//! datagen.max.rows        = 100000      stop after this many rows (default: never)
//! fields.<col>.kind       = sequence | random | timestamp
//! fields.<col>.start / .end             sequence bounds (start default 1; wraps after end)
//! fields.<col>.min / .max / .seed       random bounds (default 0 .. 1000) and seed
//! fields.<col>.values     = 'a,b,c'     one of the values, uniformly (repeat one to weight it)
//! fields.<col>.length     = 10          random text length
//! fields.<col>.step       = '10ms'      timestamps: event time between two rows (default 1 / rate)
//! fields.<col>.disorder   = '5 seconds' timestamps up to this far behind their row's place
//!                                       (pseudo-random per row: out-of-order events)
//! ```
//! Defaults by type: integers and floats random, text random of length 10, booleans random,
//! timestamps starting when the source was created and advancing by 1 / rate per row.

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use sluice_engine::source::{ColumnGenerator, DatagenSpec};

use crate::error::{SqlError, SqlResult};

fn invalid(message: String) -> SqlError {
    SqlError::InvalidParameterValue(message)
}

fn number<T: std::str::FromStr>(options: &BTreeMap<String, String>, key: &str) -> SqlResult<Option<T>> {
    options
        .get(key)
        .map(|v| v.trim().parse::<T>().map_err(|_| invalid(format!("option {key} = '{v}' is not a valid number"))))
        .transpose()
}

/// The generator a datagen source's options describe; every option must be understood
/// (`other_options` are the ones every connector takes).
pub fn spec_from_options(
    schema: &SchemaRef,
    options: &BTreeMap<String, String>,
    created_at_micros: i64,
    other_options: &[&str],
) -> SqlResult<DatagenSpec> {
    let rows_per_second = number::<u64>(options, "datagen.rows.per.second")?.unwrap_or(10);
    let max_rows = number::<u64>(options, "datagen.max.rows")?;
    let mut used = vec!["datagen.rows.per.second".to_string(), "datagen.max.rows".into()];
    used.extend(other_options.iter().map(|o| o.to_string()));
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let prefix = format!("fields.{}.", field.name());
        let key = |k: &str| format!("{prefix}{k}");
        for k in ["kind", "start", "end", "min", "max", "seed", "values", "length", "disorder", "step"] {
            used.push(key(k));
        }
        let seed = number::<u64>(options, &key("seed"))?.unwrap_or(i as u64 + 1);
        let kind = options.get(&key("kind")).map(|k| k.to_ascii_lowercase());
        let generator = if let Some(values) = options.get(&key("values")) {
            ColumnGenerator::OneOf { values: values.split(',').map(|v| v.trim().to_string()).collect(), seed }
        } else {
            match kind.as_deref() {
                Some("sequence") => ColumnGenerator::Sequence {
                    start: number(options, &key("start"))?.unwrap_or(1),
                    end: number(options, &key("end"))?,
                },
                Some("random") | None if !matches!(field.data_type(), DataType::Utf8 | DataType::Timestamp(..)) => {
                    let (min, max) = if field.data_type() == &DataType::Boolean { (0, 1) } else { (0, 1000) };
                    ColumnGenerator::Random {
                        min: number(options, &key("min"))?.unwrap_or(min),
                        max: number(options, &key("max"))?.unwrap_or(max),
                        seed,
                    }
                }
                Some("random") | None if field.data_type() == &DataType::Utf8 => {
                    ColumnGenerator::RandomText { length: number(options, &key("length"))?.unwrap_or(10), seed }
                }
                Some("timestamp") | None => ColumnGenerator::Timestamp {
                    start_micros: created_at_micros,
                    step_micros: match options.get(&key("step")) {
                        Some(text) => i64::try_from(parse_duration(&key("step"), text)?.as_micros()).unwrap_or(i64::MAX),
                        None => 1_000_000u64.checked_div(rows_per_second).map_or(1_000, |step| step.max(1) as i64),
                    },
                    disorder_micros: match options.get(&key("disorder")) {
                        Some(text) => i64::try_from(parse_duration(&key("disorder"), text)?.as_micros()).unwrap_or(i64::MAX),
                        None => 0,
                    },
                    seed,
                },
                Some(other) => {
                    return Err(invalid(format!(
                        "fields.{}.kind = '{other}' is not a generator (sequence, random, timestamp)",
                        field.name()
                    )))
                }
            }
        };
        columns.push(generator);
    }
    if let Some(unknown) = options.keys().find(|k| !used.contains(k)) {
        return Err(invalid(format!("unknown option {unknown} for a datagen source")));
    }
    let spec = DatagenSpec { schema: SchemaRef::clone(schema), columns, rows_per_second, max_rows };
    spec.validate().map_err(|e| invalid(e.to_string().trim_start_matches("internal engine error: ").to_string()))?;
    Ok(spec)
}

/// A duration option such as `'30 seconds'`, `'5s'`, `'2 minutes'` or `'500ms'`.
pub fn parse_duration(key: &str, text: &str) -> SqlResult<std::time::Duration> {
    parse_duration_text(text).map_err(|e| invalid(format!("option {key}: {e}")))
}

/// A size written `<n>`, `<n>KB`, `<n>MB`, `<n>GB` (or KiB, MiB, GiB; all powers of 1024).
/// One parser for every size Sluice reads, options and flags.
pub fn parse_size_text(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: usize = digits.parse().map_err(|_| format!("'{text}' is not a size like 512MB or 2GB"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown unit '{other}' in '{text}' (use KB, MB or GB)")),
    };
    n.checked_mul(scale).ok_or_else(|| format!("'{text}' is too large"))
}

/// A duration written as a whole number and a unit: `500ms`, `5s`, `30 seconds`, `2 min`,
/// `1 hour`, `90 days` (no unit: seconds). One parser for every duration Sluice reads, options and flags.
pub fn parse_duration_text(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("'{text}' is not a duration (like '30 seconds', '5s' or '500ms')");
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let millis = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" | "millisecond" | "milliseconds" => 1,
        "" | "s" | "second" | "seconds" => 1_000,
        "m" | "min" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        _ => return Err(bad()),
    };
    Ok(std::time::Duration::from_millis(number.checked_mul(millis).ok_or_else(bad)?))
}
