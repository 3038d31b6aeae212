"""
Simulated sensors: each produces a reading per tick, keeps it in its outbox
until the server acknowledges it, and sends it over a connection that
reconnects by itself.

Delivery promise: every reading produced is sent until acknowledged (across
reconnects, server restarts and, with a spool, client restarts), unless the
bounded outbox overflows, which drops the oldest and counts it. Every
reading carries a C{seq}, increasing per sensor and starting from the clock
in microseconds (or past the spool's last seq), so a restarted client never
reuses a seq that may already be stored and the server can drop resends.
"""

from __future__ import annotations

import random
from typing import Any, Callable, List, Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from .dialects import MAX_LINE_LENGTH, formatNative
from .outbox import Outbox
from .reading import Reading
from .simulate import Kind, RandomWalk

__all__ = ["SensorClientProtocol", "SimulatedSensor", "parseReply", "Reply", "serverEndpointString"]

#: The server port a bare host name means, as in the seed.
DEFAULT_PORT = 5000

# Client endpoint types whose strings may have no "=" (tls:host:port,
# unix:/path): such a value is an endpoint string, not HOST:PORT.
_ENDPOINT_TYPES = frozenset(["tcp", "tcp6", "tls", "ssl", "unix", "tor"])


def serverEndpointString(server: str) -> str:
    """
    Turn C{--server}'s value into a client endpoint string: C{HOST},
    C{HOST:PORT} and C{[IPv6]:PORT} mean TCP (port 5000 by default);
    anything with a C{=} in it, or starting with an endpoint type
    (C{tcp:}, C{tls:}, C{ssl:}, C{unix:}, ...), is already an endpoint
    string (C{tcp:host=...:port=...}, C{tls:HOST:PORT}, C{unix:/path}).

    @raise ValueError: For an empty value or a port that is not a number.
    """
    server = server.strip()
    if not server:
        raise ValueError("empty server address")
    if "=" in server or server.split(":", 1)[0] in _ENDPOINT_TYPES:
        return server
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif server.count(":") == 1:
        host, _, port = server.partition(":")
    else:
        host, port = server, ""
    if not port:
        port = str(DEFAULT_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a port number: {port!r}")
    host = host.replace(":", "\\:")
    return f"tcp:host={host}:port={port}"


class Reply:
    """
    One server reply line, parsed: C{kind} is C{"ack"}, C{"retry"} (not
    stored this time: send again), C{"rejected"} (refused for good) or
    C{"other"}; C{seq} the seq it names, if any; C{text} the line.
    """

    __slots__ = ("kind", "seq", "text")

    def __init__(self, kind: str, seq: Optional[int], text: str) -> None:
        self.kind = kind
        self.seq = seq
        self.text = text


def parseReply(line: bytes) -> Reply:
    """
    Parse one reply line from a server (see C{docs/protocol.md}). Pure;
    never raises.
    """
    text = line.rstrip(b"\r").decode("utf-8", "replace")
    if text.startswith("ack "):
        try:
            return Reply("ack", int(text[4:]), text)
        except ValueError:
            return Reply("other", None, text)
    if text.startswith("error seq="):
        number, _, message = text[len("error seq="):].partition(":")
        try:
            seq: Optional[int] = int(number)
        except ValueError:
            return Reply("other", None, text)
        message = message.strip()
        if message.startswith("not stored, try again"):
            return Reply("retry", seq, text)
        # "rejected: ..." and malformed-line errors alike: resending the same
        # line would only be refused again.
        return Reply("rejected", seq, text)
    return Reply("other", None, text)


class SensorClientProtocol(LineOnlyReceiver):
    """
    The client end of a sensor connection: writes lines, hands every reply
    line to its sensor.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_LENGTH

    sensor: "SimulatedSensor"
    transport: Any

    def connectionMade(self) -> None:
        self.sensor.connected(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.sensor.disconnected(self)

    def lineReceived(self, line: bytes) -> None:
        self.sensor.replyReceived(parseReply(line))

    def sendLines(self, lines: List[bytes]) -> None:
        """
        Write C{lines} (without newlines) in one write.
        """
        self.transport.write(b"\n".join(lines) + b"\n")


class _SensorFactory(Factory):
    protocol = SensorClientProtocol
    # One factory per sensor, restarted on every reconnect: its start/stop
    # lines would swamp the log of a process simulating thousands.
    noisy = False

    def __init__(self, sensor: "SimulatedSensor") -> None:
        self.sensor = sensor

    def buildProtocol(self, addr: Any) -> SensorClientProtocol:
        protocol = SensorClientProtocol()
        protocol.factory = self
        protocol.sensor = self.sensor
        return protocol


class _NoMetrics:
    """
    Stands in for client metrics when none are exported.
    """

    def __getattr__(self, name: str) -> Any:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self


class SimulatedSensor(MultiService):
    """
    One simulated sensor with its own connection.

    @ivar name: The sensor's name (the C{sensor} tag of its readings).
    @ivar kind: The kind name (C{"temperature"}, ...).
    @ivar interval: Seconds between readings.
    @ivar ackTimeout: Seconds an unacknowledged reading waits before it is
        sent again on the same connection (the server drops the duplicate).
    @ivar deadTimeout: Seconds without an acknowledgement for a sent reading
        after which the connection is presumed dead (a network cut that TCP
        has not noticed) and is dropped, so a new one is made.
    @ivar outbox: The unacknowledged readings.
    """

    _log = Logger()

    def __init__(
        self,
        name: str,
        kindName: str,
        kind: Kind,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        interval: Optional[float] = None,
        rng: Optional[random.Random] = None,
        outbox: Optional[Outbox] = None,
        ackTimeout: float = 10.0,
        deadTimeout: float = 30.0,
        metrics: Any = None,
        retryPolicy: Optional[Callable[[int], float]] = None,
    ) -> None:
        super().__init__()
        self.name: str = name  # type: ignore[assignment]
        self.kind = kindName
        self.unit = kind.unit
        self.clock = clock
        self.interval = kind.interval if interval is None else interval
        self.walk = RandomWalk(kind, rng)
        self.outbox = outbox if outbox is not None else Outbox()
        self.ackTimeout = ackTimeout
        self.deadTimeout = deadTimeout
        self.metrics = metrics if metrics is not None else _NoMetrics()
        self.protocol: Optional[SensorClientProtocol] = None
        self.connections = 0
        self._lastHeard = 0.0
        self._watchdog: Optional[Any] = None
        start = int(clock.seconds() * 1_000_000)
        last = self.outbox.lastSeq()
        self.nextSeq = max(start, last + 1) if last is not None else start
        self.firstSeq = self.nextSeq
        self.loop = LoopingCall(self.tick)
        self.loop.clock = clock
        self.connector = ClientService(
            endpoint,
            _SensorFactory(self),
            retryPolicy=retryPolicy or backoffPolicy(initialDelay=0.2, maxDelay=5.0),
            clock=clock,
        )
        self.connector.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self.loop.start(self.interval, now=True)

    def stopService(self) -> Any:
        if self.loop.running:
            self.loop.stop()
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        close = getattr(self.outbox, "close", None)
        d = super().stopService()
        if close is not None:
            d.addBoth(lambda result: (close(), result)[1])
        return d

    @property
    def produced(self) -> int:
        """
        How many readings this sensor has produced since it was made.
        """
        return self.nextSeq - self.firstSeq

    # -- producing -------------------------------------------------------

    def tick(self) -> None:
        """
        Produce one reading, keep it, and send what is due.
        """
        now = self.clock.seconds()
        seq = self.nextSeq
        self.nextSeq += 1
        reading = Reading(self.name, self.kind, self.walk.next(), self.unit, now, seq)
        dropped = self.outbox.add(seq, formatNative(reading))
        if dropped:
            self.metrics.readingsDropped.inc(len(dropped))
            self._log.warn(
                "{sensor}: outbox full ({size}); dropped {n} oldest reading(s)",
                sensor=self.name, size=self.outbox.maxSize, n=len(dropped),
            )
        self.sendDue()

    def sendDue(self) -> None:
        """
        Send every reading due on the current connection (see
        L{Outbox.due}); drop a connection that has stopped acknowledging.
        """
        protocol = self.protocol
        if protocol is None:
            return
        now = self.clock.seconds()
        silence = now - self._lastHeard
        if silence > self.deadTimeout and self.outbox.oldestSentAt() is not None:
            self._log.warn(
                "{sensor}: no reply for {s:.0f} s with readings outstanding; reconnecting",
                sensor=self.name, s=silence,
            )
            protocol.transport.abortConnection()
            return
        lines, resent = self.outbox.takeDue(now, self.ackTimeout)
        if len(self.outbox):
            self._armWatchdog()
        if not lines:
            return
        protocol.sendLines(lines)
        self.metrics.readingsSent.inc(len(lines))
        if resent:
            self.metrics.resends.inc(resent)

    def _armWatchdog(self) -> None:
        """
        Make sure L{sendDue} runs again within C{ackTimeout} while readings
        wait for their acks, whatever the tick interval (and after the loop
        stopped): resends and dead-connection checks must not wait for the
        next reading. One timer per sensor, only while something is owed.
        """
        if self._watchdog is None or not self._watchdog.active():
            self._watchdog = self.clock.callLater(self.ackTimeout, self._watchdogFired)

    def _watchdogFired(self) -> None:
        self._watchdog = None
        if len(self.outbox):
            self.sendDue()

    # -- connection events --------------------------------------------------

    def connected(self, protocol: SensorClientProtocol) -> None:
        self.protocol = protocol
        self._lastHeard = self.clock.seconds()
        self.connections += 1
        if self.connections > 1:
            self.metrics.reconnects.inc()
        self._log.info(
            "{sensor}: connected to {peer}; {n} reading(s) waiting",
            sensor=self.name, peer=protocol.transport.getPeer(), n=len(self.outbox),
        )
        self.sendDue()

    def disconnected(self, protocol: SensorClientProtocol) -> None:
        if self.protocol is protocol:
            self.protocol = None
            self.outbox.markUnsent()
            self._log.info(
                "{sensor}: disconnected; {n} reading(s) wait for the next connection",
                sensor=self.name, n=len(self.outbox),
            )

    def replyReceived(self, reply: Reply) -> None:
        self._lastHeard = self.clock.seconds()
        if reply.kind == "ack" and reply.seq is not None:
            if self.outbox.acknowledge(reply.seq):
                self.metrics.acksReceived.inc()
        elif reply.kind == "retry" and reply.seq is not None:
            # Made due again: it goes out with the next tick's send.
            self.outbox.retry(reply.seq)
        elif reply.kind == "rejected" and reply.seq is not None:
            if self.outbox.acknowledge(reply.seq):
                self.metrics.readingsDropped.inc()
                self._log.error("{sensor}: server rejected a reading: {text}", sensor=self.name, text=reply.text)
        else:
            self._log.warn("{sensor}: server said: {text}", sensor=self.name, text=reply.text)
