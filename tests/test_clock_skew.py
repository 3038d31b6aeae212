"""
Clock sanity (issue 9, item 7): a reading stamped more than C{maxClockSkew}
seconds ahead of the server's clock is refused with an error reply naming the
limit, counted, logged and never stored, so no reading can pin a sensor's
"latest" value. Unit tests on a StringTransport and a task.Clock; option
parsing; one end-to-end test over loopback with a real SQLite store.
"""

from __future__ import annotations

import json
import time
from typing import Dict, List

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python import usage

from sensornet.accounting import ChunkAccounting
from sensornet.client import ReplyKind, parseReply
from sensornet.metrics import ServerMetrics
from sensornet.protocol import DEFAULT_MAX_CLOCK_SKEW, ImmediateSink, SensorServerFactory
from sensornet.reading import Reading
from sensornet.server import SensorServerService, ServerConfig
from sensornet.tap import server as servertap

#: The server's clock in these tests: 2023-11-14T22:13:20Z.
NOW = 1_700_000_000
#: The latest timestamp any dialect accepts, in nanoseconds (2262-04-11T23:47:16Z).
YEAR_2262_NS = 9_223_372_036 * 10**9
TIMEOUT = 30


class HeldSink:
    """
    A sink whose submissions wait until the test settles them.
    """

    def __init__(self) -> None:
        self.calls: List[tuple] = []

    def submit(self, readings: List[Reading]) -> "defer.Deferred[Dict[int, str]]":
        d: defer.Deferred[Dict[int, str]] = defer.Deferred()
        self.calls.append((list(readings), d))
        return d


def connect(sink=None, **factoryKeywords):
    """
    A factory whose clock reads L{NOW} and one connection to it on a
    StringTransport; C{events} gets what the reading log records.
    """
    clock = Clock()
    clock.advance(NOW)
    events: list = []
    metrics = ServerMetrics()
    accounting = ChunkAccounting(metrics, True, observer=events.append)
    factory = SensorServerFactory(sink or ImmediateSink(), clock, metrics, accounting=accounting, **factoryKeywords)
    address = IPv4Address("TCP", "10.0.2.135", 54812)
    protocol = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return factory, protocol, transport, events


def native(seq: int, ts_ns: int, value: float = 21.5) -> bytes:
    return b"temperature,sensor=s1,unit=C value=%r,seq=%di %d\n" % (value, seq, ts_ns)


def test_default_limit_is_five_minutes_everywhere():
    """
    The documented default, 300 s, is what a factory, a ServerConfig and the
    command line get when nothing is said.
    """
    options = servertap.Options()
    options.parseOptions([])
    assert DEFAULT_MAX_CLOCK_SKEW == 300
    assert SensorServerFactory(ImmediateSink(), Clock()).maxClockSkew == 300
    assert ServerConfig().maxClockSkew == 300
    assert options.toConfig().maxClockSkew == 300


def test_reading_301_s_ahead_is_refused_naming_the_limit_and_299_s_ahead_is_acked():
    """
    The limit is checked against the chunk's arrival time: 299 s ahead is
    acknowledged, 301 s ahead gets an error reply with the time it was
    stamped and the limit.
    """
    factory, protocol, transport, _ = connect()
    protocol.dataReceived(native(1, (NOW + 299) * 10**9) + native(2, (NOW + 301) * 10**9))
    assert transport.value() == (
        b"ack 1\n"
        b"error seq=2: timestamp 2023-11-14T22:18:21Z is more than 300 s ahead of the server's clock\n"
    )


def test_a_reading_exactly_at_the_limit_is_accepted():
    """
    "More than" the limit: a reading stamped exactly 300 s ahead is kept.
    """
    _, protocol, transport, _ = connect()
    protocol.dataReceived(native(1, (NOW + 300) * 10**9))
    assert transport.value() == b"ack 1\n"


def test_the_year_2262_reading_is_refused_and_never_submitted():
    """
    The reading that pinned "latest" (the latest timestamp a line may carry)
    is refused, and the sink never sees it.
    """
    sink = HeldSink()
    _, protocol, transport, _ = connect(sink)
    protocol.dataReceived(native(7, YEAR_2262_NS, 99.0))
    assert sink.calls == []
    assert transport.value() == (
        b"error seq=7: timestamp 2262-04-11T23:47:16Z is more than 300 s ahead of the server's clock\n"
    )


def test_refused_readings_keep_their_place_among_the_replies():
    """
    A refused reading among valid ones is answered in line order: its error
    waits for the acknowledgements of the readings before it, which wait for
    their commit; a Graphite reading (no seq) is refused without one; only
    the readings within the limit are submitted.
    """
    sink = HeldSink()
    _, protocol, transport, _ = connect(sink)
    protocol.dataReceived(
        native(1, NOW * 10**9)
        + native(2, YEAR_2262_NS)
        + native(3, (NOW - 86400 * 365 * 30) * 10**9)
        + b"sensors.s1.temperature 21.5 %d\n" % (NOW + 3600,)
        + native(4, (NOW + 1) * 10**9)
    )
    assert transport.value() == b""
    [(submitted, d)] = sink.calls
    assert [reading.seq for reading in submitted] == [1, 3, 4]
    d.callback({})
    assert transport.value() == (
        b"ack 1\n"
        b"error seq=2: timestamp 2262-04-11T23:47:16Z is more than 300 s ahead of the server's clock\n"
        b"ack 3\n"
        b"error: timestamp 2023-11-14T23:13:20Z is more than 300 s ahead of the server's clock\n"
        b"ack 4\n"
    )


def test_readings_without_a_timestamp_are_never_refused():
    """
    A reading without a ts (seed text, native without one, Graphite's N) is
    stamped by the server, so it is never ahead, even with a limit of 0.
    """
    _, protocol, transport, _ = connect(maxClockSkew=0)
    protocol.dataReceived(
        b"Sensor1 - Temperatura: 25.34\xc2\xb0C\n"
        b"temperature,sensor=s1 value=1,seq=1i\n"
        b"sensors.s1.temperature 21.5 N\n"
        + native(2, NOW * 10**9)
        + native(3, NOW * 10**9 + 1000)
    )
    assert transport.value() == (
        b"Dados recebidos com sucesso.\n"
        b"ack 1\n"
        b"ack 2\n"
        b"error seq=3: timestamp 2023-11-14T22:13:20Z is more than 0 s ahead of the server's clock\n"
    )


def test_the_limit_is_configurable_and_none_turns_it_off():
    """
    The factory's C{maxClockSkew} is the limit named in the reply (a
    fraction as written); L{None} accepts any timestamp.
    """
    _, protocol, transport, _ = connect(maxClockSkew=2.5)
    protocol.dataReceived(native(1, (NOW + 2) * 10**9) + native(2, (NOW + 3) * 10**9))
    assert transport.value() == (
        b"ack 1\n"
        b"error seq=2: timestamp 2023-11-14T22:13:23Z is more than 2.5 s ahead of the server's clock\n"
    )
    _, protocol, transport, _ = connect(maxClockSkew=None)
    protocol.dataReceived(native(1, YEAR_2262_NS))
    assert transport.value() == b"ack 1\n"


@pytest.mark.parametrize("skew", [-1, -0.001, float("nan"), float("inf")])
def test_factory_refuses_a_limit_that_is_not_a_finite_number_of_seconds(skew):
    """
    A negative, NaN or infinite limit is a programming error, said at once
    rather than turning into "refuse everything" or "refuse nothing".
    """
    with pytest.raises(ValueError, match="maxClockSkew"):
        SensorServerFactory(ImmediateSink(), Clock(), maxClockSkew=skew)


def test_refused_reading_is_counted_and_logged_as_rejected():
    """
    The refusal goes the way of every refused line: counted in
    C{sensornet_lines_rejected_total} under the line's dialect, and logged
    as a warning with its reason; the reading is not counted as received.
    """
    factory, protocol, _, events = connect()
    protocol.dataReceived(native(1, NOW * 10**9) + native(2, YEAR_2262_NS))
    sample = factory.metrics.registry.get_sample_value
    assert sample("sensornet_lines_rejected_total", {"dialect": "native"}) == 1
    assert sample("sensornet_readings_received_total", {"dialect": "native"}) == 1
    rejected = [formatEvent(e) for e in events if e.get("log_level") is not None and e["log_level"].name == "warn"]
    assert rejected == [
        "Rejected from 10.0.2.135:54812 (timestamp 2262-04-11T23:47:16Z is more than 300 s ahead of "
        "the server's clock): temperature,sensor=s1,unit=C value=21.5,seq=2i 9223372036000000000"
    ]


def test_a_refused_reading_does_not_mark_its_sensor_connected():
    """
    Only a reading taken in makes its sensor one of the connected sensors.
    """
    factory, protocol, _, _ = connect()
    protocol.dataReceived(b"temperature,sensor=ahead value=1 %d\n" % (YEAR_2262_NS,))
    assert list(factory.connectedSensors()) == []


def test_the_client_treats_the_clock_error_as_rejected_for_good():
    """
    The sensornet client does not resend a reading refused for its clock:
    the same line would be refused again until the sensor's clock is fixed.
    """
    reply = parseReply(
        b"error seq=42: timestamp 2262-04-11T23:47:16Z is more than 300 s ahead of the server's clock"
    )
    assert (reply.kind, reply.seq) == (ReplyKind.rejected, 42)


# -- the command line ----------------------------------------------------


def parse(*args: str) -> servertap.Options:
    options = servertap.Options()
    options.parseOptions(["--store", "none", "--http", "none", *args])
    return options


@pytest.mark.parametrize(
    "given, expected", [("60", 60.0), ("0.5", 0.5), ("0", 0.0), ("none", None), ("None", None)]
)
def test_max_clock_skew_option_reaches_the_factory(given, expected):
    """
    C{--max-clock-skew SECONDS} (or C{none}) becomes the config's and the
    protocol factory's limit.
    """
    options = parse("--max-clock-skew", given)
    assert options.toConfig().maxClockSkew == expected
    service = servertap.makeService(options, Clock())
    assert service.factory.maxClockSkew == expected


@pytest.mark.parametrize("given", ["-1", "-0.5", "abc", "nan", "inf", ""])
def test_max_clock_skew_option_refuses_what_is_not_seconds(given):
    """
    A negative, non-numeric or non-finite C{--max-clock-skew} is a usage
    error that names the option and what it takes.
    """
    with pytest.raises(usage.UsageError) as caught:
        parse("--max-clock-skew", given)
    assert str(caught.value) == f"--max-clock-skew must be a number of seconds >= 0 or 'none', not {given!r}"


# -- end to end ----------------------------------------------------------


class Sender(LineOnlyReceiver):
    """
    Sends its lines at once and collects as many replies.
    """

    delimiter = b"\n"

    def __init__(self, lines: List[bytes], expected: int) -> None:
        self.lines = lines
        self.expected = expected
        self.replies: List[bytes] = []
        self.done: defer.Deferred[List[bytes]] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"".join(line + b"\n" for line in self.lines))

    def lineReceived(self, line: bytes) -> None:
        self.replies.append(line)
        if len(self.replies) == self.expected:
            self.done.callback(self.replies)


@pytest_twisted.inlineCallbacks
def test_a_year_2262_reading_cannot_pin_latest_over_loopback_with_sqlite(reactor, tmp_path):
    """
    Over a real socket, with the default SQLite store and the default limit:
    the year-2262 reading is refused, and C{/api/sensors} shows the real
    latest value (sent after it) rather than the reading from the future.
    """
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    config = ServerConfig(
        listen=["tcp:0:interface=127.0.0.1"],
        http="tcp:0:interface=127.0.0.1",
        store=f"sqlite:{tmp_path / 'skew.db'}",
        logReadings=False,
        httpAuth="none",
    )
    server = SensorServerService(config, reactor)
    server.startService()
    client = None
    try:
        [port] = yield server.whenListening()
        webPort = yield server.whenWebListening()
        now_ns = int(time.time()) * 10**9
        lines = [
            b"temperature,sensor=pinned,unit=C value=20.5,seq=1i %d" % (now_ns - 10 * 10**9,),
            b"temperature,sensor=pinned,unit=C value=99,seq=2i %d" % (YEAR_2262_NS,),
            b"temperature,sensor=pinned,unit=C value=21.5,seq=3i %d" % (now_ns,),
        ]
        sender = Sender(lines, 3)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        client = yield connectProtocol(endpoint, sender)
        replies = yield sender.done.addTimeout(TIMEOUT, reactor)
        http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        response = yield http.get(f"http://127.0.0.1:{webPort.getHost().port}/api/sensors").addTimeout(
            TIMEOUT, reactor
        )
        body = yield response.content()
    finally:
        if client is not None:
            client.transport.loseConnection()
        yield server.stopService()
    assert replies == [
        b"ack 1",
        b"error seq=2: timestamp 2262-04-11T23:47:16Z is more than 300 s ahead of the server's clock",
        b"ack 3",
    ]
    [summary] = [s for s in json.loads(body)["sensors"] if s["sensor"] == "pinned"]
    assert (summary["value"], summary["ts"], summary["count"]) == (21.5, now_ns / 1e9, 2)
