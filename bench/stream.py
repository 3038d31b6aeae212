"""
The live stream against ingest: does a crowd of SSE viewers slow the
sensors down?

    python bench/stream.py [--duration 20] [--sensors 250] [--rate 1000] [--subscribers 500] [--rows none,reading,idle]

For each row a fresh sensornet server (SQLite in a temporary directory,
HTTP on 127.0.0.1) gets a steady offered load of --rate readings/s from
--sensors sensors (one connection each, phases spread evenly, plain
sockets) plus a probe sensor sending one reading every 20 ms, whose
send-to-ack latency is measured (an ack is sent only after the commit). Rows:

- 0 subscribers
- N subscribers reading: N GET /api/stream clients reading everything
- N subscribers not reading: N clients that read the response head and
  then stop (a 4 KiB receive buffer), so the server queues events for them
  until each passes the stream's maxPendingBytes (4 MiB) and is dropped;
  the drops are counted from /metrics

Printed per row: readings offered per second (the probe's 50 included),
readings stored per second (from the server's own
C{sensornet_readings_stored_total} over the sending time), the probe's ack
p50/p99/max, streams open at the end and streams dropped. The server runs
the sensornet that C{sys.executable} imports from the working directory
(run from the checkout's root to measure it). On two cores or more the
server is pinned to one and the load and subscribers to the others, as
bench/run.py does. Each row is bounded by --duration (plus a few seconds to
connect); 127.0.0.1 only. Nothing is asserted: it prints numbers.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from urllib.request import urlopen

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import freePort, sensornetCommand, stopServer, waitPort  # noqa: E402

PROBE_INTERVAL = 0.02


def raiseFileLimit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def scrape(httpPort: int) -> dict:
    """
    The server's unlabelled metric samples from /metrics.
    """
    out = {}
    text = urlopen(f"http://127.0.0.1:{httpPort}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def subscribers(httpPort, count, reading, ready, stop, results, cores):
    """
    C{count} stream clients: reading everything (counting bytes), or
    reading only the response head and then nothing.
    """
    if cores:
        os.sched_setaffinity(0, cores)
    raiseFileLimit(count + 100)
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(count):
        s = socket.socket()
        if not reading:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", httpPort))
        s.sendall(b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise SystemExit(f"stream refused: {head[:200]!r}")
        s.setblocking(False)
        socks.append(s)
        if reading:
            sel.register(s, selectors.EVENT_READ)
    ready.set()
    received = 0
    closed = 0
    while not stop.is_set():
        if not reading:
            time.sleep(0.05)
            continue
        for key, _ in sel.select(timeout=0.05):
            try:
                data = key.fileobj.recv(262144)
            except (BlockingIOError, ConnectionError):
                continue
            if not data:
                sel.unregister(key.fileobj)
                closed += 1
            received += len(data)
    for s in socks:
        s.close()
    results.put({"received": received, "closed": closed})


def load(port, sensors, rate, duration, ready, go, results, cores):
    """
    C{sensors} connections sending C{rate} readings/s between them, phases
    spread evenly, and a probe connection sending one reading every
    L{PROBE_INTERVAL} seconds: reports the readings acked and the probe's
    latencies.
    """
    if cores:
        os.sched_setaffinity(0, cores)
    raiseFileLimit(sensors + 100)
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(sensors + 1):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, i)
    probe = sensors
    names = [b"bench-%d" % i for i in range(sensors)] + [b"probe"]
    ready.set()
    go.wait()
    # Turn n goes to sensor n % sensors, so each sends every sensors / rate s.
    seq = [0] * (sensors + 1)
    probeSent: dict = {}
    latencies = []
    acked = 0
    buffers = [b""] * (sensors + 1)
    start = time.monotonic()
    end = start + duration
    sent = 0
    nextProbe = start
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - start) * rate)
        while sent < due:
            i = sent % sensors
            seq[i] += 1
            try:
                socks[i].send(b"temperature,sensor=%s,unit=C value=21.5,seq=%di\n" % (names[i], seq[i]))
            except BlockingIOError:
                pass
            sent += 1
        if now >= nextProbe:
            seq[probe] += 1
            try:
                socks[probe].send(b"temperature,sensor=probe,unit=C value=1,seq=%di\n" % (seq[probe],))
                probeSent[seq[probe]] = time.monotonic()
            except BlockingIOError:
                pass
            nextProbe += PROBE_INTERVAL
        for key, _ in sel.select(timeout=0.001):
            i = key.data
            data = buffers[i] + socks[i].recv(65536)
            *lines, buffers[i] = data.split(b"\n")
            t = time.monotonic()
            for line in lines:
                if line.startswith(b"ack "):
                    acked += 1
                    if i == probe:
                        at = probeSent.pop(int(line[4:]), None)
                        if at is not None:
                            latencies.append(t - at)
    for s in socks:
        s.close()
    results.put({"sent": sent + seq[probe], "acked": acked, "latencies": latencies,
                 "probe_unacked": len(probeSent), "seconds": time.monotonic() - start})


def quantile(values: list, q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measureRow(name: str, subscriberCount: int, reading: bool, args: argparse.Namespace, workdir: str) -> dict:
    available = sorted(os.sched_getaffinity(0))
    serverCores, loadCores = ({available[0]}, set(available[1:])) if len(available) > 1 else (None, None)
    port, httpPort = freePort(), freePort()
    path = os.path.join(workdir, f"{name.replace(' ', '-')}.db")
    command = sensornetCommand(port, "sqlite:" + path, workdir, http=f"tcp:{httpPort}:interface=127.0.0.1")
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    context = multiprocessing.get_context("fork")
    subs = None
    stop = context.Event()
    subResults = context.Queue()
    try:
        if serverCores:
            os.sched_setaffinity(server.pid, serverCores)
        waitPort(port)
        waitPort(httpPort)
        if subscriberCount:
            ready = context.Event()
            subs = context.Process(target=subscribers, args=(
                httpPort, subscriberCount, reading, ready, stop, subResults, loadCores))
            subs.start()
            if not ready.wait(60):
                raise SystemExit(f"{name}: subscribers did not connect")
        loadReady, go, loadResults = context.Event(), context.Event(), context.Queue()
        loader = context.Process(target=load, args=(
            port, args.sensors, args.rate, args.duration, loadReady, go, loadResults, loadCores))
        loader.start()
        if not loadReady.wait(60):
            raise SystemExit(f"{name}: sensors did not connect")
        before = scrape(httpPort)
        go.set()
        result = loadResults.get(timeout=args.duration + 60)
        after = scrape(httpPort)
        loader.join(10)
        stop.set()
        subStats = subResults.get(timeout=30) if subs is not None else {}
        if subs is not None:
            subs.join(10)
    finally:
        stop.set()
        stopServer(server)
    stored = after.get("sensornet_readings_stored_total", 0) - before.get("sensornet_readings_stored_total", 0)
    return {
        "name": name,
        "offered": result["sent"] / result["seconds"],
        "stored": stored / result["seconds"],
        "p50": quantile(result["latencies"], 0.5) * 1000,
        "p99": quantile(result["latencies"], 0.99) * 1000,
        "max": max(result["latencies"], default=float("nan")) * 1000,
        "probe": len(result["latencies"]),
        "probe_unacked": result["probe_unacked"],
        "open": after.get("sensornet_stream_clients", 0),
        "dropped": after.get("sensornet_stream_clients_dropped_total", 0),
        "received_mb": subStats.get("received", 0) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of sending per row (default 20)")
    parser.add_argument("--sensors", type=int, default=250, help="sensors, one connection each (default 250)")
    parser.add_argument("--rate", type=float, default=1000.0, help="readings/s offered by them (default 1000)")
    parser.add_argument("--subscribers", type=int, default=500, help="stream clients (default 500)")
    parser.add_argument("--rows", default="none,reading,idle",
                        help="which rows, comma-separated: none, reading, idle (default all three)")
    args = parser.parse_args()
    raiseFileLimit(args.sensors + args.subscribers + 200)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sensornet-bench-stream-") as workdir:
        for key, name, count, reading in (
            ("none", "0 subscribers", 0, True),
            ("reading", f"{args.subscribers} reading", args.subscribers, True),
            ("idle", f"{args.subscribers} not reading", args.subscribers, False),
        ):
            if key in args.rows.split(","):
                rows.append(measureRow(name, count, reading, args, workdir))
    available = sorted(os.sched_getaffinity(0))
    print(f"offered: {args.rate:,.0f} readings/s from {args.sensors} sensors plus a probe every "
          f"{PROBE_INTERVAL * 1000:.0f} ms, {args.duration:.0f} s per row, SQLite; "
          f"server pinned apart from load: {len(available) > 1}")
    print(f"{'row':<20} {'offered/s':>10} {'stored/s':>9} {'probe p50 ms':>13} {'p99 ms':>8} {'max ms':>8} "
          f"{'probe acks':>10} {'open':>5} {'dropped':>8} {'MB to subs':>10}")
    for r in rows:
        print(f"{r['name']:<20} {r['offered']:>10,.0f} {r['stored']:>9,.0f} {r['p50']:>13.1f} {r['p99']:>8.1f} "
              f"{r['max']:>8.1f} {r['probe']:>10} {r['open']:>5.0f} {r['dropped']:>8.0f} {r['received_mb']:>10.1f}")


if __name__ == "__main__":
    main()
