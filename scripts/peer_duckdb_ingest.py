#!/usr/bin/env python3
"""DuckDB parsing the same files as `sluice bench-ingest`: the peer of its parse figures.

Each query reads the whole file and folds every column (so nothing is skipped): the bid files
with read_csv / read_json and explicit column types, the access log as lines split by one
regular expression (DuckDB has no access-log reader). Prints one RESULT line per file, query
and repetition with rows/s of wall time and of process CPU time.

usage: .peers/bin/python peer_duckdb_ingest.py DIR [--threads 1] [--reps 3]
       (DIR as written by bench_ingest_inputs.py)
"""
import argparse
import os
import time

import duckdb

LOG_LINE = r'^(\S+) (\S+) (\S+) \[([^\]]+)\] "(\S+) (\S+) (\S+)" (\d+) (\S+) "([^"]*)" "([^"]*)"'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    d = os.path.abspath(args.dir)
    columns = "{'auction':'BIGINT','bidder':'BIGINT','price':'BIGINT','date_time':'TIMESTAMP'}"
    fold = "count(*), sum(auction), sum(bidder), sum(price), max(date_time)"
    queries = {
        "csv": f"SELECT {fold} FROM read_csv('{d}/bids.csv', header=false, columns={columns}, "
               "timestampformat='%Y-%m-%d %H:%M:%S.%g')",
        "json": f"SELECT {fold} FROM read_json('{d}/bids.jsonl', format='newline_delimited', columns={columns})",
        "log": f"""SELECT count(*), count(DISTINCT regexp_extract(line, '{LOG_LINE}', 1)),
                   sum(TRY_CAST(regexp_extract(line, '{LOG_LINE}', 8) AS INT)),
                   max(try_strptime(regexp_extract(line, '{LOG_LINE}', 4), '%d/%b/%Y:%H:%M:%S %z'))
                   FROM read_csv('{d}/access.log', header=false, delim=E'\\x01', quote='', escape='',
                                 columns={{'line':'VARCHAR'}})""",
    }
    con = duckdb.connect()
    con.execute(f"SET threads = {args.threads}")
    print(f"duckdb {duckdb.__version__} threads={args.threads}")
    for rep in range(args.reps):
        for name, sql in queries.items():
            c = time.process_time()
            t = time.time()
            row = con.execute(sql).fetchone()
            wall = time.time() - t
            cpu = time.process_time() - c
            rows = row[0]
            print(f"RESULT system=duckdb format={name} rep={rep + 1} rows={rows} wall_s={wall:.2f} "
                  f"rows_per_s={rows / wall:.0f} cpu_s={cpu:.2f} rows_per_cpu_s={rows / max(cpu, 0.01):.0f}")


if __name__ == "__main__":
    main()
