#!/usr/bin/env bash
# Batch queries over archived history (BENCHMARKS.md, history):
#   scripts/bench-history.sh [ROWS]
# A datagen source of web requests (ROWS rows generated as fast as they are archived, 10 ms of
# event time apart, so about a day for 10M rows) is archived by `sluice serve`; then the same
# scan-aggregate runs against Sluice (psycopg) and DuckDB (in-process, same Parquet files),
# interleaved, and once more through psql with hyperfine; last, the files a one-hour query
# opens are read off sluice_history. Needs python3 with psycopg and duckdb, and hyperfine.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-10000000}
bin=${SLUICE_BIN:-${CARGO_TARGET_DIR:-target}/release/sluice}
python=${PYTHON:-python3}
dir=$(mktemp -d)
trap 'kill -9 $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
port=16553; http=16554

"$bin" serve --data-dir "$dir/data" --pg-addr 127.0.0.1:$port --http-addr 127.0.0.1:$http > "$dir/out.log" 2> "$dir/err.log" &
pid=$!
until grep -q "sluice serving" "$dir/out.log" 2>/dev/null; do sleep 0.05; done
sql() { psql -h 127.0.0.1 -p $port -U sluice -d sluice -Atqc "$1"; }

sql "CREATE SOURCE requests (id BIGINT, url VARCHAR, status INT, bytes BIGINT, ts TIMESTAMP)
     WITH (connector = 'datagen', datagen.rows.per.second = '0', fields.ts.step = '10ms', datagen.max.rows = '$rows',
           fields.id.kind = 'sequence', fields.id.end = '1000000000000',
           fields.url.values = '/,/a,/b,/c,/d,/e,/f,/g,/h,/i', fields.status.values = '200,200,200,200,304,404,500',
           fields.bytes.min = '0', fields.bytes.max = '100000', history.flush.interval = '1s')"
t0=$(date +%s.%N)
until [ "$(sql "SELECT archived_rows FROM sluice_history WHERE source = 'requests'")" = "$rows" ]; do sleep 1; done
t1=$(date +%s.%N)
echo "archived $rows rows in $(echo "$t1 - $t0" | bc) s (datagen at full speed, generation included)"
sql "SELECT partitions, files, bytes FROM sluice_history WHERE source = 'requests'" | awk -F'|' '{print "archived: partitions " $1 ", files " $2 ", " int($3/1048576) " MB of Parquet"}'
# Compaction merges each quiet hour's files (10 flush intervals without a new file).
until [ -z "$(sql "SELECT 1 FROM sluice_history_files GROUP BY partition HAVING count(*) > 1")" ]; do sleep 1; done
t2=$(date +%s.%N)
echo "compacted in $(echo "$t2 - $t1" | bc) s after archiving ended (10 s of it the quiet period)"
sql "SELECT partitions, files, bytes FROM sluice_history WHERE source = 'requests'" | awk -F'|' '{print "compacted: partitions " $1 ", files " $2 ", " int($3/1048576) " MB of Parquet"}'

# Files merged away are deleted once no query can read them: wait, so DuckDB reads the listed files only.
listed=$(sql "SELECT files FROM sluice_history WHERE source = 'requests'")
until [ "$(find "$dir/data/history/requests" -name '*.parquet' | wc -l)" = "$listed" ]; do sleep 1; done

query="SELECT status, count(*), sum(bytes), count(DISTINCT url) FROM requests GROUP BY status ORDER BY status"
files="$dir/data/history/requests/**/*.parquet"
# Both engines timed from one Python process, runs interleaved (so machine noise hits both
# alike): Sluice over one psycopg connection (pgwire round trip and result encoding included),
# DuckDB in-process over the same Parquet files. Answers must agree before anything is timed.
cat > "$dir/both.py" <<'PY'
import duckdb, psycopg, statistics, sys, time
port, files, query = int(sys.argv[1]), sys.argv[2], sys.argv[3]
duck = duckdb.connect()
duck.sql("SET threads = 2")
duck_query = query.replace("FROM requests", f"FROM read_parquet('{files}', hive_partitioning = false)")
pg = psycopg.connect(host="127.0.0.1", port=port, user="sluice", dbname="sluice", autocommit=True)
def sluice():
    return [tuple(int(v) for v in row) for row in pg.execute(query).fetchall()]
def duckdb_run():
    return [tuple(int(v) for v in row) for row in duck.sql(duck_query).fetchall()]
engines = [("sluice", sluice), ("duckdb", duckdb_run)]
try:
    # Stock DataFusion (its Python binding) on the same files, for context: how much of the
    # gap to DuckDB is the query engine Sluice is built on rather than Sluice's own scan.
    import datafusion
    config = datafusion.SessionConfig().with_target_partitions(2)
    fusion = datafusion.SessionContext(config)
    fusion.register_parquet("requests", files.split("/**")[0], file_extension=".parquet")
    def datafusion_run():
        table = fusion.sql(query).to_pydict()
        return [tuple(int(v) for v in row) for row in zip(*table.values())]
    engines.append((f"datafusion {datafusion.__version__} (python)", datafusion_run))
except ImportError:
    pass
answer = sluice()
for name, run in engines[1:]:
    assert answer == run(), f"Sluice and {name} disagree"
print(answer)
times = {name: [] for name, _ in engines}
for _ in range(14):
    for name, run in engines:
        t = time.perf_counter(); run(); times[name].append(time.perf_counter() - t)
for name in times:
    runs = times[name][2:]
    print(f"{name}: median {statistics.median(runs)*1000:.0f} ms, min {min(runs)*1000:.0f}, max {max(runs)*1000:.0f} over {len(runs)} runs")
print(f"Sluice / DuckDB (medians): {statistics.median(times['sluice'][2:]) / statistics.median(times['duckdb'][2:]):.2f}x")
PY
"$python" "$dir/both.py" $port "$files" "$query"
# The same query through psql, client start and connection included each run.
hyperfine --warmup 2 --runs 10 -N -n "sluice via psql" "psql -h 127.0.0.1 -p $port -U sluice -d sluice -Atqc \"$query\""

first=$(sql "SELECT date_trunc('hour', min(ts)) + INTERVAL '2 hours' FROM requests")
before=$(sql "SELECT files_scanned FROM sluice_history WHERE source = 'requests'")
sql "SELECT count(*) FROM requests WHERE ts >= '$first' AND ts < TIMESTAMP '$first' + INTERVAL '1 hour'"
after=$(sql "SELECT files_scanned FROM sluice_history WHERE source = 'requests'")
total=$(sql "SELECT files FROM sluice_history WHERE source = 'requests'")
echo "one-hour query from $first: $((after - before)) of $total files scanned"
