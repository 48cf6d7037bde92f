//! The incremental-equals-batch oracle for whole views: random inserts, updates and deletes
//! with random FLUSH points; after each FLUSH every view must hold exactly the rows of its
//! query run in batch by DataFusion over the tables' current contents.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;

use common::{rows, run, Random};
use sluice_sql::{DataflowConfig, Database};
use sluice_storage::MemoryStateStore;

/// Views covering every operator: filter, project, aggregates with retractions (min/max,
/// count distinct, string_agg, numeric sum, global), TUMBLE, HOP, UNION ALL, DISTINCT and
/// views on views.
const VIEWS: &[(&str, &str)] = &[
    ("filtered", "SELECT id, url, bytes * 2 AS double_bytes FROM page_views WHERE status >= 400"),
    (
        "per_url",
        "SELECT url, count(*) AS n, count(bytes) AS nb, sum(bytes) AS total, avg(bytes) AS mean, min(ts) AS first, \
         max(status) AS worst, count(DISTINCT user_id) AS users, bool_or(status >= 500) AS failed, \
         string_agg(country, ',' ORDER BY country) AS countries, sum(price) AS revenue \
         FROM page_views GROUP BY url",
    ),
    ("global", "SELECT count(*) AS n, sum(bytes) AS total, min(url) AS lo, max(user_id) AS hi FROM page_views WHERE bytes > 900"),
    (
        "per_minute",
        "SELECT window_start, window_end, url, count(*) AS views, sum(bytes) AS bytes \
         FROM TUMBLE(page_views, ts, INTERVAL '1 minute') GROUP BY window_start, window_end, url",
    ),
    (
        "sliding",
        "SELECT window_start, count(*) AS views, count(DISTINCT url) AS urls \
         FROM HOP(page_views, ts, INTERVAL '1 minute', INTERVAL '3 minutes') GROUP BY window_start",
    ),
    ("busiest", "SELECT url, sum(views) AS v FROM per_minute GROUP BY url HAVING sum(views) > 3"),
    ("both", "SELECT user_id, url FROM page_views WHERE status = 200 UNION ALL SELECT user_id, url FROM clicks"),
    ("distinct_users", "SELECT DISTINCT user_id FROM both"),
    ("click_totals", "SELECT user_id % 3 AS bucket, count(*) AS n, max(url) AS last FROM clicks GROUP BY user_id % 3"),
    // Append-only views over the APPEND ONLY table (rows stored by arrival, written blind),
    // views on them, and windows without aggregation.
    ("hits_all", "SELECT * FROM hits"),
    ("hits_big", "SELECT user_id, url, bytes + 1 AS b FROM hits WHERE bytes > 300"),
    ("hits_both", "SELECT url FROM hits_big UNION ALL SELECT url FROM hits WHERE user_id < 5"),
    ("hits_hop", "SELECT window_start, url FROM HOP(hits, ts, INTERVAL '1 minute', INTERVAL '2 minutes') WHERE url IS NOT NULL"),
    ("hits_per_url", "SELECT url, count(*) AS n, sum(b) AS b FROM hits_big GROUP BY url"),
];

/// The views of [`VIEWS`] whose rows are stored by arrival.
const APPEND_ONLY: &[&str] = &["hits_all", "hits_big", "hits_both", "hits_hop"];

const URLS: &[&str] = &["/", "/a", "/b", "/checkout"];
const COUNTRIES: &[&str] = &["de", "fr", "us"];

fn page_view(random: &mut Random, id: u64) -> String {
    let mut maybe = |value: String| if random.below(8) == 0 { "NULL".to_string() } else { value };
    let url = URLS[(id * 7 % URLS.len() as u64) as usize];
    let raw_bytes = maybe(String::new());
    let raw_country = maybe(String::new());
    let raw_ts = maybe(String::new());
    let raw_price = maybe(String::new());
    let status = [200, 200, 200, 404, 500][random.below(5) as usize];
    let pick = |raw: &str, value: String| if raw == "NULL" { raw.to_string() } else { value };
    let bytes = pick(&raw_bytes, random.below(1000).to_string());
    let country = pick(&raw_country, format!("'{}'", COUNTRIES[random.below(3) as usize]));
    let ts = pick(&raw_ts, format!("TIMESTAMP '2026-01-01 00:00:00' + INTERVAL '{} seconds'", random.below(600)));
    let cents = random.below(5000);
    let price = pick(&raw_price, format!("{}.{:02}", cents / 100, cents % 100));
    let url = if random.below(2) == 0 { URLS[random.below(URLS.len() as u64) as usize] } else { url };
    format!("({id}, {}, '{url}', {status}, {bytes}, {country}, {ts}, {price})", random.below(20))
}

/// A row of the APPEND ONLY `hits` table; duplicates are likely.
fn hit(random: &mut Random) -> String {
    let url = if random.below(8) == 0 { "NULL".to_string() } else { format!("'{}'", URLS[random.below(4) as usize]) };
    let ts = if random.below(8) == 0 {
        "NULL".to_string()
    } else {
        format!("TIMESTAMP '2026-01-01 00:00:00' + INTERVAL '{} seconds'", 30 * random.below(10))
    };
    format!("({}, {url}, {}, {ts})", random.below(10), 100 * random.below(6))
}

async fn oracle(seed: u64, parallelism: usize) {
    let config = DataflowConfig { parallelism, ..DataflowConfig::default() };
    let db = Database::with_dataflow(Arc::new(MemoryStateStore::new()), config).unwrap();
    let mut session = db.session("sluice", "oracle", 1);
    let mut random = Random(seed);
    run(
        &mut session,
        "CREATE TABLE page_views (id BIGINT PRIMARY KEY, user_id BIGINT, url VARCHAR, status INT, bytes BIGINT, \
         country VARCHAR, ts TIMESTAMP, price NUMERIC(8,2)); \
         CREATE TABLE clicks (user_id BIGINT, url VARCHAR); \
         CREATE TABLE hits (user_id BIGINT, url VARCHAR, bytes BIGINT, ts TIMESTAMP) APPEND ONLY",
    )
    .await;
    let mut next_id = 1;
    let mut compared = 0usize;
    // Some rows exist before the views: they start from the tables' contents.
    for _ in 0..20 {
        run(&mut session, &format!("INSERT INTO page_views VALUES {}", page_view(&mut random, next_id))).await;
        next_id += 1;
    }
    for _ in 0..5 {
        run(&mut session, &format!("INSERT INTO hits VALUES {}", hit(&mut random))).await;
    }
    for (name, query) in VIEWS {
        let explain = rows(&mut session, &format!("EXPLAIN CREATE MATERIALIZED VIEW {name} AS {query}")).await.unwrap();
        let append_only = explain.iter().any(|line| line.contains("(append-only)"));
        assert_eq!(append_only, APPEND_ONLY.contains(name), "view {name}: {explain:?}");
        run(&mut session, &format!("CREATE MATERIALIZED VIEW {name} AS {query}")).await;
    }
    for step in 0..120 {
        let statement = match random.below(11) {
            0..=3 => {
                let values: Vec<String> = (0..1 + random.below(4))
                    .map(|_| {
                        // Sometimes an existing key: an upsert replaces the row.
                        let id = if random.below(4) == 0 { 1 + random.below(next_id) } else { next_id };
                        next_id += 1;
                        page_view(&mut random, id)
                    })
                    .collect();
                format!("INSERT INTO page_views VALUES {}", values.join(", "))
            }
            4 => format!("DELETE FROM page_views WHERE id % 7 = {}", random.below(7)),
            5 => format!("UPDATE page_views SET status = 500, bytes = bytes + 1 WHERE user_id = {}", random.below(20)),
            6 => format!("UPDATE page_views SET url = '/b' WHERE id = {}", 1 + random.below(next_id)),
            7 => format!(
                "INSERT INTO clicks VALUES ({}, '{}'), ({}, NULL)",
                random.below(20),
                URLS[random.below(4) as usize],
                random.below(20)
            ),
            8 => format!("DELETE FROM clicks WHERE user_id = {}", random.below(20)),
            9 => {
                let values: Vec<String> = (0..1 + random.below(6)).map(|_| hit(&mut random)).collect();
                format!("INSERT INTO hits VALUES {}", values.join(", "))
            }
            _ => "FLUSH".to_string(),
        };
        run(&mut session, &statement).await;
        if statement == "FLUSH" || step == 119 {
            run(&mut session, "FLUSH").await;
            for (name, query) in VIEWS {
                let incremental = rows(&mut session, &format!("SELECT * FROM {name}")).await.unwrap();
                let batch = rows(&mut session, query).await.unwrap();
                assert_eq!(incremental, batch, "seed {seed}, step {step}: view {name} differs from its query in batch");
                compared += batch.len();
            }
        }
    }
    assert!(compared > 1000, "seed {seed}: the views held only {compared} rows in all; the oracle checked too little");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_equal_their_batch_query_after_every_flush() {
    // Stateful operators split over 1 to 4 instances: the answer must not depend on it.
    for (seed, parallelism) in [(1u64, 1), (2, 2), (3, 3), (4, 4), (5, 1)] {
        oracle(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, parallelism).await;
    }
}
