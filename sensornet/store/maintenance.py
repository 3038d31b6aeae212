"""
The store's housekeeping, off the hot path: compaction (fresh rows into
blocks and rollups) and expiry (what retention no longer keeps), on one
thread and one database connection of their own.

A round runs every C{interval} seconds, driven by the reactor's clock (so
tests drive it with L{twisted.internet.task.Clock}); its blocking work runs
on the maintenance thread, and a round never starts while the previous one
is still running. Each round compacts the next slice of a sweep over the
series in id order that takes C{compactAfter} seconds: of each series it
visits, the fresh rows written at least C{compactAfter} seconds earlier
become one block per hour-aligned window (at most C{compactBudget}
readings a round, in transactions of C{compactRows} fresh rows). So a
reading waits between C{compactAfter} and twice that in a fresh row, and
a block holds what its series sent over C{compactAfter}. Then the round
expires the data of the next C{expireSeries} series, walking the series in
id order and starting over at the end, in transactions of at most
C{expireRows} deleted rows and at most C{expireBudget} rows a round:
expiry is a small, steady trickle,
never one large delete, and the writer waits for at most one small
transaction (bench/sensors.py --purge measures what a purge costs the
sensors' acks).

The first round also logs what the retention policy will cost: the disk
expected for the stored fleet at its median cadence (when it has one), and
for a reference fleet of L{REFERENCE_SERIES} series every
L{REFERENCE_INTERVAL} seconds, so an operator sees at start whether the
disk will hold (L{sensornet.store.retention.estimateDisk}).

A failed round is counted (C{sensornet_store_maintenance_failures}),
logged (the first at once, then once a minute while it keeps failing), its
connection dropped, and the next round tries again: maintenance never stops
before the service does.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any, Callable, Deque, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..metrics import ServerMetrics
from .base import ORIGIN_USE_PERIOD, Store
from .layout import BLOCK_SPAN, retentionRules
from .threads import WorkerThreads

__all__ = ["StoreMaintenance", "REFERENCE_SERIES", "REFERENCE_INTERVAL", "originHorizon"]

#: Margin added to an origin's horizon for what the arithmetic does not see
#: (a clock stepped back, an expiry pass that lasted long).
ORIGIN_SLACK = 86_400.0


def originHorizon(retention: Any, maxClockSkew: Optional[float]) -> Optional[float]:
    """
    How long after an origin's recorded last use no stored reading can
    name it any more (seconds); L{None} when that never comes (a rule keeps
    raw readings for ever, or readings may be stamped any time ahead).

    A reading received when its origin was last used is stamped at most
    C{maxClockSkew} later; its block holds one hour-aligned window
    (L{BLOCK_SPAN}), so ends at most an hour after that; it goes once its
    end is older than its rule's raw retention. The use is recorded at most
    once an L{ORIGIN_USE_PERIOD}, so it may have come that much later; and
    L{ORIGIN_SLACK} on top.
    """
    if maxClockSkew is None:
        return None
    raws = [rule.raw for rule in retentionRules(retention)]
    if any(raw is None for raw in raws):
        return None
    return max(raws) + maxClockSkew + BLOCK_SPAN / 1_000_000 + ORIGIN_USE_PERIOD + ORIGIN_SLACK

#: The fleet the start-up disk estimate is also given for: the fleet this
#: service is built for, at the seed's temperature cadence.
REFERENCE_SERIES = 20_000
REFERENCE_INTERVAL = 2.0


class StoreMaintenance(Service):
    """
    Compacts and expires the store at C{url} in the background.

    @ivar rounds: Rounds that completed.
    @ivar failures: Rounds that failed.
    @ivar compacted: Readings compacted so far.
    @ivar expired: Rows expired so far.

    Its thread runs at the reactor's scheduling priority. At nice +10
    (Linux, per thread) W2's ack p99 fell (9.3 and 7.0 against 15.6 and
    11.3 ms), but a compaction transaction starved while it held the
    store's write lock kept the writer waiting (a write of one reading took
    69 ms; max 87-244 ms): the priority was inverted, so it was not kept.

    @cvar compactRows: Most fresh rows one compaction transaction takes.
        The writer waits while it holds the store's write lock: at W2
        (19,000 sensors every 2 s, a reading a fresh row) 5,000 rows held
        it 20-40 ms at a time and put 2-4 % of the acks that much late
        (p99 25 ms); 500 hold it a few milliseconds (p99 14 ms).
    @cvar statsInterval: Seconds between two readings of the store's size
        for the C{sensornet_store_fresh_readings} and
        C{sensornet_store_series} gauges (a scan of every fresh row).
    @cvar originInterval: Seconds between two expiries of unused origins
        (a scan of the origins table).
    @ivar originsExpired: Origins deleted so far.
    """

    _log = Logger()

    interval = 1.0
    compactRows = 500
    compactBudget = 500_000
    expireSeries = 200
    expireRows = 500
    expireBudget = 20_000
    logInterval = 60.0
    statsInterval = 15.0
    originInterval = 3600.0

    def __init__(
        self,
        url: str,
        reactor: Any,
        metrics: Optional[ServerMetrics] = None,
        retention: Any = None,
        compactAfter: float = 60.0,
        openStore: Optional[Callable[[str], Store]] = None,
        wallClock: Optional[Callable[[], float]] = None,
        maxClockSkew: Optional[float] = None,
    ) -> None:
        """
        @param reactor: Drives the rounds (L{IReactorTime}) and hears from the
            thread (L{IReactorFromThreads}).
        @param retention: The L{sensornet.store.retention.RetentionPolicy}, or
            L{None} for the default.
        @param compactAfter: Seconds a fresh row waits before it is compacted.
        @param wallClock: Seconds since the epoch now, for expiry (default:
            the reactor's C{seconds}).
        @param maxClockSkew: The server's C{--max-clock-skew}: how far ahead
            of its clock a stored reading's time can be, which bounds how
            long a block outlives the origins it names; L{None} (no limit)
            keeps every origin.
        """
        self.url = url
        self.reactor = reactor
        self.metrics = metrics
        self.retention = retention
        self.compactAfter = compactAfter
        self._openStore = openStore
        self._wallClock = wallClock or reactor.seconds
        self.rounds = 0
        self.failures = 0
        self.compacted = 0
        self.expired = 0
        self.originsExpired = 0
        self.maxClockSkew = maxClockSkew
        # The wall time the expiry pass under way began, and that of the
        # last pass completed (None: none yet in this process).
        self._passStart: Optional[float] = None
        self._expiredAsOf: Optional[float] = None
        # When origins are next expired (wall time).
        self._originsDue = 0.0
        self._store: Optional[Store] = None
        self._threads: Optional[WorkerThreads] = None
        self._loop: Optional[LoopingCall] = None
        self._running: Optional[Deferred[None]] = None
        # (when, the fresh watermark then): the rows up to a mark taken
        # compactAfter seconds ago are old enough to compact.
        self._marks: Deque[Tuple[float, int]] = collections.deque()
        self._expireAfter = 0
        # The compaction sweep's place: the last series id it finished.
        self._sweepAfter = 0
        self._sweepRound = 0
        # When the gauges of the store's size are next read (reactor time).
        self._statsDue = 0.0
        self._failingSince: Optional[float] = None
        self._lastLogged = 0.0
        self._unlogged = 0
        # (series stored, their median interval): taken by the first round,
        # logged once.
        self._estimate: Optional[Tuple[int, Optional[float]]] = None
        self._estimateLogged = False

    def startService(self) -> None:
        super().startService()
        self._threads = WorkerThreads(self.reactor, 1, name="sensornet-store-maintenance", onExit=self._drop)
        self._threads.start()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        running = self._running if self._running is not None else succeed(None)
        threads, self._threads = self._threads, None

        def stopThreads(_: object) -> Any:
            return threads.stop() if threads is not None else None

        return running.addBoth(stopThreads)

    def _drop(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def _tick(self) -> None:
        if self._running is not None or self._threads is None:
            return
        now = self.reactor.seconds()
        wall = self._wallClock()
        d = self._threads.run(self._round, now, wall)
        d.addCallbacks(self._succeeded, self._failed, errbackArgs=(now,))
        self._running = d

        def finished(_: object) -> None:
            self._running = None

        d.addBoth(finished)

    def _round(self, now: float, wall: float) -> Tuple[int, int, Optional[dict], int]:
        """
        One round, on the maintenance thread: (readings compacted, rows
        expired, the store's fleet stats when they were due, else L{None},
        origins expired).
        """
        store = self._store
        if store is None:
            if self._openStore is None:
                from . import storeFromURL

                store = storeFromURL(self.url)
            else:
                store = self._openStore(self.url)
            store.retention = self.retention
            store.open()
            self._store = store
        try:
            if self._estimate is None:
                self._estimate = (store.fleetStats().get("series", 0), store.medianInterval())
            self._marks.append((now, store.freshWatermark()))
            upTo = 0
            while self._marks and self._marks[0][0] <= now - self.compactAfter:
                upTo = self._marks.popleft()[1]
            if upTo:
                # Put it back: rows up to it written since may still wait.
                self._marks.appendleft((now - self.compactAfter, upTo))
            compacted = self._sweep(store, upTo) if upTo else 0
            expired = 0
            while True:
                if self._expireAfter == 0:
                    self._passStart = wall
                self._expireAfter, step = store.expireOnce(
                    wall, self._expireAfter, self.expireSeries, self.expireRows
                )
                expired += step
                if self._expireAfter == 0 and self._passStart is not None:
                    # A pass over every series is done: whatever retention
                    # dropped as of its start is gone.
                    self._expiredAsOf, self._passStart = self._passStart, None
                if step < self.expireRows or expired >= self.expireBudget:
                    break
                # Let the writer take the database between transactions.
                time.sleep(0.001)
            originsExpired = self._expireOrigins(store, wall)
            stats: Optional[dict] = None
            if now >= self._statsDue:
                # A scan of every fresh row: at a fleet's steady state (a
                # million rows) 60-90 ms of the core the reactor runs on,
                # too much for every round.
                self._statsDue = now + self.statsInterval
                stats = store.fleetStats()
            return compacted, expired, stats, originsExpired
        except BaseException:
            self._drop()
            raise

    def _expireOrigins(self, store: Store, wall: float) -> int:
        """
        Once every C{originInterval} seconds, after a whole expiry pass:
        delete the origins no stored reading can name any more (those
        unused for longer than L{originHorizon} before that pass began), in
        transactions of C{expireRows}, at most C{expireBudget} a round.
        """
        horizon = originHorizon(self.retention, self.maxClockSkew)
        if horizon is None or self._expiredAsOf is None or wall < self._originsDue:
            return 0
        self._originsDue = wall + self.originInterval
        before = self._expiredAsOf - horizon
        deleted = 0
        while True:
            step = store.expireOrigins(before, self.expireRows)
            deleted += step
            if step < self.expireRows or deleted >= self.expireBudget:
                return deleted
            time.sleep(0.001)

    def _sweep(self, store: Store, upTo: int) -> int:
        """
        Compact the next slice of the sweep over the series, on the
        maintenance thread: the rows up to C{upTo} of the series whose turn
        has come. A sweep takes C{compactAfter / interval} rounds (at least
        one) and reaches series id C{k / rounds * lastSeriesId} after its
        C{k}th round, so each series is visited once every C{compactAfter}
        seconds and its visit merges what it received over that time into
        one block. Returns the readings moved.

        Compacting every series' old rows in every round instead makes a
        block of whatever a series sent in one round: one reading for a
        sensor sending every 2 s, which costs about 38 us a reading to
        compact and 130 bytes a reading on disk, against about 5 us and 28
        bytes for the 30 readings a minute's visit gathers (measured on the
        fleet's cadence, 2,000 series).
        """
        last = store.lastSeriesId()
        if not last:
            return 0
        rounds = max(1, math.ceil(max(self.compactAfter, self.interval) / self.interval - 1e-9))
        self._sweepRound = min(self._sweepRound + 1, rounds)
        through = last * self._sweepRound // rounds
        compacted = 0
        while self._sweepAfter < through and compacted < self.compactBudget:
            moved, following = store.compactSeries(upTo, self.compactRows, self._sweepAfter, through)
            compacted += moved
            if following <= self._sweepAfter and not moved:
                # Nothing moved and no progress: let the next round retry.
                break
            self._sweepAfter = following
        if self._sweepAfter >= last:
            # A sweep ends once it has reached the last series (a round
            # short of budget leaves the rest to the next).
            self._sweepAfter = self._sweepRound = 0
        return compacted

    def _logEstimate(self) -> None:
        from .retention import DEFAULT_RETENTION, RetentionPolicy, describeEstimate, estimateDisk

        assert self._estimate is not None
        self._estimateLogged = True
        policy = self.retention if self.retention is not None else RetentionPolicy(DEFAULT_RETENTION)
        series, interval = self._estimate
        lines = []
        if series and interval:
            lines.append(describeEstimate(estimateDisk(policy, series, interval), series, interval)
                         + " (the stored fleet at its median cadence)")
        lines.append(describeEstimate(
            estimateDisk(policy, REFERENCE_SERIES, REFERENCE_INTERVAL), REFERENCE_SERIES, REFERENCE_INTERVAL,
        ) + " (reference fleet)")
        for line in lines:
            self._log.info("retention {retention}: {estimate}", retention=policy.default.describe(), estimate=line)

    def _succeeded(self, result: Tuple[int, int, Optional[dict], int]) -> None:
        compacted, expired, stats, originsExpired = result
        self.originsExpired += originsExpired
        if self.metrics is not None:
            self.metrics.originsExpired.inc(originsExpired)
        if not self._estimateLogged and self._estimate is not None:
            self._logEstimate()
        self.rounds += 1
        self.compacted += compacted
        self.expired += expired
        if self.metrics is not None:
            self.metrics.compacted.inc(compacted)
            self.metrics.expired.inc(expired)
        if self.metrics is not None and stats is not None:
            self.metrics.freshReadings.set(stats.get("fresh_readings", 0))
            self.metrics.series.set(stats.get("series", 0))
        if self._failingSince is not None:
            self._log.info(
                "store maintenance recovered after {seconds:.1f}s of failures",
                seconds=self.reactor.seconds() - self._failingSince,
            )
            self._failingSince = None

    def _failed(self, failure: Failure, now: float) -> None:
        self.failures += 1
        if self.metrics is not None:
            self.metrics.maintenanceFailures.inc()
        reason = failure.getErrorMessage()
        if self._failingSince is None:
            self._failingSince = self._lastLogged = now
            self._unlogged = 0
            self._log.warn("store maintenance failed: {reason}; retrying every {interval}s",
                           reason=reason, interval=self.interval)
        elif now - self._lastLogged >= self.logInterval:
            self._log.warn("store maintenance still failing ({unlogged} failures not logged): {reason}",
                           unlogged=self._unlogged, reason=reason)
            self._lastLogged = now
            self._unlogged = 0
        else:
            self._unlogged += 1
