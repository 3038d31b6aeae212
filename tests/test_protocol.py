"""
The server protocol on a StringTransport with a controllable sink and a fake
clock: replies, their order, errors, limits, pausing.
"""

from __future__ import annotations

from typing import Dict, List

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, formatEvent
from zope.interface.verify import verifyObject

from sensornet.accounting import ChunkAccounting
from sensornet.interfaces import IChunkObserver, IPressureObserver, IReadingSink
from sensornet.metrics import ServerMetrics
from sensornet.protocol import SEED_REPLY, ImmediateSink, PauseReason, SensorServerFactory
from sensornet.reading import Reading


class HeldSink:
    """
    A sink whose submissions wait until the test settles them.
    """

    def __init__(self) -> None:
        self.calls: List[tuple] = []

    def submit(self, readings: List[Reading]) -> "Deferred[Dict[int, str]]":
        d: Deferred[Dict[int, str]] = Deferred()
        self.calls.append((list(readings), d))
        return d


class FailingSink:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def submit(self, readings):
        return fail(self.error)


class RejectingSink:
    def submit(self, readings):
        return succeed({i: "value out of range" for i, r in enumerate(readings) if r.value > 1000})


def connect(sink=None, clock=None, logReadings=True):
    """
    A factory and one connection on a StringTransport; C{events} gets what
    the server logs about its connections and their lines, in order.
    """
    clock = clock or Clock()
    events: list = []
    metrics = ServerMetrics()
    accounting = ChunkAccounting(metrics, logReadings, observer=events.append)
    factory = SensorServerFactory(sink or ImmediateSink(), clock, metrics, accounting=accounting)
    factory._log = Logger(observer=events.append)
    protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.2.135", 54812))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.2.135", 54812))
    protocol.makeConnection(transport)
    return factory, protocol, transport, clock, events


def clockAt(seconds):
    """
    A fake clock reading C{seconds}: readings stamped later than the
    factory's C{maxClockSkew} after it are refused (tests/test_clock_skew.py).
    """
    clock = Clock()
    clock.advance(seconds)
    return clock


def sample(factory, name, **labels):
    """
    The value of one series of the factory's metrics, as a scrape reads it.
    """
    return factory.metrics.registry.get_sample_value(name, labels)


def test_seed_message_gets_the_seed_reply_byte_for_byte():
    """
    The seed's message with a newline is answered exactly like the seed
    server did.
    """
    _, protocol, transport, _, _ = connect()
    protocol.dataReceived("Sensor1 - Temperatura: 25.34°C\n".encode("utf-8"))
    assert transport.value() == b"Dados recebidos com sucesso.\n"
    assert SEED_REPLY == b"Dados recebidos com sucesso.\n"


def test_native_reading_with_seq_is_acknowledged_by_seq_and_without_seq_silently():
    _, protocol, transport, _, _ = connect(clock=clockAt(1718100945))
    protocol.dataReceived(
        b"temperature,sensor=client-1,unit=C value=25.34,seq=42i 1718100942123456789\n"
        b"temperature,sensor=client-1,unit=C value=25.35 1718100944123456789\n"
    )
    assert transport.value() == b"ack 42\n"


def test_graphite_line_gets_no_reply_but_is_counted():
    factory, protocol, transport, _, _ = connect(clock=clockAt(1718100945))
    protocol.dataReceived(b"sensors.client-1.temperature 25.34 1718100942\r\n")
    assert transport.value() == b""
    assert sample(factory, "sensornet_readings_received_total", dialect="graphite") == 1


def test_malformed_line_gets_one_error_reply_and_the_connection_lives():
    factory, protocol, transport, _, _ = connect()
    protocol.dataReceived(b"temperature,sensor=a value=abc,seq=7i\n")
    reply = transport.value()
    assert reply.startswith(b"error seq=7: ") and reply.count(b"\n") == 1
    assert not transport.disconnecting
    transport.clear()
    protocol.dataReceived(b"temperature,sensor=a value=1,seq=8i\n")
    assert transport.value() == b"ack 8\n"
    assert sample(factory, "sensornet_lines_rejected_total", dialect="native") == 1


def test_binary_junk_never_raises_and_is_answered_with_errors():
    _, protocol, transport, _, _ = connect()
    protocol.dataReceived(b"\xff\xfe\x00\x01garbage\n\x80\x81 = , \\ \"\nnan nan nan\n")
    replies = transport.value().splitlines()
    assert len(replies) == 3
    assert all(r.startswith(b"error") for r in replies)
    assert not transport.disconnecting


def test_blank_lines_are_ignored():
    _, protocol, transport, _, _ = connect()
    protocol.dataReceived(b"\n\r\n   \n")
    assert transport.value() == b""
    assert not transport.disconnecting


def test_oversized_line_closes_only_after_earlier_replies_and_says_why():
    sink = HeldSink()
    _, protocol, transport, _, _ = connect(sink)
    protocol.dataReceived(b"t,sensor=a value=1,seq=1i\n" + b"x" * 5000 + b"\n")
    assert transport.value() == b""
    assert not transport.disconnecting
    sink.calls[0][1].callback({})
    lines = transport.value().splitlines()
    assert lines[0] == b"ack 1"
    assert lines[1].startswith(b"error: line longer than 4096 bytes")
    assert transport.disconnecting


def test_oversized_partial_line_closes_the_connection():
    _, protocol, transport, _, _ = connect()
    protocol.dataReceived(b"y" * 4097)
    assert transport.disconnecting
    assert b"line longer than" in transport.value()


def test_data_after_an_oversized_line_is_ignored():
    sink = HeldSink()
    _, protocol, transport, _, _ = connect(sink)
    protocol.dataReceived(b"z" * 5000 + b"\nt,sensor=a value=1,seq=1i\n")
    assert sink.calls == []
    protocol.dataReceived(b"t,sensor=a value=1,seq=2i\n")
    assert sink.calls == []


def test_seed_client_without_newline_is_answered_after_the_idle_gap():
    """
    The seed's client sends with sendall() and no terminator, then blocks in
    recv(): the message is taken once the partial line has been idle.
    """
    _, protocol, transport, clock, _ = connect()
    protocol.dataReceived("Sensor2 - Umidade: 61.20%".encode("utf-8"))
    clock.advance(0.1)
    assert transport.value() == b""
    clock.advance(0.15)
    assert transport.value() == SEED_REPLY
    # The next message, also unterminated, is answered as well.
    transport.clear()
    protocol.dataReceived("Sensor2 - Umidade: 61.25%".encode("utf-8"))
    clock.advance(0.25)
    assert transport.value() == SEED_REPLY


def test_unterminated_partial_native_line_is_not_taken_early():
    sink = HeldSink()
    _, protocol, transport, clock, _ = connect(sink)
    protocol.dataReceived(b"temperature,sensor=a value=1,se")
    clock.advance(5)
    assert sink.calls == []
    protocol.dataReceived(b"q=3i\n")
    assert sink.calls[0][0][0].seq == 3


def test_replies_keep_line_order_across_chunks():
    """
    An error reply for a later chunk waits behind acknowledgements still
    waiting for their commit.
    """
    sink = HeldSink()
    _, protocol, transport, _, _ = connect(sink)
    protocol.dataReceived(b"t,sensor=a value=1,seq=1i\n")
    protocol.dataReceived(b"bogus line\n")
    protocol.dataReceived(b"t,sensor=a value=2,seq=2i\n")
    assert transport.value() == b""
    sink.calls[1][1].callback({})
    assert transport.value() == b""
    sink.calls[0][1].callback({})
    lines = transport.value().splitlines()
    assert lines[0] == b"ack 1"
    assert lines[1].startswith(b"error")
    assert lines[2] == b"ack 2"


def test_one_chunk_is_one_submission_and_one_write():
    sink = HeldSink()
    _, protocol, transport, _, _ = connect(sink)
    writes = []
    transport.write = lambda data: writes.append(data)  # type: ignore[method-assign]
    protocol.dataReceived(b"".join(b"t,sensor=a value=%d,seq=%di\n" % (i, i) for i in range(100)))
    assert len(sink.calls) == 1 and len(sink.calls[0][0]) == 100
    sink.calls[0][1].callback({})
    assert len(writes) == 1
    assert writes[0] == b"".join(b"ack %d\n" % i for i in range(100))


def test_readings_carry_peer_and_receive_time():
    sink = HeldSink()
    clock = Clock()
    clock.advance(1718100942.5)
    _, protocol, _, _, _ = connect(sink, clock)
    protocol.dataReceived(b"t,sensor=a value=1,seq=1i\n")
    reading = sink.calls[0][0][0]
    assert reading.peer == "10.0.2.135:54812"
    assert reading.received_at == 1718100942.5


def test_store_failure_acknowledges_nothing_and_asks_for_a_resend():
    _, protocol, transport, _, _ = connect(FailingSink(RuntimeError("database is gone")))
    protocol.dataReceived(
        b"t,sensor=a value=1,seq=1i\n" + "Sensor1 - Temperatura: 25.34°C\n".encode() + b"sensors.a.t 1 2\n"
    )
    lines = transport.value().splitlines()
    assert lines[0] == b"error seq=1: not stored, try again: database is gone"
    assert lines[1] == b"error: not stored, try again: database is gone"
    assert lines[2] == b"error: 1 readings not stored, try again: database is gone"
    assert b"ack" not in transport.value() and SEED_REPLY not in transport.value()
    assert not transport.disconnecting


def test_rejected_reading_gets_an_error_and_the_others_their_acks():
    _, protocol, transport, _, _ = connect(RejectingSink())
    protocol.dataReceived(b"t,sensor=a value=1,seq=1i\nt,sensor=a value=5000,seq=2i\nt,sensor=a value=3,seq=3i\n")
    assert transport.value().splitlines() == [
        b"ack 1",
        b"error seq=2: rejected: value out of range",
        b"ack 3",
    ]


def test_writer_overload_pauses_the_heavy_senders_not_the_light_ones():
    """
    An overloaded writer pauses the connections with more than
    C{fairPending} readings awaiting commit; a connection with one reading
    awaiting keeps reading, and so does one opened while overloaded. When
    the writer recovers, the paused ones come back through the heavy
    senders' turns (tests/test_fairness.py).
    """
    sink = HeldSink()
    factory, heavy, transport, clock, _ = connect(sink)
    heavy.dataReceived(b"".join(b"t,sensor=a value=1,seq=%di\n" % i for i in range(1, 201)))
    light = factory.buildProtocol(None)
    lightTransport = StringTransport()
    light.makeConnection(lightTransport)
    light.dataReceived(b"t,sensor=b value=1,seq=1i\n")
    factory.writerOverloaded()
    assert transport.producerState == "paused"
    assert lightTransport.producerState == "producing"
    assert sample(factory, "sensornet_transports_paused") == 1
    late = factory.buildProtocol(None)
    lateTransport = StringTransport()
    late.makeConnection(lateTransport)
    assert lateTransport.producerState == "producing"
    factory.writerRecovered()
    clock.advance(0)
    assert transport.producerState == "producing"
    assert sample(factory, "sensornet_transports_paused") == 0


def test_pause_reasons_are_independent():
    """
    A full send buffer and an overloaded writer both pause; reading resumes
    only when both are gone.
    """
    factory, protocol, transport, _, _ = connect()
    protocol.pauseProducing()  # the transport's buffer is full
    factory.writerOverloaded()
    factory.writerRecovered()
    assert transport.producerState == "paused"
    protocol.resumeProducing()
    assert transport.producerState == "producing"


def test_too_many_readings_awaiting_commit_pause_the_connection():
    sink = HeldSink()
    _, protocol, transport, _, _ = connect(sink)
    protocol.maxPending = 10
    protocol.dataReceived(b"".join(b"t,sensor=a value=1,seq=%di\n" % i for i in range(11)))
    assert transport.producerState == "paused"
    sink.calls[0][1].callback({})
    assert transport.producerState == "producing"


def readingLog(events):
    """
    The rendered text of the events of the reading log (readings received
    and lines refused), with their times.
    """
    return [
        (e["log_time"], formatEvent(e))
        for e in events
        if formatEvent(e).startswith(("Received from", "Rejected"))
    ]


def readingLogOf(data):
    """
    The text of the reading log's events for C{data} sent on a new
    connection.
    """
    factory, protocol, transport, clock, events = connect()
    events.clear()
    protocol.dataReceived(data)
    return [text for _, text in readingLog(events)]


def test_reading_log_is_one_event_per_reading_in_the_seed_shape():
    """
    Every reading line is logged as its own event, "Received from PEER:
    LINE" (the seed's log.txt), stamped with the time its chunk arrived,
    over any number of chunks and connections, in the order received.
    """
    clock = Clock()
    clock.advance(1718100942.5)
    factory, protocol, transport, clock, events = connect(clock=clock)
    other = factory.buildProtocol(None)
    other.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.0.2.136", 40000)))
    events.clear()
    protocol.dataReceived(b"".join(b"t,sensor=a value=1,seq=%di\n" % i for i in range(50)))
    clock.advance(0.01)
    other.dataReceived("Sensor1 - Temperatura: 25.34°C\n".encode("utf-8"))
    logged = readingLog(events)
    assert len(logged) == 51
    assert logged[0] == (1718100942.5, "Received from 10.0.2.135:54812: t,sensor=a value=1,seq=0i")
    assert logged[-1] == (1718100942.51, "Received from 10.0.2.136:40000: Sensor1 - Temperatura: 25.34°C")
    # The factory sweeps its open connections (the guardrails) while any is
    # open; once they are closed, nothing at all is left pending.
    protocol.connectionLost(None)
    other.connectionLost(None)
    assert not clock.getDelayedCalls()


def test_reading_log_skips_blank_and_refused_lines():
    """
    A blank line is not logged; a refused line is logged as refused, with
    its reason, in its place among the readings.
    """
    data = b"t,sensor=a value=1,seq=1i\n\r\nt,sensor=a value=x,seq=2i\nt,sensor=a value=3,seq=3i\n"
    assert readingLogOf(data) == [
        "Received from 10.0.2.135:54812: t,sensor=a value=1,seq=1i",
        "Rejected from 10.0.2.135:54812 (value is not a number: 'x'): t,sensor=a value=x,seq=2i",
        "Received from 10.0.2.135:54812: t,sensor=a value=3,seq=3i",
    ]


def test_a_flood_of_refused_lines_costs_a_bounded_number_of_log_events():
    """
    Past L{ChunkAccounting.maxRejectedLogged} refused lines in one chunk,
    the rest are counted in one more event, not logged one by one; each is
    still answered and counted.
    """
    factory, protocol, transport, clock, events = connect()
    # Without the junk budget (tests/test_guardrails.py), which would close
    # the connection after this chunk and log that too.
    factory.junkBudget = None
    events.clear()
    protocol.dataReceived(b"junk\n" * 100)
    assert len(transport.value().splitlines()) == 100
    assert sample(factory, "sensornet_lines_rejected_total", dialect="unknown") == 100
    texts = [formatEvent(e) for e in events]
    assert len(texts) == ChunkAccounting.maxRejectedLogged + 1
    assert texts[-1] == "Rejected 90 more line(s) from 10.0.2.135:54812 in the same chunk, not logged one by one"


def test_log_text_is_never_a_format_string():
    """
    Braces in a wire line are logged as they are, not taken for fields.
    """
    assert readingLogOf(b"t,sensor=a,x={peer}} value=1\nsensors.{a}.t nope 1\n") == [
        "Received from 10.0.2.135:54812: t,sensor=a,x={peer}} value=1",
        "Rejected from 10.0.2.135:54812 (value is not a number: 'nope'): sensors.{a}.t nope 1",
    ]


def test_connection_events_keep_their_place_in_the_reading_log():
    """
    The log never shows a reading after its connection closed.
    """
    factory, protocol, transport, clock, events = connect()
    events.clear()
    protocol.dataReceived(b"t,sensor=a value=1,seq=1i\n")
    protocol.connectionLost(None)
    texts = [formatEvent(e) for e in events]
    assert texts == [
        "Received from 10.0.2.135:54812: t,sensor=a value=1,seq=1i",
        "Connection from 10.0.2.135:54812 closed",
    ]
    assert not clock.getDelayedCalls()


def test_reading_log_can_be_turned_off():
    """
    Without the reading log, readings are still counted and answered, and
    refused lines still logged.
    """
    factory, protocol, transport, clock, events = connect(logReadings=False)
    events.clear()
    protocol.dataReceived(b"t,sensor=a value=1,seq=1i\nnot a sensor reading\n")
    assert [text.split(" (")[0] for _, text in readingLog(events)] == ["Rejected from 10.0.2.135:54812"]
    assert transport.value().startswith(b"ack 1\nerror: ")
    assert sample(factory, "sensornet_readings_received_total", dialect="native") == 1


def test_oversized_line_is_counted_and_logged():
    factory, protocol, transport, clock, events = connect()
    events.clear()
    protocol.dataReceived(b"x" * 5000)
    assert sample(factory, "sensornet_lines_oversized_total") == 1
    assert [formatEvent(e) for e in events] == [
        "Closing connection from 10.0.2.135:54812: line longer than 4096 bytes"
    ]


def test_pause_reasons_are_named_constants_and_a_typo_is_an_error():
    """
    Pausing or resuming for anything but a L{PauseReason} raises, so a
    misspelt reason can never pause a connection for good.
    """
    factory, protocol, transport, clock, events = connect()
    with pytest.raises(TypeError):
        protocol.pauseReading("server stopping")
    with pytest.raises(TypeError):
        protocol.resumeReading("server stopping")
    with pytest.raises(AttributeError):
        PauseReason.serverStoping
    assert transport.producerState == "producing"
    protocol.pauseReading(PauseReason.serverStopping)
    assert transport.producerState == "paused"


def test_seams_provide_their_interfaces():
    """
    The chunk observer, the pressure observer (the factory) and the
    immediate sink provide the interfaces they are used through.
    """
    factory, protocol, transport, clock, events = connect()
    assert verifyObject(IChunkObserver, factory.accounting)
    assert verifyObject(IChunkObserver, ChunkAccounting(ServerMetrics()))
    assert verifyObject(IPressureObserver, factory)
    assert verifyObject(IReadingSink, ImmediateSink())


def test_the_default_accounting_counts_on_the_factory_metrics():
    """
    A factory given no chunk observer makes its own on its metrics: what
    the server's service relies on.
    """
    factory = SensorServerFactory(ImmediateSink(), Clock(), logReadings=False)
    assert isinstance(factory.accounting, ChunkAccounting)
    assert factory.logReadings is False
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(b"t,sensor=a value=1\n")
    assert sample(factory, "sensornet_readings_received_total", dialect="native") == 1


def test_connected_sensors_follow_connections():
    factory, protocol, transport, _, _ = connect()
    protocol.dataReceived(b"t,sensor=a value=1\nt,sensor=b value=1\n")
    assert set(factory.connectedSensors()) == {"a", "b"}
    protocol.connectionLost(None)
    assert set(factory.connectedSensors()) == set()
    assert sample(factory, "sensornet_connections_open") == 0
