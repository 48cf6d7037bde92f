#!/usr/bin/env bash
# Batch queries over archived history (BENCHMARKS.md, history):
#   scripts/bench-history.sh [ROWS]
# A datagen source of web requests (ROWS rows generated as fast as they are archived, 10 ms of
# event time apart, so about a day for 10M rows) is archived by `sluice serve`; then the same scan-aggregate runs through psql
# against Sluice and through DuckDB (Python package) over the same Parquet files, timed side by
# side with hyperfine; last, the files a one-hour query opens are read off sluice_history.
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
table="read_parquet('$files', hive_partitioning = false)"
duck_query=${query//requests/$table}
# DuckDB is timed inside one Python process (its start-up and import are not the query's);
# Sluice through psql, a connection per run included, by hyperfine.
cat > "$dir/duck.py" <<PY
import duckdb, statistics, sys, time
con = duckdb.connect()
con.sql("SET threads = 2")
q = """$duck_query"""
print(con.sql(q).fetchall())
times = []
for _ in range(12):
    t = time.perf_counter(); con.sql(q).fetchall(); times.append(time.perf_counter() - t)
times = times[2:]
print(f"DuckDB: mean {statistics.mean(times)*1000:.1f} ms, median {statistics.median(times)*1000:.1f} ms, min {min(times)*1000:.1f} ms over {len(times)} runs")
PY
echo "Sluice:"; sql "$query"
echo "DuckDB:"; "$python" "$dir/duck.py"
hyperfine --warmup 2 --runs 10 -N -n sluice "psql -h 127.0.0.1 -p $port -U sluice -d sluice -Atqc \"$query\""
echo "DuckDB again (after Sluice, same machine state):"; "$python" "$dir/duck.py" | tail -1

first=$(sql "SELECT date_trunc('hour', min(ts)) + INTERVAL '2 hours' FROM requests")
before=$(sql "SELECT files_scanned FROM sluice_history WHERE source = 'requests'")
sql "SELECT count(*) FROM requests WHERE ts >= '$first' AND ts < TIMESTAMP '$first' + INTERVAL '1 hour'"
after=$(sql "SELECT files_scanned FROM sluice_history WHERE source = 'requests'")
total=$(sql "SELECT files FROM sluice_history WHERE source = 'requests'")
echo "one-hour query from $first: $((after - before)) of $total files scanned"
