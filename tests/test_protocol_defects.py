"""
Regression tests for the defects a hostile test run found in the sensor
protocol (issue 8); each of them failed on the protocol before its fix.

  - a seed message split in transit was stored truncated;
  - log.txt was no longer the seed's (readings without their own timestamp);
  - sensor input reached log.txt raw, and rejected lines were logged as
    received;
  - a 4096-byte line ending in CRLF closed the connection;
  - C{readings_received{dialect="unknown"}} was exported, always 0.
"""

from __future__ import annotations

import re
from io import StringIO
from typing import Any, Callable, Dict, List, Optional

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatTime, textFileLogObserver

from sensornet.protocol import SEED_REPLY, ImmediateSink, SensorProtocol, SensorServerFactory
from sensornet.reading import Reading

PEER = IPv4Address("TCP", "10.0.2.135", 54812)


class RecordingSink:
    """
    A sink that keeps every reading it is given and stores them at once.
    """

    def __init__(self) -> None:
        self.readings: List[Reading] = []

    def submit(self, readings: List[Reading]) -> "Deferred[Dict[int, str]]":
        self.readings.extend(readings)
        return succeed({})


def connect(
    sink: Any = None, clock: Optional[Clock] = None, observer: Optional[Callable[[Any], None]] = None
) -> "tuple[SensorServerFactory, SensorProtocol, StringTransport, Clock]":
    """
    A server factory and one connection from L{PEER} on a StringTransport;
    what the server logs about the connection's lines goes to C{observer}.
    """
    from sensornet.accounting import ChunkAccounting
    from sensornet.metrics import ServerMetrics

    clock = clock or Clock()
    metrics = ServerMetrics()
    accounting = ChunkAccounting(metrics, observer=observer or (lambda event: None))
    factory = SensorServerFactory(sink or ImmediateSink(), clock, metrics, accounting=accounting)
    protocol = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    protocol.makeConnection(transport)
    return factory, protocol, transport, clock


# -- a seed message split in transit --------------------------------------

SPLIT_MESSAGES = [
    ("splitseed - Temperatura: 25.34°C", 25.34, "C"),
    ("Sensor2 - Umidade: 61.20%", 61.2, "%"),
]


@pytest.mark.parametrize(
    "message, cut, value, unit",
    [
        (message, cut, value, unit)
        for message, value, unit in SPLIT_MESSAGES
        for cut in range(1, len(message.encode("utf-8")))
    ],
)
def test_seed_message_split_in_transit_is_stored_whole(message, cut, value, unit):
    """
    A seed message (no terminator) that arrives in two segments 0.3 s apart,
    cut anywhere (one TCP retransmission is enough), is stored once, whole,
    and answered once: the idle rule never takes the first segment alone,
    even when it reads as a reading (C{splitseed - Temperatura: 2}).
    """
    sink = RecordingSink()
    _, protocol, transport, clock = connect(sink)
    data = message.encode("utf-8")
    protocol.dataReceived(data[:cut])
    clock.advance(0.3)
    protocol.dataReceived(data[cut:])
    clock.advance(0.3)
    assert [(r.value, r.unit) for r in sink.readings] == [(value, unit)]
    assert transport.value() == SEED_REPLY


def test_idle_rule_never_applies_on_a_connection_that_sent_terminated_lines():
    """
    A connection that has sent a newline-terminated line frames its lines:
    an unterminated message on it waits for its terminator however long it
    stays idle, even when it is a whole seed message.
    """
    sink = RecordingSink()
    _, protocol, transport, clock = connect(sink)
    protocol.dataReceived(b"t,sensor=a value=1,seq=1i\n")
    protocol.dataReceived("Sensor1 - Temperatura: 25.34°C".encode("utf-8"))
    clock.advance(5)
    assert len(sink.readings) == 1
    assert transport.value() == b"ack 1\n"
    protocol.dataReceived(b"\r\n")
    assert [r.value for r in sink.readings] == [1.0, 25.34]
    assert transport.value() == b"ack 1\n" + SEED_REPLY


# -- log.txt is the seed's again -------------------------------------------

_LOG_LINE = re.compile(r"(\S+) \[[^\]]*\] (.*)\Z")


def logLines(out: StringIO) -> List[re.Match]:
    """
    The lines a twistd log file got, each split into its timestamp and its
    text; a line without the C{TIMESTAMP [SYSTEM] } prefix fails the test.
    """
    matches = []
    for line in out.getvalue().split("\n")[:-1]:
        match = _LOG_LINE.match(line)
        assert match is not None, f"a log line without a timestamp: {line!r}"
        matches.append(match)
    return matches


def test_every_reading_gets_its_own_timestamped_line():
    """
    Rendered as twistd renders C{--logfile log.txt}, every reading received,
    from any number of chunks close together, is one line of its own:
    C{TIMESTAMP [SYSTEM] Received from PEER: LINE}, stamped with the time
    its chunk arrived, and no line is a continuation without a timestamp.
    """
    out = StringIO()
    clock = Clock()
    clock.advance(1718100942.25)
    _, protocol, _, _ = connect(clock=clock, observer=textFileLogObserver(out))
    protocol.dataReceived(b"t,sensor=a value=1,seq=1i\nt,sensor=a value=2,seq=2i\n")
    clock.advance(0.05)
    protocol.dataReceived("Sensor1 - Temperatura: 25.34°C\r\n".encode("utf-8"))
    clock.advance(0.2)
    lines = logLines(out)
    assert [m.group(2) for m in lines] == [
        "Received from 10.0.2.135:54812: t,sensor=a value=1,seq=1i",
        "Received from 10.0.2.135:54812: t,sensor=a value=2,seq=2i",
        "Received from 10.0.2.135:54812: Sensor1 - Temperatura: 25.34°C",
    ]
    assert [m.group(1) for m in lines] == [formatTime(1718100942.25)] * 2 + [formatTime(1718100942.3)]


# -- log injection ----------------------------------------------------------

# Any control character but the newline ending each log line.
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def test_control_characters_from_the_wire_are_escaped_in_the_log():
    """
    Readings whose lines hold an ESC sequence, a mid-line CR or a C1 control
    (in a tag the server ignores) are logged with those characters escaped:
    one wire line is one log line, and printable text such as C{°} is kept.
    """
    out = StringIO()
    _, protocol, transport, clock = connect(observer=textFileLogObserver(out))
    protocol.dataReceived(
        b"t,sensor=a,x=\x1b[2J value=1,seq=1i\n"
        b"t,sensor=a,x=a\rFAKE value=2,seq=2i\r\n"
        + "t,sensor=a,x=\x9b31m,u=°C value=3,seq=3i\n".encode("utf-8")
    )
    clock.advance(0.2)
    assert transport.value() == b"ack 1\nack 2\nack 3\n"
    assert _CONTROL.search(out.getvalue()) is None
    assert [m.group(2) for m in logLines(out)] == [
        "Received from 10.0.2.135:54812: t,sensor=a,x=\\x1b[2J value=1,seq=1i",
        "Received from 10.0.2.135:54812: t,sensor=a,x=a\\rFAKE value=2,seq=2i",
        "Received from 10.0.2.135:54812: t,sensor=a,x=\\x9b31m,u=°C value=3,seq=3i",
    ]


def test_rejected_line_sharing_a_chunk_with_a_reading_is_logged_as_rejected():
    """
    A malformed line in the same chunk as a valid reading is not logged as
    received: it is logged as rejected, escaped, with the reason.
    """
    out = StringIO()
    _, protocol, transport, clock = connect(observer=textFileLogObserver(out))
    protocol.dataReceived(b"t,sensor=a value=1,seq=1i\nnot \x1b]0;owned\x07 a reading\n")
    clock.advance(0.2)
    assert _CONTROL.search(out.getvalue()) is None
    texts = [m.group(2) for m in logLines(out)]
    assert texts == [
        "Received from 10.0.2.135:54812: t,sensor=a value=1,seq=1i",
        "Rejected from 10.0.2.135:54812 (unrecognised line: expected 'NAME - Kind: VALUE', "
        "line protocol or 'path value timestamp'): not \\x1b]0;owned\\x07 a reading",
    ]


# -- the line limit excludes the terminator --------------------------------


def lineOf(length: int, seq: int) -> bytes:
    """
    A valid native reading with C{seq}, padded (in a tag the server ignores)
    to exactly C{length} bytes.
    """
    head, tail = b"t,sensor=a,pad=", b" value=1,seq=%di" % (seq,)
    return head + b"x" * (length - len(head) - len(tail)) + tail


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n"])
def test_a_4096_byte_line_is_accepted_whatever_its_terminator(terminator):
    """
    The 4096-byte limit does not count the line's terminator, C{\\n} or
    C{\\r\\n}.
    """
    _, protocol, transport, _ = connect()
    protocol.dataReceived(lineOf(4096, 1) + terminator)
    assert transport.value() == b"ack 1\n"
    assert not transport.disconnecting


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n"])
def test_a_4097_byte_line_is_refused_whatever_its_terminator(terminator):
    _, protocol, transport, _ = connect()
    protocol.dataReceived(lineOf(4097, 1) + terminator)
    assert transport.value() == b"error: line longer than 4096 bytes; closing the connection\n"
    assert transport.disconnecting


@pytest.mark.parametrize("partial", [b"", b"\r"])
def test_a_partial_4096_byte_line_waits_for_its_terminator(partial):
    """
    4096 bytes not yet terminated, or followed by the C{\\r} of a CRLF whose
    C{\\n} has not arrived, are no reason to close the connection.
    """
    _, protocol, transport, _ = connect()
    line = lineOf(4096, 1)
    protocol.dataReceived(line + partial)
    assert not transport.disconnecting
    protocol.dataReceived(b"\r\n"[len(partial):])
    assert transport.value() == b"ack 1\n"
    assert not transport.disconnecting


def test_a_partial_line_past_4096_bytes_before_its_cr_is_refused():
    """
    A CR that turns out to be inside the line (more than a C{\\n} follows
    it) makes a partial line of 4096 bytes and a CR too long.
    """
    _, protocol, transport, _ = connect()
    protocol.dataReceived(lineOf(4096, 1) + b"\r")
    protocol.dataReceived(b"x")
    assert transport.disconnecting
    assert b"line longer than 4096 bytes" in transport.value()


# -- metrics ----------------------------------------------------------------


def test_no_readings_received_series_for_the_unknown_dialect():
    """
    A reading always has a dialect: C{readings_received} has no C{unknown}
    series, while C{lines_rejected} keeps one for lines of no dialect.
    """
    factory, protocol, _, _ = connect()
    protocol.dataReceived(b"not a sensor reading\n")
    registry = factory.metrics.registry
    assert registry.get_sample_value("sensornet_readings_received_total", {"dialect": "unknown"}) is None
    assert registry.get_sample_value("sensornet_readings_received_total", {"dialect": "seed"}) == 0.0
    assert registry.get_sample_value("sensornet_lines_rejected_total", {"dialect": "unknown"}) == 1.0
