"""
Fairness (issue 10, item 8): heavy senders take turns, and when the store
writer is overloaded the heaviest senders are paused first, so a sensor at
its cadence keeps its acknowledgements flowing while others flood. Proved on
StringTransports and a fake clock, and over real loopback sockets with a
real SQLite store.
"""

from __future__ import annotations

import socket
from typing import Any, Dict, List, Set

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, LoopingCall
from twisted.internet.testing import StringTransport

from sensornet.metrics import ServerMetrics
from sensornet.protocol import PauseReason, SensorProtocol, SensorServerFactory
from sensornet.reading import Reading

from test_guardrails import GoodSensor, Peer, closeAll, connect, sleep, waitUntil, within
from sensornet.server import SensorServerService, ServerConfig


class HeldSink:
    """
    A sink whose submissions wait until the test settles them, with a
    C{backlog} like the store writer's.
    """

    def __init__(self) -> None:
        self.calls: List[tuple] = []
        self.backlog = 0

    def submit(self, readings: List[Reading]) -> "Deferred[Dict[int, str]]":
        d: Deferred[Dict[int, str]] = Deferred()
        self.calls.append((list(readings), d))
        return d

    def settleAll(self) -> None:
        calls, self.calls = self.calls, []
        for _, d in calls:
            d.callback({})


def makeFactory(sink: Any) -> SensorServerFactory:
    return SensorServerFactory(sink, Clock(), ServerMetrics(), logReadings=False)


def open_(factory: SensorServerFactory, port: int) -> Any:
    address = IPv4Address("TCP", "10.0.0.1", port)
    protocol = factory.buildProtocol(address)
    protocol.makeConnection(StringTransport(peerAddress=address))
    return protocol


def chunk(sensor: str, count: int, start: int = 1) -> bytes:
    return b"".join(b"t,sensor=%s value=1,seq=%di\n" % (sensor.encode(), i) for i in range(start, start + count))


def reading(protocol: SensorProtocol) -> bool:
    return protocol.transport.producerState == "producing"


def turn(factory: SensorServerFactory) -> None:
    """
    One reactor iteration's turns: run the call due now, but not the one
    it schedules for the next iteration (a real reactor runs a call made
    by a timed call at its next iteration; C{Clock.advance} would run it
    at once).
    """
    call = factory._turnCall
    assert call is not None and call.getTime() <= factory.clock.seconds()
    factory.clock.calls.remove(call)
    call.func(*call.args, **call.kw)


def test_a_heavy_chunk_pauses_its_connection_until_its_turn():
    """
    A chunk of C{heavyChunk} readings or more pauses its connection, for
    the fair-share reason only; its turn comes at the next reactor
    iteration (a heavy sender alone loses nothing); a light connection is
    never paused.
    """
    sink = HeldSink()
    factory = makeFactory(sink)
    heavy = open_(factory, 1)
    light = open_(factory, 2)
    heavy.dataReceived(chunk("a", factory.heavyChunk))
    light.dataReceived(chunk("b", 1))
    assert not reading(heavy) and heavy._pauses == {PauseReason.fairShare}
    assert reading(light)
    factory.clock.advance(0)
    assert reading(heavy)
    heavy.dataReceived(chunk("a", factory.heavyChunk - 1, factory.heavyChunk + 1))
    assert reading(heavy)


def test_heavy_senders_take_turns_a_few_per_iteration_in_order():
    """
    Ten heavy senders waiting get C{heavyTurns} turns per iteration, first
    come first served; a light sensor reads throughout.
    """
    factory = makeFactory(HeldSink())
    heavies = [open_(factory, port) for port in range(1, 11)]
    light = open_(factory, 99)
    for index, protocol in enumerate(heavies):
        protocol.dataReceived(chunk(f"h{index}", 600))
    assert not any(reading(p) for p in heavies)
    assert factory.heavyTurns == 4
    turn(factory)
    assert [reading(p) for p in heavies] == [True] * 4 + [False] * 6
    # The first four read a heavy chunk again: back to the end of the line.
    for index, protocol in enumerate(heavies[:4]):
        protocol.dataReceived(chunk(f"h{index}", 600, 601))
    turn(factory)
    assert [reading(p) for p in heavies] == [False] * 4 + [True] * 4 + [False] * 2
    light.dataReceived(chunk("light", 1))
    assert reading(light)
    turn(factory)
    assert [reading(p) for p in heavies] == [True] * 2 + [False] * 2 + [True] * 6


def test_turns_wait_while_the_writer_backlog_is_deep():
    """
    While the sink's backlog is over C{heavyBacklog}, no heavy sender gets
    a turn; it comes once the backlog is back under it.
    """
    sink = HeldSink()
    factory = makeFactory(sink)
    heavy = open_(factory, 1)
    heavy.dataReceived(chunk("a", 600))
    sink.backlog = factory.heavyBacklog + 1
    factory.clock.advance(0)
    factory.clock.advance(0.01)
    assert not reading(heavy)
    sink.backlog = 0
    factory.clock.advance(factory.turnRetry)
    assert reading(heavy)
    assert factory._turnCall is None


def test_overloaded_writer_pauses_the_heaviest_first_and_they_come_back_in_turns():
    """
    At the overload, connections with more than C{fairPending} readings
    awaiting commit are paused; a light one keeps reading and one that
    becomes heavy while overloaded is paused at its next chunk. No turn is
    given while overloaded. At recovery the paused ones come back through
    the turns, the lightest first.
    """
    sink = HeldSink()
    factory = makeFactory(sink)
    big = open_(factory, 1)
    medium = open_(factory, 2)
    light = open_(factory, 3)
    big.dataReceived(chunk("big", 300))
    medium.dataReceived(chunk("medium", 150))
    light.dataReceived(chunk("light", 1))
    factory.writerOverloaded()
    assert not reading(big) and not reading(medium) and reading(light)
    assert big._pauses == {PauseReason.writerOverloaded}
    late = open_(factory, 4)
    assert reading(late)
    late.dataReceived(chunk("late", 50))
    assert reading(late)
    late.dataReceived(chunk("late", 60, 51))
    assert not reading(late)
    light.dataReceived(chunk("light", 1, 2))
    assert reading(light)
    factory.clock.advance(0)
    assert not reading(big)
    factory.heavyTurns = 1
    factory.writerRecovered()
    assert [reading(p) for p in (late, medium, big)] == [False] * 3
    turn(factory)
    assert [reading(p) for p in (late, medium, big)] == [True, False, False]
    turn(factory)
    turn(factory)
    assert [reading(p) for p in (late, medium, big)] == [True, True, True]
    assert factory.metrics.registry.get_sample_value("sensornet_transports_paused") == 0


def test_no_turn_timer_is_left_once_every_connection_is_gone():
    """
    Waiting for the writer's backlog retries every C{turnRetry} seconds,
    but not once the heavy senders are gone: a stopped server leaves no
    timer pending.
    """
    sink = HeldSink()
    factory = makeFactory(sink)
    heavy = open_(factory, 1)
    heavy.dataReceived(chunk("a", 600))
    sink.backlog = factory.heavyBacklog + 1
    factory.clock.advance(0)
    assert factory._turnCall is not None
    heavy.connectionLost(None)
    assert factory._turnCall is None
    assert not factory.clock.getDelayedCalls()


def test_a_closed_connection_leaves_the_line():
    factory = makeFactory(HeldSink())
    first = open_(factory, 1)
    second = open_(factory, 2)
    factory.heavyTurns = 1
    first.dataReceived(chunk("a", 600))
    second.dataReceived(chunk("b", 600))
    first.connectionLost(None)
    factory.clock.advance(0)
    assert reading(second)
    assert not factory._waitingTurn


# -- over real loopback sockets, with a real SQLite store ---------------------------


class Flooder(Peer):
    """
    Sends chunks of 1,000 native readings of its own sensor (next seqs each
    time) every C{interval} seconds, and never reads a byte: it stops its
    own transport reading at once, so the server's replies pile up.
    """

    def __init__(self, reactor: Any, name: str, interval: float = 0.005) -> None:
        super().__init__()
        self.loop = LoopingCall(self.send)
        self.loop.clock = reactor
        self.template = (b"t,sensor=%s,unit=C value=20.5,seq=%%di\n" % name.encode()) * 1000
        self.seq = 1
        self.interval = interval

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        self.loop.start(self.interval, now=True)

    def send(self) -> None:
        self.transport.write(self.template % tuple(range(self.seq, self.seq + 1000)))
        self.seq += 1000

    def connectionLost(self, reason: Any) -> None:
        if self.loop.running:
            self.loop.stop()
        super().connectionLost(reason)


@pytest.mark.timeout(120)
@pytest_twisted.ensureDeferred
async def test_a_sensor_keeps_its_acks_while_50_connections_flood_without_reading(
    reactor: Any, tmp_path: Any, monkeypatch: Any
):
    """
    50 connections send readings as fast as the server takes them and never
    read their acknowledgements, against a server storing into SQLite; a
    sensor sending a reading every 0.1 s on another connection gets every
    acknowledgement, in order, and is never paused, while the flooders
    are: they wait for their turns, or for the overloaded writer.
    """
    server = SensorServerService(
        ServerConfig(
            listen=["tcp:0:interface=127.0.0.1"], http=None, store=f"sqlite:{tmp_path / 'fair.db'}",
            logReadings=False,
        ),
        reactor,
    )
    server.startService()
    (port,) = await within(server.whenListening(), reactor)
    port = port.getHost().port
    factory = server.factory
    paused: Dict[Any, Set[Any]] = {}
    original = SensorProtocol.pauseReading

    def recordPause(protocol: SensorProtocol, reason: Any) -> None:
        paused.setdefault(protocol, set()).add(reason)
        original(protocol, reason)

    monkeypatch.setattr(SensorProtocol, "pauseReading", recordPause)
    peers: List[Peer] = []
    try:
        good = await connect(reactor, port, GoodSensor(reactor))
        peers.append(good)
        await waitUntil(reactor, lambda: good.acks >= 1, "a first acknowledgement")
        for index in range(50):
            peers.append(await connect(reactor, port, Flooder(reactor, f"flood-{index}")))
        flooders = peers[1:]
        acked = good.acks
        await waitUntil(reactor, lambda: good.acks >= acked + 30, "30 more acknowledgements", timeout=60)
        assert good.reason is None
        sent = good.sent
        # Every acknowledgement, in order, for what was sent until then.
        assert good.data.startswith(b"".join(b"ack %d\n" % seq for seq in range(1, acked + 31)))
        goodPort = good.transport.getHost().port
        (goodProtocol,) = [p for p in factory.protocols if p.transport.getPeer().port == goodPort]
        assert goodProtocol not in paused, paused.get(goodProtocol)
        # What a peer that never reads can have in flight is bounded by a
        # small send buffer (Linux reports it doubled), not one grown to MB.
        handle = goodProtocol.transport.getHandle()
        assert handle.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * factory.sendBufferSize
        pausedFlooders = [p for p in paused if p is not goodProtocol]
        assert len(pausedFlooders) >= 40
        reasons = set().union(*paused.values())
        assert reasons & {PauseReason.fairShare, PauseReason.writerOverloaded}
        assert all(f.reason is None for f in flooders)
        assert sent >= acked + 30
    finally:
        await closeAll(reactor, server, peers)
