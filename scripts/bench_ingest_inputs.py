#!/usr/bin/env python3
"""Inputs of `sluice bench-ingest`, from the peers' bid rows and the real access log.

usage: bench_ingest_inputs.py BIDS_CSV OUT_DIR [LOG_REPEAT]

Writes OUT_DIR/bids.csv (a copy of BIDS_CSV: header-less auction,bidder,price,date_time as
shared/peers/gen_bids.py writes it), OUT_DIR/bids.jsonl (the same rows as JSON objects, one per
line) and OUT_DIR/access.log (testdata/apache_combined_2015.log repeated LOG_REPEAT times,
default 100: one million combined-format lines).
"""
import os
import shutil
import sys


def main(bids_csv, out_dir, repeat=100):
    os.makedirs(out_dir, exist_ok=True)
    shutil.copyfile(bids_csv, os.path.join(out_dir, 'bids.csv'))
    with open(bids_csv) as src, open(os.path.join(out_dir, 'bids.jsonl'), 'w') as out:
        for line in src:
            auction, bidder, price, date_time = line.rstrip('\n').split(',')
            out.write(f'{{"auction": {auction}, "bidder": {bidder}, "price": {price}, "date_time": "{date_time}"}}\n')
    log = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'testdata', 'apache_combined_2015.log')
    with open(log, 'rb') as src:
        lines = src.read()
    with open(os.path.join(out_dir, 'access.log'), 'wb') as out:
        for _ in range(repeat):
            out.write(lines)


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 100)
