"""
How many readings per second the BatchWriter stores and acknowledges, per
backend, beside the same readings through the same writer machinery with a
store that keeps nothing (the baseline): the ratio is the cost of
durability.

    python bench/bench_store.py [--readings N] [--chunk N] [--pg postgresql://...]

Readings are submitted in chunks (as one connection's chunk of lines would
be), keeping the writer's backlog under its high-water mark the way the
server's backpressure does. No asserts: this measures, it does not judge.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from twisted.internet import defer, task  # noqa: E402

from sensornet.metrics import ServerMetrics  # noqa: E402
from sensornet.reading import Reading  # noqa: E402
from sensornet.store import Store, WriteResult  # noqa: E402
from sensornet.writer import BatchWriter  # noqa: E402


class NullStore(Store):
    """
    Keeps nothing, answers at once: the baseline.
    """

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def write(self, readings: Sequence[Reading]) -> WriteResult:
        return WriteResult(len(readings), 0, ())

    def ping(self) -> bool:
        return True


def makeReadings(count: int, sensors: int = 200) -> List[Reading]:
    now = time.time()
    return [
        Reading(f"sensor-{i % sensors}", "temperature", 20.0 + (i % 100) / 10, "C", ts=now + i * 1e-6,
                seq=i // sensors, dialect="native", peer="127.0.0.1:40000", received_at=now)
        for i in range(count)
    ]


@defer.inlineCallbacks
def run(reactor: Any, name: str, url: str, factory: Optional[Callable[[str], Store]],
        readings: List[Reading], chunk: int) -> Any:
    writer = BatchWriter(url, reactor, ServerMetrics(), storeFactory=factory)
    writer.startService()
    yield writer.whenOpen()
    chunks = [readings[i : i + chunk] for i in range(0, len(readings), chunk)]
    done: List[Dict[int, str]] = []
    pending: List[defer.Deferred] = []
    started = time.perf_counter()
    for piece in chunks:
        while writer.backlog > writer.highWater:
            # What backpressure does to a server: stop taking lines for a bit.
            yield task.deferLater(reactor, 0.001, lambda: None)
        pending.append(writer.submit(piece).addCallback(done.append))
    yield defer.gatherResults(pending)
    elapsed = time.perf_counter() - started
    yield writer.stopService()
    rate = len(readings) / elapsed
    print(f"{name:<12} {len(readings):>9} readings in {elapsed:7.2f} s: {rate:>10,.0f} readings/s", flush=True)
    return rate


@defer.inlineCallbacks
def main(reactor: Any, options: argparse.Namespace) -> Any:
    readings = makeReadings(options.readings)
    rates = {}
    rates["null"] = yield run(reactor, "null", "null:", lambda url: NullStore(), readings, options.chunk)
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:{directory}/bench.db"
        rates["sqlite"] = yield run(reactor, "sqlite", url, None, readings, options.chunk)
    if options.pg:
        from sensornet.store.postgresql import PostgreSQLStore

        store = PostgreSQLStore(options.pg)
        store.open()
        store._connection().execute("TRUNCATE sensors, series, origins, fresh, blocks, rollup_1m, rollup_1h")  # a clean run each time
        store.close()
        rates["postgresql"] = yield run(reactor, "postgresql", options.pg, None, readings, options.chunk)
    print()
    for name, rate in rates.items():
        if name != "null":
            print(f"{name}: {rate / rates['null']:.2f} of the null store's rate")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=100, help="readings per submit call")
    parser.add_argument("--pg", metavar="URL", help="also measure this PostgreSQL database (its tables are emptied)")
    task.react(main, [parser.parse_args()])
