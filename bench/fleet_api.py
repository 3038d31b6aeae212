"""
Issue 11's "a sensor's acks unaffected while dashboards poll", at 200,000
stored series: the acknowledgement latency of well-behaved sensors against
a server whose SQLite store holds --series series, without dashboards
(the baseline, measured in the same run) and with --dashboards pollers each
asking every --poll seconds for what the fleet dashboard asks for
(/api/fleet, the first page of /api/sensors by name and by -last_seen,
a page filtered by state, a prefix page, sparklines of 100 series).

    python bench/fleet_api.py [--series 200000] [--dashboards 3] [--poll 1] [--sensors 200] [--duration 20]

Prints one JSON row per run (ack p50/p99/max, the polls answered and their
latency and size) and the p99 ratio polled / baseline. The issue measured
1.96 s of p99 with three dashboards polling the unpaged /api/sensors every
5 s after 200,000 names. Nothing is asserted: it prints numbers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from urllib.parse import urlencode
from urllib.request import urlopen

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import freePort, sensornetCommand  # noqa: E402
from sensors import measure, raiseFileLimit  # noqa: E402


def fleetStore(path: str, series: int) -> None:
    """
    A SQLite store at C{path} with C{series} sensors of one temperature
    series each, written straight into the tables (the writer would take
    minutes), received 10 s apart, some stopped an hour ago (silent).
    """
    sys.path.insert(0, os.path.dirname(HERE))
    from sensornet.store import openStore

    openStore("sqlite:" + path).close()
    now = int(time.time() * 1_000_000)
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO sensors (id, name, created_at) VALUES (?, ?, 0)",
                       ((i + 1, f"node-{i:06d}") for i in range(series)))
        db.executemany(
            "INSERT INTO series (id, sensor, kind, unit, value, ts, count, first_seen, last_seen, max_seq) "
            "VALUES (?, ?, 'temperature', 'C', ?, ?, 100, ?, ?, 99)",
            ((i + 1, i + 1, 20.0 + i % 10, now - lag, now - lag - 990_000_000, now - lag)
             for i in range(series) for lag in [3_600_000_000 if i % 50 == 0 else i % 10_000_000]),
        )


def dashboard(httpPort: int, poll: float, stop, results) -> None:
    """
    One dashboard: every C{poll} seconds, what the fleet page asks for.
    """
    base = f"http://127.0.0.1:{httpPort}"
    series = "&".join(urlencode({"series": f"node-{i:06d}:temperature"}) for i in range(0, 100_000, 1000))
    paths = [
        "/api/fleet",
        "/api/sensors?limit=100",
        "/api/sensors?limit=100&sort=-last_seen",
        "/api/sensors?limit=100&state=silent",
        "/api/sensors?limit=100&prefix=node-1234",
        "/api/sparklines?" + series,
    ]
    latencies, sizes, errors = [], [], 0
    reasons: dict = {}
    # The server starts after the pollers: wait for its HTTP side first.
    while not stop.is_set():
        try:
            with urlopen(base + "/healthz", timeout=5):
                break
        except OSError:
            time.sleep(0.1)
    while not stop.is_set():
        started = time.monotonic()
        for path in paths:
            t = time.monotonic()
            try:
                with urlopen(base + path, timeout=30) as response:
                    sizes.append(len(response.read()))
                latencies.append(time.monotonic() - t)
            except OSError as e:
                errors += 1
                reasons[f"{path.split('?')[0]}: {getattr(e, 'code', None) or e}"] = 1 + reasons.get(
                    f"{path.split('?')[0]}: {getattr(e, 'code', None) or e}", 0)
                time.sleep(0.2)
        stop.wait(max(0.0, poll - (time.monotonic() - started)))
    results.put({"latencies": latencies, "sizes": sizes, "errors": errors, "reasons": reasons})


def row(name: str, dbPath: str, dashboards: int, args: argparse.Namespace, workdir: str) -> dict:
    rowDir = os.path.join(workdir, name)
    os.mkdir(rowDir)
    store = os.path.join(rowDir, "fleet.db")
    shutil.copy(dbPath, store)
    port, httpPort = freePort(), freePort()
    command = sensornetCommand(port, "sqlite:" + store, rowDir, http=f"tcp:{httpPort}:interface=127.0.0.1")
    stop = multiprocessing.Event()
    results: multiprocessing.Queue = multiprocessing.Queue()
    pollers = [multiprocessing.Process(target=dashboard, args=(httpPort, args.poll, stop, results))
               for _ in range(dashboards)]
    for p in pollers:
        p.start()
    try:
        measured = measure(name, command, port, args, httpPort)
    finally:
        stop.set()
    polls = [results.get(timeout=120) for _ in pollers]
    for p in pollers:
        p.join(timeout=30)
    latencies = sorted(x for r in polls for x in r["latencies"])
    sizes = [x for r in polls for x in r["sizes"]]
    out = {k: measured[k] for k in ("name", "sensors", "acks", "ack_ms_p50", "ack_ms_p99", "ack_ms_max",
                                    "server_rss_peak_mib")}
    out.update({
        "dashboards": dashboards,
        "requests": len(latencies),
        "request_errors": sum(r["errors"] for r in polls),
        "request_error_reasons": {k: v for r in polls for k, v in r["reasons"].items()},
        "request_ms_p50": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
        "request_ms_p99": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000, 1)
        if latencies else None,
        "largest_answer_bytes": max(sizes) if sizes else None,
    })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=200_000)
    parser.add_argument("--dashboards", type=int, default=3)
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between a dashboard's rounds")
    parser.add_argument("--sensors", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--stall-ms", type=float, default=50.0)
    args = parser.parse_args()
    # Bounded: a bench run is minutes, not hours.
    args.series = min(args.series, 1_000_000)
    args.duration = min(args.duration, 120.0)
    args.dashboards = min(args.dashboards, 20)
    raiseFileLimit(args.sensors + 1000)
    workdir = tempfile.mkdtemp(prefix="sensornet-fleet-bench-")
    try:
        dbPath = os.path.join(workdir, "template.db")
        t = time.monotonic()
        fleetStore(dbPath, args.series)
        print(json.dumps({"store": dbPath, "series": args.series, "seconds": round(time.monotonic() - t, 1)}))
        baseline = row("no-dashboards", dbPath, 0, args, workdir)
        print(json.dumps(baseline))
        polled = row(f"{args.dashboards}-dashboards", dbPath, args.dashboards, args, workdir)
        print(json.dumps(polled))
        if baseline["ack_ms_p99"] and polled["ack_ms_p99"] is not None:
            print(json.dumps({"ack_p99_ratio_polled_vs_baseline":
                              round(polled["ack_ms_p99"] / baseline["ack_ms_p99"], 2)}))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
