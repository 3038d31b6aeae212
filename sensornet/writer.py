"""
The store writer: group commit on one thread off the reactor, with
backpressure.

Readings handed to L{BatchWriter.submit} wait in an in-memory queue (on the
reactor thread); one dedicated thread owns the store connection and commits
them in batches, one transaction each. A submission's L{Deferred} fires only
once every one of its readings is committed (or found already stored), so a
server that acknowledges on that Deferred acknowledges only what is durable.

Group commit: when the writer thread is idle, a batch closes C{maxDelay}
seconds after the first waiting reading arrived (or at once when
C{maxBatch} readings wait); while the thread is busy, readings accumulate and
the next batch takes up to C{maxBatch} of them as soon as it is free. Under
load the batches grow by themselves, so the cost of a commit (an fsync, a
network round trip) is shared by thousands of readings.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Protocol, Sequence, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .feed import LiveFeed
from .metrics import ServerMetrics
from .reading import Reading
from .store import Store, StoreRejected, StoreUnavailable, parseStoreURL, redactURL, storeFromURL
from .store.threads import WorkerThreads

__all__ = ["BatchWriter", "PressureObserver"]


class PressureObserver(Protocol):
    """
    Told, on the reactor thread, when the writer's backlog crosses its
    marks (the server pauses and resumes reading from sockets).
    """

    def writerOverloaded(self) -> None: ...

    def writerRecovered(self) -> None: ...


class _Call:
    """
    One L{BatchWriter.submit} call: its readings, how far they have been
    taken into batches, and what became of them.
    """

    __slots__ = ("readings", "deferred", "taken", "inFlight", "rejected", "done")

    def __init__(self, readings: Sequence[Reading], deferred: "Deferred[Dict[int, str]]") -> None:
        self.readings = readings
        self.deferred = deferred
        self.taken = 0
        self.inFlight = 0
        self.rejected: Dict[int, str] = {}
        self.done = False


class _Outcome:
    """
    What the writer thread did with one batch (possibly in several
    transactions, when bad readings had to be isolated).

    @ivar failed: Ranges (start, end) of batch indexes left uncommitted by a
        transient failure, whose details are in C{error}.
    @ivar unexpected: A L{Failure} for an exception that is not a
        L{sensornet.store.StoreError} (a bug), handled like a transient one.
    """

    __slots__ = ("stored", "duplicates", "duplicateIndexes", "rejected", "failed", "error", "unexpected", "seconds")

    def __init__(self) -> None:
        self.stored = 0
        self.duplicates = 0
        self.duplicateIndexes: List[int] = []
        self.rejected: Dict[int, str] = {}
        self.failed: List[Tuple[int, int]] = []
        self.error: Optional[BaseException] = None
        self.unexpected: Optional[Failure] = None
        self.seconds = 0.0


def _writeBatch(store: Store, batch: List[Reading]) -> _Outcome:
    """
    Commit C{batch} (on the writer thread). When the store rejects it, the
    batch is split in halves, recursively, down to single readings, so
    that only the readings the store refuses are left out and every other
    one is committed. A transient failure stops everything: what was not
    committed by then is reported in C{failed}, and the store is closed.
    """
    outcome = _Outcome()
    started = time.perf_counter()
    pending = [(0, len(batch))]
    while pending:
        start, end = pending.pop()
        try:
            result = store.write(batch if end - start == len(batch) else batch[start:end])
        except StoreRejected as e:
            if end - start == 1:
                outcome.rejected[start] = (str(e) or "rejected by the store").replace("\n", " ")
            else:
                middle = (start + end) // 2
                # Left half first, so readings commit in their order.
                pending.append((middle, end))
                pending.append((start, middle))
            continue
        except StoreUnavailable as e:
            outcome.error = e
        except Exception as e:
            outcome.error = StoreUnavailable(f"unexpected error in the store: {e!r}")
            outcome.unexpected = Failure()
        else:
            outcome.stored += result.stored
            outcome.duplicates += result.duplicates
            outcome.duplicateIndexes.extend(start + index for index in result.duplicateIndexes)
            continue
        outcome.failed.append((start, end))
        outcome.failed.extend(pending)
        store.close()
        break
    outcome.seconds = time.perf_counter() - started
    return outcome


def _openStore(factory: Callable[[str], Store], url: str) -> Store:
    store = factory(url)
    try:
        store.open()
    except BaseException:
        store.close()
        raise
    return store


class BatchWriter(Service):
    """
    Commits submitted readings in batches on one dedicated thread.

    @ivar backlog: Readings submitted and not yet settled (queued or in the
        transaction in flight).
    @ivar overloaded: True from when C{backlog} exceeds C{highWater} until it
        falls below C{lowWater}.

    @param storeURL: Where to write (see L{sensornet.store.parseStoreURL}).
    @param maxBatch: Most readings in one transaction.
    @param maxDelay: Seconds an idle writer waits to gather readings into a
        batch.
    @param highWater: Backlog above which observers are told to stop
        reading from sockets.
    @param lowWater: Backlog below which they are told to resume.
    @param storeFactory: Makes the (unopened) store from the URL; for tests
        and benchmarks. Defaults to L{sensornet.store.storeFromURL}.
    @param stopTimeout: Seconds L{stopService} keeps trying to commit what is
        queued (during an outage) before giving up on it.

    @raise ValueError: C{storeURL} is not a store URL.
    """

    _log = Logger()

    #: First and longest wait, in seconds, between attempts to (re)open the
    #: store; the wait doubles from one to the other.
    initialBackoff = 0.1
    maxBackoff = 5.0

    def __init__(
        self,
        storeURL: str,
        reactor: Any,
        metrics: ServerMetrics,
        feed: Optional[LiveFeed] = None,
        maxBatch: int = 5000,
        maxDelay: float = 0.002,
        highWater: int = 100_000,
        lowWater: int = 25_000,
        storeFactory: Optional[Callable[[str], Store]] = None,
        stopTimeout: float = 10.0,
    ) -> None:
        if storeFactory is None:
            parseStoreURL(storeURL)
            storeFactory = storeFromURL
        if maxBatch < 1:
            raise ValueError("maxBatch must be at least 1")
        if not 0 <= lowWater <= highWater:
            raise ValueError("need 0 <= lowWater <= highWater")
        self.storeURL = storeURL
        self.reactor = reactor
        self.metrics = metrics
        self.feed = feed
        self.maxBatch = maxBatch
        self.maxDelay = maxDelay
        self.highWater = highWater
        self.lowWater = lowWater
        self.stopTimeout = stopTimeout
        self.overloaded = False
        self._storeFactory = storeFactory
        self._threads: Optional[WorkerThreads] = None
        self._store: Optional[Store] = None
        self._busy = False
        self._queue: Deque[_Call] = deque()
        self._queued = 0
        self._inFlight = 0
        self._inFlightSegments: List[Tuple[_Call, int, int, int]] = []
        self._gather: Optional[IDelayedCall] = None
        self._retry: Optional[IDelayedCall] = None
        self._backoff = self.initialBackoff
        self._observers: List[PressureObserver] = []
        self._opened = False
        self._whenOpen: List[Deferred[None]] = []
        self._stopping: Optional[Deferred[None]] = None
        self._deadline: Optional[IDelayedCall] = None
        self._finished = False

    # -- public -------------------------------------------------------------

    @property
    def backlog(self) -> int:
        return self._queued + self._inFlight

    def addPressureObserver(self, observer: PressureObserver) -> None:
        """
        Call C{observer.writerOverloaded()} and C{observer.writerRecovered()}
        (on the reactor thread) at the backlog's crossings from now on.
        """
        self._observers.append(observer)

    def whenOpen(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once the store has been opened for the first
        time (at once if it has been).
        """
        if self._opened:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._whenOpen.append(d)
        return d

    def submit(self, readings: List[Reading]) -> Deferred[Dict[int, str]]:
        """
        Queue C{readings}, in order, for storing. Never raises.

        The caller must not change the list afterwards.

        @return: A L{Deferred} firing, once every reading in C{readings} is
            committed or was already stored, with C{{index: reason}} for the
            readings the store refused for good (usually empty); or failing
            with L{StoreUnavailable} if they could not be stored this time
            (none of them is then acknowledged, and the sender should resend;
            some of them may be stored, which the (sensor, seq) uniqueness
            makes harmless).
        """
        d: Deferred[Dict[int, str]] = Deferred()
        if not readings:
            d.callback({})
            return d
        if self._finished:
            d.errback(StoreUnavailable("the store writer has stopped"))
            return d
        self._queue.append(_Call(readings, d))
        self._queued += len(readings)
        self._backlogChanged()
        self._schedule()
        return d

    # -- service ------------------------------------------------------------

    def startService(self) -> None:
        """
        Start the writer thread and open the store on it, retrying with
        backoff while that fails; submissions queue meanwhile.
        """
        super().startService()
        self._finished = False
        self._threads = WorkerThreads(self.reactor, 1, "sensornet-writer")
        self._threads.start()
        self._tryOpen()

    def stopService(self) -> Deferred[None]:
        """
        Commit everything queued, fire every pending Deferred, close the
        store and end the thread. If that cannot be done within
        C{stopTimeout} seconds (the database is down), the readings still
        waiting fail with L{StoreUnavailable} and the writer stops anyway.
        """
        super().stopService()
        if self._stopping is not None:
            return self._stopping
        self._stopping = Deferred()
        if self._threads is None:
            self._finished = True
            self._stopping.callback(None)
            return self._stopping
        self._deadline = self.reactor.callLater(self.stopTimeout, self._giveUp)
        if self._gather is not None:
            self._gather.cancel()
            self._gather = None
        self._flush()
        self._checkDrained()
        return self._stopping

    # -- opening --------------------------------------------------------------

    def _tryOpen(self) -> None:
        self._retry = None
        if self._finished or self._threads is None:
            return
        self._busy = True
        self._threads.run(_openStore, self._storeFactory, self.storeURL).addCallbacks(
            self._storeOpened, self._openFailed
        )

    def _storeOpened(self, store: Store) -> None:
        self._busy = False
        if self._finished:
            assert self._threads is not None
            self._threads.run(store.close)
            return
        self._store = store
        self._backoff = self.initialBackoff
        self._log.info("Store writer connected to {store}", store=redactURL(self.storeURL))
        if not self._opened:
            self._opened = True
            waiting, self._whenOpen = self._whenOpen, []
            for d in waiting:
                d.callback(None)
        self._flush()
        self._checkDrained()

    def _openFailed(self, failure: Failure) -> None:
        self._busy = False
        if self._finished:
            return
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self.maxBackoff)
        if failure.check(StoreUnavailable):
            self._log.warn(
                "Cannot open store {store}: {error}; retrying in {delay}s",
                store=redactURL(self.storeURL), error=str(failure.value), delay=delay,
            )
        else:
            self._log.failure(
                "Cannot open store {store}; retrying in {delay}s", failure,
                store=redactURL(self.storeURL), delay=delay,
            )
        self._retry = self.reactor.callLater(delay, self._tryOpen)

    # -- batching -------------------------------------------------------------

    def _schedule(self) -> None:
        """
        A reading arrived: start a batch now if enough wait, else make sure
        one starts within C{maxDelay}.
        """
        if self._busy or self._store is None:
            return
        if self._queued >= self.maxBatch:
            if self._gather is not None:
                self._gather.cancel()
                self._gather = None
            self._flush()
        elif self._gather is None:
            self._gather = self.reactor.callLater(self.maxDelay, self._gathered)

    def _gathered(self) -> None:
        self._gather = None
        self._flush()

    def _flush(self) -> None:
        """
        Hand the next batch (up to C{maxBatch} readings, oldest first) to the
        writer thread, if it is free and the store is open.
        """
        if self._busy or self._store is None or self._queued == 0 or self._threads is None:
            return
        if self._gather is not None:
            self._gather.cancel()
            self._gather = None
        batch: List[Reading] = []
        segments: List[Tuple[_Call, int, int, int]] = []
        room = self.maxBatch
        queue = self._queue
        while queue and room:
            call = queue[0]
            if call.done:
                queue.popleft()
                continue
            start = call.taken
            take = min(len(call.readings) - start, room)
            segments.append((call, start, len(batch), take))
            if start == 0 and take == len(call.readings):
                batch.extend(call.readings)
            else:
                batch.extend(call.readings[start : start + take])
            call.taken += take
            call.inFlight += take
            room -= take
            if call.taken == len(call.readings):
                queue.popleft()
        self._queued -= len(batch)
        self._inFlight = len(batch)
        self._inFlightSegments = segments
        self._busy = True
        self._threads.run(_writeBatch, self._store, batch).addBoth(self._batchDone, batch, segments)

    def _batchDone(self, outcome: Any, batch: List[Reading], segments: List[Tuple[_Call, int, int, int]]) -> None:
        self._busy = False
        self._inFlight = 0
        self._inFlightSegments = []
        if isinstance(outcome, Failure):
            # The thread machinery itself failed: nothing is known stored.
            failure = outcome
            outcome = _Outcome()
            outcome.failed = [(0, len(batch))]
            outcome.error = StoreUnavailable("store writer failed")
            outcome.unexpected = failure
        metrics = self.metrics
        if outcome.stored or outcome.duplicates:
            metrics.readingsStored.inc(outcome.stored)
            metrics.readingsDuplicate.inc(outcome.duplicates)
            metrics.batchSize.observe(len(batch))
            metrics.commitSeconds.observe(outcome.seconds)
        error = outcome.error
        if error is not None:
            metrics.commitFailures.inc()
            lost = sum(end - start for start, end in outcome.failed)
            if outcome.unexpected is not None:
                self._log.failure(
                    "Store write failed: {lost} readings not stored, none of them acknowledged",
                    outcome.unexpected, lost=lost,
                )
            else:
                self._log.warn(
                    "Store write failed: {lost} readings not stored, none of them acknowledged: {error}",
                    lost=lost, error=str(error),
                )
            # The thread has closed the store; reopen before the next batch.
            self._store = None
            delay = self._backoff
            self._backoff = min(self._backoff * 2, self.maxBackoff)
            if not self._finished:
                self._retry = self.reactor.callLater(delay, self._tryOpen)
        rejected = outcome.rejected
        if rejected:
            self._log.warn(
                "Store refused {n} readings for good (reported to their senders), e.g. {example}",
                n=len(rejected), example=next(iter(rejected.values())),
            )
        failed = outcome.failed
        # Published before the acknowledgements go out, so that a sender
        # never sees its reading acknowledged before watchers see it stored.
        if self.feed is not None and outcome.stored:
            if outcome.stored == len(batch):
                self.feed.publish(batch)
            else:
                left = set(outcome.duplicateIndexes)
                left.update(rejected)
                for s, e in failed:
                    left.update(range(s, e))
                self.feed.publish([r for i, r in enumerate(batch) if i not in left])
        self._backlogChanged()
        for call, start, batchStart, take in segments:
            call.inFlight -= take
            if call.done:
                continue
            batchEnd = batchStart + take
            if failed and any(s < batchEnd and batchStart < e for s, e in failed):
                self._fail(call, f"not stored, the store failed: {error}")
                continue
            if rejected:
                for index, reason in rejected.items():
                    if batchStart <= index < batchEnd:
                        call.rejected[start + index - batchStart] = reason
            if call.taken == len(call.readings) and call.inFlight == 0:
                call.done = True
                call.deferred.callback(call.rejected)
        self._backlogChanged()
        self._flush()
        self._checkDrained()

    def _fail(self, call: _Call, why: str) -> None:
        """
        Give up on C{call}: drop its readings not yet taken and fail its
        Deferred.
        """
        call.done = True
        untaken = len(call.readings) - call.taken
        if untaken:
            self._queued -= untaken
            call.taken = len(call.readings)
        call.deferred.errback(StoreUnavailable(why))

    # -- backpressure ---------------------------------------------------------

    def _backlogChanged(self) -> None:
        backlog = self._queued + self._inFlight
        self.metrics.writerBacklog.set(backlog)
        if not self.overloaded and backlog > self.highWater:
            self.overloaded = True
            self._log.warn("Store writer backlog {n} over {high}: asking for backpressure", n=backlog, high=self.highWater)
            self._tell("writerOverloaded")
        elif self.overloaded and backlog < self.lowWater:
            self.overloaded = False
            self._log.info("Store writer backlog {n} under {low}: pressure off", n=backlog, low=self.lowWater)
            self._tell("writerRecovered")

    def _tell(self, method: str) -> None:
        for observer in list(self._observers):
            try:
                getattr(observer, method)()
            except Exception:
                self._log.failure("Pressure observer {observer!r} failed", observer=observer)

    # -- stopping -------------------------------------------------------------

    def _checkDrained(self) -> None:
        if self._stopping is not None and not self._finished and not self._busy and self.backlog == 0:
            self._finish(gaveUp=False)

    def _giveUp(self) -> None:
        self._deadline = None
        if self._finished:
            return
        waiting = sum(len(call.readings) - call.taken for call in self._queue if not call.done) + self._inFlight
        self._log.error(
            "Store writer stopping after {timeout}s without storing {n} readings (none acknowledged)",
            timeout=self.stopTimeout, n=waiting,
        )
        calls = [call for call in self._queue if not call.done]
        self._queue.clear()
        for call in calls:
            self._fail(call, "not stored: the server is stopping and the store is unavailable")
        # Calls with readings in the transaction in flight (and nothing
        # queued) are no longer in the queue: fail them too. If that
        # transaction still commits, the readings are stored but not
        # acknowledged, which resending makes harmless.
        for call, _start, _batchStart, _take in self._inFlightSegments:
            if not call.done:
                self._fail(call, "not stored: the server is stopping and the store is unavailable")
        self._finish(gaveUp=True)

    def _finish(self, gaveUp: bool) -> None:
        self._finished = True
        for delayed in (self._deadline, self._retry, self._gather):
            if delayed is not None and delayed.active():
                delayed.cancel()
        self._deadline = self._retry = self._gather = None
        self._backlogChanged()
        threads = self._threads
        store, self._store = self._store, None
        stopping = self._stopping
        assert threads is not None and stopping is not None
        closed = threads.run(store.close) if store is not None else succeed(None)
        threads.stop()
        waiting, self._whenOpen = self._whenOpen, []
        for d in waiting:
            d.errback(StoreUnavailable("the store writer stopped before the store could be opened"))
        if gaveUp:
            # The thread may be stuck in the database; do not wait for it.
            stopping.callback(None)
        else:
            closed.addBoth(lambda _: stopping.callback(None))

