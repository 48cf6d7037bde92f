//! `ENCODE LOG (format = 'combined' | 'common')`: Apache and nginx access logs.
//!
//! ```text
//! common:   %h %l %u [%t] "%r" %>s %b
//! combined: %h %l %u [%t] "%r" %>s %b "%{Referer}i" "%{User-Agent}i"
//! 83.149.9.216 - - [17/May/2015:10:05:03 +0000] "GET /a.png HTTP/1.1" 200 203023 "http://x/" "Mozilla/5.0 ..."
//! ```
//!
//! A source's columns are matched to the log's fields by name (see [`LogField::named`]), so a
//! source declares only the fields it wants, in any order. `-` is NULL; inside quoted fields
//! `\"` and `\\` are unescaped (Apache's escaping; nginx's `\x22` is kept as written). Fields
//! after the format's last one are ignored (many servers append more).

use std::borrow::Cow;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, TimestampMicrosecondBuilder};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use sluice_engine::source::RejectedRecord;
use sluice_engine::EngineResult;

use crate::format::{lines, RecordParser, TextRows, TypedColumn};
use crate::{ConnectorError, ConnectorResult};

/// Which access-log layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// NCSA common log format (7 fields).
    Common,
    /// NCSA combined: common plus referer and user agent (the default of Apache and nginx).
    Combined,
}

impl LogFormat {
    /// The format an `ENCODE LOG (format = ...)` option names (default: combined).
    pub fn from_option(value: Option<&str>) -> ConnectorResult<Self> {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("combined") => Ok(LogFormat::Combined),
            Some("common") => Ok(LogFormat::Common),
            Some(other) => Err(ConnectorError::InvalidOption(format!(
                "ENCODE LOG format = '{other}' is not a log format (combined, common)"
            ))),
        }
    }
}

/// A field of an access-log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogField {
    /// `%h`: the client address.
    RemoteAddr,
    /// `%l`: the identd name (almost always `-`).
    Ident,
    /// `%u`: the authenticated user.
    RemoteUser,
    /// `%t`: the request time.
    Time,
    /// `%r`: the whole request line.
    Request,
    /// The request line's method.
    Method,
    /// The request line's path (with its query string).
    Path,
    /// The request line's protocol.
    Protocol,
    /// `%>s`: the status code.
    Status,
    /// `%b`: response bytes (`-` for none).
    Bytes,
    /// The Referer header (combined only).
    Referer,
    /// The User-Agent header (combined only).
    UserAgent,
}

/// Column names each field answers to.
const NAMES: &[(LogField, &[&str])] = &[
    (LogField::RemoteAddr, &["remote_addr", "remote_host", "host", "client_ip", "ip"]),
    (LogField::Ident, &["ident", "remote_logname"]),
    (LogField::RemoteUser, &["remote_user", "user"]),
    (LogField::Time, &["ts", "time", "timestamp", "time_local"]),
    (LogField::Request, &["request"]),
    (LogField::Method, &["method", "request_method"]),
    (LogField::Path, &["path", "url", "uri", "request_uri"]),
    (LogField::Protocol, &["protocol", "server_protocol"]),
    (LogField::Status, &["status"]),
    (LogField::Bytes, &["bytes", "body_bytes_sent", "size"]),
    (LogField::Referer, &["referer", "referrer", "http_referer"]),
    (LogField::UserAgent, &["user_agent", "agent", "http_user_agent"]),
];

impl LogField {
    /// The field a column named `name` holds.
    pub fn named(name: &str) -> Option<Self> {
        let name = name.to_ascii_lowercase();
        NAMES.iter().find(|(_, names)| names.contains(&name.as_str())).map(|(field, _)| *field)
    }
}

/// One parsed line: each field's text (None: `-` or absent), the time in microseconds.
#[derive(Debug, Default, PartialEq)]
struct LogLine<'a> {
    fields: [Option<std::borrow::Cow<'a, str>>; 12],
    time: Option<i64>,
}

fn slot(field: LogField) -> usize {
    field as usize
}

/// Parses an access-log line; the error says what was expected where.
fn parse_line(line: &[u8], format: LogFormat) -> Result<LogLine<'_>, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("the line is not UTF-8 (byte {})", e.valid_up_to()))?;
    let mut scanner = Scanner { text, at: 0 };
    let mut out = LogLine::default();
    out.fields[slot(LogField::RemoteAddr)] = dash(scanner.token("client address")?);
    out.fields[slot(LogField::Ident)] = dash(scanner.token("identity")?);
    out.fields[slot(LogField::RemoteUser)] = dash(scanner.token("user")?);
    let time = scanner.bracketed("time")?;
    out.time = Some(parse_time(time)?);
    out.fields[slot(LogField::Time)] = Some(time.into());
    let request = scanner.quoted("request")?;
    if request.as_ref() != "-" {
        // Method, path and protocol borrow the line unless the request had escapes.
        let part = |p: &str| -> Cow<'_, str> { p.to_string().into() };
        match &request {
            Cow::Borrowed(text) => split_request(text, &mut out.fields, Cow::Borrowed),
            Cow::Owned(text) => split_request(text, &mut out.fields, part),
        }
        out.fields[slot(LogField::Request)] = Some(request);
    }
    out.fields[slot(LogField::Status)] = dash(scanner.token("status")?);
    out.fields[slot(LogField::Bytes)] = dash(scanner.token("bytes")?);
    if format == LogFormat::Combined {
        out.fields[slot(LogField::Referer)] = dash_owned(scanner.quoted("referer")?);
        out.fields[slot(LogField::UserAgent)] = dash_owned(scanner.quoted("user agent")?);
    }
    Ok(out)
}

/// Method, path and protocol of a request line, into `fields` through `keep`.
fn split_request<'t, 'a>(
    request: &'t str,
    fields: &mut [Option<Cow<'a, str>>; 12],
    keep: impl Fn(&'t str) -> Cow<'a, str>,
) {
    let mut parts = request.split(' ').filter(|p| !p.is_empty());
    if let (Some(method), Some(path)) = (parts.next(), parts.next()) {
        fields[slot(LogField::Method)] = Some(keep(method));
        fields[slot(LogField::Path)] = Some(keep(path));
        fields[slot(LogField::Protocol)] = parts.next().map(keep);
    }
}

fn dash(token: &str) -> Option<std::borrow::Cow<'_, str>> {
    (token != "-").then_some(token.into())
}

fn dash_owned(token: std::borrow::Cow<'_, str>) -> Option<std::borrow::Cow<'_, str>> {
    (token != "-").then_some(token)
}

struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn skip_spaces(&mut self) {
        while self.text.as_bytes().get(self.at) == Some(&b' ') {
            self.at += 1;
        }
    }

    fn expected(&self, what: &str) -> String {
        if self.at >= self.text.len() {
            format!("the line ends before the {what}")
        } else {
            format!("expected the {what} at byte {}", self.at)
        }
    }

    /// A space-delimited token.
    fn token(&mut self, what: &str) -> Result<&'a str, String> {
        self.skip_spaces();
        let start = self.at;
        let bytes = self.text.as_bytes();
        while self.at < bytes.len() && bytes[self.at] != b' ' {
            self.at += 1;
        }
        if self.at == start {
            return Err(self.expected(what));
        }
        Ok(&self.text[start..self.at])
    }

    /// `[...]`.
    fn bracketed(&mut self, what: &str) -> Result<&'a str, String> {
        self.skip_spaces();
        if self.text.as_bytes().get(self.at) != Some(&b'[') {
            return Err(self.expected(what));
        }
        let start = self.at + 1;
        let end = self.text[start..].find(']').map(|p| start + p).ok_or_else(|| format!("unterminated [{what}]"))?;
        self.at = end + 1;
        Ok(&self.text[start..end])
    }

    /// `"..."` with `\"` and `\\` escapes.
    fn quoted(&mut self, what: &str) -> Result<std::borrow::Cow<'a, str>, String> {
        self.skip_spaces();
        if self.text.as_bytes().get(self.at) != Some(&b'"') {
            return Err(self.expected(what));
        }
        let start = self.at + 1;
        let bytes = self.text.as_bytes();
        let mut i = start;
        let mut escaped = false;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if i + 1 < bytes.len() && matches!(bytes[i + 1], b'"' | b'\\') => {
                    escaped = true;
                    i += 2;
                }
                b'"' => {
                    self.at = i + 1;
                    let raw = &self.text[start..i];
                    return Ok(if escaped { raw.replace("\\\"", "\"").replace("\\\\", "\\").into() } else { raw.into() });
                }
                _ => i += 1,
            }
        }
        Err(format!("unterminated quoted {what} (starting at byte {})", start - 1))
    }
}

/// `17/May/2015:10:05:03 +0000` → microseconds since the Unix epoch (UTC).
fn parse_time(text: &str) -> Result<i64, String> {
    let bad = || format!("'{text}' is not a log time like 17/May/2015:10:05:03 +0000");
    let b = text.as_bytes();
    if b.len() != 26 || b[2] != b'/' || b[6] != b'/' || b[11] != b':' || b[14] != b':' || b[17] != b':' || b[20] != b' ' {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<u32, String> { text[range].parse::<u32>().map_err(|_| bad()) };
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(&text[3..6])).ok_or_else(bad)? as u32 + 1;
    let date = chrono::NaiveDate::from_ymd_opt(num(7..11)? as i32, month, num(0..2)?).ok_or_else(bad)?;
    let time = date.and_hms_opt(num(12..14)?, num(15..17)?, num(18..20)?).ok_or_else(bad)?;
    let sign = match b[21] {
        b'+' => 1i64,
        b'-' => -1,
        _ => return Err(bad()),
    };
    let offset_seconds = sign * (num(22..24)? as i64 * 3600 + num(24..26)? as i64 * 60);
    Ok((time.and_utc().timestamp() - offset_seconds) * 1_000_000)
}

/// Timestamps of a log's time field, typed as the column is.
struct TimeColumn {
    builder: TimestampMicrosecondBuilder,
    timezone: Option<Arc<str>>,
}

impl TypedColumn for TimeColumn {
    fn push(&mut self, value: Option<i64>) {
        self.builder.append_option(value);
    }

    fn finish(&mut self) -> ArrayRef {
        let array = self.builder.finish();
        Arc::new(match &self.timezone {
            Some(tz) => array.with_timezone(Arc::clone(tz)),
            None => array,
        })
    }
}

/// Parses access-log lines into a source's columns.
pub struct LogParser {
    format: LogFormat,
    /// The field of each column.
    fields: Vec<LogField>,
    /// Whether each column is a typed time column.
    timed: Vec<bool>,
    schema: SchemaRef,
}

impl LogParser {
    /// A parser filling `schema`'s columns; every column must name a field the format has,
    /// and the time field must be a timestamp or text column.
    pub fn new(format: LogFormat, schema: SchemaRef) -> ConnectorResult<Self> {
        let mut fields = Vec::with_capacity(schema.fields().len());
        let mut timed = Vec::with_capacity(schema.fields().len());
        for column in schema.fields() {
            let field = LogField::named(column.name()).ok_or_else(|| {
                let known: Vec<&str> = NAMES.iter().map(|(_, names)| names[0]).collect();
                ConnectorError::InvalidColumn(format!(
                    "column \"{}\" is not a field of an access log (known: {}; aliases like url, agent, time work too)",
                    column.name(),
                    known.join(", ")
                ))
            })?;
            if format == LogFormat::Common && matches!(field, LogField::Referer | LogField::UserAgent) {
                return Err(ConnectorError::InvalidColumn(format!(
                    "column \"{}\": the common log format has no referer or user agent (use format = 'combined')",
                    column.name()
                )));
            }
            let is_time = field == LogField::Time && matches!(column.data_type(), DataType::Timestamp(..));
            if field == LogField::Time && !is_time && column.data_type() != &DataType::Utf8 {
                return Err(ConnectorError::InvalidColumn(format!(
                    "column \"{}\" holds the log time: declare it TIMESTAMP, TIMESTAMPTZ or VARCHAR, not {}",
                    column.name(),
                    sluice_engine::postgres_type_name(column.data_type())
                )));
            }
            fields.push(field);
            timed.push(is_time);
        }
        Ok(Self { format, fields, timed, schema })
    }

    fn rows(&self) -> TextRows {
        let typed = self
            .schema
            .fields()
            .iter()
            .zip(&self.timed)
            .map(|(field, timed)| {
                let timezone = match field.data_type() {
                    DataType::Timestamp(TimeUnit::Microsecond, tz) => tz.clone(),
                    _ => None,
                };
                timed.then(|| Box::new(TimeColumn { builder: TimestampMicrosecondBuilder::new(), timezone }) as Box<dyn TypedColumn>)
            })
            .collect();
        TextRows::new(SchemaRef::clone(&self.schema), typed)
    }
}

impl RecordParser for LogParser {
    fn parse(
        &mut self,
        chunk: &[u8],
        first_offset: u64,
        partition: &str,
        rejected: &mut Vec<RejectedRecord>,
    ) -> EngineResult<RecordBatch> {
        let first_rejected = rejected.len();
        let mut rows = self.rows();
        for (at, line) in lines(chunk) {
            let offset = first_offset + at as u64;
            match parse_line(line, self.format) {
                Ok(parsed) => {
                    for (i, timed) in self.timed.iter().enumerate() {
                        if *timed {
                            rows.push_typed(i, parsed.time);
                        }
                    }
                    rows.push(at..at + line.len(), |i| parsed.fields[slot(self.fields[i])].as_deref());
                }
                Err(reason) => rejected.push(RejectedRecord::new(partition, offset, line, reason)),
            }
        }
        let batch = rows.finish(chunk, first_offset, partition, rejected)?;
        rejected[first_rejected..].sort_by_key(|r| r.offset);
        Ok(batch)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use datafusion::arrow::array::{Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    const LINE: &str = r#"83.149.9.216 - - [17/May/2015:10:05:03 +0000] "GET /presentations/kibana.png?a=1 HTTP/1.1" 200 203023 "http://semicomplete.com/" "Mozilla/5.0 (Macintosh) \"quoted\"""#;

    #[test]
    fn a_combined_line_parses_into_fields() {
        let line = parse_line(LINE.as_bytes(), LogFormat::Combined).unwrap();
        let field = |f: LogField| line.fields[slot(f)].as_deref();
        assert_eq!(field(LogField::RemoteAddr), Some("83.149.9.216"));
        assert_eq!(field(LogField::Ident), None);
        assert_eq!(field(LogField::Method), Some("GET"));
        assert_eq!(field(LogField::Path), Some("/presentations/kibana.png?a=1"));
        assert_eq!(field(LogField::Protocol), Some("HTTP/1.1"));
        assert_eq!(field(LogField::Status), Some("200"));
        assert_eq!(field(LogField::UserAgent), Some("Mozilla/5.0 (Macintosh) \"quoted\""));
        // 2015-05-17T10:05:03Z
        assert_eq!(line.time, Some(1_431_857_103_000_000));
        assert_eq!(parse_time("17/May/2015:12:05:03 +0200").unwrap(), 1_431_857_103_000_000);
        assert_eq!(parse_time("17/May/2015:05:05:03 -0500").unwrap(), 1_431_857_103_000_000);
    }

    #[test]
    fn malformed_lines_say_why() {
        let truncated = r#"46.118.127.106 - - [20/May/2015:12:05:17 +0000] "GET /x HTTP/1.1" 200 235 "-" "Mozilla/5.0 (compatible"#;
        assert!(parse_line(truncated.as_bytes(), LogFormat::Combined).unwrap_err().contains("unterminated quoted user agent"));
        // The common format stops before the referer.
        assert!(parse_line(truncated.as_bytes(), LogFormat::Common).is_ok());
        assert!(parse_line(b"1.2.3.4 - - [17/Mai/2015:10:05:03 +0000] \"GET / HTTP/1.1\" 200 1", LogFormat::Common)
            .unwrap_err()
            .contains("is not a log time"));
        assert!(parse_line(b"1.2.3.4 - -", LogFormat::Common).unwrap_err().contains("ends before the time"));
    }

    #[test]
    fn columns_by_name_typed() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())), true),
            Field::new("status", DataType::Int32, true),
            Field::new("bytes", DataType::Int64, true),
            Field::new("url", DataType::Utf8, true),
            Field::new("agent", DataType::Utf8, true),
        ]));
        let mut parser = LogParser::new(LogFormat::Combined, schema).unwrap();
        let input = format!("{LINE}\n1.2.3.4 - bob [17/May/2015:10:05:04 +0000] \"-\" 408 - \"-\" \"-\"\nbroken\n");
        let mut rejected = Vec::new();
        let batch = parser.parse(input.as_bytes(), 0, "access.log", &mut rejected).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].offset, input.find("broken").unwrap() as u64);
        let ts = batch.column(0).as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
        assert_eq!(ts.value(1), 1_431_857_104_000_000);
        assert_eq!(batch.column(1).as_any().downcast_ref::<Int32Array>().unwrap().value(1), 408);
        let bytes = batch.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!((bytes.value(0), bytes.is_null(1)), (203023, true));
        let url = batch.column(3).as_any().downcast_ref::<StringArray>().unwrap();
        assert!(url.is_null(1));
        assert!(batch.column(4).is_null(1));
    }

    #[test]
    fn unknown_columns_are_refused() {
        let schema = Arc::new(Schema::new(vec![Field::new("color", DataType::Utf8, true)]));
        assert!(LogParser::new(LogFormat::Combined, schema).is_err());
        let schema = Arc::new(Schema::new(vec![Field::new("referer", DataType::Utf8, true)]));
        assert!(LogParser::new(LogFormat::Common, schema).is_err());
        let schema = Arc::new(Schema::new(vec![Field::new("ts", DataType::Int64, true)]));
        assert!(LogParser::new(LogFormat::Combined, schema).is_err());
    }
}
