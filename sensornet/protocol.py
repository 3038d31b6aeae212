"""
The server side of the sensor wire protocol (see C{docs/protocol.md}).

L{SensorProtocol} turns bytes into lines, lines into readings (through the
pure L{sensornet.dialects.parseLine}), hands each chunk's readings to the
factory's sink in one call, and writes the chunk's replies in one write once
the sink says they are stored. Everything on this path is done per chunk, not
per line: one sink call, one call to the chunk observer (metrics and the
reading log: L{sensornet.accounting.ChunkAccounting}), one write.

Replies on a connection go out in the order of the lines that caused them,
even though acknowledgements wait for a commit and error replies do not.

A reading stamped more than the factory's C{maxClockSkew} seconds after
the chunk's arrival by the server's clock is refused like a malformed line:
one stamped in 2262 would otherwise be every later query's "latest" value.

L{SensorServerFactory} keeps what connections share: the sink, the clock,
the chunk observer, the open connections, which sensors are connected, the
clock-skew limit, the store writer's pressure, and who may write (an
optional L{sensornet.identity.auth.SensorAccess}).

Authentication is a lifecycle of each connection (L{ConnectionAuth}): a
connection from a network allowed anonymous writes may send C{auth TOKEN} as
its first line or write anonymously; any other must send C{auth TOKEN} first
(or have presented a client certificate naming a live sensor), and is
answered C{ok auth NAME} or C{error auth: refused} and closed. Authorization
costs nothing per line: a connection's C{sensors} holds the names it has
written as, and a name is checked against its principal only the first time
it appears on the connection.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import (
    TYPE_CHECKING, Any, Collection, Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple, cast,
)

from constantly import NamedConstant, Names, ValueConstant, Values
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from .accounting import ChunkAccounting
from .dialects import MAX_LINE_LENGTH, isWholeSeedMessage, parseLine
from .dialects.native import parseCanonicalChunk
from .directwrite import writeNow
from .interfaces import IChunkObserver, IPressureObserver, IReadingSink
from .metrics import ServerMetrics
from .reading import EMPTY_LINE, NS_PER_SECOND, LineError, Reading
from .runs import ChunkReadings
from .wire import (
    ACK_PREFIX,
    AUTH_COMMAND,
    AUTH_OK_PREFIX,
    AUTH_REFUSED,
    ERROR_PREFIX,
    ERROR_SEQ_PREFIX,
    NOT_AUTHORIZED,
    NOT_STORED,
    REJECTED,
    SEED_REPLY,
)

if TYPE_CHECKING:
    from .identity.auth import PrincipalLike, SensorAccess

__all__ = [
    "SEED_REPLY",
    "DEFAULT_MAX_CLOCK_SKEW",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_JUNK_BUDGET",
    "DEFAULT_MAX_REJECTED_LOG_PER_SECOND",
    "CloseReason",
    "ConnectionAuth",
    "PauseReason",
    "ImmediateSink",
    "SensorProtocol",
    "SensorServerFactory",
    "formatPeer",
]


class PauseReason(Names):
    """
    Why a connection stops reading. L{SensorProtocol.pauseReading} takes
    these and nothing else, so a misspelt reason is an error, not a pause
    nobody ever withdraws.

    @cvar sendBufferFull: The peer does not read its replies (the transport
        paused us, as our producer).
    @cvar awaitingCommit: More than L{SensorProtocol.maxPending} of the
        connection's readings wait for their commit.
    @cvar writerOverloaded: The store writer's backlog is over its
        high-water mark and this connection is one of the heavy senders
        (see L{SensorServerFactory.writerOverloaded}).
    @cvar fairShare: This connection sends heavily and waits for its turn
        to read again (see L{SensorServerFactory.heavySenderSeen}).
    @cvar serverStopping: The server is stopping: it answers what it has and
        reads nothing more.
    """

    sendBufferFull = NamedConstant()
    awaitingCommit = NamedConstant()
    writerOverloaded = NamedConstant()
    fairShare = NamedConstant()
    serverStopping = NamedConstant()


_PAUSE_REASONS: FrozenSet[NamedConstant] = frozenset(PauseReason.iterconstants())


class CloseReason(Values):
    """
    Why a guardrail closed a connection: the C{reason} label of
    C{sensornet_connections_closed_total} (few values, so the metric stays
    small whatever peers do).

    @cvar handshakeTimeout: No complete line within the factory's
        C{handshakeTimeout} of connecting (slowloris).
    @cvar idle: Nothing received for the factory's C{idleTimeout}.
    @cvar junk: The factory's C{junkBudget} lines in a row refused.
    @cvar revoked: The credential the connection authenticated with was
        revoked or rotated.
    """

    handshakeTimeout = ValueConstant("handshake_timeout")
    idle = ValueConstant("idle")
    junk = ValueConstant("junk")
    revoked = ValueConstant("revoked")


class ConnectionAuth(Names):
    """
    Where a connection stands with authentication (see C{docs/protocol.md},
    "Authentication").

    @cvar required: Its first non-blank line must be C{auth TOKEN}.
    @cvar optional: Its peer may write anonymously: its first non-blank line
        may be C{auth TOKEN}, and anything else makes it L{anonymous}.
    @cvar anonymous: Writes as any sensor (a peer of C{--anonymous-from}, or
        a factory without an access policy).
    @cvar authenticated: Writes as what its C{principal} may write.
    """

    required = NamedConstant()
    optional = NamedConstant()
    anonymous = NamedConstant()
    authenticated = NamedConstant()


_BEFORE_FIRST_LINE = frozenset([ConnectionAuth.required, ConnectionAuth.optional])
_AUTH_WORD = AUTH_COMMAND.encode("ascii")
_AUTH_LINE_START = _AUTH_WORD + b" "
# What the log shows of an auth line in the wrong place: never the token.
_AUTH_REDACTED = _AUTH_WORD + b" <token not logged>"


#: Seconds a new connection has to send its first complete line (see
#: L{SensorServerFactory.handshakeTimeout}).
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

#: Seconds a connection may stay silent (see
#: L{SensorServerFactory.idleTimeout}).
DEFAULT_IDLE_TIMEOUT = 300.0

#: Refused lines in a row that close a connection (see
#: L{SensorServerFactory.junkBudget}).
DEFAULT_JUNK_BUDGET = 100

#: Refused lines logged one by one per second, across all connections (see
#: L{sensornet.readinglog.RejectedLogLimit}).
DEFAULT_MAX_REJECTED_LOG_PER_SECOND = 20

#: Seconds a reading's own timestamp may be ahead of the server's clock when
#: its line arrives (sensor clocks drift, NTP may not have run yet): five
#: minutes. See C{docs/protocol.md}, "Timestamps ahead of the server's clock".
DEFAULT_MAX_CLOCK_SKEW = 300.0

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@implementer(IReadingSink)
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


# The replies, from the texts both ends of the wire rely on.
_ACK_FORMAT = ACK_PREFIX.encode("ascii") + b"%d\n"


def _errorReply(seq: Optional[int], message: str) -> bytes:
    if seq is not None:
        text = f"{ERROR_SEQ_PREFIX}{seq}: {message}\n"
    else:
        text = f"{ERROR_PREFIX}: {message}\n"
    return text.encode("utf-8", "replace")


def _errorLine(error: LineError) -> bytes:
    return _errorReply(error.seq, error.message)


def _ackLine(reading: Reading) -> bytes:
    if reading.dialect == "seed":
        return SEED_REPLY
    if reading.seq is not None:
        return _ACK_FORMAT % (reading.seq,)
    return b""


def _formatSeconds(seconds: float) -> str:
    """
    C{seconds} as written in a reply: C{300}, not C{300.0}; C{0.5} as is.
    """
    return str(int(seconds)) if seconds == int(seconds) else repr(seconds)


def _aheadOfClock(reading: Reading, maxSkew: float) -> LineError:
    """
    The refusal of C{reading}, stamped more than C{maxSkew} seconds ahead of
    the server's clock, naming the limit: C{timestamp 2262-04-11T23:47:16Z is
    more than 300 s ahead of the server's clock}. The time is UTC to the
    second (truncated), computed without the platform's C{gmtime}, which
    cannot reach 2262 everywhere.
    """
    assert reading.ts is not None
    stamp = (_EPOCH + timedelta(seconds=math.floor(reading.ts))).strftime("%Y-%m-%dT%H:%M:%SZ")
    return LineError(
        f"timestamp {stamp} is more than {_formatSeconds(maxSkew)} s ahead of the server's clock",
        reading.seq,
        reading.dialect,
    )


def _tooLong(line: bytes, limit: int) -> bool:
    """
    Whether C{line} is longer than C{limit} bytes without the C{\\r} of a
    CRLF terminator (or of one whose C{\\n} is yet to come).
    """
    return len(line) - (line[-1:] == b"\r") > limit


class _Chunk:
    """
    The replies owed for one chunk of lines, in line order: C{slots} holds
    finished reply bytes, or an C{int} index into C{readings} whose reply
    depends on how storing went. C{done} turns true when it can be written.
    """

    __slots__ = ("slots", "readings", "received", "done", "replies")

    def __init__(self, received: float) -> None:
        self.slots: List[Any] = []
        self.readings: Sequence[Reading] = ()
        self.received = received
        self.done = False
        self.replies = b""


@implementer(IPushProducer)
class SensorProtocol(LineOnlyReceiver):
    """
    One sensor connection.

    @cvar delimiter: Lines end with C{\\n}; a C{\\r} before it is dropped by
        the parser.
    @cvar MAX_LENGTH: The longest line accepted, in bytes, not counting its
        terminator (C{\\n} or C{\\r\\n}); a longer one gets an error reply
        and closes this connection (and only this one), after the replies
        owed for earlier lines.
    @cvar maxPending: How many of this connection's readings may wait for
        their commit before the server stops reading from it; this is what
        bounds the memory one connection can take.
    @cvar seedIdleGap: Seconds an unterminated partial line must stay idle
        before it is taken as a seed message (the seed's client sends no
        newline and waits for the reply). Only a whole seed message is
        taken (see L{sensornet.dialects.isWholeSeedMessage}), and never on a connection that
        has sent a terminated line.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_LENGTH
    maxPending = 20_000
    seedIdleGap = 0.2

    factory: "SensorServerFactory"
    # A TCP/TLS/UNIX transport: a consumer we register with and a producer we
    # pause (Protocol types it as the narrower Optional[ITransport]).
    transport: Any

    def __init__(self) -> None:
        self.peer = ""
        self.sensors: Set[str] = set()
        # The bytes after the last delimiter, owned here rather than in
        # LineOnlyReceiver's _buffer: lines are split a chunk at a time.
        self._partial = b""
        # Whether a delimiter-terminated line came: such a connection frames
        # its lines, and the seed's idle rule is not for it.
        self._delimited = False
        self._queue: List[_Chunk] = []
        self._pending = 0
        self._pauses: Set[PauseReason] = set()
        self._idleCall: Optional[IDelayedCall] = None
        self._closing = False
        self._closed = False
        self._closeWaiters: List["Deferred[None]"] = []
        # The error line written before a close the server decided on.
        self._closeMessage = b""
        # Kept by the factory's sweep (SensorServerFactory._sweep): when the
        # handshake deadline started (the connection was made, or last seen
        # paused), when the sweep last saw data had come, and (for a
        # guardrail's close) when the close began.
        self.connectedAt = 0.0
        self.deadlineFrom = 0.0
        self.quietSince = 0.0
        self.closingSince: Optional[float] = None
        # Whether a complete, non-blank line came (the handshake).
        self.greeted = False
        # Whether data came since the sweep last looked: one store per
        # chunk, instead of a clock read or a timer reset.
        self.heard = False
        # Lines refused since the last reading accepted (the junk budget).
        self._junk = 0
        # Authentication: where the connection stands, who it is, and the
        # peer's host for the failure limiter (None for a unix socket).
        self.auth = ConnectionAuth.anonymous
        self.principal: Optional["PrincipalLike"] = None
        self._host: Optional[str] = None

    # -- connection events --------------------------------------------------

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        self.peer = formatPeer(address)
        # Register as the transport's producer so a client that does not read
        # its replies (a full send buffer) stops us reading from it.
        self.transport.registerProducer(self, True)
        self.factory.connectionOpened(self)
        access = self.factory.access
        if access is not None:
            from .identity.auth import peerHost

            host = self._host = peerHost(address)
            if not access.admit(host):
                # An address that failed too often: closed before anything
                # it sends is read, let alone hashed.
                self._refuse()
                return
            self.auth = ConnectionAuth.optional if access.anonymousAllowed(host) else ConnectionAuth.required

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closed = True
        self._cancelIdle()
        self.factory.connectionClosed(self)
        waiters, self._closeWaiters = self._closeWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    @property
    def pending(self) -> int:
        """
        How many of this connection's readings wait for their commit.
        """
        return self._pending

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
        self.pauseReading(PauseReason.sendBufferFull)

    def resumeProducing(self) -> None:
        self.resumeReading(PauseReason.sendBufferFull)

    def stopProducing(self) -> None:
        pass

    def pauseReading(self, reason: PauseReason) -> None:
        """
        Stop reading from this connection until every reason given here has
        been withdrawn with L{resumeReading}.

        @param reason: One of L{PauseReason}.
        @raise TypeError: C{reason} is not one of L{PauseReason}.
        """
        if reason not in _PAUSE_REASONS:
            raise TypeError(f"not a PauseReason: {reason!r}")
        if not self._pauses and not self._closed:
            self.transport.pauseProducing()
            self.factory.readingPaused(self, True)
        self._pauses.add(reason)

    def resumeReading(self, reason: PauseReason) -> None:
        """
        Withdraw one reason given to L{pauseReading} (nothing if it was not
        given); reading resumes when none is left (and the connection is not
        closing).

        @raise TypeError: C{reason} is not one of L{PauseReason}.
        """
        if reason not in _PAUSE_REASONS:
            raise TypeError(f"not a PauseReason: {reason!r}")
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
        self.heard = True
        if self._idleCall is not None:
            self._cancelIdle()
        lines = (self._partial + data).split(self.delimiter)
        partial = self._partial = lines.pop()
        limit = self.MAX_LENGTH
        tooLong = len(partial) > limit and _tooLong(partial, limit)
        if lines:
            self._delimited = True
            # One pass in C finds whether any line may be too long; only then
            # is the first such line looked for, and the lines from it on
            # dropped.
            if max(map(len, lines)) > limit:
                for index, line in enumerate(lines):
                    if _tooLong(line, limit):
                        del lines[index:]
                        tooLong = True
                        break
            if lines:
                self.linesReceived(lines)
        if tooLong:
            self._partial = b""
            self.lineLengthExceeded(b"")
        elif partial and not self._delimited:
            self._idleCall = self.factory.clock.callLater(self.seedIdleGap, self._idleTimedOut)

    def lineReceived(self, line: bytes) -> None:
        """
        One line (as L{LineOnlyReceiver} would deliver it): handled like a
        chunk of one.
        """
        self.linesReceived([line])

    def linesReceived(self, lines: List[bytes]) -> None:
        """
        Handle the complete lines of one chunk: parse each, refuse readings
        stamped too far ahead of C{now}, submit the readings in one call,
        queue the replies in line order, and tell the chunk observer once.
        Before the connection's first non-blank line, that line decides
        how it authenticates (L{_firstLine}).
        """
        if self.auth in _BEFORE_FIRST_LINE:
            remaining = self._firstLine(lines)
            if not remaining:
                return
            lines = remaining
        factory = self.factory
        now = factory.clock.seconds()
        # One comparison per reading: a reading without a ts counts as
        # stamped now (the store stamps it so), and without a limit nothing
        # is after the horizon.
        maxSkew = factory.maxClockSkew
        horizon = math.inf if maxSkew is None else now + maxSkew
        chunk = _Chunk(now)
        lineReadings: List[Reading] = []
        readings: Sequence[Reading] = lineReadings
        chunk.readings = readings
        # The refused lines, by index into lines, and their error replies
        # with the number of readings before them: the slots are laid out
        # after the loop, so that a chunk of readings only (the common case)
        # costs no per-line bookkeeping for them.
        rejected: List[Tuple[int, LineError]] = []
        errorReplies: List[Tuple[int, bytes]] = []
        blanks = 0
        unauthorized = 0
        sensors = self.sensors
        peer = self.peer
        # A chunk whose every line is a canonical native reading from a
        # known head (a relay's, a fleet's) is parsed in one pass
        # (parseCanonicalChunk); its readings then only need the checks
        # below, all passed, or the chunk goes line by line after all.
        fast = parseCanonicalChunk(lines, peer, now) if len(lines) > 1 else None
        if fast is not None and not self._runsAccepted(fast, now, horizon):
            fast = None
        # A local name: this loop runs once per line, at hundreds of
        # thousands of lines per second.
        addReading = lineReadings.append
        for line in (lines if fast is None else ()):
            result = parseLine(line)
            if type(result) is Reading:
                if (result.ts or now) <= horizon:
                    # The names this connection wrote as are in sensors:
                    # only a new name is checked against its principal.
                    if result.sensor in sensors or self._admit(result.sensor):
                        result.peer = peer
                        result.received_at = now
                        addReading(result)
                        continue
                    unauthorized += 1
                    result = LineError(f"{NOT_AUTHORIZED} as {result.sensor}", result.seq, result.dialect)
                else:
                    result = _aheadOfClock(result, cast(float, maxSkew))
            elif result is EMPTY_LINE:
                blanks += 1
                continue
            error = cast(LineError, result)
            index = len(readings) + len(rejected) + blanks
            if line[:5] == _AUTH_LINE_START or line.rstrip(b"\r") == _AUTH_WORD:
                # An auth line after the first: refused, and its token kept
                # out of the log.
                lines[index] = _AUTH_REDACTED
                error = LineError("auth is accepted only as the first line")
            rejected.append((index, error))
            errorReplies.append((len(readings), _errorLine(error)))
        if fast is not None:
            # Every line a reading, all accepted: the chunk's list, with its
            # runs, is what the store gets (see sensornet.runs).
            chunk.readings = readings = fast
        if unauthorized:
            factory.metrics.readingsUnauthorized.inc(unauthorized)
        slots = chunk.slots
        start = 0
        for before, reply in errorReplies:
            slots.extend(range(start, before))
            slots.append(reply)
            start = before
        slots.extend(range(start, len(readings)))
        if not slots:
            return
        self.greeted = True
        self._queue.append(chunk)
        if readings:
            self._pending += len(readings)
            if self._pending > self.maxPending:
                self.pauseReading(PauseReason.awaitingCommit)
            factory.sink.submit(readings).addCallbacks(
                self._stored, self._notStored, callbackArgs=(chunk,), errbackArgs=(chunk,)
            )
            if len(readings) >= factory.heavyChunk or factory.writerIsOverloaded:
                factory.heavySenderSeen(self)
        else:
            chunk.replies = b"".join(slots)
            chunk.done = True
            self._flush()
        # After the replies are on their way: with a sink that answers at
        # once, they are written before the chunk is logged.
        factory.accounting.chunkParsed(peer, now, lines, readings, rejected)
        if rejected:
            self._spendJunk(readings, errorReplies)
        elif self._junk:
            self._junk = 0

    def _firstLine(self, lines: List[bytes]) -> Optional[List[bytes]]:
        """
        Handle a connection's first non-blank line, among C{lines}: an
        C{auth TOKEN} line authenticates it (answered C{ok auth NAME}) or
        closes it (C{error auth: refused}); any other line makes a
        connection that may write anonymously L{ConnectionAuth.anonymous},
        and closes one that may not.

        @return: The lines still to handle as readings (none after a
            refusal, or when every line was blank).
        """
        index = 0
        count = len(lines)
        while index < count and not lines[index].strip():
            index += 1
        if index == count:
            return None
        line = lines[index].rstrip(b"\r")
        access = cast("SensorAccess", self.factory.access)
        isAuth = line[:5] == _AUTH_LINE_START or line == _AUTH_WORD
        certificate = self._peerCertificate()
        if (isAuth or certificate is not None or self.auth is ConnectionAuth.required) and not access.ready():
            # A server just started, its credentials not loaded yet: a
            # credential can be told neither good nor bad. Not a failure:
            # the peer reconnects (all its sensors do, after a restart).
            self._closeSaying("credentials not loaded yet, try again; closing the connection")
            return None
        if certificate is not None:
            # A TLS listener with a client CA verified it in the handshake
            # (data comes only after the handshake); its name must still be
            # a live principal. Asked here, at the first line, rather than
            # in a handshake callback, which a wrapping factory would hide.
            from .identity.tls import certificateNames

            principal = access.certificatePrincipal(certificateNames(certificate), self._host)
            if principal is None:
                self._refuse()
                return None
            self.auth = ConnectionAuth.authenticated
            self.principal = principal
            self.factory.principalConnected(self)
            return lines
        if isAuth:
            # Whatever follows the word is the token, malformed or not: it
            # takes the same hash and lookup as a good one.
            token = line[5:].strip().decode("utf-8", "replace")
            principal = access.authenticate(token, self._host)
            if principal is None:
                self._refuse()
                return None
            self.greeted = True
            self._authenticated(principal)
            return lines[index + 1:]
        if self.auth is ConnectionAuth.required:
            from .identity.auth import AuthFailure

            access.refused(AuthFailure.required, self._host)
            self._refuse()
            return None
        self.auth = ConnectionAuth.anonymous
        return lines

    def _peerCertificate(self) -> Any:
        """
        The certificate the peer presented in a TLS handshake, or L{None}
        (no TLS, or no certificate asked for or given).
        """
        getCertificate = getattr(self.transport, "getPeerCertificate", None)
        if getCertificate is None:
            return None
        try:
            return getCertificate()
        except Exception:
            return None

    def _authenticated(self, principal: "PrincipalLike") -> None:
        """
        The connection is C{principal}'s from now on: say so (C{ok auth
        NAME}, in line order), and let the factory close it if the
        credential is revoked.
        """
        self.auth = ConnectionAuth.authenticated
        self.principal = principal
        name = principal.name.replace("\n", " ")
        chunk = _Chunk(self.factory.clock.seconds())
        chunk.replies = f"{AUTH_OK_PREFIX}{name}\n".encode("utf-8", "replace")
        chunk.done = True
        self._queue.append(chunk)
        self._flush()
        self.factory.principalConnected(self)

    def _runsAccepted(self, fast: ChunkReadings, now: float, horizon: float) -> bool:
        """
        Whether every reading of C{fast} passes the checks the line-by-line
        path makes (stamped at most C{horizon}, a reading without a time
        counting as stamped C{now}; a sensor this connection may write as),
        checked once per run: its latest time, its sensor. A sensor is
        admitted as that path would (in the order of first lines), up to the
        first run that fails; the chunk then goes line by line.
        """
        if horizon < now:
            # Never so (the skew is not negative); but then a reading
            # without a time fails, which the latest time cannot tell.
            return False
        sensors = self.sensors
        for names, _, _, _, times in fast.runs.values():
            latest: Optional[int]
            try:
                latest = max(times)  # type: ignore[type-var]
            except TypeError:
                # Readings with and without a time in one run.
                latest = max((ns for ns in times if ns is not None), default=None)
            # The latest reading's ts, as the parser computes it from its
            # nanoseconds: the comparison the line path makes.
            if latest is not None and latest / NS_PER_SECOND > horizon:
                return False
            if names[0] not in sensors and not self._admit(names[0]):
                return False
        return True

    def _admit(self, sensor: str) -> bool:
        """
        Whether this connection may write as C{sensor}, which it has not
        written as before; if so, remember it (in C{sensors}, and with the
        factory).
        """
        principal = self.principal
        if principal is not None and not principal.mayWrite(sensor):
            return False
        self.sensors.add(sensor)
        self.factory.sensorConnected(sensor)
        return True

    def _refuse(self) -> None:
        """
        Refuse the connection's credential (or its lack of one): one line,
        C{error auth: refused}, then close; aborted by the factory's sweep
        if the peer does not take it.
        """
        if self._closing or self._closed:
            return
        self.closingSince = self.factory.clock.seconds()
        self._closeWith(AUTH_REFUSED)

    def _spendJunk(self, readings: Sequence[Reading], errorReplies: List[Tuple[int, bytes]]) -> None:
        """
        Count a chunk's refused lines against the factory's C{junkBudget}:
        those after its last reading accepted, added to the count so far if
        it accepted none; close the connection once the count reaches the
        budget. Per chunk, from what the chunk's parse already gathered.
        """
        budget = self.factory.junkBudget
        if budget is None:
            return
        if readings:
            # The refused lines after the last reading: those whose reply
            # comes after every reading's.
            accepted = len(readings)
            trailing = 0
            for before, _ in reversed(errorReplies):
                if before != accepted:
                    break
                trailing += 1
            self._junk = trailing
        else:
            self._junk += len(errorReplies)
        if self._junk >= budget:
            self.closeFor(CloseReason.junk, f"{budget} lines in a row refused")

    def _stored(self, rejected: Dict[int, str], chunk: _Chunk) -> None:
        readings = chunk.readings
        slots = chunk.slots
        if not rejected and len(slots) == len(readings):
            # Every line of the chunk was a reading and all are stored: the
            # usual chunk. When each is a native reading with a seq, its
            # replies are one format operation instead of one per line.
            seqs = (
                readings.seqs if type(readings) is ChunkReadings
                else [reading.seq if reading.dialect == "native" else None for reading in readings]
            )
            if None not in seqs:
                self._settle(chunk, (_ACK_FORMAT * len(seqs)) % tuple(seqs))
                return
        replies = []
        for slot in slots:
            if type(slot) is int:
                if rejected and slot in rejected:
                    replies.append(_errorReply(readings[slot].seq, f"{REJECTED}: {rejected[slot]}"))
                else:
                    replies.append(_ackLine(readings[slot]))
            else:
                replies.append(slot)
        self._settle(chunk, b"".join(replies))

    def _notStored(self, failure: Failure, chunk: _Chunk) -> None:
        why = f"{NOT_STORED}: " + (str(failure.value) or failure.type.__name__).replace("\n", " ")
        replies = []
        readings = chunk.readings
        unnamed = 0
        for slot in chunk.slots:
            if type(slot) is int:
                reading = readings[slot]
                if reading.seq is None and reading.dialect != "seed":
                    unnamed += 1
                else:
                    replies.append(_errorReply(reading.seq, why))
            else:
                replies.append(slot)
        if unnamed:
            replies.append(_errorReply(None, f"{unnamed} readings {why}"))
        self._settle(chunk, b"".join(replies))

    def _settle(self, chunk: _Chunk, replies: bytes) -> None:
        chunk.replies = replies
        chunk.done = True
        self._pending -= len(chunk.readings)
        if self._pending <= self.maxPending:
            self.resumeReading(PauseReason.awaitingCommit)
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
            writeNow(self.transport, data)
        now = self.factory.clock.seconds()
        latencies = [now - chunk.received for chunk in finished if chunk.readings]
        if latencies:
            self.factory.accounting.chunksAnswered(latencies)
        if self._closing and not queue:
            self._close()

    def _idleTimedOut(self) -> None:
        self._idleCall = None
        partial = self._partial
        if isWholeSeedMessage(partial):
            self._partial = b""
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
        if self._closing:
            return
        self.factory.accounting.lineTooLong(self.peer, self.MAX_LENGTH)
        self._closeSaying(f"line longer than {self.MAX_LENGTH} bytes; closing the connection")

    def closeFor(self, reason: CloseReason, message: str) -> None:
        """
        A guardrail closes this connection: stop reading, answer what came
        before, write C{error: MESSAGE}, close. Counted under C{reason} and
        logged once. The factory aborts the connection if it is still open
        L{SensorServerFactory.abortAfter} seconds later (a peer that reads
        nothing would otherwise hold it until its send buffer drains).
        Nothing if the connection is already closing.
        """
        if self._closing or self._closed:
            return
        self.factory.guardrailClosed(self, reason, message)
        self._closeSaying(f"{message}; closing the connection")

    def _closeSaying(self, message: str) -> None:
        self._closeWith(_errorReply(None, message))

    def _closeWith(self, reply: bytes) -> None:
        self._closing = True
        self._closeMessage = reply
        self._cancelIdle()
        self.transport.pauseProducing()
        if not self._queue:
            self._close()

    def _close(self) -> None:
        self.transport.write(self._closeMessage)
        self.transport.unregisterProducer()
        # Read again (what comes is dropped: we are closing): over TLS the
        # close waits for the peer's close_notify, which a paused transport
        # would never read, leaving the connection to the abort 10 s later.
        self.transport.resumeProducing()
        self.transport.loseConnection()


def _setSendBuffer(transport: Any, size: int) -> None:
    """
    Set the send buffer of the socket under C{transport} to C{size} bytes,
    if it has a socket (not a StringTransport, nor a TLS transport over a
    memory BIO without one).
    """
    import socket

    try:
        handle = transport.getHandle()
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    except (AttributeError, OSError, TypeError):
        pass


def _checkTimeout(name: str, seconds: Optional[float]) -> None:
    """
    @raise ValueError: C{seconds} is neither L{None} nor a finite number
        C{> 0}.
    """
    if seconds is not None and not 0 < seconds < math.inf:
        raise ValueError(f"{name} must be a finite number of seconds > 0 or None, not {seconds!r}")


@implementer(IPressureObserver)
class SensorServerFactory(Factory):
    """
    Builds a L{SensorProtocol} per connection and holds what they share: the
    sink, the clock, the chunk observer, the set of open connections, which
    sensors are connected, the clock-skew limit, and the store writer's
    pressure (it is the writer's L{IPressureObserver}).

    @ivar sink: Where readings go (an L{IReadingSink}).
    @ivar clock: The time source (the reactor, or a C{task.Clock} in tests).
    @ivar maxClockSkew: Seconds (C{>= 0}) a reading's timestamp may be ahead
        of C{clock} when its line arrives; a reading stamped later is
        refused with an error reply naming this limit, and never stored.
        L{None}: no limit.
    @ivar metrics: The server's metrics; connections are counted here, chunks
        by C{accounting}.
    @ivar accounting: Told once per chunk what a connection received and
        answered (an L{IChunkObserver}): the metrics of readings and the
        reading log.
    @ivar protocols: The open connections.
    @ivar paused: The open connections not reading now.
    @ivar handshakeTimeout: Seconds (C{> 0}) a connection has, from the
        moment it is made, to send one complete non-blank line (terminated
        by C{delimiter}, or a whole seed message taken by the seed's idle
        rule; later, the authentication line); one that has not is closed
        with C{error: no complete line within N s; closing the connection}
        and counted under L{CloseReason.handshakeTimeout}. This is what
        ends a slowloris connection, which sends a byte every few seconds
        and never a line, and would otherwise hold its socket and its
        buffer forever. L{None}: no deadline.
    @ivar idleTimeout: Seconds (C{> 0}) a connection may send nothing at
        all before it is closed with C{error: nothing received for N s;
        closing the connection}, counted under L{CloseReason.idle}: a peer
        that vanished without a FIN or RST (power cut, NAT state dropped)
        would otherwise hold its socket until TCP keepalive, hours later.
        L{None}: no limit. Time spent paused by the server (backpressure)
        does not count, for this or for C{handshakeTimeout}.
    @ivar junkBudget: How many refused lines in a row (no reading accepted
        between them) close a connection, with C{error: N lines in a row
        refused; closing the connection}, counted under L{CloseReason.junk}:
        a peer that sends only what the server must refuse costs a parse,
        an error reply and a log line per line and helps nobody. Counted per
        chunk of data: every line of the chunk that reaches the budget is
        answered first. L{None}: no budget.
    @ivar access: Who may write (a L{sensornet.identity.auth.SensorAccess}):
        which peers may write anonymously, which credentials authenticate,
        how often an address may fail. L{None}: every connection writes
        anonymously, as any sensor (for tests and embedders; the server
        always gives one, secure by default).
    @cvar abortAfter: Seconds a connection closed by a guardrail may take to
        go (its peer reading the last replies) before it is aborted.
    @cvar maxSweepInterval: The longest interval, in seconds, between two
        sweeps of the open connections (see L{_sweep}).
    @cvar heavyChunk: Readings in one chunk (one read from the socket)
        that make its connection a heavy sender, which then takes turns
        with the other heavy senders (see L{heavySenderSeen}). A sensor
        sends one reading at a time; a read of a few hundred lines means a
        relay or a flood.
    @cvar heavyTurns: Heavy senders allowed to read once more per reactor
        iteration: with 64 KiB reads, about four chunks of 1,500 readings,
        a few milliseconds of parsing, however many heavy senders wait.
    @cvar fairPending: Readings a connection may have awaiting their commit
        while the store writer is overloaded before it is paused with the
        heavy senders (see L{writerOverloaded}).
    @cvar heavyBacklog: Turns wait while the sink has more readings than
        this waiting for their commit (its C{backlog}, if it has one): two
        of the writer's full batches, so it never runs dry, while a
        sensor's reading queued behind the heavy senders' waits for two
        commits at most, not for a backlog of a hundred thousand.
    @cvar turnRetry: Seconds before turns are looked at again when the
        sink's backlog held them back.
    @cvar sendBufferSize: The kernel send buffer of each connection's
        socket, in bytes (Linux doubles it), or L{None} to leave the
        kernel's own, which grows to megabytes. This bounds what a peer
        that sends fast and never reads its replies can have in flight:
        once this buffer, the peer's receive buffer and the transport's
        own 64 KiB hold its acknowledgements, the transport pauses the
        connection (L{PauseReason.sendBufferFull}), after some tens of
        thousands of readings instead of hundreds of thousands. 64 KiB
        holds about 12,000 acknowledgements: 120,000 a second over a
        100 ms round trip, more than one relay sends.
    @ivar writerIsOverloaded: Whether the store writer said it is
        overloaded and has not yet said it recovered.
    """

    protocol = SensorProtocol  # type: ignore[assignment]

    abortAfter = 10.0
    maxSweepInterval = 5.0
    heavyChunk = 500
    heavyTurns = 4
    fairPending = 100
    heavyBacklog = 10_000
    sendBufferSize: Optional[int] = 65536
    turnRetry = 0.002

    _log = Logger()

    def __init__(
        self,
        sink: IReadingSink,
        clock: IReactorTime,
        metrics: Optional[ServerMetrics] = None,
        logReadings: bool = True,
        accounting: Optional[IChunkObserver] = None,
        maxClockSkew: Optional[float] = DEFAULT_MAX_CLOCK_SKEW,
        handshakeTimeout: Optional[float] = DEFAULT_HANDSHAKE_TIMEOUT,
        idleTimeout: Optional[float] = DEFAULT_IDLE_TIMEOUT,
        junkBudget: Optional[int] = DEFAULT_JUNK_BUDGET,
        maxRejectedLogPerSecond: Optional[int] = DEFAULT_MAX_REJECTED_LOG_PER_SECOND,
        access: Optional["SensorAccess"] = None,
    ) -> None:
        """
        @param logReadings: Whether the default C{accounting} logs each
            reading received (the seed's C{log.txt}).
        @param accounting: The chunk observer; by default a
            L{ChunkAccounting} on C{metrics}, logging to the global log, with
            C{maxRejectedLogPerSecond}.
        @param maxRejectedLogPerSecond: For the default C{accounting}: at
            most this many refused lines logged one by one per second across
            all connections (20 by default: enough to see what is wrong,
            a few kilobytes a second at most), the rest counted in one
            summary line a second and in
            C{sensornet_rejected_lines_unlogged_total}. L{None} or C{0}: no
            limit but the per-chunk one.
        @param maxClockSkew: See C{maxClockSkew}; five minutes by default.
        @param handshakeTimeout: See C{handshakeTimeout}; ten seconds by
            default (a sensor sends its first line at once; ten seconds
            leave room for a slow TLS handshake over a poor link).
        @param idleTimeout: See C{idleTimeout}; five minutes by default:
            sensors send every 2 to 3 s, so a live sensor is never near it
            (a hundred readings missed in a row), while a vanished peer's
            socket is reclaimed in minutes rather than hours.
        @param junkBudget: See C{junkBudget}; 100 by default: a sensor with
            a bug is told why long before its log fills (and its refused
            lines are logged), while a sensor whose lines are refused now
            and then (a clock ahead, a value out of range) never comes near
            it, as any reading accepted starts the count again.
        @raise ValueError: C{maxClockSkew} is negative or not a number, a
            timeout is not a positive finite number, or C{junkBudget} is
            not an integer C{>= 1}.
        """
        if maxClockSkew is not None and not 0 <= maxClockSkew < math.inf:
            raise ValueError(f"maxClockSkew must be a finite number of seconds >= 0 or None, not {maxClockSkew!r}")
        _checkTimeout("handshakeTimeout", handshakeTimeout)
        _checkTimeout("idleTimeout", idleTimeout)
        self.handshakeTimeout = handshakeTimeout
        self.idleTimeout = idleTimeout
        if junkBudget is not None and (not isinstance(junkBudget, int) or junkBudget < 1):
            raise ValueError(f"junkBudget must be an integer >= 1 or None, not {junkBudget!r}")
        self.junkBudget = junkBudget
        self.sink = sink
        self.clock = clock
        self.maxClockSkew = maxClockSkew
        self.metrics = metrics if metrics is not None else ServerMetrics()
        if maxRejectedLogPerSecond is not None and (
            not isinstance(maxRejectedLogPerSecond, int) or maxRejectedLogPerSecond < 0
        ):
            raise ValueError(f"maxRejectedLogPerSecond must be an integer >= 0 or None, not {maxRejectedLogPerSecond!r}")
        # The accounting built here is flushed when the last connection
        # closes; one given is its giver's to look after.
        self._ownAccounting: Optional[ChunkAccounting] = None
        if accounting is None:
            accounting = self._ownAccounting = ChunkAccounting(
                self.metrics, logReadings, clock=clock, maxRejectedLogPerSecond=maxRejectedLogPerSecond
            )
        self.accounting = accounting
        self.protocols: Set[SensorProtocol] = set()
        self.paused: Set[SensorProtocol] = set()
        self._sensorConnections: Dict[str, int] = {}
        self.writerIsOverloaded = False
        # Heavy senders waiting for a turn to read (an insertion-ordered
        # dict as a FIFO set: a turn each, in order), the call that gives
        # the next turns, and the connections paused for the overloaded
        # writer.
        self._waitingTurn: Dict[SensorProtocol, None] = {}
        self._turnCall: Optional[IDelayedCall] = None
        self._heldForWriter: Set[SensorProtocol] = set()
        self._closedFor = {reason: self.metrics.connectionsClosed.labels(reason.value) for reason in CloseReason.iterconstants()}
        self._sweeper: Optional[LoopingCall] = None
        self.access = access
        # The authenticated connections, by principal name: whom to close
        # when a credential is revoked.
        self._byPrincipal: Dict[str, Set[SensorProtocol]] = {}
        if access is not None:
            access.subscribeRevoked(self.credentialsRevoked)

    @property
    def logReadings(self) -> bool:
        """
        Whether each reading received is logged: C{accounting}'s setting.
        """
        return bool(self.accounting.logReadings)

    # -- called by protocols: the state they share -------------------------

    def connectionOpened(self, protocol: SensorProtocol) -> None:
        """
        C{protocol}'s connection is made. It reads even while the store
        writer is overloaded: it has sent nothing yet, and one that floods
        is paused after its first heavy chunk. Its socket's send buffer is
        set to L{sendBufferSize}.
        """
        self.protocols.add(protocol)
        if self.sendBufferSize is not None:
            _setSendBuffer(protocol.transport, self.sendBufferSize)
        protocol.connectedAt = protocol.deadlineFrom = protocol.quietSince = self.clock.seconds()
        if self._sweeper is None:
            self._startSweeping()
        self.metrics.connections.inc()
        self.metrics.connectionsOpen.inc()
        self._log.info("New connection from {peer}", peer=protocol.peer)

    def connectionClosed(self, protocol: SensorProtocol) -> None:
        """
        C{protocol}'s connection is gone, and with it its sensors.
        """
        self.protocols.discard(protocol)
        self._waitingTurn.pop(protocol, None)
        self._heldForWriter.discard(protocol)
        if protocol in self.paused:
            self.paused.discard(protocol)
            self.metrics.transportsPaused.set(len(self.paused))
        self.metrics.connectionsOpen.dec()
        principal = protocol.principal
        if principal is not None:
            connections = self._byPrincipal.get(principal.name)
            if connections is not None:
                connections.discard(protocol)
                if not connections:
                    del self._byPrincipal[principal.name]
        for sensor in protocol.sensors:
            count = self._sensorConnections.get(sensor, 0) - 1
            if count > 0:
                self._sensorConnections[sensor] = count
            else:
                self._sensorConnections.pop(sensor, None)
        if not self.protocols:
            self._stopSweeping()
            # Nobody waits for a turn: leave no timer pending.
            turnCall, self._turnCall = self._turnCall, None
            if turnCall is not None and turnCall.active():
                turnCall.cancel()
            if self._ownAccounting is not None:
                self._ownAccounting.flush()
        self._log.info("Connection from {peer} closed", peer=protocol.peer)

    def guardrailClosed(self, protocol: SensorProtocol, reason: CloseReason, message: str) -> None:
        """
        A guardrail is closing C{protocol}'s connection for C{reason}
        (C{message} says why, for the log): count and log it, and start the
        clock after which it is aborted.
        """
        protocol.closingSince = self.clock.seconds()
        self._closedFor[reason].inc()
        self._log.warn("Closing connection from {peer}: {why}", peer=protocol.peer, why=message)

    # -- the sweep: the guardrails that are about time ------------------------

    def sweepInterval(self) -> float:
        """
        Seconds between two sweeps: a quarter of the shortest timeout, so a
        connection is closed at most a quarter late (between 10 and 12.5 s
        with a 10 s deadline), and at most L{maxSweepInterval}.
        """
        timeouts = [t for t in (self.handshakeTimeout, self.idleTimeout) if t is not None]
        return min([self.maxSweepInterval] + [t / 4 for t in timeouts])

    def _startSweeping(self) -> None:
        # Runs only while a connection is open: a server without connections
        # (a stopped one too) has no timer pending.
        sweeper = self._sweeper = LoopingCall(self._sweep)
        sweeper.clock = self.clock
        sweeper.start(self.sweepInterval(), now=False)

    def _stopSweeping(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None and sweeper.running:
            sweeper.stop()

    def _sweep(self) -> None:
        """
        One look at every open connection: close those past the handshake
        deadline or silent for C{idleTimeout}, abort those a guardrail
        closed more than L{abortAfter} seconds ago.

        Silence is measured from the sweep that last saw data had come (the
        protocol's C{heard}), so a connection is never closed early, and at
        most two sweep intervals late. A connection paused by the server
        (backpressure) is not read, so its silence is ours, not its own:
        both clocks start again while it is paused. A timer per connection would cost a C{callLater} and a
        cancel per chunk (or per connection, for the deadline); this costs
        a few attribute reads per connection per sweep instead: 1.1 ms for
        20,000 connections (measured on a 2-core VM), every 2.5 s with the
        default timeouts, under 0.05 % of the reactor's time.
        """
        now = self.clock.seconds()
        handshake = self.handshakeTimeout
        unwelcome = now - handshake if handshake is not None else -math.inf
        idle = self.idleTimeout
        quietBefore = now - idle if idle is not None else -math.inf
        abortBefore = now - self.abortAfter
        paused = self.paused
        for protocol in list(self.protocols):
            closing = protocol.closingSince
            if closing is not None:
                if closing <= abortBefore and not protocol.closed:
                    protocol.transport.abortConnection()
                continue
            if protocol.heard:
                protocol.heard = False
                protocol.quietSince = now
            if protocol in paused:
                protocol.quietSince = protocol.deadlineFrom = now
            elif not protocol.greeted and protocol.deadlineFrom <= unwelcome:
                protocol.closeFor(
                    CloseReason.handshakeTimeout,
                    f"no complete line within {_formatSeconds(cast(float, handshake))} s",
                )
            elif protocol.quietSince <= quietBefore:
                protocol.closeFor(CloseReason.idle, f"nothing received for {_formatSeconds(cast(float, idle))} s")

    def principalConnected(self, protocol: SensorProtocol) -> None:
        """
        C{protocol} authenticated (as C{protocol.principal}).
        """
        assert protocol.principal is not None
        self._byPrincipal.setdefault(protocol.principal.name, set()).add(protocol)

    def credentialsRevoked(self, names: Iterable[str]) -> None:
        """
        The credentials of C{names} were revoked or rotated: close every
        connection authenticated as one of them (after the replies it is
        owed), with C{error: credential revoked or replaced; closing the
        connection}, counted under L{CloseReason.revoked}. New connections
        are refused by the credentials themselves.
        """
        for name in names:
            for protocol in list(self._byPrincipal.get(name, ())):
                protocol.closeFor(CloseReason.revoked, "credential revoked or replaced")

    def sensorConnected(self, sensor: str) -> None:
        """
        A connection sent its first reading from C{sensor}.
        """
        self._sensorConnections[sensor] = self._sensorConnections.get(sensor, 0) + 1

    def connectedSensors(self) -> Collection[str]:
        """
        The names of the sensors that have sent a reading on a connection that
        is still open.
        """
        return self._sensorConnections.keys()

    def readingPaused(self, protocol: SensorProtocol, paused: bool) -> None:
        """
        C{protocol} stopped (C{paused}) or started again reading.
        """
        if paused:
            self.paused.add(protocol)
        else:
            self.paused.discard(protocol)
        self.metrics.transportsPaused.set(len(self.paused))

    # -- fairness: heavy senders take turns ------------------------------------

    def heavySenderSeen(self, protocol: SensorProtocol) -> None:
        """
        C{protocol} submitted a chunk of at least L{heavyChunk} readings,
        or any chunk while the writer is overloaded (called once per such
        chunk). While the writer is overloaded, a connection with more
        than L{fairPending} readings awaiting commit is paused until it
        recovers; otherwise a heavy chunk pauses its connection until its
        turn comes. Turns are given L{heavyTurns} at a time,
        in the order the heavy senders asked, once per reactor iteration
        (and not while the writer is overloaded), so however many
        connections flood, one iteration parses only a few of their
        chunks, and a sensor sending a line every few seconds waits at
        most an iteration or two for its line to be read. A heavy sender
        alone loses nothing: its turn comes at the next iteration.
        """
        if protocol.closed:
            return
        if self.writerIsOverloaded:
            if protocol.pending > self.fairPending and protocol not in self._heldForWriter:
                self._heldForWriter.add(protocol)
                protocol.pauseReading(PauseReason.writerOverloaded)
            return
        if protocol in self._waitingTurn:
            return
        protocol.pauseReading(PauseReason.fairShare)
        self._waitingTurn[protocol] = None
        self._scheduleTurns()

    def _scheduleTurns(self) -> None:
        if self._turnCall is None and self._waitingTurn and not self.writerIsOverloaded:
            self._turnCall = self.clock.callLater(0, self._giveTurns)

    def _giveTurns(self) -> None:
        self._turnCall = None
        waiting = self._waitingTurn
        if not waiting:
            return
        if getattr(self.sink, "backlog", 0) > self.heavyBacklog:
            if not self.writerIsOverloaded:
                self._turnCall = self.clock.callLater(self.turnRetry, self._giveTurns)
            return
        for _ in range(min(self.heavyTurns, len(waiting))):
            protocol = next(iter(waiting))
            del waiting[protocol]
            protocol.resumeReading(PauseReason.fairShare)
        self._scheduleTurns()

    # -- IPressureObserver: told by the store writer ------------------------

    def writerOverloaded(self) -> None:
        """
        The store writer's backlog crossed its high-water mark: pause the
        heaviest senders first, those with more than L{fairPending}
        readings awaiting their commit (then any connection whose readings
        awaiting commit pass it, at its next chunk), and give no heavy
        sender a turn; the others (sensors at their cadence) keep reading
        and keep their acknowledgements flowing. If the backlog comes from
        many light senders, each is paused once its own readings awaiting
        commit pass L{fairPending}, which bounds the backlog.
        """
        self.writerIsOverloaded = True
        if self._turnCall is not None:
            if self._turnCall.active():
                self._turnCall.cancel()
            self._turnCall = None
        limit = self.fairPending
        held = self._heldForWriter
        for protocol in list(self.protocols):
            if protocol.pending > limit and protocol not in held and not protocol.closed:
                held.add(protocol)
                protocol.pauseReading(PauseReason.writerOverloaded)
        self._log.warn(
            "Store writer overloaded: pausing {n} of {total} connections, the heaviest senders",
            n=len(held), total=len(self.protocols),
        )

    def writerRecovered(self) -> None:
        """
        The backlog fell below the low-water mark: the senders paused for it
        join the heavy senders' turns (the lightest first), so they come
        back a few per reactor iteration rather than all in one.
        """
        self.writerIsOverloaded = False
        held = sorted(self._heldForWriter, key=lambda protocol: protocol.pending)
        self._heldForWriter = set()
        self._log.info("Store writer caught up: {n} heavy senders take turns again", n=len(held))
        for protocol in held:
            if protocol not in self._waitingTurn:
                protocol.pauseReading(PauseReason.fairShare)
                self._waitingTurn[protocol] = None
            protocol.resumeReading(PauseReason.writerOverloaded)
        self._scheduleTurns()
