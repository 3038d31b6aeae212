"""
How long the SQLite store takes to answer one sensor's rollups
(C{Store.rollups}, what C{GET /api/readings?step=...} reads) when it holds
the rollups of many sensors: a year of hours, and a day of minutes.

    python bench/rollups.py [--sensors 20000] [--days 365] [--probes 200] [--runs 50]
                            [--full-budget 180] [--minute-days 1] [--keep]

The store is built in a temporary directory:

  1. the sensor and series dictionaries through the store's own write path
     (a few readings per sensor, in the last hour);
  2. rollup rows inserted directly (executemany, in key order): 1-hour rows
     over C{--days} for C{--probes} sensors spread among the others, and for
     every other sensor either the same (when the measured insert rate says
     it takes less than C{--full-budget} seconds) or the last day only;
     1-minute rows over the last C{--minute-days} days for every sensor;
  3. the compactor folds the step-1 readings into those rollups, and each
     probe gets a few more readings left uncompacted, as a running server
     always has some.

Then it times C{store.rollups(probe, None, now - days, now, "1h")} and
C{store.rollups(probe, None, now - 1 day, now, "1m")}, C{--runs} times each
over different probes, and prints the median and p99 in milliseconds, the
first run apart (the page cache then holds the file just written, so it is
not a cold read from disk), the row counts, the B-tree depth of each rollup
table and the database size. Target to report against: one sensor over a
year in at most 100 ms with 20,000 sensors stored. No asserts: it measures.
Bounded in time: the build is sized from a measured rate before it starts.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sensornet.reading import Reading  # noqa: E402
from sensornet.store import openStore  # noqa: E402
from sensornet.web.api import bucketsFromRows  # noqa: E402
from sensornet.web.encoding import jsonBytes  # noqa: E402

MINUTE = 60_000_000
HOUR = 3_600_000_000
DAY_SECONDS = 86_400.0

Row = Tuple[int, int, int, float, float, float, int, float]


def sensorName(i: int) -> str:
    return f"site-{i // 100:04d}/sensor-{i % 100:02d}"


def rollupRows(seriesIds: Sequence[int], first: int, last: int, width: int, per: int) -> Iterator[Row]:
    """
    Rollup rows (series, bucket, count, lo, hi, total, last_ts, last) for
    every bucket of C{width} microseconds from C{first} to C{last}
    (exclusive) of each series, in key order; C{per} readings a bucket.
    """
    for sid in seriesIds:
        k = sid
        for bucket in range(first, last, width):
            k += 1
            lo = 15.0 + (k % 11) * 0.5
            yield (sid, bucket, per, lo, lo + 4.25 + (k % 7) * 0.25, per * (lo + 2.0), bucket + width - 1_000_000,
                   lo + 1.5)


def insertRows(db: sqlite3.Connection, table: str, rows: Iterator[Row]) -> Tuple[int, float]:
    """
    Insert C{rows} into C{table} in one transaction: (rows, seconds).
    """
    counted = [0]

    def counting() -> Iterator[Row]:
        for row in rows:
            counted[0] += 1
            yield row

    started = time.perf_counter()
    db.execute("BEGIN")
    db.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", counting())
    db.execute("COMMIT")
    return counted[0], time.perf_counter() - started


def treeDepth(db: sqlite3.Connection, table: str) -> int:
    """
    Levels of C{table}'s B-tree, root to leaf (dbstat walks it in order, so
    the first leaf it meets is at the full depth).
    """
    row = db.execute("SELECT path FROM dbstat WHERE name = ? AND pagetype = 'leaf' LIMIT 1", (table,)).fetchone()
    return str(row[0]).count("/") if row else 0


def timed(runs: int, call: Callable[[int], int]) -> Tuple[List[float], int]:
    """
    C{call(i)} for i in range(runs): each run's milliseconds, and the rows
    the last returned.
    """
    times: List[float] = []
    rows = 0
    for i in range(runs):
        started = time.perf_counter()
        rows = call(i)
        times.append((time.perf_counter() - started) * 1000)
    return times, rows


def report(label: str, times: List[float], rows: int) -> None:
    rest = sorted(times[1:]) or times
    p99 = rest[min(len(rest) - 1, int(round(0.99 * (len(rest) - 1))))]
    print(
        f"{label:<48} median {statistics.median(rest):7.2f} ms   p99 {p99:7.2f} ms   "
        f"first {times[0]:7.2f} ms   ({rows} buckets)",
        flush=True,
    )


def main(options: argparse.Namespace) -> None:
    sensors, days, probesWanted = options.sensors, options.days, min(options.probes, options.sensors)
    directory = tempfile.mkdtemp(prefix="sensornet-rollups-")
    path = os.path.join(directory, "rollups.sqlite3")
    url = f"sqlite:{path}?synchronous=normal"
    started = time.perf_counter()
    now = time.time()
    nowUs = int(now * 1_000_000)
    try:
        # 1. The dictionaries, through the store's write path.
        store = openStore(url)
        t = time.perf_counter()
        batch: List[Reading] = []
        for i in range(sensors):
            for j in range(3):
                ts = now - 3000 + j * 600 + (i % 600)
                batch.append(Reading(sensorName(i), "temperature", 20.0 + j, "C", ts=ts, seq=j,
                                     peer="10.0.0.1:4000", received_at=ts))
            if len(batch) >= 6000:
                store.write(batch)
                batch = []
        if batch:
            store.write(batch)
        print(f"dictionaries: {sensors} sensors, {3 * sensors} readings written through the store in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        store.close()
        db = sqlite3.connect(path)
        names = {name: sid for sid, name in db.execute(
            "SELECT se.id, s.name FROM series se JOIN sensors s ON s.id = se.sensor")}
        db.close()
        ids = sorted(names.values())
        step = max(1, len(ids) // probesWanted)
        probeIds = ids[::step][:probesWanted]
        probeSet = set(probeIds)
        byId = {sid: name for name, sid in names.items()}
        others = [sid for sid in ids if sid not in probeSet]

        # 2. Rollup rows, inserted directly.
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("PRAGMA cache_size=-1000000")
        hourEnd = nowUs - nowUs % HOUR + HOUR
        hourStart = hourEnd - days * 24 * HOUR
        dayStart = hourEnd - 24 * HOUR
        counts: Dict[str, int] = {"rollup_1h": 0, "rollup_1m": 0}
        rows, seconds = insertRows(db, "rollup_1h", rollupRows(probeIds, hourStart, hourEnd, HOUR, 60))
        counts["rollup_1h"] += rows
        rate = rows / seconds
        fullRows = len(others) * days * 24
        projected = fullRows / rate
        free = shutil.disk_usage(directory).free
        bytesPerRow = os.path.getsize(path) / max(1, rows)
        fits = fullRows * bytesPerRow * 1.2 < free / 2
        print(f"1h rows: {len(probeIds)} probe sensors x {days} days = {rows:,} rows in {seconds:.1f} s "
              f"({rate:,.0f} rows/s)", flush=True)
        if projected <= options.full_budget and fits:
            print(f"1h rows: the other {len(others)} sensors get {days} days too ({fullRows:,} rows, "
                  f"projected {projected:.0f} s)", flush=True)
            first = hourStart
        else:
            why = (f"projected {projected:.0f} s > {options.full_budget:.0f} s budget" if fits
                   else f"about {fullRows * bytesPerRow / 1e9:.0f} GB, more than half the free disk")
            print(f"1h rows: NOT building {days} days for the other {len(others)} sensors ({fullRows:,} rows: "
                  f"{why}); they get the last day only", flush=True)
            first = dayStart
        rows, seconds = insertRows(db, "rollup_1h", rollupRows(others, first, hourEnd, HOUR, 60))
        counts["rollup_1h"] += rows
        print(f"1h rows: {rows:,} more in {seconds:.1f} s", flush=True)
        minuteEnd = nowUs - nowUs % MINUTE + MINUTE
        minuteStart = minuteEnd - int(options.minute_days * 24 * 60) * MINUTE
        rows, seconds = insertRows(db, "rollup_1m", rollupRows(ids, minuteStart, minuteEnd, MINUTE, 1))
        counts["rollup_1m"] += rows
        print(f"1m rows: {len(ids)} sensors x {options.minute_days:g} days = {rows:,} rows in {seconds:.1f} s",
              flush=True)
        db.execute("PRAGMA journal_mode=WAL")
        db.close()

        # 3. Compact the dictionary readings into the rollups; leave a few fresh.
        store = openStore(url)
        t = time.perf_counter()
        while store.compactOnce(store.freshWatermark(), 100_000):
            pass
        store.write([Reading(byId[sid], "temperature", 21.5, "C", ts=now - 5, seq=10, received_at=now - 5)
                     for sid in probeIds])
        print(f"compacted in {time.perf_counter() - t:.1f} s; {len(probeIds)} fresh readings left", flush=True)

        db = sqlite3.connect(path)
        for table in counts:
            counts[table] = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        depths = {table: treeDepth(db, table) for table in counts}
        db.close()
        size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
        print(f"stored: {len(ids)} sensors; rollup_1h {counts['rollup_1h']:,} rows (B-tree depth "
              f"{depths['rollup_1h']}), rollup_1m {counts['rollup_1m']:,} rows (depth {depths['rollup_1m']}); "
              f"database {size / 1e6:,.0f} MB", flush=True)

        # 4. Time the queries, each run on another probe.
        order = list(probeIds)
        random.Random(7).shuffle(order)

        def probe(i: int) -> str:
            return byId[order[i % len(order)]]

        def year(i: int) -> int:
            return len(store.rollups(probe(i), None, now - days * DAY_SECONDS, now, "1h"))

        def day(i: int) -> int:
            return len(store.rollups(probe(i), None, now - DAY_SECONDS, now, "1m"))

        def yearEncoded(i: int) -> int:
            rows = store.rollups(probe(i), None, now - days * DAY_SECONDS, now, "1h")
            buckets = bucketsFromRows(rows)
            jsonBytes({"sensor": probe(i), "step": "1h", "since": 0.0, "until": 0.0, "buckets": buckets})
            return len(buckets)

        print(flush=True)
        report(f"store.rollups(probe, {days} days, 1h)", *timed(options.runs, year))
        report("store.rollups(probe, 1 day, 1m)", *timed(options.runs, day))
        report(f"the same {days} days, 1h, + the API's JSON encoding", *timed(options.runs, yearEncoded))
        print(f"target: one sensor over a year <= 100 ms with {sensors} sensors stored", flush=True)
        store.close()
    finally:
        if options.keep:
            print(f"kept: {path}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
        print(f"total {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sensors", type=int, default=20_000, help="sensors stored (default 20000)")
    parser.add_argument("--days", type=int, default=365, help="days of 1h rollups per probe (default 365)")
    parser.add_argument("--probes", type=int, default=200, help="sensors with the full range, queried (default 200)")
    parser.add_argument("--runs", type=int, default=50, help="timed queries per case (default 50)")
    parser.add_argument("--full-budget", type=float, default=180.0,
                        help="seconds the full 1h build may take, else the others get one day (default 180)")
    parser.add_argument("--minute-days", type=float, default=1.0,
                        help="days of 1m rollups for every sensor (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the database and print its path")
    main(parser.parse_args())
