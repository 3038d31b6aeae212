"""
The sensornet server as one service: listeners for sensors, the store
writer, the HTTP side, and the order they start and stop in.

Start: the writer first (it opens the store, retrying while the database is
unreachable: readings queue meanwhile), then the sensor listeners, then HTTP.

Stop (SIGTERM): stop accepting; stop reading from every connection; commit
what is held and send its acknowledgements; close the connections once their
replies are written; close the store. Nothing acknowledged is lost, and
nothing received before the stop goes unanswered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from .feed import LiveFeed
from .metrics import ServerMetrics
from .protocol import ImmediateSink, SensorServerFactory
from .store import DEFAULT_STORE, redactURL

__all__ = ["ServerConfig", "SensorServerService", "DEFAULT_LISTEN", "DEFAULT_HTTP", "DEFAULT_STORE"]

# A deep accept queue: after a server restart thousands of sensors reconnect
# at once, and Twisted's default backlog of 50 would drop their SYNs into
# second-long retransmission waits.
DEFAULT_LISTEN = "tcp:5000:backlog=1024"
DEFAULT_HTTP = "tcp:8080"


@dataclass
class ServerConfig:
    """
    Everything a server is told at start, as parsed from its options.

    @ivar listen: Server endpoint strings for sensors (C{tcp:5000}, ...).
    @ivar http: Server endpoint string for the HTTP side, or L{None} for none.
    @ivar store: Store URL (C{sqlite:PATH}, C{postgresql://...}), or C{"none"}
        to store nothing and acknowledge readings once parsed.
    @ivar logReadings: Log every received reading (the seed's C{log.txt}).
    @ivar maxBatch: Most readings in one committed batch.
    @ivar maxDelay: Seconds a batch may wait to gather more readings.
    @ivar closeTimeout: Seconds a stopping server waits for connections to
        take their last replies before it drops them.
    """

    listen: List[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    http: Optional[str] = DEFAULT_HTTP
    store: str = DEFAULT_STORE
    logReadings: bool = True
    maxBatch: int = 5000
    maxDelay: float = 0.002
    closeTimeout: float = 10.0


class SensorServerService(MultiService):
    """
    A whole server. C{factory} is the sensors' protocol factory, C{feed} the
    live feed of committed readings, C{metrics} its metrics, C{writer} the
    store writer (L{None} with C{store="none"}).
    """

    _log = Logger()

    def __init__(self, config: ServerConfig, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.metrics = ServerMetrics()
        self.feed = LiveFeed()
        self.writer: Any = None
        self.queries: Any = None
        sink: Any
        if config.store == "none":
            sink = ImmediateSink()
        else:
            from .writer import BatchWriter

            self.writer = BatchWriter(
                config.store,
                reactor,
                self.metrics,
                self.feed,
                maxBatch=config.maxBatch,
                maxDelay=config.maxDelay,
            )
            self.writer.setServiceParent(self)
            sink = self.writer
        self.factory = SensorServerFactory(sink, reactor, self.metrics, config.logReadings)
        if self.writer is not None:
            self.writer.addPressureObserver(self.factory)
        self.listeners: List[StreamServerEndpointService] = []
        for description in config.listen:
            listener = StreamServerEndpointService(serverFromString(reactor, description), self.factory)
            listener._raiseSynchronously = True
            listener.setServiceParent(self)
            self.listeners.append(listener)
        if config.http is not None:
            self._addWeb(config.http)

    def _addWeb(self, description: str) -> None:
        from .web import makeSite

        if self.writer is not None:
            from .store.queries import StoreQueries

            self.queries = StoreQueries(self.config.store, self.reactor)
            self.queries.setServiceParent(self)
        site = makeSite(self.queries, self.feed, self.metrics, self.factory.connectedSensors, self.reactor)
        web = StreamServerEndpointService(serverFromString(self.reactor, description), site)
        web._raiseSynchronously = True
        web.setServiceParent(self)
        self.web = web

    def whenListening(self) -> "defer.Deferred[List[Any]]":
        """
        Fires with the sensors' listening ports (L{IListeningPort}) once all
        are bound: how tests and embedders learn the port of C{tcp:0}.
        """
        # StreamServerEndpointService keeps the pending listen() as
        # _waitingForPort; it is set once the service has started.
        return defer.gatherResults([listener._waitingForPort for listener in self.listeners])

    def startService(self) -> None:
        _raiseFileLimit()
        super().startService()
        self._log.info(
            "sensornet server listening on {listen}; store {store}; HTTP {http}",
            listen=", ".join(self.config.listen),
            store=redactURL(self.config.store),
            http=self.config.http or "off",
        )

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """
        Stop in the order that loses nothing; see the module docstring.
        """
        self.running = 0
        # Stop accepting first.
        yield defer.DeferredList([defer.maybeDeferred(listener.stopService) for listener in self.listeners])
        protocols = list(self.factory.protocols)
        for protocol in protocols:
            protocol.pauseReading("server stopping")
        if self.writer is not None:
            # Commits what is queued; acknowledgements are written as their
            # batches commit.
            yield self.writer.stopService()
        closed = []
        for protocol in protocols:
            if not protocol.closed:
                closed.append(protocol.whenClosed())
                protocol.closeWhenAnswered()
        if closed:
            timeout = defer.DeferredList(closed)
            timeout.addTimeout(self.config.closeTimeout, self.reactor)
            yield timeout.addErrback(lambda _: None)
        rest = [service for service in reversed(list(self)) if service.running]
        yield defer.DeferredList([defer.maybeDeferred(service.stopService) for service in rest])
        self._log.info("sensornet server stopped")


def _raiseFileLimit() -> None:
    """
    Raise this process's open-file limit to its hard limit: each sensor is a
    file descriptor, and the usual soft limit (1024) would cap a server at
    about a thousand sensors.
    """
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass

