//! Starting the real `sluice` binary for integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

/// A `sluice serve` process on free loopback ports; killed on drop.
pub struct Server {
    pub child: Child,
    pub pg_port: u16,
    pub http_port: u16,
    pub dir: TempDir,
}

fn port_of(addr: &str) -> u16 {
    addr.trim().rsplit(':').next().unwrap().parse().unwrap()
}

impl Server {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--pg-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // The recovery summary comes first, then the line with the addresses.
        let line = lines.by_ref().map(|l| l.unwrap()).find(|l| l.starts_with("sluice serving")).unwrap();
        // "sluice serving pgwire on 127.0.0.1:P and HTTP on 127.0.0.1:Q  (connect: ...)"
        let words: Vec<&str> = line.split_whitespace().collect();
        let pg_port = port_of(words[4]);
        let http_port = port_of(words[8]);
        std::thread::spawn(move || for _ in lines {});
        Server { child, pg_port, http_port, dir }
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user=sluice dbname=sluice", self.pg_port),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
