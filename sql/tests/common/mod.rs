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

/// A store whose commits fail from epoch `fail_from` on, like a disk that filled up.
pub struct FillingStore {
    pub inner: std::sync::Arc<sluice_storage::MemoryStateStore>,
    pub fail_from: std::sync::atomic::AtomicU64,
}

impl FillingStore {
    /// Over `inner`, failing no commit until `fail_from` is set.
    pub fn new(inner: std::sync::Arc<sluice_storage::MemoryStateStore>) -> Self {
        Self { inner, fail_from: std::sync::atomic::AtomicU64::new(u64::MAX) }
    }
}

impl sluice_storage::StateStore for FillingStore {
    fn committed_epoch(&self) -> sluice_storage::Epoch {
        self.inner.committed_epoch()
    }

    fn commit(&self, epoch: sluice_storage::Epoch, batch: sluice_storage::WriteBatch) -> sluice_storage::StorageResult<()> {
        if epoch >= self.fail_from.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(sluice_storage::StorageError::Backend("no space left on device (injected)".into()));
        }
        self.inner.commit(epoch, batch)
    }

    fn snapshot(&self) -> std::sync::Arc<dyn sluice_storage::StateSnapshot> {
        self.inner.snapshot()
    }
}

/// A database over `store` with parallelism 2, an hour between periodic checkpoints, and
/// epochs ended past `epoch_memory_limit` bytes; with a session for `user`.
pub async fn open_with_epoch_limit(
    store: std::sync::Arc<dyn sluice_storage::StateStore>,
    epoch_memory_limit: usize,
    user: &str,
) -> (std::sync::Arc<sluice_sql::Database>, Session) {
    let config = sluice_sql::DataflowConfig {
        parallelism: 2,
        checkpoint_interval: std::time::Duration::from_secs(3600),
        epoch_memory_limit,
        ..sluice_sql::DataflowConfig::default()
    };
    let (db, _) = sluice_sql::Database::open(store, config).await.unwrap();
    let session = db.session("sluice", user, 1);
    (db, session)
}
