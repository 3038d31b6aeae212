"""
Pipelined load for a sensornet-compatible server, shaped like a fleet:
C{sensors} sensors interleaved over C{connections} sockets (a relay or
gateway per connection, each carrying many sensors, as Telegraf-style
collectors do), each line a native reading with the sensor's next seq. At
most C{window} lines per connection are unacknowledged at once; it runs
until C{total} lines are acknowledged or C{seconds} pass, and prints one JSON
object: lines acknowledged, seconds, rate.

Every payload is built before the clock starts, and the generator is plain
blocking-free sockets and selectors, no Twisted, so that what is measured is
the server and not the generator (on two cores, run.py also pins the two to
different cores).
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import time
from typing import List, Tuple


def buildChunks(sensors: List[bytes], total: int, batch: int, tsBase: int) -> List[bytes]:
    """
    C{total} native lines for one connection, cycling through C{sensors}
    (line i is sensor i mod len(sensors), its seq i div len(sensors)), cut
    into chunks of C{batch} lines.
    """
    count = len(sensors)
    lines = [
        b"temperature,sensor=%s,unit=C value=%d.25,seq=%di %d\n"
        % (sensors[i % count], 15 + (i % 20), i // count, tsBase + i)
        for i in range(total)
    ]
    return [b"".join(lines[start:start + batch]) for start in range(0, total, batch)]


def run(
    host: str, port: int, connections: int, sensors: int, total: int, window: int, seconds: float, batch: int
) -> dict:
    perConn = total // connections
    sensorsPerConn = max(1, sensors // connections)
    stamp = int(time.time())
    # Seconds-resolution timestamps in nanoseconds, a little in the past, so
    # that a server refusing readings from the future accepts them all.
    tsBase = (stamp - 3600) * 1_000_000_000
    states = []
    for index in range(connections):
        names = [b"bench-%d-%d-%d" % (stamp, index, k) for k in range(sensorsPerConn)]
        states.append({"chunks": buildChunks(names, perConn, batch, tsBase), "next": 0, "sent": 0,
                       "acked": 0, "pending": b"", "target": perConn, "finished": False})
    for state in states:
        s = socket.create_connection((host, port))
        s.setblocking(False)
        state["sock"] = s
    elapsed, _ = pump(states, window, seconds)
    acked = sum(s["acked"] for s in states)
    for s in states:
        s["sock"].close()
    return {"acked": acked, "seconds": elapsed, "rate": acked / elapsed if elapsed else 0.0,
            "sensors": sensorsPerConn * connections, "connections": connections}


def pump(states: List[dict], window: int, seconds: float) -> Tuple[float, int]:
    """
    Send each state's C{chunks} on its non-blocking C{sock}, at most
    C{window} lines unacknowledged per connection, counting acknowledged
    lines in C{acked}, until every state has C{target} acknowledged or
    C{seconds} pass. Returns (seconds taken, replies containing "error").
    """
    sel = selectors.DefaultSelector()
    for state in states:
        sel.register(state["sock"], selectors.EVENT_READ, state)
    started = time.perf_counter()
    deadline = started + seconds
    done = 0
    errors = 0
    while done < len(states) and time.perf_counter() < deadline:
        for state in states:
            if (state["pending"] == b"" and state["next"] < len(state["chunks"])
                    and state["sent"] - state["acked"] < window):
                chunk = state["chunks"][state["next"]]
                state["next"] += 1
                state["pending"] = chunk
                state["sent"] += chunk.count(b"\n")
            if state["pending"]:
                try:
                    written = state["sock"].send(state["pending"])
                    state["pending"] = state["pending"][written:]
                except BlockingIOError:
                    pass
        for key, _ in sel.select(timeout=0.01):
            state = key.data
            try:
                data = state["sock"].recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                raise SystemExit("server closed a connection")
            errors += data.count(b"error")
            state["acked"] += data.count(b"\n")
            if state["acked"] >= state["target"] and not state["finished"]:
                state["finished"] = True
                done += 1
    sel.close()
    return time.perf_counter() - started, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--total", type=int, default=1_000_000)
    parser.add_argument("--window", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        raise SystemExit("the load generator only targets loopback")
    print(json.dumps(run(args.host, args.port, args.connections, args.sensors, args.total, args.window,
                         args.seconds, args.batch)))


if __name__ == "__main__":
    main()
