//! Real drivers against the real binary: psycopg 3 and asyncpg (Python), pgjdbc (Java).
//!
//! Skipped with a message when a driver is not installed, unless `SLUICE_REQUIRE_CLIENTS` is
//! set (the test script sets it and installs them).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;

use common::Server;

/// Returns false (skip) if the driver is missing and not required.
fn driver_available(probe: &mut Command, what: &str) -> bool {
    let available = probe.output().map(|o| o.status.success()).unwrap_or(false);
    if !available {
        assert!(
            std::env::var_os("SLUICE_REQUIRE_CLIENTS").is_none(),
            "SLUICE_REQUIRE_CLIENTS is set but {what} is not installed"
        );
        eprintln!("skipping: {what} is not installed");
    }
    available
}

/// The Debian package libpostgresql-jdbc-java installs the driver here.
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

#[test]
fn jdbc_driver() {
    let jar_present = std::path::Path::new(PGJDBC_JAR).exists();
    if !driver_available(Command::new("java").arg("-version"), "java") || !jar_present {
        assert!(std::env::var_os("SLUICE_REQUIRE_CLIENTS").is_none(), "{PGJDBC_JAR} is missing");
        return;
    }
    let server = Server::start();
    let program = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drivers/JdbcCheck.java");
    let out = Command::new("java").args(["-cp", PGJDBC_JAR, program]).arg(server.pg_port.to_string()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "JDBC checks failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn python_drivers() {
    if !driver_available(Command::new("python3").args(["-c", "import psycopg, asyncpg"]), "python3 with psycopg and asyncpg") {
        return;
    }
    let server = Server::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drivers/test_drivers.py");
    let out = Command::new("python3").arg(script).arg(server.pg_port.to_string()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "driver checks failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}
