"""
The guardrails against exhaustion (issue 10, item 8): the handshake deadline
(slowloris), the idle timeout, the junk budget and the rate limit on
rejected-line warnings. Each is proved on a StringTransport and a fake clock,
and over real loopback sockets with pytest-twisted.
"""

from __future__ import annotations

from typing import Any, List, Optional

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, LoopingCall
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from sensornet.accounting import ChunkAccounting
from sensornet.metrics import ServerMetrics
from sensornet.protocol import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_JUNK_BUDGET
from sensornet.protocol import DEFAULT_MAX_REJECTED_LOG_PER_SECOND, CloseReason, ImmediateSink, PauseReason
from sensornet.protocol import SensorServerFactory
from sensornet.server import SensorServerService, ServerConfig

TIMEOUT = 30
CLOSED = "sensornet_connections_closed_total"


# -- on a StringTransport and a fake clock -----------------------------------


def makeFactory(sink: Any = None, **keywords: Any) -> SensorServerFactory:
    """
    A factory on a fake clock whose connections' log events go to
    C{factory.events}.
    """
    events: List[dict] = []
    metrics = ServerMetrics()
    accounting = ChunkAccounting(metrics, False, observer=events.append)
    factory = SensorServerFactory(sink or ImmediateSink(), Clock(), metrics, accounting=accounting, **keywords)
    factory._log = Logger(observer=events.append)
    factory.events = events  # type: ignore[attr-defined]
    return factory


def open_(factory: SensorServerFactory, port: int = 54812) -> Any:
    """
    One more connection of C{factory}, on a StringTransport.
    """
    address = IPv4Address("TCP", "10.0.2.135", port)
    protocol = factory.buildProtocol(address)
    protocol.makeConnection(StringTransport(peerAddress=address))
    return protocol


def closedFor(factory: SensorServerFactory, reason: CloseReason) -> Optional[float]:
    return factory.metrics.registry.get_sample_value(CLOSED, {"reason": reason.value})


def test_every_close_reason_is_exported_at_zero_from_the_start():
    """
    C{sensornet_connections_closed_total} has one series per L{CloseReason},
    at 0 before any connection, so a dashboard's rate() has a baseline.
    """
    factory = makeFactory()
    for reason in CloseReason.iterconstants():
        assert closedFor(factory, reason) == 0


def test_connection_without_a_complete_line_is_closed_at_the_handshake_deadline():
    """
    Bytes without a newline do not count: at C{handshakeTimeout} (10 s by
    default) the connection gets one error line naming the limit and is
    closed, counted under C{handshake_timeout}, and logged once.
    """
    factory = makeFactory()
    assert factory.handshakeTimeout == DEFAULT_HANDSHAKE_TIMEOUT == 10
    protocol = open_(factory)
    clock = factory.clock
    for _ in range(9):
        clock.advance(1)
        protocol.dataReceived(b"x")
    assert not protocol.transport.disconnecting
    clock.advance(1)
    assert protocol.transport.value() == b"error: no complete line within 10 s; closing the connection\n"
    assert protocol.transport.disconnecting
    assert closedFor(factory, CloseReason.handshakeTimeout) == 1
    # Nothing more is read from it.
    protocol.dataReceived(b"temperature,sensor=a value=1,seq=1i\n")
    assert protocol.transport.value().count(b"\n") == 1
    warnings = [e for e in factory.events if e.get("why")]
    assert [w["why"] for w in warnings] == ["no complete line within 10 s"]


@pytest.mark.parametrize(
    "first",
    [
        b"temperature,sensor=a value=1,seq=1i\n",
        b"junk\n",  # a refused line is a complete line: the junk budget deals with it
        "Sensor1 - Temperatura: 25.34°C".encode("utf-8"),  # the seed's idle rule
    ],
)
def test_one_complete_line_meets_the_handshake_deadline(first: bytes):
    """
    A delimited line, refused or not, or a whole seed message taken by the
    seed's idle rule, meets the deadline; the connection then stays open
    however long it waits (up to the idle timeout).
    """
    factory = makeFactory(handshakeTimeout=1.0)
    protocol = open_(factory)
    protocol.dataReceived(first)
    factory.clock.advance(0.5)
    factory.clock.advance(60)
    assert not protocol.transport.disconnecting
    assert closedFor(factory, CloseReason.handshakeTimeout) == 0


def test_blank_lines_do_not_meet_the_handshake_deadline():
    """
    A newline every second is not a line: a slowloris that sends only
    blank lines is closed at the deadline all the same.
    """
    factory = makeFactory(handshakeTimeout=2.0)
    protocol = open_(factory)
    for _ in range(2):
        protocol.dataReceived(b"\r\n")
        factory.clock.advance(1)
    assert protocol.transport.disconnecting
    assert closedFor(factory, CloseReason.handshakeTimeout) == 1


def test_no_handshake_deadline_when_disabled():
    """
    C{handshakeTimeout=None}: a connection may stay silent for good (as
    before the guardrails).
    """
    factory = makeFactory(handshakeTimeout=None, idleTimeout=None)
    protocol = open_(factory)
    factory.clock.advance(3600)
    assert not protocol.transport.disconnecting


@pytest.mark.parametrize("name", ["handshakeTimeout", "idleTimeout"])
@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_timeouts_must_be_positive_and_finite(name: str, bad: float):
    with pytest.raises(ValueError, match=name):
        makeFactory(**{name: bad})


def test_silent_connection_is_closed_after_the_idle_timeout():
    """
    A connection that sent its line and then nothing for C{idleTimeout}
    (300 s by default) is told why and closed, counted under C{idle}; not
    a moment before.
    """
    factory = makeFactory()
    assert factory.idleTimeout == DEFAULT_IDLE_TIMEOUT == 300
    protocol = open_(factory)
    protocol.dataReceived(b"temperature,sensor=a value=1,seq=1i\n")
    protocol.transport.clear()
    factory.clock.pump([1] * 299)
    assert not protocol.transport.disconnecting
    factory.clock.pump([1] * 10)
    assert protocol.transport.value() == b"error: nothing received for 300 s; closing the connection\n"
    assert protocol.transport.disconnecting
    assert closedFor(factory, CloseReason.idle) == 1
    assert closedFor(factory, CloseReason.handshakeTimeout) == 0


def test_a_sensor_at_its_cadence_is_never_idle():
    """
    Any data counts, a partial line too: a sensor sending every 3 s (and
    one dribbling bytes of a line that ends, after the handshake) stays
    open for an hour.
    """
    factory = makeFactory(idleTimeout=10.0)
    sensor = open_(factory, 1)
    slow = open_(factory, 2)
    slow.dataReceived(b"t,sensor=b value=1\n")
    for second in range(3600):
        if second % 3 == 0:
            sensor.dataReceived(b"t,sensor=a value=1\n")
        if second % 9 == 0:
            slow.dataReceived(b"t")
        factory.clock.advance(1)
    assert not sensor.transport.disconnecting and not slow.transport.disconnecting


def test_time_paused_by_the_server_is_not_silence():
    """
    While the store writer is overloaded the server reads nothing, so the
    peers' silence is the server's doing: neither the idle timeout nor the
    handshake deadline closes a paused connection, and both start again
    once reading resumes.
    """
    factory = makeFactory(handshakeTimeout=5.0, idleTimeout=10.0)
    greeted = open_(factory, 1)
    greeted.dataReceived(b"t,sensor=a value=1\n")
    fresh = open_(factory, 2)
    for protocol in (greeted, fresh):
        protocol.pauseReading(PauseReason.writerOverloaded)
    factory.clock.pump([1] * 60)
    assert not greeted.transport.disconnecting and not fresh.transport.disconnecting
    for protocol in (greeted, fresh):
        protocol.resumeReading(PauseReason.writerOverloaded)
    factory.clock.pump([1] * 4)
    assert not fresh.transport.disconnecting
    factory.clock.pump([1] * 4)
    assert fresh.transport.disconnecting and not greeted.transport.disconnecting
    factory.clock.pump([1] * 5)
    assert greeted.transport.disconnecting
    assert closedFor(factory, CloseReason.idle) == 1


def test_deadline_close_answers_what_came_before():
    """
    Replies owed when the deadline strikes are written first: a connection
    whose readings wait for their commit (here: a sink that never answers)
    is closed once they are answered, with the error line after them.
    """
    held: List[defer.Deferred] = []

    class HeldSink:
        def submit(self, readings: Any) -> defer.Deferred:
            held.append(defer.Deferred())
            return held[-1]

    factory = makeFactory(HeldSink(), handshakeTimeout=1.0)
    protocol = open_(factory)
    protocol.dataReceived(b"temperature,sensor=a value=1,seq=1i\n")
    protocol.closeFor(CloseReason.handshakeTimeout, "no complete line within 1 s")
    protocol.closeFor(CloseReason.handshakeTimeout, "closed twice")
    assert protocol.transport.value() == b"" and not protocol.transport.disconnecting
    held[0].callback({})
    assert protocol.transport.value() == b"ack 1\nerror: no complete line within 1 s; closing the connection\n"
    assert protocol.transport.disconnecting
    assert closedFor(factory, CloseReason.handshakeTimeout) == 1


def test_a_closed_connection_that_does_not_go_is_aborted():
    """
    A peer that reads nothing keeps a closed connection open until its send
    buffer drains, which may be never: C{abortAfter} seconds after the
    close, the sweep aborts it.
    """
    factory = makeFactory(handshakeTimeout=1.0)
    protocol = open_(factory)
    factory.clock.advance(1)
    assert protocol.transport.disconnecting and not protocol.transport.disconnected
    factory.clock.advance(factory.abortAfter)
    assert protocol.transport.disconnected, "aborted"


def test_the_sweep_runs_only_while_a_connection_is_open():
    """
    The one timer of the guardrails is the factory's sweep: none before the
    first connection, none after the last one closed (a stopped server
    leaves no timer behind), and one however many connections are open.
    """
    factory = makeFactory()
    clock = factory.clock
    assert clock.getDelayedCalls() == []
    protocols = [open_(factory, port) for port in range(40000, 40100)]
    assert len(clock.getDelayedCalls()) == 1
    for protocol in protocols:
        protocol.connectionLost(Failure(Exception("gone")))
    assert clock.getDelayedCalls() == []
    open_(factory)
    assert len(clock.getDelayedCalls()) == 1


READING = b"temperature,sensor=a value=1,seq=1i\n"


def test_a_connection_sending_only_junk_is_closed_at_the_budget():
    """
    The 100th refused line in a row (the default budget) closes the
    connection: every line is answered, then the reason, counted under
    C{junk}; the 99th does not.
    """
    factory = makeFactory()
    assert factory.junkBudget == DEFAULT_JUNK_BUDGET == 100
    protocol = open_(factory)
    for _ in range(99):
        protocol.dataReceived(b"junk\n")
    assert not protocol.transport.disconnecting
    protocol.dataReceived(b"junk\n")
    lines = protocol.transport.value().splitlines()
    assert len(lines) == 101
    assert lines[-1] == b"error: 100 lines in a row refused; closing the connection"
    assert protocol.transport.disconnecting
    assert closedFor(factory, CloseReason.junk) == 1


def test_a_reading_accepted_starts_the_junk_count_again():
    """
    Only refused lines in a row count: 99 refused, a reading, 99 refused
    leave the connection open; within one chunk, only the refused lines
    after its last reading count.
    """
    factory = makeFactory()
    protocol = open_(factory)
    protocol.dataReceived(b"junk\n" * 99)
    protocol.dataReceived(READING)
    protocol.dataReceived(b"junk\n" * 99)
    protocol.dataReceived(b"junk\n" * 50 + READING + b"junk\n" * 60)
    protocol.dataReceived(b"junk\n" * 39)
    assert not protocol.transport.disconnecting
    protocol.dataReceived(b"junk\n")
    assert protocol.transport.disconnecting
    # Blank lines are neither junk nor readings.
    other = open_(factory, 2)
    other.dataReceived(b"junk\n" * 99 + b"\n" * 500)
    assert not other.transport.disconnecting


def test_a_chunk_over_the_budget_is_answered_before_the_close():
    factory = makeFactory(junkBudget=10)
    protocol = open_(factory)
    protocol.dataReceived(b"junk\n" * 25)
    lines = protocol.transport.value().splitlines()
    assert len(lines) == 26 and lines[-1] == b"error: 10 lines in a row refused; closing the connection"


def test_no_junk_budget_when_disabled():
    factory = makeFactory(junkBudget=None)
    protocol = open_(factory)
    protocol.dataReceived(b"junk\n" * 10_000)
    assert not protocol.transport.disconnecting


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_junk_budget_must_be_a_positive_integer(bad: Any):
    with pytest.raises(ValueError, match="junkBudget"):
        makeFactory(junkBudget=bad)


UNLOGGED = "sensornet_rejected_lines_unlogged_total"


def limitedAccounting(perSecond: int = 20) -> Any:
    """
    A L{ChunkAccounting} with the server-wide limit on a fake clock, its
    log events in C{accounting.events}.
    """
    events: List[dict] = []
    clock = Clock()
    clock.advance(1000)
    metrics = ServerMetrics()
    accounting = ChunkAccounting(metrics, False, observer=events.append, clock=clock, maxRejectedLogPerSecond=perSecond)
    accounting.events = events
    accounting.clock = clock
    return accounting


def junkChunk(accounting: Any, peer: str = "10.0.2.135:1", lines: int = 1) -> None:
    from sensornet.dialects import parseLine

    chunk = [b"junk"] * lines
    accounting.chunkParsed(peer, accounting.clock.seconds(), chunk, [], [(i, parseLine(l)) for i, l in enumerate(chunk)])


def texts(events: List[dict]) -> List[str]:
    return [formatEvent(e) for e in events]


def test_rejected_lines_logged_are_limited_per_second_across_connections():
    """
    Over 20 refused lines a second from any number of peers, the rest are
    not logged one by one: one summary line at the end of the second says
    how many, and the counter has them; the next second logs again.
    """
    accounting = limitedAccounting(20)
    for i in range(30):
        junkChunk(accounting, f"10.0.2.{i % 3}:1")
    logged = texts(accounting.events)
    assert len(logged) == 20 and all(t.startswith("Rejected from 10.0.2.") for t in logged)
    assert len(accounting.clock.getDelayedCalls()) == 1
    accounting.clock.advance(1)
    assert texts(accounting.events)[20:] == ["Rejected 10 more line(s) not logged in the last second"]
    assert accounting.metrics.registry.get_sample_value(UNLOGGED) == 10
    assert accounting.clock.getDelayedCalls() == []
    junkChunk(accounting)
    assert len(accounting.events) == 22


def test_no_timer_while_nothing_is_suppressed():
    accounting = limitedAccounting(20)
    for _ in range(20):
        junkChunk(accounting)
    assert len(accounting.events) == 20
    assert accounting.clock.getDelayedCalls() == []
    assert accounting.metrics.registry.get_sample_value(UNLOGGED) == 0


def test_the_per_chunk_cap_stays_and_its_lines_are_counted_as_unlogged():
    """
    A chunk of 100 refused lines logs 10 of them and one line for the 90
    others (as before the limit); the second such chunk in the same second
    logs 10 more (20 reached); the third logs none, and its 100 go into the
    summary.
    """
    accounting = limitedAccounting(20)
    junkChunk(accounting, lines=100)
    logged = texts(accounting.events)
    assert len(logged) == 11
    assert logged[-1] == "Rejected 90 more line(s) from 10.0.2.135:1 in the same chunk, not logged one by one"
    junkChunk(accounting, lines=100)
    junkChunk(accounting, lines=100)
    assert len(accounting.events) == 22
    accounting.clock.advance(1)
    assert texts(accounting.events)[-1] == "Rejected 100 more line(s) not logged in the last second"
    assert accounting.metrics.registry.get_sample_value(UNLOGGED) == 280


def test_the_factory_flushes_the_summary_when_its_last_connection_closes():
    """
    No timer outlives the connections: the summary pending when the last
    connection closes is logged at once.
    """
    events: List[dict] = []
    factory = SensorServerFactory(ImmediateSink(), Clock(), maxRejectedLogPerSecond=2, junkBudget=None)
    assert factory.accounting.rejectedLogLimit is not None
    globalLogPublisher.addObserver(events.append)
    try:
        protocol = open_(factory)
        protocol.dataReceived(b"junk\n" * 5)
        protocol.connectionLost(Failure(Exception("gone")))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert factory.clock.getDelayedCalls() == []
    assert "Rejected 3 more line(s) not logged in the last second" in texts(events)


def test_rejected_log_limit_defaults_and_validation():
    factory = makeFactory()
    assert SensorServerFactory(ImmediateSink(), Clock()).accounting.rejectedLogLimit.perSecond == 20
    assert DEFAULT_MAX_REJECTED_LOG_PER_SECOND == 20
    assert SensorServerFactory(ImmediateSink(), Clock(), maxRejectedLogPerSecond=0).accounting.rejectedLogLimit is None
    assert SensorServerFactory(ImmediateSink(), Clock(), maxRejectedLogPerSecond=None).accounting.rejectedLogLimit is None
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match="maxRejectedLogPerSecond"):
            SensorServerFactory(ImmediateSink(), Clock(), maxRejectedLogPerSecond=bad)
    assert factory.metrics.registry.get_sample_value(UNLOGGED) == 0


def test_sweep_interval_is_a_quarter_of_the_shortest_timeout_at_most_five_seconds():
    assert makeFactory().sweepInterval() == 2.5
    assert makeFactory(handshakeTimeout=1.0).sweepInterval() == 0.25
    assert makeFactory(handshakeTimeout=3600.0).sweepInterval() == 5.0
    assert makeFactory(handshakeTimeout=None).sweepInterval() == 5.0
    assert makeFactory(handshakeTimeout=None, idleTimeout=2.0).sweepInterval() == 0.5
    assert makeFactory(handshakeTimeout=None, idleTimeout=None).sweepInterval() == 5.0


# -- over real loopback sockets ------------------------------------------------


def within(d: Any, reactor: Any, seconds: float = TIMEOUT) -> defer.Deferred:
    if not isinstance(d, defer.Deferred):
        d = defer.ensureDeferred(d)
    return d.addTimeout(seconds, reactor)


def sleep(reactor: Any, seconds: float) -> defer.Deferred:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


class Peer(Protocol):
    """
    A client connection that records what it received and when it closed.
    """

    def __init__(self) -> None:
        self.data = b""
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.reason: Optional[Failure] = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason
        self.closed.callback(None)


class Dribbler(Peer):
    """
    Sends C{payload} (all of it, again and again) every C{interval} seconds
    until the connection is gone, from a LoopingCall on the real reactor.
    """

    def __init__(self, reactor: Any, payload: bytes, interval: float) -> None:
        super().__init__()
        self.loop = LoopingCall(self.send)
        self.loop.clock = reactor
        self.payload = payload
        self.interval = interval
        self.sent = 0

    def connectionMade(self) -> None:
        self.loop.start(self.interval, now=True)

    def send(self) -> None:
        self.transport.write(self.payload)
        self.sent += 1

    def connectionLost(self, reason: Failure) -> None:
        if self.loop.running:
            self.loop.stop()
        super().connectionLost(reason)


class GoodSensor(Dribbler):
    """
    A well-behaved native sensor: one reading with the next seq every
    C{interval} seconds; C{acks} counts the acknowledgements.
    """

    def __init__(self, reactor: Any, interval: float = 0.1) -> None:
        super().__init__(reactor, b"", interval)

    def send(self) -> None:
        self.sent += 1
        self.transport.write(b"temperature,sensor=good value=21.5,seq=%di\n" % self.sent)

    @property
    def acks(self) -> int:
        return self.data.count(b"ack ")


async def startServer(reactor: Any, **config: Any) -> Any:
    server = SensorServerService(
        ServerConfig(listen=["tcp:0:interface=127.0.0.1"], http=None, store="none", logReadings=False, **config),
        reactor,
    )
    server.startService()
    (port,) = await within(server.whenListening(), reactor)
    return server, port.getHost().port


async def connect(reactor: Any, port: int, protocol: Peer) -> Any:
    return await within(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol), reactor)


async def waitUntil(reactor: Any, predicate: Any, what: str, timeout: float = TIMEOUT) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await sleep(reactor, 0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def stillAcknowledged(reactor: Any, good: "GoodSensor") -> None:
    """
    Wait for five more acknowledgements to C{good}, whose connection must
    still be open: what "a well-behaved sensor keeps its acks" means here.
    """
    acked = good.acks
    await waitUntil(reactor, lambda: good.acks >= acked + 5, "more acknowledgements")
    assert good.reason is None


async def closeAll(reactor: Any, server: Any, peers: List[Peer]) -> None:
    for peer in peers:
        if peer.reason is None and peer.transport is not None:
            peer.transport.abortConnection()
    await within(defer.DeferredList([peer.closed for peer in peers]), reactor)
    if server.running:
        await within(defer.maybeDeferred(server.stopService), reactor)


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_slowloris_connections_are_closed_while_a_good_sensor_keeps_its_acks(reactor: Any):
    """
    50 connections each sending a byte every 0.2 s and never a newline are
    all closed by a 1 s handshake deadline, each told why; a sensor on
    another connection is acknowledged throughout and stays connected.
    """
    server, port = await startServer(reactor, handshakeTimeout=1.0)
    peers: List[Peer] = []
    try:
        good = await connect(reactor, port, GoodSensor(reactor))
        peers.append(good)
        loris = [await connect(reactor, port, Dribbler(reactor, b"x", 0.2)) for _ in range(50)]
        peers.extend(loris)
        ackedBefore = good.acks
        await within(defer.gatherResults([peer.closed for peer in loris]), reactor, 10)
        for peer in loris:
            assert peer.data == b"error: no complete line within 1 s; closing the connection\n"
        assert server.metrics.registry.get_sample_value(CLOSED, {"reason": "handshake_timeout"}) == 50
        # The good sensor kept being answered and is still connected.
        acked = good.acks
        assert acked > ackedBefore
        await waitUntil(reactor, lambda: good.acks >= acked + 5, "more acknowledgements")
        assert good.reason is None
        assert len(server.factory.protocols) == 1
    finally:
        await closeAll(reactor, server, peers)


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_idle_connection_is_closed_while_a_good_sensor_stays(reactor: Any):
    """
    With a 1 s idle timeout, a connection that sent one reading and then
    nothing is told why and closed; a sensor sending every 0.1 s stays.
    """
    server, port = await startServer(reactor, idleTimeout=1.0)
    peers: List[Peer] = []
    try:
        good = await connect(reactor, port, GoodSensor(reactor))
        quiet = await connect(reactor, port, Peer())
        peers.extend([good, quiet])
        quiet.transport.write(b"temperature,sensor=quiet value=1,seq=1i\n")
        await within(quiet.closed, reactor, 10)
        assert quiet.data == b"ack 1\nerror: nothing received for 1 s; closing the connection\n"
        assert server.metrics.registry.get_sample_value(CLOSED, {"reason": "idle"}) == 1
        await stillAcknowledged(reactor, good)
    finally:
        await closeAll(reactor, server, peers)


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_junk_flooders_are_closed_after_the_budget_while_a_good_sensor_keeps_its_acks(reactor: Any):
    """
    Four connections sending nothing but refused lines, as fast as they
    can, are each closed once the budget is spent, told why; a sensor on
    another connection is acknowledged throughout.
    """
    server, port = await startServer(reactor, junkBudget=1000)
    peers: List[Peer] = []
    try:
        good = await connect(reactor, port, GoodSensor(reactor))
        peers.append(good)
        await waitUntil(reactor, lambda: good.acks >= 1, "a first acknowledgement")
        flooders = [await connect(reactor, port, Dribbler(reactor, b"not a reading\n" * 100, 0.005)) for _ in range(4)]
        peers.extend(flooders)
        await within(defer.gatherResults([peer.closed for peer in flooders]), reactor, 10)
        for peer in flooders:
            assert peer.data.endswith(b"error: 1000 lines in a row refused; closing the connection\n")
            assert peer.data.count(b"\n") >= 1001
        assert server.metrics.registry.get_sample_value(CLOSED, {"reason": "junk"}) == 4
        await stillAcknowledged(reactor, good)
    finally:
        await closeAll(reactor, server, peers)


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_log_lines_are_bounded_under_a_junk_flood(reactor: Any):
    """
    Four connections flooding refused lines for two seconds (no junk
    budget, so they keep going) write at most 20 refused lines a second to
    the log plus one summary a second (and the per-chunk summaries of the
    chunks logged), however many lines they send; a good sensor keeps its
    acknowledgements.
    """
    events: List[dict] = []
    server, port = await startServer(reactor, junkBudget=None, maxRejectedLogPerSecond=20)
    peers: List[Peer] = []
    globalLogPublisher.addObserver(events.append)
    try:
        good = await connect(reactor, port, GoodSensor(reactor))
        peers.append(good)
        await waitUntil(reactor, lambda: good.acks >= 1, "a first acknowledgement")
        flooders = [await connect(reactor, port, Dribbler(reactor, b"junk\n" * 500, 0.005)) for _ in range(4)]
        peers.extend(flooders)
        acked = good.acks
        await sleep(reactor, 2.0)
        for peer in flooders:
            peer.transport.abortConnection()
        await within(defer.gatherResults([peer.closed for peer in flooders]), reactor)
        assert good.acks >= acked + 5 and good.reason is None
    finally:
        # Lines the server still had from the flooders are logged (or
        # counted) while it closes: watch the log until it has.
        try:
            await closeAll(reactor, server, peers)
        finally:
            globalLogPublisher.removeObserver(events.append)
    logged = [formatEvent(e) for e in events if e.get("log_namespace") == "sensornet.accounting"]
    oneByOne = [t for t in logged if t.startswith("Rejected from ")]
    summaries = [t for t in logged if t.endswith("not logged in the last second")]
    # 2 s of flood open at most 3 windows of a second, and the close may
    # start one more.
    assert len(oneByOne) <= 4 * 20
    assert 1 <= len(summaries) <= 4
    refused = server.metrics.registry.get_sample_value("sensornet_lines_rejected_total", {"dialect": "unknown"})
    assert refused > 10_000
    # Every refused line is logged one by one or counted as not logged.
    assert server.metrics.registry.get_sample_value(UNLOGGED) == refused - len(oneByOne)


# -- the options ---------------------------------------------------------------


def parseServerOptions(*argv: str) -> Any:
    from sensornet.tap.server import Options

    options = Options()
    options.parseOptions(["--store", "none", "--http-auth", "none", *argv])
    return options.toConfig()


def test_guardrail_options_default_to_the_documented_values():
    config = parseServerOptions()
    assert config.handshakeTimeout == ServerConfig().handshakeTimeout == 10.0
    assert config.idleTimeout == ServerConfig().idleTimeout == 300.0
    assert config.junkBudget == ServerConfig().junkBudget == 100
    assert config.maxRejectedLogPerSecond == ServerConfig().maxRejectedLogPerSecond == 20


def test_max_rejected_log_option():
    from twisted.python import usage

    assert parseServerOptions("--max-rejected-log", "5").maxRejectedLogPerSecond == 5
    assert parseServerOptions("--max-rejected-log", "0").maxRejectedLogPerSecond is None
    with pytest.raises(usage.UsageError, match="--max-rejected-log"):
        parseServerOptions("--max-rejected-log", "-1")


def test_junk_budget_option():
    from twisted.python import usage

    assert parseServerOptions("--junk-budget", "5").junkBudget == 5
    assert parseServerOptions("--junk-budget", "0").junkBudget is None
    with pytest.raises(usage.UsageError, match="--junk-budget"):
        parseServerOptions("--junk-budget", "-1")


@pytest.mark.parametrize("option, field", [("handshake-timeout", "handshakeTimeout"), ("idle-timeout", "idleTimeout")])
@pytest.mark.parametrize("off", ["0", "none", "None"])
def test_timeout_options_zero_or_none_turn_them_off(option: str, field: str, off: str):
    assert getattr(parseServerOptions(f"--{option}", off), field) is None
    assert getattr(parseServerOptions(f"--{option}", "2.5"), field) == 2.5


@pytest.mark.parametrize("option", ["handshake-timeout", "idle-timeout"])
@pytest.mark.parametrize("bad", ["-1", "soon", "inf"])
def test_timeout_options_refuse_negative_or_nonsense(option: str, bad: str):
    from twisted.python import usage

    with pytest.raises(usage.UsageError, match=f"--{option}"):
        parseServerOptions(f"--{option}", bad)
