"""
The server side of the sensor wire protocol (see C{docs/protocol.md}).

L{SensorProtocol} turns bytes into lines, lines into readings (through the
pure L{sensornet.dialects.parseLine}), hands each chunk's readings to the
factory's sink in one call, and writes the chunk's replies in one write once
the sink says they are stored. Everything on this path is done per chunk, not
per line: one sink call, one log event, one metrics update, one write.

Replies on a connection go out in the order of the lines that caused them,
even though acknowledgements wait for a commit and error replies do not.
"""

from __future__ import annotations

from typing import Any, Collection, Dict, List, Optional, Protocol as TypingProtocol, Set, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from .dialects import MAX_LINE_LENGTH, parseLine
from .metrics import ServerMetrics
from .reading import LineError, Reading

__all__ = ["SEED_REPLY", "ReadingSink", "ImmediateSink", "SensorProtocol", "SensorServerFactory", "formatPeer"]

#: The seed server's reply to every message, byte for byte.
SEED_REPLY = "Dados recebidos com sucesso.\n".encode("utf-8")


class ReadingSink(TypingProtocol):
    """
    Where a server puts the readings it parsed.

    C{submit} fires once every reading of the call is durably stored (or was
    already stored), with C{{index: reason}} for readings the sink refuses
    for good; it errs back when none of them could be stored this time (the
    sender should resend). It never raises.
    """

    def submit(self, readings: List[Reading]) -> "Deferred[Dict[int, str]]": ...


class ImmediateSink:
    """
    A sink that stores nothing and acknowledges at once (C{--store none}):
    for trying the wire protocol and for measuring what durability costs.
    """

    def submit(self, readings: List[Reading]) -> "Deferred[Dict[int, str]]":
        return succeed({})


def formatPeer(address: IAddress) -> str:
    """
    Render a connection's remote address as C{host:port} (C{[v6]:port} for
    IPv6), or the best text available for other address types.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        if ":" in host:
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    name = getattr(address, "name", None)
    if name:
        return "unix:" + (name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name))
    return str(address)


def _errorLine(error: LineError) -> bytes:
    if error.seq is not None:
        text = f"error seq={error.seq}: {error.message}\n"
    else:
        text = f"error: {error.message}\n"
    return text.encode("utf-8", "replace")


def _ackLine(reading: Reading) -> bytes:
    if reading.dialect == "seed":
        return SEED_REPLY
    if reading.seq is not None:
        return b"ack %d\n" % (reading.seq,)
    return b""


def _notStoredLine(reading: Reading, why: str) -> bytes:
    if reading.seq is not None:
        return f"error seq={reading.seq}: {why}\n".encode("utf-8", "replace")
    return f"error: {why}\n".encode("utf-8", "replace")


class _Chunk:
    """
    The replies owed for one chunk of lines, in line order: C{slots} holds
    finished reply bytes, or an C{int} index into C{readings} whose reply
    depends on how storing went. C{done} turns true when it can be written.
    """

    __slots__ = ("slots", "readings", "received", "done", "replies")

    def __init__(self, received: float) -> None:
        self.slots: List[Any] = []
        self.readings: List[Reading] = []
        self.received = received
        self.done = False
        self.replies = b""


@implementer(IPushProducer)
class SensorProtocol(LineOnlyReceiver):
    """
    One sensor connection.

    @cvar delimiter: Lines end with C{\\n}; a C{\\r} before it is dropped by
        the parser.
    @cvar MAX_LENGTH: The longest line accepted, in bytes; a longer one gets
        an error reply and closes this connection (and only this one), after
        the replies owed for earlier lines.
    @cvar maxPending: How many of this connection's readings may wait for
        their commit before the server stops reading from it; this is what
        bounds the memory one connection can take.
    @cvar seedIdleGap: Seconds an unterminated partial line must stay idle
        before it is taken as a complete seed-text message (the seed's client
        sends no newline and waits for the reply).
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_LENGTH
    maxPending = 20_000
    seedIdleGap = 0.2

    factory: "SensorServerFactory"
    # A TCP/TLS/UNIX transport: a consumer we register with and a producer we
    # pause (Protocol types it as the narrower Optional[ITransport]).
    transport: Any

    _log = Logger()

    def __init__(self) -> None:
        self.peer = ""
        self.sensors: Set[str] = set()
        self._queue: List[_Chunk] = []
        self._pending = 0
        self._pauses: Set[str] = set()
        self._idleCall: Optional[IDelayedCall] = None
        self._closing = False
        self._closed = False
        self._closeWaiters: List["Deferred[None]"] = []

    # -- connection events --------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = formatPeer(self.transport.getPeer())
        # Register as the transport's producer so a client that does not read
        # its replies (a full send buffer) stops us reading from it.
        self.transport.registerProducer(self, True)
        self.factory.connectionOpened(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closed = True
        self._cancelIdle()
        self.factory.connectionClosed(self)
        waiters, self._closeWaiters = self._closeWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    @property
    def closed(self) -> bool:
        """
        Whether the connection is gone.
        """
        return self._closed

    def whenClosed(self) -> "Deferred[None]":
        """
        A Deferred that fires once the connection is lost (at once if it is).
        """
        if self._closed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closeWaiters.append(waiter)
        return waiter

    def closeWhenAnswered(self) -> None:
        """
        Close the connection after the replies already written are sent:
        what the server does to each connection when it stops.
        """
        if not self._closed:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    # -- IPushProducer, driven by the transport's send buffer ---------------

    def pauseProducing(self) -> None:
        self.pauseReading("send buffer full")

    def resumeProducing(self) -> None:
        self.resumeReading("send buffer full")

    def stopProducing(self) -> None:
        pass

    def pauseReading(self, reason: str) -> None:
        """
        Stop reading from this connection until every reason given here has
        been withdrawn with L{resumeReading}.
        """
        if not self._pauses and not self._closed:
            self.transport.pauseProducing()
            self.factory.readingPaused(self, True)
        self._pauses.add(reason)

    def resumeReading(self, reason: str) -> None:
        """
        Withdraw one reason for L{pauseReading}; reading resumes when none is
        left (and the connection is not closing).
        """
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and not self._closed:
            self.factory.readingPaused(self, False)
            if not self._closing:
                self.transport.resumeProducing()

    # -- input -------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._idleCall is not None:
            self._cancelIdle()
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        limit = self.MAX_LENGTH
        tooLong = len(self._buffer) > limit
        # One pass in C finds whether any line is too long; only then is the
        # first such line looked for, and the lines from it on dropped.
        if lines and max(map(len, lines)) > limit:
            for index, line in enumerate(lines):
                if len(line) > limit:
                    del lines[index:]
                    tooLong = True
                    break
        if lines:
            self.linesReceived(lines)
        if tooLong:
            self._buffer = b""
            self.lineLengthExceeded(b"")
        elif self._buffer:
            self._idleCall = self.factory.clock.callLater(self.seedIdleGap, self._idleTimedOut)

    def lineReceived(self, line: bytes) -> None:
        """
        One line (as L{LineOnlyReceiver} would deliver it): handled like a
        chunk of one.
        """
        self.linesReceived([line])

    def linesReceived(self, lines: List[bytes]) -> None:
        """
        Handle the complete lines of one chunk: parse each, submit the
        readings in one call, and queue the replies in line order.
        """
        factory = self.factory
        now = factory.clock.seconds()
        chunk = _Chunk(now)
        readings = chunk.readings
        errors: List[LineError] = []
        # Error replies with the number of readings before them: the slots
        # are laid out after the loop, so that a chunk of readings only (the
        # common case) costs no per-line bookkeeping for them.
        errorReplies: List[Tuple[int, bytes]] = []
        sensors = self.sensors
        peer = self.peer
        # A local name: this loop runs once per line, at hundreds of
        # thousands of lines per second.
        addReading = readings.append
        for line in lines:
            result = parseLine(line)
            if type(result) is Reading:
                result.peer = peer
                result.received_at = now
                if result.sensor not in sensors:
                    sensors.add(result.sensor)
                    factory.sensorConnected(result.sensor)
                addReading(result)
            elif result.message != "empty line":  # type: ignore[union-attr]
                errors.append(result)  # type: ignore[arg-type]
                errorReplies.append((len(readings), _errorLine(result)))  # type: ignore[arg-type]
        slots = chunk.slots
        start = 0
        for before, reply in errorReplies:
            slots.extend(range(start, before))
            slots.append(reply)
            start = before
        slots.extend(range(start, len(readings)))
        factory.linesParsed(self, lines, readings, errors)
        if not slots:
            return
        self._queue.append(chunk)
        if not readings:
            chunk.replies = b"".join(slots)
            chunk.done = True
            self._flush()
            return
        self._pending += len(readings)
        if self._pending > self.maxPending:
            self.pauseReading("too many readings awaiting commit")
        factory.sink.submit(readings).addCallbacks(
            self._stored, self._notStored, callbackArgs=(chunk,), errbackArgs=(chunk,)
        )

    def _stored(self, rejected: Dict[int, str], chunk: _Chunk) -> None:
        readings = chunk.readings
        slots = chunk.slots
        if not rejected and len(slots) == len(readings):
            # Every line of the chunk was a reading and all are stored: the
            # usual chunk. When each is a native reading with a seq, its
            # replies are one format operation instead of one per line.
            seqs = [reading.seq if reading.dialect == "native" else None for reading in readings]
            if None not in seqs:
                self._settle(chunk, (b"ack %d\n" * len(seqs)) % tuple(seqs))
                return
        replies = []
        for slot in slots:
            if type(slot) is int:
                if rejected and slot in rejected:
                    replies.append(_notStoredLine(readings[slot], "rejected: " + rejected[slot]))
                else:
                    replies.append(_ackLine(readings[slot]))
            else:
                replies.append(slot)
        self._settle(chunk, b"".join(replies))

    def _notStored(self, failure: Failure, chunk: _Chunk) -> None:
        why = "not stored, try again: " + (str(failure.value) or failure.type.__name__).replace("\n", " ")
        replies = []
        readings = chunk.readings
        unnamed = 0
        for slot in chunk.slots:
            if type(slot) is int:
                reading = readings[slot]
                if reading.seq is None and reading.dialect != "seed":
                    unnamed += 1
                else:
                    replies.append(_notStoredLine(reading, why))
            else:
                replies.append(slot)
        if unnamed:
            replies.append(f"error: {unnamed} readings {why}\n".encode("utf-8", "replace"))
        self._settle(chunk, b"".join(replies))

    def _settle(self, chunk: _Chunk, replies: bytes) -> None:
        chunk.replies = replies
        chunk.done = True
        self._pending -= len(chunk.readings)
        if self._pending <= self.maxPending:
            self.resumeReading("too many readings awaiting commit")
        self._flush()

    def _flush(self) -> None:
        """
        Write the replies of every finished chunk at the head of the queue,
        in one write; a finished chunk behind an unfinished one waits.
        """
        queue = self._queue
        ready = 0
        while ready < len(queue) and queue[ready].done:
            ready += 1
        if not ready:
            return
        finished = queue[:ready]
        del queue[:ready]
        if self._closed:
            return
        data = b"".join([chunk.replies for chunk in finished])
        if data:
            self.transport.write(data)
        self.factory.repliesSent(finished)
        if self._closing and not queue:
            self._close()

    def _idleTimedOut(self) -> None:
        self._idleCall = None
        partial = self._buffer
        result = parseLine(partial)
        if type(result) is Reading and result.dialect == "seed":
            self._buffer = b""
            self.linesReceived([partial])

    def _cancelIdle(self) -> None:
        if self._idleCall is not None:
            if self._idleCall.active():
                self._idleCall.cancel()
            self._idleCall = None

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A line over L{MAX_LENGTH}: stop reading, answer what came before, then
        say why and close this connection.
        """
        self.factory.lineTooLong(self)
        self._closing = True
        self._cancelIdle()
        self.transport.pauseProducing()
        if not self._queue:
            self._close()

    def _close(self) -> None:
        self.transport.write(
            f"error: line longer than {self.MAX_LENGTH} bytes; closing the connection\n".encode("ascii")
        )
        self.transport.unregisterProducer()
        self.transport.loseConnection()


class SensorServerFactory(Factory):
    """
    Builds a L{SensorProtocol} per connection and holds what they share: the
    sink, the clock, the metrics, the set of open connections and which
    sensors are connected.

    @ivar sink: Where readings go (a L{ReadingSink}).
    @ivar clock: The time source (the reactor, or a C{task.Clock} in tests).
    @ivar logReadings: Log each received reading. Chunks received within
        L{readingLogInterval} seconds share one log event (in their order),
        so thousands of sensors sending one reading each cost a few log
        events per second, not one per reading (measured here, a one-line
        chunk with the reading log on: 40 us with an event per chunk, 16 us
        coalesced).
    @cvar readingLogInterval: Seconds reading log lines may wait to be
        logged together. Connection events and stopping flush them first,
        so the log keeps the order of events.
    """

    readingLogInterval = 0.1

    protocol = SensorProtocol  # type: ignore[assignment]

    _log = Logger()

    def __init__(
        self,
        sink: ReadingSink,
        clock: IReactorTime,
        metrics: Optional[ServerMetrics] = None,
        logReadings: bool = True,
    ) -> None:
        self.sink = sink
        self.clock = clock
        self.metrics = metrics if metrics is not None else ServerMetrics()
        self.logReadings = logReadings
        self.protocols: Set[SensorProtocol] = set()
        self.paused: Set[SensorProtocol] = set()
        self._sensorConnections: Dict[str, int] = {}
        self._writerOverloaded = False
        self._readingLog: List[_ChunkText] = []
        self._readingLogCall: Optional[IDelayedCall] = None
        self._received = {dialect: child for dialect, child in self._children(self.metrics.readingsReceived)}
        self._rejected = {dialect: child for dialect, child in self._children(self.metrics.linesRejected)}

    @staticmethod
    def _children(counter: Any) -> List[Any]:
        from .reading import DIALECTS

        return [(dialect, counter.labels(dialect)) for dialect in DIALECTS + ("unknown",)]

    # -- called by protocols ----------------------------------------------

    def connectionOpened(self, protocol: SensorProtocol) -> None:
        self.protocols.add(protocol)
        self.metrics.connections.inc()
        self.metrics.connectionsOpen.inc()
        self.flushReadingLog()
        self._log.info("New connection from {peer}", peer=protocol.peer)
        if self._writerOverloaded:
            protocol.pauseReading("store writer overloaded")

    def connectionClosed(self, protocol: SensorProtocol) -> None:
        self.protocols.discard(protocol)
        if protocol in self.paused:
            self.paused.discard(protocol)
            self.metrics.transportsPaused.set(len(self.paused))
        self.metrics.connectionsOpen.dec()
        for sensor in protocol.sensors:
            count = self._sensorConnections.get(sensor, 0) - 1
            if count > 0:
                self._sensorConnections[sensor] = count
            else:
                self._sensorConnections.pop(sensor, None)
        self.flushReadingLog()
        self._log.info("Connection from {peer} closed", peer=protocol.peer)

    def sensorConnected(self, sensor: str) -> None:
        self._sensorConnections[sensor] = self._sensorConnections.get(sensor, 0) + 1

    def connectedSensors(self) -> Collection[str]:
        """
        The names of the sensors that have sent a reading on a connection that
        is still open.
        """
        return self._sensorConnections.keys()

    def readingPaused(self, protocol: SensorProtocol, paused: bool) -> None:
        if paused:
            self.paused.add(protocol)
        else:
            self.paused.discard(protocol)
        self.metrics.transportsPaused.set(len(self.paused))

    def linesParsed(
        self, protocol: SensorProtocol, lines: List[bytes], readings: List[Reading], errors: List[LineError]
    ) -> None:
        """
        Count and log one chunk: one metrics update per dialect present and
        one log event for the chunk's readings, however many lines it held.
        """
        if readings:
            if len(readings) == 1:
                self._received[readings[0].dialect].inc()
            else:
                counts: Dict[str, int] = {}
                for reading in readings:
                    counts[reading.dialect] = counts.get(reading.dialect, 0) + 1
                for dialect, count in counts.items():
                    self._received[dialect].inc(count)
            if self.logReadings:
                self._readingLog.append(_ChunkText(protocol.peer, lines))
                if self._readingLogCall is None:
                    self._readingLogCall = self.clock.callLater(self.readingLogInterval, self.flushReadingLog)
        if errors:
            for error in errors:
                self._rejected.get(error.dialect, self._rejected["unknown"]).inc()
            # One event per chunk, not per line: a flood of junk must not cost
            # a log write per line.
            self._log.warn(
                "Rejected {count} line(s) from {peer}: {message}",
                count=len(errors),
                peer=protocol.peer,
                message=errors[0].message,
            )

    def flushReadingLog(self) -> None:
        """
        Log the reading lines waiting to be logged, as one event.
        """
        call, self._readingLogCall = self._readingLogCall, None
        if call is not None and call.active():
            call.cancel()
        if self._readingLog:
            chunks, self._readingLog = self._readingLog, []
            self._log.info("{text}", text=_LogText(chunks), chunks=len(chunks))

    def stopFactory(self) -> None:
        self.flushReadingLog()

    def repliesSent(self, chunks: List[_Chunk]) -> None:
        now = self.clock.seconds()
        observe = self.metrics.ackLatency.observe
        for chunk in chunks:
            if chunk.readings:
                observe(now - chunk.received)

    def lineTooLong(self, protocol: SensorProtocol) -> None:
        self.metrics.linesOversized.inc()
        self._log.warn(
            "Closing connection from {peer}: line longer than {max} bytes",
            peer=protocol.peer,
            max=protocol.MAX_LENGTH,
        )

    # -- called by the store writer (pressure observer) -------------------

    def writerOverloaded(self) -> None:
        """
        The store writer's backlog crossed its high-water mark: stop reading
        from every connection until it drains.
        """
        self._writerOverloaded = True
        self._log.warn("Store writer overloaded: pausing {n} connections", n=len(self.protocols))
        for protocol in list(self.protocols):
            protocol.pauseReading("store writer overloaded")

    def writerRecovered(self) -> None:
        """
        The backlog fell below the low-water mark: read again.
        """
        self._writerOverloaded = False
        self._log.info("Store writer caught up: resuming {n} connections", n=len(self.protocols))
        for protocol in list(self.protocols):
            protocol.resumeReading("store writer overloaded")


class _ChunkText:
    """
    The text of one chunk's log event, rendered only if an observer formats
    it (so a disabled or filtered log costs nothing): one line per received
    line, in the seed's C{Received from PEER: MESSAGE} shape.
    """

    __slots__ = ("peer", "lines")

    def __init__(self, peer: str, lines: List[bytes]) -> None:
        self.peer = peer
        self.lines = lines

    def __str__(self) -> str:
        prefix = f"Received from {self.peer}: "
        return "\n".join(
            prefix + line.rstrip(b"\r").decode("utf-8", "replace") for line in self.lines if line.strip()
        )

    __repr__ = __str__


class _LogText:
    """
    The text of one reading-log event: the lines of several chunks, in the
    order they were received, rendered only when an observer formats it.
    """

    __slots__ = ("chunks",)

    def __init__(self, chunks: List[_ChunkText]) -> None:
        self.chunks = chunks

    def __str__(self) -> str:
        return "\n".join(filter(None, map(str, self.chunks)))

    __repr__ = __str__

