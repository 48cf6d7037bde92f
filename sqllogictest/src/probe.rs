//! Small helpers the integration tests share to talk to a running `sluice serve`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A client connected to the server on `port` (its connection driven in the background).
///
/// # Panics
/// When the server does not accept the connection (these are test helpers).
pub async fn connect(port: u16) -> Client {
    try_connect(port).await.unwrap_or_else(|e| panic!("{e}"))
}

/// A client connected to the server on `port`, or why not.
pub async fn try_connect(port: u16) -> Result<Client, String> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("sluice")
        .dbname("sluice")
        .connect(NoTls)
        .await
        .map_err(|e| format!("cannot connect to sluice on port {port}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The rows `sql` returns, as text (NULL as `NULL`).
///
/// # Panics
/// When the query fails.
pub async fn rows(client: &Client, sql: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for message in client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")) {
        if let SimpleQueryMessage::Row(row) = message {
            out.push((0..row.len()).map(|i| row.get(i).unwrap_or("NULL").to_string()).collect());
        }
    }
    out
}

/// FLUSHes until every reader of `source` has consumed `records` records (per
/// `sluice_sources`), then once more so the views hold what the last batch produced.
///
/// # Panics
/// After two minutes without getting there.
pub async fn wait_for_records(client: &Client, source: &str, records: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        rows(client, "FLUSH").await;
        let counts = rows(client, &format!("SELECT records FROM sluice_sources WHERE source = '{source}'")).await;
        if !counts.is_empty() && counts.iter().all(|r| r[0] == records.to_string()) {
            rows(client, "FLUSH").await;
            return;
        }
        assert!(Instant::now() < deadline, "readers of {source} stuck at {counts:?}, want {records}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The workspace's root directory (for test data and scripts).
pub fn workspace() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Appends `bytes` to the file at `path` (created if missing), as a writer of logs would.
///
/// # Panics
/// When the file cannot be written (these are test helpers).
pub fn append(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.write_all(bytes).unwrap_or_else(|e| panic!("cannot append to {}: {e}", path.display()));
}

/// `POST path` with `body` to the server's HTTP port: (status code, response body).
///
/// # Panics
/// When the server cannot be reached (these are test helpers).
pub fn post(http_port: u16, path: &str, body: &[u8]) -> (u16, String) {
    use std::io::Read;
    let fail = |e: std::io::Error| -> ! { panic!("POST {path} to port {http_port}: {e}") };
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", http_port)).unwrap_or_else(|e| fail(e));
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap_or_else(|e| fail(e));
    stream.write_all(body).unwrap_or_else(|e| fail(e));
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap_or_else(|e| fail(e));
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}
