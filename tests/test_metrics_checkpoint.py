"""
The SQLite checkpointer's health in a server's metrics: read from the store
the writer has open, carried on across reopened stores, absent for a store
without a checkpointed write-ahead log.
"""

from __future__ import annotations

from pathlib import Path

from zope.interface import classImplementsOnly, implementer
from zope.interface.verify import verifyObject

from sensornet.interfaces import ICheckpointedStore, IStore
from sensornet.metrics import ServerMetrics
from sensornet.store import openStore

FAILURES = "sensornet_sqlite_checkpoint_failures_total"
WAL = "sensornet_sqlite_wal_bytes"


@implementer(ICheckpointedStore)
class CheckpointedStore:
    """
    Stands in for an SQLite store: only what the metrics read.
    """

    url = "sqlite:fake.db"

    def __init__(self, failures: int = 0, wal: int = 0) -> None:
        self.checkpointFailures = failures
        self.wal = wal

    def walBytes(self) -> int:
        return self.wal

    def open(self) -> None: ...
    def close(self) -> None: ...
    def write(self, readings): ...  # type: ignore[no-untyped-def]
    def sensors(self): ...  # type: ignore[no-untyped-def]
    def readings(self, sensor=None, kind=None, since=None, until=None, limit=1000, after=None): ...  # type: ignore[no-untyped-def]
    def ping(self) -> bool: return True
    def schemaVersion(self) -> int: return 1


class PlainStore(CheckpointedStore):
    """
    A store that does not say it has a checkpointed log (PostgreSQL).
    """


# PlainStore inherits the declaration; take it back.
classImplementsOnly(PlainStore, IStore)


def test_nothing_is_exported_before_a_checkpointed_store_is_open() -> None:
    """
    A server that has not opened a store, or whose store has no checkpointed
    log, exports no SQLite series (rather than zeros that would mean
    "healthy").
    """
    metrics = ServerMetrics()
    assert metrics.registry.get_sample_value(FAILURES) is None
    metrics.storeOpened(PlainStore())
    assert metrics.registry.get_sample_value(FAILURES) is None
    assert metrics.registry.get_sample_value(WAL) is None


def test_failures_carry_on_across_reopened_stores_and_wal_size_is_read_at_scrape_time() -> None:
    """
    The writer opens a new store object after each failure; the exported
    count never goes back, and the WAL size is what the open store says now.
    """
    metrics = ServerMetrics()
    first = CheckpointedStore(failures=2, wal=4096)
    metrics.storeOpened(first)
    assert metrics.registry.get_sample_value(FAILURES) == 2
    assert metrics.registry.get_sample_value(WAL) == 4096
    first.checkpointFailures = 3
    first.wal = 0
    assert metrics.registry.get_sample_value(FAILURES) == 3
    assert metrics.registry.get_sample_value(WAL) == 0
    second = CheckpointedStore(failures=1, wal=10)
    metrics.storeOpened(second)
    assert metrics.registry.get_sample_value(FAILURES) == 4
    assert metrics.registry.get_sample_value(WAL) == 10


def test_the_sqlite_store_provides_the_checkpointed_store_interface(tmp_path: Path) -> None:
    """
    The real SQLite store is what the metrics adapt to, and reports a WAL on
    disk once written to.
    """
    store = openStore(f"sqlite:{tmp_path / 'c.db'}")
    try:
        assert verifyObject(ICheckpointedStore, store)
        metrics = ServerMetrics()
        metrics.storeOpened(store)
        assert metrics.registry.get_sample_value(FAILURES) == 0
        assert metrics.registry.get_sample_value(WAL) is not None
    finally:
        store.close()
