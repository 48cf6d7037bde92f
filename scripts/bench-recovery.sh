#!/usr/bin/env bash
# Recovery time of a view with a large state (BENCHMARKS.md, durability):
#   scripts/bench-recovery.sh [ROWS] [MEMORY_LIMIT]
# Builds a view with one group per source row (a 100-byte text per group, kept twice), waits
# until every row is in, reads the state size, kills the server with SIGKILL and restarts it
# over the same data directory; prints the server's recovery line and the time until the view
# answers a query again.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-4000000}
limit=${2:-512MB}
bin=${SLUICE_BIN:-${CARGO_TARGET_DIR:-target}/release/sluice}
dir=$(mktemp -d)
trap 'kill -9 $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
port=16543; http=16544

start() {
  "$bin" serve --data-dir "$dir/data" --pg-addr 127.0.0.1:$port --http-addr 127.0.0.1:$http --memory-limit "$limit" \
    > "$dir/out.log" 2> "$dir/err.log" &
  pid=$!
  until grep -q "sluice serving" "$dir/out.log" 2>/dev/null; do sleep 0.05; done
}
sql() { psql -h 127.0.0.1 -p $port -U sluice -d sluice -Atqc "$1"; }

start
sql "CREATE SOURCE s (seq BIGINT, tag VARCHAR) WITH (connector = 'datagen', datagen.rows.per.second = '0',
     datagen.max.rows = '$rows', fields.seq.kind = 'sequence', fields.tag.length = '100')"
sql "CREATE MATERIALIZED VIEW per_row AS SELECT seq, count(*) AS n, min(tag) AS tag FROM s GROUP BY seq"
t0=$(date +%s.%N)
until [ "$(sql "FLUSH; SELECT count(*) FROM per_row" | tail -1)" = "$rows" ]; do sleep 1; done
t1=$(date +%s.%N)
bytes=$(curl -s 127.0.0.1:$http/metrics | awk '/^sluice_state_bytes/ {print $2}')
echo "ingest: $rows rows in $(echo "$t1 - $t0" | bc) s; state: $((bytes / 1048576)) MB (RocksDB SST + memtables); RSS $(( $(awk '/VmHWM/ {print $2}' /proc/$pid/status) / 1024 )) MB peak"
kill -9 $pid; wait $pid 2>/dev/null || true
t2=$(date +%s.%N)
start
until [ "$(sql "SELECT count(*) FROM per_row" 2>/dev/null)" = "$rows" ]; do sleep 0.05; done
t3=$(date +%s.%N)
grep "sluice recovered" "$dir/out.log"
echo "kill -9 to the view answering again (process start included): $(echo "$t3 - $t2" | bc) s"
