"""
Simulated sensors on fake time and fake connections: cadence, outbox,
acknowledgements, resends, reconnects, spool.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import clientFromString
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage

from sensornet.client import ReplyKind, SimulatedSensor, parseReply, serverEndpointString
from sensornet.dialects import parseLine
from sensornet.outbox import Outbox, SpoolOutbox
from sensornet.simulate import KINDS, RandomWalk
from sensornet.tap import client as clienttap
from sensornet.wire import ACK_PREFIX, ERROR_SEQ_PREFIX, NOT_STORED, REJECTED


class Harness:
    """
    A sensor wired to a MemoryReactorClock; C{connect()} completes the
    pending connection attempt onto a StringTransport.
    """

    def __init__(self, kind="temperature", interval=None, outbox=None, **kw):
        self.reactor = MemoryReactorClock()
        self.sensor = SimulatedSensor(
            "client-1", kind, KINDS[kind],
            clientFromString(self.reactor, "tcp:host=127.0.0.1:port=5000"),
            self.reactor, interval=interval, rng=random.Random(1), outbox=outbox,
            retryPolicy=lambda attempt: 1.0, **kw,
        )
        self.transport = None

    def connect(self):
        host, port, factory, _, _ = self.reactor.tcpClients.pop()
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(self.transport)
        self.protocol = protocol
        return protocol

    def sentLines(self):
        lines = self.transport.value().splitlines()
        self.transport.clear()
        return lines

    def reply(self, text: bytes):
        self.protocol.dataReceived(text)


@pytest.mark.parametrize("kind, interval", [("temperature", 2.0), ("humidity", 3.0)])
def test_default_cadence_is_the_seeds(kind, interval):
    """
    Temperature ticks every 2.0 s and humidity every 3.0 s, exactly.
    """
    h = Harness(kind)
    h.sensor.startService()
    h.connect()
    times = []
    for _ in range(4):
        for line in h.sentLines():
            reading = parseLine(line)
            times.append(reading.ts)
        h.reactor.advance(interval)
    assert times == [0.0, interval, 2 * interval, 3 * interval]


def test_interval_option_overrides_the_default():
    h = Harness("humidity", interval=0.5)
    h.sensor.startService()
    h.connect()
    h.sentLines()
    h.reactor.advance(0.5)
    assert len(h.sentLines()) == 1


def test_readings_are_native_lines_with_increasing_seq_and_realistic_values():
    h = Harness("humidity")
    h.sensor.startService()
    h.connect()
    readings = []
    for _ in range(50):
        for line in h.sentLines():
            readings.append(parseLine(line))
            h.reply(b"ack %d\n" % readings[-1].seq)
        h.reactor.advance(3.0)
    seqs = [r.seq for r in readings]
    assert seqs == list(range(seqs[0], seqs[0] + 50))
    assert all(r.sensor == "client-1" and r.kind == "humidity" and r.unit == "%" for r in readings)
    assert all(30.0 <= r.value <= 90.0 for r in readings)


def test_acknowledged_readings_leave_the_outbox():
    h = Harness()
    h.sensor.startService()
    h.connect()
    first = parseLine(h.sentLines()[0])
    assert len(h.sensor.outbox) == 1
    h.reply(b"ack %d\n" % first.seq)
    assert len(h.sensor.outbox) == 0


def test_readings_made_while_disconnected_are_sent_on_connect_in_order():
    h = Harness()
    h.sensor.startService()
    for _ in range(3):
        h.reactor.advance(2.0)  # four readings (t=0, 2, 4, 6), no connection yet
    assert len(h.sensor.outbox) == 4
    h.connect()
    seqs = [parseLine(line).seq for line in h.sentLines()]
    assert len(seqs) == 4 and seqs == sorted(seqs)


def test_unacknowledged_readings_are_resent_after_a_reconnect():
    h = Harness()
    h.sensor.startService()
    h.connect()
    sent = [parseLine(line).seq for line in h.sentLines()]
    h.reply(b"ack %d\n" % sent[0])
    h.reactor.advance(2.0)
    second = [parseLine(line).seq for line in h.sentLines()]
    h.transport.loseConnection()
    h.protocol.connectionLost(None)
    h.reactor.advance(1.0)  # the retry policy waits 1 s
    h.connect()
    again = [parseLine(line).seq for line in h.sentLines()]
    assert again == second


def test_unacknowledged_reading_is_resent_on_the_same_connection_after_the_ack_timeout():
    h = Harness(ackTimeout=5.0)
    h.sensor.startService()
    h.connect()
    first = parseLine(h.sentLines()[0]).seq
    h.reactor.advance(2.0)
    assert [parseLine(line).seq for line in h.sentLines()] == [first + 1]
    h.reactor.advance(2.0)
    h.reactor.advance(2.0)  # t=6: first is 6 s old
    seqs = [parseLine(line).seq for line in h.sentLines()]
    assert first in seqs


def test_resends_continue_after_the_loop_stops_and_between_slow_ticks():
    """
    Resending does not wait for the next reading: with a 60 s interval and a
    5 s ack timeout, an unacknowledged reading goes out again at 5 s.
    """
    h = Harness(interval=60.0, ackTimeout=5.0)
    h.sensor.startService()
    h.connect()
    first = parseLine(h.sentLines()[0]).seq
    h.sensor.loop.stop()
    h.reactor.advance(5.0)
    assert [parseLine(line).seq for line in h.sentLines()] == [first]
    h.reply(b"ack %d\n" % first)
    h.reactor.advance(5.0)
    assert h.sentLines() == []
    assert not h.reactor.getDelayedCalls()


def test_retry_reply_makes_the_reading_due_again_and_rejected_drops_it():
    h = Harness()
    h.sensor.startService()
    h.connect()
    first = parseLine(h.sentLines()[0]).seq
    h.reply(b"error seq=%d: not stored, try again: database is gone\n" % first)
    h.reactor.advance(2.0)
    seqs = [parseLine(line).seq for line in h.sentLines()]
    assert seqs == [first, first + 1]
    h.reply(b"error seq=%d: rejected: value out of range\n" % first)
    assert first not in h.sensor.outbox


def test_a_silent_connection_is_dropped_so_a_new_one_is_made():
    h = Harness(deadTimeout=7.0)
    h.sensor.startService()
    h.connect()
    for _ in range(4):
        h.reactor.advance(2.0)
    assert h.transport.disconnecting or h.transport.disconnected


def test_full_outbox_drops_the_oldest_and_counts_it():
    outbox = Outbox(maxSize=3)
    assert outbox.add(1, b"a") == []
    outbox.add(2, b"b")
    outbox.add(3, b"c")
    assert outbox.add(4, b"d") == [1]
    assert outbox.dropped == 1
    assert [line for line in outbox.takeDue(0.0, 10.0)[0]] == [b"b", b"c", b"d"]


def test_spool_keeps_the_outbox_and_the_seq_across_a_restart(tmp_path):
    path = str(tmp_path / "spool.db")
    spool = SpoolOutbox(path, "client-1")
    spool.add(100, b"line-100")
    spool.add(101, b"line-101")
    spool.acknowledge(100)
    spool.close()
    again = SpoolOutbox(path, "client-1")
    assert again.takeDue(0.0, 10.0)[0] == [b"line-101"]
    assert again.lastSeq() == 101
    # A restarted sensor whose clock went backwards still numbers past it.
    reactor = MemoryReactorClock()
    sensor = SimulatedSensor(
        "client-1", "temperature", KINDS["temperature"],
        clientFromString(reactor, "tcp:host=127.0.0.1:port=5000"), reactor, outbox=again,
    )
    assert sensor.nextSeq == 102
    other = SpoolOutbox(path, "client-2")
    assert len(other) == 0
    again.close()
    other.close()


def test_seq_starts_from_the_clock_so_a_restart_never_reuses_one():
    reactor = MemoryReactorClock()
    reactor.advance(1_700_000_000.25)
    sensor = SimulatedSensor(
        "s", "temperature", KINDS["temperature"],
        clientFromString(reactor, "tcp:host=127.0.0.1:port=5000"), reactor,
    )
    assert sensor.nextSeq == 1_700_000_000_250_000


def test_random_walk_is_reproducible_and_bounded():
    a = RandomWalk(KINDS["temperature"], random.Random(7))
    b = RandomWalk(KINDS["temperature"], random.Random(7))
    va = [a.next() for _ in range(2000)]
    assert va == [b.next() for _ in range(2000)]
    assert all(15.0 <= v <= 35.0 for v in va)
    assert max(abs(x - y) for x, y in zip(va, va[1:])) <= 1.0


@pytest.mark.parametrize(
    "given, expected",
    [
        ("10.0.1.10", "tcp:host=10.0.1.10:port=5000"),
        ("server.example:6000", "tcp:host=server.example:port=6000"),
        ("[::1]:5001", "tcp:host=\\:\\:1:port=5001"),
        ("tcp:host=h:port=1", "tcp:host=h:port=1"),
        ("unix:/tmp/s.sock", "unix:/tmp/s.sock"),
        ("tls:server.example:5000", "tls:server.example:5000"),
        ("localhost", "tcp:host=localhost:port=5000"),
    ],
)
def test_server_option_takes_host_port_or_an_endpoint(given, expected):
    assert serverEndpointString(given) == expected


def test_server_option_refuses_a_bad_port():
    with pytest.raises(ValueError):
        serverEndpointString("host:http")


def test_reply_parsing():
    """
    The reply texts of docs/protocol.md parse to what they mean.
    """
    assert parseReply(b"ack 5\r\n".rstrip(b"\n")).seq == 5
    assert parseReply(b"ack 5").kind is ReplyKind.ack
    assert parseReply(b"error seq=9: not stored, try again: x").kind is ReplyKind.retry
    assert parseReply(b"error seq=9: rejected: x").kind is ReplyKind.rejected
    assert parseReply(b"error seq=9: sensor tag missing").kind is ReplyKind.rejected
    assert parseReply(b"Dados recebidos com sucesso.").kind is ReplyKind.other
    assert parseReply(b"ack nope").kind is ReplyKind.other


def test_client_options_make_one_sensor_per_name():
    options = clienttap.Options()
    options.parseOptions(["--kind", "humidity", "--server", "10.0.1.10", "--sensors", "3", "--sensor", "h"])
    reactor = MemoryReactorClock()
    service = clienttap.makeService(options, reactor)
    assert [s.name for s in service.sensors] == ["h-1", "h-2", "h-3"]
    with pytest.raises(usage.UsageError):
        clienttap.Options().parseOptions(["--kind", "pressure"])


def test_not_stored_reply_as_the_server_writes_it_parses_as_retry():
    """
    Round trip over the shared texts of L{sensornet.wire}: the server's
    "not stored" reply, built from the constants exactly as
    docs/protocol.md spells it, means "send it again" to the client; the
    "rejected" reply means "do not".
    """
    notStored = f"{ERROR_SEQ_PREFIX}42: {NOT_STORED}: database is locked\n".encode("utf-8")
    reply = parseReply(notStored.rstrip(b"\n"))
    assert (reply.kind, reply.seq) == (ReplyKind.retry, 42)
    rejected = parseReply(f"{ERROR_SEQ_PREFIX}43: {REJECTED}: CHECK constraint failed".encode("utf-8"))
    assert (rejected.kind, rejected.seq) == (ReplyKind.rejected, 43)
    ack = parseReply(f"{ACK_PREFIX}44".encode("utf-8"))
    assert (ack.kind, ack.seq) == (ReplyKind.ack, 44)


def test_wire_constants_spell_the_replies_docs_protocol_md_promises():
    """
    The constants both ends use are the documented texts, so a typo in one
    of them fails here rather than on both ends at once.
    """
    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text("utf-8")
    assert f"`{ERROR_SEQ_PREFIX}<seq>: {NOT_STORED}: <reason>\\n`" in doc
    assert f"`{ERROR_SEQ_PREFIX}<seq>: {REJECTED}: <reason>\\n`" in doc
    assert f"`{ACK_PREFIX}<seq>\\n`" in doc


def test_sensor_names_what_it_measures_and_how_it_behaves_apart():
    """
    C{kindName} is the text its readings carry; C{kind} the L{Kind} its
    values follow.
    """
    h = Harness("humidity")
    assert h.sensor.kindName == "humidity"
    assert h.sensor.kind is KINDS["humidity"]
    h.sensor.startService()
    h.connect()
    reading = parseLine(h.sentLines()[0])
    assert (reading.kind, reading.unit) == ("humidity", KINDS["humidity"].unit)


def test_a_sensor_given_no_metrics_counts_into_its_own():
    """
    Without exported metrics a sensor still counts, into a private
    registry: no stand-in that accepts any call.
    """
    h = Harness()
    h.sensor.startService()
    h.connect()
    seq = parseLine(h.sentLines()[0]).seq
    h.reply(b"ack %d\n" % seq)
    registry = h.sensor.metrics.registry
    assert registry.get_sample_value("sensornet_client_readings_sent_total") == 1
    assert registry.get_sample_value("sensornet_client_acks_received_total") == 1
    assert not hasattr(h.sensor.metrics, "noSuchMetric")
