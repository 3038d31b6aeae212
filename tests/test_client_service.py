"""
The client role as one service built from a L{ClientConfig}: its sensors,
their shared metrics, what it listens on (MemoryReactor), and the options
that make the config.
"""

from __future__ import annotations

import random

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from sensornet.client import ClientConfig, SensorClientService, SimulatedSensor, serverEndpointString
from sensornet.dialects import parseLine
from sensornet.outbox import DEFAULT_OUTBOX_SIZE, SpoolOutbox
from sensornet.simulate import KINDS, RandomWalk
from sensornet.tap import client as clienttap


def connectAll(reactor):
    """
    Complete every pending connection attempt onto a StringTransport.
    """
    transports = []
    while reactor.tcpClients:
        host, port, factory, _, _ = reactor.tcpClients.pop(0)
        address = IPv4Address("TCP", host, port)
        transport = StringTransport(peerAddress=address)
        factory.buildProtocol(address).makeConnection(transport)
        transports.append(transport)
    return transports


def test_options_become_a_client_config():
    options = clienttap.Options()
    options.parseOptions([
        "--kind", "humidity", "--server", "10.0.1.10:6000", "--sensor", "h", "--sensors", "2",
        "--interval", "0.5", "--seed", "7", "--outbox-size", "20", "--spool", "/tmp/spool.db",
        "--ack-timeout", "3", "--metrics", "tcp:9101",
    ])
    assert options.toConfig() == ClientConfig(
        kind="humidity",
        sensor="h",
        endpoint="tcp:host=10.0.1.10:port=6000",
        interval=0.5,
        sensors=2,
        seed=7,
        outboxSize=20,
        spool="/tmp/spool.db",
        ackTimeout=3.0,
        metrics="tcp:9101",
    )


def test_option_defaults_are_the_config_defaults():
    options = clienttap.Options()
    options.parseOptions(["--kind", "temperature", "--sensor", "t"])
    config = options.toConfig()
    assert config == ClientConfig(kind="temperature", sensor="t")
    assert config.endpoint == serverEndpointString("localhost:5000")
    assert (config.interval, config.sensors, config.outboxSize, config.spool, config.metrics) == (
        None, 1, DEFAULT_OUTBOX_SIZE, None, None,
    )


def test_service_exposes_its_sensors_as_configured():
    """
    C{service.sensors} are the sensors, named, timed and connected as the
    config says; nobody needs to sniff the service's children.
    """
    reactor = MemoryReactorClock()
    config = ClientConfig(
        kind="humidity", sensor="h", sensors=3, interval=0.5, endpoint="tcp:host=10.0.1.10:port=6000",
        ackTimeout=4.0, deadTimeout=9.0, outboxSize=5,
    )
    service = SensorClientService(config, reactor)
    assert all(isinstance(s, SimulatedSensor) for s in service.sensors)
    assert [s.name for s in service.sensors] == ["h-1", "h-2", "h-3"]
    assert list(service) == service.sensors
    assert service.metricsListener is None
    for sensor in service.sensors:
        assert (sensor.kindName, sensor.kind, sensor.interval) == ("humidity", KINDS["humidity"], 0.5)
        assert (sensor.ackTimeout, sensor.deadTimeout, sensor.outbox.maxSize) == (4.0, 9.0, 5)
        assert sensor.metrics is service.metrics
    service.startService()
    try:
        assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("10.0.1.10", 6000)] * 3
    finally:
        service.stopService()


def test_seeded_sensors_draw_reproducible_values_each_from_its_own_stream():
    reactor = MemoryReactorClock()
    service = SensorClientService(ClientConfig(kind="temperature", sensor="t", sensors=2, seed=5), reactor)
    service.startService()
    try:
        transports = connectAll(reactor)
        values = [parseLine(t.value().splitlines()[0]).value for t in transports]
    finally:
        service.stopService()
    expected = [RandomWalk(KINDS["temperature"], random.Random(5 * 1_000_003 + i)).next() for i in range(2)]
    assert values == expected


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="pressure"):
        SensorClientService(ClientConfig(kind="pressure", sensor="p"), MemoryReactorClock())


def test_metrics_are_summed_over_the_sensors():
    """
    One set of client metrics per process: counters every sensor adds to,
    gauges read over all sensors at scrape time (public prometheus API).
    """
    reactor = MemoryReactorClock()
    service = SensorClientService(ClientConfig(kind="temperature", sensor="t", sensors=3), reactor)
    registry = service.metrics.registry
    service.startService()
    try:
        connectAll(reactor)
        assert registry.get_sample_value("sensornet_client_connected") == 3
        assert registry.get_sample_value("sensornet_client_outbox_length") == 3
        assert registry.get_sample_value("sensornet_client_readings_sent_total") == 3
        protocol = service.sensors[0].protocol
        first = parseLine(protocol.transport.value().splitlines()[0]).seq
        protocol.dataReceived(b"ack %d\n" % first)
        assert registry.get_sample_value("sensornet_client_acks_received_total") == 1
        assert registry.get_sample_value("sensornet_client_outbox_length") == 2
        protocol.connectionLost(None)
        assert registry.get_sample_value("sensornet_client_connected") == 2
    finally:
        service.stopService()


def test_metrics_endpoint_is_served_where_configured_and_reports_its_port():
    reactor = MemoryReactorClock()
    service = SensorClientService(
        ClientConfig(kind="temperature", sensor="t", metrics="tcp:9101:interface=127.0.0.1"), reactor
    )
    assert service.metricsListener is not None
    ports = []
    service.whenMetricsListening().addCallback(ports.append)
    assert ports == []
    service.startService()
    try:
        assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [(9101, "127.0.0.1")]
        assert len(ports) == 1
        again = []
        service.whenMetricsListening().addCallback(again.append)
        assert again == ports
    finally:
        service.stopService()


def test_without_a_metrics_endpoint_there_is_no_port_to_wait_for():
    service = SensorClientService(ClientConfig(kind="temperature", sensor="t"), MemoryReactorClock())
    with pytest.raises(RuntimeError):
        service.whenMetricsListening()


def test_spool_keeps_each_sensors_outbox_in_one_file(tmp_path):
    path = str(tmp_path / "spool.db")
    reactor = MemoryReactorClock()
    service = SensorClientService(ClientConfig(kind="humidity", sensor="h", sensors=2, spool=path), reactor)
    assert all(isinstance(s.outbox, SpoolOutbox) for s in service.sensors)
    service.startService()
    service.stopService()
    for name in ("h-1", "h-2"):
        spool = SpoolOutbox(path, name)
        try:
            assert len(spool) == 1
        finally:
            spool.close()
