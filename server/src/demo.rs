//! `sluice demo`: a live website-activity pipeline — a datagen source of page views and the
//! materialized views a web analytics team would keep — shown updating in the terminal; beside
//! it, a real Apache access log (10,000 lines from 2015, embedded in the binary) written line
//! by line into the data directory, as a web server would, and followed by a file source.
//!
//! Everything is plain SQL through a session, the same path a psql user takes.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use datafusion::arrow::util::pretty::pretty_format_batches;
use futures::TryStreamExt;
use sluice_sql::{parse_statements, Session, SqlError, StatementOutput};

use crate::{RunningServer, ServerConfig, ServerError};

/// The statements that create the pipeline: a source generating `rate` page views per second
/// (0: as fast as the views take them), stopping after `rows` if given, and five views. Page
/// views arrive up to 5.2 s out of order and the watermark trails by 5 s, so a few are late:
/// they are counted and kept in `sluice_late_rows`, and `closed_minutes` emits each minute once
/// it can no longer change.
pub fn setup_sql(rate: u64, rows: Option<u64>) -> String {
    let max_rows = rows.map(|r| format!(", datagen.max.rows = '{r}'")).unwrap_or_default();
    format!(
        "CREATE SOURCE page_views (
            user_id BIGINT, url VARCHAR, status INT, bytes BIGINT, referrer VARCHAR, country VARCHAR, ts TIMESTAMP,
            WATERMARK FOR ts AS ts - INTERVAL '5 seconds'
         ) WITH (
            connector = 'datagen', datagen.rows.per.second = '{rate}'{max_rows},
            fields.user_id.min = '1', fields.user_id.max = '5000',
            fields.url.values = '/,/,/products,/products/42,/products/7,/cart,/checkout,/blog/streaming-sql,/about,/login',
            fields.status.values = '200,200,200,200,200,200,200,200,200,200,200,200,200,200,304,302,404,404,500',
            fields.bytes.min = '200', fields.bytes.max = '60000',
            fields.referrer.values = 'google.com,google.com,news.ycombinator.com,twitter.com,direct,direct,direct',
            fields.country.values = 'us,us,us,de,de,fr,in,br,jp,gb',
            fields.ts.disorder = '5200ms'
         );
         CREATE MATERIALIZED VIEW views_per_minute AS
            SELECT window_start, url, count(*) AS views, count(DISTINCT user_id) AS visitors
            FROM TUMBLE(page_views, ts, INTERVAL '1 minute') GROUP BY window_start, url;
         CREATE MATERIALIZED VIEW error_rate AS
            SELECT window_start, count(*) AS requests,
                   sum(CASE WHEN status >= 500 THEN 1 ELSE 0 END) AS errors,
                   round(100.0 * sum(CASE WHEN status >= 400 THEN 1 ELSE 0 END) / count(*), 2) AS error_pct
            FROM TUMBLE(page_views, ts, INTERVAL '1 minute') GROUP BY window_start;
         CREATE MATERIALIZED VIEW busiest_pages AS
            SELECT window_start, window_end, url, count(*) AS views, sum(bytes) AS bytes
            FROM HOP(page_views, ts, INTERVAL '1 minute', INTERVAL '5 minutes') GROUP BY window_start, window_end, url;
         CREATE MATERIALIZED VIEW closed_minutes AS
            SELECT window_start, window_end, count(*) AS views, count(DISTINCT user_id) AS visitors
            FROM TUMBLE(page_views, ts, INTERVAL '1 minute') GROUP BY window_start, window_end
            EMIT ON WINDOW CLOSE;
         CREATE MATERIALIZED VIEW unique_visitors AS
            SELECT count(*) AS page_views, count(DISTINCT user_id) AS visitors, count(DISTINCT country) AS countries
            FROM page_views;"
    )
}

/// The real access log the demo writes out as a web server would.
const ACCESS_LOG: &[u8] = include_bytes!("../../testdata/apache_combined_2015.log");

/// Lines of [`ACCESS_LOG`].
pub const ACCESS_LOG_LINES: u64 = 10_000;

/// The statements that follow the access log at `path`.
pub fn access_log_sql(path: &Path) -> String {
    format!(
        "CREATE SOURCE access_log (
            remote_addr VARCHAR, ts TIMESTAMPTZ, method VARCHAR, path VARCHAR, status INT, bytes BIGINT,
            user_agent VARCHAR
         ) WITH (connector = 'file', path = '{}', follow = 'true', poll.interval = '100ms')
         FORMAT PLAIN ENCODE LOG (format = 'combined');
         CREATE MATERIALIZED VIEW status_codes AS
            SELECT status, count(*) AS requests, count(DISTINCT remote_addr) AS clients, sum(bytes) AS bytes
            FROM access_log GROUP BY status;",
        path.display().to_string().replace('\'', "''")
    )
}

/// Appends the access log's lines to `path` from where the file ends, `per_tick` lines every
/// 100 ms (all at once if 0), as a web server writes its log.
async fn write_access_log(path: PathBuf, per_tick: usize) {
    let lines: Vec<&[u8]> = ACCESS_LOG.split_inclusive(|b| *b == b'\n').collect();
    let written = std::fs::read(&path).map(|b| b.iter().filter(|c| **c == b'\n').count()).unwrap_or(0);
    let mut next = written.min(lines.len());
    while next < lines.len() {
        let end = if per_tick == 0 { lines.len() } else { (next + per_tick).min(lines.len()) };
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(&lines[next..end].concat()));
        if let Err(e) = appended {
            tracing::warn!(error = %e, path = %path.display(), "the demo cannot write its access log");
            return;
        }
        next = end;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the demo shows on each refresh: a title and a query over the views.
pub const PANELS: &[(&str, &str)] = &[
    (
        "Totals (unique_visitors; late page views from sluice_watermarks)",
        "SELECT u.page_views + w.late_rows AS generated, u.page_views, w.late_rows AS late, u.visitors, u.countries
         FROM unique_visitors u,
              (SELECT late_rows FROM sluice_watermarks WHERE object = 'page_views' AND view = 'unique_visitors') w",
    ),
    (
        "Views per URL, current minute (views_per_minute)",
        "SELECT url, views, visitors FROM views_per_minute
         WHERE window_start = (SELECT max(window_start) FROM views_per_minute) ORDER BY views DESC, url LIMIT 5",
    ),
    ("Error rate per minute (error_rate)", "SELECT * FROM error_rate ORDER BY window_start DESC LIMIT 3"),
    (
        "Closed minutes, final once the watermark passes them (closed_minutes, EMIT ON WINDOW CLOSE)",
        "SELECT * FROM closed_minutes ORDER BY window_start DESC LIMIT 3",
    ),
    (
        "Busiest pages, sliding 5 minutes (busiest_pages)",
        "SELECT url, views, bytes FROM busiest_pages
         WHERE window_start = (SELECT max(window_start) FROM busiest_pages) ORDER BY views DESC, url LIMIT 5",
    ),
    (
        "A real access log, followed as it is written (access_log file source: status_codes; bad lines in sluice_errors)",
        "SELECT s.status, s.requests, s.clients, s.bytes, r.records AS lines_read, r.errors AS bad_lines
         FROM status_codes s, (SELECT records, errors FROM sluice_sources WHERE source = 'access_log' AND view = 'status_codes') r
         ORDER BY s.requests DESC LIMIT 4",
    ),
];

async fn run_sql(session: &mut Session, sql: &str) -> Result<Option<String>, SqlError> {
    let mut printed = None;
    for stmt in parse_statements(sql)? {
        if let StatementOutput::Rows { stream, .. } = session.execute(&stmt).await?.output {
            let batches: Vec<_> = stream.try_collect().await.map_err(SqlError::from)?;
            printed = Some(pretty_format_batches(&batches).map_err(SqlError::from)?.to_string());
        }
    }
    Ok(printed)
}

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The server did not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A demo statement failed.
    #[error("demo statement failed: {0}")]
    Sql(#[from] SqlError),
}

/// How the demo runs.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Page views generated per second (0: as fast as possible).
    pub rate: u64,
    /// Stop generating after this many page views.
    pub rows: Option<u64>,
    /// Print the views once, after all `rows` are in, and exit.
    pub once: bool,
}

/// Page views generated so far: counted by `unique_visitors`, or dropped from it as late.
async fn page_views_so_far(session: &mut Session) -> Result<u64, SqlError> {
    let text = run_sql(
        session,
        "SELECT u.page_views + w.late_rows FROM unique_visitors u, \
         (SELECT late_rows FROM sluice_watermarks WHERE object = 'page_views' AND view = 'unique_visitors') w",
    )
    .await?
    .unwrap_or_default();
    Ok(text.lines().filter_map(|l| l.trim_matches(|c| c == '|' || c == ' ').parse().ok()).next().unwrap_or(0))
}

async fn render(session: &mut Session, server: &RunningServer) -> Result<String, SqlError> {
    let mut screen = String::from("Sluice demo: website activity, generated live and aggregated by materialized views\n");
    for (title, query) in PANELS {
        screen.push_str(&format!("\n{title}\n"));
        if let Some(table) = run_sql(session, query).await? {
            screen.push_str(&table);
            screen.push('\n');
        }
    }
    screen.push_str(&format!(
        "\nConnect and query the views yourself:\n  psql -h {} -p {} -U sluice\n  sluice=> SELECT * FROM busiest_pages ORDER BY views DESC LIMIT 10;\n",
        server.pg_addr.ip(),
        server.pg_addr.port()
    ));
    Ok(screen)
}

/// Starts a server with the demo pipeline and shows its views until `until` completes (or,
/// with `once`, prints them once after all rows are in).
pub async fn run(config: ServerConfig, options: DemoOptions, until: impl std::future::Future<Output = ()>) -> Result<(), DemoError> {
    let log_dir = config.data_dir.join("demo");
    let server = RunningServer::start(config).await?;
    let mut session = server.db.session("sluice", "sluice", 0);
    std::fs::create_dir_all(&log_dir).map_err(|e| SqlError::InvalidParameterValue(format!("cannot create {}: {e}", log_dir.display())))?;
    let log = log_dir.join("access.log");
    if server.db.source_names().iter().any(|s| s == "page_views") {
        // The data directory keeps the pipeline: it resumes where the last run stopped.
        println!("Resuming the demo pipeline kept in the data directory ...");
    } else {
        println!("Creating sources page_views (datagen) and access_log (file) and six materialized views ...");
        run_sql(&mut session, &setup_sql(options.rate, options.rows)).await?;
        run_sql(&mut session, &access_log_sql(&log)).await?;
    }
    // About 100 lines a second, so the log is seen growing (all at once with --once).
    let writer = tokio::spawn(write_access_log(log, if options.once { 0 } else { 10 }));
    if options.once {
        let target = options.rows.unwrap_or(1);
        loop {
            run_sql(&mut session, "FLUSH").await?;
            let log_read = server.db.source_records("access_log").iter().all(|r| *r >= ACCESS_LOG_LINES);
            if page_views_so_far(&mut session).await? >= target && log_read {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        run_sql(&mut session, "FLUSH").await?;
        print!("{}", render(&mut session, &server).await?);
        writer.abort();
        server.stop().await;
        return Ok(());
    }
    let clear = std::io::stdout().is_terminal();
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => break,
            _ = refresh.tick() => {
                let screen = render(&mut session, &server).await?;
                if clear {
                    print!("\x1b[2J\x1b[H");
                }
                println!("{screen}Press Ctrl-C to stop.");
            }
        }
    }
    writer.abort();
    server.stop().await;
    Ok(())
}
