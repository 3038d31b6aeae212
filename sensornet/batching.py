"""
The mechanics of group commit, apart from the writer's lifecycle: the queue
of submissions, a batch and where its readings came from, writing a batch
on the store (isolating readings the store refuses), and what becomes of a
batch (metrics, logs, the live feed, settling the submitters, backpressure).

Everything here is plain code without time or threads: L{writeBatch} and
L{openStore} run on the writer's blocking-call runner, the rest on the
reactor thread, driven by L{sensornet.writer.BatchWriter}'s state machine.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .interfaces import IPressureObserver, IStore
from .metrics import ServerMetrics
from .reading import Reading
from .runs import BatchReadings, ChunkReadings
from .store import StoreRejected, StoreUnavailable

__all__ = [
    "Call", "Outcome", "Batch", "SubmissionQueue", "Pressure", "writeBatch", "openStore",
    "countOutcome", "logOutcome", "newlyStored", "settle", "fire", "fireAll",
]


class Call:
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


class Outcome:
    """
    What the runner did with one batch (possibly in several transactions,
    when bad readings had to be isolated).

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

    @classmethod
    def runnerFailed(cls, failure: Failure, size: int) -> "Outcome":
        """
        The runner itself failed (not the store): nothing of a batch of
        C{size} readings is known to be stored.
        """
        outcome = cls()
        outcome.failed = [(0, size)]
        outcome.error = StoreUnavailable("store writer failed")
        outcome.unexpected = failure
        return outcome


def writeBatch(store: IStore, batch: List[Reading]) -> Outcome:
    """
    Commit C{batch} (on the runner's thread). When the store rejects it, the
    batch is split in halves, recursively, down to single readings, so
    that only the readings the store refuses are left out and every other
    one is committed. A transient failure stops everything: what was not
    committed by then is reported in C{failed}, and the store is closed.
    """
    outcome = Outcome()
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


def openStore(factory: Callable[[str], IStore], url: str) -> IStore:
    """
    Make and open the store (on the runner's thread); closed again if
    opening fails.
    """
    store = factory(url)
    try:
        store.open()
    except BaseException:
        store.close()
        raise
    return store


class Batch:
    """
    The readings of one transaction, and where each run of them came from:
    C{segments} holds (call, index in the call, index in the batch, count).
    """

    __slots__ = ("readings", "segments")

    def __init__(self, readings: Sequence[Reading], segments: List[Tuple[Call, int, int, int]]) -> None:
        #: A L{BatchReadings} when the queue made it.
        self.readings = readings
        self.segments = segments


class SubmissionQueue:
    """
    The submissions waiting, oldest first.

    @ivar queued: Readings waiting, not yet taken into a batch.
    """

    def __init__(self) -> None:
        self._calls: Deque[Call] = deque()
        self.queued = 0

    def add(self, call: Call) -> None:
        self._calls.append(call)
        self.queued += len(call.readings)

    def take(self, most: int) -> Batch:
        """
        The next batch: up to C{most} readings, oldest first, skipping calls
        already settled.
        """
        # The chunks with runs (sensornet.runs) as such, while every call
        # has them.
        readings = BatchReadings()
        segments: List[Tuple[Call, int, int, int]] = []
        room = most
        calls = self._calls
        while calls and room:
            call = calls[0]
            if call.done:
                calls.popleft()
                continue
            start = call.taken
            source = call.readings
            take = min(len(source) - start, room)
            segments.append((call, start, len(readings), take))
            whole = start == 0 and take == len(source)
            if type(source) is ChunkReadings:
                readings.add(source if whole else source.cut(start, start + take))
            else:
                readings.add(source if whole else source[start : start + take])
            call.taken += take
            call.inFlight += take
            room -= take
            if call.taken == len(call.readings):
                calls.popleft()
        self.queued -= len(readings)
        return Batch(readings, segments)

    def drop(self, call: Call) -> None:
        """
        Settle C{call} without storing the rest of it: its readings not yet
        taken leave the queue.
        """
        call.done = True
        untaken = len(call.readings) - call.taken
        if untaken:
            self.queued -= untaken
            call.taken = len(call.readings)

    def clear(self) -> List[Call]:
        """
        Empty the queue; returns the calls that were not settled yet (they
        are not settled by this).
        """
        calls = [call for call in self._calls if not call.done]
        self._calls.clear()
        return calls


class Pressure:
    """
    Backpressure: whether the backlog is over the high-water mark, with
    hysteresis down to the low-water mark, and who to tell.
    """

    def __init__(self, highWater: int, lowWater: int) -> None:
        self.highWater = highWater
        self.lowWater = lowWater
        self.overloaded = False
        self.observers: List[IPressureObserver] = []

    def crossed(self, backlog: int) -> Optional[bool]:
        """
        Note the new C{backlog}; returns C{True} when it just crossed the
        high-water mark, C{False} when it just fell below the low-water
        mark, else L{None}.
        """
        if not self.overloaded and backlog > self.highWater:
            self.overloaded = True
            return True
        if self.overloaded and backlog < self.lowWater:
            self.overloaded = False
            return False
        return None

    def tell(self, overloaded: bool, log: Logger) -> None:
        """
        Call every observer's C{writerOverloaded} or C{writerRecovered}; one
        that raises is logged and does not stop the others.
        """
        for observer in list(self.observers):
            try:
                if overloaded:
                    observer.writerOverloaded()
                else:
                    observer.writerRecovered()
            except Exception:
                log.failure("Pressure observer {observer!r} failed", observer=observer)


# -- what becomes of a batch: one concern each -------------------------------


def countOutcome(metrics: ServerMetrics, outcome: Outcome, size: int) -> None:
    """
    Metrics for one batch of C{size} readings.
    """
    if outcome.stored or outcome.duplicates:
        metrics.readingsStored.inc(outcome.stored)
        metrics.readingsDuplicate.inc(outcome.duplicates)
        metrics.batchSize.observe(size)
        metrics.commitSeconds.observe(outcome.seconds)
    if outcome.error is not None:
        metrics.commitFailures.inc()


def logOutcome(log: Logger, outcome: Outcome) -> None:
    """
    Log what went wrong with one batch, if anything did.
    """
    if outcome.error is not None:
        lost = sum(end - start for start, end in outcome.failed)
        if outcome.unexpected is not None:
            log.failure(
                "Store write failed: {lost} readings not stored, none of them acknowledged",
                outcome.unexpected, lost=lost,
            )
        else:
            log.warn(
                "Store write failed: {lost} readings not stored, none of them acknowledged: {error}",
                lost=lost, error=str(outcome.error),
            )
    if outcome.rejected:
        log.warn(
            "Store refused {n} readings for good (reported to their senders), e.g. {example}",
            n=len(outcome.rejected), example=next(iter(outcome.rejected.values())),
        )


def newlyStored(readings: Sequence[Reading], outcome: Outcome) -> Sequence[Reading]:
    """
    The readings of a batch that this batch stored (not duplicates, not
    refused, not lost to a failure): what the live feed gets.
    """
    if not outcome.stored:
        return []
    if outcome.stored == len(readings):
        return readings
    left = set(outcome.duplicateIndexes)
    left.update(outcome.rejected)
    for start, end in outcome.failed:
        left.update(range(start, end))
    return [reading for index, reading in enumerate(readings) if index not in left]


def settle(queue: SubmissionQueue, batch: Batch, outcome: Outcome) -> List[Tuple[Call, Optional[str]]]:
    """
    Record C{outcome} in the calls that had readings in C{batch}; returns
    the calls now settled, each with L{None} (stored: fire with its
    C{rejected}) or why it failed.
    """
    settled: List[Tuple[Call, Optional[str]]] = []
    failed, rejected = outcome.failed, outcome.rejected
    for call, start, batchStart, take in batch.segments:
        call.inFlight -= take
        if call.done:
            continue
        batchEnd = batchStart + take
        if failed and any(s < batchEnd and batchStart < e for s, e in failed):
            queue.drop(call)
            settled.append((call, f"not stored, the store failed: {outcome.error}"))
            continue
        if rejected:
            for index, reason in rejected.items():
                if batchStart <= index < batchEnd:
                    call.rejected[start + index - batchStart] = reason
        if call.taken == len(call.readings) and call.inFlight == 0:
            call.done = True
            settled.append((call, None))
    return settled


def fire(call: Call, why: Optional[str]) -> None:
    """
    Fire C{call}'s Deferred: with its rejected readings, or, given C{why},
    with L{StoreUnavailable}.
    """
    if why is None:
        call.deferred.callback(call.rejected)
    else:
        call.deferred.errback(StoreUnavailable(why))


def fireAll(waiters: List["Deferred[None]"]) -> None:
    for d in waiters:
        d.callback(None)
