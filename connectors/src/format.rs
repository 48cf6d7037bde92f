//! Record formats: `ENCODE JSON`, `ENCODE CSV (...)`, `ENCODE LOG (...)`, turning chunks of
//! complete lines into Arrow rows of a source's schema.
//!
//! A chunk is one or more whole records, each ending with a newline (the last may lack it at
//! the end of a bounded input). Every record either becomes a row or a [`RejectedRecord`]
//! naming its partition (file, request), its byte offset and why, so one bad line never costs
//! its neighbours.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringBuilder};
use datafusion::arrow::compute::{cast_with_options, concat_batches, filter_record_batch, CastOptions};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::json::ReaderBuilder;
use sluice_engine::source::RejectedRecord;
use sluice_engine::EngineResult;

use crate::log_format::{LogFormat, LogParser};
use crate::{bool_option, ConnectorError, ConnectorResult};

/// How a source's records are encoded (`FORMAT PLAIN ENCODE ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encode {
    /// One JSON object per line; fields by column name, missing ones NULL, others ignored.
    Json,
    /// Delimited text, one record per line.
    Csv {
        /// Whether each input (file, request body) starts with a header line naming the
        /// columns; then fields are matched to columns by name.
        header: bool,
        /// The field delimiter.
        delimiter: u8,
    },
    /// Web server access logs.
    Log(LogFormat),
}

impl Encode {
    /// The encoding `ENCODE <name> (<options>)` describes for a source of `schema`; checks
    /// that every option is known and that the format can fill every column.
    pub fn from_clause(name: &str, options: &BTreeMap<String, String>, schema: &SchemaRef) -> ConnectorResult<Self> {
        let known: &[&str] = match name.to_ascii_uppercase().as_str() {
            "JSON" => &[],
            "CSV" => &["header", "delimiter"],
            "LOG" => &["format"],
            other => {
                return Err(ConnectorError::InvalidOption(format!("ENCODE {other} is not a format Sluice reads (JSON, CSV, LOG)")))
            }
        };
        if let Some(unknown) = options.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(ConnectorError::InvalidOption(format!(
                "unknown option {unknown} for ENCODE {} (known: {})",
                name.to_ascii_uppercase(),
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        }
        let encode = match name.to_ascii_uppercase().as_str() {
            "JSON" => Encode::Json,
            "CSV" => {
                let delimiter = match options.get("delimiter").map(String::as_str) {
                    None => b',',
                    Some("\\t") | Some("tab") => b'\t',
                    Some(d) if d.len() == 1 && d.is_ascii() => d.as_bytes()[0],
                    Some(d) => {
                        return Err(ConnectorError::InvalidOption(format!("delimiter = '{d}' must be one ASCII character")))
                    }
                };
                Encode::Csv { header: bool_option(options, "header", false)?, delimiter }
            }
            _ => Encode::Log(LogFormat::from_option(options.get("format").map(String::as_str))?),
        };
        encode.parser(SchemaRef::clone(schema))?;
        Ok(encode)
    }

    /// A parser for one input (a file, a request body) of rows of `schema`.
    pub fn parser(&self, schema: SchemaRef) -> ConnectorResult<Box<dyn RecordParser>> {
        Ok(match self {
            Encode::Json => Box::new(JsonParser { schema }),
            Encode::Csv { header, delimiter } => {
                Box::new(CsvParser { schema, header: *header, delimiter: *delimiter, mapping: None })
            }
            Encode::Log(format) => Box::new(LogParser::new(*format, schema)?),
        })
    }
}

/// Turns chunks of one input's records into rows.
pub trait RecordParser: Send + Sync {
    /// Parses `chunk` (whole records) that starts at byte `first_offset` of input
    /// `partition`; rows come back, records that cannot be rows go to `rejected`.
    fn parse(
        &mut self,
        chunk: &[u8],
        first_offset: u64,
        partition: &str,
        rejected: &mut Vec<RejectedRecord>,
    ) -> EngineResult<RecordBatch>;
}

/// The lines of `chunk` with their byte positions, without line ends (`\n` or `\r\n`);
/// blank lines are skipped.
pub fn lines(chunk: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || loop {
        if at >= chunk.len() {
            return None;
        }
        let start = at;
        let end = chunk[start..].iter().position(|b| *b == b'\n').map_or(chunk.len(), |p| start + p);
        at = end + 1;
        let mut line = &chunk[start..end];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            return Some((start, line));
        }
    })
}

/// Records read as text fields, being turned into rows.
///
/// Why text first: CSV and log fields are text; building one string column per field and
/// casting it to the column's type is Arrow's vectorized path, and a value that does not
/// parse comes out NULL where the text was not, which finds the bad records without a
/// per-value error path.
pub(crate) struct TextRows {
    schema: SchemaRef,
    columns: Vec<StringBuilder>,
    /// Columns already typed by the parser (a log's time), replacing the text column.
    typed: Vec<Option<Box<dyn TypedColumn>>>,
    /// Each row's bytes in the chunk (its raw text, should it be rejected).
    records: Vec<std::ops::Range<usize>>,
}

/// A column a parser fills with typed values itself.
pub(crate) trait TypedColumn: Send {
    /// Appends a value (None: NULL).
    fn push(&mut self, value: Option<i64>);
    /// The column so far, emptied.
    fn finish(&mut self) -> ArrayRef;
}

impl TextRows {
    pub(crate) fn new(schema: SchemaRef, typed: Vec<Option<Box<dyn TypedColumn>>>) -> Self {
        let columns = (0..schema.fields().len()).map(|_| StringBuilder::new()).collect();
        Self { schema, columns, typed, records: Vec::new() }
    }

    /// Appends the record at `raw` (its bytes in the chunk): `value(i)` is column `i`'s text
    /// (None: NULL).
    pub(crate) fn push<'a>(&mut self, raw: std::ops::Range<usize>, value: impl Fn(usize) -> Option<&'a str>) {
        for (i, builder) in self.columns.iter_mut().enumerate() {
            if self.typed[i].is_none() {
                builder.append_option(value(i).filter(|v| !v.is_empty()));
            }
        }
        self.records.push(raw);
    }

    /// Appends a value to typed column `i`.
    pub(crate) fn push_typed(&mut self, i: usize, value: Option<i64>) {
        if let Some(column) = self.typed[i].as_mut() {
            column.push(value);
        }
    }

    /// The rows; records with a value their column's type cannot hold go to `rejected` (their
    /// text taken from `chunk`, which starts at byte `first_offset` of `partition`).
    pub(crate) fn finish(
        &mut self,
        chunk: &[u8],
        first_offset: u64,
        partition: &str,
        rejected: &mut Vec<RejectedRecord>,
    ) -> EngineResult<RecordBatch> {
        let records = std::mem::take(&mut self.records);
        let mut reasons: Vec<Option<String>> = vec![None; records.len()];
        let mut columns = Vec::with_capacity(self.columns.len());
        for (i, field) in self.schema.fields().iter().enumerate() {
            if let Some(typed) = self.typed[i].as_mut() {
                columns.push(typed.finish());
                continue;
            }
            let text = self.columns[i].finish();
            if field.data_type() == &DataType::Utf8 {
                columns.push(Arc::new(text) as ArrayRef);
                continue;
            }
            let typed = cast_with_options(&text, field.data_type(), &CastOptions { safe: true, ..Default::default() })?;
            for (row, reason) in reasons.iter_mut().enumerate() {
                if reason.is_none() && text.is_valid(row) && typed.is_null(row) {
                    *reason = Some(format!(
                        "column {}: '{}' is not a valid {}",
                        field.name(),
                        text.value(row),
                        sluice_engine::postgres_type_name(field.data_type())
                    ));
                }
            }
            columns.push(typed);
        }
        let batch = RecordBatch::try_new(SchemaRef::clone(&self.schema), columns)?;
        if reasons.iter().all(Option::is_none) {
            return Ok(batch);
        }
        let keep = BooleanArray::from_iter(reasons.iter().map(|r| Some(r.is_none())));
        for (raw, reason) in records.into_iter().zip(reasons) {
            if let Some(reason) = reason {
                rejected.push(RejectedRecord::new(partition, first_offset + raw.start as u64, &chunk[raw], reason));
            }
        }
        Ok(filter_record_batch(&batch, &keep)?)
    }
}

/// `ENCODE JSON`: newline-delimited objects, decoded by `arrow-json` straight into columns.
struct JsonParser {
    schema: SchemaRef,
}

impl JsonParser {
    fn decode(&self, bytes: &[u8], rows: usize) -> Result<RecordBatch, String> {
        let mut decoder = ReaderBuilder::new(SchemaRef::clone(&self.schema))
            .with_batch_size(rows.max(1) + 1)
            .with_coerce_primitive(true)
            .build_decoder()
            .map_err(|e| e.to_string())?;
        let mut rest = bytes;
        while !rest.is_empty() {
            let read = decoder.decode(rest).map_err(|e| e.to_string())?;
            if read == 0 {
                break;
            }
            rest = &rest[read..];
        }
        match decoder.flush().map_err(|e| e.to_string())? {
            Some(batch) => Ok(batch),
            None => Ok(RecordBatch::new_empty(SchemaRef::clone(&self.schema))),
        }
    }
}

impl RecordParser for JsonParser {
    fn parse(
        &mut self,
        chunk: &[u8],
        first_offset: u64,
        partition: &str,
        rejected: &mut Vec<RejectedRecord>,
    ) -> EngineResult<RecordBatch> {
        let rows = lines(chunk).count();
        // The whole chunk at once; only a chunk with a bad record (or a line holding other
        // than one object) pays for line-by-line.
        if let Ok(batch) = self.decode(chunk, rows) {
            if batch.num_rows() == rows {
                return Ok(batch);
            }
        }
        let mut good = Vec::new();
        for (at, line) in lines(chunk) {
            match self.decode(line, 1) {
                Ok(batch) if batch.num_rows() == 1 => good.push(batch),
                Ok(batch) => rejected.push(RejectedRecord::new(
                    partition,
                    first_offset + at as u64,
                    line,
                    format!("expected one JSON object on the line, found {}", batch.num_rows()),
                )),
                Err(e) => rejected.push(RejectedRecord::new(partition, first_offset + at as u64, line, json_reason(&e))),
            }
        }
        Ok(concat_batches(&self.schema, &good)?)
    }
}

/// `arrow-json`'s message, without its error-kind prefixes.
fn json_reason(message: &str) -> String {
    let trimmed = message.trim_start_matches("Json error: ").trim_start_matches("Parser error: ");
    format!("invalid JSON record: {trimmed}")
}

/// `ENCODE CSV`: fields split by the `csv` crate (quotes, escaped quotes, delimiters inside
/// quotes), then cast column by column.
struct CsvParser {
    schema: SchemaRef,
    header: bool,
    delimiter: u8,
    /// With a header: for each column, the field that holds it (None: the input lacks it).
    mapping: Option<Vec<Option<usize>>>,
}

impl RecordParser for CsvParser {
    fn parse(
        &mut self,
        chunk: &[u8],
        first_offset: u64,
        partition: &str,
        rejected: &mut Vec<RejectedRecord>,
    ) -> EngineResult<RecordBatch> {
        let first_rejected = rejected.len();
        let width = self.schema.fields().len();
        let mut rows = TextRows::new(SchemaRef::clone(&self.schema), (0..width).map(|_| None).collect());
        let builder = {
            let mut builder = csv::ReaderBuilder::new();
            builder.has_headers(false).flexible(true).delimiter(self.delimiter);
            builder
        };
        // The reader runs over chunk[base..]; it restarts after a record that spans lines.
        let mut base = 0;
        let mut reader = builder.from_reader(chunk);
        let mut record = csv::ByteRecord::new();
        loop {
            let mut start = base + reader.position().byte() as usize;
            let more = reader.read_byte_record(&mut record);
            let end = (base + reader.position().byte() as usize).min(chunk.len());
            // Skipped blank lines are not part of the record.
            while start < end && matches!(chunk[start], b'\n' | b'\r') {
                start += 1;
            }
            let raw = trim_line_end(&chunk[start.min(end)..end]);
            let offset = first_offset + start as u64;
            // One record per line: a quote left open must not swallow the lines after it.
            if let Some(newline) = raw.iter().position(|b| *b == b'\n') {
                let line = trim_line_end(&raw[..newline]);
                rejected.push(RejectedRecord::new(partition, offset, line, "invalid CSV record: a quoted field is not closed on its line"));
                base = start + newline + 1;
                reader = builder.from_reader(&chunk[base..]);
                continue;
            }
            match more {
                Ok(false) => break,
                Err(e) => {
                    rejected.push(RejectedRecord::new(partition, offset, raw, format!("invalid CSV record: {e}")));
                    continue;
                }
                Ok(true) => {}
            }
            if self.header && self.mapping.is_none() {
                let names: Vec<String> =
                    record.iter().map(|f| String::from_utf8_lossy(f).trim().to_ascii_lowercase()).collect();
                let mapping: Vec<Option<usize>> = self
                    .schema
                    .fields()
                    .iter()
                    .map(|field| names.iter().position(|n| *n == field.name().to_ascii_lowercase()))
                    .collect();
                self.mapping = Some(mapping);
                continue;
            }
            let expected = match &self.mapping {
                Some(mapping) => mapping.iter().flatten().max().map_or(0, |m| m + 1),
                None => width,
            };
            let enough = if self.mapping.is_some() { record.len() >= expected } else { record.len() == width };
            if !enough {
                let reason = format!("expected {expected} fields, found {}", record.len());
                rejected.push(RejectedRecord::new(partition, offset, raw, reason));
                continue;
            }
            // One UTF-8 check for the whole record; fields are slices of it (no allocation
            // per record).
            let Ok(text) = std::str::from_utf8(record.as_slice()) else {
                rejected.push(RejectedRecord::new(partition, offset, raw, "the record is not UTF-8"));
                continue;
            };
            let field = |column: usize| {
                let at = match &self.mapping {
                    Some(mapping) => mapping[column]?,
                    None => column,
                };
                record.range(at).map(|range| &text[range])
            };
            rows.push(start..start + raw.len(), field);
        }
        let batch = rows.finish(chunk, first_offset, partition, rejected)?;
        rejected[first_rejected..].sort_by_key(|r| r.offset);
        Ok(batch)
    }
}

fn trim_line_end(mut raw: &[u8]) -> &[u8] {
    while let Some(b'\n' | b'\r') = raw.last() {
        raw = &raw[..raw.len() - 1];
    }
    raw
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use datafusion::arrow::array::{Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, true),
            Field::new("url", DataType::Utf8, true),
            Field::new("status", DataType::Int32, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())), true),
        ]))
    }

    fn parse(encode: Encode, input: &str) -> (RecordBatch, Vec<RejectedRecord>) {
        let mut parser = encode.parser(schema()).unwrap();
        let mut rejected = Vec::new();
        let batch = parser.parse(input.as_bytes(), 100, "in", &mut rejected).unwrap();
        (batch, rejected)
    }

    #[test]
    fn json_fields_by_name_missing_null_bad_records_rejected_alone() {
        let input = concat!(
            "{\"user_id\": 1, \"url\": \"/a\", \"status\": 200, \"ts\": \"2026-01-01T00:00:01Z\", \"extra\": true}\n",
            "{\"url\": \"/b\"}\n",
            "\n",
            "{\"user_id\": \"abc\", \"url\": \"/c\"}\n",
            "not json\n",
            "{\"user_id\": 8} {\"user_id\": 9}\n",
            "{\"user_id\": \"7\", \"url\": 5, \"status\": 404}\n",
        );
        let (batch, rejected) = parse(Encode::Json, input);
        assert_eq!(batch.num_rows(), 3);
        let ids = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.iter().collect::<Vec<_>>(), vec![Some(1), None, Some(7)]);
        let urls = batch.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(urls.value(2), "5");
        let ts = batch.column(3).as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        assert_eq!(ts.value(0), 1_767_225_601_000_000);
        assert_eq!(rejected.len(), 3);
        assert_eq!(rejected[0].offset, 100 + input.find("{\"user_id\": \"abc\"").unwrap() as u64);
        assert_eq!(rejected[1].raw, b"not json");
        assert_eq!(rejected[0].partition, "in");
    }

    #[test]
    fn csv_by_position_and_by_header() {
        let input = "1,/a,200,2026-01-01 00:00:00\n2,\"/b,c\",x,\n3,/d\n4,,,\n5,\"/open,1,\n";
        let (batch, rejected) = parse(Encode::Csv { header: false, delimiter: b',' }, input);
        assert_eq!(batch.num_rows(), 2);
        let ids = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.iter().collect::<Vec<_>>(), vec![Some(1), Some(4)]);
        assert!(batch.column(1).is_null(1));
        assert_eq!(rejected.len(), 3);
        assert_eq!(rejected[0].reason, "column status: 'x' is not a valid integer");
        assert_eq!(rejected[0].raw, b"2,\"/b,c\",x,");
        assert_eq!(rejected[1].reason, "expected 4 fields, found 2");
        assert_eq!(rejected[2].raw, b"5,\"/open,1,");

        let input = "status;URL;other;user_id\n200;/a;q;9\n";
        let (batch, rejected) = parse(Encode::Csv { header: true, delimiter: b';' }, input);
        assert!(rejected.is_empty());
        assert_eq!(batch.num_rows(), 1);
        let status = batch.column(2).as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!(status.value(0), 200);
        assert_eq!(batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0), 9);
        assert!(batch.column(3).is_null(0));
    }

    #[test]
    fn options_are_checked() {
        let options = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(Encode::from_clause("XML", &options(&[]), &schema()).is_err());
        assert!(Encode::from_clause("json", &options(&[("header", "true")]), &schema()).is_err());
        assert!(Encode::from_clause("csv", &options(&[("delimiter", "ab")]), &schema()).is_err());
        assert_eq!(
            Encode::from_clause("csv", &options(&[("header", "TRUE"), ("delimiter", "|")]), &schema()).unwrap(),
            Encode::Csv { header: true, delimiter: b'|' }
        );
    }
}
