"""
sensornet's throughput benchmark: one command, ratios against a baseline
measured in the same run.

    python bench/run.py [--total N] [--sensors S] [--connections C] [--pg postgresql://...|temp] [--repeat R]
    python bench/run.py --w2 [--repeat R]

Each server runs in its own process on 127.0.0.1; the load generator
(bench/loadgen.py) runs in another and sends pipelined native lines with
seqs, counting acknowledgements. The default workload is a fleet's (W1):
1,000,000 readings from 1,000 sensors interleaved over 50 connections, since
a handful of sensors hides what an index over 20,000 costs. On a machine
with two cores or more the server is pinned to one core and the load
generator to another, so they do not compete; beside each rate the server's
own CPU time per reading is printed (from /proc), split into the main
(reactor) thread's and the other threads' (writer, compaction,
checkpoints), and for the storing rows the bytes on disk per reading and
the CPU per reading up to the last reading compacted ("with compaction":
a burst leaves some of its compaction for after the rate is taken; in
brackets, the line-acker's CPU per reading over it, the ratio a server kept
busy by this load would sustain). Rows:

- chunk-acker: a bare Twisted server acking all lines of a chunk in one
  write (bench/baseline_server.py): the ceiling of Twisted's I/O here
- line-only: the leanest textbook line server, a LineOnlyReceiver answering
  each line with sendLine (printed for reference: a stricter baseline)
- line-acker: the bare ack server the issues' targets are set against, a
  LineReceiver answering each line with sendLine; ratios are against it
- parse+ack: sensornet with --store none (parsed, acknowledged, not stored)
- floor: the least a pure-Python server must do to ack a reading only once
  it is durably stored (bench/floor_server.py: parse, one SQLite
  transaction per batch with synchronous=FULL, ack), with none of
  sensornet's features: an upper bound for the sqlite row, measured here
  so that what is left between them is the price of the features
- sqlite: sensornet storing into SQLite, acking after commit (compacting
  after 1 s instead of 60, so that compaction's CPU counts in the row)
- sqlite+log: the same with the reading log on (twistd --logfile: one
  timestamped line per reading, as the seed's log.txt)
- postgresql: the same into PostgreSQL (with --pg URL, or --pg temp for a
  throwaway server started here with initdb, fsync on, as in production)

Nothing here asserts a speed: it prints numbers and ratios to read.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waitPort(port: int, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not start")


def sensornetCommand(
    port: int, store: str, workdir: str, http: str = "none", logReadings: bool = False, backlog: int = 1024,
    extra: tuple = (),
) -> list:
    """
    The command line of a sensornet server (twistd's plugin) on
    127.0.0.1:C{port}. It runs the sensornet that C{sys.executable} imports
    from the working directory: the checkout when run from it (C{python -c}
    puts the working directory first on the path), else the installed one.
    """
    return [
        sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
        "-n", "--pidfile=", "--logfile", os.path.join(workdir, "server.log"),
        "sensornet-server", "--listen", f"tcp:{port}:interface=127.0.0.1:backlog={backlog}", "--http", http,
        # The benchmarks scrape /metrics on loopback without a token.
        *(["--http-auth", "none"] if http != "none" else []),
        "--store", store, *extra,
    ] + ([] if logReadings else ["--no-log-readings"])


def stopServer(server: subprocess.Popen, timeout: float = 30.0) -> None:
    """
    SIGTERM, as a service manager would; SIGKILL if it does not exit in time.
    """
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def waitCompacted(path: str, timeout: float) -> float:
    """
    Wait until the SQLite store at C{path} holds no fresh rows; returns the
    seconds waited.
    """
    import sqlite3

    start = time.time()
    while time.time() - start < timeout:
        db = sqlite3.connect(path, timeout=10)
        try:
            if db.execute("SELECT count(*) FROM fresh").fetchone()[0] == 0:
                break
        finally:
            db.close()
        time.sleep(0.2)
    return time.time() - start


def cpuSeconds(pid: int) -> float:
    """
    User plus system CPU time a process (all its threads) has used so far.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threadSeconds(pid: int) -> dict:
    """
    User plus system CPU time of each live thread of a process so far, by
    thread id (the main thread's is the process id).
    """
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            # The thread ended meanwhile.
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def cores(args: argparse.Namespace) -> tuple:
    """
    The CPU sets for the server and the load generator: apart when there are
    two cores or more (and pinning is on), else no pinning.
    """
    available = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(available) < 2:
        return None, None
    return {available[0]}, {available[1]}


def measure(name: str, command: list, port: int, args: argparse.Namespace, files: tuple = ()) -> dict:
    serverCores, loadCores = cores(args)
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if serverCores:
            os.sched_setaffinity(server.pid, serverCores)
        waitPort(port)
        before = cpuSeconds(server.pid)
        threadsBefore = threadSeconds(server.pid)
        load = subprocess.run(
            [sys.executable, os.path.join(HERE, "loadgen.py"), "--port", str(port),
             "--connections", str(args.connections), "--sensors", str(args.sensors),
             "--total", str(args.total), "--batch", str(args.batch), "--seconds", str(args.seconds)],
            capture_output=True, text=True, timeout=args.seconds + 120,
            preexec_fn=(lambda: os.sched_setaffinity(0, loadCores)) if loadCores else None,
        )
        used = cpuSeconds(server.pid) - before
        threadsAfter = threadSeconds(server.pid)
        main = threadsAfter.get(server.pid, 0.0) - threadsBefore.get(server.pid, 0.0)
        if load.returncode != 0:
            raise SystemExit(f"{name}: load generator failed: {load.stderr}")
        result = json.loads(load.stdout)
        result["name"] = name
        result["cpu_us"] = used / result["acked"] * 1e6 if result["acked"] else float("nan")
        # A thread that ended during the load counts in "used" only: the
        # other threads' share is what the main thread's leaves.
        result["main_us"] = main / result["acked"] * 1e6 if result["acked"] else float("nan")
        if files:
            # Bytes per reading are those of the compacted store: wait for
            # the compactor to empty the fresh rows (not part of the rate).
            result["compact_s"] = waitCompacted(files[0], args.seconds)
            # A burst's rate leaves some of its compaction for after the
            # run; every reading pays for it in the end, so the CPU up to
            # the last compacted reading is printed too.
            result["cpu_all_us"] = (cpuSeconds(server.pid) - before) / result["acked"] * 1e6
    finally:
        stopServer(server)
    if files:
        size = sum(os.path.getsize(f) for f in files if os.path.exists(f))
        result["bytes"] = size / result["acked"] if result["acked"] else float("nan")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total", type=int, default=1_000_000, help="lines per row (default 1000000)")
    parser.add_argument("--sensors", type=int, default=1000, help="sensors, interleaved over the connections")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and load to separate cores")
    parser.add_argument(
        "--batch", type=int, default=500,
        help="lines per send on each connection (default 500: a relay's bursts; 1 is a sensor per line)",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="time limit per row")
    parser.add_argument("--repeat", type=int, default=1, help="measure every row this many times; print medians")
    parser.add_argument(
        "--pg", help="PostgreSQL URL for the postgresql row (its database is written to), or 'temp'"
    )
    parser.add_argument(
        "--w2", action="store_true",
        help="run W2 instead: 19,000 sensors (or as many as the open-file limit allows) at one reading every 2 s, "
             "reading log on, against the bare acker, --store none and SQLite (bench/sensors.py --w2; --repeat "
             "is passed on)",
    )
    args = parser.parse_args()
    if args.w2:
        # One command for both workloads: W2's own benchmark, as is.
        command = [sys.executable, os.path.join(HERE, "sensors.py"), "--w2", "--repeat", str(args.repeat)]
        raise SystemExit(subprocess.call(command))
    if args.pg == "temp":
        # The test suite's throwaway server (initdb in a temporary directory),
        # with fsync on so the row measures real durability.
        sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
        from pgserver import PostgreSQLServer

        server = PostgreSQLServer(fsync=True)
        server.initdb()
        server.start()
        try:
            run(args, lambda i: server.createDatabase(f"bench{i}"))
        finally:
            server.destroy()
    else:
        if args.pg and args.repeat > 1:
            raise SystemExit("--repeat with a PostgreSQL URL would store the same readings again (duplicates): "
                             "use --pg temp, which makes a database per run")
        run(args, lambda i: args.pg)


def measureRows(args: argparse.Namespace, pgURL: Optional[str]) -> List[dict]:
    """
    One measurement of every row, each storing row into a new store.
    """
    rows = []
    with tempfile.TemporaryDirectory(prefix="sensornet-bench-") as workdir:
        port = freePort()
        baseline = os.path.join(HERE, "baseline_server.py")
        rows.append(measure("chunk-acker", [sys.executable, baseline, str(port), "chunk"], port, args))
        port = freePort()
        rows.append(measure("line-only", [sys.executable, baseline, str(port), "line"], port, args))
        port = freePort()
        rows.append(measure("line-acker", [sys.executable, baseline, str(port), "linereceiver"], port, args))
        port = freePort()
        rows.append(measure("parse+ack", sensornetCommand(port, "none", workdir), port, args))
        port = freePort()
        path = os.path.join(workdir, "floor.db")
        rows.append(measure("floor", [sys.executable, os.path.join(HERE, "floor_server.py"), str(port), path],
                            port, args))
        port = freePort()
        path = os.path.join(workdir, "bench.db")
        files = (path, path + "-wal")
        rows.append(measure(
            "sqlite", sensornetCommand(port, "sqlite:" + path, workdir, extra=("--compact-after", "1")),
            port, args, files,
        ))
        port = freePort()
        path = os.path.join(workdir, "bench-log.db")
        rows.append(measure(
            "sqlite+log",
            sensornetCommand(port, "sqlite:" + path, workdir, logReadings=True, extra=("--compact-after", "1")),
            port, args, (path, path + "-wal"),
        ))
        if pgURL:
            port = freePort()
            # Compacting after 1 s, as the SQLite rows do: its CPU counts
            # in the run for every store alike.
            rows.append(measure(
                "postgresql", sensornetCommand(port, pgURL, workdir, extra=("--compact-after", "1")), port, args,
            ))
    return rows


def run(args: argparse.Namespace, pgURLs: Callable[[int], Optional[str]]) -> None:
    """
    Measure every row C{args.repeat} times (rows in the same order each
    time, a new store each time: C{pgURLs(i)} gives repeat C{i}'s database)
    and print, per row, the median rate, the median of its ratios to the
    baselines of the same repeat, and the median CPU per reading.
    """
    repeats = [measureRows(args, pgURLs(i)) for i in range(args.repeat)]
    print(f"workload: {args.total:,} readings from {repeats[0][0]['sensors']:,} sensors over "
          f"{args.connections} connections, {args.batch} lines per send; "
          f"server and load pinned apart: {cores(args)[0] is not None}; "
          + (f"medians of {args.repeat} runs (ratio range in brackets)" if args.repeat > 1 else "one run"))
    print(f"{'row':<12} {'readings/s':>12} {'vs line-acker':>22} {'vs line-only':>13} {'CPU us/reading':>15} "
          f"{'reactor+other':>14} {'with compaction':>16} {'bytes/reading':>14} {'acked':>10} {'seconds':>8}")
    for index, row in enumerate(repeats[0]):
        runs = [rows[index] for rows in repeats]
        ratios = sorted(r["rate"] / (rows[2]["rate"] or 1.0) for r, rows in zip(runs, repeats))
        strict = statistics.median(r["rate"] / (rows[1]["rate"] or 1.0) for r, rows in zip(runs, repeats))
        spread = f" [{ratios[0]:.3f}-{ratios[-1]:.3f}]" if len(ratios) > 1 else ""
        sizes = [r["bytes"] for r in runs if "bytes" in r]
        size = f"{statistics.median(sizes):.1f}" if sizes else "-"
        reactor = statistics.median(r["main_us"] for r in runs)
        split = f"{reactor:.2f}+{statistics.median(r['cpu_us'] - r['main_us'] for r in runs):.2f}"
        # CPU per reading up to the last one compacted, and what the
        # line-acker's CPU per reading is of it: the rate a core kept busy
        # by this load would sustain, compaction paid for.
        alls = [(r["cpu_all_us"], rows[2]["cpu_us"]) for r, rows in zip(runs, repeats) if "cpu_all_us" in r]
        compacted = (
            f"{statistics.median(a for a, _ in alls):.2f} ({statistics.median(b / a for a, b in alls):.2f}x)"
            if alls else "-"
        )
        print(f"{row['name']:<12} {statistics.median(r['rate'] for r in runs):>12,.0f} "
              f"{statistics.median(ratios):>8.3f}{spread:>14} {strict:>13.3f} "
              f"{statistics.median(r['cpu_us'] for r in runs):>15.2f} "
              f"{split:>14} {compacted:>16} "
              f"{size:>14} {min(r['acked'] for r in runs):>10} {statistics.median(r['seconds'] for r in runs):>8.2f}")


if __name__ == "__main__":
    main()
