"""
A sensor client's own Prometheus metrics, served on C{--metrics ENDPOINT}.

One L{ClientMetrics} per client, with its own registry (never the library's
global one), so several simulated clients in one process keep apart. The
client code updates the attributes; L{makeClientMetricsSite} serves them.
A sensor given none counts into a private set nobody serves, which is
cheaper to reason about than a stand-in that swallows every call.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

__all__ = ["ClientMetrics", "makeClientMetricsSite"]


class ClientMetrics:
    """
    Every metric a sensornet client exports, registered in C{self.registry}.

    @ivar outboxLength: C{sensornet_client_outbox_length}: readings waiting
        for an acknowledgement (sent or not yet sent), over every sensor of
        the process.
    @ivar connected: C{sensornet_client_connected}: how many of the
        process's sensors are connected to the server now.
    @ivar readingsSent: C{sensornet_client_readings_sent_total}: reading
        lines written to the server, resends included.
    @ivar resends: C{sensornet_client_resends_total}: of those, lines sent
        again after a reconnect because no acknowledgement had come.
    @ivar acksReceived: C{sensornet_client_acks_received_total}:
        acknowledgements received.
    @ivar reconnects: C{sensornet_client_reconnects_total}: connections
        made after the first.
    @ivar readingsDropped: C{sensornet_client_readings_dropped_total}:
        readings discarded because the outbox was full.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.outboxLength = Gauge(
            "sensornet_client_outbox_length", "Readings waiting for an acknowledgement, all sensors.", registry=r
        )
        self.connected = Gauge(
            "sensornet_client_connected", "Sensors of this process connected to the server now.", registry=r
        )
        self.readingsSent = Counter(
            "sensornet_client_readings_sent", "Reading lines written to the server, resends included.",
            registry=r,
        )
        self.resends = Counter(
            "sensornet_client_resends", "Reading lines sent again after a reconnect.", registry=r
        )
        self.acksReceived = Counter(
            "sensornet_client_acks_received", "Acknowledgements received from the server.", registry=r
        )
        self.reconnects = Counter(
            "sensornet_client_reconnects", "Connections made after the first.", registry=r
        )
        self.readingsDropped = Counter(
            "sensornet_client_readings_dropped", "Readings discarded because the outbox was full.",
            registry=r,
        )


class _Root(Resource):
    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound("No such resource", "Only /metrics is served here.")


def makeClientMetricsSite(metrics: ClientMetrics) -> Site:
    """
    A L{Site} answering C{GET /metrics} with C{metrics} in the Prometheus
    text format (every other path: 404).
    """
    # Imported here: every client makes a ClientMetrics, few serve it, and
    # the web package is the server's.
    from .web.api import MetricsResource

    root = _Root()
    root.putChild(b"metrics", MetricsResource(metrics.registry))
    site = Site(root)
    site.displayTracebacks = False
    return site
