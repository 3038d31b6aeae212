"""
Pipelined load for a sensornet-compatible server: C{connections} sockets,
each sending native lines with increasing seqs and at most C{window}
unacknowledged lines in flight, until C{total} lines are acknowledged or
C{seconds} pass. Prints one JSON object: lines acknowledged, seconds, rate.

Plain blocking sockets and selectors, no Twisted, so the load generator is
not the thing being measured; it sends pre-built buffers and counts newlines
in the replies.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import time


def buildLines(sensor: str, start: int, count: int) -> bytes:
    return b"".join(
        b"temperature,sensor=%s,unit=C value=%d.25,seq=%di %d\n"
        % (sensor.encode(), 15 + (seq % 20), seq, 1_700_000_000_000_000_000 + seq)
        for seq in range(start, start + count)
    )


def run(host: str, port: int, connections: int, total: int, window: int, seconds: float, batch: int) -> dict:
    sel = selectors.DefaultSelector()
    perConn = total // connections
    states = []
    for index in range(connections):
        s = socket.create_connection((host, port))
        s.setblocking(False)
        state = {
            "sock": s, "sensor": f"bench-{index}-{int(time.time())}", "sent": 0, "acked": 0,
            "pending": b"", "target": perConn, "finished": False,
        }
        states.append(state)
        sel.register(s, selectors.EVENT_READ, state)
    started = time.perf_counter()
    deadline = started + seconds
    done = 0
    while done < connections and time.perf_counter() < deadline:
        for state in states:
            if state["pending"] == b"" and state["sent"] < state["target"] and state["sent"] - state["acked"] < window:
                n = min(batch, state["target"] - state["sent"], window - (state["sent"] - state["acked"]))
                state["pending"] = buildLines(state["sensor"], state["sent"], n)
                state["sent"] += n
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
            state["acked"] += data.count(b"\n")
            if state["acked"] >= state["target"] and not state["finished"]:
                state["finished"] = True
                done += 1
    elapsed = time.perf_counter() - started
    acked = sum(s["acked"] for s in states)
    for s in states:
        s["sock"].close()
    return {"acked": acked, "seconds": elapsed, "rate": acked / elapsed if elapsed else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--total", type=int, default=400_000)
    parser.add_argument("--window", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        raise SystemExit("the load generator only targets loopback")
    print(json.dumps(run(args.host, args.port, args.connections, args.total, args.window, args.seconds, args.batch)))


if __name__ == "__main__":
    main()
