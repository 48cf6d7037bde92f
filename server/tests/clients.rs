//! Real drivers against the real binary: psycopg 3 and asyncpg (Python).
//!
//! Skipped with a message when the drivers are not installed, unless `SLUICE_REQUIRE_CLIENTS`
//! is set (the test script sets it and installs them).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;

use common::Server;

#[test]
fn python_drivers() {
    let available = Command::new("python3")
        .args(["-c", "import psycopg, asyncpg"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !available {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_CLIENTS").is_none(),
            "SLUICE_REQUIRE_CLIENTS is set but psycopg/asyncpg are not installed"
        );
        eprintln!("skipping: python3 with psycopg and asyncpg is not installed");
        return;
    }
    let server = Server::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drivers/test_drivers.py");
    let out = Command::new("python3").arg(script).arg(server.pg_port.to_string()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "driver checks failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}
