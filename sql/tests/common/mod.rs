//! Helpers shared by the SQL-level integration tests: running statements on a session and
//! reading their answers back as text, and a small deterministic random generator.
#![allow(dead_code, clippy::unwrap_used)]

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::TryStreamExt;
use sluice_sql::{parse_statements, Session, SqlError, StatementOutput};

/// xorshift64: the same seed gives the same workload.
pub struct Random(pub u64);

impl Random {
    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The rows `sql` answers, one `|`-joined line each, sorted. Floats are rounded to 10
/// significant digits: a sum added up in another order may differ in the last bits.
pub async fn rows(session: &mut Session, sql: &str) -> Result<Vec<String>, SqlError> {
    let mut out = Vec::new();
    for stmt in parse_statements(sql)? {
        if let StatementOutput::Rows { stream, .. } = session.execute(&stmt).await?.output {
            let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(SqlError::from)?;
            for batch in &batches {
                let options = FormatOptions::default().with_null("NULL");
                let formatters: Vec<_> =
                    batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap()).collect();
                for row in 0..batch.num_rows() {
                    let cells: Vec<String> = formatters
                        .iter()
                        .map(|f| {
                            let text = f.value(row).to_string();
                            match text.parse::<f64>() {
                                Ok(v) if text.contains('.') => format!("{v:.9e}"),
                                _ => text,
                            }
                        })
                        .collect();
                    out.push(cells.join("|"));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Runs `sql`, panicking on an error.
pub async fn run(session: &mut Session, sql: &str) {
    for stmt in parse_statements(sql).unwrap() {
        session.execute(&stmt).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// The BIGINT in the first column of the first row `sql` answers (0 for NULL).
pub async fn number(session: &mut Session, sql: &str) -> i64 {
    let stmt = parse_statements(sql).unwrap().remove(0);
    let StatementOutput::Rows { stream, .. } = session.execute(&stmt).await.unwrap().output else { panic!("{sql}") };
    let batches: Vec<RecordBatch> = stream.try_collect().await.unwrap();
    let column = batches[0].column(0);
    if column.is_null(0) {
        0
    } else {
        column.as_primitive::<Int64Type>().value(0)
    }
}
