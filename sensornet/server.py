"""
The sensornet server as one service: listeners for sensors, the store
writer, the HTTP side, and the order they start and stop in.

Start: the writer first (it opens the store, retrying while the database is
unreachable: readings queue meanwhile), then the sensor listeners, then HTTP.

Stop (SIGTERM): stop accepting; stop reading from every connection; commit
what is held and send its acknowledgements; close the connections once their
replies are written, aborting those still open after C{closeTimeout}; then
the HTTP side: stop accepting, end every live stream, close every HTTP
connection (aborting the same way); close the store. Nothing acknowledged is
lost, nothing received before the stop goes unanswered, and a stopped server
leaves no connection open and no timer pending.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generator, List, Optional, Tuple, Union, cast

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorSSL, IReactorTime, IStreamServerEndpoint
from twisted.logger import ILogObserver, Logger

from .accounting import ChunkAccounting
from .caps import (
    AUTO,
    DEFAULT_EXEMPT,
    DEFAULT_HTTP_PER_ADDRESS,
    DEFAULT_SENSOR_PER_ADDRESS,
    HTTP_REFUSAL,
    SENSOR_REFUSAL,
    CappedFactory,
    Network,
    closesAtAccept,
    fileLimit,
    overcommitted,
    parseNetworks,
    serverLimits,
)
from .feed import LiveFeed
from .gctuning import CollectorTuning, logThresholdFromEnvironment
from .identity.auth import DEFAULT_ANONYMOUS_FROM, AnonymousNetworks, SensorAccess, anonymousExposure
from .interfaces import IReadingSink, IStoreQueries
from .listening import ListeningService, OpenConnections
from .metrics import ServerMetrics
from .protocol import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_JUNK_BUDGET,
    DEFAULT_MAX_CLOCK_SKEW,
    DEFAULT_MAX_REJECTED_LOG_PER_SECOND,
    ImmediateSink,
    PauseReason,
    SensorProtocol,
    SensorServerFactory,
)
from .store import DEFAULT_STORE, redactURL
from .textlog import OffersLogObserver, ReadingLogFileObserver

if TYPE_CHECKING:
    from .identity.cache import CredentialCache
    from .store import Store
    from .store.maintenance import StoreMaintenance
    from .web import WebSite
    from .writer import BatchWriter

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
    @ivar batchInterval: Least seconds between the starts of two batches
        that are not full (L{sensornet.writer.BatchWriter}).
    @ivar closeTimeout: Seconds a stopping server waits for connections to
        take their last replies before it aborts them (sensor connections,
        then HTTP connections: each group gets this long).
    @ivar maxClockSkew: Seconds (C{>= 0}) a reading's own timestamp may be
        ahead of the server's clock; a reading stamped later is refused (see
        C{docs/protocol.md}). L{None}: no limit.
    @ivar handshakeTimeout: Seconds (C{> 0}) a sensor connection has to send
        its first complete line before it is closed (slowloris); L{None}: no
        deadline. See C{docs/protocol.md}, "Limits".
    @ivar idleTimeout: Seconds (C{> 0}) a sensor connection may send nothing
        before it is closed; L{None}: no limit.
    @ivar junkBudget: Refused lines in a row (no reading accepted between
        them) that close a sensor connection; L{None}: no budget.
    @ivar retention: The L{sensornet.store.retention.RetentionPolicy}, or
        L{None} for the default one (see C{docs/storage.md}).
    @ivar compactAfter: Seconds a stored reading stays in its fresh row
        before the compactor merges it into a block and the rollups.
    @ivar maxRejectedLogPerSecond: Refused lines logged one by one per
        second across all sensor connections, the rest counted in a summary
        line a second; L{None}: no limit but the per-chunk one.
    @ivar maxConnections: Most sensor connections open at once, over all
        sensor listeners: an integer, C{"auto"} (derived from the open-file
        limit, keeping a reserve: see L{sensornet.caps}) or L{None} (no
        cap). A connection over it gets C{error: too many connections}.
    @ivar maxConnectionsPerAddress: Most sensor connections from one peer
        address; L{None}: no cap.
    @ivar maxHTTPConnections: As C{maxConnections}, for the HTTP side (a
        connection over it gets a 503).
    @ivar maxHTTPConnectionsPerAddress: As C{maxConnectionsPerAddress}, for
        the HTTP side.
    @ivar capExempt: Networks the per-address caps do not apply to (by
        default this host: C{127.0.0.1} and C{::1}).
    @ivar anonymousFrom: Networks whose peers may write readings without a
        credential, as C{--anonymous-from} takes them (C{127.0.0.0/8,::1} by
        default; C{none}: no anonymous writes). Everyone else must
        authenticate (see C{docs/protocol.md}, "Authentication").
    @ivar clientCA: PEM file of the CA(s) whose client certificates the
        C{ssl:} sensor listeners require, or L{None}: C{ssl:} listeners ask
        for no client certificate.
    @ivar httpAuth: C{"required"} (the default): every HTTP path but the
        dashboard's files and the health checks needs a reader's bearer
        token (see C{docs/security.md}); a server with an HTTP side and no
        store (no registry) then refuses to be built. C{"none"}: all open.
    @ivar fleet: The fleet view's options (states' cadence, rules,
        webhooks): a L{sensornet.fleet.service.FleetConfig}, or L{None} for
        the defaults (see C{docs/fleet.md}).
    """

    listen: List[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    http: Optional[str] = DEFAULT_HTTP
    store: str = DEFAULT_STORE
    logReadings: bool = True
    maxBatch: int = 5000
    maxDelay: float = 0.002
    batchInterval: float = 0.0
    closeTimeout: float = 10.0
    maxClockSkew: Optional[float] = DEFAULT_MAX_CLOCK_SKEW
    handshakeTimeout: Optional[float] = DEFAULT_HANDSHAKE_TIMEOUT
    idleTimeout: Optional[float] = DEFAULT_IDLE_TIMEOUT
    junkBudget: Optional[int] = DEFAULT_JUNK_BUDGET
    maxRejectedLogPerSecond: Optional[int] = DEFAULT_MAX_REJECTED_LOG_PER_SECOND
    retention: Any = None
    compactAfter: float = 60.0
    maxConnections: Union[int, str, None] = AUTO
    maxConnectionsPerAddress: Optional[int] = DEFAULT_SENSOR_PER_ADDRESS
    maxHTTPConnections: Union[int, str, None] = AUTO
    maxHTTPConnectionsPerAddress: Optional[int] = DEFAULT_HTTP_PER_ADDRESS
    capExempt: Tuple[Network, ...] = field(default_factory=lambda: parseNetworks(DEFAULT_EXEMPT))
    anonymousFrom: str = DEFAULT_ANONYMOUS_FROM
    clientCA: Optional[str] = None
    httpAuth: str = "required"
    fleet: Any = None


class SensorServerService(OffersLogObserver, MultiService):
    """
    A whole server. C{factory} is the sensors' protocol factory, C{feed} the
    live feed of committed readings, C{metrics} its metrics, C{writer} the
    store writer (L{None} with C{store="none"}), C{listeners} the services
    listening for sensors, C{web} the one listening for HTTP (L{None}
    without C{http}).
    """

    _log = Logger()
    # Started first and stopped last by startService/stopService.
    _collectorTuning: Optional[CollectorTuning] = None

    def __init__(self, config: ServerConfig, reactor: IReactorTime) -> None:
        """
        @param reactor: The reactor the server runs on: its clock, and
            whatever the endpoint strings need (L{IReactorTCP} for C{tcp:},
            L{IReactorSSL} for C{ssl:}, ...) and the store's threads
            (L{IReactorFromThreads}).
        """
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.metrics = ServerMetrics()
        self.feed = LiveFeed()
        self.writer: Optional[BatchWriter] = None
        self.maintenance: Optional["StoreMaintenance"] = None
        self.queries: Optional[IStoreQueries] = None
        self.web: Optional[ListeningService] = None
        self.site: Optional[WebSite] = None
        self._webConnections: Optional[OpenConnections] = None
        sink: IReadingSink
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
                batchInterval=config.batchInterval,
                storeFactory=self._newStore,
            )
            self.writer.setServiceParent(self)
            sink = self.writer
            from .store.maintenance import StoreMaintenance

            self.maintenance = StoreMaintenance(
                config.store, reactor, self.metrics, retention=config.retention, compactAfter=config.compactAfter,
                maxClockSkew=config.maxClockSkew,
            )
            self.maintenance.setServiceParent(self)
        # The credentials every sensor connection (and the HTTP side) checks
        # against, kept in memory and reloaded when the store's change;
        # none without a store: then only anonymous writes are possible.
        self.credentials: Optional["CredentialCache"] = None
        if self.writer is not None:
            from .identity.cache import CredentialCache

            self.credentials = CredentialCache(config.store, reactor)
            self.credentials.setServiceParent(self)
        self.access = SensorAccess(
            self.credentials, AnonymousNetworks.fromString(config.anonymousFrom), reactor, self.metrics
        )
        self.factory = SensorServerFactory(
            sink,
            reactor,
            self.metrics,
            config.logReadings,
            maxClockSkew=config.maxClockSkew,
            handshakeTimeout=config.handshakeTimeout,
            idleTimeout=config.idleTimeout,
            junkBudget=config.junkBudget,
            maxRejectedLogPerSecond=config.maxRejectedLogPerSecond,
            access=self.access,
        )
        if self.writer is not None:
            self.writer.addPressureObserver(self.factory)
        # One cap for every sensor listener: they share the file descriptors.
        self.sensorConnections = CappedFactory(
            self.factory, clock=reactor, metrics=self.metrics, port="sensor", refusal=SENSOR_REFUSAL
        )
        self.sensorConnections.closeAtAccept = closesAtAccept(config.listen)
        self.listeners: List[ListeningService] = []
        for description in config.listen:
            listener = ListeningService(self._sensorEndpoint(description), self.sensorConnections)
            listener.setServiceParent(self)
            self.listeners.append(listener)
        self.alerts: Optional[Any] = None
        if config.http is not None:
            self._addWeb(config.http)
        else:
            # Rules still notify by webhook; silence needs the query side.
            from .fleet.service import FleetConfig, addFleet

            self.alerts = addFleet(config.fleet or FleetConfig(), self, None, self.feed, reactor,
                                   self.metrics.registry)

    def logObserverTaken(self, observer: ILogObserver) -> None:
        """
        The process logs to C{observer} (see L{OffersLogObserver}): when it
        is a L{ReadingLogFileObserver}, the reading log is written a chunk
        at a time (L{ReadingLog.batched}).
        """
        accounting = self.factory.accounting
        if isinstance(observer, ReadingLogFileObserver) and isinstance(accounting, ChunkAccounting):
            accounting.readingLog.batched = True

    def _sensorEndpoint(self, description: str) -> IStreamServerEndpoint:
        """
        The endpoint of a sensor listener: with C{clientCA}, an C{ssl:} one
        requires client certificates from that CA.
        """
        from .identity.tls import clientCertificateEndpoint, isSSLEndpoint

        if self.config.clientCA is not None and isSSLEndpoint(description):
            return clientCertificateEndpoint(cast(IReactorSSL, self.reactor), description, self.config.clientCA)
        return serverFromString(self.reactor, description)

    def _newStore(self, url: str) -> "Store":
        """
        A store for C{url} with this server's retention rules, which a
        series records when it is created.
        """
        from .store import storeFromURL

        store = storeFromURL(url)
        store.retention = self.config.retention
        return store

    def _addWeb(self, description: str) -> None:
        from .web import makeSite

        if self.writer is not None:
            from .store.queries import StoreQueries

            queries = StoreQueries(self.config.store, self.reactor)
            queries.setServiceParent(self)
            self.queries = queries
        authenticator = None
        if self.config.httpAuth == "required":
            from .web.auth import BearerAuthenticator

            credentials = self.credentials
            if credentials is None:
                raise ValueError(
                    "HTTP access control (httpAuth 'required') needs the credentials of a store, and this "
                    "server has none: give it a store, or set httpAuth to 'none'"
                )
            authenticator = BearerAuthenticator(
                credentials.verify, lambda: credentials.ready.called, self.metrics.httpUnauthorized
            )
        elif self.config.httpAuth != "none":
            raise ValueError(f"httpAuth must be 'required' or 'none', not {self.config.httpAuth!r}")
        from .fleet.service import FleetConfig, addFleet, watchFleet

        fleet = self.config.fleet or FleetConfig()
        self.alerts = addFleet(fleet, self, self.queries, self.feed, self.reactor, self.metrics.registry)
        self.site = makeSite(
            self.queries, self.feed, self.metrics, self.factory.connectedSensors, self.reactor,
            authenticator=authenticator, alerts=self.alerts,
        )
        watchFleet(fleet, self, self.site, self.reactor)
        self._webConnections = OpenConnections(
            self.site, clock=self.reactor, metrics=self.metrics, port="http", refusal=HTTP_REFUSAL,
            openGauge=self.metrics.httpConnectionsOpen,
        )
        self._webConnections.closeAtAccept = closesAtAccept([description])
        self.web = ListeningService(serverFromString(self.reactor, description), self._webConnections)
        self.web.setServiceParent(self)

    def whenListening(self) -> "defer.Deferred[List[IListeningPort]]":
        """
        Fires with the sensors' listening ports (L{IListeningPort}), in the
        order of C{config.listen}, once all are bound: how tests and
        embedders learn the port of C{tcp:0}.
        """
        return defer.gatherResults([listener.whenListening() for listener in self.listeners])

    def whenWebListening(self) -> "defer.Deferred[IListeningPort]":
        """
        Fires with the HTTP side's listening port once bound.

        @raise RuntimeError: The server has no HTTP side (C{http=None}).
        """
        if self.web is None:
            raise RuntimeError("this server has no HTTP side (config.http is None)")
        return self.web.whenListening()

    def startService(self) -> None:
        """
        Start the writer, the listeners, then the HTTP side.

        @raise Exception: A listener could not listen (such as
            L{twisted.internet.error.CannotListenError} for a port in use).
        """
        _raiseFileLimit()
        self._applyConnectionLimits()
        # Keeps full garbage collections off the connections' long-lived
        # objects: each stalled the reactor 80-250 ms at ~19k connections.
        self._collectorTuning = CollectorTuning(self.reactor, logThresholdFromEnvironment())
        self._collectorTuning.startService()
        try:
            super().startService()
        except BaseException:
            self._collectorTuning.stopService()
            raise
        self._log.info(
            "sensornet server listening on {listen}; store {store}; HTTP {http}",
            listen=", ".join(self.config.listen),
            store=redactURL(self.config.store),
            http=self.config.http or "off",
        )
        self._log.info("Anonymous sensor writes accepted from: {networks}", networks=str(self.access.anonymous))
        exposure = anonymousExposure(self.config.listen, self.access.anonymous)
        if exposure is not None:
            self._log.warn("{banner}\n{warning}\n{banner}", banner="!" * 72, warning=exposure)

    def _applyConnectionLimits(self) -> None:
        """
        Set both ports' connection caps from the options and the open-file
        limit as it is now (after L{_raiseFileLimit}).
        """
        config = self.config
        sensor, http = serverLimits(
            config.maxConnections, config.maxConnectionsPerAddress,
            config.maxHTTPConnections, config.maxHTTPConnectionsPerAddress,
            config.capExempt, fileLimit(),
        )
        self.sensorConnections.limits = sensor
        self.sensorConnections.exportLimits()
        if self._webConnections is not None:
            self._webConnections.limits = http
            self._webConnections.exportLimits()
        self._log.info(
            "Connection caps: sensors {sensor} in all, {sensorPer} per address; HTTP {http} in all, "
            "{httpPer} per address (open-file limit {files})",
            sensor=sensor.total, sensorPer=sensor.perAddress, http=http.total if self.web else "-",
            httpPer=http.perAddress if self.web else "-", files=fileLimit(),
        )
        why = overcommitted(sensor.total, http.total if self.web else 0, fileLimit())
        if why is not None:
            self._log.warn("Connection caps too high: {why}; one address could lock out every other", why=why)

    @defer.inlineCallbacks
    def stopService(self) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Stop in the order that loses nothing; see the module docstring.
        """
        self.running = 0
        # Stop accepting first.
        yield defer.DeferredList([defer.maybeDeferred(listener.stopService) for listener in self.listeners])
        protocols = list(self.factory.protocols)
        for protocol in protocols:
            protocol.pauseReading(PauseReason.serverStopping)
        if self.writer is not None:
            # Commits what is queued; acknowledgements are written as their
            # batches commit.
            yield self.writer.stopService()
        yield self._closeSensorConnections(protocols)
        if self.web is not None:
            yield self._stopWeb()
        rest = [service for service in reversed(list(self)) if service.running]
        yield defer.DeferredList([defer.maybeDeferred(service.stopService) for service in rest])
        if self._collectorTuning is not None:
            self._collectorTuning.stopService()
        self._log.info("sensornet server stopped")

    @defer.inlineCallbacks
    def _closeSensorConnections(self, protocols: List[SensorProtocol]) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Close each connection once its replies are written; abort those still
        open after C{closeTimeout} (a sensor that does not read its replies
        would otherwise hold its connection, and our memory, forever).
        """
        closing = [protocol for protocol in protocols if not protocol.closed]
        for protocol in closing:
            protocol.closeWhenAnswered()
        yield self._allClosed(closing)
        stuck = [protocol for protocol in closing if not protocol.closed]
        if stuck:
            self._log.warn(
                "Aborting {count} sensor connection(s) still open {timeout} s after the stop",
                count=len(stuck),
                timeout=self.config.closeTimeout,
            )
            for protocol in stuck:
                protocol.transport.abortConnection()
            yield self._allClosed(stuck)

    def _allClosed(self, protocols: List[SensorProtocol]) -> "defer.Deferred[Any]":
        """
        Fires once every one of C{protocols} is closed, or after
        C{closeTimeout} seconds, whichever comes first; never fails.
        """
        closed = defer.DeferredList([protocol.whenClosed() for protocol in protocols], consumeErrors=True)
        closed.addTimeout(self.config.closeTimeout, self.reactor)
        return closed.addErrback(lambda _: None)

    @defer.inlineCallbacks
    def _stopWeb(self) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Stop accepting HTTP connections, end every live stream (which stops
        its heartbeat), then close every HTTP connection, aborting those
        still open after C{closeTimeout}.
        """
        assert self.web is not None and self.site is not None and self._webConnections is not None
        yield self.web.stopService()
        self.site.stream.closeAll()
        yield self._webConnections.closeAll(self.config.closeTimeout, self.reactor)


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

