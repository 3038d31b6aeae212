"""
The server protocol on a StringTransport with a controllable sink and a fake
clock: replies, their order, errors, limits, pausing.
"""

from __future__ import annotations

from typing import Dict, List

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger

from sensornet.protocol import SEED_REPLY, ImmediateSink, SensorServerFactory
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
    clock = clock or Clock()
    factory = SensorServerFactory(sink or ImmediateSink(), clock, logReadings=logReadings)
    events: list = []
    factory._log = Logger(observer=events.append)
    protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.2.135", 54812))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.2.135", 54812))
    protocol.makeConnection(transport)
    return factory, protocol, transport, clock, events


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
    _, protocol, transport, _, _ = connect()
    protocol.dataReceived(
        b"temperature,sensor=client-1,unit=C value=25.34,seq=42i 1718100942123456789\n"
        b"temperature,sensor=client-1,unit=C value=25.35 1718100944123456789\n"
    )
    assert transport.value() == b"ack 42\n"


def test_graphite_line_gets_no_reply_but_is_counted():
    factory, protocol, transport, _, _ = connect()
    protocol.dataReceived(b"sensors.client-1.temperature 25.34 1718100942\r\n")
    assert transport.value() == b""
    assert factory.metrics.readingsReceived.labels("graphite")._value.get() == 1


def test_malformed_line_gets_one_error_reply_and_the_connection_lives():
    factory, protocol, transport, _, _ = connect()
    protocol.dataReceived(b"temperature,sensor=a value=abc,seq=7i\n")
    reply = transport.value()
    assert reply.startswith(b"error seq=7: ") and reply.count(b"\n") == 1
    assert not transport.disconnecting
    transport.clear()
    protocol.dataReceived(b"temperature,sensor=a value=1,seq=8i\n")
    assert transport.value() == b"ack 8\n"
    assert sum(factory.metrics.linesRejected.labels(d)._value.get() for d in ("native", "unknown")) == 1


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


def test_writer_overload_pauses_every_connection_until_it_recovers():
    factory, protocol, transport, _, _ = connect()
    factory.writerOverloaded()
    assert transport.producerState == "paused"
    assert factory.metrics.transportsPaused._value.get() == 1
    # A connection opened while overloaded starts paused.
    late = factory.buildProtocol(None)
    lateTransport = StringTransport()
    late.makeConnection(lateTransport)
    assert lateTransport.producerState == "paused"
    factory.writerRecovered()
    assert transport.producerState == "producing"
    assert lateTransport.producerState == "producing"
    assert factory.metrics.transportsPaused._value.get() == 0


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


def test_reading_log_lines_in_the_seed_shape_coalesced_into_one_event():
    """
    Every reading line is logged as "Received from PEER: LINE", and what
    arrives within the log interval, over any number of chunks and
    connections, is one log event.
    """
    factory, protocol, transport, clock, events = connect()
    other = factory.buildProtocol(None)
    other.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.0.2.136", 40000)))
    events.clear()
    protocol.dataReceived(b"".join(b"t,sensor=a value=1,seq=%di\n" % i for i in range(50)))
    other.dataReceived("Sensor1 - Temperatura: 25.34°C\n".encode("utf-8"))
    assert [e for e in events if "text" in e] == []
    clock.advance(factory.readingLogInterval)
    readingEvents = [e for e in events if "text" in e]
    assert len(readingEvents) == 1
    lines = str(readingEvents[0]["text"]).splitlines()
    assert len(lines) == 51
    assert lines[0] == "Received from 10.0.2.135:54812: t,sensor=a value=1,seq=0i"
    assert lines[-1] == "Received from 10.0.2.136:40000: Sensor1 - Temperatura: 25.34°C"
    assert not clock.getDelayedCalls()


def test_connection_events_keep_their_place_in_the_reading_log():
    """
    A connection closing flushes the reading lines before it, so the log
    never shows a reading after its connection closed.
    """
    factory, protocol, transport, clock, events = connect()
    events.clear()
    protocol.dataReceived(b"t,sensor=a value=1,seq=1i\n")
    protocol.connectionLost(None)
    texts = [str(e.get("text", e.get("log_format"))) for e in events]
    assert texts[0].startswith("Received from 10.0.2.135:54812: ")
    assert "closed" in texts[1]
    assert not clock.getDelayedCalls()


def test_reading_log_can_be_turned_off():
    factory, protocol, transport, clock, events = connect(logReadings=False)
    protocol.dataReceived(b"t,sensor=a value=1,seq=1i\n")
    clock.advance(factory.readingLogInterval)
    assert [e for e in events if "text" in e] == []
    assert transport.value() == b"ack 1\n"


def test_connected_sensors_follow_connections():
    factory, protocol, transport, _, _ = connect()
    protocol.dataReceived(b"t,sensor=a value=1\nt,sensor=b value=1\n")
    assert set(factory.connectedSensors()) == {"a", "b"}
    protocol.connectionLost(None)
    assert set(factory.connectedSensors()) == set()
    assert factory.metrics.connectionsOpen._value.get() == 0
