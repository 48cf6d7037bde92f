//! A sqllogictest database over the PostgreSQL wire protocol, in either query protocol.

use async_trait::async_trait;
use sluice_sql::pgtext;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Which half of the PostgreSQL query protocol a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Simple query: one Query message, text results.
    Simple,
    /// Extended query: Parse/Describe/Bind/Execute, binary results.
    Extended,
}

/// Errors from the wire client.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The server answered with an error or the connection failed.
    #[error("{}", describe_postgres_error(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A materialized view differs from its query run in batch (see [`WireClient::with_view_oracle`]).
    #[error("view oracle: {0}")]
    Oracle(String),
    /// A binary value could not be decoded.
    #[error("cannot decode a {ty} value: {detail}")]
    Decode {
        /// The column type.
        ty: String,
        /// What was wrong.
        detail: String,
    },
}

/// The server's own message for an error response (tokio-postgres shows only "db error").
fn describe_postgres_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// One connection, running every record of a file.
pub struct WireClient {
    client: Client,
    protocol: Protocol,
    connection: tokio::task::JoinHandle<()>,
    /// With the view oracle on: the views this connection created, their queries, and whether
    /// they emit on window close.
    oracle: Option<Vec<(String, String, bool)>>,
}

impl WireClient {
    /// Connects to `127.0.0.1:port` as `user` to `database`.
    pub async fn connect(port: u16, user: &str, database: &str, protocol: Protocol) -> Result<Self, WireError> {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user(user)
            .dbname(database)
            .connect(NoTls)
            .await?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { client, protocol, connection, oracle: None })
    }

    /// Turns on the view oracle: after every successful `FLUSH` this connection runs, each
    /// materialized view it created (and that still exists) must hold exactly the rows of its
    /// query run in batch — the incremental result equals the batch recomputation, checked
    /// on every view of every .slt file.
    pub fn with_view_oracle(mut self) -> Self {
        self.oracle = Some(Vec::new());
        self
    }

    /// Rows of `sql` (simple protocol) as normalized text, sorted.
    async fn sorted_rows(&self, sql: &str) -> Result<Vec<String>, WireError> {
        let mut rows = Vec::new();
        for message in self.client.simple_query(sql).await? {
            if let SimpleQueryMessage::Row(row) = message {
                let cells: Vec<String> = (0..row.len()).map(|i| normalize_cell(row.get(i))).collect();
                rows.push(cells.join(" | "));
            }
        }
        rows.sort();
        Ok(rows)
    }

    /// The batch query of an EMIT ON WINDOW CLOSE view: its query over the windows its
    /// watermark has closed (none, before it has one).
    async fn closed_windows(&self, view: &str, query: &str) -> Result<String, WireError> {
        let mut bounds = Vec::new();
        let sql = format!(
            "SELECT column_name, CAST(CAST(watermark AS TIMESTAMP) AS VARCHAR) FROM sluice_watermarks \
             WHERE object = '{view}' AND kind = 'materialized view' AND watermark IS NOT NULL"
        );
        for message in self.client.simple_query(&sql).await? {
            if let SimpleQueryMessage::Row(row) = message {
                let column = row.get(0).unwrap_or_default().to_string();
                let watermark = row.get(1).unwrap_or_default().to_string();
                bounds.push(format!("CAST(q.\"{column}\" AS TIMESTAMP) < CAST('{watermark}' AS TIMESTAMP)"));
            }
        }
        let condition = if bounds.is_empty() { "false".to_string() } else { bounds.join(" AND ") };
        Ok(format!("SELECT * FROM ({query}) AS q WHERE {condition}"))
    }

    async fn observe(&mut self, sql: &str) -> Result<(), WireError> {
        let Some(views) = self.oracle.as_mut() else { return Ok(()) };
        let Ok(statements) = sluice_sql::parse_statements(sql) else { return Ok(()) };
        let mut flushed = false;
        for stmt in statements {
            match stmt {
                sluice_sql::ParsedStatement::Sql(sluice_sql::sqlparser::ast::Statement::CreateView(create))
                    if create.materialized =>
                {
                    let name = create.name.to_string().to_lowercase();
                    let emit_on_close = create.options.to_string().to_lowercase().contains("on_window_close");
                    views.retain(|(n, _, _)| *n != name);
                    views.push((name, create.query.to_string(), emit_on_close));
                }
                sluice_sql::ParsedStatement::Flush => flushed = true,
                _ => {}
            }
        }
        if !flushed {
            return Ok(());
        }
        let mut live = Vec::new();
        for message in self.client.simple_query("SHOW MATERIALIZED VIEWS").await? {
            if let SimpleQueryMessage::Row(row) = message {
                live.push(row.get(0).unwrap_or_default().to_string());
            }
        }
        let views: Vec<(String, String, bool)> =
            self.oracle.iter().flatten().filter(|(n, _, _)| live.contains(n)).cloned().collect();
        for (name, query, emit_on_close) in &views {
            let query = if *emit_on_close { self.closed_windows(name, query).await? } else { query.clone() };
            let Ok(batch) = self.sorted_rows(&query).await else { continue };
            let incremental = self.sorted_rows(&format!("SELECT * FROM {name}")).await?;
            if incremental != batch {
                return Err(WireError::Oracle(format!(
                    "materialized view {name} differs from its query run in batch\n  view:  {incremental:?}\n  batch: {batch:?}"
                )));
            }
        }
        self.oracle = Some(views);
        Ok(())
    }
}

/// A text cell for comparing a view with its batch query: floats to 10 significant digits, so
/// that a sum added up in another order compares equal.
fn normalize_cell(cell: Option<&str>) -> String {
    match cell {
        None => "NULL".into(),
        Some(text) if text.contains(['.', 'e']) => match text.parse::<f64>() {
            Ok(v) if v.is_finite() => format!("{v:.9e}"),
            _ => text.to_string(),
        },
        Some(text) => text.to_string(),
    }
}

impl WireClient {
    async fn run_statement(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, WireError> {
        let output = self.run_unobserved(sql).await?;
        self.observe(sql).await?;
        Ok(output)
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// The raw bytes of a value, whatever its type: decoded below by type OID, independently of
/// the server's encoder.
struct RawValue(Vec<u8>);

impl<'a> FromSql<'a> for RawValue {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(raw.to_vec()))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

fn text_cell(value: Option<&str>) -> String {
    match value {
        None => "NULL".into(),
        Some("") => "(empty)".into(),
        Some(v) => v.to_string(),
    }
}

fn be<const N: usize>(raw: &[u8], ty: &Type) -> Result<[u8; N], WireError> {
    raw.get(..N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| WireError::Decode { ty: ty.name().into(), detail: format!("{} bytes, expected {N}", raw.len()) })
}

/// Microseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Decodes one binary value to PostgreSQL's text form.
pub fn binary_to_text(ty: &Type, raw: &[u8]) -> Result<String, WireError> {
    let bad = |detail: &str| WireError::Decode { ty: ty.name().into(), detail: detail.into() };
    Ok(match *ty {
        Type::BOOL => if raw.first() == Some(&1) { "t" } else { "f" }.to_string(),
        Type::INT2 => i16::from_be_bytes(be(raw, ty)?).to_string(),
        Type::INT4 => i32::from_be_bytes(be(raw, ty)?).to_string(),
        Type::INT8 => i64::from_be_bytes(be(raw, ty)?).to_string(),
        Type::OID => u32::from_be_bytes(be(raw, ty)?).to_string(),
        Type::FLOAT4 => pgtext::float4(f32::from_be_bytes(be(raw, ty)?)),
        Type::FLOAT8 => pgtext::float8(f64::from_be_bytes(be(raw, ty)?)),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            String::from_utf8(raw.to_vec()).map_err(|_| bad("invalid UTF-8"))?
        }
        Type::JSONB => {
            let text = raw.strip_prefix(&[1u8][..]).ok_or_else(|| bad("unknown jsonb version"))?;
            let text = std::str::from_utf8(text).map_err(|_| bad("invalid UTF-8"))?;
            sluice_sql::normalize_jsonb(text).map_err(|e| bad(&e.to_string()))?
        }
        Type::BYTEA => format!("\\x{}", raw.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        Type::DATE => {
            let days = i64::from(i32::from_be_bytes(be(raw, ty)?));
            let ts = pgtext::timestamp(days * 86_400_000_000 + PG_EPOCH_MICROS).ok_or_else(|| bad("out of range"))?;
            ts[..10].to_string()
        }
        Type::TIMESTAMP => pgtext::timestamp(i64::from_be_bytes(be(raw, ty)?) + PG_EPOCH_MICROS).ok_or_else(|| bad("out of range"))?,
        Type::TIMESTAMPTZ => {
            pgtext::timestamptz(i64::from_be_bytes(be(raw, ty)?) + PG_EPOCH_MICROS).ok_or_else(|| bad("out of range"))?
        }
        Type::INTERVAL => {
            let b: [u8; 16] = be(raw, ty)?;
            let micros = i64::from_be_bytes(be(&b[0..8], ty)?);
            let days = i32::from_be_bytes(be(&b[8..12], ty)?);
            let months = i32::from_be_bytes(be(&b[12..16], ty)?);
            interval_text(months, days, micros)
        }
        Type::NUMERIC => numeric_text(raw).ok_or_else(|| bad("malformed numeric"))?,
        ref other => return Err(bad(&format!("no decoder for type {}", other.name()))),
    })
}

/// PostgreSQL's `interval` text (IntervalStyle = postgres).
pub fn interval_text(months: i32, days: i32, micros: i64) -> String {
    let plural = |n: i64, unit: &str, units: &str| format!("{n} {}", if n == 1 { unit } else { units });
    let mut parts = Vec::new();
    let (years, mons) = (months / 12, months % 12);
    if years != 0 {
        parts.push(plural(i64::from(years), "year", "years"));
    }
    if mons != 0 {
        parts.push(plural(i64::from(mons), "mon", "mons"));
    }
    if days != 0 {
        parts.push(plural(i64::from(days), "day", "days"));
    }
    if micros != 0 || parts.is_empty() {
        let sign = if micros < 0 { "-" } else { "" };
        let m = micros.unsigned_abs();
        let (h, rest) = (m / 3_600_000_000, m % 3_600_000_000);
        let (min, rest) = (rest / 60_000_000, rest % 60_000_000);
        let (s, frac) = (rest / 1_000_000, rest % 1_000_000);
        let frac = if frac == 0 { String::new() } else { format!(".{frac:06}").trim_end_matches('0').to_string() };
        parts.push(format!("{sign}{h:02}:{min:02}:{s:02}{frac}"));
    }
    parts.join(" ")
}

/// PostgreSQL's binary `numeric` (base-10000 digits) to text.
fn numeric_text(raw: &[u8]) -> Option<String> {
    let word = |i: usize| raw.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let ndigits = word(0)? as usize;
    let weight = word(2)? as i16 as i32;
    let sign = word(4)?;
    let dscale = word(6)? as usize;
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => {}
    }
    let digits: Vec<u16> = (0..ndigits).map(|i| word(8 + 2 * i)).collect::<Option<_>>()?;
    let digit = |i: i32| if i >= 0 { digits.get(i as usize).copied().unwrap_or(0) } else { 0 };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                out.push_str(&digit(i).to_string());
            } else {
                out.push_str(&format!("{:04}", digit(i)));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(i)));
            i += 1;
        }
        frac.truncate(dscale);
        out.push('.');
        out.push_str(&frac);
    }
    Some(out)
}

#[async_trait]
impl AsyncDB for WireClient {
    type Error = WireError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, WireError> {
        self.run_statement(sql).await
    }

    fn engine_name(&self) -> &str {
        match self.protocol {
            Protocol::Simple => "postgres-simple",
            Protocol::Extended => "postgres-extended",
        }
    }

    async fn shutdown(&mut self) {
        self.connection.abort();
    }

    fn error_sql_state(err: &WireError) -> Option<String> {
        match err {
            WireError::Postgres(e) => e.code().map(|c| c.code().to_string()),
            WireError::Decode { .. } | WireError::Oracle(_) => None,
        }
    }
}

impl WireClient {
    async fn run_unobserved(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, WireError> {
        match self.protocol {
            Protocol::Simple => {
                let mut rows = Vec::new();
                let mut columns = None;
                let mut affected = 0;
                for message in self.client.simple_query(sql).await? {
                    match message {
                        SimpleQueryMessage::RowDescription(cols) => columns = Some(cols.len()),
                        SimpleQueryMessage::Row(row) => {
                            rows.push((0..row.len()).map(|i| text_cell(row.get(i))).collect());
                        }
                        SimpleQueryMessage::CommandComplete(n) => affected = n,
                        _ => {}
                    }
                }
                Ok(match columns {
                    Some(n) => DBOutput::Rows { types: vec![DefaultColumnType::Any; n], rows },
                    None => DBOutput::StatementComplete(affected),
                })
            }
            Protocol::Extended => {
                let stmt = self.client.prepare(sql).await?;
                if stmt.columns().is_empty() {
                    return Ok(DBOutput::StatementComplete(self.client.execute(&stmt, &[]).await?));
                }
                let mut rows = Vec::new();
                for row in self.client.query(&stmt, &[]).await? {
                    let mut cells = Vec::with_capacity(row.len());
                    for (i, column) in row.columns().iter().enumerate() {
                        let raw: Option<RawValue> = row.try_get(i)?;
                        cells.push(match raw {
                            None => "NULL".to_string(),
                            Some(RawValue(bytes)) => match binary_to_text(column.type_(), &bytes)? {
                                s if s.is_empty() => "(empty)".to_string(),
                                s => s,
                            },
                        });
                    }
                    rows.push(cells);
                }
                Ok(DBOutput::Rows { types: vec![DefaultColumnType::Any; stmt.columns().len()], rows })
            }
        }
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_numerics_print_like_postgres() {
        assert_eq!(interval_text(0, 1, 7_200_000_000), "1 day 02:00:00");
        assert_eq!(interval_text(14, 0, 0), "1 year 2 mons");
        assert_eq!(interval_text(0, 0, 0), "00:00:00");
        assert_eq!(interval_text(0, -2, -1_500_000), "-2 days -00:00:01.5");
        // 3.14 with dscale 2: ndigits 2, weight 0, sign 0, dscale 2, digits [3, 1400]
        let raw = [0, 2, 0, 0, 0, 0, 0, 2, 0, 3, 0x05, 0x78];
        assert_eq!(numeric_text(&raw).as_deref(), Some("3.14"));
        // -12345.6: ndigits 3, weight 1, digits [1, 2345, 6000], dscale 1
        let raw = [0, 3, 0, 1, 0x40, 0, 0, 1, 0, 1, 0x09, 0x29, 0x17, 0x70];
        assert_eq!(numeric_text(&raw).as_deref(), Some("-12345.6"));
    }
}
