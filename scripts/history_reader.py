#!/usr/bin/env python3
"""Reads a source's archived history with DuckDB (not Sluice) and prints what the history tests
compare: row count, rows per status, rows and bytes per hour, distinct clients, and the paths
of the files read.

usage: history_reader.py HISTORY_DIR SOURCE
"""
import datetime
import glob
import json
import os
import sys

import duckdb


def main(root, source):
    files = sorted(glob.glob(os.path.join(root, source, '**', '*.parquet'), recursive=True))
    con = duckdb.connect()
    scan = f"read_parquet({files!r}, hive_partitioning = false)"
    rows = con.sql(f"SELECT count(*) FROM {scan}").fetchall()[0][0]
    status = dict(con.sql(f"SELECT CAST(status AS VARCHAR), count(*) FROM {scan} GROUP BY 1").fetchall())
    hours = {}
    for hour, n, total in con.sql(
        f"SELECT epoch_us(ts) // 3600000000, count(*), sum(coalesce(bytes, 0)) FROM {scan} GROUP BY 1"
    ).fetchall():
        when = datetime.datetime.fromtimestamp(hour * 3600, tz=datetime.timezone.utc)
        hours[when.strftime('%Y-%m-%d %H:00:00')] = [n, int(total)]
    clients = con.sql(f"SELECT count(DISTINCT remote_addr) FROM {scan}").fetchall()[0][0]
    print(json.dumps({
        'rows': rows,
        'status': status,
        'hours': hours,
        'clients': clients,
        'files': [os.path.relpath(f, root) for f in files],
    }, sort_keys=True))


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2])
