"""
The twistd roles: what C{makeService} listens on (MemoryReactor), option
checking, and that the installed package really offers the plugins.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

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


def test_no_log_readings_flag_reaches_the_factory():
    service, _ = serverService("--store", "none", "--http", "none", "--no-log-readings")
    assert service.factory.logReadings is False


def test_demo_runs_a_server_and_the_seeds_two_sensors(tmp_path):
    options = demotap.Options()
    options.parseOptions(["--store", f"sqlite:{tmp_path / 'demo.db'}", "--http", "none"])
    reactor = MemoryReactorClock()
    service = demotap.makeService(options, reactor)
    sensors = {}
    from sensornet.client import SimulatedSensor

    def walk(s):
        for child in s:
            if isinstance(child, SimulatedSensor):
                sensors[child.name] = (child.kind, child.interval)
            elif hasattr(child, "__iter__"):
                walk(child)

    walk(service)
    assert sensors == {"Sensor1": ("temperature", 2.0), "Sensor2": ("humidity", 3.0)}


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
