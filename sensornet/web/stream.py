"""
C{GET /api/stream}: the live feed of committed readings as Server-Sent
Events.

Wire format (documented in C{docs/openapi.yaml}):

  - On connecting, C{retry: 3000} (reconnect after 3 s) and a comment.
  - One C{readings} event per committed batch::

        event: readings
        data: [{"sensor": "client-1", "kind": "temperature", "value": 25.34, ...}, ...]

    C{data} is a JSON array of readings in the API's shape (see
    L{sensornet.web.encoding.readingFromRow}), in commit order. One event per
    batch rather than per reading keeps a busy server's stream to a few
    events a second; a batch holds at most L{StreamResource.maxEventReadings}
    readings per event, bigger batches are split.
  - A comment line (C{: heartbeat}) every L{StreamResource.heartbeatInterval}
    seconds, so proxies keep the connection open and clients notice a dead one.

Optional query parameters C{sensor} and C{kind} narrow the stream to one
sensor or kind.

Memory stays bounded per client: the stream registers as the connection's
producer, so while the client reads slower than readings arrive, the
transport pauses it and events wait in a per-client queue; a client whose
queue passes L{StreamResource.maxPendingBytes} is disconnected (counted in
C{sensornet_stream_clients_dropped}). An C{EventSource} reconnects by itself.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Set

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from ..feed import LiveFeed
from ..reading import Reading
from .encoding import jsonBytes, readingFromObject

__all__ = ["StreamMetrics", "StreamResource"]


class StreamMetrics:
    """
    The live stream's own metrics, registered in the server's registry:
    C{sensornet_stream_clients} (open streams now) and
    C{sensornet_stream_clients_dropped_total} (streams closed because their
    client fell too far behind).

    Register once per registry (one web site per server).
    """

    def __init__(self, registry: CollectorRegistry, resource: "StreamResource") -> None:
        self.clients = Gauge(
            "sensornet_stream_clients", "Live stream (SSE) clients connected now.", registry=registry
        )
        self.clients.set_function(lambda: float(len(resource.clients)))
        self.dropped = Counter(
            "sensornet_stream_clients_dropped",
            "Live stream clients disconnected for falling too far behind.",
            registry=registry,
        )


@implementer(IPushProducer)
class _StreamClient:
    """
    One open event stream: writes events to its request, or queues them
    while the transport has paused it.
    """

    _log = Logger()

    def __init__(self, resource: "StreamResource", request: Request, sensor: Optional[str], kind: Optional[str]) -> None:
        self._resource = resource
        self._request = request
        self._sensor = sensor
        self._kind = kind
        self._paused = False
        self._pending: List[bytes] = []
        self._pendingBytes = 0
        self.closed = False
        self.unsubscribe: Any = None

    # IPushProducer: the transport calls these as its buffer fills and drains.
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._pending and not self.closed:
            data = b"".join(self._pending)
            self._pending = []
            self._pendingBytes = 0
            self._request.write(data)

    def stopProducing(self) -> None:
        self.connectionClosed(None)

    def write(self, data: bytes) -> None:
        """
        Send C{data} now, or queue it while paused; past the bound, drop the
        client.
        """
        if self.closed:
            return
        if not self._paused:
            self._request.write(data)
            return
        self._pending.append(data)
        self._pendingBytes += len(data)
        if self._pendingBytes > self._resource.maxPendingBytes:
            self._drop()

    def batchCommitted(self, readings: List[Reading]) -> None:
        """
        The feed's listener: one event per (at most C{maxEventReadings})
        readings that pass this client's filter.
        """
        chosen = [
            r for r in readings
            if (self._sensor is None or r.sensor == self._sensor)
            and (self._kind is None or r.kind == self._kind)
        ]
        step = self._resource.maxEventReadings
        for start in range(0, len(chosen), step):
            payload = jsonBytes([readingFromObject(r) for r in chosen[start:start + step]])
            self.write(b"event: readings\ndata: " + payload + b"\n\n")

    def _drop(self) -> None:
        self._log.warn(
            "dropping live stream client {peer}: {size} bytes queued",
            peer=str(self._request.getClientAddress()), size=self._pendingBytes,
        )
        if self._resource.metrics is not None:
            self._resource.metrics.dropped.inc()
        self._pending = []
        self._pendingBytes = 0
        transport = self._request.channel.transport if self._request.channel else None
        self.connectionClosed(None)
        if transport is not None:
            # Abort, not lose: a graceful close would first flush what the
            # transport already holds to a client that is not reading.
            abort = getattr(transport, "abortConnection", transport.loseConnection)
            abort()

    def finish(self) -> None:
        """
        End the stream (the server is stopping): the client sees the
        response end, and can reconnect to another server.
        """
        if self.closed:
            return
        request = self._request
        self.connectionClosed(None)
        request.unregisterProducer()
        request.finish()

    def connectionClosed(self, reason: object) -> None:
        """
        The client went away (or was dropped): stop listening, forget it.
        """
        if self.closed:
            return
        self.closed = True
        self._pending = []
        if self.unsubscribe is not None:
            self.unsubscribe()
        self._resource.clientGone(self)


class StreamResource(Resource):
    """
    The SSE endpoint; see the module docstring for the wire format.
    """

    isLeaf = True

    #: Seconds between heartbeat comments.
    heartbeatInterval = 15.0
    #: Bytes one client may have queued while it is not reading before it is
    #: disconnected.
    maxPendingBytes = 4 * 1024 * 1024
    #: Most readings in one event; a bigger batch becomes several events.
    maxEventReadings = 1000
    #: Milliseconds an EventSource waits before reconnecting.
    retryMillis = 3000

    def __init__(self, feed: LiveFeed, clock: IReactorTime, registry: Optional[CollectorRegistry] = None) -> None:
        super().__init__()
        self._feed = feed
        self._clock = clock
        self.clients: Set[_StreamClient] = set()
        self._heartbeat: Optional[LoopingCall] = None
        self.metrics = StreamMetrics(registry, self) if registry is not None else None

    def render_GET(self, request: Request) -> object:
        args: Dict[bytes, List[bytes]] = request.args or {}
        sensor = (args.get(b"sensor") or [b""])[0].decode("utf-8", "replace") or None
        kind = (args.get(b"kind") or [b""])[0].decode("utf-8", "replace") or None
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        # Tell buffering reverse proxies (nginx) to pass events on at once.
        request.setHeader(b"x-accel-buffering", b"no")
        client = _StreamClient(self, request, sensor, kind)
        request.registerProducer(client, True)
        request.notifyFinish().addBoth(client.connectionClosed)
        self.clients.add(client)
        client.write(b"retry: %d\n: sensornet live stream\n\n" % (self.retryMillis,))
        client.unsubscribe = self._feed.subscribe(client.batchCommitted)
        self._startHeartbeat()
        return NOT_DONE_YET

    def clientGone(self, client: _StreamClient) -> None:
        """
        Forget C{client}; stop the heartbeat when nobody listens.
        """
        self.clients.discard(client)
        if not self.clients and self._heartbeat is not None:
            if self._heartbeat.running:
                self._heartbeat.stop()
            self._heartbeat = None

    def _startHeartbeat(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = LoopingCall(self._beat)
            self._heartbeat.clock = self._clock
            self._heartbeat.start(self.heartbeatInterval, now=False)

    def _beat(self) -> None:
        for client in list(self.clients):
            client.write(b": heartbeat\n\n")

    def closeAll(self) -> None:
        """
        End every open stream and stop the heartbeat (the server is
        stopping). The connections stay open, for the server to close.
        """
        for client in list(self.clients):
            client.finish()
