"""
The server's Prometheus metrics, one L{ServerMetrics} per server.

Each server owns its own L{prometheus_client.CollectorRegistry} instead of
the library's global default registry, so two servers in one process (tests,
the demo) never share counters.

Hot-path code updates these once per chunk or per batch (C{inc(n)}), never
once per line: an update takes a lock.
"""

from __future__ import annotations

from typing import Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .interfaces import ICheckpointedStore, IStore

from .reading import DIALECTS

__all__ = ["ServerMetrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class ServerMetrics:
    """
    Every metric a sensornet server exports, registered in C{self.registry}.

    Attribute names follow the metric names without the C{sensornet_} prefix.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.connectionsOpen = Gauge(
            "sensornet_connections_open", "Sensor connections open now.", registry=r
        )
        self.connections = Counter(
            "sensornet_connections", "Sensor connections accepted.", registry=r
        )
        self.readingsReceived = Counter(
            "sensornet_readings_received", "Readings parsed, by dialect.", ["dialect"], registry=r
        )
        self.readingsStored = Counter(
            "sensornet_readings_stored", "Readings newly stored (committed).", registry=r
        )
        self.readingsDuplicate = Counter(
            "sensornet_readings_duplicate",
            "Readings already stored under the same (sensor, seq): dropped and acknowledged.",
            registry=r,
        )
        self.linesRejected = Counter(
            "sensornet_lines_rejected", "Malformed lines answered with an error, by dialect.",
            ["dialect"], registry=r,
        )
        self.linesOversized = Counter(
            "sensornet_lines_oversized", "Connections closed for a line over the maximum length.",
            registry=r,
        )
        self.connectionsClosed = Counter(
            "sensornet_connections_closed",
            "Sensor connections closed by a guardrail, by reason (handshake_timeout, idle, junk, revoked).",
            ["reason"], registry=r,
        )
        self.connectionsRefused = Counter(
            "sensornet_connections_refused",
            "Connections refused at accept for a connection cap, by port (sensor, http) and reason "
            "(total, per_address).",
            ["port", "reason"], registry=r,
        )
        self.connectionLimit = Gauge(
            "sensornet_connection_limit",
            "Connection caps in force, by port (sensor, http) and scope (total, per_address); -1: no cap.",
            ["port", "scope"], registry=r,
        )
        self.httpConnectionsOpen = Gauge(
            "sensornet_http_connections_open", "HTTP connections open now.", registry=r
        )
        self.httpUnauthorized = Counter(
            "sensornet_http_unauthorized",
            "HTTP requests refused for want of a valid reader's bearer token, by reason "
            "(missing, malformed, invalid, not_ready).",
            ["reason"], registry=r,
        )
        # Every reason exported from the start (at 0), so a rate() over it
        # has a series before the first refusal.
        for reason in ("missing", "malformed", "invalid", "not_ready"):
            self.httpUnauthorized.labels(reason=reason)
        self.rejectedLinesUnlogged = Counter(
            "sensornet_rejected_lines_unlogged",
            "Refused lines not logged one by one (past the per-chunk cap or the per-second limit).",
            registry=r,
        )
        self.authSuccesses = Counter(
            "sensornet_auth_successes",
            "Sensor connections authenticated, by method (token, certificate).", ["method"], registry=r,
        )
        self.authFailures = Counter(
            "sensornet_auth_failures",
            "Sensor connections refused for want of a valid credential, by reason (invalid: a token or "
            "certificate name unknown, revoked or malformed; required: no auth line where one is needed; "
            "rate_limited: the address failed too often, closed on connecting).",
            ["reason"], registry=r,
        )
        self.readingsUnauthorized = Counter(
            "sensornet_readings_unauthorized",
            "Readings refused because their connection may not write as their sensor (not stored).",
            registry=r,
        )
        self.ackLatency = Histogram(
            "sensornet_ack_latency_seconds",
            "From receiving a chunk of readings to sending their acknowledgements.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batchSize = Histogram(
            "sensornet_batch_size", "Readings per committed batch.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.commitSeconds = Histogram(
            "sensornet_commit_seconds", "Time to write and commit one batch.",
            buckets=_COMMIT_BUCKETS, registry=r,
        )
        self.commitFailures = Counter(
            "sensornet_commit_failures", "Batches whose commit failed (nothing in them acknowledged).",
            registry=r,
        )
        self.writerBacklog = Gauge(
            "sensornet_writer_backlog", "Readings waiting to be committed.", registry=r
        )
        self.transportsPaused = Gauge(
            "sensornet_transports_paused", "Connections whose reading is paused for backpressure.",
            registry=r,
        )
        self.compacted = Counter(
            "sensornet_store_compacted_readings",
            "Readings the compactor moved from fresh rows into blocks and rollups.", registry=r,
        )
        self.expired = Counter(
            "sensornet_store_expired_rows", "Blocks and rollup rows deleted by retention.", registry=r,
        )
        self.originsExpired = Counter(
            "sensornet_store_expired_origins",
            "Origins (unit, peer, dialect) deleted as named by no stored reading any more.", registry=r,
        )
        self.maintenanceFailures = Counter(
            "sensornet_store_maintenance_failures",
            "Compaction or expiry rounds that failed (retried on the next round).", registry=r,
        )
        self.freshReadings = Gauge(
            "sensornet_store_fresh_readings", "Stored readings not yet compacted into blocks.", registry=r,
        )
        self.series = Gauge("sensornet_store_series", "Series (sensor and kind) in the store.", registry=r)
        # Create the labelled children up front so every dialect shows, at 0,
        # from the first scrape.
        for dialect in DIALECTS:
            self.readingsReceived.labels(dialect)
            self.linesRejected.labels(dialect)
        self.linesRejected.labels("unknown")
        for port in ("sensor", "http"):
            for reason in ("total", "per_address"):
                self.connectionsRefused.labels(port, reason)
        # The store the writer has open, if it has a checkpointed WAL; read
        # at scrape time by _CheckpointCollector.
        self.checkpointedStore: Optional[ICheckpointedStore] = None
        self.checkpointFailuresBefore = 0
        r.register(_CheckpointCollector(self))

    def storeOpened(self, store: IStore) -> None:
        """
        The writer opened C{store} (a new store object each time it opens
        one): from now on, report its checkpointer in
        C{sensornet_sqlite_checkpoint_failures_total} (which carries on from
        the stores before it) and C{sensornet_sqlite_wal_bytes}.
        """
        previous = self.checkpointedStore
        if previous is not None:
            self.checkpointFailuresBefore += previous.checkpointFailures
        self.checkpointedStore = ICheckpointedStore(store, None)


class _CheckpointCollector:
    """
    The SQLite checkpointer's health, read from the open store when
    Prometheus scrapes (the checkpointer runs on a thread of its own, which
    must not touch the registry). Nothing is exported until a store with a
    checkpointed write-ahead log has been opened.
    """

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        store = metrics.checkpointedStore
        if store is None:
            return
        failures = CounterMetricFamily(
            "sensornet_sqlite_checkpoint_failures",
            "SQLite checkpoint rounds that failed (see docs/storage.md, SQLite checkpoints).",
        )
        failures.add_metric([], metrics.checkpointFailuresBefore + store.checkpointFailures)
        yield failures
        wal = GaugeMetricFamily("sensornet_sqlite_wal_bytes", "Size of the SQLite write-ahead log on disk.")
        wal.add_metric([], store.walBytes())
        yield wal
