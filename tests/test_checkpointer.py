"""
The SQLite checkpointer never dies silently: it survives failures to
connect or to checkpoint, counts and logs them (rate-limited), keeps the WAL
bounded meanwhile, and escalates when a reader pins the WAL.

Failures are injected through the store's L{SQLiteStore._newCheckpointer}
hook (a connect function that fails N times, or always); intervals are a
few milliseconds and every wait is a bounded poll on a condition, never a
fixed sleep whose length decides the outcome.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from twisted.logger import Logger

from sensornet.reading import Reading
from sensornet.store.sqlite import SQLiteStore, _Checkpointer

T0 = 1_718_100_000.0
WAIT = 30.0


def waitUntil(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.005)


def batch(start: int, count: int = 200) -> List[Reading]:
    return [
        Reading(f"s{i % 50}", "temperature", 20.0 + i % 7, "C", ts=T0 + i, seq=i,
                received_at=T0 + i, peer="127.0.0.1:1")
        for i in range(start, start + count)
    ]


class FlakyStore(SQLiteStore):
    """
    An SQLite store whose checkpointer's own connections fail while
    C{failing()} says so, with millisecond intervals and a list of the
    checkpointer's log events.
    """

    def __init__(self, path: str, failing: Callable[[], bool], fallback: bool = True,
                 logInterval: float = 3600.0, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.failing = failing
        self.fallback = fallback
        self.logInterval = logInterval
        self.events: List[Dict[str, Any]] = []
        self.connects = 0
        self.checkpointer: Optional[_Checkpointer] = None

    def _connect(self) -> sqlite3.Connection:
        self.connects += 1
        if self.failing():
            # What SQLite says when open() fails with EMFILE.
            raise sqlite3.OperationalError("unable to open database file")
        return sqlite3.connect(self.path, timeout=self.busyTimeout, isolation_level=None,
                               check_same_thread=False)

    def _newCheckpointer(self) -> _Checkpointer:
        checkpointer = _Checkpointer(
            self.path, self.busyTimeout, self._writeLock,
            (lambda: self._db) if self.fallback else (lambda: None),
            connect=self._connect, log=Logger(observer=self.events.append),
        )
        checkpointer.interval = 0.002
        checkpointer.maxBackoff = 0.02
        checkpointer.logInterval = self.logInterval
        checkpointer.walLimit = self.walLimit
        checkpointer.escalateTimeout = 0.02
        self.checkpointer = checkpointer
        return checkpointer

    def formatted(self) -> List[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in list(self.events)]


def test_checkpointer_recovers_after_failed_connects_counts_and_logs(tmp_path) -> None:
    """
    The checkpointer's connect fails three times (as at EMFILE): it does not
    give up; it logs the first failure at once, not every failure, counts
    all three in store.checkpointFailures, logs its recovery with the count,
    and then checkpoints again.
    """
    left = [3]

    def failing() -> bool:
        left[0] -= 1
        return left[0] >= 0

    store = FlakyStore(str(tmp_path / "x.db"), failing, fallback=False)
    store.open()
    try:
        store.write(batch(0))
        waitUntil(lambda: store.checkpointer is not None and store.checkpointer.rounds >= 3, "rounds after recovery")
        assert store.checkpointFailures == 3
        assert store.connects == 4
        lines = store.formatted()
        assert len(lines) == 2, lines
        assert "failed" in lines[0] and "unable to open database file" in lines[0]
        assert "recovered after 3 failures" in lines[1]
        assert store.events[0]["log_level"].name == "warn"
        # Still working: a later batch is checkpointed too.
        rounds = store.checkpointer.rounds
        store.write(batch(1000))
        waitUntil(lambda: store.checkpointer.rounds > rounds + 2, "rounds after a later write")
        assert store.checkpointFailures == 3
    finally:
        store.close()
    assert store.checkpointFailures == 3  # kept after close


def test_wal_grows_while_the_checkpointer_cannot_connect_and_shrinks_after(tmp_path) -> None:
    """
    With no fallback, a checkpointer that cannot connect leaves the WAL to
    grow past its limit; once it can connect again, it escalates to a
    TRUNCATE checkpoint and the WAL file shrinks to nothing.
    """
    broken = threading.Event()
    broken.set()
    store = FlakyStore(str(tmp_path / "x.db"), broken.is_set, fallback=False)
    store.walLimit = 256 * 1024
    store.open()
    try:
        seq = 0
        while store.walBytes() <= 2 * store.walLimit:
            store.write(batch(seq))
            seq += 200
        assert store.checkpointFailures >= 1
        grown = store.walBytes()
        broken.clear()
        waitUntil(lambda: store.walBytes() == 0, "the WAL truncated after recovery")
        assert store.checkpointer is not None and store.checkpointer.escalations >= 1
        assert grown > store.walLimit
        waitUntil(lambda: any("recovered" in line for line in store.formatted()), "recovery logged")
        db = sqlite3.connect(str(tmp_path / "x.db"))
        assert db.execute("SELECT sum(n) FROM fresh").fetchone()[0] == seq
        db.close()
    finally:
        store.close()


def test_without_a_connection_of_its_own_the_wal_stays_bounded(tmp_path) -> None:
    """
    A checkpointer that can never connect falls back to checkpointing on
    the writer's connection (holding the write lock), so the WAL stays
    bounded through a long run of writes; every failed connect is counted,
    but the log holds one line, not one per failure.
    """
    store = FlakyStore(str(tmp_path / "x.db"), lambda: True, fallback=True)
    store.walLimit = 256 * 1024
    store.open()
    try:
        biggest = 0
        for start in range(0, 40_000, 200):
            store.write(batch(start))
            biggest = max(biggest, store.walBytes())
        waitUntil(lambda: store.checkpointFailures >= 10, "ten failed connects")
        assert len(store.formatted()) == 1, store.formatted()
        # Without the fallback, this run leaves several MB of WAL (the test
        # above); with it, the WAL never gets far past its limit.
        assert biggest < 4 * 1024 * 1024, biggest
    finally:
        store.close()


def test_failures_are_logged_again_once_per_log_interval(tmp_path) -> None:
    """
    While failures go on, one line per logInterval says how many there
    were; here logInterval is 0, so every failure after the first logs a
    "still failing" line with the running count.
    """
    store = FlakyStore(str(tmp_path / "x.db"), lambda: True, fallback=False, logInterval=0.0)
    store.open()
    try:
        store.write(batch(0))
        waitUntil(lambda: store.checkpointFailures >= 3, "three failures")
        lines = store.formatted()
        assert "still failing: 2 failures in a row" in lines[1], lines
    finally:
        store.close()


def test_a_reader_pinning_the_wal_is_counted_then_truncated_when_it_leaves(tmp_path) -> None:
    """
    A reader holding a snapshot keeps the WAL from being reset, so it grows;
    past walLimit the checkpointer escalates to TRUNCATE, which cannot
    finish while the reader stays: that is counted and logged. When the
    reader leaves, the next escalation truncates the WAL to nothing.
    """
    store = FlakyStore(str(tmp_path / "x.db"), lambda: False)
    store.walLimit = 256 * 1024
    store.open()
    reader = sqlite3.connect(str(tmp_path / "x.db"), isolation_level=None)
    try:
        store.write(batch(0))
        reader.execute("BEGIN")
        assert reader.execute("SELECT sum(n) FROM fresh").fetchone()[0] == 200
        seq = 200
        while store.walBytes() <= 2 * store.walLimit:
            store.write(batch(seq))
            seq += 200
        waitUntil(lambda: store.checkpointFailures >= 1, "a pinned escalation counted")
        assert any("a reader kept it from being reset" in line for line in store.formatted())
        reader.execute("COMMIT")
        waitUntil(lambda: store.walBytes() == 0, "the WAL truncated once the reader left")
        waitUntil(lambda: any("recovered" in line for line in store.formatted()), "recovery logged")
    finally:
        reader.close()
        store.close()
