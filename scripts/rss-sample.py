#!/usr/bin/env python3
"""Runs a command and samples its resident set (VmRSS) every 10 ms until it exits.

Usage: scripts/rss-sample.py LIMIT_MB COMMAND [ARGS...]

Prints the command's own output, then one line:
  RSS peak=<MB> samples=<n> over_limit=<n> (<ms> ms) over_90pct=<n> p99=<MB> median=<MB>

Why: the server's memory governor reads the resident set itself, so a spike between its
readings is invisible to it; `VmHWM` gives the peak but not how long the process stayed over
the limit. Used for the memory-limit rows of BENCHMARKS.md.
"""

import subprocess
import sys
import time


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    limit = float(sys.argv[1])
    process = subprocess.Popen(sys.argv[2:])
    samples = []
    over_seconds = 0.0
    last = time.monotonic()
    while process.poll() is None:
        value = rss_mb(process.pid)
        now = time.monotonic()
        if value is not None and value > 0:
            samples.append(value)
            if value > limit:
                # Counted as over since the previous sample (a loop takes more than 10 ms).
                over_seconds += now - last
        last = now
        time.sleep(0.01)
    if not samples:
        sys.exit("no samples")
    ordered = sorted(samples)
    over = sum(1 for s in samples if s > limit)
    print(
        f"RSS peak={max(samples):.0f}MB samples={len(samples)} over_limit={over} ({over_seconds * 1000:.0f} ms) "
        f"over_90pct={sum(1 for s in samples if s > 0.9 * limit)} "
        f"p99={ordered[int(len(ordered) * 0.99)]:.0f}MB median={ordered[len(ordered) // 2]:.0f}MB",
        flush=True,
    )
    sys.exit(process.returncode)


if __name__ == "__main__":
    main()
