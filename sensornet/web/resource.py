"""
The HTTP side's resource tree, assembled from its parts:

  - C{/} and C{/static/...}: the dashboard, served from files inside the
    package (no CDN, no build step: a server in a VPC may have no internet).
  - C{/api/readings}: L{sensornet.web.api}.
  - C{/api/stream}: L{sensornet.web.stream}.
  - C{/api/sensors}, C{/api/fleet}, C{/api/sparklines}: L{sensornet.web.sensors};
    C{/api/alerts}: L{sensornet.web.alerts}.
  - C{/metrics}, C{/healthz}, C{/readyz}: operations.

With an authenticator (L{sensornet.web.auth}), every path but C{/},
C{/static/...}, C{/healthz} and C{/readyz} needs a reader's bearer token.

Every response carries a strict Content-Security-Policy allowing only this
origin, so the dashboard cannot quietly depend on anything outside it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Optional, Tuple, cast

from twisted.internet.interfaces import IReactorTime
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from twisted.web.static import File

from ..feed import LiveFeed
from ..interfaces import IStoreQueries
from ..metrics import ServerMetrics
from .api import (
    HealthResource,
    MetricsResource,
    ReadingsResource,
    ReadyResource,
    noStoreResource,
)
from .stream import StreamResource

if TYPE_CHECKING:
    from .auth import BearerAuthenticator

__all__ = ["WebSite", "makeResource", "makeSite", "staticDirectory"]

_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}


def staticDirectory() -> Path:
    """
    The directory holding the dashboard's files (installed with the package
    as package data).
    """
    return Path(str(files("sensornet.web") / "static"))


def _isUTF8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _StaticFile(File):
    """
    A package file or directory; a directory is never listed.
    """

    contentTypes = dict(File.contentTypes, **_CONTENT_TYPES)
    indexNames: list = []

    def directoryListing(self) -> IResource:
        return notFound("No such file", "There is no such file.")

    def getChild(self, path: bytes, request: Request) -> IResource:
        # File itself answers a name holding a NUL byte with a 500 (the
        # operating system refuses the path) and logs a traceback for a name
        # that is not UTF-8: both are simply names of no file here.
        if b"\x00" in path or not _isUTF8(path):
            return notFound("No such file", "There is no such file.")
        return super().getChild(path, request)

    def render_GET(self, request: Request) -> Any:
        # The files change with the package; let browsers revalidate.
        request.setHeader(b"cache-control", b"no-cache")
        return super().render_GET(request)


class _Directory(Resource):
    """
    A resource with named children and a plain 404 for any other name.
    """

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound("No such resource", "There is nothing at this address.")


class _Root(_Directory):
    """
    The root: adds the headers every response shares, asks the
    authenticator (if any) whether the request may go on, then finds the
    child.
    """

    authenticator: Optional["BearerAuthenticator"] = None

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        request.setHeader(b"content-security-policy", _CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        if self.authenticator is not None:
            refused = self.authenticator.guard(path, request)
            if refused is not None:
                return refused
        return super().getChildWithDefault(path, request)


def _tree(
    queries: Optional[IStoreQueries],
    feed: LiveFeed,
    metrics: ServerMetrics,
    connectedSensors: Callable[[], Collection[str]],
    reactor: IReactorTime,
    alerts: Optional[Any] = None,
) -> Tuple[Resource, StreamResource, Optional[Any]]:
    root = _Root()
    static = staticDirectory()
    root.putChild(b"", _StaticFile(str(static / "index.html")))
    root.putChild(b"static", _StaticFile(str(static)))
    api = _Directory()
    root.putChild(b"api", api)
    if queries is not None:
        api.putChild(b"readings", ReadingsResource(queries, reactor))
    else:
        api.putChild(b"readings", noStoreResource())
    stream = StreamResource(feed, reactor, metrics.registry)
    api.putChild(b"stream", stream)
    fleet = _fleetResources(api, queries, connectedSensors, metrics, reactor, alerts)
    root.putChild(b"metrics", MetricsResource(metrics.registry))
    root.putChild(b"healthz", HealthResource())
    root.putChild(b"readyz", ReadyResource(queries, reactor))
    return root, stream, fleet


def _fleetResources(
    api: Resource,
    queries: Optional[IStoreQueries],
    connectedSensors: Callable[[], Collection[str]],
    metrics: ServerMetrics,
    reactor: IReactorTime,
    alerts: Optional[Any],
) -> Optional[Any]:
    """
    C{/api/sensors}, C{/api/fleet}, C{/api/sparklines}, C{/api/alerts}
    (L{sensornet.web.sensors}, L{sensornet.web.alerts}); returns the fleet
    summary cache, whose gauges the server refreshes.
    """
    from .alerts import AlertsResource
    from .sensors import FleetResource, SensorsResource, SparklinesResource

    api.putChild(b"alerts", AlertsResource(alerts))
    if queries is None or not hasattr(queries, "fleetSummary"):
        # A query side without the fleet's queries (a test double) still
        # lists its series, unpaged.
        if queries is not None:
            api.putChild(b"sensors", SensorsResource(queries, connectedSensors, reactor))
        for name in (b"sensors", b"fleet", b"sparklines"):
            if name not in api.children:
                api.putChild(name, noStoreResource())
        return None
    from ..fleet.summary import FleetSummaryCache

    cache = FleetSummaryCache(queries, reactor, metrics.registry)
    counts = alerts.counts if alerts is not None else None
    api.putChild(b"sensors", SensorsResource(queries, connectedSensors, reactor))
    api.putChild(b"fleet", FleetResource(cache, counts))
    api.putChild(b"sparklines", SparklinesResource(queries, reactor))
    return cache


def makeResource(
    queries: Optional[IStoreQueries],
    feed: LiveFeed,
    metrics: ServerMetrics,
    connectedSensors: Callable[[], Collection[str]],
    reactor: IReactorTime,
    alerts: Optional[Any] = None,
) -> Resource:
    """
    The root resource of a server's HTTP side.

    @param queries: The store's query side, or L{None} when the server
        stores nothing: the data endpoints then answer 503.
    @param feed: Committed readings, for the live stream.
    @param metrics: The server's metrics; the stream adds its own two to
        C{metrics.registry}, so build one resource per L{ServerMetrics}.
    @param connectedSensors: Names of the sensors with a connection open now.
    @param reactor: Gives the time (C{seconds()}) and runs the heartbeat.
    @param alerts: The rules engine (L{sensornet.fleet.rules.RulesEngine})
        for C{/api/alerts} and the alert counts of C{/api/fleet}, or L{None}.
    """
    return _tree(queries, feed, metrics, connectedSensors, reactor, alerts)[0]


class WebSite(Site):
    """
    The L{Site} of a server's HTTP side. Tracebacks are never shown to
    clients.

    @ivar stream: The live stream (C{/api/stream}); a stopping server ends
        its streams with C{stream.closeAll()}.
    @ivar fleetSummary: The L{sensornet.fleet.summary.FleetSummaryCache}
        behind C{/api/fleet}, or L{None} without a store.
    """

    displayTracebacks = False

    def __init__(
        self, resource: Resource, stream: StreamResource, reactor: IReactorTime, fleetSummary: Optional[Any] = None
    ) -> None:
        super().__init__(resource, reactor=reactor)
        self.stream = stream
        self.fleetSummary = fleetSummary


def makeSite(
    queries: Optional[IStoreQueries],
    feed: LiveFeed,
    metrics: ServerMetrics,
    connectedSensors: Callable[[], Collection[str]],
    reactor: IReactorTime,
    alerts: Optional[Any] = None,
    authenticator: Optional["BearerAuthenticator"] = None,
) -> WebSite:
    """
    A L{WebSite} serving L{makeResource}'s tree, ready to listen on an
    endpoint.

    @param authenticator: The guard every request but the open ones
        (dashboard files, health checks) must pass
        (L{sensornet.web.auth.BearerAuthenticator}); L{None}: all open.
    """
    root, stream, fleet = _tree(queries, feed, metrics, connectedSensors, reactor, alerts)
    cast(_Root, root).authenticator = authenticator
    return WebSite(root, stream, reactor, fleet)
