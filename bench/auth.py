"""
What authentication costs the hot path: W1 throughput (bench/run.py's
fleet workload) with every connection authenticated as a gateway, against
the same workload written anonymously, measured in the same run.

    python bench/auth.py [--total N] [--sensors S] [--connections C] [--rounds R]

Each row is a fresh sensornet server (bench/run.py's command line, storing
into a fresh SQLite file: credentials need a store) on 127.0.0.1, and a
load process on another core sending bench/loadgen.py's pipelined chunks
(built by its C{buildChunks}). In the C{token} rows each connection first
sends C{auth TOKEN} for a gateway credential granted its own sensors
(C{bench-R-I-*}), waits for C{ok auth}, then the same chunks as the
C{anonymous} rows; the clock starts after every connection is ready in both.
Rows alternate ABBA (anonymous, token, token, anonymous, ...) so drift on
a shared machine hits both alike; the ratio compares the medians. Nothing is
asserted: the issue's aim is a ratio of at least 0.95.

A second table isolates the protocol's own cost, which the socket rows
(bound by SQLite and shared cores) measure only through noise: the same W1
chunks fed in this process to 50 connections of a L{SensorServerFactory}
with a sink that stores nothing (StringTransports, no sockets, no store),
authenticated as gateways or anonymous, alternated, best of several runs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from loadgen import buildChunks, pump  # noqa: E402
from run import cores, cpuSeconds, freePort, sensornetCommand, stopServer, waitPort  # noqa: E402


def names(tag: str, index: int, count: int) -> List[bytes]:
    """
    The sensors of connection C{index}: C{bench-TAG-INDEX-K}.
    """
    return [b"bench-%s-%d-%d" % (tag.encode(), index, k) for k in range(count)]


def provision(store: str, tag: str, connections: int) -> Dict[int, str]:
    """
    One gateway credential per connection, granted that connection's
    sensors (C{bench-TAG-INDEX-*}); their tokens by connection index.
    """
    sys.path.insert(0, os.path.dirname(HERE))
    from sensornet.identity import Registry

    registry = Registry(store)
    try:
        return {
            index: registry.add(f"bench-gw-{tag}-{index}", role="gateway", grants=[f"bench-{tag}-{index}-*"])
            for index in range(connections)
        }
    finally:
        registry.close()


def load(port: int, connections: int, sensors: int, total: int, batch: int, window: int, seconds: float,
         tag: str, tokens: Optional[Dict[int, str]]) -> dict:
    """
    bench/loadgen.py's loop, after an optional C{auth} exchange per
    connection (before the clock starts).
    """
    perConn = total // connections
    sensorsPerConn = max(1, sensors // connections)
    tsBase = (int(time.time()) - 3600) * 1_000_000_000
    states = []
    for index in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        if tokens is not None:
            s.sendall(b"auth " + tokens[index].encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                data = s.recv(4096)
                if not data:
                    raise SystemExit(f"server closed connection {index} after auth: {reply!r}")
                reply += data
            if not reply.startswith(b"ok auth "):
                raise SystemExit(f"auth refused on connection {index}: {reply!r}")
        s.setblocking(False)
        states.append({"sock": s, "chunks": buildChunks(names(tag, index, sensorsPerConn), perConn, batch, tsBase),
                       "next": 0, "sent": 0, "acked": 0, "pending": b"", "target": perConn, "finished": False})
    elapsed, errors = pump(states, window, seconds)
    acked = sum(s["acked"] for s in states)
    for s in states:
        s["sock"].close()
    return {"acked": acked, "errors": errors, "seconds": elapsed, "rate": acked / elapsed if elapsed else 0.0}


def measure(kind: str, round_: int, args: argparse.Namespace, workdir: str) -> dict:
    """
    One row: a fresh server on a fresh SQLite file holding the gateways'
    credentials (for both kinds: the same store), and a load process.
    """
    tag = f"{round_}{kind[0]}"
    path = os.path.join(workdir, f"{tag}.db")
    tokens = provision("sqlite:" + path, tag, args.connections)
    tokenFile = os.path.join(workdir, f"{tag}.tokens.json")
    with open(os.open(tokenFile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        json.dump(tokens if kind == "token" else None, f)
    port = freePort()
    serverCores, loadCores = cores(args)
    command = sensornetCommand(port, "sqlite:" + path, workdir, extra=("--compact-after", "1"))
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if serverCores:
            os.sched_setaffinity(server.pid, serverCores)
        waitPort(port)
        # The server's credential cache loads on its own thread at start.
        time.sleep(1.0)
        before = cpuSeconds(server.pid)
        result = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--load", "--port", str(port), "--tag", tag,
             "--token-file", tokenFile, "--connections", str(args.connections), "--sensors", str(args.sensors),
             "--total", str(args.total), "--batch", str(args.batch), "--seconds", str(args.seconds)],
            capture_output=True, text=True, timeout=args.seconds + 120,
            preexec_fn=(lambda: os.sched_setaffinity(0, loadCores)) if loadCores else None,
        )
        used = cpuSeconds(server.pid) - before
        if result.returncode != 0:
            raise SystemExit(f"{kind}: load failed: {result.stderr}")
        row = json.loads(result.stdout)
    finally:
        stopServer(server)
    row["name"] = kind
    row["cpu_us"] = used / row["acked"] * 1e6 if row["acked"] else float("nan")
    return row


def hotPath(args: argparse.Namespace, repeats: int = 7) -> List[dict]:
    """
    Seconds per reading spent in the protocol (parse, authorize, reply) for
    W1's chunks on 50 in-process connections, anonymous or authenticated
    as gateways; alternated, the best of C{repeats} each.
    """
    sys.path.insert(0, os.path.dirname(HERE))
    from twisted.internet.address import IPv4Address
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from sensornet.identity import Principal
    from sensornet.identity.auth import AnonymousNetworks, SensorAccess
    from sensornet.identity.tokens import newToken
    from sensornet.metrics import ServerMetrics
    from sensornet.protocol import ImmediateSink, SensorServerFactory

    class Credentials:
        def __init__(self) -> None:
            self.tokens: Dict[str, Principal] = {}

        def verify(self, token: object) -> Optional[Principal]:
            return self.tokens.get(token)  # type: ignore[arg-type]

        def subscribeRevoked(self, callback: object) -> None:
            pass

    total = min(args.total, 200_000)
    perConn = total // args.connections
    sensorsPerConn = max(1, args.sensors // args.connections)
    tsBase = (int(time.time()) - 3600) * 1_000_000_000
    chunks = [buildChunks(names("hot", index, sensorsPerConn), perConn, args.batch, tsBase)
              for index in range(args.connections)]
    best: Dict[str, float] = {}
    for _ in range(repeats):
        for kind in ("anonymous", "token"):
            clock = Clock()
            clock.advance(time.time())
            metrics = ServerMetrics()
            credentials = Credentials()
            access = SensorAccess(credentials, AnonymousNetworks.fromString("127.0.0.0/8"), clock, metrics)
            factory = SensorServerFactory(ImmediateSink(), clock, metrics, False, access=access)
            protocols = []
            for index in range(args.connections):
                address = IPv4Address("TCP", "127.0.0.1", 10000 + index)
                protocol = factory.buildProtocol(address)
                protocol.makeConnection(StringTransport(peerAddress=address))
                if kind == "token":
                    token = newToken()
                    credentials.tokens[token] = Principal(f"gw-{index}", "gateway", (f"bench-hot-{index}-*",))
                    protocol.dataReceived(b"auth " + token.encode() + b"\n")
                protocols.append(protocol)
            started = time.perf_counter()
            for step in range(len(chunks[0])):
                for protocol, mine in zip(protocols, chunks):
                    protocol.dataReceived(mine[step])
            elapsed = time.perf_counter() - started
            replies = sum(protocol.transport.value().count(b"ack ") for protocol in protocols)
            assert replies == perConn * args.connections, (kind, replies)
            for protocol in protocols:
                protocol.transport.loseConnection()
                protocol.connectionLost(None)
            perReading = elapsed / (perConn * args.connections)
            best[kind] = min(best.get(kind, float("inf")), perReading)
    return [{"name": kind, "us": best[kind] * 1e6} for kind in ("anonymous", "token")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total", type=int, default=1_000_000)
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--window", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2, help="pairs of rows (anonymous, token), in ABBA order")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    parser.add_argument("--token-file", help=argparse.SUPPRESS)
    parser.add_argument("--hot-path-only", action="store_true", help="only the in-process table")
    args = parser.parse_args()
    if args.load:
        with open(args.token_file) as f:
            raw = json.load(f)
        tokens = {int(k): v for k, v in raw.items()} if raw is not None else None
        print(json.dumps(load(args.port, args.connections, args.sensors, args.total, args.batch, args.window,
                              args.seconds, args.tag, tokens)))
        return
    if args.hot_path_only:
        hot = hotPath(args)
        for row in hot:
            print(f"{row['name']:<10} {row['us']:>8.3f} us/reading")
        print(f"token / anonymous: {hot[1]['us'] / hot[0]['us']:.3f}  (aim: <= 1.05)")
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="sensornet-bench-auth-") as workdir:
        for round_ in range(args.rounds):
            # ABBA: each kind goes first in every other round, so whatever
            # a row leaves behind (dirty pages of its store being written
            # back) weighs on both kinds alike.
            kinds = ("anonymous", "token") if round_ % 2 == 0 else ("token", "anonymous")
            for kind in kinds:
                rows.append(measure(kind, round_, args, workdir))
    print(f"workload W1 into SQLite: {args.total:,} readings from {args.sensors:,} sensors over "
          f"{args.connections} connections, {args.batch} lines per send; token rows: one gateway credential per "
          f"connection; server and load pinned apart: {cores(args)[0] is not None}")
    print(f"{'row':<10} {'readings/s':>12} {'CPU us/reading':>15} {'acked':>10} {'errors':>7} {'seconds':>8}")
    for row in rows:
        print(f"{row['name']:<10} {row['rate']:>12,.0f} {row['cpu_us']:>15.2f} {row['acked']:>10} "
              f"{row['errors']:>7} {row['seconds']:>8.2f}")
    anonymous = statistics.median(row["rate"] for row in rows if row["name"] == "anonymous")
    token = statistics.median(row["rate"] for row in rows if row["name"] == "token")
    print(f"throughput token / anonymous (medians): {token / anonymous:.3f}  (aim: >= 0.95)")
    # The server's CPU time per reading varies less than the rate on a shared machine.
    cpuAnonymous = statistics.median(row["cpu_us"] for row in rows if row["name"] == "anonymous")
    cpuToken = statistics.median(row["cpu_us"] for row in rows if row["name"] == "token")
    print(f"server CPU per reading token / anonymous (medians): {cpuToken / cpuAnonymous:.3f}  (aim: <= 1.05)")
    hot = hotPath(args)
    print()
    print("the protocol alone, in process (parse, authorize, reply; no sockets, no store), best of 7:")
    for row in hot:
        print(f"{row['name']:<10} {row['us']:>8.3f} us/reading")
    print(f"token / anonymous: {hot[1]['us'] / hot[0]['us']:.3f}  (aim: <= 1.05)")


if __name__ == "__main__":
    main()
