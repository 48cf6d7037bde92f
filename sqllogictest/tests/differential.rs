//! Differential test: the same random sequence of INSERT / UPDATE / DELETE runs on Sluice and on
//! PostgreSQL, and after every few statements a fixed set of queries must give the same rows on
//! both (text protocol, so formatting counts too). Deterministic: the sequence comes from a
//! seeded generator, so a failure reproduces.
//!
//! Skipped when PostgreSQL is not installed, unless `SLUICE_REQUIRE_POSTGRES` is set.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;

use sluice_sqllogictest::{PostgresCluster, Protocol, SluiceServer, WireClient};
use tokio_postgres::SimpleQueryMessage;

/// xorshift64*: small, deterministic, good enough to pick statements.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> i64 {
        (self.next() % n) as i64
    }

    fn value(&mut self, n: u64) -> String {
        if self.below(8) == 0 { "NULL".into() } else { self.below(n).to_string() }
    }

    fn text(&mut self) -> String {
        const WORDS: [&str; 6] = ["'/'", "'/cart'", "'/blog'", "'Zürich'", "''", "NULL"];
        WORDS[self.below(WORDS.len() as u64) as usize].to_string()
    }
}

fn statement(rng: &mut Rng) -> String {
    match rng.below(10) {
        0..=4 => {
            let rows: Vec<String> = (0..1 + rng.below(5))
                .map(|_| {
                    format!(
                        "({}, {}, {}, {}, {})",
                        rng.below(50),
                        rng.value(5),
                        rng.value(1_000_000),
                        rng.text(),
                        // quarters, so that float text is exact on both sides
                        rng.value(40).parse::<i64>().map(|q| format!("{}", q as f64 / 4.0)).unwrap_or("NULL".into())
                    )
                })
                .collect();
            format!("INSERT INTO t VALUES {}", rows.join(", "))
        }
        5..=7 => {
            let lo = rng.below(50);
            let set = match rng.below(4) {
                0 => format!("v = v + {}", rng.below(100)),
                1 => format!("s = {}", rng.text()),
                2 => format!("g = {}", rng.value(5)),
                _ => "x = x * 2, v = coalesce(v, 0) - 1".into(),
            };
            format!("UPDATE t SET {set} WHERE k BETWEEN {lo} AND {}", lo + rng.below(10))
        }
        _ => {
            let lo = rng.below(50);
            match rng.below(3) {
                0 => format!("DELETE FROM t WHERE k = {lo}"),
                1 => format!("DELETE FROM t WHERE g IS NULL AND k > {lo}"),
                _ => format!("DELETE FROM t WHERE s = {} AND k < {lo}", rng.text()),
            }
        }
    }
}

/// Queries whose answers must match after every checkpoint of the sequence.
const CHECKS: &[&str] = &[
    "SELECT k, g, v, s, x FROM t ORDER BY k, g, v, s, x",
    "SELECT g, count(*), count(v), sum(v), min(s), max(x) FROM t GROUP BY g ORDER BY g",
    "SELECT s, count(DISTINCT k), avg(x) FROM t GROUP BY s ORDER BY s",
    "SELECT k, v, rank() OVER (PARTITION BY g ORDER BY v, k, s, x) FROM t ORDER BY g, v, k, s, x",
    "SELECT a.k, count(*) FROM t a JOIN t b ON a.g = b.g AND a.k < b.k GROUP BY a.k ORDER BY a.k",
];

async fn rows(client: &WireClient, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let messages = client.client().simple_query(sql).await.map_err(|e| format!("{sql}: {e:?}"))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect())
}

fn sluice_binary() -> PathBuf {
    std::env::var_os("SLUICE_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sluice-slt")))
}

#[tokio::test]
async fn random_dml_matches_postgres() {
    let Some(pg) = PostgresCluster::start().unwrap() else {
        assert!(std::env::var_os("SLUICE_REQUIRE_POSTGRES").is_none(), "PostgreSQL is required but not installed");
        eprintln!("skipping: PostgreSQL is not installed");
        return;
    };
    let sluice_server = SluiceServer::start(&sluice_binary()).unwrap();
    let admin = WireClient::connect(pg.port, "postgres", "postgres", Protocol::Simple).await.unwrap();
    admin.client().batch_execute("CREATE DATABASE differential").await.unwrap();
    let postgres = WireClient::connect(pg.port, "postgres", "differential", Protocol::Simple).await.unwrap();
    let sluice = WireClient::connect(sluice_server.port, "sluice", "sluice", Protocol::Simple).await.unwrap();
    let create = "CREATE TABLE t (k INT, g INT, v BIGINT, s TEXT, x DOUBLE PRECISION)";
    for db in [&postgres, &sluice] {
        db.client().batch_execute(create).await.unwrap();
    }
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut compared = 0;
    for step in 1..=300 {
        let sql = statement(&mut rng);
        let on_pg = postgres.client().simple_query(&sql).await.map(|m| m.len()).map_err(|e| e.to_string());
        let on_sluice = sluice.client().simple_query(&sql).await.map(|m| m.len()).map_err(|e| e.to_string());
        assert_eq!(on_pg.is_ok(), on_sluice.is_ok(), "step {step}: {sql}\npostgres: {on_pg:?}\nsluice: {on_sluice:?}");
        if step % 25 == 0 {
            for check in CHECKS {
                let expected = rows(&postgres, check).await.unwrap();
                let actual = rows(&sluice, check).await.unwrap();
                assert_eq!(actual, expected, "after step {step} ({sql}), query: {check}");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 12 * CHECKS.len());
    let n = rows(&sluice, "SELECT count(*) FROM t").await.unwrap();
    assert!(n[0][0].as_deref().unwrap().parse::<i64>().unwrap() > 20, "the sequence should leave rows to compare");
}
