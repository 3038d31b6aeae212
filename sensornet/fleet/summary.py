"""
The fleet summary (series by state and kind), read at most once a second
however many dashboards ask, and the low-cardinality gauges it feeds:
C{sensornet_sensors{state="live|late|silent|never"}}.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .states import STATES

__all__ = ["FleetSummaryCache", "FleetGaugeService"]

_log = Logger()


class FleetSummaryCache:
    """
    L{sensornet.store.queries.StoreQueries.fleetSummary}, shared: callers
    within C{ttl} seconds of the last answer get that answer, callers while
    a query runs wait for that query. Each fresh answer sets the gauges.

    @param queries: Provides C{fleetSummary(now)}.
    @param clock: The server's clock (its C{seconds()} is "now").
    @param registry: Where C{sensornet_sensors} and
        C{sensornet_fleet_summary_failures_total} go.
    """

    ttl = 1.0

    def __init__(self, queries: Any, clock: IReactorTime, registry: Optional[CollectorRegistry] = None) -> None:
        self._queries = queries
        self._clock = clock
        self._cached: Optional[Dict[str, Any]] = None
        self._at = float("-inf")
        self._waiting: Optional[List["Deferred[Dict[str, Any]]"]] = None
        registry = registry if registry is not None else CollectorRegistry()
        self.gauge = Gauge("sensornet_sensors", "Series per state (sensors never seen count as never).",
                           ["state"], registry=registry)
        for state in STATES:
            self.gauge.labels(state=state)
        self.failures = Counter("sensornet_fleet_summary_failures", "Fleet summaries the store failed to answer.",
                                registry=registry)

    def get(self) -> "Deferred[Dict[str, Any]]":
        """
        The summary, no older than C{ttl} seconds.
        """
        now = self._clock.seconds()
        if self._cached is not None and now - self._at < self.ttl:
            return succeed(self._cached)
        d: Deferred[Dict[str, Any]] = Deferred()
        if self._waiting is not None:
            self._waiting.append(d)
            return d
        self._waiting = [d]
        query = self._queries.fleetSummary(now)

        def answered(summary: Dict[str, Any]) -> None:
            summary = dict(summary, now=now)
            self._cached, self._at = summary, now
            for state in STATES:
                self.gauge.labels(state=state).set(summary["states"].get(state, 0))
            waiting, self._waiting = self._waiting or [], None
            for w in waiting:
                w.callback(summary)

        def failed(failure: Failure) -> None:
            self.failures.inc()
            waiting, self._waiting = self._waiting or [], None
            for w in waiting:
                w.errback(failure)

        query.addCallbacks(answered, failed)
        return d


class FleetGaugeService(Service):
    """
    Refreshes the gauges of a L{FleetSummaryCache} every C{interval}
    seconds (one grouped query over the series: cheap, never per reading).
    """

    def __init__(self, cache: FleetSummaryCache, clock: IReactorTime, interval: float = 15.0) -> None:
        self._cache = cache
        self._loop = LoopingCall(self._refresh)
        self._loop.clock = clock
        self.interval = interval

    def _refresh(self) -> "Deferred[None]":
        def failed(failure: Failure) -> None:
            _log.warn("fleet summary failed: {why}", why=failure.getErrorMessage())

        return self._cache.get().addCallbacks(lambda _: None, failed)

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=True)

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return succeed(None)
