#!/usr/bin/env python3
"""Reference answers over a combined-format access log, computed without Sluice's parser.

Prints one JSON object: per-status counts, per-hour request counts and byte sums, per-method
counts, distinct client addresses, and the malformed lines (1-based numbers and byte offsets).
The file-source tests compare Sluice's views over the same file with it.

usage: access_log_reference.py FILE
"""
import collections
import datetime
import json
import re
import sys

LINE = re.compile(
    r'^(\S+) (\S+) (\S+) \[([^\]]+)\] "((?:[^"\\]|\\.)*)" (\d{3}|-) (\d+|-) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"'
)


def main(path):
    status = collections.Counter()
    hours = collections.Counter()
    hour_bytes = collections.Counter()
    methods = collections.Counter()
    clients = set()
    malformed = []
    offset = 0
    with open(path, 'rb') as f:
        for number, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            line = raw.decode('utf-8').rstrip('\r\n')
            if not line.strip():
                continue
            m = LINE.match(line)
            if not m:
                malformed.append({'line': number, 'offset': start})
                continue
            host, _ident, _user, time, request, code, size = m.group(1, 2, 3, 4, 5, 6, 7)
            when = datetime.datetime.strptime(time, '%d/%b/%Y:%H:%M:%S %z').astimezone(datetime.timezone.utc)
            hour = when.strftime('%Y-%m-%d %H:00:00')
            status[code] += 1
            hours[hour] += 1
            hour_bytes[hour] += 0 if size == '-' else int(size)
            parts = request.split()
            if len(parts) >= 2:
                methods[parts[0]] += 1
            clients.add(host)
    print(json.dumps({
        'rows': sum(status.values()),
        'status': dict(status),
        'hours': {h: [hours[h], hour_bytes[h]] for h in hours},
        'methods': dict(methods),
        'clients': len(clients),
        'malformed': malformed,
    }, sort_keys=True))


if __name__ == '__main__':
    main(sys.argv[1])
