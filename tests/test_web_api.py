"""
The HTTP API over real HTTP on loopback, with readings stored through a
real BatchWriter into SQLite: filters, CSV, paging, errors, the live stream,
the dashboard's files; plus in-memory tests of the stream's heartbeat and
its bound on a slow client, and of readiness with a failing store.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Tuple
from urllib.parse import urlencode

import pytest
import pytest_twisted
import treq
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer
from zope.interface.verify import verifyObject

from sensornet.feed import LiveFeed
from sensornet.interfaces import IStoreQueries
from sensornet.metrics import ServerMetrics
from sensornet.reading import Reading
from sensornet.store.queries import StoreQueries
from sensornet.web import makeResource, makeSite, staticDirectory
from sensornet.web.encoding import CSV_COLUMNS
from sensornet.web.testing import WebHarness

T0 = 1718100000.0
TIMEOUT = 30


def sampleReadings() -> List[Reading]:
    """
    Three series with deliberate equal timestamps across series, so paging
    must break ties to neither skip nor repeat.
    """
    out = []
    for i in range(30):
        out.append(Reading("client-1", "temperature", 20.0 + i / 10, "C", ts=T0 + i, seq=i,
                           dialect="native", peer="127.0.0.1:4000", received_at=T0 + i + 0.01))
    for i in range(10):
        out.append(Reading("client-1", "humidity", 40.0 + i, "%", ts=T0 + 3 * i, seq=100 + i,
                           dialect="native", peer="127.0.0.1:4000", received_at=T0 + 3 * i + 0.01))
    for i in range(25):
        out.append(Reading("client-2", "temperature", 18.5 - i / 4, "C", ts=T0 + i, seq=i,
                           dialect="graphite", peer="127.0.0.1:4001", received_at=T0 + i + 0.02))
    return out


def within(d: Any, reactor: Any, seconds: float = TIMEOUT) -> defer.Deferred:
    """
    C{d} (a Deferred or coroutine) that fails with a timeout rather than
    hanging the run.
    """
    if not isinstance(d, defer.Deferred):
        d = defer.ensureDeferred(d)
    return d.addTimeout(seconds, reactor)


@pytest_twisted.async_yield_fixture
async def harness(tmp_path: Path, reactor: Any):
    h = WebHarness(tmp_path, reactor)
    await within(h.start(), reactor)
    try:
        yield h
    finally:
        await within(h.stop(), reactor)


@pytest_twisted.async_yield_fixture
async def stored(harness: WebHarness, reactor: Any):
    readings = sampleReadings()
    await within(harness.store(readings), reactor)
    yield harness, readings


def httpClient(reactor: Any) -> treq.client.HTTPClient:
    # No keep-alive: nothing is left open when a test ends.
    return treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


async def getJSON(reactor: Any, url: str, expect: int = 200, **kw: Any) -> Tuple[Any, Any]:
    response = await within(httpClient(reactor).get(url, **kw), reactor)
    body = await within(response.content(), reactor)
    assert response.code == expect, body
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"application/json")
    return response, json.loads(body)


def key(r: Dict[str, Any]) -> Tuple[str, int]:
    return (r["sensor"], r["seq"])


@pytest_twisted.ensureDeferred
async def test_sensors_lists_each_series_with_latest_value_count_and_connection(stored, reactor):
    """
    /api/sensors has one entry per (sensor, kind) with its unit, latest
    value and time, count, and connected as the server reports it.
    """
    harness, readings = stored
    harness.connected = {"client-2"}
    _, body = await getJSON(reactor, harness.url + "/api/sensors")
    assert isinstance(body["now"], float) and abs(body["now"] - reactor.seconds()) < 60
    series = {(s["sensor"], s["kind"]): s for s in body["sensors"]}
    assert set(series) == {("client-1", "temperature"), ("client-1", "humidity"), ("client-2", "temperature")}
    t1 = series[("client-1", "temperature")]
    assert (t1["unit"], t1["count"], t1["connected"]) == ("C", 30, False)
    assert t1["value"] == pytest.approx(22.9) and t1["ts"] == pytest.approx(T0 + 29)
    assert t1["time"] == "2024-06-11T10:00:29.000Z"
    h1 = series[("client-1", "humidity")]
    assert (h1["unit"], h1["count"], h1["value"]) == ("%", 10, 49.0)
    t2 = series[("client-2", "temperature")]
    assert (t2["count"], t2["connected"], t2["value"]) == (25, True, pytest.approx(12.5))


@pytest_twisted.ensureDeferred
async def test_readings_filter_by_sensor_kind_and_time_window(stored, reactor):
    """
    sensor, kind, since and until narrow the answer, given as epoch seconds
    or as ISO 8601; readings come in time order with every field.
    """
    harness, _ = stored
    query = urlencode({"sensor": "client-1", "kind": "temperature", "since": T0 + 4.5, "until": T0 + 9.5})
    _, body = await getJSON(reactor, harness.url + "/api/readings?" + query)
    assert [r["seq"] for r in body["readings"]] == [5, 6, 7, 8, 9]
    assert body["next"] is None
    first = body["readings"][0]
    assert first == {
        "sensor": "client-1", "kind": "temperature", "value": 20.5, "unit": "C", "ts": T0 + 5,
        "time": "2024-06-11T10:00:05.000Z", "seq": 5, "received_at": pytest.approx(T0 + 5.01),
        "peer": "127.0.0.1:4000", "dialect": "native",
    }

    iso = {
        "kind": "temperature",
        "since": datetime.fromtimestamp(T0 + 19.5, timezone.utc).isoformat().replace("+00:00", "Z"),
        "until": "2024-06-11T12:00:21.5+02:00",  # = T0 + 21.5
    }
    _, body = await getJSON(reactor, harness.url + "/api/readings?" + urlencode(iso))
    assert sorted(key(r) for r in body["readings"]) == [
        ("client-1", 20), ("client-1", 21), ("client-2", 20), ("client-2", 21)
    ]
    times = [r["ts"] for r in body["readings"]]
    assert times == sorted(times)

    _, body = await getJSON(reactor, harness.url + "/api/readings?sensor=nobody")
    assert body == {"readings": [], "next": None}


@pytest_twisted.ensureDeferred
async def test_readings_as_csv_by_format_or_accept_header(stored, reactor):
    """
    format=csv and Accept: text/csv both give CSV with a header row and the
    same readings as JSON; format=json wins over the Accept header.
    """
    harness, _ = stored
    base = harness.url + "/api/readings?sensor=client-2&limit=5"
    _, asJSON = await getJSON(reactor, base)
    for url, headers in [(base + "&format=csv", {}), (base, {"Accept": "text/csv"})]:
        response = await within(httpClient(reactor).get(url, headers=headers), reactor)
        assert response.code == 200
        assert response.headers.getRawHeaders(b"content-type") == [b"text/csv; charset=utf-8"]
        text = (await within(response.text("utf-8"), reactor))
        rows = list(csv.reader(io.StringIO(text)))
        assert tuple(rows[0]) == CSV_COLUMNS
        assert len(rows) == 6
        for row, reading in zip(rows[1:], asJSON["readings"]):
            record = dict(zip(CSV_COLUMNS, row))
            assert (record["sensor"], record["kind"], float(record["value"]), record["unit"]) == (
                "client-2", "temperature", reading["value"], "C")
            assert (float(record["ts"]), int(record["seq"]), record["dialect"]) == (
                reading["ts"], reading["seq"], "graphite")
            assert record["time"] == reading["time"]
        # More readings follow: the cursor is in the headers.
        assert response.headers.getRawHeaders(b"x-next-cursor")[0] == asJSON["next"].encode()
        assert b'rel="next"' in response.headers.getRawHeaders(b"link")[0]
    await getJSON(reactor, base + "&format=json", headers={"Accept": "text/csv"})


@pytest_twisted.ensureDeferred
async def test_json_paging_visits_every_reading_once_in_time_order(stored, reactor):
    """
    Following C{next} page by page (pages of 7, equal timestamps across
    series) yields every stored reading exactly once, in time order.
    """
    harness, readings = stored
    seen: List[Dict[str, Any]] = []
    url = harness.url + "/api/readings?limit=7"
    pages = 0
    cursor = None
    while True:
        _, body = await getJSON(reactor, url + (f"&cursor={cursor}" if cursor else ""))
        pages += 1
        assert len(body["readings"]) <= 7
        seen.extend(body["readings"])
        cursor = body["next"]
        if cursor is None:
            break
        assert pages < 50, "paging does not end"
    assert len(seen) == len(readings)
    assert sorted(map(key, seen)) == sorted((r.sensor, r.seq) for r in readings)
    assert pages in (math.ceil(len(readings) / 7), math.ceil(len(readings) / 7) + 1)
    times = [r["ts"] for r in seen]
    assert times == sorted(times)


@pytest_twisted.ensureDeferred
async def test_csv_paging_follows_link_header_without_gaps(stored, reactor):
    """
    A CSV client following the C{Link: rel="next"} header gets every reading
    of the filtered range once, and the last page has no such header.
    """
    harness, readings = stored
    url = harness.url + "/api/readings?kind=temperature&format=csv&limit=10"
    rows: List[Dict[str, str]] = []
    for _ in range(20):
        response = await within(httpClient(reactor).get(url), reactor)
        assert response.code == 200
        text = await within(response.text("utf-8"), reactor)
        rows.extend(csv.DictReader(io.StringIO(text)))
        link = response.headers.getRawHeaders(b"link")
        if not link:
            assert not response.headers.hasHeader(b"x-next-cursor")
            break
        target = link[0].decode().split(";")[0].strip("<> ")
        assert target.startswith("/api/readings?") and "format=csv" in target and "kind=temperature" in target
        url = harness.url + target
    else:
        pytest.fail("paging does not end")
    expected = sorted((r.sensor, r.seq) for r in readings if r.kind == "temperature")
    assert sorted((row["sensor"], int(row["seq"])) for row in rows) == expected


@pytest.mark.parametrize(
    "query, parameter",
    [
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("limit=10001", "limit"),
        ("since=yesterday", "since"),
        ("until=2024-13-40", "until"),
        ("since=1718100010&until=1718100000", "until"),
        ("cursor=not-a-cursor", "cursor"),
        ("format=xml", "format"),
        ("sensr=client-1", "sensr"),
        ("limit=5&limit=6", "limit"),
        ("since=nan", "since"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_parameters_answered_400_naming_the_parameter(harness, reactor, query, parameter):
    """
    Each malformed parameter gets 400 with a JSON message naming it.
    """
    _, body = await getJSON(reactor, harness.url + "/api/readings?" + query, expect=400)
    assert body["parameter"] == parameter
    assert parameter in body["error"]


@pytest_twisted.ensureDeferred
async def test_health_and_readiness(harness, reactor):
    """
    /healthz answers while the reactor runs; /readyz once the store answers.
    """
    _, body = await getJSON(reactor, harness.url + "/healthz")
    assert body == {"status": "ok"}
    _, body = await getJSON(reactor, harness.url + "/readyz")
    assert body["status"] == "ready"


@implementer(IStoreQueries)
class _FailingQueries:
    def __init__(self, ping: Any) -> None:
        self._ping = ping

    def ping(self) -> defer.Deferred:
        return self._ping()

    def sensors(self) -> defer.Deferred:
        return defer.fail(RuntimeError("database is locked"))

    def readings(self, sensor=None, kind=None, since=None, until=None, limit=1000, cursor=None) -> defer.Deferred:
        return defer.fail(RuntimeError("database is locked"))


def test_query_sides_provide_the_interface_the_web_layer_uses(tmp_path: Path, reactor: Any):
    """
    The store's query side and this module's failing stand-in both provide
    L{IStoreQueries}, what the resources are given.
    """
    verifyObject(IStoreQueries, StoreQueries(f"sqlite:{tmp_path / 'unopened.sqlite3'}", reactor))
    verifyObject(IStoreQueries, _FailingQueries(lambda: defer.succeed(True)))


def _stub(queries: Any) -> StubTreq:
    clock = Clock()
    return StubTreq(makeResource(queries, LiveFeed(), ServerMetrics(), lambda: (), clock))


@pytest.mark.parametrize("ping", [lambda: defer.succeed(False), lambda: defer.fail(OSError("no route to db"))])
@pytest_twisted.ensureDeferred
async def test_readyz_503_while_the_store_does_not_answer(ping):
    """
    /readyz is 503 when the ping says no or fails; a failing query is a 500
    with a message, never a traceback.
    """
    stub = _stub(_FailingQueries(ping))
    response = await stub.get("http://x/readyz")
    assert response.code == 503
    assert (await response.json())["status"] == "unavailable"
    response = await stub.get("http://x/api/sensors")
    assert response.code == 500
    body = await response.json()
    assert "failed" in body["error"] and "Traceback" not in json.dumps(body)
    stub.flush()


@pytest_twisted.ensureDeferred
async def test_server_without_store_is_ready_and_says_it_keeps_no_readings():
    """
    With C{--store none} the data endpoints answer 503 with a reason and the
    server counts as ready.
    """
    stub = _stub(None)
    response = await stub.get("http://x/api/readings")
    assert response.code == 503
    assert "store" in (await response.json())["error"]
    response = await stub.get("http://x/readyz")
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_dashboard_and_its_files_are_served_from_the_package(harness, reactor):
    """
    / is the dashboard page, its script and style come from /static with the
    right types, directories are not listed, and every response forbids
    loading anything from another origin.
    """
    client = httpClient(reactor)
    response = await within(client.get(harness.url + "/"), reactor)
    page = await within(response.text("utf-8"), reactor)
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/html")
    assert "static/dashboard.js" in page and "static/dashboard.css" in page
    csp = response.headers.getRawHeaders(b"content-security-policy")[0]
    assert b"default-src 'self'" in csp
    for name, ctype in [("dashboard.js", b"text/javascript"), ("dashboard.css", b"text/css")]:
        response = await within(client.get(harness.url + "/static/" + name), reactor)
        body = await within(response.content(), reactor)
        assert response.code == 200 and response.headers.getRawHeaders(b"content-type")[0].startswith(ctype)
        assert body == (staticDirectory() / name).read_bytes()
    response = await within(client.get(harness.url + "/static/"), reactor)
    await within(response.content(), reactor)
    assert response.code == 404
    response = await within(client.get(harness.url + "/static/../web/api.py"), reactor)
    await within(response.content(), reactor)
    assert response.code == 404


def test_dashboard_files_load_nothing_from_outside():
    """
    No CDN: the shipped files name no absolute http(s) URL, and no
    <script>/<link> points off the server.
    """
    for path in staticDirectory().iterdir():
        text = path.read_text("utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path.name


class _SSECollector(Protocol):
    """
    Collects an event stream's bytes; fires C{whenContains(marker)} Deferreds
    as markers appear.
    """

    def __init__(self) -> None:
        self.data = b""
        self._waiting: List[Tuple[bytes, defer.Deferred]] = []
        self.done: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for marker, d in list(self._waiting):
            if marker in self.data:
                self._waiting.remove((marker, d))
                d.callback(self.data)

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(None)

    def whenContains(self, marker: bytes) -> defer.Deferred:
        if marker in self.data:
            return defer.succeed(self.data)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((marker, d))
        return d

    def events(self) -> List[Dict[str, str]]:
        out = []
        for block in self.data.decode("utf-8").split("\n\n"):
            fields: Dict[str, str] = {}
            for line in block.split("\n"):
                if line and not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = fields.get(name, "") + value.lstrip(" ")
            if "event" in fields:
                out.append(fields)
        return out


async def openStream(reactor: Any, url: str) -> Tuple[Any, _SSECollector]:
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    response = await within(agent.request(b"GET", url.encode(), None), reactor)
    collector = _SSECollector()
    response.deliverBody(collector)
    return response, collector


@pytest_twisted.ensureDeferred
async def test_stream_sends_readings_committed_while_connected(harness, reactor):
    """
    A client of /api/stream receives, as one C{readings} event, the batch
    committed while it listens; filters narrow it; leaving unsubscribes.
    """
    response, everything = await openStream(reactor, harness.url + "/api/stream")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream; charset=utf-8"]
    _, onlyTwo = await openStream(reactor, harness.url + "/api/stream?sensor=client-2")
    await within(everything.whenContains(b"retry:"), reactor)
    await within(onlyTwo.whenContains(b"retry:"), reactor)
    assert len(harness.feed) == 1, "the stream listens once, whatever its client count"

    batch = [
        Reading("client-1", "temperature", 21.5, "C", ts=T0 + 100, seq=500, dialect="native",
                peer="127.0.0.1:4000", received_at=T0 + 100.5),
        Reading("client-2", "humidity", 55.0, "%", ts=None, seq=501, dialect="seed",
                peer="127.0.0.1:4001", received_at=T0 + 101.0),
    ]
    await within(harness.store(batch), reactor)
    await within(everything.whenContains(b"client-2"), reactor)
    await within(onlyTwo.whenContains(b"client-2"), reactor)
    events = everything.events()
    assert [e["event"] for e in events] == ["readings"]
    data = json.loads(events[0]["data"])
    assert [(r["sensor"], r["kind"], r["value"], r["unit"], r["seq"]) for r in data] == [
        ("client-1", "temperature", 21.5, "C", 500), ("client-2", "humidity", 55.0, "%", 501)]
    assert data[1]["ts"] == T0 + 101.0  # no sender time: the time received
    assert [r["sensor"] for r in json.loads(onlyTwo.events()[0]["data"])] == ["client-2"]

    # Going away unsubscribes both.
    for collector in (everything, onlyTwo):
        collector.transport.stopProducing()
        await within(collector.done, reactor)
    for _ in range(100):
        if len(harness.feed) == 0:
            break
        await within(deferLater(reactor, 0.02), reactor)
    assert len(harness.feed) == 0


def deferLater(reactor: Any, seconds: float) -> defer.Deferred:
    from twisted.internet.task import deferLater as _deferLater

    return _deferLater(reactor, seconds, lambda: None)


def _streamOverStringTransport(**settings: Any) -> Tuple[Any, LiveFeed, ServerMetrics, StringTransport, Clock, Any]:
    """
    A site on a fake clock and a StringTransport with one open GET /api/stream.
    """
    from twisted.internet.address import IPv4Address

    clock = Clock()
    feed = LiveFeed()
    metrics = ServerMetrics()
    site = makeSite(None, feed, metrics, lambda: (), clock)
    stream = site.stream
    for name, value in settings.items():
        setattr(stream, name, value)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9999))
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    return stream, feed, metrics, transport, clock, channel


def test_stream_sends_heartbeats_and_stops_them_when_the_client_leaves():
    """
    A comment every 15 s while a client listens; the timer stops with the
    last client.
    """
    stream, feed, _, transport, clock, channel = _streamOverStringTransport()
    assert b"200 OK" in transport.value() and b"retry: 3000" in transport.value()
    transport.clear()
    clock.advance(14)
    assert b"heartbeat" not in transport.value()
    clock.advance(1)
    assert b": heartbeat\n\n" in transport.value()
    assert len(feed) == 1 and clock.getDelayedCalls()
    channel.connectionLost(Exception("gone"))
    assert len(feed) == 0 and len(stream.clients) == 0
    assert not clock.getDelayedCalls()


def test_close_all_ends_every_stream_and_its_heartbeat():
    """
    What a stopping server does to the live stream: each open response is
    finished (the chunked body's last chunk is sent), its client forgotten
    and unsubscribed, and the heartbeat timer cancelled.
    """
    stream, feed, metrics, transport, clock, channel = _streamOverStringTransport()
    heartbeat = set(clock.getDelayedCalls())
    assert heartbeat and len(feed) == 1
    transport.clear()
    stream.closeAll()
    assert transport.value().endswith(b"0\r\n\r\n")
    assert not stream.clients and len(feed) == 0
    assert metrics.registry.get_sample_value("sensornet_stream_clients") == 0.0
    assert not heartbeat & set(clock.getDelayedCalls()), "the heartbeat is cancelled"
    clock.advance(stream.heartbeatInterval * 2)
    assert b"heartbeat" not in transport.value()
    stream.closeAll()
    # The connection itself is the server's to close (the finished response
    # restarted its idle timer).
    channel.connectionLost(Exception("closed by the server"))
    assert not clock.getDelayedCalls()


def test_slow_stream_client_is_dropped_past_its_bound():
    """
    While the transport has paused the stream (the client does not read),
    events queue up to maxPendingBytes; past it the client is disconnected,
    unsubscribed and counted, so server memory stays bounded.
    """
    stream, feed, metrics, transport, _, _ = _streamOverStringTransport(maxPendingBytes=10000)
    transport.producer.pauseProducing()
    before = len(transport.value())
    reading = Reading("s", "temperature", 1.0, "C", ts=T0, seq=1, received_at=T0)
    published = 0
    while len(feed) and published < 1000:
        feed.publish([reading] * 10)
        published += 1
    assert len(transport.value()) == before, "nothing is written while paused"
    assert 5 <= published < 1000
    assert len(feed) == 0 and not stream.clients
    assert transport.disconnecting
    assert metrics.registry.get_sample_value("sensornet_stream_clients_dropped_total") == 1.0
    assert metrics.registry.get_sample_value("sensornet_stream_clients") == 0.0


def test_paused_stream_client_gets_queued_events_when_it_reads_again():
    """
    Events queued while paused (under the bound) are written, in order, on
    resume.
    """
    _, feed, metrics, transport, _, _ = _streamOverStringTransport()
    assert metrics.registry.get_sample_value("sensornet_stream_clients") == 1.0
    transport.producer.pauseProducing()
    transport.clear()
    for seq in range(3):
        feed.publish([Reading("s", "temperature", float(seq), "C", ts=T0 + seq, seq=seq, received_at=T0)])
    assert transport.value() == b""
    transport.producer.resumeProducing()
    text = transport.value().decode()
    assert text.count("event: readings") == 3
    assert text.index('"seq":0') < text.index('"seq":1') < text.index('"seq":2')
