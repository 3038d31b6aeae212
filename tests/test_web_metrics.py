"""
/metrics, parsed with prometheus_client's own parser, counts what the test
did: readings committed through the writer, lines sent to a whole server
over TCP, open live streams; and a client's own metrics page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest_twisted
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from sensornet.clientmetrics import ClientMetrics, makeClientMetricsSite
from sensornet.reading import Reading
from sensornet.web.testing import WebHarness

from test_web_api import T0, deferLater, httpClient, openStream, within

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


async def scrape(reactor: Any, url: str) -> Samples:
    """
    GET C{url} and parse it as Prometheus text: {(sample name, labels): value}.
    """
    response = await within(httpClient(reactor).get(url), reactor)
    text = await within(response.text("utf-8"), reactor)
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [CONTENT_TYPE_LATEST.encode()]
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> Optional[float]:
    return samples.get((name, tuple(sorted(labels.items()))))


def readings(sensor: str, start: int, count: int) -> List[Reading]:
    return [
        Reading(sensor, "temperature", 20.0 + i, "C", ts=T0 + i, seq=i, dialect="native",
                peer="127.0.0.1:1", received_at=T0 + i)
        for i in range(start, start + count)
    ]


@pytest_twisted.ensureDeferred
async def test_metrics_count_committed_batches_duplicates_and_stream_clients(tmp_path: Path, reactor: Any):
    """
    Three committed batches (5, 7, 11 readings) show as 23 stored readings
    and three batch-size observations summing to 23; resending one batch
    counts its readings as duplicates, not stored; an open live stream shows
    in sensornet_stream_clients.
    """
    harness = WebHarness(tmp_path, reactor)
    await within(harness.start(), reactor)
    try:
        before = await scrape(reactor, harness.url + "/metrics")
        assert value(before, "sensornet_readings_stored_total") == 0
        assert value(before, "sensornet_stream_clients") == 0
        first = readings("a", 0, 5)
        for batch in (first, readings("a", 5, 7), readings("b", 0, 11)):
            await within(harness.store(batch), reactor)
        await within(harness.store(first), reactor)

        response, collector = await openStream(reactor, harness.url + "/api/stream")
        await within(collector.whenContains(b"retry:"), reactor)
        after = await scrape(reactor, harness.url + "/metrics")
        assert value(after, "sensornet_readings_stored_total") == 23
        assert value(after, "sensornet_readings_duplicate_total") == 5
        assert value(after, "sensornet_batch_size_sum") == 28
        assert value(after, "sensornet_batch_size_count") == 4
        assert value(after, "sensornet_commit_seconds_count") == 4
        assert value(after, "sensornet_commit_failures_total") == 0
        assert value(after, "sensornet_stream_clients") == 1
        assert value(after, "sensornet_stream_clients_dropped_total") == 0
        collector.transport.stopProducing()
        await within(collector.done, reactor)
    finally:
        await within(harness.stop(), reactor)


class _LineCollector(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


async def waitFor(reactor: Any, predicate: Any, what: str, seconds: float = 20.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if await defer.maybeDeferred(predicate):
            return
        await deferLater(reactor, 0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest_twisted.ensureDeferred
async def test_server_metrics_count_the_lines_a_sensor_sent(tmp_path: Path, reactor: Any):
    """
    A whole server (sensor listener, writer, HTTP side) on loopback: after a
    sensor sends 6 native lines, 4 Graphite lines and 1 malformed line,
    /metrics shows 6 and 4 received by dialect, 1 rejected, 10 stored, one
    open connection; /api/sensors shows the sensor as connected.
    """
    from sensornet.server import SensorServerService, ServerConfig

    config = ServerConfig(
        listen=["tcp:0:interface=127.0.0.1"],
        http="tcp:0:interface=127.0.0.1",
        store=f"sqlite:{tmp_path / 'server.sqlite3'}",
        logReadings=False,
        httpAuth="none",
    )
    server = SensorServerService(config, reactor)
    server.startService()
    sensor: Optional[_LineCollector] = None
    try:
        (listening,) = await within(server.whenListening(), reactor)
        httpPort = await within(server.whenWebListening(), reactor)
        base = f"http://127.0.0.1:{httpPort.getHost().port}"
        sensor = await within(
            connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", listening.getHost().port), _LineCollector()),
            reactor,
        )
        now = int(reactor.seconds())
        lines = [
            f"temperature,sensor=probe-7,unit=C value={20 + i}.5,seq={i}i {(now - 60 + i) * 10**9}"
            for i in range(6)
        ]
        lines += [f"sensors.probe-7.humidity {50 + i} {now - 30 + i}" for i in range(4)]
        lines.append("this is not a reading")
        sensor.transport.write(("\n".join(lines) + "\n").encode())
        await waitFor(reactor, lambda: all(f"ack {i}\n".encode() in sensor.data for i in range(6)), "acks")

        async def allStored() -> bool:
            samples = await scrape(reactor, base + "/metrics")
            return value(samples, "sensornet_readings_stored_total") == 10

        await waitFor(reactor, allStored, "10 stored readings")
        samples = await scrape(reactor, base + "/metrics")
        assert value(samples, "sensornet_readings_received_total", dialect="native") == 6
        assert value(samples, "sensornet_readings_received_total", dialect="graphite") == 4
        assert value(samples, "sensornet_readings_received_total", dialect="seed") == 0
        rejected = sum(v for (name, _), v in samples.items() if name == "sensornet_lines_rejected_total")
        assert rejected == 1
        assert value(samples, "sensornet_connections_open") == 1
        assert value(samples, "sensornet_connections_total") == 1
        assert value(samples, "sensornet_ack_latency_seconds_count") >= 1

        response = await within(httpClient(reactor).get(base + "/api/sensors"), reactor)
        body = await within(response.json(), reactor)
        byKind = {s["kind"]: s for s in body["sensors"] if s["sensor"] == "probe-7"}
        assert byKind["temperature"]["count"] == 6 and byKind["temperature"]["connected"] is True
        assert byKind["humidity"]["count"] == 4
    finally:
        if sensor is not None:
            sensor.transport.loseConnection()
            await within(sensor.lost, reactor)
        await within(defer.maybeDeferred(server.stopService), reactor)


@pytest_twisted.ensureDeferred
async def test_client_metrics_page_serves_its_own_registry(reactor: Any):
    """
    makeClientMetricsSite serves the client's metrics (and nothing else);
    two clients' metrics never mix.
    """
    metrics = ClientMetrics()
    other = ClientMetrics()
    metrics.outboxLength.set(17)
    metrics.readingsSent.inc(40)
    metrics.resends.inc(3)
    metrics.acksReceived.inc(23)
    metrics.reconnects.inc(2)
    metrics.readingsDropped.inc(1)
    metrics.connected.set(1)
    other.readingsSent.inc(5)
    port = await within(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(makeClientMetricsSite(metrics)),
                        reactor)
    try:
        base = f"http://127.0.0.1:{port.getHost().port}"
        samples = await scrape(reactor, base + "/metrics")
        assert value(samples, "sensornet_client_outbox_length") == 17
        assert value(samples, "sensornet_client_readings_sent_total") == 40
        assert value(samples, "sensornet_client_resends_total") == 3
        assert value(samples, "sensornet_client_acks_received_total") == 23
        assert value(samples, "sensornet_client_reconnects_total") == 2
        assert value(samples, "sensornet_client_readings_dropped_total") == 1
        assert value(samples, "sensornet_client_connected") == 1
        response = await within(httpClient(reactor).get(base + "/"), reactor)
        await within(response.content(), reactor)
        assert response.code == 404
    finally:
        await port.stopListening()
