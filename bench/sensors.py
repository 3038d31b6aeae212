"""
Many concurrent sensors at the seed's cadence against one server: the
acknowledgement latency (p50/p99/max) and the server's memory per
connection.

    python bench/sensors.py --sensors 20000 [--interval 2] [--duration 20] [--store none|sqlite]

Starts the server (the installed twistd plugin) on 127.0.0.1, spreads the
sensors over a few load processes (plain sockets and epoll, so the load is
not Twisted measuring itself), each sensor sending one native reading with a
seq every --interval seconds, phases spread evenly. Latency is from the
send() of a line to the arrival of its ack. Memory per connection is the
growth of the server's resident memory between no connections and all
connected, divided by the count. Nothing is asserted: it prints numbers.
"""

from __future__ import annotations

import argparse
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

from run import freePort, sensornetCommand, stopServer, waitPort  # noqa: E402


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
        if family.name in ("sensornet_ack_latency_seconds", "sensornet_commit_seconds", "sensornet_batch_size"):
            buckets = [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]
            total = buckets[-1][1] if buckets else 0
            for q in (0.5, 0.99):
                bound = next((le for le, count in buckets if total and count >= q * total), None)
                out[f"{family.name}_p{int(q * 100)}_le"] = bound
            out[f"{family.name}_count"] = total
    return out


def loadProcess(index, port, count, interval, duration, connected, go, results):
    """
    One load process: open C{count} connections, report, wait for C{go},
    then send at cadence for C{duration} seconds and report latencies.
    """
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
    start = time.monotonic()
    end = start + duration
    phases = [interval * i / count for i in range(count)]
    cycle = 0
    pointer = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
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
            i = key.data
            data = buffers[i] + socks[i].recv(65536)
            *lines, buffers[i] = data.split(b"\n")
            t = time.monotonic()
            for line in lines:
                if line.startswith(b"ack "):
                    sent = sentAt[i].pop(int(line[4:]), None)
                    if sent is not None:
                        latencies.append(t - sent)
    unacked = sum(len(d) for d in sentAt)
    for s in socks:
        s.close()
    results.put({"latencies": latencies, "unacked": unacked})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sensors", type=int, default=20_000)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--store", default="none", help="none, sqlite, or a store URL")
    parser.add_argument("--log-readings", action="store_true", help="keep the per-reading log on (as by default)")
    args = parser.parse_args()

    raiseFileLimit(args.sensors + 1000)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    note = None
    if args.sensors + 100 > hard:
        # The server holds one descriptor per sensor plus its own few; a
        # hard limit that cannot be raised (no CAP_SYS_RESOURCE) caps it.
        note = f"open-file hard limit {hard} cannot be raised here: sensors capped from {args.sensors}"
        args.sensors = hard - 100
    with tempfile.TemporaryDirectory(prefix="sensornet-bench-") as workdir:
        store = "sqlite:" + os.path.join(workdir, "bench.db") if args.store == "sqlite" else args.store
        port = freePort()
        httpPort = freePort()
        server = subprocess.Popen(
            sensornetCommand(
                port, store, workdir, http=f"tcp:{httpPort}:interface=127.0.0.1",
                logReadings=args.log_readings, backlog=4096,
            ),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            waitPort(port)
            time.sleep(0.5)
            before = rss(server.pid)
            connected = multiprocessing.Queue()
            results = multiprocessing.Queue()
            go = multiprocessing.Event()
            share = args.sensors // args.processes
            procs = [
                multiprocessing.Process(
                    target=loadProcess,
                    args=(i, port, share, args.interval, args.duration, connected, go, results),
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
            go.set()
            profile = os.environ.get("SENSORNET_BENCH_PROFILE")
            spy = None
            if profile:
                # py-spy (pip install py-spy) samples the server while the load runs.
                spy = subprocess.Popen(
                    ["py-spy", "record", "--pid", str(server.pid), "--duration", str(int(args.duration)),
                     "--format", "raw", "--output", profile, "--threads", "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            latencies = []
            unacked = 0
            for _ in procs:
                r = results.get(timeout=args.duration + 120)
                latencies += r["latencies"]
                unacked += r["unacked"]
            for p in procs:
                p.join(timeout=30)
            if spy is not None:
                spy.wait(timeout=60)
            peak = rss(server.pid)
            serverSide = scrape(httpPort)
        finally:
            stopServer(server, timeout=60)
    latencies.sort()
    n = len(latencies)

    def pct(p):
        return latencies[min(n - 1, int(p * n))] * 1000 if n else float("nan")

    sensorsNow = share * args.processes
    print(json.dumps({
        "sensors": sensorsNow,
        "connect_seconds": round(connectSeconds, 2),
        "acks": n,
        "unacked_at_end": unacked,
        "readings_per_s": round(n / args.duration, 1),
        "ack_ms_p50": round(pct(0.50), 2),
        "ack_ms_p99": round(pct(0.99), 2),
        "ack_ms_max": round(latencies[-1] * 1000, 2) if n else None,
        "server_rss_idle_mib": round(before / 2**20, 1),
        "server_rss_connected_mib": round(after / 2**20, 1),
        "server_rss_peak_mib": round(peak / 2**20, 1),
        "bytes_per_connection": round((after - before) / sensorsNow),
        "targets": {"ack_ms_p99": 20, "bytes_per_connection": 4096},
        "server_side": serverSide,
        "note": note,
    }, indent=2))


if __name__ == "__main__":
    main()
