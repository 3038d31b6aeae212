"""
The store writer: group commit on one thread off the reactor, with
backpressure.

Readings handed to L{BatchWriter.submit} wait in an in-memory queue (on the
reactor thread); one blocking-call runner (by default one dedicated thread,
L{sensornet.store.threads.WorkerThreads}) owns the store connection and
commits them in batches, one transaction each. A submission's L{Deferred}
fires only once every one of its readings is committed (or found already
stored), so a server that acknowledges on that Deferred acknowledges only
what is durable.

Group commit: when the writer is idle, a batch closes C{maxDelay} seconds
after the first waiting reading arrived (or at once when C{maxBatch}
readings wait); while a batch is being written, readings accumulate and the
next batch takes up to C{maxBatch} of them as soon as it is done. Under load
the batches grow by themselves, so the cost of a commit (an fsync, a network
round trip) is shared by thousands of readings.

At a fleet's steady trickle they do not: each batch holds what arrived
during the last commit (W2, 19,000 sensors every 2 s: 10 readings at the
median, a commit taking about 1 ms), and the fixed costs of a commit, on the
writer thread and on the reactor's (waking it, settling the batch), are
most of the server's CPU per reading. C{batchInterval} trades latency for
that CPU: a batch that is not full starts no sooner than C{batchInterval}
after the previous one started. Measured on W2 (four alternated pairs, the
durable SQLite store, 0 against 0.002 s): CPU per reading 91-93 against
67-72 us, ack p50 1.2-1.5 against 3.7 ms, p99 13-37 against 19-27 ms. The
default, 0, keeps the latency; a server short of CPU can buy headroom.

The lifecycle is an explicit state machine, built with Automat's
C{TypeMachineBuilder} as Twisted's C{ClientService} is, with its mutable data
in one L{_Core}::

    state            what is going on                    leaves upon
    ---------------  ----------------------------------  -------------------------------
    Unstarted        not started yet; submissions wait   start -> Opening; stop -> Stopped
    Opening          opening the store on the runner     opened -> Idle; failed -> BackingOff
    BackingOff       waiting to try opening again        retry due -> Opening
    Idle             store open, nothing in flight       queued, spacing -> Gathering;
                                                         write now -> Writing (drained: stays)
    Gathering        waiting maxDelay for more readings  write now (full, or timer) -> Writing
                     (or what is left of batchInterval
                     since the last batch started)
    Writing          one batch in flight                 written -> Idle; failed -> BackingOff
    Draining         stop asked, store open, nothing     write now -> DrainWriting;
                     in flight (momentary)               drained -> Stopped
    DrainOpening     stop asked, store opening           opened -> Draining; failed ->
                                                         DrainBackingOff; give up -> Stopped
    DrainBackingOff  stop asked, waiting to reopen       retry due -> DrainOpening;
                                                         give up -> Stopped
    DrainWriting     stop asked, one batch in flight     written -> Draining; failed ->
                                                         DrainBackingOff; give up -> Stopped
    Stopped          stopped; submissions fail           start -> Opening

C{stop} takes each running state to its C{Drain...} twin (Idle and
Gathering to Draining) and starts the C{stopTimeout} deadline; C{start},
C{stop} and C{readingsQueued} are accepted in every state, so the public
methods never raise. A submission is not an input: it is data added to the
queue, and the machine is told only at the queue's edges (empty to not
empty, or a full batch reached), so its cost is per batch, not per chunk.

Why Automat rather than a hand-written table: it is the tool Twisted's own
lifecycles use, every (state, input) pair is declared in one place, and an
internal event arriving where it was not expected raises instead of being
ignored; a lifecycle cannot be half-reset the way the old C{_stopping} flag
was after a restart. The machine never looks at data to choose its next
state: where that depends on the queue (after opening, after a batch, on a
stop), the output that knows sends a follow-up input, C{_writeNow} or
C{_drained} (nothing queued: Idle stays, Draining finishes), which Automat
runs right after the current transition. No state carries Automat
state-specific data: a stop turns Writing into DrainWriting with the same
batch still in flight and BackingOff into DrainBackingOff with the same
retry timer, which per-state data would have to rebuild, so the timers and
the batch in flight live in L{_Core}, each created on entering a state and
cancelled on leaving it.

No caller code runs inside a transition. Submission and stop Deferreds, the
live feed and the pressure observers are queued with L{_Core.later} and run
once the machine is at rest, so a callback that submits or stops again meets
a settled machine (and Automat, which refuses a reentrant input that returns
a value, never sees one).

Giving up on a stop abandons the runner call in flight with its runner: when
that call returns, it closes the store it opened or wrote with, and only
then is that runner stopped (a close handed to a runner after its stop would
wait behind the stop forever, leaking the connection). A writer started
again meanwhile has a runner of its own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Deque, Dict, List, Optional, Protocol

from automat import TypeMachineBuilder
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .batching import (
    Batch,
    Call,
    Outcome,
    Pressure,
    SubmissionQueue,
    countOutcome,
    fire,
    fireAll,
    logOutcome,
    newlyStored,
    openStore,
    settle,
    writeBatch,
)
from .feed import LiveFeed
from .interfaces import IBlockingRunner, IPressureObserver, IReadingSink, IStore
from .metrics import ServerMetrics
from .reading import Reading
from .store import StoreUnavailable, parseStoreURL, redactURL, storeFromURL
from .store.threads import WorkerThreads

__all__ = ["BatchWriter", "MAX_BATCH_INTERVAL"]

#: The most C{batchInterval} may be: it is added to readings' latency.
MAX_BATCH_INTERVAL = 1.0

_STOPPED = "the store writer has stopped"
_GAVE_UP = "not stored: the server is stopping and the store is unavailable"


# -- the state machine ----------------------------------------------------------


class _Inputs(Protocol):
    """
    The writer's state machine: what can happen to it.
    """

    def start(self) -> None:
        """
        The service started: open the store and take readings.
        """

    def stop(self) -> Deferred[None]:
        """
        The service stops: commit what is queued (within C{stopTimeout}),
        close the store, stop the runner.

        @return: Fires once stopped (see L{BatchWriter.stopService}).
        """

    def readingsQueued(self) -> None:
        """
        The queue of submissions went from empty to not empty, or reached a
        full batch. Said once per such edge, not once per submission: a
        submission is data added to the queue (see L{BatchWriter.submit}),
        and a busy server submits thousands of small chunks per batch, each
        of which would otherwise pay for a transition.
        """

    def _storeOpened(self, store: IStore) -> None:
        """
        The runner opened the store.
        """

    def _openFailed(self, failure: Failure) -> None:
        """
        The runner could not open the store.
        """

    def _retryDue(self) -> None:
        """
        The wait before opening again is over.
        """

    def _writeNow(self) -> None:
        """
        Write what is queued now: a batch is full, the gathering delay is
        over, or readings waited while the store was busy or opening.
        """

    def _spaceNext(self, delay: float) -> None:
        """
        Readings wait, but the last batch started less than
        C{batchInterval} ago: gather for C{delay} more seconds.
        """

    def _batchWritten(self, outcome: Outcome) -> None:
        """
        The batch in flight is done without a transient failure (readings
        may have been refused for good).
        """

    def _batchFailed(self, outcome: Outcome) -> None:
        """
        The batch in flight failed transiently; the runner closed the store.
        """

    def _drained(self) -> None:
        """
        Nothing is queued or in flight (any more): stay idle, or finish
        stopping.
        """

    def _giveUp(self) -> None:
        """
        C{stopTimeout} passed before the queue could be drained.
        """


@dataclass
class _Core:
    """
    The writer's mutable data, shared by every state.

    @ivar runner: The runner of the current run (L{None} when stopped); a
        runner call that returns when its runner is no longer this one was
        abandoned by giving up.
    @ivar batch: The batch in flight (Writing, DrainWriting).
    @ivar closeWaiters: Stop Deferreds waiting for the close of the store
        of the last run, while it is in progress.
    @ivar startAgain: C{start} came while stopping: start again once
        stopped.
    @ivar lastStart: When (C{clock.seconds()}) the last batch was handed to
        the runner, or L{None} before the first.
    """

    storeURL: str
    storeFactory: Callable[[str], IStore]
    runnerFactory: Callable[[], IBlockingRunner]
    clock: IReactorTime
    metrics: ServerMetrics
    feed: Optional[LiveFeed]
    pressure: Pressure
    maxBatch: int
    maxDelay: float
    batchInterval: float
    stopTimeout: float
    initialBackoff: float
    maxBackoff: float
    log: Logger
    queue: SubmissionQueue = field(default_factory=SubmissionQueue)
    runner: Optional[IBlockingRunner] = None
    store: Optional[IStore] = None
    batch: Optional[Batch] = None
    backoff: float = 0.0
    retry: Optional[IDelayedCall] = None
    gather: Optional[IDelayedCall] = None
    deadline: Optional[IDelayedCall] = None
    opened: bool = False
    openWaiters: List[Deferred[None]] = field(default_factory=list)
    stopWaiters: List[Deferred[None]] = field(default_factory=list)
    closeWaiters: Optional[List[Deferred[None]]] = None
    startAgain: bool = False
    lastStart: Optional[float] = None
    _later: Deque[Callable[[], None]] = field(default_factory=deque)
    _depth: int = 0

    # -- running inputs and delivering news ---------------------------------

    def dispatch(self, input: Callable[..., Any], *args: Any) -> Any:
        """
        Give the machine an input, then deliver what it queued with
        L{later} once no input is running.
        """
        self._depth += 1
        try:
            return input(*args)
        finally:
            self._depth -= 1
            if not self._depth:
                self._deliver()

    def later(self, function: Callable[..., None], *args: Any) -> None:
        """
        Call C{function(*args)} (code of callers and observers) once no
        input is running: at once when none is.
        """
        self._later.append(partial(function, *args))
        if not self._depth:
            self._deliver()

    def _deliver(self) -> None:
        later = self._later
        while later:
            try:
                later.popleft()()
            except Exception:
                self.log.failure("Store writer: delivering a result failed")

    # -- helpers for the outputs ----------------------------------------------

    @property
    def inFlight(self) -> int:
        return len(self.batch.readings) if self.batch is not None else 0

    def backlogChanged(self) -> None:
        """
        Export the backlog and tell the pressure observers about a crossing.
        """
        backlog = self.queue.queued + self.inFlight
        self.metrics.writerBacklog.set(backlog)
        crossed = self.pressure.crossed(backlog)
        if crossed is None:
            return
        if crossed:
            self.log.warn(
                "Store writer backlog {n} over {high}: asking for backpressure",
                n=backlog, high=self.pressure.highWater,
            )
        else:
            self.log.info(
                "Store writer backlog {n} under {low}: pressure off", n=backlog, low=self.pressure.lowWater
            )
        self.later(self.pressure.tell, crossed, self.log)

    def enqueue(self, call: Call) -> None:
        self.queue.add(call)
        self.backlogChanged()

    def full(self) -> bool:
        return self.queue.queued >= self.maxBatch

    def spacing(self) -> float:
        """
        Seconds until C{batchInterval} has passed since the last batch
        started (0 when it has, or when there was none).
        """
        if self.lastStart is None or not self.batchInterval:
            return 0.0
        return max(0.0, self.lastStart + self.batchInterval - self.clock.seconds())

    def nextBackoff(self) -> float:
        """
        The wait before the next attempt to open; the one after doubles, up
        to C{maxBackoff}.
        """
        delay = self.backoff
        self.backoff = min(self.backoff * 2, self.maxBackoff)
        return delay

    def retryLater(self, c: _Inputs) -> float:
        """
        Schedule the next attempt to open; returns in how many seconds.
        """
        delay = self.nextBackoff()
        self.retry = self.clock.callLater(delay, self.dispatch, c._retryDue)
        return delay

    def cancelGather(self) -> None:
        gather, self.gather = self.gather, None
        if gather is not None and gather.active():
            gather.cancel()

    def failWaiting(self, why: str) -> int:
        """
        Fail every call not settled yet, queued or in flight; returns how
        many readings they left unstored.
        """
        calls = self.queue.clear()
        if self.batch is not None:
            calls.extend(call for call, _s, _b, _t in self.batch.segments)
        self.batch = None
        unstored = 0
        for call in calls:
            if not call.done:
                unstored += len(call.readings) - (call.taken - call.inFlight)
                self.queue.drop(call)
                self.later(fire, call, why)
        self.queue.queued = 0
        self.backlogChanged()
        return unstored

    def failOpenWaiters(self) -> None:
        waiting, self.openWaiters = self.openWaiters, []
        for d in waiting:
            self.later(d.errback, StoreUnavailable("the store writer stopped before the store could be opened"))

    def waitForStop(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.stopWaiters.append(d)
        return d


def _closeAbandoned(s: _Core, runner: IBlockingRunner, store: Optional[IStore]) -> None:
    """
    A call given up on has returned: close the store it used (before the
    runner stops, so the close runs) and stop its runner.
    """
    if store is not None:
        s.log.info("Store writer closing a store connection it had given up on")
        closing = runner.run(store.close)
        closing.addErrback(lambda f: s.log.failure("Closing the store failed", f))
    runner.stop()


def _open(c: _Inputs, s: _Core) -> None:
    """
    Open the store on the runner.
    """
    runner = s.runner
    assert runner is not None

    def opened(store: IStore) -> None:
        if s.runner is runner:
            s.dispatch(c._storeOpened, store)
        else:
            _closeAbandoned(s, runner, store)

    def failed(failure: Failure) -> None:
        if s.runner is runner:
            s.dispatch(c._openFailed, failure)
        else:
            _closeAbandoned(s, runner, None)

    runner.run(openStore, s.storeFactory, s.storeURL).addCallbacks(opened, failed)


def _write(c: _Inputs, s: _Core) -> None:
    """
    Hand the next batch to the runner.
    """
    runner, store = s.runner, s.store
    assert runner is not None and store is not None
    batch = s.batch = s.queue.take(s.maxBatch)
    s.lastStart = s.clock.seconds()

    def written(outcome: Outcome) -> None:
        if s.runner is not runner:
            _closeAbandoned(s, runner, store)
        elif outcome.error is None:
            s.dispatch(c._batchWritten, outcome)
        else:
            s.dispatch(c._batchFailed, outcome)

    def failed(failure: Failure) -> None:
        written(Outcome.runnerFailed(failure, len(batch.readings)))

    runner.run(writeBatch, store, batch.readings).addCallbacks(written, failed)


def _settleBatch(s: _Core, outcome: Outcome) -> None:
    """
    The batch in flight is done: metrics, logs, then (in this order, once
    the machine is at rest) the live feed, the pressure observers and the
    submitters. The feed comes first so that a sender never sees its
    reading acknowledged before watchers see it stored.
    """
    batch, s.batch = s.batch, None
    assert batch is not None
    countOutcome(s.metrics, outcome, len(batch.readings))
    logOutcome(s.log, outcome)
    if s.feed is not None:
        stored = newlyStored(batch.readings, outcome)
        if stored:
            s.later(s.feed.publish, stored)
    settled = settle(s.queue, batch, outcome)
    s.backlogChanged()
    for call, why in settled:
        s.later(fire, call, why)


def _startRun(c: _Inputs, s: _Core) -> None:
    """
    A new run: a runner of its own (one abandoned by giving up may still be
    busy), then open the store.
    """
    s.startAgain = False
    s.backoff = s.initialBackoff
    s.runner = s.runnerFactory()
    s.runner.start()
    _open(c, s)


def _finish(c: _Inputs, s: _Core) -> None:
    """
    Drained: close the store and stop the runner; the stop Deferreds fire
    once the store is closed.
    """
    deadline, s.deadline = s.deadline, None
    if deadline is not None and deadline.active():
        deadline.cancel()
    # Nothing can be left here; should anything be, it must not wait forever.
    s.failWaiting(_STOPPED)
    runner, s.runner = s.runner, None
    store, s.store = s.store, None
    assert runner is not None
    closed = runner.run(store.close) if store is not None else succeed(None)
    runner.stop()
    s.failOpenWaiters()
    waiters, s.stopWaiters = s.stopWaiters, []
    s.closeWaiters = waiters

    def done(result: object) -> None:
        if s.closeWaiters is waiters:
            s.closeWaiters = None
        s.later(fireAll, waiters)

    closed.addBoth(done)
    if s.startAgain:
        c.start()


def _gaveUp(c: _Inputs, s: _Core, inFlight: bool) -> None:
    """
    C{stopTimeout} passed: fail what waits, let go of the runner and the
    store, and stop at once (the runner may be stuck in the database).

    @param inFlight: Whether a runner call is in flight; it then closes up
        after itself when it returns (see L{_closeAbandoned}).
    """
    s.deadline = None
    unstored = s.failWaiting(_GAVE_UP)
    s.log.error(
        "Store writer stopping after {timeout}s without storing {n} readings (none acknowledged)",
        timeout=s.stopTimeout, n=unstored,
    )
    runner, s.runner = s.runner, None
    s.store = None
    assert runner is not None
    if not inFlight:
        runner.stop()
    s.failOpenWaiters()
    waiters, s.stopWaiters = s.stopWaiters, []
    s.later(fireAll, waiters)
    if s.startAgain:
        c.start()


def _makeMachine() -> Callable[[_Core], _Inputs]:
    machine = TypeMachineBuilder(_Inputs, _Core)

    Unstarted = machine.state("Unstarted")
    Opening = machine.state("Opening")
    BackingOff = machine.state("BackingOff")
    Idle = machine.state("Idle")
    Gathering = machine.state("Gathering")
    Writing = machine.state("Writing")
    Draining = machine.state("Draining")
    DrainOpening = machine.state("DrainOpening")
    DrainBackingOff = machine.state("DrainBackingOff")
    DrainWriting = machine.state("DrainWriting")
    Stopped = machine.state("Stopped")

    running = [Opening, BackingOff, Idle, Gathering, Writing]
    draining = [Draining, DrainOpening, DrainBackingOff, DrainWriting]

    # -- start ------------------------------------------------------------------

    @Unstarted.upon(_Inputs.start).to(Opening)
    @Stopped.upon(_Inputs.start).to(Opening)
    def start(c: _Inputs, s: _Core) -> None:
        _startRun(c, s)

    for state in running:
        state.upon(_Inputs.start).loop().returns(None)

    def startOnceStopped(c: _Inputs, s: _Core) -> None:
        s.startAgain = True

    for state in draining:
        state.upon(_Inputs.start).loop()(startOnceStopped)

    # -- submit -----------------------------------------------------------------

    # Readings wait in the queue until the store is open and free: whoever
    # frees it looks at the queue (carryOn).
    for state in [Unstarted, Opening, BackingOff, Writing, *draining]:
        state.upon(_Inputs.readingsQueued).loop().returns(None)

    @Idle.upon(_Inputs.readingsQueued).to(Gathering)
    def startGathering(c: _Inputs, s: _Core) -> None:
        if s.full():
            c._writeNow()
        else:
            s.gather = s.clock.callLater(s.maxDelay, s.dispatch, c._writeNow)

    @Gathering.upon(_Inputs.readingsQueued).loop()
    def gather(c: _Inputs, s: _Core) -> None:
        if s.full():
            c._writeNow()

    @Stopped.upon(_Inputs.readingsQueued).loop()
    def refuse(c: _Inputs, s: _Core) -> None:
        s.failWaiting(_STOPPED)

    # -- opening ----------------------------------------------------------------

    def carryOn(c: _Inputs, s: _Core) -> None:
        # In Idle or Draining, the next step depends on the queue. Only a
        # running writer spaces its batches (a stopping one has a deadline
        # and writes what is left at once).
        if not s.queue.queued:
            c._drained()
            return
        delay = s.spacing() if s.deadline is None and not s.full() else 0.0
        c._spaceNext(delay) if delay > 0 else c._writeNow()

    @Idle.upon(_Inputs._spaceNext).to(Gathering)
    def spaceNext(c: _Inputs, s: _Core, delay: float) -> None:
        s.gather = s.clock.callLater(delay, s.dispatch, c._writeNow)

    def remember(s: _Core, store: IStore) -> None:
        s.store = store
        s.metrics.storeOpened(store)
        s.backoff = s.initialBackoff
        s.log.info("Store writer connected to {store}", store=redactURL(s.storeURL))
        if not s.opened:
            s.opened = True
            waiting, s.openWaiters = s.openWaiters, []
            s.later(fireAll, waiting)

    @Opening.upon(_Inputs._storeOpened).to(Idle)
    @DrainOpening.upon(_Inputs._storeOpened).to(Draining)
    def opened(c: _Inputs, s: _Core, store: IStore) -> None:
        remember(s, store)
        carryOn(c, s)

    @Opening.upon(_Inputs._openFailed).to(BackingOff)
    @DrainOpening.upon(_Inputs._openFailed).to(DrainBackingOff)
    def openFailed(c: _Inputs, s: _Core, failure: Failure) -> None:
        delay = s.retryLater(c)
        if failure.check(StoreUnavailable):
            s.log.warn(
                "Cannot open store {store}: {error}; retrying in {delay}s",
                store=redactURL(s.storeURL), error=str(failure.value), delay=delay,
            )
        else:
            s.log.failure(
                "Cannot open store {store}; retrying in {delay}s", failure,
                store=redactURL(s.storeURL), delay=delay,
            )

    @BackingOff.upon(_Inputs._retryDue).to(Opening)
    @DrainBackingOff.upon(_Inputs._retryDue).to(DrainOpening)
    def retry(c: _Inputs, s: _Core) -> None:
        s.retry = None
        _open(c, s)

    # -- writing ----------------------------------------------------------------

    @Idle.upon(_Inputs._writeNow).to(Writing)
    @Gathering.upon(_Inputs._writeNow).to(Writing)
    @Draining.upon(_Inputs._writeNow).to(DrainWriting)
    def write(c: _Inputs, s: _Core) -> None:
        s.cancelGather()
        _write(c, s)

    @Writing.upon(_Inputs._batchWritten).to(Idle)
    @DrainWriting.upon(_Inputs._batchWritten).to(Draining)
    def written(c: _Inputs, s: _Core, outcome: Outcome) -> None:
        _settleBatch(s, outcome)
        carryOn(c, s)

    @Writing.upon(_Inputs._batchFailed).to(BackingOff)
    @DrainWriting.upon(_Inputs._batchFailed).to(DrainBackingOff)
    def writeFailed(c: _Inputs, s: _Core, outcome: Outcome) -> None:
        # The runner closed the store; reopen it before the next batch.
        s.store = None
        _settleBatch(s, outcome)
        s.retryLater(c)

    # -- stopping ---------------------------------------------------------------

    @Unstarted.upon(_Inputs.stop).to(Stopped)
    def stopUnstarted(c: _Inputs, s: _Core) -> Deferred[None]:
        s.failWaiting(_STOPPED)
        s.failOpenWaiters()
        return succeed(None)

    @Stopped.upon(_Inputs.stop).loop()
    def stopStopped(c: _Inputs, s: _Core) -> Deferred[None]:
        if s.closeWaiters is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        s.closeWaiters.append(d)
        return d

    def beginStopping(c: _Inputs, s: _Core) -> Deferred[None]:
        s.deadline = s.clock.callLater(s.stopTimeout, s.dispatch, c._giveUp)
        return s.waitForStop()

    @Opening.upon(_Inputs.stop).to(DrainOpening)
    @BackingOff.upon(_Inputs.stop).to(DrainBackingOff)
    @Writing.upon(_Inputs.stop).to(DrainWriting)
    def stopBusy(c: _Inputs, s: _Core) -> Deferred[None]:
        return beginStopping(c, s)

    @Idle.upon(_Inputs.stop).to(Draining)
    @Gathering.upon(_Inputs.stop).to(Draining)
    def stopOpen(c: _Inputs, s: _Core) -> Deferred[None]:
        s.cancelGather()
        waiter = beginStopping(c, s)
        carryOn(c, s)
        return waiter

    @Draining.upon(_Inputs.stop).loop()
    @DrainOpening.upon(_Inputs.stop).loop()
    @DrainBackingOff.upon(_Inputs.stop).loop()
    @DrainWriting.upon(_Inputs.stop).loop()
    def stopAgain(c: _Inputs, s: _Core) -> Deferred[None]:
        s.startAgain = False
        return s.waitForStop()

    Idle.upon(_Inputs._drained).loop().returns(None)

    @Draining.upon(_Inputs._drained).to(Stopped)
    def drained(c: _Inputs, s: _Core) -> None:
        _finish(c, s)

    @DrainOpening.upon(_Inputs._giveUp).to(Stopped)
    @DrainWriting.upon(_Inputs._giveUp).to(Stopped)
    def giveUpInFlight(c: _Inputs, s: _Core) -> None:
        _gaveUp(c, s, inFlight=True)

    @DrainBackingOff.upon(_Inputs._giveUp).to(Stopped)
    def giveUpWaiting(c: _Inputs, s: _Core) -> None:
        retry, s.retry = s.retry, None
        if retry is not None and retry.active():
            retry.cancel()
        _gaveUp(c, s, inFlight=False)

    return machine.build()


_WriterMachine = _makeMachine()


def _threadRunner(reactor: IReactorFromThreads) -> Callable[[], IBlockingRunner]:
    """
    The default runner factory: one daemon thread per run.
    """

    def makeRunner() -> IBlockingRunner:
        return WorkerThreads(reactor, 1, "sensornet-writer")

    return makeRunner


@implementer(IReadingSink)
class BatchWriter(Service):
    """
    Commits submitted readings in batches on one blocking-call runner (one
    dedicated thread by default).

    @ivar backlog: Readings submitted and not yet settled (queued or in the
        transaction in flight).
    @ivar overloaded: True from when C{backlog} exceeds C{highWater} until it
        falls below C{lowWater}.

    @cvar initialBackoff: First wait, in seconds, between attempts to
        (re)open the store; the wait doubles from one attempt to the next.
    @cvar maxBackoff: Longest such wait, in seconds.

    @param storeURL: Where to write (see L{sensornet.store.parseStoreURL}).
    @param reactor: Time for the gathering delay, the backoff and the stop
        deadline; unless C{runnerFactory} is given, it must also provide
        L{IReactorFromThreads} (the default runner's threads report back
        through it).
    @param maxBatch: Most readings in one transaction.
    @param maxDelay: Seconds an idle writer waits to gather readings into a
        batch.
    @param batchInterval: Least seconds between the starts of two batches,
        unless C{maxBatch} readings wait (0: the next batch starts as soon
        as the previous one is done). See the module docstring.
    @param highWater: Backlog above which observers are told to stop
        reading from sockets.
    @param lowWater: Backlog below which they are told to resume.
    @param storeFactory: Makes the (unopened) store from the URL; for tests
        and benchmarks. Defaults to L{sensornet.store.storeFromURL}.
    @param stopTimeout: Seconds L{stopService} keeps trying to commit what is
        queued (during an outage) before giving up on it.
    @param runnerFactory: Makes the runner of the blocking store calls, once
        per start; it must run calls one at a time, in order. Defaults to
        one daemon thread (L{WorkerThreads}); tests give a runner whose
        Deferreds they fire by hand.

    @raise ValueError: C{storeURL} is not a store URL, or a bound is out of
        range.
    @raise TypeError: No C{runnerFactory} is given and C{reactor} does not
        provide L{IReactorFromThreads}.
    """

    _log = Logger()

    initialBackoff = 0.1
    maxBackoff = 5.0

    def __init__(
        self,
        storeURL: str,
        reactor: IReactorTime,
        metrics: ServerMetrics,
        feed: Optional[LiveFeed] = None,
        maxBatch: int = 5000,
        maxDelay: float = 0.002,
        batchInterval: float = 0.0,
        highWater: int = 100_000,
        lowWater: int = 25_000,
        storeFactory: Optional[Callable[[str], IStore]] = None,
        stopTimeout: float = 10.0,
        runnerFactory: Optional[Callable[[], IBlockingRunner]] = None,
    ) -> None:
        if storeFactory is None:
            parseStoreURL(storeURL)
            storeFactory = storeFromURL
        if maxBatch < 1:
            raise ValueError("maxBatch must be at least 1")
        if not 0 <= lowWater <= highWater:
            raise ValueError("need 0 <= lowWater <= highWater")
        if not 0 <= batchInterval <= MAX_BATCH_INTERVAL:
            raise ValueError(f"batchInterval must be between 0 and {MAX_BATCH_INTERVAL} seconds")
        if runnerFactory is None:
            runnerFactory = _threadRunner(IReactorFromThreads(reactor))
        self.storeURL = storeURL
        self.reactor = reactor
        self.metrics = metrics
        self.feed = feed
        self.maxBatch = maxBatch
        self.maxDelay = maxDelay
        self.batchInterval = batchInterval
        self.highWater = highWater
        self.lowWater = lowWater
        self.stopTimeout = stopTimeout
        self._pressure = Pressure(highWater, lowWater)
        self._core = _Core(
            storeURL=storeURL,
            storeFactory=storeFactory,
            runnerFactory=runnerFactory,
            clock=reactor,
            metrics=metrics,
            feed=feed,
            pressure=self._pressure,
            maxBatch=maxBatch,
            maxDelay=maxDelay,
            batchInterval=batchInterval,
            stopTimeout=stopTimeout,
            initialBackoff=self.initialBackoff,
            maxBackoff=self.maxBackoff,
            log=self._log,
        )
        self._machine = _WriterMachine(self._core)

    # -- public -------------------------------------------------------------

    @property
    def backlog(self) -> int:
        core = self._core
        return core.queue.queued + core.inFlight

    @property
    def overloaded(self) -> bool:
        return self._pressure.overloaded

    def addPressureObserver(self, observer: IPressureObserver) -> None:
        """
        Call C{observer.writerOverloaded()} and C{observer.writerRecovered()}
        (on the reactor thread) at the backlog's crossings from now on.
        """
        self._pressure.observers.append(observer)

    def whenOpen(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once the store has been opened for the first
        time (at once if it has been); it fails with L{StoreUnavailable} if
        the writer stops before that.
        """
        if self._core.opened:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._core.openWaiters.append(d)
        return d

    def submit(self, readings: List[Reading]) -> Deferred[Dict[int, str]]:
        """
        Queue C{readings}, in order, for storing. Never raises.

        The caller must not change the list afterwards. Readings submitted
        before the writer starts wait for it; once it has stopped, they fail
        at once.

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
        core = self._core
        queue = core.queue
        before = queue.queued
        core.enqueue(Call(readings, d))
        maxBatch = core.maxBatch
        if not before or before < maxBatch <= queue.queued:
            core.dispatch(self._machine.readingsQueued)
        return d

    # -- service ------------------------------------------------------------

    def startService(self) -> None:
        """
        Start a runner and open the store on it, retrying with backoff while
        that fails; submissions queue meanwhile. A writer stopped earlier
        starts afresh.
        """
        super().startService()
        self._core.initialBackoff = self.initialBackoff
        self._core.maxBackoff = self.maxBackoff
        self._core.dispatch(self._machine.start)

    def stopService(self) -> Deferred[None]:
        """
        Commit everything queued, fire every pending Deferred, close the
        store and stop the runner; the result fires once the store is
        closed. If that cannot be done within C{stopTimeout} seconds (the
        database is down), the readings still waiting fail with
        L{StoreUnavailable} and the result fires at once, without waiting
        for the runner (it closes the store it may still open or write
        with when that call returns). Calling it again returns a Deferred
        that fires at the same time.
        """
        super().stopService()
        result: Deferred[None] = self._core.dispatch(self._machine.stop)
        return result
