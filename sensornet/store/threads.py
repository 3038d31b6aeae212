"""
Daemon threads that run blocking store calls and report back on the reactor
thread.

Why not Twisted's C{ThreadPool}: its threads are joined when it stops, and a
thread stuck in a database call (a server that vanished without closing the
TCP connection) would then hang the reactor's shutdown. These threads are
daemons and are never joined from the reactor: stopping asks them to exit
after their current call and reports when they did, within a bounded time.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, List, Optional

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure
from zope.interface import implementer

from ..interfaces import IBlockingRunner

__all__ = ["WorkerThreads"]

_STOP = object()


@implementer(IBlockingRunner)
class WorkerThreads:
    """
    C{count} daemon threads taking blocking calls from one queue, first
    come first served; each call's result or failure fires its L{Deferred}
    on the reactor thread. With C{count=1}, calls run one at a time in the
    order given.

    @param reactor: What the threads report back through.
    @param onExit: Called in each thread just before it exits (to close that
        thread's database connection); its exceptions are ignored.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        count: int = 1,
        name: str = "sensornet-store",
        onExit: Optional[Callable[[], None]] = None,
    ) -> None:
        if count < 1:
            raise ValueError("need at least one thread")
        self._reactor = reactor
        self._count = count
        self._name = name
        self._onExit = onExit
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._threads: List[threading.Thread] = []
        self._exited: List[Deferred[None]] = []

    def start(self) -> None:
        """
        Start the threads.
        """
        for number in range(self._count):
            exited: Deferred[None] = Deferred()
            thread = threading.Thread(
                target=self._work, args=(exited,), name=f"{self._name}-{number}", daemon=True
            )
            self._exited.append(exited)
            self._threads.append(thread)
            thread.start()

    def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Call C{function(*args, **kwargs)} on a worker thread.

        @return: A L{Deferred} firing on the reactor thread with the result,
            or failing with what it raised.
        """
        d: Deferred[Any] = Deferred()
        self._queue.put((function, args, kwargs, d))
        return d

    def stop(self) -> Deferred[Any]:
        """
        Ask every thread to exit once the calls queued before this one are
        done. Calls given after this one never run.

        @return: A L{Deferred} that fires once all threads have exited (it
            may never fire if a call never returns: add a timeout).
        """
        for _ in self._threads:
            self._queue.put(_STOP)
        return gatherResults(self._exited)

    def _work(self, exited: Deferred[None]) -> None:
        reactor = self._reactor
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                function, args, kwargs, d = item
                try:
                    result = function(*args, **kwargs)
                except BaseException:
                    reactor.callFromThread(d.errback, Failure())
                else:
                    reactor.callFromThread(d.callback, result)
                # Drop references before blocking on the queue again.
                del item, function, args, kwargs, d
        finally:
            if self._onExit is not None:
                try:
                    self._onExit()
                except Exception:
                    pass
            reactor.callFromThread(exited.callback, None)
