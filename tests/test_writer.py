"""
The BatchWriter with the real reactor, its real thread, against SQLite and a
real PostgreSQL, with real failures: PostgreSQL stopped and started, SQLite's
disk full (C{PRAGMA max_page_count}), readings the schema refuses. These are
integration tests; L{tests/test_writer_machine.py} drives the same writer's
lifecycle on fake time, with no thread.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from sensornet.feed import LiveFeed
from sensornet.metrics import ServerMetrics
from sensornet.reading import Reading
from sensornet.store import StoreUnavailable, openStore, storeFromURL
from sensornet.store.sqlite import SQLiteStore
from sensornet.writer import BatchWriter
from test_writer_machine import PressureRecorder

T0 = 1_718_100_000.0
TIMEOUT = 20


def make(sensor: str, seq: int | None, value: float = 1.0) -> Reading:
    return Reading(sensor, "temperature", value, "C", ts=T0 + (seq or 0), seq=seq, received_at=T0, peer="p")


def stored(url: str) -> List[tuple]:
    """
    (sensor, seq) of every stored reading, read through a connection of its
    own.
    """
    store = openStore(url)
    try:
        return [(r["sensor"], r["seq"]) for r in store.readings(limit=1_000_000)]
    finally:
        store.close()


class CountingStore:
    """
    Wraps a real store: counts write() calls, optionally sleeps in them.
    """

    def __init__(self, inner: Any, counter: List[int], delay: float = 0.0) -> None:
        self._inner = inner
        self._counter = counter
        self._delay = delay

    def write(self, readings):
        self._counter.append(len(readings))
        if self._delay:
            time.sleep(self._delay)
        return self._inner.write(readings)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def wait(d: defer.Deferred, reactor, seconds: float = TIMEOUT) -> defer.Deferred:
    return d.addTimeout(seconds, reactor)


@pytest_twisted.inlineCallbacks
def startWriter(writer: BatchWriter, reactor):
    writer.startService()
    yield wait(writer.whenOpen(), reactor)
    return writer


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_group_commit_acknowledges_after_commit(store_url, reactor):
    """
    Many submissions made together go out in few transactions, and each
    submission's Deferred fires only when its readings are in the database.
    """
    writes: List[int] = []
    metrics = ServerMetrics()
    writer = BatchWriter(store_url, reactor, metrics, maxBatch=500,
                         storeFactory=lambda url: CountingStore(storeFromURL(url), writes))
    yield startWriter(writer, reactor)
    checked: List[bool] = []

    def check(rejected: Dict[int, str], sensor: str) -> None:
        assert rejected == {}
        checked.append(sum(1 for s, _ in stored(store_url) if s == sensor) == 10)

    ds = [writer.submit([make(f"s{i}", n) for n in range(10)]).addCallback(check, f"s{i}") for i in range(100)]
    assert writer.backlog == 1000
    yield wait(defer.gatherResults(ds, consumeErrors=True), reactor)
    assert checked == [True] * 100
    assert sum(writes) == 1000
    assert len(writes) <= 10
    assert metrics.registry.get_sample_value("sensornet_readings_stored_total") == 1000
    assert writer.backlog == 0
    yield writer.stopService()


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_duplicates_acknowledged_and_only_new_readings_published(store_url, reactor):
    """
    Resent readings are acknowledged (counted as duplicates) and the live
    feed gets only the newly stored ones.
    """
    feed = LiveFeed()
    published: List[Reading] = []
    feed.subscribe(published.extend)
    metrics = ServerMetrics()
    writer = BatchWriter(store_url, reactor, metrics, feed)
    yield startWriter(writer, reactor)
    first = [make("a", n) for n in range(5)]
    assert (yield wait(writer.submit(first), reactor)) == {}
    again = [make("a", n) for n in range(3, 8)] + [make("a", None)]
    assert (yield wait(writer.submit(again), reactor)) == {}
    assert published == first + again[2:]
    assert metrics.registry.get_sample_value("sensornet_readings_duplicate_total") == 2
    assert sorted(stored(store_url), key=repr) == sorted([("a", n) for n in range(8)] + [("a", None)], key=repr)
    yield writer.stopService()


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_rejected_reading_isolated_the_rest_committed(store_url, reactor):
    """
    Readings the schema refuses (forced past the parser by building them
    directly) are reported by index to their own submission; every other
    reading of the batch is committed.
    """
    writer = BatchWriter(store_url, reactor, ServerMetrics(), maxDelay=0.05)
    yield startWriter(writer, reactor)
    callA = [make("a", n) for n in range(40)]
    callA[17] = make("a", 17, value=math.inf)
    callB = [make("b", n) for n in range(40)]
    callB[3] = make("x" * 200, 3)
    callB[39] = make("b", 39, value=math.nan)
    results = yield wait(defer.gatherResults([writer.submit(callA), writer.submit(callB)]), reactor)
    assert [sorted(r) for r in results] == [[17], [3, 39]]
    assert all(isinstance(reason, str) and reason for r in results for reason in r.values())
    rows = stored(store_url)
    assert len(rows) == 77
    assert ("a", 17) not in rows and ("b", 39) not in rows
    yield writer.stopService()


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_backpressure_observers_told_at_crossings(tmp_path, reactor):
    """
    A slow store makes the backlog cross the high-water mark (observers told
    once), and draining it below the low-water mark tells them once more.
    """
    url = f"sqlite:{tmp_path}/p.db"
    writes: List[int] = []
    writer = BatchWriter(url, reactor, ServerMetrics(), maxBatch=20, highWater=50, lowWater=10,
                         storeFactory=lambda u: CountingStore(storeFromURL(u), writes, delay=0.05))
    observer = PressureRecorder()
    writer.addPressureObserver(observer)
    yield startWriter(writer, reactor)
    ds = [writer.submit([make("s", i * 10 + n) for n in range(10)]) for i in range(5)]
    assert observer.events == []
    ds.append(writer.submit([make("s", 50 + n) for n in range(10)]))
    assert writer.overloaded and observer.events == ["overloaded"]
    yield wait(defer.gatherResults(ds), reactor)
    assert observer.events == ["overloaded", "recovered"]
    assert not writer.overloaded
    assert len(stored(url)) == 60
    yield writer.stopService()


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_stop_service_commits_everything_queued(store_url, reactor):
    """
    Stopping commits what is queued (without waiting for the gather delay)
    and fires every pending Deferred before it finishes.
    """
    writer = BatchWriter(store_url, reactor, ServerMetrics(), maxBatch=100, maxDelay=30)
    yield startWriter(writer, reactor)
    fired: List[Any] = []
    ds = [writer.submit([make(f"s{i}", n) for n in range(30)]).addBoth(fired.append) for i in range(20)]
    yield wait(writer.stopService(), reactor)
    assert fired == [{}] * 20
    assert len(stored(store_url)) == 600
    late = yield writer.submit([make("late", 1)]).addErrback(lambda f: f.value)
    assert isinstance(late, StoreUnavailable)
    del ds


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_stop_during_outage_is_bounded(tmp_path, reactor):
    """
    When the store cannot be opened, stopping gives up after stopTimeout and
    fails the pending Deferreds with StoreUnavailable.
    """
    writer = BatchWriter(f"sqlite:{tmp_path}/no/such/dir/x.db", reactor, ServerMetrics(), stopTimeout=0.5)
    writer.startService()
    d = writer.submit([make("s", 1)])
    yield defer.succeed(None)
    started = time.monotonic()
    yield wait(writer.stopService(), reactor, 5)
    assert time.monotonic() - started < 3
    error = yield d.addErrback(lambda f: f.value)
    assert isinstance(error, StoreUnavailable)


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_stop_then_start_writes_again(store_url, reactor):
    """
    A writer stopped and started again (with a new thread) stores readings
    again, and stopping it twice is harmless.
    """
    writer = BatchWriter(store_url, reactor, ServerMetrics())
    yield startWriter(writer, reactor)
    assert (yield wait(writer.submit([make("a", 1)]), reactor)) == {}
    yield wait(writer.stopService(), reactor)
    yield wait(writer.stopService(), reactor)
    writer.startService()
    assert (yield wait(writer.submit([make("a", 2)]), reactor)) == {}
    stopping = [writer.stopService(), writer.stopService()]
    yield wait(defer.gatherResults(stopping), reactor)
    assert sorted(stored(store_url)) == [("a", 1), ("a", 2)]


class FillableSQLiteStore(SQLiteStore):
    """
    An SQLite store whose file cannot grow while C{full[0]} is true: a real
    SQLITE_FULL from the engine (C{PRAGMA max_page_count}), set on the
    writer's own connection before each write.
    """

    full = [False]

    def write(self, readings):
        db = self._connection()
        if self.full[0]:
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {pages}")
        else:
            db.execute("PRAGMA max_page_count = 1073741823")
        return super().write(readings)


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_sqlite_disk_full_acknowledges_nothing_then_recovers(tmp_path, reactor):
    """
    Disk full: the submission fails with StoreUnavailable, nothing of it is
    stored, the failure is counted; once space is back, the writer has
    reconnected by itself and the resent readings are stored once.
    """
    url = f"sqlite:{tmp_path}/full.db"
    FillableSQLiteStore.full = [False]
    metrics = ServerMetrics()
    writer = BatchWriter(url, reactor, metrics, storeFactory=lambda u: FillableSQLiteStore(u.split(":", 1)[1]))
    yield startWriter(writer, reactor)
    yield wait(writer.submit([make("s", n) for n in range(10)]), reactor)
    FillableSQLiteStore.full[0] = True
    big = [make("s", n) for n in range(10, 3000)]
    error = yield wait(writer.submit(big), reactor).addErrback(lambda f: f.value)
    assert isinstance(error, StoreUnavailable), error
    assert len(stored(url)) == 10
    assert metrics.registry.get_sample_value("sensornet_commit_failures_total") == 1
    FillableSQLiteStore.full[0] = False
    result = yield wait(writer.submit(big), reactor)
    assert result == {}
    rows = stored(url)
    assert sorted(rows) == [("s", n) for n in range(3000)]
    yield writer.stopService()


@pytest.mark.timeout(90)
@pytest_twisted.inlineCallbacks
def test_postgresql_restarted_under_load(postgresql_server, postgresql_db, reactor):
    """
    PostgreSQL stopped while readings stream, then started again: every
    acknowledged reading is stored, the writer reconnects by itself, and
    after the sender resends what was not acknowledged every reading is
    stored exactly once.
    """
    metrics = ServerMetrics()
    writer = BatchWriter(postgresql_db, reactor, metrics, maxBatch=200)
    yield startWriter(writer, reactor)
    acked: List[Reading] = []
    unacked: List[Reading] = []
    allReadings: List[Reading] = []

    def send(readings: List[Reading]) -> defer.Deferred:
        allReadings.extend(readings)
        return writer.submit(readings).addCallbacks(
            lambda rejected: acked.extend(readings), lambda f: (f.trap(StoreUnavailable), unacked.extend(readings))
        )

    pending = []
    seq = 0

    @defer.inlineCallbacks
    def stream(chunks: int):
        nonlocal seq
        for _ in range(chunks):
            chunk = [make(f"s{seq % 7}", seq) for seq in range(seq, seq + 50)]
            seq += 50
            pending.append(send(chunk))
            yield threads.deferToThread(time.sleep, 0.005)

    yield stream(10)
    stopping = threads.deferToThread(postgresql_server.stop)
    yield stream(20)
    yield stopping
    yield stream(10)
    yield threads.deferToThread(postgresql_server.start)
    yield stream(10)
    yield wait(defer.gatherResults(pending), reactor, 60)
    assert unacked, "the outage should have failed some submissions"
    assert metrics.registry.get_sample_value("sensornet_commit_failures_total") >= 1
    rows = stored(postgresql_db)
    assert len(rows) == len(set(rows))
    assert {(r.sensor, r.seq) for r in acked} <= set(rows)
    # The writer reconnected by itself: new submissions succeed.
    assert (yield wait(writer.submit([make("after", 1)]), reactor)) == {}
    # The sender resends what was not acknowledged.
    yield wait(writer.submit(list(unacked)), reactor)
    rows = stored(postgresql_db)
    assert sorted(rows, key=repr) == sorted({(r.sensor, r.seq) for r in allReadings} | {("after", 1)}, key=repr)
    yield writer.stopService()
