"""
The client role: simulated sensors, and L{SensorClientService}, which runs
the sensors a L{ClientConfig} describes. Each sensor produces a reading per
tick, keeps it in its outbox until the server acknowledges it, and sends it
over a connection that reconnects by itself.

Delivery promise: every reading produced is sent until acknowledged (across
reconnects, server restarts and, with a spool, client restarts), unless the
bounded outbox overflows, which drops the oldest and counts it. Every
reading carries a C{seq}, increasing per sensor and starting from the clock
in microseconds (or past the spool's last seq), so a restarted client never
reuses a seq that may already be stored and the server can drop resends.

Authentication: with a token (L{ClientConfig.tokenFile}) each connection
starts with C{auth TOKEN} and sends readings only after C{ok auth NAME}; a
refusal (C{error auth: refused}) is fatal for that sensor: logged once,
clearly, and no reconnect follows (a wrong token stays wrong, and retrying
would only spend the address's tries at the server). With a certificate
(L{ClientConfig.tlsCertificate}) the connection is TLS and the certificate
names the sensor.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, List, Optional

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from .clientmetrics import ClientMetrics, makeClientMetricsSite
from .dialects import MAX_LINE_LENGTH, formatNative
from .listening import ListeningService
from .outbox import DEFAULT_OUTBOX_SIZE, Outbox, SpoolOutbox
from .reading import Reading
from .simulate import KINDS, Kind, RandomWalk
from .wire import ACK_PREFIX, AUTH_COMMAND, AUTH_OK_PREFIX, AUTH_REFUSED, ERROR_SEQ_PREFIX, NOT_STORED, REJECTED

__all__ = [
    "ClientConfig",
    "SensorClientService",
    "SensorClientProtocol",
    "SimulatedSensor",
    "parseReply",
    "Reply",
    "ReplyKind",
    "serverEndpointString",
    "readTokenFile",
    "DEFAULT_SERVER",
]

#: The server port a bare host name means, as in the seed.
DEFAULT_PORT = 5000

#: Where a client sends its readings unless told otherwise (C{--server}).
DEFAULT_SERVER = f"localhost:{DEFAULT_PORT}"

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


def readTokenFile(path: str) -> str:
    """
    The token in the file at C{path}: its text without surrounding
    whitespace (a trailing newline is usual).

    @raise ValueError: The file is empty or holds more than one word (the
        message never shows the file's content).
    @raise OSError: The file cannot be read.
    """
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if not token or len(token.split()) != 1:
        raise ValueError(f"{path} must hold one token (one word, no spaces)")
    return token


@dataclass
class ClientConfig:
    """
    Everything a client process is told at start, as parsed from its options
    (the client's L{sensornet.server.ServerConfig}).

    @ivar kind: What its sensors measure: a key of L{KINDS}
        (C{"temperature"}, C{"humidity"}).
    @ivar sensor: The sensor's name; with C{sensors > 1}, the prefix of
        C{NAME-1} .. C{NAME-N} (see L{sensorNames}).
    @ivar endpoint: Client endpoint string of the server
        (C{tcp:host=H:port=P}, C{tls:H:P}, C{unix:/path}).
    @ivar interval: Seconds between readings, or L{None} for the kind's own
        (temperature 2, humidity 3).
    @ivar sensors: How many sensors, each on its own connection (at least 1).
    @ivar seed: Seed of the simulated values, or L{None} for unseeded; sensor
        number C{i} (from 0) draws from C{random.Random(seed * 1000003 + i)}.
    @ivar outboxSize: Most unacknowledged readings kept per sensor.
    @ivar spool: SQLite file keeping the outboxes on disk, or L{None}.
    @ivar ackTimeout: Seconds before an unacknowledged reading is sent again.
    @ivar deadTimeout: Seconds of silence, with readings outstanding, after
        which a connection is presumed dead and replaced.
    @ivar metrics: Server endpoint string to serve the client's Prometheus
        metrics on, or L{None} to export none.
    @ivar tokenFile: File holding the token every connection authenticates
        with (C{auth TOKEN}), or L{None}: no C{auth} line (anonymous, or a
        client certificate). With C{sensors > 1} the token must be a
        gateway's granted every name.
    @ivar tlsCertificate: PEM file of the client certificate (whose CN names
        the sensor) for a TLS connection, or L{None}.
    @ivar tlsKey: PEM file of its private key (default: C{tlsCertificate}).
    @ivar tlsCA: PEM file of the CA(s) the server's certificate must chain
        to; given alone (no certificate), a TLS connection without a client
        certificate. L{None} with neither: the connection is as
        C{endpoint} says.
    """

    kind: str
    sensor: str
    endpoint: str = serverEndpointString(DEFAULT_SERVER)
    interval: Optional[float] = None
    sensors: int = 1
    seed: Optional[int] = None
    outboxSize: int = DEFAULT_OUTBOX_SIZE
    spool: Optional[str] = None
    ackTimeout: float = 10.0
    deadTimeout: float = 30.0
    metrics: Optional[str] = None
    tokenFile: Optional[str] = None
    tlsCertificate: Optional[str] = None
    tlsKey: Optional[str] = None
    tlsCA: Optional[str] = None

    def sensorNames(self) -> List[str]:
        """
        The names of the sensors, in order: C{sensor} alone, or C{sensor-1}
        .. C{sensor-N}.
        """
        if self.sensors == 1:
            return [self.sensor]
        return [f"{self.sensor}-{index + 1}" for index in range(self.sensors)]


class ReplyKind(Enum):
    """
    What a server reply means to the sensor that sent the line. (An
    C{Enum} rather than C{constantly}: mypy then checks every use, and it
    needs no dependency the package does not declare.)
    """

    #: Stored (or already stored): forget the reading.
    ack = "ack"
    #: Not stored this time: send the reading again.
    retry = "retry"
    #: Refused for good: resending the same line would be refused again.
    rejected = "rejected"
    #: Anything else (a seed reply, a line this client cannot read).
    other = "other"


class Reply:
    """
    One server reply line, parsed: C{kind} is a L{ReplyKind}; C{seq} the seq
    it names, if any; C{text} the line.
    """

    __slots__ = ("kind", "seq", "text")

    def __init__(self, kind: ReplyKind, seq: Optional[int], text: str) -> None:
        self.kind = kind
        self.seq = seq
        self.text = text


def parseReply(line: bytes) -> Reply:
    """
    Parse one reply line from a server (see C{docs/protocol.md}, "Replies",
    and L{sensornet.wire}, whose texts it matches). Pure; never raises.
    """
    text = line.rstrip(b"\r").decode("utf-8", "replace")
    if text.startswith(ACK_PREFIX):
        try:
            return Reply(ReplyKind.ack, int(text[len(ACK_PREFIX):]), text)
        except ValueError:
            return Reply(ReplyKind.other, None, text)
    if text.startswith(ERROR_SEQ_PREFIX):
        number, _, message = text[len(ERROR_SEQ_PREFIX):].partition(":")
        try:
            seq: Optional[int] = int(number)
        except ValueError:
            return Reply(ReplyKind.other, None, text)
        message = message.strip()
        if message.startswith(NOT_STORED):
            return Reply(ReplyKind.retry, seq, text)
        if message.startswith(REJECTED):
            return Reply(ReplyKind.rejected, seq, text)
        # A malformed-line error: the same line sent again would be refused
        # again, so it counts as rejected too.
        return Reply(ReplyKind.rejected, seq, text)
    return Reply(ReplyKind.other, None, text)


_AUTH_OK = AUTH_OK_PREFIX.encode("ascii")
_AUTH_REFUSED = AUTH_REFUSED.rstrip(b"\n")


class SensorClientProtocol(LineOnlyReceiver):
    """
    The client end of a sensor connection: writes lines, hands every reply
    line to its sensor.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_LENGTH

    sensor: "SimulatedSensor"
    # For abortConnection, which ITCPTransport declares; the tls: and unix:
    # transports have it too.
    transport: ITCPTransport
    # Whether the auth line was sent and its answer has not come yet.
    _authenticating = False

    def connectionMade(self) -> None:
        token = self.sensor.token
        if token is None:
            self.sensor.connected(self)
            return
        # Readings wait for "ok auth": sent before it, a refusal would be
        # the only reply to all of them.
        self._authenticating = True
        self.transport.write(f"{AUTH_COMMAND} {token}\n".encode("utf-8"))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.sensor.disconnected(self)

    def lineReceived(self, line: bytes) -> None:
        if self._authenticating:
            text = line.rstrip(b"\r")
            if text.startswith(_AUTH_OK):
                self._authenticating = False
                self.sensor.connected(self)
                return
            if text == _AUTH_REFUSED:
                self._authenticating = False
                self.sensor.authenticationRefused(self)
                return
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

    def buildProtocol(self, addr: Optional[IAddress]) -> SensorClientProtocol:
        protocol = SensorClientProtocol()
        protocol.factory = self
        protocol.sensor = self.sensor
        return protocol


class SimulatedSensor(MultiService):
    """
    One simulated sensor with its own connection.

    @ivar name: The sensor's name (the C{sensor} tag of its readings).
    @ivar kindName: What it measures, as its readings name it (C{"temperature"},
        a key of L{KINDS}).
    @ivar kind: How its values behave (unit, range, step): a L{Kind}.
    @ivar interval: Seconds between readings.
    @ivar ackTimeout: Seconds an unacknowledged reading waits before it is
        sent again on the same connection (the server drops the duplicate).
    @ivar deadTimeout: Seconds without an acknowledgement for a sent reading
        after which the connection is presumed dead (a network cut that TCP
        has not noticed) and is dropped, so a new one is made.
    @ivar outbox: The unacknowledged readings.
    @ivar metrics: The L{ClientMetrics} it counts into: shared by every sensor
        of a L{SensorClientService}; a private, unexported set when none is
        given.
    @ivar token: The token each connection authenticates with, or L{None}.
    @ivar refused: Whether the server refused the credential: the sensor
        then stops (no reconnect, no more readings).
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
        metrics: Optional[ClientMetrics] = None,
        retryPolicy: Optional[Callable[[int], float]] = None,
        token: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.token = token
        self.refused = False
        self.name: str = name  # type: ignore[assignment]
        self.kindName = kindName
        self.kind = kind
        self.unit = kind.unit
        self.clock = clock
        self.interval = kind.interval if interval is None else interval
        self.walk = RandomWalk(kind, rng)
        self.outbox = outbox if outbox is not None else Outbox()
        self.ackTimeout = ackTimeout
        self.deadTimeout = deadTimeout
        self.metrics = metrics if metrics is not None else ClientMetrics()
        self.protocol: Optional[SensorClientProtocol] = None
        self.connections = 0
        self._lastHeard = 0.0
        self._watchdog: Optional[IDelayedCall] = None
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

    def stopService(self) -> "Deferred[None]":
        if self.loop.running:
            self.loop.stop()
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        d: "Deferred[None]" = super().stopService()
        outbox = self.outbox

        def close(result: Any) -> Any:
            outbox.close()
            return result

        return d.addBoth(close)

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
        reading = Reading(self.name, self.kindName, self.walk.next(), self.unit, now, seq)
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

    def authenticationRefused(self, protocol: SensorClientProtocol) -> None:
        """
        The server answered the C{auth} line with C{error auth: refused}:
        the token is unknown, revoked or rotated away. Fatal for this
        sensor: say so once, stop producing and stop reconnecting.
        """
        self.refused = True
        self._log.critical(
            "{sensor}: the server {peer} refused this sensor's credential (error auth: refused); "
            "not reconnecting. Check the token file and the sensor's registration "
            "(sensornet sensors list / rotate).",
            sensor=self.name, peer=protocol.transport.getPeer(),
        )
        if self.loop.running:
            self.loop.stop()
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        # Stops the reconnects and closes this connection.
        self.connector.stopService()

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
        if reply.kind is ReplyKind.ack and reply.seq is not None:
            if self.outbox.acknowledge(reply.seq):
                self.metrics.acksReceived.inc()
        elif reply.kind is ReplyKind.retry and reply.seq is not None:
            # Made due again: it goes out with the next tick's send.
            self.outbox.retry(reply.seq)
        elif reply.kind is ReplyKind.rejected and reply.seq is not None:
            if self.outbox.acknowledge(reply.seq):
                self.metrics.readingsDropped.inc()
                self._log.error("{sensor}: server rejected a reading: {text}", sensor=self.name, text=reply.text)
        else:
            self._log.warn("{sensor}: server said: {text}", sensor=self.name, text=reply.text)


class SensorClientService(MultiService):
    """
    A whole client process: the sensors a L{ClientConfig} describes, each
    on its own connection, and their metrics, summed over the sensors
    (served on C{config.metrics} when one is given).

    @ivar config: What it was built from.
    @ivar sensors: Its L{SimulatedSensor}s, in the order of
        L{ClientConfig.sensorNames}; also its child services.
    @ivar metrics: The L{ClientMetrics} every sensor counts into.
    @ivar metricsListener: The service serving C{/metrics}, or L{None}
        without C{config.metrics}.
    """

    def __init__(self, config: ClientConfig, reactor: IReactorTime) -> None:
        """
        @param reactor: The reactor the sensors run on: its clock, and
            whatever the endpoint strings need (L{IReactorTCP} for C{tcp:},
            L{IReactorSSL} for C{tls:}, ...).

        @raise ValueError: For a C{config.kind} that is not in L{KINDS}.
        """
        super().__init__()
        if config.kind not in KINDS:
            raise ValueError(f"unknown kind {config.kind!r}: expected one of " + ", ".join(sorted(KINDS)))
        self.config = config
        # Read at start (see startService): a demo writes the file just then.
        self.token: Optional[str] = None
        self.metrics = ClientMetrics()
        self.metricsListener: Optional[ListeningService] = None
        if config.metrics is not None:
            self.metricsListener = ListeningService(
                serverFromString(reactor, config.metrics), makeClientMetricsSite(self.metrics)
            )
            self.metricsListener.setServiceParent(self)
        self.sensors: List[SimulatedSensor] = [
            self._makeSensor(index, name, reactor) for index, name in enumerate(config.sensorNames())
        ]
        # Read at scrape time, summed over every sensor of the process.
        sensors = self.sensors
        self.metrics.outboxLength.set_function(lambda: sum(len(s.outbox) for s in sensors))
        self.metrics.connected.set_function(lambda: sum(1 for s in sensors if s.protocol is not None))

    def _makeSensor(self, index: int, name: str, reactor: IReactorTime) -> SimulatedSensor:
        config = self.config
        rng: Optional[random.Random] = None
        if config.seed is not None:
            rng = random.Random(config.seed * 1_000_003 + index)
        outbox: Outbox
        if config.spool is not None:
            outbox = SpoolOutbox(config.spool, name, config.outboxSize)
        else:
            outbox = Outbox(config.outboxSize)
        sensor = SimulatedSensor(
            name,
            config.kind,
            KINDS[config.kind],
            clientEndpoint(reactor, config),
            reactor,
            interval=config.interval,
            rng=rng,
            outbox=outbox,
            ackTimeout=config.ackTimeout,
            deadTimeout=config.deadTimeout,
            metrics=self.metrics,
        )
        sensor.setServiceParent(self)
        return sensor

    def startService(self) -> None:
        """
        Read the token file, if any (so a process given a missing or empty
        one fails at start, loudly), then start the sensors.

        @raise OSError: The token file cannot be read.
        @raise ValueError: It holds no token, or more than one word.
        """
        if self.config.tokenFile is not None:
            self.token = readTokenFile(self.config.tokenFile)
            for sensor in self.sensors:
                sensor.token = self.token
        super().startService()

    def whenMetricsListening(self) -> "Deferred[IListeningPort]":
        """
        Fires with the port C{/metrics} is served on once bound: how tests
        and embedders learn the port of C{tcp:0}.

        @raise RuntimeError: Without C{config.metrics}.
        """
        if self.metricsListener is None:
            raise RuntimeError("this client exports no metrics (config.metrics is None)")
        return self.metricsListener.whenListening()


def clientEndpoint(reactor: IReactorTime, config: ClientConfig) -> IStreamClientEndpoint:
    """
    The endpoint a sensor of C{config} connects with: C{config.endpoint};
    with C{tlsCertificate} or C{tlsCA}, TLS over it, presenting the
    certificate and checking the server's against the CA (the host name of
    C{endpoint} is the name the server's certificate must bear).

    @raise ValueError: TLS asked for over an endpoint without a host.
    @raise OSError: A certificate or key file cannot be read.
    """
    endpoint = clientFromString(reactor, config.endpoint)
    if config.tlsCertificate is None and config.tlsCA is None:
        return endpoint
    from twisted.internet.endpoints import wrapClientTLS
    from twisted.internet.ssl import PrivateCertificate, optionsForClientTLS

    from .endpointstrings import endpointArguments
    from .identity.tls import loadAuthorities

    positional, keywords = endpointArguments(config.endpoint)
    host = keywords.get("host", positional[1] if len(positional) > 1 else "")
    if not host:
        raise ValueError(f"TLS needs a host name in the server endpoint: {config.endpoint!r}")
    clientCertificate = None
    if config.tlsCertificate is not None:
        with open(config.tlsCertificate, "rb") as f:
            pem = f.read()
        with open(config.tlsKey or config.tlsCertificate, "rb") as f:
            pem += b"\n" + f.read()
        clientCertificate = PrivateCertificate.loadPEM(pem)
    trustRoot = loadAuthorities(config.tlsCA) if config.tlsCA is not None else None
    options = optionsForClientTLS(host, trustRoot=trustRoot, clientCertificate=clientCertificate)
    return wrapClientTLS(options, endpoint)
