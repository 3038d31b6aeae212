"""
C{GET /api/stream}: the live feed of committed readings as Server-Sent
Events, for many viewers at once.

Wire format (documented in C{docs/openapi.yaml}):

  - On connecting, C{retry: 3000} (reconnect after 3 s) and a comment.
  - One C{readings} event per committed batch::

        event: readings
        data: [{"sensor": "client-1", "kind": "temperature", "value": 25.34, ...}, ...]

    C{data} is a JSON array of readings in the API's shape (see
    L{sensornet.web.encoding.readingFromRow}), in commit order. One event per
    batch rather than per reading keeps a busy server's stream to a few
    events a second; a batch holds at most L{StreamResource.maxEventReadings}
    readings per event, bigger batches are split. A batch none of whose
    readings pass a client's filter sends that client nothing.
  - A comment line (C{: heartbeat}) every L{StreamResource.heartbeatInterval}
    seconds, so proxies keep the connection open and clients notice a dead one.

Optional query parameters narrow the stream, and combine (all must hold):
C{sensor} (exactly this sensor), C{prefix} (sensors whose name starts with
it), C{kind} (exactly this kind). An empty value means "not given". An
unknown or repeated parameter, invalid UTF-8 or a NUL character is answered
with C{400} and C{{"error": ..., "parameter": ...}}, as C{/api/readings} does.

Cost per committed batch: the resource listens to the feed once, not once
per client. Clients are grouped by their filter; each distinct filter's
selection is encoded once (all unfiltered clients share one encoded event,
clients with the same filter share theirs) and the same C{bytes} are written
to every client of the group. So a batch costs one encoding per distinct
filter plus one C{write} per client, whatever the client count. With more
than L{StreamResource.coalesceAbove} streams open, the writes are coalesced
too: each group's events wait at most L{StreamResource.coalesceSeconds} and
go out in one C{write} per client, so a crowd costs each client a few writes
a second rather than one per batch (hundreds a second on a busy server).
Events keep their order and stay one per batch on the wire.

At most L{StreamResource.maxClients} streams are open at once; a further
request is answered C{503} with C{Retry-After} (counted in
C{sensornet_stream_clients_refused_total}). Note that a browser's
C{EventSource} does not reconnect after a 503: the page must retry.

Memory stays bounded per client: the stream registers as the connection's
producer, so while the client reads slower than readings arrive, the
transport pauses it and events wait in a per-client queue (references to the
shared event bytes); a client whose queue passes
L{StreamResource.maxPendingBytes} is disconnected (counted in
C{sensornet_stream_clients_dropped_total}). An C{EventSource} reconnects by
itself.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from ..feed import LiveFeed
from ..reading import Reading
from .encoding import jsonBytes, readingFromObject
from .params import ParameterError, singleParameter

__all__ = ["StreamFilter", "StreamMetrics", "StreamResource", "parseStreamFilter", "STREAM_PARAMETERS"]

#: Every query parameter C{GET /api/stream} understands.
STREAM_PARAMETERS = ("sensor", "prefix", "kind")


@dataclass(frozen=True)
class StreamFilter:
    """
    Which committed readings one stream wants; C{None} means "any". Equal
    filters are one group: their clients share each encoded event.
    """

    sensor: Optional[str] = None
    prefix: Optional[str] = None
    kind: Optional[str] = None

    @property
    def everything(self) -> bool:
        """
        Whether this filter lets every reading through.
        """
        return self.sensor is None and self.prefix is None and self.kind is None

    def matches(self, reading: Reading) -> bool:
        """
        Whether C{reading} passes every condition given.
        """
        return (
            (self.sensor is None or reading.sensor == self.sensor)
            and (self.prefix is None or reading.sensor.startswith(self.prefix))
            and (self.kind is None or reading.kind == self.kind)
        )


def _filterValue(args: Mapping[bytes, Sequence[bytes]], name: str) -> Optional[str]:
    # An empty value means "not given", as for /api/readings.
    return singleParameter(args, name) or None


def parseStreamFilter(args: Mapping[bytes, Sequence[bytes]]) -> StreamFilter:
    """
    Validate the query of C{GET /api/stream}. Unknown parameters are refused
    rather than ignored, so a typo (C{sensr=...}) does not silently stream
    every sensor's readings.

    @raise ParameterError: For the first bad parameter found.
    """
    for key in args:
        name = key.decode("utf-8", "replace")
        if name not in STREAM_PARAMETERS:
            raise ParameterError(
                name.replace("\x00", "\\x00"),
                f"unknown parameter {name!r}; known: {', '.join(STREAM_PARAMETERS)}",
            )
    return StreamFilter(
        sensor=_filterValue(args, "sensor"), prefix=_filterValue(args, "prefix"), kind=_filterValue(args, "kind")
    )


class StreamMetrics:
    """
    The live stream's own metrics, registered in the server's registry:
    C{sensornet_stream_clients} (open streams now),
    C{sensornet_stream_clients_dropped_total} (streams closed because their
    client fell too far behind) and C{sensornet_stream_clients_refused_total}
    (requests answered 503 because L{StreamResource.maxClients} streams were
    open).

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
        self.refused = Counter(
            "sensornet_stream_clients_refused",
            "Live stream requests refused (503) because the most streams allowed were open.",
            registry=registry,
        )


@implementer(IPushProducer)
class _StreamClient:
    """
    One open event stream: writes events to its request, or queues them
    while the transport has paused it.
    """

    _log = Logger()

    def __init__(self, resource: "StreamResource", request: Request, streamFilter: StreamFilter) -> None:
        self._resource = resource
        self._request = request
        self.filter = streamFilter
        self._paused = False
        self._pending: List[bytes] = []
        self._pendingBytes = 0
        self.closed = False

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
        client. C{data} is shared with other clients: never changed here.
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
        The client went away (or was dropped): forget it.
        """
        if self.closed:
            return
        self.closed = True
        self._pending = []
        self._resource.clientGone(self)


def encodeEvent(readings: Sequence[Reading]) -> bytes:
    """
    One C{readings} event holding C{readings}, as bytes on the wire.
    """
    return b"event: readings\ndata: " + jsonBytes([readingFromObject(r) for r in readings]) + b"\n\n"


class StreamResource(Resource):
    """
    The SSE endpoint; see the module docstring for the wire format and the
    cost per batch.

    @ivar clients: Every open stream.
    @ivar encodings: How many events were encoded so far (one per distinct
        filter per batch, or more when a batch is split): what tests and
        benchmarks read to see that N clients do not cost N encodings.
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
    #: Most streams open at once; one more is answered 503. 1,000 is twice
    #: the 500 viewers bench/stream.py measures against ingest, and bounds
    #: what a crowd of viewers can take from the sensors sharing this
    #: reactor: one file descriptor each (sensors need theirs: raise
    #: C{ulimit -n} on a large fleet) and a few C{write}s a second each
    #: (the encoding is shared, writes are coalesced: C{coalesceSeconds}).
    #: Queued events of clients that stop reading are references to shared
    #: bytes, bounded by C{maxPendingBytes} per client.
    maxClients = 1000
    #: The kernel's send buffer for a stream's socket, in bytes (C{SO_SNDBUF};
    #: None leaves the system's autotuning). Left to autotune, loopback grew
    #: it to about 2.6 MB per client that stopped reading: 500 such clients
    #: held 1.3 GB of kernel memory before their queues here filled. 256 KiB
    #: still carries a busy stream (a few hundred KB/s) over a 100 ms path.
    socketSendBuffer: Optional[int] = 256 * 1024
    #: Seconds a refused client is told to wait (C{Retry-After}).
    retryAfterSeconds = 30
    #: Open streams up to which every batch is written at once; above, see
    #: C{coalesceSeconds}. A few viewers get each batch without delay.
    coalesceAbove = 50
    #: With more than C{coalesceAbove} streams open, the longest an event
    #: waits to be written together with the next ones (a dashboard redraws
    #: about this often anyway). 500 viewers written once per batch raised a
    #: sensor's ack p99 tenfold (bench/stream.py).
    coalesceSeconds = 0.1

    def __init__(self, feed: LiveFeed, clock: IReactorTime, registry: Optional[CollectorRegistry] = None) -> None:
        super().__init__()
        self._feed = feed
        self._clock = clock
        self.clients: Set[_StreamClient] = set()
        self._groups: Dict[StreamFilter, Set[_StreamClient]] = {}
        self._unsubscribe: Optional[Callable[[], None]] = None
        self._heartbeat: Optional[LoopingCall] = None
        # Events encoded but not yet written (coalescing), by filter.
        self._outbox: Dict[StreamFilter, List[bytes]] = {}
        self._flushCall: Optional[IDelayedCall] = None
        self.encodings = 0
        self.metrics = StreamMetrics(registry, self) if registry is not None else None

    def render_GET(self, request: Request) -> object:
        args: Dict[bytes, List[bytes]] = request.args or {}
        try:
            streamFilter = parseStreamFilter(args)
        except ParameterError as e:
            return self._refuse(request, 400, {"error": e.message, "parameter": e.parameter})
        if len(self.clients) >= self.maxClients:
            if self.metrics is not None:
                self.metrics.refused.inc()
            request.setHeader(b"retry-after", b"%d" % (self.retryAfterSeconds,))
            return self._refuse(request, 503, {
                "error": f"too many live streams open (at most {self.maxClients}); "
                         f"retry in {self.retryAfterSeconds} s",
            })
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        # Tell buffering reverse proxies (nginx) to pass events on at once.
        request.setHeader(b"x-accel-buffering", b"no")
        self._limitSendBuffer(request)
        client = _StreamClient(self, request, streamFilter)
        request.registerProducer(client, True)
        request.notifyFinish().addBoth(client.connectionClosed)
        self.clients.add(client)
        self._groups.setdefault(streamFilter, set()).add(client)
        client.write(b"retry: %d\n: sensornet live stream\n\n" % (self.retryMillis,))
        if self._unsubscribe is None:
            self._unsubscribe = self._feed.subscribe(self.batchCommitted)
        self._startHeartbeat()
        return NOT_DONE_YET

    def _limitSendBuffer(self, request: Request) -> None:
        """
        Set C{socketSendBuffer} on the stream's socket, where it has one.
        """
        transport = request.channel.transport if request.channel else None
        handle: Any = getattr(transport, "getHandle", lambda: None)()
        if self.socketSendBuffer is None or not hasattr(handle, "setsockopt"):
            return
        try:
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.socketSendBuffer)
        except OSError:
            pass  # Not a socket that has one (a unix socket pair in a test): no limit.

    def _refuse(self, request: Request, code: int, body: Dict[str, Any]) -> bytes:
        data = jsonBytes(body)
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % (len(data),))
        return data

    def encode(self, readings: Sequence[Reading]) -> bytes:
        """
        One event's bytes for C{readings}, counted in C{encodings}; the one
        place events are encoded (a seam for tests).
        """
        self.encodings += 1
        return encodeEvent(readings)

    def batchCommitted(self, readings: Sequence[Reading]) -> None:
        """
        The feed's one listener: per distinct filter, select and encode the
        batch once (split every C{maxEventReadings}), then write the same
        bytes to each of that filter's clients, at once or (many clients)
        at the next flush.
        """
        step = self.maxEventReadings
        # Once a flush is pending, later batches wait for it too: order.
        coalesce = self._flushCall is not None or len(self.clients) > self.coalesceAbove
        for streamFilter, group in list(self._groups.items()):
            chosen = readings if streamFilter.everything else [r for r in readings if streamFilter.matches(r)]
            if not chosen:
                continue
            events = [self.encode(chosen[start:start + step]) for start in range(0, len(chosen), step)]
            if coalesce:
                self._outbox.setdefault(streamFilter, []).extend(events)
                continue
            for client in list(group):
                for event in events:
                    client.write(event)
        if coalesce and self._outbox and self._flushCall is None:
            self._flushCall = self._clock.callLater(self.coalesceSeconds, self._flush)

    def _flush(self) -> None:
        """
        Write what waited: one C{write} per client, of its group's events.
        """
        self._flushCall = None
        outbox, self._outbox = self._outbox, {}
        for streamFilter, events in outbox.items():
            data = b"".join(events)
            for client in list(self._groups.get(streamFilter, ())):
                client.write(data)

    def clientGone(self, client: _StreamClient) -> None:
        """
        Forget C{client}; stop listening to the feed and the heartbeat when
        nobody listens.
        """
        self.clients.discard(client)
        group = self._groups.get(client.filter)
        if group is not None:
            group.discard(client)
            if not group:
                del self._groups[client.filter]
        if not self.clients:
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            self._outbox = {}
            if self._flushCall is not None:
                if self._flushCall.active():
                    self._flushCall.cancel()
                self._flushCall = None
            if self._heartbeat is not None:
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
