"""
The BatchWriter's state machine on fake time and a fake runner: batching,
the gathering delay, backoff, giving up and stopping, with no thread and no
database. The runner's calls wait until a test runs them, one at a time and
in order, as the writer's one thread would; L{tests/test_writer.py} covers
the same writer with real threads and real databases.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sensornet.feed import LiveFeed
from sensornet.interfaces import IBlockingRunner, IPressureObserver, IReadingSink, IStore
from sensornet.metrics import ServerMetrics
from sensornet.reading import Reading
from sensornet.store import StoreRejected, StoreUnavailable, WriteResult
from sensornet.store.threads import WorkerThreads
from sensornet.writer import BatchWriter

T0 = 1_718_100_000.0


def make(sensor: str, seq: int) -> Reading:
    return Reading(sensor, "temperature", 1.0, "C", ts=T0 + seq, seq=seq, received_at=T0, peer="p")


def readings(sensor: str, count: int, first: int = 0) -> List[Reading]:
    return [make(sensor, n) for n in range(first, first + count)]


@implementer(IBlockingRunner)
class FakeRunner:
    """
    A runner whose calls wait, in order, until the test runs them with
    L{runNext}. Like L{WorkerThreads}, it runs nothing given after L{stop}:
    such calls are kept in C{afterStop}, never run.
    """

    def __init__(self) -> None:
        self.started = False
        self.stopped = False
        self.calls: List[Tuple[Callable[..., Any], Tuple[Any, ...], Deferred[Any]]] = []
        self.afterStop: List[Callable[..., Any]] = []

    def start(self) -> None:
        self.started = True

    def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if self.stopped:
            self.afterStop.append(function)
        else:
            self.calls.append((lambda: function(*args, **kwargs), (function, *args), d))
        return d

    def stop(self) -> Deferred[None]:
        self.stopped = True
        return succeed(None)

    def pending(self) -> List[str]:
        """
        The names of the calls waiting, oldest first.
        """
        return [getattr(call[1][0], "__name__", repr(call[1][0])) for call in self.calls]

    def runNext(self) -> None:
        """
        Run the oldest waiting call here and now and fire its Deferred.
        """
        call, _, d = self.calls.pop(0)
        try:
            result = call()
        except BaseException:
            d.errback(Failure())
        else:
            d.callback(result)

    def failNext(self, error: BaseException) -> None:
        """
        Fail the oldest waiting call without running it, as a broken runner
        would.
        """
        _, _, d = self.calls.pop(0)
        d.errback(Failure(error))

    def runAll(self) -> None:
        while self.calls:
            self.runNext()


@implementer(IStore)
class FakeStore:
    """
    A store in memory, following the plan of the L{FakeStores} that made it.
    """

    def __init__(self, url: str, plan: "FakeStores") -> None:
        self.url = url
        self.plan = plan
        self.isOpen = False
        self.closed = False

    def open(self) -> None:
        if self.plan.openFailures:
            self.plan.openFailures -= 1
            raise StoreUnavailable("database down")
        self.isOpen = True

    def close(self) -> None:
        self.isOpen = False
        self.closed = True

    def write(self, readings: List[Reading]) -> WriteResult:
        assert self.isOpen, "write on a store that is not open"
        if self.plan.down:
            raise StoreUnavailable("connection lost")
        if any(r.sensor in self.plan.refused for r in readings):
            raise StoreRejected("value out of range")
        self.plan.written.append(list(readings))
        return WriteResult(len(readings), 0)

    def sensors(self) -> List[Dict[str, Any]]:
        return []

    def readings(self, sensor=None, kind=None, since=None, until=None, limit=1000, after=None):  # type: ignore
        return []

    def ping(self) -> bool:
        return self.isOpen

    def schemaVersion(self) -> int:
        return 1


class FakeStores:
    """
    The store factory: every store it made, and what they all do.

    @ivar openFailures: How many opens fail from now on.
    @ivar down: Whether writes fail transiently.
    @ivar refused: Sensor names whose readings the store refuses for good.
    @ivar written: Every committed write, in order.
    """

    def __init__(self) -> None:
        self.made: List[FakeStore] = []
        self.openFailures = 0
        self.down = False
        self.refused: set = set()
        self.written: List[List[Reading]] = []

    def __call__(self, url: str) -> FakeStore:
        store = FakeStore(url, self)
        self.made.append(store)
        return store


class Harness:
    """
    A BatchWriter on a L{Clock}, L{FakeRunner}s and L{FakeStores}.
    """

    def __init__(self, **options: Any) -> None:
        self.clock = Clock()
        self.stores = FakeStores()
        self.runners: List[FakeRunner] = []
        self.metrics = ServerMetrics()
        self.feed = LiveFeed()
        self.published: List[Reading] = []
        self.feed.subscribe(self.published.extend)
        self.writer = makeWriter(self, options)

    def newRunner(self) -> FakeRunner:
        runner = FakeRunner()
        self.runners.append(runner)
        return runner

    @property
    def runner(self) -> FakeRunner:
        return self.runners[-1]

    def started(self) -> BatchWriter:
        """
        Start the writer and let it open its store.
        """
        self.writer.startService()
        assert self.runner.pending() == ["openStore"]
        self.runner.runNext()
        assert self.writer.whenOpen().called
        return self.writer

    def nextDelay(self) -> float:
        """
        Seconds until the one timer pending fires.
        """
        [call] = self.clock.getDelayedCalls()
        return call.getTime() - self.clock.seconds()

    def sample(self, name: str) -> Optional[float]:
        return self.metrics.registry.get_sample_value(name)


def makeWriter(harness: Harness, options: Dict[str, Any]) -> BatchWriter:
    backoff = options.pop("backoff", None)
    writer = BatchWriter(
        "fake:", harness.clock, harness.metrics, harness.feed,
        storeFactory=harness.stores, runnerFactory=harness.newRunner, **options,
    )
    if backoff is not None:
        writer.initialBackoff, writer.maxBackoff = backoff
    return writer


def outcome(d: Deferred[Any]) -> Any:
    """
    What C{d} fired with (the exception for a failure); it must have fired.
    Consumes the result: call it once per Deferred.
    """
    results: List[Any] = []
    d.addCallbacks(results.append, lambda f: results.append(f.value))
    assert results, "the Deferred has not fired"
    return results[0]


def test_fakes_and_writer_provide_their_interfaces() -> None:
    """
    The writer is a reading sink; the real and the fake runner and the fake
    store provide the interfaces the writer relies on.
    """
    harness = Harness()
    assert verifyObject(IReadingSink, harness.writer)
    assert verifyObject(IBlockingRunner, WorkerThreads(Clock()))  # type: ignore[arg-type]
    assert verifyObject(IBlockingRunner, FakeRunner())
    assert verifyObject(IStore, FakeStore("fake:", harness.stores))


def test_idle_writer_gathers_readings_for_max_delay() -> None:
    """
    An idle writer waits C{maxDelay} after the first reading arrived, then
    writes everything that arrived meanwhile in one transaction; each
    submission fires once it is committed.
    """
    harness = Harness(maxDelay=0.5)
    writer = harness.started()
    first = writer.submit(readings("a", 2))
    harness.clock.advance(0.3)
    second = writer.submit(readings("b", 1))
    assert harness.runner.pending() == []
    harness.clock.advance(0.19)
    assert harness.runner.pending() == []
    harness.clock.advance(0.01)
    assert harness.runner.pending() == ["writeBatch"]
    assert not first.called and writer.backlog == 3
    harness.runner.runNext()
    assert outcome(first) == {} and outcome(second) == {}
    assert harness.stores.written == [readings("a", 2) + readings("b", 1)]
    assert writer.backlog == 0
    assert harness.sample("sensornet_readings_stored_total") == 3


def test_full_batch_is_written_at_once() -> None:
    """
    When C{maxBatch} readings wait, the batch goes without waiting for the
    gathering delay, and no gathering timer is left behind.
    """
    harness = Harness(maxBatch=3, maxDelay=10)
    writer = harness.started()
    d = writer.submit(readings("a", 2))
    assert harness.runner.pending() == []
    writer.submit(readings("b", 1))
    assert harness.runner.pending() == ["writeBatch"]
    assert harness.clock.getDelayedCalls() == []
    harness.runner.runNext()
    assert outcome(d) == {}


def test_busy_writer_accumulates_then_takes_up_to_max_batch() -> None:
    """
    While a batch is in flight, submissions accumulate; the next batch goes
    as soon as the first is done (no gathering delay) and takes at most
    C{maxBatch} readings, splitting a submission across batches, which
    fires only once all of it is committed.
    """
    harness = Harness(maxBatch=4, maxDelay=10)
    writer = harness.started()
    a = writer.submit(readings("a", 4))
    b = writer.submit(readings("b", 3))
    c = writer.submit(readings("c", 3))
    d = writer.submit(readings("d", 1))
    assert harness.runner.pending() == ["writeBatch"]
    assert writer.backlog == 11
    harness.runner.runNext()
    assert a.called and not b.called
    assert harness.runner.pending() == ["writeBatch"]
    harness.runner.runNext()
    assert b.called and not c.called
    harness.runner.runNext()
    assert [outcome(x) for x in (a, b, c, d)] == [{}] * 4
    assert [len(batch) for batch in harness.stores.written] == [4, 4, 3]
    assert [r.sensor for batch in harness.stores.written for r in batch] == list("aaaabbbcccd")
    assert harness.clock.getDelayedCalls() == []


def test_batch_interval_spaces_batches_unless_full() -> None:
    """
    With a C{batchInterval}, a batch that is not full starts that long after
    the previous one started: what is left of it after a quick commit,
    nothing after a slow one; a full batch never waits.
    """
    harness = Harness(maxBatch=5, maxDelay=0.004, batchInterval=0.004)
    writer = harness.started()
    writer.submit(readings("a", 1))
    assert harness.nextDelay() == 0.004
    harness.clock.advance(0.004)
    writer.submit(readings("b", 1))
    harness.clock.advance(0.001)
    harness.runner.runNext()
    # The first batch took 1 ms: the second starts 3 ms later, 4 ms after
    # the first started, with what came meanwhile.
    assert harness.runner.pending() == []
    assert abs(harness.nextDelay() - 0.003) < 1e-9
    writer.submit(readings("c", 1))
    harness.clock.advance(0.003)
    assert harness.runner.pending() == ["writeBatch"]
    writer.submit(readings("d", 2))
    harness.clock.advance(0.006)
    harness.runner.runNext()
    # That one took 6 ms, more than maxDelay: the next starts at once.
    assert harness.runner.pending() == ["writeBatch"]
    writer.submit(readings("e", 5))
    harness.runner.runNext()
    # Quick again, but a full batch waits: it goes at once.
    assert harness.runner.pending() == ["writeBatch"]
    harness.runner.runNext()
    assert [[r.sensor for r in batch] for batch in harness.stores.written] == [
        ["a"], ["b", "c"], ["d", "d"], ["e"] * 5,
    ]
    assert harness.clock.getDelayedCalls() == []


def test_stopping_writer_does_not_space_batches() -> None:
    """
    Once stopping, the writer writes what is left at once, without waiting
    out C{batchInterval} since the last batch started.
    """
    harness = Harness(maxBatch=5, maxDelay=1, batchInterval=1)
    writer = harness.started()
    writer.submit(readings("a", 5))
    writer.submit(readings("b", 1))
    stopped = writer.stopService()
    harness.runner.runNext()
    assert harness.runner.pending() == ["writeBatch"]
    harness.runner.runNext()
    assert [[r.sensor for r in batch] for batch in harness.stores.written] == [["a"] * 5, ["b"]]
    harness.runner.runNext()
    assert stopped.called


def test_batch_interval_is_bounded() -> None:
    """
    A batch interval outside 0 to 1 s (it adds to every reading's latency),
    or not a number, is refused.
    """
    for bad in (-0.001, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="batchInterval"):
            Harness(batchInterval=bad)


def test_open_failure_backs_off_doubling_up_to_max_backoff() -> None:
    """
    While the store cannot be opened, the writer tries again after waits
    that double from C{initialBackoff} up to C{maxBackoff}; readings wait
    meanwhile. Once open, the wait starts from C{initialBackoff} again.
    """
    harness = Harness(backoff=(1.0, 5.0))
    harness.stores.openFailures = 5
    writer = harness.writer
    writer.startService()
    d = writer.submit(readings("a", 1))
    delays = []
    for _ in range(5):
        harness.runner.runNext()
        delays.append(harness.nextDelay())
        assert harness.runner.pending() == []
        harness.clock.advance(delays[-1])
        assert harness.runner.pending() == ["openStore"]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert not writer.whenOpen().called and not d.called
    harness.runner.runNext()
    assert writer.whenOpen().called
    harness.runner.runNext()
    assert outcome(d) == {}
    harness.stores.down = True
    writer.submit(readings("b", 1))
    harness.clock.advance(writer.maxDelay)
    harness.runner.runNext()
    assert harness.nextDelay() == 1.0


def test_write_failure_fails_callers_then_reopens_after_backoff() -> None:
    """
    A transient failure fails the submissions in the batch with
    StoreUnavailable (nothing acknowledged) and counts it; the store is
    closed and opened again after the backoff; readings that arrived during
    the failed write wait for it and are then committed.
    """
    harness = Harness(backoff=(1.0, 5.0), maxDelay=0.1)
    writer = harness.started()
    harness.stores.down = True
    lost = writer.submit(readings("a", 3))
    harness.clock.advance(0.1)
    waiting = writer.submit(readings("b", 2))
    harness.runner.runNext()
    assert isinstance(outcome(lost), StoreUnavailable)
    assert not waiting.called and writer.backlog == 2
    assert harness.stores.made[0].closed
    assert harness.sample("sensornet_commit_failures_total") == 1
    harness.clock.advance(0.99)
    assert harness.runner.pending() == []
    harness.stores.down = False
    harness.clock.advance(0.01)
    assert harness.runner.pending() == ["openStore"]
    harness.runner.runNext()
    assert len(harness.stores.made) == 2
    assert harness.runner.pending() == ["writeBatch"]
    harness.runner.runNext()
    assert outcome(waiting) == {}
    assert harness.stores.written == [readings("b", 2)]
    assert harness.published == readings("b", 2)


def test_runner_failure_is_handled_like_a_store_failure() -> None:
    """
    A failure of the runner itself (not the store) fails the batch's
    submissions with StoreUnavailable and makes the writer reopen.
    """
    harness = Harness(backoff=(1.0, 5.0))
    writer = harness.started()
    d = writer.submit(readings("a", 1))
    harness.clock.advance(writer.maxDelay)
    harness.runner.failNext(RuntimeError("runner broke"))
    assert isinstance(outcome(d), StoreUnavailable)
    assert harness.nextDelay() == 1.0
    harness.clock.advance(1.0)
    assert harness.runner.pending() == ["openStore"]


def test_rejected_readings_reported_per_index_the_rest_committed() -> None:
    """
    Readings the store refuses for good are reported, by their index in
    their own submission, and every other reading of the batch is committed
    and published on the live feed.
    """
    harness = Harness()
    harness.stores.refused = {"bad"}
    writer = harness.started()
    a = writer.submit([make("a", 0), make("bad", 1), make("a", 2)])
    b = writer.submit([make("bad", 3), make("b", 4)])
    harness.clock.advance(writer.maxDelay)
    harness.runner.runNext()
    assert outcome(a) == {1: "value out of range"}
    assert outcome(b) == {0: "value out of range"}
    committed = [r for batch in harness.stores.written for r in batch]
    assert committed == [make("a", 0), make("a", 2), make("b", 4)]
    assert harness.published == committed


@implementer(IPressureObserver)
class PressureRecorder:
    """
    A pressure observer that records what it is told.
    """

    def __init__(self) -> None:
        self.events: List[str] = []

    def writerOverloaded(self) -> None:
        self.events.append("overloaded")

    def writerRecovered(self) -> None:
        self.events.append("recovered")


def test_pressure_observer_told_exactly_at_crossings() -> None:
    """
    Observers are told once when the backlog goes over the high-water mark
    and once when it falls below the low-water mark, not in between; the
    backlog gauge follows.
    """
    harness = Harness(maxBatch=3, maxDelay=10, highWater=5, lowWater=2)
    observer = PressureRecorder()
    assert verifyObject(IPressureObserver, observer)
    writer = harness.started()
    writer.addPressureObserver(observer)
    writer.submit(readings("a", 3))
    writer.submit(readings("b", 2))
    assert observer.events == [] and not writer.overloaded
    writer.submit(readings("c", 1))
    assert observer.events == ["overloaded"] and writer.overloaded
    writer.submit(readings("d", 1))
    assert observer.events == ["overloaded"]
    assert harness.sample("sensornet_writer_backlog") == 7
    harness.runner.runNext()
    assert writer.backlog == 4 and observer.events == ["overloaded"]
    harness.runner.runNext()
    assert writer.backlog == 1
    assert observer.events == ["overloaded", "recovered"] and not writer.overloaded
    harness.runner.runNext()
    assert observer.events == ["overloaded", "recovered"]
    assert harness.sample("sensornet_writer_backlog") == 0


def test_feed_is_published_before_acknowledgement() -> None:
    """
    When a submission's Deferred fires, its readings are already on the
    live feed.
    """
    harness = Harness()
    writer = harness.started()
    seen: List[int] = []
    batch = readings("a", 2)
    writer.submit(batch).addCallback(lambda _: seen.append(len(harness.published)))
    harness.clock.advance(writer.maxDelay)
    harness.runner.runNext()
    assert seen == [2]


def test_submissions_before_start_wait_for_the_store() -> None:
    """
    Readings submitted before the writer starts are committed once it has
    opened the store, without the gathering delay.
    """
    harness = Harness(maxDelay=10)
    d = harness.writer.submit(readings("a", 2))
    harness.started()
    assert harness.runner.pending() == ["writeBatch"]
    harness.runner.runNext()
    assert outcome(d) == {}


def test_callbacks_may_submit_and_stop_again() -> None:
    """
    Code run by the writer's Deferreds (here, a submitter that resubmits at
    once and then stops the writer) meets a writer at rest: the new
    readings count in the backlog at once, and stopping commits them.
    """
    harness = Harness(maxDelay=10, maxBatch=2)
    writer = harness.started()
    seen: List[int] = []
    stopped: List[Deferred[None]] = []

    def again(_: object) -> Deferred[Dict[int, str]]:
        d = writer.submit(readings("b", 1))
        seen.append(writer.backlog)
        stopped.append(writer.stopService())
        return d

    first = writer.submit(readings("a", 2)).addCallback(again)
    harness.runner.runNext()
    assert seen == [1]
    assert harness.runner.pending() == ["writeBatch"]
    harness.runner.runNext()
    assert outcome(first) == {}
    harness.runner.runAll()
    assert outcome(stopped[0]) is None
    assert harness.stores.written == [readings("a", 2), readings("b", 1)]


def test_stop_commits_everything_queued_then_closes() -> None:
    """
    Stopping writes what is queued at once (not after the gathering delay),
    fires every submission, then closes the store before stopping the
    runner; the stop fires once the store is closed, and later submissions
    fail with StoreUnavailable.
    """
    harness = Harness(maxDelay=30, maxBatch=2)
    writer = harness.started()
    a = writer.submit(readings("a", 3))
    b = writer.submit(readings("b", 1))
    stopped = writer.stopService()
    assert harness.runner.pending() == ["writeBatch"]
    harness.runner.runNext()
    harness.runner.runNext()
    assert outcome(a) == {} and outcome(b) == {}
    assert not stopped.called
    assert harness.runner.pending() == ["close"] and harness.runner.stopped
    harness.runner.runNext()
    assert outcome(stopped) is None
    assert harness.stores.made[0].closed
    assert harness.clock.getDelayedCalls() == []
    assert isinstance(outcome(writer.submit(readings("late", 1))), StoreUnavailable)


def test_stop_during_backoff_gives_up_after_stop_timeout() -> None:
    """
    When the store cannot be opened, stopping keeps trying until
    C{stopTimeout}, then fails the waiting submissions with
    StoreUnavailable, stops the runner and fires without waiting further;
    no timer is left behind.
    """
    harness = Harness(backoff=(1.0, 5.0), stopTimeout=2.5)
    harness.stores.openFailures = 100
    writer = harness.writer
    writer.startService()
    harness.runner.runNext()
    d = writer.submit(readings("a", 1))
    opened = writer.whenOpen()
    stopped = writer.stopService()
    harness.clock.advance(1.0)
    harness.runner.runNext()
    assert not stopped.called
    harness.clock.advance(1.5)
    assert outcome(stopped) is None
    assert isinstance(outcome(d), StoreUnavailable)
    assert isinstance(outcome(opened), StoreUnavailable)
    assert harness.runner.stopped and harness.runner.calls == []
    assert harness.clock.getDelayedCalls() == []
    assert writer.backlog == 0


def test_stop_then_start_writes_again() -> None:
    """
    Regression: a writer stopped and started again used to finish itself
    as soon as its store opened, failing every later submission with "the
    store writer has stopped". Now it writes again, and stopping it twice
    gives a Deferred both times, each firing once the store is closed.
    """
    harness = Harness()
    writer = harness.started()
    first = writer.stopService()
    again = writer.stopService()
    assert isinstance(again, Deferred) and not first.called and not again.called
    harness.runner.runAll()
    assert outcome(first) is None and outcome(again) is None
    writer.startService()
    assert len(harness.runners) == 2
    harness.runner.runNext()
    d = writer.submit(readings("a", 1))
    harness.clock.advance(writer.maxDelay)
    harness.runner.runNext()
    assert outcome(d) == {}
    assert harness.stores.written == [readings("a", 1)]
    stopped = writer.stopService()
    harness.runner.runAll()
    assert outcome(stopped) is None
    assert outcome(writer.stopService()) is None
    assert all(store.closed for store in harness.stores.made)


def test_store_opened_after_giving_up_is_closed() -> None:
    """
    Regression: a store whose open was still in flight when the writer
    gave up stopping used to stay open for good (its close was queued
    behind the runner's stop). Now the open's return closes it, before the
    runner stops.
    """
    harness = Harness(stopTimeout=2.0)
    writer = harness.writer
    writer.startService()
    d = writer.submit(readings("a", 1))
    stopped = writer.stopService()
    harness.clock.advance(2.0)
    assert outcome(stopped) is None
    assert isinstance(outcome(d), StoreUnavailable)
    runner = harness.runner
    runner.runAll()
    [store] = harness.stores.made
    assert store.closed and not store.isOpen
    assert runner.stopped and runner.afterStop == []


def test_write_in_flight_when_giving_up_closes_its_store() -> None:
    """
    A write still in flight when the writer gives up fails its submissions
    at once (they are not acknowledged even if the write commits later) and
    closes its store when it returns.
    """
    harness = Harness(stopTimeout=2.0)
    writer = harness.started()
    d = writer.submit(readings("a", 1))
    harness.clock.advance(writer.maxDelay)
    assert harness.runner.pending() == ["writeBatch"]
    stopped = writer.stopService()
    harness.clock.advance(2.0)
    assert outcome(stopped) is None
    assert isinstance(outcome(d), StoreUnavailable)
    assert not harness.runner.stopped
    harness.runner.runAll()
    assert harness.stores.made[0].closed
    assert harness.runner.stopped and harness.runner.afterStop == []


def test_restart_after_giving_up_is_not_disturbed_by_the_abandoned_call() -> None:
    """
    A writer started again after giving up gets a runner of its own; when
    the call it gave up on returns, it closes its own store and leaves the
    new run alone.
    """
    harness = Harness(stopTimeout=2.0)
    writer = harness.writer
    writer.startService()
    writer.stopService()
    harness.clock.advance(2.0)
    old = harness.runner
    writer.startService()
    new = harness.runner
    assert new is not old
    new.runNext()
    [newStore] = harness.stores.made
    old.runAll()
    [oldStore] = harness.stores.made[1:]
    assert oldStore.closed and old.stopped
    d = writer.submit(readings("a", 1))
    harness.clock.advance(writer.maxDelay)
    new.runNext()
    assert outcome(d) == {}
    assert newStore.isOpen and not new.stopped


def test_start_while_stopping_starts_again_once_stopped() -> None:
    """
    A start that comes while a stop is still draining lets the stop finish
    (commit, close, fire) and then starts afresh.
    """
    harness = Harness()
    writer = harness.started()
    d = writer.submit(readings("a", 1))
    harness.clock.advance(writer.maxDelay)
    stopped = writer.stopService()
    writer.startService()
    first = harness.runner
    first.runAll()
    assert outcome(d) == {} and outcome(stopped) is None
    assert first.stopped and harness.stores.made[0].closed
    assert len(harness.runners) == 2 and harness.runner.pending() == ["openStore"]
    harness.runner.runNext()
    late = writer.submit(readings("b", 1))
    harness.clock.advance(writer.maxDelay)
    harness.runner.runNext()
    assert outcome(late) == {}


@pytest.mark.parametrize("maxBatch, lowWater, highWater", [(0, 0, 1), (1, 2, 1)])
def test_bad_bounds_are_refused(maxBatch: int, lowWater: int, highWater: int) -> None:
    """
    A batch size under 1 or a low-water mark above the high-water mark is
    a ValueError.
    """
    with pytest.raises(ValueError):
        Harness(maxBatch=maxBatch, lowWater=lowWater, highWater=highWater)
