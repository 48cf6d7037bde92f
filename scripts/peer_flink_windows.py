"""Flink SQL on the peers' bid files for the event-time benchmarks (BENCHMARKS.md).

Runs window aggregations that `../shared/peers/run_flink.py` does not have, on the same input
(`gen_bids.py` CSV parts) and with the same settings (parallelism 2, blackhole sink, watermark
on date_time), and prints one RESULT line per query and repetition:

  hop60      HOP 1 s slide, 60 s size, COUNT(*) and SUM(price) per auction and window
  q5w        10 s TUMBLE, COUNT(*) and SUM(price) per auction and window (for reference)

Flink emits each window once when the watermark passes it, so these are the peers of
Sluice's `_eowc` bench queries.

Usage (with the peers' virtualenv, see ../shared/peers/README.md):
  .peers/bin/python scripts/peer_flink_windows.py data/bids_5m 5000000 --reps 2 --delay 1
"""

import argparse
import os
import time

from pyflink.table import EnvironmentSettings, TableEnvironment


def process_cpu_seconds():
    """CPU seconds of this process and its children (the JVM runs as a child)."""
    total = 0.0
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[1] is the parent pid; utime and stime are fields[11] and fields[12]
        if int(pid) == me or int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data_dir")
    ap.add_argument("n_events", type=int)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--queries", default="hop60,q5w")
    ap.add_argument("--delay", type=int, default=1, help="watermark delay in seconds")
    args = ap.parse_args()

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    conf.set("parallelism.default", str(args.parallelism))
    conf.set("table.exec.resource.default-parallelism", str(args.parallelism))
    conf.set("table.local-time-zone", "UTC")
    conf.set("pipeline.object-reuse", "true")
    path = "file://" + os.path.abspath(args.data_dir)
    env.execute_sql(f"""
        CREATE TABLE bid (
            auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP(3),
            WATERMARK FOR date_time AS date_time - INTERVAL '{args.delay}' SECOND
        ) WITH ('connector' = 'filesystem', 'path' = '{path}', 'format' = 'csv')""")
    env.execute_sql("""
        CREATE TABLE sink (
            auction BIGINT, window_start TIMESTAMP(3), window_end TIMESTAMP(3), cnt BIGINT, sum_price BIGINT
        ) WITH ('connector' = 'blackhole')""")
    windows = {
        "hop60": "HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '1' SECOND, INTERVAL '60' SECOND)",
        "q5w": "TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND)",
    }
    for rep in range(args.reps):
        print(f"--- rep {rep + 1}", flush=True)
        for name in args.queries.split(","):
            sql = (
                "INSERT INTO sink SELECT auction, window_start, window_end, COUNT(*), SUM(price) "
                f"FROM TABLE({windows[name]}) GROUP BY auction, window_start, window_end"
            )
            cpu = process_cpu_seconds()
            started = time.time()
            env.execute_sql(sql).wait()
            wall = time.time() - started
            cpu = process_cpu_seconds() - cpu
            print(
                f"RESULT system=flink query={name} events={args.n_events} parallelism={args.parallelism} "
                f"wall_s={wall:.2f} events_per_s={args.n_events / wall:,.0f} cpu_s={cpu:.1f} "
                f"events_per_cpu_s={args.n_events / cpu:,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
