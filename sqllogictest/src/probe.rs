//! Small helpers the integration tests share to talk to a running `sluice serve`.

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
