"""
The live stream for many viewers (issue 11, item 3): each committed batch is
encoded once per distinct filter and the same bytes go to every client with
that filter; C{sensor}, C{prefix} and C{kind} filters; bad parameters are a
400, never a 500; a cap on open streams (503 with Retry-After, counted);
slow clients still dropped. In memory (a fake clock and C{StringTransport}s),
plus one test over real loopback.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, List, Tuple

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from sensornet.feed import LiveFeed
from sensornet.metrics import ServerMetrics
from sensornet.reading import Reading
from sensornet.web import makeSite
from sensornet.web.params import ParameterError
from sensornet.web.stream import StreamFilter, parseStreamFilter
from sensornet.web.testing import WebHarness
from test_web_api import T0, getJSON, openStream, within


class _Site:
    """
    A web site on a fake clock; C{open(query)} opens a GET /api/stream on a
    new StringTransport.
    """

    def __init__(self, **settings: Any) -> None:
        self.clock = Clock()
        self.feed = LiveFeed()
        self.metrics = ServerMetrics()
        self.site = makeSite(None, self.feed, self.metrics, lambda: (), self.clock)
        self.stream = self.site.stream
        for name, value in settings.items():
            setattr(self.stream, name, value)
        self._port = 10000

    def open(self, query: bytes = b"") -> Tuple[StringTransport, Any]:
        self._port += 1
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", self._port))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /api/stream" + query + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        return transport, channel

    def refused(self, query: bytes = b"") -> Tuple[int, dict, bytes]:
        """
        Open a stream that is expected to be refused: its status, headers
        (lower-cased names) and JSON body.
        """
        transport, channel = self.open(query)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        channel.connectionLost(Exception("done"))
        return status, headers, body


def _events(transport: StringTransport) -> List[List[dict]]:
    """
    The data of every C{readings} event written so far (chunked encoding
    undone crudely: events never span chunks here).
    """
    out = []
    for line in transport.value().split(b"\n"):
        if line.startswith(b"data: "):
            out.append(json.loads(line[len(b"data: "):]))
    return out


def _reading(sensor: str, kind: str = "temperature", seq: int = 1) -> Reading:
    return Reading(sensor, kind, 20.0 + seq, "C", ts=T0 + seq, seq=seq, dialect="native",
                   peer="127.0.0.1:4000", received_at=T0 + seq)


BATCH = [
    _reading("greenhouse-1", "temperature", 1),
    _reading("greenhouse-2", "humidity", 2),
    _reading("barn-1", "temperature", 3),
    _reading("greenhouse-1", "humidity", 4),
]


def test_each_batch_is_encoded_once_per_distinct_filter():
    """
    Fifty unfiltered clients, ten on one sensor and ten on one prefix cost
    three encodings per batch, not seventy; every client of a group gets the
    very same bytes; a filter nothing in the batch matches costs nothing;
    the feed has one listener whatever the client count. (Written at once
    here; coalesced writes are tested below.)
    """
    site = _Site(coalesceAbove=100)
    everything = [site.open() for _ in range(50)]
    oneSensor = [site.open(b"?sensor=barn-1") for _ in range(10)]
    onePrefix = [site.open(b"?prefix=greenhouse-") for _ in range(10)]
    nothing = site.open(b"?sensor=nobody")
    assert len(site.feed) == 1 and len(site.stream.clients) == 71
    encoded: List[bytes] = []
    original = site.stream.encode
    site.stream.encode = lambda readings: encoded.append(original(readings)) or encoded[-1]  # type: ignore
    for transport, _ in everything + oneSensor + onePrefix + [nothing]:
        transport.clear()

    site.feed.publish(BATCH)

    assert len(encoded) == 3 and site.stream.encodings == 3
    for group, seqs in ((everything, [1, 2, 3, 4]), (oneSensor, [3]), (onePrefix, [1, 2, 4])):
        values = {transport.value() for transport, _ in group}
        assert len(values) == 1, "every client of a group gets the same bytes"
        [[event]] = [_events(transport) for transport, _ in group[:1]]
        assert [r["seq"] for r in event] == seqs
    assert nothing[0].value() == b""


def test_a_big_batch_is_split_and_still_encoded_once_per_filter():
    """
    A batch over maxEventReadings becomes several events, each encoded once
    for all the group's clients.
    """
    site = _Site(maxEventReadings=10)
    clients = [site.open() for _ in range(5)]
    site.feed.publish([_reading("s", seq=i) for i in range(25)])
    assert site.stream.encodings == 3
    for transport, _ in clients:
        assert [len(e) for e in _events(transport)] == [10, 10, 5]


@pytest.mark.parametrize("query, seqs", [
    (b"?sensor=greenhouse-1", [1, 4]),
    (b"?prefix=greenhouse", [1, 2, 4]),
    (b"?kind=temperature", [1, 3]),
    (b"?prefix=greenhouse-&kind=humidity", [2, 4]),
    (b"?sensor=greenhouse-1&kind=temperature", [1]),
    (b"?sensor=barn-1&prefix=greenhouse", []),
    (b"?sensor=&kind=", [1, 2, 3, 4]),
    (b"?prefix=gr%C3%BCn", []),
])
def test_filters_narrow_the_stream(query: bytes, seqs: List[int]):
    """
    sensor (exact), prefix (start of the sensor name) and kind combine; an
    empty value means "not given".
    """
    site = _Site()
    transport, _ = site.open(query)
    site.feed.publish(BATCH)
    got = [r["seq"] for event in _events(transport) for r in event]
    assert got == seqs


def test_filter_matches_exactly_what_it_names():
    """
    The pure filter: prefix is a prefix, not a substring; sensor is exact.
    """
    assert StreamFilter(prefix="green").matches(_reading("greenhouse"))
    assert not StreamFilter(prefix="house").matches(_reading("greenhouse"))
    assert not StreamFilter(sensor="green").matches(_reading("greenhouse"))
    assert StreamFilter().everything and not StreamFilter(kind="x").everything
    assert parseStreamFilter({b"prefix": [b"a"], b"kind": [b"k"]}) == StreamFilter(prefix="a", kind="k")


@pytest.mark.parametrize("query, parameter", [
    (b"?sensr=x", "sensr"),
    (b"?sensor=a&sensor=b", "sensor"),
    (b"?prefix=%FF", "prefix"),
    (b"?kind=a%00b", "kind"),
    (b"?%00=1", "\\x00"),
    (b"?limit=3", "limit"),
])
def test_bad_parameters_are_a_400_with_a_message(query: bytes, parameter: str):
    """
    Unknown or repeated parameters, invalid UTF-8 and NUL characters are
    answered 400 with a JSON message naming the parameter; nothing is
    subscribed and the stream is not counted.
    """
    site = _Site()
    status, headers, body = site.refused(query)
    assert status == 400
    assert headers[b"content-type"] == b"application/json"
    answer = json.loads(body)
    assert answer["parameter"] == parameter and parameter.strip("\\") in answer["error"]
    assert not site.stream.clients and len(site.feed) == 0
    with pytest.raises(ParameterError):
        parseStreamFilter({b"sensor": [b"\xff"]})


def test_streams_past_the_cap_are_refused_with_503_and_counted():
    """
    With maxClients streams open, one more gets 503, Retry-After and a
    sentence saying why, and is counted; once a stream closes a new one is
    accepted.
    """
    site = _Site(maxClients=2)
    first, firstChannel = site.open()
    site.open(b"?sensor=a")
    status, headers, body = site.refused()
    assert status == 503
    assert headers[b"retry-after"] == b"%d" % (site.stream.retryAfterSeconds,)
    assert "at most 2" in json.loads(body)["error"]
    registry = site.metrics.registry
    assert registry.get_sample_value("sensornet_stream_clients_refused_total") == 1.0
    assert registry.get_sample_value("sensornet_stream_clients") == 2.0
    assert len(site.stream.clients) == 2

    firstChannel.connectionLost(Exception("gone"))
    again, _ = site.open()
    assert b"200 OK" in again.value() and b"retry: 3000" in again.value()
    assert registry.get_sample_value("sensornet_stream_clients_refused_total") == 1.0


def test_default_cap_is_documented_and_generous():
    """
    The default cap leaves room for the 500 viewers the benchmark runs.
    """
    site = _Site()
    assert site.stream.maxClients == 1000 and site.stream.retryAfterSeconds > 0


def test_a_slow_client_is_dropped_while_the_others_keep_their_events():
    """
    A paused client queues (shared) events up to maxPendingBytes and is then
    dropped and counted; the readers beside it, on the same filter, keep
    receiving; the feed keeps its one listener while anyone listens.
    """
    site = _Site(maxPendingBytes=10000)
    slow, _ = site.open()
    fast, _ = site.open()
    slow.producer.pauseProducing()
    fast.clear()
    batches = 0
    while len(site.stream.clients) == 2 and batches < 1000:
        site.feed.publish(BATCH)
        batches += 1
    assert 5 <= batches < 1000
    assert slow.disconnecting
    assert len(site.stream.clients) == 1 and len(site.feed) == 1
    assert len(_events(fast)) == batches
    registry = site.metrics.registry
    assert registry.get_sample_value("sensornet_stream_clients_dropped_total") == 1.0
    site.feed.publish(BATCH)
    assert len(_events(fast)) == batches + 1


def test_heartbeat_and_close_all_reach_every_group():
    """
    Heartbeats go to every client whatever its filter; closeAll ends them
    all, unsubscribes from the feed and stops the heartbeat.
    """
    site = _Site()
    clients = [site.open(), site.open(b"?sensor=a"), site.open(b"?prefix=b")]
    for transport, _ in clients:
        transport.clear()
    site.clock.advance(site.stream.heartbeatInterval)
    assert all(b": heartbeat" in transport.value() for transport, _ in clients)
    site.stream.closeAll()
    assert all(transport.value().endswith(b"0\r\n\r\n") for transport, _ in clients)
    assert not site.stream.clients and len(site.feed) == 0 and not site.stream._groups
    for _, channel in clients:
        channel.connectionLost(Exception("closed by the server"))
    assert not site.clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_filtered_streams_over_loopback(tmp_path: Path, reactor: Any):
    """
    Real HTTP: an unfiltered stream and a prefix stream receive what a real
    writer commits, each per its filter, through one feed listener; a bad
    parameter is a 400; leaving unsubscribes.
    """
    harness = WebHarness(tmp_path, reactor)
    await within(harness.start(), reactor)
    try:
        _, everything = await openStream(reactor, harness.url + "/api/stream")
        _, greenhouse = await openStream(reactor, harness.url + "/api/stream?prefix=greenhouse-")
        await within(everything.whenContains(b"retry:"), reactor)
        await within(greenhouse.whenContains(b"retry:"), reactor)
        assert len(harness.feed) == 1
        stream = harness.site.stream  # type: ignore[union-attr]
        for client in stream.clients:
            handle = client._request.channel.transport.getHandle()
            # Linux reports twice what was set (its bookkeeping overhead).
            assert handle.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * stream.socketSendBuffer
        bad, _ = await openStream(reactor, harness.url + "/api/stream?sensor=%FF")
        assert bad.code == 400

        await within(harness.store(BATCH), reactor)
        await within(everything.whenContains(b"barn-1"), reactor)
        await within(greenhouse.whenContains(b"greenhouse-2"), reactor)
        [allData] = [json.loads(e["data"]) for e in everything.events()]
        [greenData] = [json.loads(e["data"]) for e in greenhouse.events()]
        assert [r["seq"] for r in allData] == [1, 2, 3, 4]
        assert [r["seq"] for r in greenData] == [1, 2, 4]
        for collector in (everything, greenhouse):
            collector.transport.stopProducing()
            await within(collector.done, reactor)
    finally:
        await within(harness.stop(), reactor)
    assert len(harness.feed) == 0


@pytest_twisted.ensureDeferred
async def test_a_live_reading_has_the_times_the_api_answers_for_it(tmp_path: Path, reactor: Any):
    """
    A reading stamped finer than the store keeps (a microsecond) reaches
    the stream with the stored times, so a client that meets it both live
    and in C{/api/readings} (the dashboard does, for a new sensor) sees the
    same instant twice and keeps one point, not two.
    """
    harness = WebHarness(tmp_path, reactor)
    await within(harness.start(), reactor)
    try:
        _, stream = await openStream(reactor, harness.url + "/api/stream")
        await within(stream.whenContains(b"retry:"), reactor)
        # 0.1234567 s rounds up to .123457 and 0.9999996 s up into the next
        # second: float noise either way would make the live time differ.
        fine = [
            Reading("cellar", "humidity", 81.5, "%", ts=T0 + 0.1234567, seq=1, dialect="native",
                    peer="127.0.0.1:4002", received_at=T0 + 0.9999996),
            Reading("cellar", "humidity", 81.25, "%", ts=None, seq=None, dialect="seed",
                    peer="127.0.0.1:4002", received_at=T0 + 2.0000004),
        ]
        await within(harness.store(fine), reactor)
        await within(stream.whenContains(b"cellar"), reactor)
        [live] = [json.loads(e["data"]) for e in stream.events()]
        _, body = await getJSON(reactor, harness.url + f"/api/readings?sensor=cellar&since={T0 - 1}")
        stored = body["readings"]
        assert [(r["ts"], r["received_at"], r["time"]) for r in live] == \
            [(r["ts"], r["received_at"], r["time"]) for r in stored]
        assert live[0]["ts"] == T0 + 0.123457 and live[1]["ts"] == live[1]["received_at"] == T0 + 2.0
        stream.transport.stopProducing()
        await within(stream.done, reactor)
    finally:
        await within(harness.stop(), reactor)


def test_many_clients_get_batches_coalesced_in_order():
    """
    Above coalesceAbove open streams, events wait up to coalesceSeconds and
    go out in one write per client, one event per batch, in commit order,
    each still encoded once; after the flush, with few clients again,
    batches are written at once.
    """
    site = _Site(coalesceAbove=2)
    clients = [site.open() for _ in range(3)]
    for transport, _ in clients:
        transport.clear()
    for seq in range(3):
        site.feed.publish([_reading("s", seq=seq)])
    assert all(transport.value() == b"" for transport, _ in clients)
    assert site.stream.encodings == 3
    writes: List[int] = []
    original = clients[0][0].write
    clients[0][0].write = lambda data: writes.append(1) or original(data)  # type: ignore
    site.clock.advance(site.stream.coalesceSeconds)
    for transport, _ in clients:
        assert [[r["seq"] for r in event] for event in _events(transport)] == [[0], [1], [2]]
    assert len(writes) <= 2, "one chunk (the transport may split header and body)"

    # A batch while a flush is pending waits for it even if clients left.
    site.feed.publish([_reading("s", seq=3)])
    clients[2][1].connectionLost(Exception("gone"))
    clients[1][1].connectionLost(Exception("gone"))
    site.feed.publish([_reading("s", seq=4)])
    assert [r["seq"] for event in _events(clients[0][0]) for r in event] == [0, 1, 2]
    site.clock.advance(site.stream.coalesceSeconds)
    assert [r["seq"] for event in _events(clients[0][0]) for r in event] == [0, 1, 2, 3, 4]
    site.feed.publish([_reading("s", seq=5)])
    assert [r["seq"] for event in _events(clients[0][0]) for r in event] == [0, 1, 2, 3, 4, 5]


def test_close_all_cancels_a_pending_flush():
    """
    A stopping server leaves no timer behind, coalesced events or not.
    """
    site = _Site(coalesceAbove=0)
    clients = [site.open(), site.open(b"?prefix=s")]
    site.feed.publish([_reading("s")])
    assert site.stream._flushCall is not None
    site.stream.closeAll()
    for _, channel in clients:
        channel.connectionLost(Exception("closed by the server"))
    assert not site.clock.getDelayedCalls()
