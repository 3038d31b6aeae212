"""
A well-behaved sensor's acknowledgement latency while many connections
flood the server and never read their acks (issue 10, item 8: fairness).

    python bench/flood.py [--flooders 200] [--seconds 20] [--interval 0.1] [--store sqlite|none]
                          [--baseline REV] [--no-pin]

For each server measured, in the same run: the server starts in its own
process on 127.0.0.1 (pinned to one core, as bench/run.py does; the load
runs on another), a single native sensor sends one reading every
--interval seconds and waits for its ack, first alone for --quiet seconds
(the baseline row), then while --flooders connections (in another process)
send pipelined native readings as fast as the server takes them and never
read a byte. Latency is from the send() of the sensor's line to the arrival
of its ack; an ack later than --timeout seconds counts as a timeout (the
sensor's client would give up and resend).

--baseline REV also measures the server as it was at git revision REV
(exported with git archive into a temporary directory and run from there),
so a change is measured against its predecessor on the same machine in the
same run. Nothing here asserts a speed: it prints numbers and ratios.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from run import cores, freePort, sensornetCommand, stopServer, waitPort  # noqa: E402


def flood(port: int, connections: int, seconds: float) -> None:
    """
    The flooders (run in their own process): C{connections} sockets, each
    sending chunks of 1,000 native readings of its own sensor, next seqs
    each time, whenever the socket takes more, for C{seconds}; never
    reading. Prints how many readings were sent.
    """
    selector = selectors.DefaultSelector()
    socks = []
    for index in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        template = b"temperature,sensor=flood-%d,unit=C value=20.5,seq=%%di\n" % index
        state = {"template": template * 1000, "seq": 1, "pending": b""}
        selector.register(s, selectors.EVENT_WRITE, state)
        socks.append(s)
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.1):
            state = key.data
            if not state["pending"]:
                seq = state["seq"]
                state["pending"] = state["template"] % tuple(range(seq, seq + 1000))
                state["seq"] = seq + 1000
            try:
                written = key.fileobj.send(state["pending"])  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                selector.unregister(key.fileobj)
                continue
            state["pending"] = state["pending"][written:]
            if not state["pending"]:
                sent += 1000
    print(sent, flush=True)
    for s in socks:
        s.close()


def sensor(port: int, seconds: float, interval: float, timeout: float, firstSeq: int) -> tuple:
    """
    One well-behaved sensor for C{seconds}: a reading every C{interval} s,
    each waiting for its ack. Returns (latencies in seconds, timeouts,
    next seq, the seconds since the start at which each was sent).
    """
    latencies: List[float] = []
    sentAts: List[float] = []
    start = time.monotonic()
    timeouts = 0
    seq = firstSeq
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        buffered = b""
        end = time.monotonic() + seconds
        nextSend = time.monotonic()
        while time.monotonic() < end:
            now = time.monotonic()
            if now < nextSend:
                time.sleep(nextSend - now)
            sentAt = time.monotonic()
            s.sendall(b"temperature,sensor=good,unit=C value=21.5,seq=%di\n" % seq)
            want = b"ack %d\n" % seq
            s.settimeout(60)
            while want not in buffered:
                data = s.recv(4096)
                if not data:
                    raise SystemExit("the server closed the good sensor's connection")
                buffered += data
            buffered = buffered.split(want, 1)[1]
            latency = time.monotonic() - sentAt
            latencies.append(latency)
            sentAts.append(sentAt - start)
            if latency > timeout:
                timeouts += 1
            seq += 1
            nextSend = max(sentAt + interval, time.monotonic())
    return latencies, timeouts, seq, sentAts


def percentile(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(name: str, tree: str, args: argparse.Namespace, workdir: str, pinning: tuple) -> List[dict]:
    serverCores, loadCores = pinning
    if loadCores:
        os.sched_setaffinity(0, loadCores)
    port = freePort()
    store = "none" if args.store == "none" else "sqlite:" + os.path.join(workdir, f"{name}.db")
    command = sensornetCommand(port, store, workdir)
    # The server runs the sensornet of the tree it starts in (python -c puts
    # the working directory first on the path).
    server = subprocess.Popen(command, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        if serverCores:
            os.sched_setaffinity(server.pid, serverCores)
        waitPort(port)
        latencies, timeouts, seq, _ = sensor(port, args.quiet, args.interval, args.timeout, 1)
        rows.append(dict(name=name, phase="alone", latencies=latencies, timeouts=timeouts, flood=0,
                         steady=latencies))
        flooders = subprocess.Popen(
            [sys.executable, __file__, "--flood-port", str(port), "--flooders", str(args.flooders),
             "--seconds", str(args.seconds)],
            stdout=subprocess.PIPE, text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, loadCores)) if loadCores else None,
        )
        # Let the flood build up before the sensor starts measuring.
        time.sleep(1.0)
        latencies, timeouts, seq, sentAts = sensor(port, args.seconds - 2.0, args.interval, args.timeout, seq)
        out, _ = flooders.communicate(timeout=args.seconds + 60)
        # From the fourth second of the flood on (the sensor starts one
        # second in): what is left once the first chunk of every flooder,
        # read before anything can tell it floods, has been dealt with.
        steady = [lat for lat, at in zip(latencies, sentAts) if at >= 2.0]
        rows.append(dict(name=name, phase=f"{args.flooders} flooding", latencies=latencies, timeouts=timeouts,
                         flood=int(out.strip() or 0), steady=steady))
    finally:
        stopServer(server)
    return rows


def export(rev: str, into: str) -> str:
    """
    The tree of git revision C{rev} of this checkout, exported into
    C{into}.
    """
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flooders", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of flood (default 20)")
    parser.add_argument("--quiet", type=float, default=5.0, help="seconds of the sensor alone first")
    parser.add_argument("--interval", type=float, default=0.1, help="the sensor's seconds between readings")
    parser.add_argument("--timeout", type=float, default=5.0, help="an ack later than this is a timeout")
    parser.add_argument("--store", choices=["sqlite", "none"], default="sqlite")
    parser.add_argument("--baseline", help="git revision to measure first, as the baseline")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--flood-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.flood_port:
        flood(args.flood_port, args.flooders, args.seconds)
        return
    rows = []
    pinning = cores(args)
    with tempfile.TemporaryDirectory(prefix="sensornet-flood-") as workdir:
        if args.baseline:
            tree = export(args.baseline, tempfile.mkdtemp(dir=workdir))
            rows += measure(f"at {args.baseline}", tree, args, workdir, pinning)
        rows += measure("this tree", ROOT, args, workdir, pinning)
    print(f"store {args.store}; one sensor every {args.interval} s; {args.flooders} connections flooding "
          f"without reading for {args.seconds:g} s; pinned apart: {pinning[0] is not None}")
    print(f"{'server':<16} {'phase':<14} {'acks':>6} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} "
          f"{'>' + format(args.timeout, 'g') + ' s':>6} {'p99 from 3 s':>13} {'flood sent':>11}")
    for row in rows:
        lat = row["latencies"]
        print(f"{row['name']:<16} {row['phase']:<14} {len(lat):>6} {percentile(lat, 0.5) * 1e3:>9.1f} "
              f"{percentile(lat, 0.99) * 1e3:>9.1f} {max(lat, default=float('nan')) * 1e3:>9.1f} "
              f"{row['timeouts']:>6} {percentile(row['steady'], 0.99) * 1e3:>13.1f} {row['flood']:>11,}")
    flooded = [row for row in rows if row["flood"]]
    if len(flooded) == 2:
        before, after = (percentile(row["latencies"], 0.99) for row in flooded)
        print(f"p99 under flood, this tree vs {args.baseline}: {after / before:.3f}")


if __name__ == "__main__":
    main()
