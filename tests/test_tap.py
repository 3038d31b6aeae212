"""
The twistd roles: what C{makeService} listens on (MemoryReactor), option
checking, and that the installed package really offers the plugins.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python import usage
from zope.interface import implementer

from sensornet.client import ClientConfig, SensorClientService
from sensornet.server import DEFAULT_STORE, SensorServerService, ServerConfig
from sensornet.tap import client as clienttap
from sensornet.tap import demo as demotap
from sensornet.tap import server as servertap


def serverService(*args: str):
    options = servertap.Options()
    options.parseOptions(list(args))
    reactor = MemoryReactorClock()
    return servertap.makeService(options, reactor), reactor


def test_server_listens_on_tcp_5000_by_default():
    service, reactor = serverService("--store", "none", "--http", "none")
    service.startService()
    try:
        assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [(5000, "")]
    finally:
        service.stopService()


def test_server_listens_on_every_listen_option():
    service, reactor = serverService(
        "--store", "none", "--http", "none",
        "--listen", "tcp:5000:interface=127.0.0.1", "--listen", "tcp:5001", "--listen", "unix:/tmp/sn.sock",
    )
    service.startService()
    try:
        assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [
            (5000, "127.0.0.1"),
            (5001, ""),
        ]
        assert [address for address, *_ in reactor.unixServers] == ["/tmp/sn.sock"]
    finally:
        service.stopService()


def test_server_options_refuse_a_bad_store_url():
    with pytest.raises(usage.UsageError) as e:
        servertap.Options().parseOptions(["--store", "mysql://x"])
    assert "--store" in str(e.value)


def test_store_url_can_come_from_the_environment(monkeypatch, tmp_path):
    """
    --store env:NAME keeps a database password out of the process list.
    """
    monkeypatch.setenv("SENSORNET_TEST_STORE", f"sqlite:{tmp_path / 'x.db'}")
    options = servertap.Options()
    options.parseOptions(["--store", "env:SENSORNET_TEST_STORE"])
    assert options.toConfig().store == f"sqlite:{tmp_path / 'x.db'}"
    with pytest.raises(usage.UsageError) as e:
        servertap.Options().parseOptions(["--store", "env:SENSORNET_UNSET_VARIABLE"])
    assert "not set" in str(e.value)


def test_batch_interval_reaches_the_writer_and_is_bounded(tmp_path):
    """
    --batch-interval is 0 by default (a batch starts as soon as the previous
    one is done), reaches the writer, and is refused outside 0 to 1 s.
    """
    store = f"sqlite:{tmp_path / 'x.db'}"
    options = servertap.Options()
    options.parseOptions(["--store", store, "--http", "none"])
    assert options.toConfig().batchInterval == 0.0
    options = servertap.Options()
    options.parseOptions(["--store", store, "--http", "none", "--batch-interval", "0.002"])
    service = servertap.makeService(options, ThreadAwareMemoryReactor())
    assert service.writer.batchInterval == 0.002
    for bad in ("-0.001", "1.5", "nan", "inf"):
        with pytest.raises(usage.UsageError) as e:
            servertap.Options().parseOptions(["--batch-interval", bad])
        assert "--batch-interval" in str(e.value)


def test_no_log_readings_flag_reaches_the_factory():
    service, _ = serverService("--store", "none", "--http", "none", "--no-log-readings")
    assert service.factory.logReadings is False


@implementer(IReactorFromThreads)
class ThreadAwareMemoryReactor(MemoryReactorClock):
    """
    A MemoryReactorClock that also says it takes calls from threads, as a
    real reactor does: the SQLite store's writer asks for that when built.
    Nothing here starts a thread.
    """

    def callFromThread(self, f, *args, **kwargs):
        raise AssertionError("no thread runs in these tests")


def test_demo_runs_a_server_and_the_seeds_two_sensors(tmp_path):
    options = demotap.Options()
    options.parseOptions(["--store", f"sqlite:{tmp_path / 'demo.db'}", "--http", "none"])
    reactor = ThreadAwareMemoryReactor()
    service = demotap.makeService(options, reactor)
    assert isinstance(service.server, SensorServerService)
    assert service.server.config.listen == ["tcp:5000"]
    assert all(isinstance(client, SensorClientService) for client in service.clients)
    sensors = {
        sensor.name: (sensor.kindName, sensor.interval)
        for client in service.clients
        for sensor in client.sensors
    }
    assert sensors == {"Sensor1": ("temperature", 2.0), "Sensor2": ("humidity", 3.0)}
    assert [client.config.endpoint for client in service.clients] == ["tcp:host=127.0.0.1:port=5000"] * 2


def test_demo_stores_into_sqlite_by_default():
    options = demotap.Options()
    options.parseOptions([])
    assert options.toConfig().server.store == DEFAULT_STORE
    assert DEFAULT_STORE.startswith("sqlite:")


def test_demo_is_built_from_configs_without_parsing_a_command_line(monkeypatch):
    """
    The demo hands the client services their L{ClientConfig}s directly: the
    client's command line is never parsed on its behalf.
    """

    def refuse(self, *args):
        raise AssertionError("the demo re-parsed a client command line")

    monkeypatch.setattr(clienttap.Options, "parseOptions", refuse)
    options = demotap.Options()
    options.parseOptions(["--store", "none", "--http", "none", "--port", "6000", "--seed", "9"])
    config = options.toConfig()
    assert config.server == ServerConfig(listen=["tcp:6000"], http=None, store="none")
    assert config.clients == [
        ClientConfig(kind="temperature", sensor="Sensor1", endpoint="tcp:host=127.0.0.1:port=6000", seed=9),
        ClientConfig(kind="humidity", sensor="Sensor2", endpoint="tcp:host=127.0.0.1:port=6000", seed=9),
    ]
    service = demotap.DemoService(config, MemoryReactorClock())
    assert [client.config for client in service.clients] == config.clients


@pytest.mark.parametrize(
    "endpoint, url",
    [
        ("tcp:8080", "http://localhost:8080/"),
        ("tcp:port=8080", "http://localhost:8080/"),
        ("tcp:8080:interface=127.0.0.1", "http://127.0.0.1:8080/"),
        ("tcp:port=8080:interface=127.0.0.1", "http://127.0.0.1:8080/"),
        ("tcp:8080:127.0.0.1", "http://127.0.0.1:8080/"),
        ("tcp:8080:interface=0.0.0.0", "http://localhost:8080/"),
        ("tcp:8080:interface=\\:\\:1", "http://[::1]:8080/"),
        ("tcp6:port=8080:interface=\\:\\:1", "http://[::1]:8080/"),
        ("ssl:8443:privateKey=key.pem:certKey=cert.pem", "https://localhost:8443/"),
        ("unix:/tmp/sensornet.sock", "unix:/tmp/sensornet.sock"),
        ("tcp:0", "tcp:0"),
        ("tcp:interface=127.0.0.1", "tcp:interface=127.0.0.1"),
        ("8080", "8080"),
    ],
)
def test_dashboard_url_reads_the_endpoint_string(endpoint, url):
    assert demotap.dashboardURL(endpoint) == url


def test_demo_banner_shows_a_keyword_port_as_a_url():
    """
    Regression: C{--http tcp:port=8080} was announced as
    C{http://localhost:port=8080/}.
    """
    options = demotap.Options()
    options.parseOptions(["--store", "none", "--http", "tcp:port=8080"])
    service = demotap.makeService(options, MemoryReactorClock())
    with capturedLogs() as events:
        service.startService()
    try:
        banners = [formatEvent(e) for e in events if "sensornet demo" in e.get("log_format", "")]
    finally:
        service.stopService()
    assert len(banners) == 1
    assert "http://localhost:8080/" in banners[0]
    assert "port=" not in banners[0]
    assert "Sensor1 (temperature, every 2 s) and Sensor2 (humidity, every 3 s)" in banners[0]
    assert "server on tcp:5000" in banners[0]


def test_installed_package_lists_the_plugins(tmp_path):
    """
    Run twistd from outside the checkout, so only the installed package can
    provide the plugins (the checkout's root is on sys.path only here).
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in ("sensornet-server", "sensornet-client", "sensornet-demo"):
        assert name in result.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import sensornet, os; print(os.path.dirname(sensornet.__file__))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert where.returncode == 0, where.stderr
    assert not where.stdout.strip().startswith(checkout + os.sep + "sensornet"), (
        "sensornet is imported from the checkout, not from the installed package"
    )
