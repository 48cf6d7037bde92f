//! The crash harness: a real `sluice serve` is written to and killed with SIGKILL at random
//! moments, restarted over the same data directory each time, and checked after every
//! restart.
//!
//! What it proves, after each restart:
//! * every acknowledged table write is there (the tables equal the acknowledged statements,
//!   with or without the one that was in flight when the process died);
//! * every materialized view equals its query run in batch over those tables — no change lost
//!   or counted twice by the recovery;
//! * the views over a datagen source hold exactly the rows at offsets `0..n` for some `n`
//!   (the source's sequence column sums to `n(n+1)/2`), and all of them once it is done;
//! * DDL is atomic: a view created or dropped while the process died either exists and is
//!   correct, or does not exist.
//!
//! `cargo test -p sluice-sqllogictest --test crash` runs a short version; the `sluice-crash`
//! binary runs as many kills as asked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::SluiceServer;

/// How a crash run goes.
#[derive(Debug, Clone)]
pub struct CrashOptions {
    /// The `sluice` binary.
    pub bin: PathBuf,
    /// The data directory (kept across restarts; created if missing).
    pub data_dir: PathBuf,
    /// How many times to kill the server.
    pub kills: usize,
    /// Seed of the workload and of the kill times.
    pub seed: u64,
    /// Rows the datagen source produces in all.
    pub source_rows: u64,
    /// Longest time the server runs between a restart and the next kill.
    pub max_run: Duration,
    /// The server's `--memory-limit` (None: its default). A small one makes the dataflow end
    /// most epochs early, and those epochs are unlogged: a kill then loses the epochs since
    /// the last checkpoint, which recovery must make up for by replaying the sources.
    pub memory_limit: Option<String>,
    /// The server's `--checkpoint-interval`.
    pub checkpoint_interval: String,
}

/// What a crash run did.
#[derive(Debug, Clone, Default)]
pub struct CrashReport {
    /// Kills done.
    pub kills: usize,
    /// Statements acknowledged by the server.
    pub acknowledged: u64,
    /// Statements in flight when the server was killed that turned out to have committed.
    pub in_flight_committed: u64,
    /// The server's recovery line after each restart.
    pub recoveries: Vec<String>,
}

/// splitmix64: a small, seedable generator (the harness needs no statistical quality).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const URLS: &[&str] = &["/", "/cart", "/checkout", "/blog", "/about", "/products/1", "/products/2"];

/// The views every run keeps, by name, with their queries (the batch oracle).
fn base_views() -> Vec<(String, String)> {
    [
        ("per_url", "SELECT url, count(*) AS n, sum(bytes) AS b, max(bytes) AS mx, min(user_id) AS mn FROM events GROUP BY url"),
        (
            "per_minute",
            "SELECT window_start, count(*) AS n, count(DISTINCT user_id) AS users \
             FROM TUMBLE(events, ts, INTERVAL '1 minute') GROUP BY window_start",
        ),
        (
            "sliding",
            "SELECT window_start, count(*) AS n, sum(bytes) AS b \
             FROM HOP(events, ts, INTERVAL '1 minute', INTERVAL '3 minutes') GROUP BY window_start",
        ),
        ("busy_urls", "SELECT count(*) AS urls, sum(n) AS total FROM per_url WHERE n > 3"),
        ("big_events", "SELECT id, url, bytes FROM events WHERE bytes > 700"),
        // Append-only (rows stored by arrival, written blind).
        ("even_visits", "SELECT id, user_id, ts FROM visits WHERE user_id % 2 = 0"),
        ("log_totals", "SELECT user_id, sum(n) AS s, count(*) AS c FROM log GROUP BY user_id"),
        (
            "visits_per_minute",
            "SELECT window_start, count(*) AS n, max(ts) AS last FROM TUMBLE(visits, ts, INTERVAL '1 minute') GROUP BY window_start",
        ),
    ]
    .into_iter()
    .map(|(n, q)| (n.to_string(), q.to_string()))
    .collect()
}

/// The EMIT ON WINDOW CLOSE view over `visits`: it holds the windows the watermark closed.
const VISITS_FINAL: (&str, &str) = (
    "visits_final",
    "SELECT window_start, window_end, count(*) AS n, count(DISTINCT user_id) AS users \
     FROM TUMBLE(visits, ts, INTERVAL '1 minute') GROUP BY window_start, window_end",
);

/// The watermark delay of `visits`, in seconds.
const VISITS_DELAY: i64 = 10;

/// `visits` times are seconds after this.
const VISITS_EPOCH: &str = "TIMESTAMP '2026-01-01 00:00:00'";

/// One statement of the workload and its effect on the model of the tables.
#[derive(Debug, Clone)]
enum Step {
    Insert(Vec<(i64, i64, &'static str, i64)>),
    Update { modulus: i64, remainder: i64, add: i64 },
    Delete(i64),
    Log(Vec<(i64, i64)>),
    CreateView(String, String),
    DropView(String),
    /// Rows of the watermarked `visits` table: (id, user_id, seconds or NULL).
    Visit(Vec<(i64, i64, Option<i64>)>),
}

impl Step {
    fn sql(&self) -> String {
        match self {
            Step::Insert(rows) => {
                let values: Vec<String> = rows
                    .iter()
                    .map(|(id, user, url, bytes)| {
                        format!("({id}, {user}, '{url}', {bytes}, TIMESTAMP '2026-01-01 00:00:00' + INTERVAL '{} seconds')", id * 7)
                    })
                    .collect();
                format!("INSERT INTO events VALUES {}", values.join(", "))
            }
            Step::Update { modulus, remainder, add } => {
                format!("UPDATE events SET bytes = bytes + {add} WHERE id % {modulus} = {remainder}")
            }
            Step::Delete(id) => format!("DELETE FROM events WHERE id = {id}"),
            Step::Log(rows) => {
                let values: Vec<String> = rows.iter().map(|(u, n)| format!("({u}, {n})")).collect();
                format!("INSERT INTO log VALUES {}", values.join(", "))
            }
            Step::CreateView(name, query) => format!("CREATE MATERIALIZED VIEW {name} AS {query}"),
            Step::DropView(name) => format!("DROP MATERIALIZED VIEW {name}"),
            Step::Visit(rows) => {
                let values: Vec<String> = rows
                    .iter()
                    .map(|(id, user, ts)| match ts {
                        Some(t) => format!("({id}, {user}, {VISITS_EPOCH} + INTERVAL '{t} seconds')"),
                        None => format!("({id}, {user}, NULL)"),
                    })
                    .collect();
                format!("INSERT INTO visits VALUES {}", values.join(", "))
            }
        }
    }
}

/// What the acknowledged statements say the tables and views are.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    /// events: id → (user_id, url, bytes).
    events: BTreeMap<i64, (i64, String, i64)>,
    /// log rows, as (user_id, n) → how many.
    log: BTreeMap<(i64, i64), i64>,
    /// Views created by the workload (beyond the base ones).
    extra_views: BTreeMap<String, String>,
    next_id: i64,
    next_view: u64,
    /// visits accepted: id → (user_id, seconds).
    visits: BTreeMap<i64, (i64, i64)>,
    /// visits found late (ids), and the table's watermark (seconds).
    late_visits: Vec<i64>,
    visits_watermark: Option<i64>,
    /// The workload's clock for visit times, and the next visit id.
    visit_clock: i64,
    next_visit: i64,
}

impl Model {
    fn apply(&mut self, step: &Step) {
        match step {
            Step::Insert(rows) => {
                for (id, user, url, bytes) in rows {
                    self.events.insert(*id, (*user, url.to_string(), *bytes));
                    self.next_id = self.next_id.max(id + 1);
                }
            }
            Step::Update { modulus, remainder, add } => {
                for (id, row) in self.events.iter_mut() {
                    if id % modulus == *remainder {
                        row.2 += add;
                    }
                }
            }
            Step::Delete(id) => {
                self.events.remove(id);
            }
            Step::Log(rows) => {
                for row in rows {
                    *self.log.entry(*row).or_insert(0) += 1;
                }
            }
            Step::CreateView(name, query) => {
                self.extra_views.insert(name.clone(), query.clone());
            }
            Step::DropView(name) => {
                self.extra_views.remove(name);
            }
            Step::Visit(rows) => {
                // Late: behind the watermark of the rows before it, or no time.
                for (id, user, ts) in rows {
                    match ts {
                        Some(t) if self.visits_watermark.is_none_or(|w| *t >= w) => {
                            self.visits.insert(*id, (*user, *t));
                            let candidate = t - VISITS_DELAY;
                            self.visits_watermark = Some(self.visits_watermark.map_or(candidate, |w| w.max(candidate)));
                        }
                        _ => self.late_visits.push(*id),
                    }
                }
            }
        }
    }

    fn next_step(&mut self, rng: &mut Rng) -> Step {
        let roll = rng.below(100);
        if roll < 4 {
            if let Some(name) = self.extra_views.keys().next().cloned().filter(|_| rng.below(2) == 0) {
                return Step::DropView(name);
            }
            let name = format!("extra_{}", self.next_view);
            let query = match self.next_view % 3 {
                0 => "SELECT user_id % 5 AS k, count(*) AS n, sum(bytes) AS b FROM events GROUP BY user_id % 5".to_string(),
                1 => "SELECT mx > 500 AS big, count(*) AS urls, sum(n) AS n FROM per_url GROUP BY mx > 500".to_string(),
                _ => "SELECT count(*) AS n, sum(s) AS s FROM log_totals".to_string(),
            };
            // Keep the model's counter in step even if this create never commits.
            self.next_view += 1;
            return Step::CreateView(name, query);
        }
        if roll < 60 || self.events.is_empty() {
            let n = 1 + rng.below(20) as i64;
            let rows = (0..n)
                .map(|i| {
                    let id = self.next_id + i;
                    let user = 1 + rng.below(50) as i64;
                    let url = URLS[rng.below(URLS.len() as u64) as usize];
                    (id, user, url, rng.below(1000) as i64)
                })
                .collect();
            self.next_id += n;
            return Step::Insert(rows);
        }
        if roll < 75 {
            return Step::Update { modulus: 2 + rng.below(9) as i64, remainder: rng.below(2) as i64, add: 1 + rng.below(50) as i64 };
        }
        if roll < 90 {
            let keys: Vec<i64> = self.events.keys().copied().collect();
            return Step::Delete(keys[rng.below(keys.len() as u64) as usize]);
        }
        if roll < 95 {
            let n = 1 + rng.below(8) as i64;
            let rows = (0..n)
                .map(|i| {
                    self.visit_clock += rng.below(4) as i64;
                    let ts = match rng.below(12) {
                        0 => None,
                        1 => Some(self.visit_clock - 60 - rng.below(300) as i64),
                        _ => Some(self.visit_clock - rng.below(20) as i64),
                    };
                    (self.next_visit + i, 1 + rng.below(30) as i64, ts)
                })
                .collect();
            self.next_visit += n;
            return Step::Visit(rows);
        }
        let n = 1 + rng.below(5);
        Step::Log((0..n).map(|_| (1 + rng.below(20) as i64, rng.below(100) as i64)).collect())
    }
}

type Rows = Vec<Vec<Option<String>>>;

async fn query(client: &Client, sql: &str) -> Result<Rows, String> {
    let messages = client.simple_query(sql).await.map_err(|e| format!("{sql}: {e}"))?;
    let mut rows = Vec::new();
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            rows.push((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect());
        }
    }
    Ok(rows)
}

fn setup_sql(source_rows: u64) -> Vec<String> {
    let mut statements = vec![
        "CREATE TABLE events (id BIGINT PRIMARY KEY, user_id BIGINT, url VARCHAR, bytes BIGINT, ts TIMESTAMP)".to_string(),
        "CREATE TABLE log (user_id BIGINT, n BIGINT)".to_string(),
        format!(
            "CREATE TABLE visits (id BIGINT, user_id BIGINT, ts TIMESTAMP, \
             WATERMARK FOR ts AS ts - INTERVAL '{VISITS_DELAY} seconds') APPEND ONLY"
        ),
        format!(
            "CREATE SOURCE clicks (seq BIGINT, k BIGINT, ts TIMESTAMP) WITH (connector = 'datagen', \
             datagen.rows.per.second = '20000', datagen.max.rows = '{source_rows}', fields.seq.kind = 'sequence', \
             fields.seq.start = '1', fields.k.min = '0', fields.k.max = '9', fields.k.seed = '7')"
        ),
    ];
    for (name, q) in base_views() {
        statements.push(format!("CREATE MATERIALIZED VIEW {name} AS {q}"));
    }
    statements.push(format!("CREATE MATERIALIZED VIEW {} AS {} EMIT ON WINDOW CLOSE", VISITS_FINAL.0, VISITS_FINAL.1));
    statements.push("CREATE MATERIALIZED VIEW clicks_total AS SELECT count(*) AS n, sum(seq) AS s FROM clicks".into());
    statements.push("CREATE MATERIALIZED VIEW clicks_rows AS SELECT seq, k FROM clicks WHERE k >= 0".into());
    statements.push(
        "CREATE MATERIALIZED VIEW clicks_by_k AS SELECT k, count(*) AS n, sum(seq) AS s, max(seq) AS top FROM clicks GROUP BY k".into(),
    );
    statements
}

fn sorted(mut rows: Rows) -> Rows {
    rows.sort();
    rows
}

/// Checks the tables against the model (with or without the in-flight step) and every view
/// against its batch query. Returns the model that matched.
async fn verify(client: &Client, model: &Model, in_flight: Option<&Step>, report: &mut CrashReport) -> Result<Model, String> {
    query(client, "FLUSH").await?;
    let events = query(client, "SELECT id, user_id, url, bytes FROM events ORDER BY id").await?;
    let log = query(client, "SELECT user_id, n, count(*) FROM log GROUP BY user_id, n ORDER BY user_id, n").await?;
    let views: Vec<String> = query(client, "SHOW MATERIALIZED VIEWS").await?.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
    let visits = query(client, "SELECT id, user_id FROM visits ORDER BY id").await?;
    let mut late_visits: Vec<i64> = query(client, "SELECT row FROM sluice_late_rows WHERE object = 'visits'")
        .await?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .filter_map(|row| row.split(',').next().and_then(|id| id.trim_start_matches("id=").parse().ok()))
        .collect();
    late_visits.sort();
    let visits_of = |m: &Model| -> (Rows, Vec<i64>) {
        let rows = m.visits.iter().map(|(id, (user, _))| vec![Some(id.to_string()), Some(user.to_string())]).collect();
        let mut late = m.late_visits.clone();
        late.sort();
        (rows, late)
    };
    let render = |m: &Model| -> (Rows, Rows) {
        let events = m
            .events
            .iter()
            .map(|(id, (user, url, bytes))| vec![Some(id.to_string()), Some(user.to_string()), Some(url.clone()), Some(bytes.to_string())])
            .collect();
        let log = m.log.iter().map(|((u, n), c)| vec![Some(u.to_string()), Some(n.to_string()), Some(c.to_string())]).collect();
        (events, log)
    };
    let mut candidates = vec![model.clone()];
    if let Some(step) = in_flight {
        let mut with = model.clone();
        with.apply(step);
        candidates.push(with);
    }
    let mut matched = None;
    for (i, candidate) in candidates.iter().enumerate() {
        let (e, l) = render(candidate);
        let extra_ok = candidate.extra_views.keys().all(|v| views.contains(v))
            && views.iter().filter(|v| v.starts_with("extra_")).all(|v| candidate.extra_views.contains_key(v));
        if e == events && l == log && extra_ok && visits_of(candidate) == (visits.clone(), late_visits.clone()) {
            matched = Some(i);
            break;
        }
    }
    let Some(i) = matched else {
        return Err(format!(
            "after the restart the tables do not match the acknowledged writes (in flight: {:?}); \
             {} event rows, {} log groups, {} visits and {} late visits found, {}, {}, {} and {} expected; views: {views:?}",
            in_flight.map(Step::sql),
            events.len(),
            log.len(),
            visits.len(),
            late_visits.len(),
            model.events.len(),
            model.log.len(),
            model.visits.len(),
            model.late_visits.len()
        ));
    };
    if i == 1 {
        report.in_flight_committed += 1;
    }
    let model = candidates.swap_remove(i);
    let mut expected_views: Vec<(String, String)> = base_views();
    expected_views.extend(model.extra_views.iter().map(|(n, q)| (n.clone(), q.clone())));
    for (name, q) in &expected_views {
        let stored = sorted(query(client, &format!("SELECT * FROM {name}")).await?);
        let batch = sorted(query(client, q).await?);
        if stored != batch {
            return Err(format!(
                "materialized view {name} differs from its batch query after recovery:\n  view:  {:?}\n  batch: {:?}",
                stored.iter().take(8).collect::<Vec<_>>(),
                batch.iter().take(8).collect::<Vec<_>>()
            ));
        }
    }
    // The EMIT ON WINDOW CLOSE view: exactly the windows the table's watermark closed, once.
    let (name, q) = VISITS_FINAL;
    let closed = match model.visits_watermark {
        Some(w) => format!("q.window_end <= {VISITS_EPOCH} + INTERVAL '{w} seconds'"),
        None => "false".into(),
    };
    let stored = sorted(query(client, &format!("SELECT * FROM {name}")).await?);
    let batch = sorted(query(client, &format!("SELECT * FROM ({q}) AS q WHERE {closed}")).await?);
    if stored != batch {
        return Err(format!(
            "materialized view {name} differs from its batch query over the closed windows after recovery:\n  view:  {:?}\n  batch: {:?}",
            stored.iter().take(8).collect::<Vec<_>>(),
            batch.iter().take(8).collect::<Vec<_>>()
        ));
    }
    check_source_views(client).await?;
    Ok(model)
}

/// Each source view holds the rows at offsets `0..n` exactly, for some `n` of its own (every
/// view has its own reader, so two views may be at different offsets at one checkpoint);
/// returns the smallest and the largest `n`.
async fn check_source_views(client: &Client) -> Result<(u64, u64), String> {
    let mut smallest = u64::MAX;
    let mut largest = 0;
    for (view, sql) in [
        ("clicks_total", "SELECT n, s FROM clicks_total"),
        ("clicks_by_k", "SELECT sum(n), sum(s) FROM clicks_by_k"),
        // The append-only view holds the rows themselves: also no sequence number twice.
        ("clicks_rows", "SELECT count(*), sum(seq), count(DISTINCT seq), max(seq) FROM clicks_rows"),
    ] {
        let rows = query(client, sql).await?;
        let row = rows.into_iter().next().ok_or_else(|| format!("{view} has no row"))?;
        let int = |i: usize| -> Result<u64, String> {
            row.get(i).cloned().flatten().map(|v| v.parse::<u64>().map_err(|e| format!("{v}: {e}"))).unwrap_or(Ok(0))
        };
        let (n, s) = (int(0)?, int(1)?);
        let expected = n * (n + 1) / 2;
        if s != expected {
            return Err(format!("{view} counts {n} rows whose sequence sums to {s}, not {expected}: rows lost or doubled"));
        }
        if row.len() > 2 && (int(2)? != n || int(3)? != n) {
            return Err(format!("{view} holds {n} rows but {} distinct sequence numbers up to {}: rows lost or doubled", int(2)?, int(3)?));
        }
        smallest = smallest.min(n);
        largest = largest.max(n);
    }
    Ok((smallest, largest))
}

async fn start(options: &CrashOptions, report: &mut CrashReport) -> Result<(SluiceServer, Client), String> {
    let bin = options.bin.clone();
    let dir = options.data_dir.clone();
    let mut args = vec!["--checkpoint-interval".to_string(), options.checkpoint_interval.clone()];
    if let Some(limit) = &options.memory_limit {
        args.extend(["--memory-limit".to_string(), limit.clone()]);
    }
    let server = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        SluiceServer::start_in(&bin, &dir, &args)
    })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("restart failed: {e}"))?;
    report.recoveries.push(server.recovery.clone());
    let client = crate::probe::try_connect(server.port).await?;
    Ok((server, client))
}

fn kill_pid(pid: u32) {
    let _ = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
}

/// Runs the crash test; returns what it did or the first violation found.
pub async fn run(options: &CrashOptions) -> Result<CrashReport, String> {
    let mut report = CrashReport::default();
    let mut rng = Rng(options.seed);
    let mut model = Model { next_id: 1, next_visit: 1, visit_clock: 100_000, ..Model::default() };
    let (mut server, mut client) = start(options, &mut report).await?;
    for statement in setup_sql(options.source_rows) {
        query(&client, &statement).await?;
    }
    let mut in_flight: Option<Step> = None;
    for kill in 0..options.kills {
        model = verify(&client, &model, in_flight.as_ref(), &mut report).await?;
        let run_for = Duration::from_millis(100 + rng.below(options.max_run.as_millis().max(101) as u64 - 100));
        let killed = Arc::new(AtomicBool::new(false));
        let pid = server.pid();
        let killer = {
            let killed = Arc::clone(&killed);
            std::thread::spawn(move || {
                std::thread::sleep(run_for);
                killed.store(true, Ordering::SeqCst);
                kill_pid(pid);
            })
        };
        let deadline = Instant::now() + run_for + Duration::from_secs(30);
        loop {
            let mut next = model.clone();
            let step = next.next_step(&mut rng);
            // The step's counters advance whether or not it commits.
            model.next_id = next.next_id;
            model.next_view = next.next_view;
            model.next_visit = next.next_visit;
            model.visit_clock = next.visit_clock;
            match client.simple_query(&step.sql()).await {
                Ok(_) => {
                    model.apply(&step);
                    report.acknowledged += 1;
                }
                Err(e) if killed.load(Ordering::SeqCst) => {
                    let sql = step.sql();
                    let shown: String = sql.chars().take(100).collect();
                    let more = if sql.len() > shown.len() { " ..." } else { "" };
                    eprintln!("crash harness: kill {} after {run_for:?}, in flight: {shown}{more} ({e})", kill + 1);
                    in_flight = Some(step);
                    break;
                }
                Err(e) => return Err(format!("statement failed while the server was up: {}: {e}", step.sql())),
            }
            if Instant::now() > deadline {
                return Err("the server was not killed in time".into());
            }
        }
        let _ = killer.join();
        server.kill();
        report.kills += 1;
        (server, client) = start(options, &mut report).await?;
    }
    model = verify(&client, &model, in_flight.as_ref(), &mut report).await?;
    // Let the source finish, then check it holds every row exactly once.
    let waited = Instant::now();
    loop {
        query(&client, "FLUSH").await?;
        let (n, most) = check_source_views(&client).await?;
        if most > options.source_rows {
            return Err(format!("a source view holds {most} rows of {}", options.source_rows));
        }
        if n == options.source_rows {
            break;
        }
        if n > options.source_rows {
            return Err(format!("the source views hold {n} rows of {}", options.source_rows));
        }
        if waited.elapsed() > Duration::from_secs(180) {
            return Err(format!("the source views reached only {n} of {} rows", options.source_rows));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A clean stop and restart keeps everything too.
    drop(client);
    server.stop().map_err(|e| format!("clean stop failed: {e}"))?;
    let (_server, client) = start(options, &mut report).await?;
    verify(&client, &model, None, &mut report).await?;
    if check_source_views(&client).await? != (options.source_rows, options.source_rows) {
        return Err("the source views changed across a clean restart".into());
    }
    Ok(report)
}
