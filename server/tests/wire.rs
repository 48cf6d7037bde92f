//! The pgwire front end as drivers use it: parameters, binary values, several connections,
//! hostile input.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::Server;

#[tokio::test]
async fn typed_parameters_round_trip_in_binary() {
    let server = Server::start();
    let c = server.connect().await;
    c.batch_execute(
        "CREATE TABLE p (id BIGINT PRIMARY KEY, s SMALLINT, i INT, r REAL, d DOUBLE PRECISION, b BOOLEAN, t TEXT, raw BYTEA)",
    )
    .await
    .unwrap();
    let insert = c.prepare("INSERT INTO p VALUES ($1, $2, $3, $4, $5, $6, $7, $8)").await.unwrap();
    let n = c
        .execute(&insert, &[&7i64, &-3i16, &123456i32, &1.5f32, &-2.25f64, &true, &"it's", &vec![0u8, 255, 10]])
        .await
        .unwrap();
    assert_eq!(n, 1);
    c.execute(&insert, &[&8i64, &None::<i16>, &None::<i32>, &None::<f32>, &None::<f64>, &None::<bool>, &None::<&str>, &None::<Vec<u8>>])
        .await
        .unwrap();
    let rows = c.query("SELECT id, s, i, r, d, b, t, raw FROM p WHERE id = $1", &[&7i64]).await.unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.get::<_, i64>(0), 7);
    assert_eq!(row.get::<_, i16>(1), -3);
    assert_eq!(row.get::<_, i32>(2), 123456);
    assert_eq!(row.get::<_, f32>(3), 1.5);
    assert_eq!(row.get::<_, f64>(4), -2.25);
    assert!(row.get::<_, bool>(5));
    assert_eq!(row.get::<_, String>(6), "it's");
    assert_eq!(row.get::<_, Vec<u8>>(7), vec![0u8, 255, 10]);
    let types: Vec<String> = c
        .prepare("SELECT id, s, i, r, d, b, t, raw FROM p")
        .await
        .unwrap()
        .columns()
        .iter()
        .map(|c| c.type_().name().to_string())
        .collect();
    assert_eq!(types, ["int8", "int2", "int4", "float4", "float8", "bool", "text", "bytea"]);
    let nulls = c.query_one("SELECT s, t FROM p WHERE id = 8", &[]).await.unwrap();
    assert_eq!(nulls.get::<_, Option<i16>>(0), None);
    assert_eq!(nulls.get::<_, Option<String>>(1), None);
    // A prepared statement is reusable with new values.
    let by_flag = c.prepare("SELECT count(*) FROM p WHERE b = $1 OR $2").await.unwrap();
    assert_eq!(c.query_one(&by_flag, &[&true, &false]).await.unwrap().get::<_, i64>(0), 1);
    assert_eq!(c.query_one(&by_flag, &[&false, &true]).await.unwrap().get::<_, i64>(0), 2);
}

#[tokio::test]
async fn text_parameters_and_jsonb() {
    let server = Server::start();
    let c = server.connect().await;
    c.batch_execute("CREATE TABLE j (k INT, doc JSONB, v VARCHAR(5), d DATE, ts TIMESTAMP, tz TIMESTAMPTZ, n NUMERIC(5,1), iv INTERVAL)").await.unwrap();
    let types: Vec<String> =
        c.prepare("SELECT * FROM j").await.unwrap().columns().iter().map(|c| c.type_().name().to_string()).collect();
    assert_eq!(types, ["int4", "jsonb", "varchar", "date", "timestamp", "timestamptz", "numeric", "interval"]);
    c.execute("INSERT INTO j VALUES (1, $1)", &[&serde_json::json!({"b": [1, 2], "a": "x"})]).await.unwrap();
    let row = c.query_one("SELECT doc FROM j WHERE k = 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, serde_json::Value>(0), serde_json::json!({"a": "x", "b": [1, 2]}));
    let text = c.simple_query("SELECT doc FROM j").await.unwrap();
    let tokio_postgres::SimpleQueryMessage::Row(r) = &text[1] else { panic!("no row: {text:?}") };
    assert_eq!(r.get(0), Some(r#"{"a": "x", "b": [1, 2]}"#));
}

#[tokio::test]
async fn writes_are_visible_to_the_next_statement_of_any_connection() {
    let server = Server::start();
    let writer = server.connect().await;
    let reader = server.connect().await;
    writer.batch_execute("CREATE TABLE rw (v INT)").await.unwrap();
    for i in 0..20i32 {
        writer.execute("INSERT INTO rw VALUES ($1)", &[&i]).await.unwrap();
        let n: i64 = reader.query_one("SELECT count(*) FROM rw", &[]).await.unwrap().get(0);
        assert_eq!(n, i64::from(i) + 1);
    }
}

#[tokio::test]
async fn several_statements_in_one_simple_query_stop_at_the_first_error() {
    let server = Server::start();
    let c = server.connect().await;
    let err = c
        .batch_execute("CREATE TABLE m (v INT); INSERT INTO m VALUES (1); SELECT 1/0; INSERT INTO m VALUES (2)")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22012");
    let n: i64 = c.query_one("SELECT count(*) FROM m", &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "the statement after the error must not run");
}

#[tokio::test]
async fn garbage_on_the_port_does_not_hurt_the_server() {
    let server = Server::start();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..50 {
        let mut junk = vec![0u8; 8 + round * 37 % 600];
        for b in junk.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        if round % 5 == 0 {
            // A plausible length prefix announcing a huge message.
            junk[..4].copy_from_slice(&0x7fff_ff00u32.to_be_bytes());
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", server.pg_port)) {
            let _ = s.write_all(&junk);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }
    let c = server.connect().await;
    let v: i32 = c.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
}

#[tokio::test]
async fn errors_keep_the_connection_usable() {
    let server = Server::start();
    let c = server.connect().await;
    let cases = [
        ("SELEC", "42601"),
        ("SELECT * FROM nowhere", "42P01"),
        ("SELECT 'x'::int", "22P02"),
        ("CREATE TABLE t (a INT DEFAULT 3)", "0A000"),
    ];
    for (sql, code) in cases {
        let simple = c.simple_query(sql).await.unwrap_err();
        assert_eq!(simple.code().map(|c| c.code()), Some(code), "{sql} (simple): {simple:?}");
        let extended = c.query(sql, &[]).await.unwrap_err();
        assert_eq!(extended.code().map(|c| c.code()), Some(code), "{sql} (extended): {extended:?}");
    }
    let v: i64 = c.query_one("SELECT count(*) FROM (VALUES (1), (2)) AS v(x)", &[]).await.unwrap().get(0);
    assert_eq!(v, 2);
}
