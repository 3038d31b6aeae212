"""
Many concurrent sensors at the seed's cadence against one server: the
acknowledgement latency (p50/p99/max) and the server's memory per
connection.

    python bench/sensors.py --sensors 20000 [--interval 2] [--duration 20] [--store none|sqlite]
    python bench/sensors.py --w2 [--duration 40] [--repeat 2]
    python bench/sensors.py --churn 6 --duration 3 [--store sqlite]
    python bench/sensors.py --purge [--sensors 5000] [--duration 30]

Starts the server with this Python's twistd on 127.0.0.1 (the server runs
with C{python -c}, so the current directory comes first on its path: run
from a checkout's root it runs that checkout's code; from elsewhere the
installed package, or what PYTHONPATH names), spreads the sensors over a few load
processes (plain sockets and epoll, so the load is not Twisted measuring
itself), each sensor sending one native reading with a seq every --interval
seconds, phases spread evenly. Latency is from the send() of a line to the
arrival of its ack. Memory per connection is the growth of the server's
resident memory between no connections and all connected, divided by the
count. On a machine with two cores or more the server is pinned to one core
and the load processes to another (as bench/run.py does), and the server's
CPU time per acknowledged reading is printed. A "stall" is a stretch of
sends whose acks took over --stall-ms: the count of such stretches and their
spacing show a periodic pause. Nothing is asserted: it prints numbers.

--w2 is issue 9's workload W2: 19,000 sensors (or as many as the open-file
hard limit allows, less a reserve of 100 descriptors for the server's own
files), one reading every 2 s each, 40 s of sending, the reading log on and
written to a file, measured against three servers one after the other in the
same run: the bare ack server (bench/baseline_server.py, a LineOnlyReceiver),
sensornet --store none and sensornet with its default store (SQLite in a
temporary directory; --compact-after 10, so that compaction runs through
the measurement, see W2_SQLITE_ARGS). Targets: p99 <= 20 ms and max <= 100 ms for the
default store, p99 <= 5 ms for --store none. SENSORNET_GC_LOG_MS is passed
through to the servers: set it (such as 5) and the server logs each garbage
collection that took longer, which this prints by generation, with its
freezes (sensornet.gctuning) and, at the server's stop, how many unreachable
objects a full collection found once everything was unfrozen.

--purge measures issue 9's "ingest p99 during a purge within 10 % of
without": it writes a store holding --old-series series of a day of
one-minute readings stamped ten days ago (compacted: blocks and rollups),
copies it, and measures the same sensors (default 5,000 at 2 s, log off)
against a server on each copy: one keeping everything (the default
retention), one whose retention (raw:1d,1m:2d,1h:3d) makes the maintenance
thread expire all of the old data while the sensors send. It prints both
rows, the rows expired during each, and the p99 ratio.

--churn ROUNDS connects all the sensors, sends for --duration seconds and
closes them, ROUNDS times against one server, and prints the server's
resident memory after each round: what closed connections leave behind.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import cpuSeconds, freePort, sensornetCommand, stopServer, waitPort  # noqa: E402

# The descriptors a server keeps besides its sensors' (listeners, log files,
# the store, epoll, HTTP): what the open-file hard limit must leave free.
FD_RESERVE = 100

#: W2's SQLite row compacts what is over 10 s old (the default is 60 s), so
#: that the compactor works in its steady state through most of the 40 s
#: measured, as it does on a server that runs for days: with the default it
#: would start after the run. Each series is then compacted every 10 s, in
#: blocks of 5 readings: more compaction work a reading than the default's.
W2_SQLITE_ARGS = ("--compact-after", "10")

#: Seconds a load process keeps receiving after its last send, for the acks
#: still on their way (see loadProcess).
DRAIN_SECONDS = 2.0

W2_SENSORS = 19_000


def raiseFileLimit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(n, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def scrape(port: int) -> dict:
    """
    The server's own view from /metrics: acknowledgement latency and commit
    time quantiles (upper bucket bounds), batch sizes.
    """
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("sensornet_store_expired_rows", "sensornet_store_compacted_readings",
                           "sensornet_sqlite_checkpoint_failures"):
            out[family.name + "_total"] = sum(s.value for s in family.samples if s.name.endswith("_total"))
        if family.name in ("sensornet_ack_latency_seconds", "sensornet_commit_seconds", "sensornet_batch_size"):
            buckets = [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]
            total = buckets[-1][1] if buckets else 0
            for q in (0.5, 0.99):
                bound = next((le for le, count in buckets if total and count >= q * total), None)
                out[f"{family.name}_p{int(q * 100)}_le"] = bound
            out[f"{family.name}_count"] = total
            # How many took over 50 ms by the server's own clock: commits
            # (the writer held up: a lock, a checkpoint) and acks (from a
            # chunk's arrival to its reply), to set beside the stalls the
            # sensors saw.
            within = next((count for le, count in buckets if le >= 0.05), total)
            if family.name == "sensornet_commit_seconds":
                out["sensornet_commits_over_50ms"] = total - within
            if family.name == "sensornet_ack_latency_seconds":
                out["sensornet_acks_over_50ms"] = total - within
    return out


def loadProcess(index, port, count, interval, duration, connected, go, results, loadCores=None, release=None):
    """
    One load process: open C{count} connections, report, wait for C{go},
    then send at cadence for C{duration} seconds and report latencies, each
    with the time its line was sent, and how many lines were never
    acknowledged (after up to C{DRAIN_SECONDS} more of receiving). A reply of a bare C{ack} (the baseline
    server's, which knows no seqs) answers the oldest line outstanding on
    its connection, as replies come in line order.
    """
    if loadCores:
        os.sched_setaffinity(0, loadCores)
    raiseFileLimit(count + 100)
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(count):
        for attempt in range(50):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit("could not connect")
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, i)
    connected.put(index)
    go.wait()
    names = [b"s%d-%d" % (index, i) for i in range(count)]
    sentAt = [dict() for _ in range(count)]
    seq = [0] * count
    buffers = [b""] * count
    latencies = []
    sends = []
    start = time.monotonic()
    end = start + duration
    phases = [interval * i / count for i in range(count)]
    cycle = 0
    pointer = 0

    def receive(i):
        data = buffers[i] + socks[i].recv(65536)
        *lines, buffers[i] = data.split(b"\n")
        t = time.monotonic()
        for line in lines:
            if line.startswith(b"ack "):
                sent = sentAt[i].pop(int(line[4:]), None)
            elif line == b"ack" and sentAt[i]:
                sent = sentAt[i].pop(next(iter(sentAt[i])))
            else:
                sent = None
            if sent is not None:
                latencies.append(t - sent)
                sends.append(sent)
    # After the last send, acks still on their way are waited for (up to
    # DRAIN_SECONDS, receiving only): what is left unacknowledged then was
    # lost or is very late, not merely in flight when sending stopped.
    drainUntil = end + DRAIN_SECONDS
    while True:
        now = time.monotonic()
        if now >= end:
            if now >= drainUntil or not any(sentAt):
                break
            for key, _ in sel.select(timeout=0.01):
                receive(key.data)
            continue
        # Send every sensor whose turn has come.
        while now >= start + cycle * interval + phases[pointer]:
            i = pointer
            seq[i] += 1
            line = b"temperature,sensor=%s,unit=C value=21.5,seq=%di\n" % (names[i], seq[i])
            try:
                socks[i].send(line)
                sentAt[i][seq[i]] = time.monotonic()
            except BlockingIOError:
                pass
            pointer += 1
            if pointer == count:
                pointer = 0
                cycle += 1
        for key, _ in sel.select(timeout=0.002):
            receive(key.data)
    unacked = sum(len(d) for d in sentAt)
    results.put({"latencies": latencies, "sends": sends, "unacked": unacked})
    if release is not None:
        # Closing 10,000 connections keeps the server busy for a while: not
        # before every load process has its acks (the last acks of the
        # other process were measured 70-240 ms late when this one closed
        # first), and after the server's CPU time was read.
        release.wait(timeout=120)
    for s in socks:
        s.close()


def loadCores() -> tuple:
    """
    The CPU sets for the server and the load processes: apart when there are
    two cores or more, else no pinning.
    """
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return {available[0]}, set(available[1:])


def stalls(sends: list, latencies: list, thresholdMs: float) -> dict:
    """
    The stretches of time whose sends waited over C{thresholdMs} for their
    acks (sends less than a second apart belong to one stretch): how many,
    their mean spacing in seconds, and the worst latency and the start of
    each (the first twelve).
    """
    slow = sorted((sent, latency) for sent, latency in zip(sends, latencies) if latency * 1000 > thresholdMs)
    groups: list = []
    for sent, latency in slow:
        if groups and sent - groups[-1][1] < 1.0:
            groups[-1][1] = sent
            if latency > groups[-1][2]:
                groups[-1][2:] = [latency, sent]
        else:
            groups.append([sent, sent, latency, sent])
    starts = [g[0] for g in groups]
    spacing = (starts[-1] - starts[0]) / (len(starts) - 1) if len(starts) > 1 else None
    return {
        "count": len(groups),
        "every_s": round(spacing, 2) if spacing else None,
        "worst_ms": [round(g[2] * 1000) for g in groups[:12]],
        # CLOCK_MONOTONIC, shared by every process on the machine: to set
        # beside the server's own timings.
        "starts_monotonic": [round(g[0], 3) for g in groups[:12]],
        "worst_sent_monotonic": [round(g[3], 3) for g in groups[:12]],
        "ends_monotonic": [round(g[1], 3) for g in groups[:12]],
    }


def gcLog(path: str) -> dict:
    """
    The slow collections the server logged (sensornet.gctuning, with
    SENSORNET_GC_LOG_MS set), by generation: how many, and their longest.
    """
    out: dict = {}
    # twistd rotates its log every megabyte: the oldest (highest number)
    # first, the current file last.
    rotated = sorted(glob.glob(glob.escape(path) + ".*"), key=lambda p: -int(p.rsplit(".", 1)[1]))
    for name in rotated + [path]:
        if os.path.exists(name):
            _readGCLog(name, out)
    return out


def _readGCLog(path: str, out: dict) -> None:
    with open(path, errors="replace") as f:
        for line in f:
            if "froze " in line and " objects in " in line:
                words = line.split("froze ", 1)[1].split()
                entry = out.setdefault("freezes", {"count": 0, "max_ms": 0.0, "frozen": 0})
                entry["count"] += 1
                entry["max_ms"] = max(entry["max_ms"], float(words[3]))
                entry["frozen"] = int(words[0])
                continue
            if "unfrozen at stop" in line:
                out["unreachable_at_stop"] = int(line.split("found ", 1)[1].split()[0])
                continue
            if "garbage collection of generation" not in line:
                continue
            words = line.split("garbage collection of generation ", 1)[1].split()
            generation, ms = words[0], float(words[2])
            entry = out.setdefault("gen" + generation, {"count": 0, "max_ms": 0.0})
            entry["count"] += 1
            entry["max_ms"] = max(entry["max_ms"], ms)


def measure(name: str, command: list, port: int, args: argparse.Namespace, httpPort=None, logPath=None) -> dict:
    """
    Start a server with C{command}, connect C{args.sensors} sensors, send at
    cadence for C{args.duration} seconds and return what was measured.
    """
    serverCores, clientCores = loadCores()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if serverCores:
            os.sched_setaffinity(server.pid, serverCores)
        waitPort(port)
        time.sleep(0.5)
        before = rss(server.pid)
        connected = multiprocessing.Queue()
        results = multiprocessing.Queue()
        go = multiprocessing.Event()
        release = multiprocessing.Event()
        share = args.sensors // args.processes
        procs = [
            multiprocessing.Process(
                target=loadProcess,
                args=(i, port, share, args.interval, args.duration, connected, go, results, clientCores, release),
            )
            for i in range(args.processes)
        ]
        t0 = time.monotonic()
        for p in procs:
            p.start()
        for _ in procs:
            connected.get(timeout=300)
        connectSeconds = time.monotonic() - t0
        time.sleep(1.0)
        after = rss(server.pid)
        cpuBefore = cpuSeconds(server.pid)
        go.set()
        goAt = time.monotonic()
        profile = os.environ.get("SENSORNET_BENCH_PROFILE")
        spy = None
        if profile:
            # py-spy (pip install py-spy) samples the server while the load runs.
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(server.pid), "--duration", str(int(args.duration)),
                 "--format", "raw", "--output", f"{profile}.{name}", "--threads", "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        latencies: list = []
        sends: list = []
        unacked = 0
        for _ in procs:
            r = results.get(timeout=args.duration + 120)
            latencies += r["latencies"]
            sends += r["sends"]
            unacked += r["unacked"]
        cpu = cpuSeconds(server.pid) - cpuBefore
        release.set()
        for p in procs:
            p.join(timeout=30)
        if spy is not None:
            spy.wait(timeout=60)
        peak = rss(server.pid)
        serverSide = scrape(httpPort) if httpPort else None
    finally:
        stopServer(server, timeout=60)
    found = stalls(sends, latencies, args.stall_ms)
    latencies.sort()
    n = len(latencies)

    def pct(p):
        return round(latencies[min(n - 1, int(p * n))] * 1000, 2) if n else None

    sensorsNow = share * args.processes
    return {
        "name": name,
        "sensors": sensorsNow,
        "connect_seconds": round(connectSeconds, 2),
        "acks": n,
        "unacked_at_end": unacked,
        "readings_per_s": round(n / args.duration, 1),
        "ack_ms_p50": pct(0.50),
        "ack_ms_p99": pct(0.99),
        "ack_ms_max": round(latencies[-1] * 1000, 2) if n else None,
        "cpu_us_per_reading": round(cpu / n * 1e6, 1) if n else None,
        "stalls": found,
        "go_monotonic": round(goAt, 3),
        "slow_collections": gcLog(logPath) if logPath else None,
        "server_rss_idle_mib": round(before / 2**20, 1),
        "server_rss_connected_mib": round(after / 2**20, 1),
        "server_rss_peak_mib": round(peak / 2**20, 1),
        "bytes_per_connection": round((after - before) / sensorsNow),
        "server_side": serverSide,
    }


def churn(store: str, workdir: str, args: argparse.Namespace) -> dict:
    """
    Connection churn against one sensornet server: C{args.churn} rounds,
    each connecting C{args.sensors} sensors, sending for C{args.duration}
    seconds and closing them all; the server's resident memory after each
    round shows whether closed connections leave anything behind.
    """
    if store == "sqlite":
        store = "sqlite:" + os.path.join(workdir, "churn.db")
    port = freePort()
    command = sensornetCommand(port, store, workdir, logReadings=args.log_readings, backlog=4096)
    serverCores, clientCores = loadCores()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    memory = []
    acks = 0
    try:
        if serverCores:
            os.sched_setaffinity(server.pid, serverCores)
        waitPort(port)
        time.sleep(0.5)
        memory.append(round(rss(server.pid) / 2**20, 1))
        share = args.sensors // args.processes
        for _ in range(args.churn):
            connected = multiprocessing.Queue()
            results = multiprocessing.Queue()
            go = multiprocessing.Event()
            procs = [
                multiprocessing.Process(
                    target=loadProcess,
                    args=(i, port, share, args.interval, args.duration, connected, go, results, clientCores),
                )
                for i in range(args.processes)
            ]
            for p in procs:
                p.start()
            for _ in procs:
                connected.get(timeout=300)
            go.set()
            for _ in procs:
                acks += len(results.get(timeout=args.duration + 120)["latencies"])
            for p in procs:
                p.join(timeout=30)
            time.sleep(2.0)
            memory.append(round(rss(server.pid) / 2**20, 1))
    finally:
        stopServer(server, timeout=60)
    return {
        "rounds": args.churn,
        "sensors_per_round": share * args.processes,
        "acks": acks,
        "server_rss_mib_by_round": memory,
        "collector": gcLog(os.path.join(workdir, "server.log")),
    }


def sensornetRow(name: str, store: str, workdir: str, args: argparse.Namespace, extra: tuple = ()) -> dict:
    """
    Measure a sensornet server storing into C{store} (C{none}, C{sqlite}, or
    a store URL), its reading log written to a file in C{workdir}, with
    the options C{extra} and C{--server-arg}'s.
    """
    rowDir = os.path.join(workdir, name)
    os.mkdir(rowDir)
    if store == "sqlite":
        store = "sqlite:" + os.path.join(rowDir, "bench.db")
    port = freePort()
    httpPort = freePort()
    command = sensornetCommand(
        port, store, rowDir, http=f"tcp:{httpPort}:interface=127.0.0.1",
        logReadings=args.log_readings, backlog=4096, extra=(*extra, *args.server_arg),
    )
    return measure(name, command, port, args, httpPort, os.path.join(rowDir, "server.log"))


def bareRow(args: argparse.Namespace) -> dict:
    """
    Measure the bare ack server (a LineOnlyReceiver answering each line).
    """
    port = freePort()
    command = [sys.executable, os.path.join(HERE, "baseline_server.py"), str(port), "line"]
    return measure("bare", command, port, args)


PURGE_RETENTION = "raw:1d,1m:2d,1h:3d"


def oldStore(path: str, series: int, perSeries: int = 1440) -> int:
    """
    Write C{series} series of C{perSeries} one-minute readings, the newest
    ten days old, into a new SQLite store at C{path}, and compact them all.
    Returns the readings written.
    """
    sys.path.insert(0, os.path.dirname(HERE))
    from sensornet.reading import Reading
    from sensornet.store import openStore

    store = openStore("sqlite:" + path)
    end = time.time() - 10 * 86400
    written = 0
    try:
        for start in range(0, series, 500):
            names = [f"old-{k}" for k in range(start, min(series, start + 500))]
            for minute in range(0, perSeries, 20):
                batch = []
                for m in range(minute, min(perSeries, minute + 20)):
                    at = end - (perSeries - m) * 60
                    batch += [Reading(name, "temperature", 20.0 + (m % 50) * 0.1, "C", ts=at, seq=m,
                                      dialect="native", peer="10.0.0.1:4000", received_at=at) for name in names]
                store.write(batch)
                written += len(batch)
        while store.compactOnce(store.freshWatermark(), 200_000):
            pass
    finally:
        store.close()
    return written


def purgeRows(workdir: str, args: argparse.Namespace) -> list:
    """
    The --purge rows: the same load against a copy of one old store kept
    whole, then against a copy being purged.
    """
    import shutil

    source = os.path.join(workdir, "old.db")
    started = time.monotonic()
    written = oldStore(source, args.old_series)
    print(f"old store: {written:,} readings in {args.old_series:,} series, "
          f"{os.path.getsize(source) / 2**20:.1f} MiB, built in {time.monotonic() - started:.0f} s",
          file=sys.stderr)
    rows = []
    for name, retention in (("keep", None), ("purge", PURGE_RETENTION)):
        rowDir = os.path.join(workdir, name)
        os.mkdir(rowDir)
        path = os.path.join(rowDir, "bench.db")
        shutil.copy(source, path)
        port = freePort()
        httpPort = freePort()
        extra = ("--retention", retention) if retention else ()
        command = sensornetCommand(
            port, "sqlite:" + path, rowDir, http=f"tcp:{httpPort}:interface=127.0.0.1",
            logReadings=args.log_readings, backlog=4096, extra=extra,
        )
        rows.append(measure(name, command, port, args, httpPort, os.path.join(rowDir, "server.log")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--w2", action="store_true", help="issue 9's W2: bare, --store none and sqlite rows")
    parser.add_argument("--sensors", type=int, default=None, help="default 20000 (19000 with --w2)")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=None, help="seconds of sending (default 20, 40 with --w2)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--store", default="none", help="none, sqlite, or a store URL (ignored with --w2)")
    parser.add_argument("--log-readings", action="store_true", help="keep the per-reading log on (on with --w2)")
    parser.add_argument("--stall-ms", type=float, default=50.0, help="an ack slower than this is part of a stall")
    parser.add_argument("--purge", action="store_true",
                        help="issue 9's purge row: ack latency while old data expires vs kept")
    parser.add_argument("--old-series", type=int, default=4000,
                        help="with --purge: series of old data to expire (a day of 1-minute readings each)")
    parser.add_argument("--server-arg", action="append", default=[], metavar="OPTION",
                        help="an extra option for the sensornet servers (repeatable), "
                             "such as --server-arg=--batch-interval=0.005")
    parser.add_argument("--repeat", type=int, default=1, help="run the --w2 rows this many times (at most 3)")
    parser.add_argument("--churn", type=int, default=0, metavar="ROUNDS",
                        help="instead: connect and close all sensors ROUNDS times (at most 20), memory by round")
    args = parser.parse_args()
    if args.sensors is None:
        args.sensors = W2_SENSORS if args.w2 else 5_000 if args.purge else 20_000
    if args.duration is None:
        args.duration = 40.0 if args.w2 else 20.0
    # Bounded: a bench run is minutes, not hours.
    args.duration = min(args.duration, 120.0)
    args.repeat = max(1, min(args.repeat, 3))
    if args.w2:
        args.log_readings = True

    raiseFileLimit(args.sensors + 1000)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    note = None
    if args.sensors + FD_RESERVE > hard:
        # The server holds one descriptor per sensor plus its own few; a
        # hard limit that cannot be raised (no CAP_SYS_RESOURCE) caps it.
        note = f"open-file hard limit {hard} cannot be raised here: sensors capped from {args.sensors}"
        args.sensors = hard - FD_RESERVE
    if args.churn:
        args.churn = min(args.churn, 20)
        with tempfile.TemporaryDirectory(prefix="sensornet-bench-") as workdir:
            print(json.dumps(churn(args.store, workdir, args), indent=2))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="sensornet-bench-") as workdir:
        if args.purge:
            args.duration = max(args.duration, 30.0)
            rows = purgeRows(workdir, args)
            keep, purge = rows
            print(json.dumps(rows, indent=2), file=sys.stderr)
            print(f"purge: {keep['sensors']:,} sensors every {args.interval:g} s for {args.duration:g} s; "
                  f"{args.old_series:,} old series expiring in the purge row ({PURGE_RETENTION})")
            print(f"{'row':<8} {'readings/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'CPU us/rd':>10} "
                  f"{'rows expired':>13}")
            for row in rows:
                expired = (row["server_side"] or {}).get("sensornet_store_expired_rows_total", 0)
                print(f"{row['name']:<8} {row['readings_per_s']:>10,.0f} {row['ack_ms_p50']:>8.2f} "
                      f"{row['ack_ms_p99']:>8.2f} {row['ack_ms_max']:>8.2f} {row['cpu_us_per_reading']:>10.1f} "
                      f"{expired:>13,.0f}")
            print(f"p99 during the purge / without: {purge['ack_ms_p99'] / keep['ack_ms_p99']:.2f} (target <= 1.10)")
            return
        if args.w2:
            for attempt in range(args.repeat):
                rows.append(bareRow(args))
                rows.append(sensornetRow(f"none-{attempt}", "none", workdir, args))
                rows.append(sensornetRow(f"sqlite-{attempt}", "sqlite", workdir, args, W2_SQLITE_ARGS))
        else:
            rows.append(sensornetRow("server", args.store, workdir, args))
    if not args.w2:
        row = rows[0]
        row["targets"] = {"ack_ms_p99": 20, "bytes_per_connection": 4096}
        row["note"] = note
        print(json.dumps(row, indent=2))
        return
    print(json.dumps(rows, indent=2), file=sys.stderr)
    print(f"W2: {rows[0]['sensors']:,} sensors, one reading every {args.interval:g} s each, "
          f"{args.duration:g} s; reading log on; server and load pinned apart: {loadCores()[0] is not None}"
          + (f"; {note}" if note else ""))
    print("targets: sqlite p99 <= 20 ms, max <= 100 ms; none p99 <= 5 ms")
    print(f"{'row':<10} {'readings/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'CPU us/rd':>10} "
          f"{'stalls':>7} {'every s':>8} {'unacked':>8} {'B/conn':>7}")
    for row in rows:
        every = row["stalls"]["every_s"]
        print(f"{row['name']:<10} {row['readings_per_s']:>10,.0f} {row['ack_ms_p50']:>8.2f} {row['ack_ms_p99']:>8.2f} "
              f"{row['ack_ms_max']:>8.2f} {row['cpu_us_per_reading']:>10.1f} {row['stalls']['count']:>7} "
              f"{every if every else '-':>8} {row['unacked_at_end']:>8} {row['bytes_per_connection']:>7}")
        if row.get("slow_collections"):
            print(f"{'':<10} slow collections: {row['slow_collections']}")


if __name__ == "__main__":
    main()
