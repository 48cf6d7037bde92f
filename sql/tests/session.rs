//! Statement-level tests of a session over the in-memory store (no wire protocol).
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use datafusion::arrow::util::pretty::pretty_format_batches;
use futures::TryStreamExt;
use sluice_sql::{parse_statements, Database, Session, SqlError, StatementOutput};
use sluice_storage::MemoryStateStore;

fn session() -> Session {
    Database::new(Arc::new(MemoryStateStore::new())).expect("database starts").session("sluice", "sluice", 1)
}

/// Runs every statement; returns the last one's output as a table or a tag.
async fn run(s: &mut Session, sql: &str) -> Result<String, SqlError> {
    let mut last = String::new();
    for stmt in parse_statements(sql)? {
        last = match s.execute(&stmt).await?.output {
            StatementOutput::Rows { stream, .. } => {
                let batches: Vec<_> = stream.try_collect().await.map_err(SqlError::from)?;
                pretty_format_batches(&batches).unwrap().to_string()
            }
            StatementOutput::Command { tag, rows } => match rows {
                Some(n) => format!("{tag} {n}"),
                None => tag,
            },
        };
    }
    Ok(last)
}

#[tokio::test]
async fn dml_round_trip_with_primary_key_upsert() {
    let mut s = session();
    run(&mut s, "CREATE TABLE users (id BIGINT PRIMARY KEY, country VARCHAR, signup TIMESTAMP)").await.unwrap();
    assert_eq!(
        run(&mut s, "INSERT INTO users VALUES (1,'fr','2026-01-01 10:00:00'), (2,'us',NULL), (3, 'fr', NULL)").await.unwrap(),
        "INSERT 3"
    );
    assert_eq!(run(&mut s, "INSERT INTO users VALUES (3, 'it', NULL)").await.unwrap(), "INSERT 1");
    assert_eq!(run(&mut s, "UPDATE users SET country = 'de' WHERE id = 1").await.unwrap(), "UPDATE 1");
    assert_eq!(run(&mut s, "DELETE FROM users WHERE id = 2").await.unwrap(), "DELETE 1");
    let out = run(&mut s, "SELECT country, count(*) FROM users GROUP BY 1 ORDER BY 1").await.unwrap();
    assert_eq!(
        out,
        "+---------+-------+\n| country | count |\n+---------+-------+\n| de      | 1     |\n| it      | 1     |\n+---------+-------+"
    );
}

#[tokio::test]
async fn tables_without_key_keep_duplicates() {
    let mut s = session();
    run(&mut s, "CREATE TABLE t (a INT, b TEXT); INSERT INTO t VALUES (1,'x'),(1,'x'),(2,NULL)").await.unwrap();
    assert!(run(&mut s, "SELECT count(*) AS n FROM t").await.unwrap().contains("| 3 |"));
    assert_eq!(run(&mut s, "UPDATE t SET a = a + 10 WHERE a = 1").await.unwrap(), "UPDATE 2");
    assert!(run(&mut s, "SELECT sum(a) AS s FROM t").await.unwrap().contains("| 24 |"));
    assert_eq!(run(&mut s, "DELETE FROM t").await.unwrap(), "DELETE 3");
}

#[tokio::test]
async fn errors_are_classified() {
    let mut s = session();
    assert!(matches!(run(&mut s, "SELEC 1").await, Err(SqlError::Syntax(_))));
    assert!(matches!(run(&mut s, "SELECT * FROM nope").await, Err(SqlError::UndefinedTable(_))));
    run(&mut s, "CREATE TABLE t (a INT NOT NULL, v VARCHAR(3))").await.unwrap();
    assert!(matches!(run(&mut s, "CREATE TABLE t (a INT)").await, Err(SqlError::DuplicateTable(_))));
    assert!(matches!(run(&mut s, "SELECT b FROM t").await, Err(SqlError::UndefinedColumn(_))));
    assert!(matches!(run(&mut s, "INSERT INTO t VALUES (NULL, 'a')").await, Err(SqlError::NotNull { .. })));
    assert!(matches!(run(&mut s, "INSERT INTO t VALUES (1, 'abcd')").await, Err(SqlError::Data { .. })));
    assert!(matches!(run(&mut s, "INSERT INTO t VALUES (3000000000, 'a')").await, Err(SqlError::Data { .. })));
    assert!(matches!(run(&mut s, "SELECT 1/0").await, Err(SqlError::Data { .. })));
    assert!(matches!(run(&mut s, "CREATE VIEW v AS SELECT 1").await, Err(SqlError::Unsupported(_))));
    assert_eq!(run(&mut s, "SELECT count(*) AS n FROM t").await.unwrap(), "+---+\n| n |\n+---+\n| 0 |\n+---+");
}
