"""
The fleet's parts wired into a whole server: the options (--rules refused
with line and reason, --webhook, --expected-interval, --silent-after), and
a real server on loopback whose committed readings fire and resolve a rule,
seen in /api/alerts, /api/fleet, /metrics and by a real webhook receiver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.python import usage
from twisted.web.server import Site

from sensornet.fleet.rules import parseRules
from sensornet.fleet.service import FleetConfig
from sensornet.reading import Reading
from sensornet.server import SensorServerService, ServerConfig
from sensornet.tap.server import Options

from test_openapi import SPEC, schemaValidator
from test_web_api import getJSON, httpClient, within
from test_webhooks import Receiver, until

pytestmark = pytest.mark.timeout(60)

RULES = """
[[rule]]
name = "hot greenhouse"
sensor = "greenhouse-*"
kind = "temperature"
above = 40
"""


def test_options_build_the_fleet_config(tmp_path: Path):
    """
    The defaults, then every fleet option, land in the server's config; a
    bad rules file, a bad webhook URL or a silent-after below 2 stop the
    start with a reason.
    """
    options = Options()
    options.parseOptions(["--store", f"sqlite:{tmp_path / 'db'}"])
    fleet = options.toConfig().fleet
    assert (fleet.expectedInterval, fleet.silentAfter, fleet.rules, fleet.webhooks) == (None, 5.0, (), ())
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    options = Options()
    options.parseOptions(["--store", f"sqlite:{tmp_path / 'db'}", "--rules", str(rules), "--expected-interval", "30",
                          "--silent-after", "3", "--webhook", "http://127.0.0.1:9/a", "--webhook", "https://x/b"])
    fleet = options.toConfig().fleet
    assert fleet.expectedInterval == 30.0 and fleet.silentAfter == 3.0
    assert [r.name for r in fleet.rules] == ["hot greenhouse"]
    assert fleet.webhooks == ("http://127.0.0.1:9/a", "https://x/b")
    rules.write_text(RULES + "fro = '1m'\n")
    for argv, message in [
        (["--rules", str(rules)], f"--rules: {rules}, line 7: unknown key 'fro'"),
        (["--webhook", "ftp://x/"], "--webhook: a webhook must be an http"),
        (["--silent-after", "1"], "--silent-after must be a number of intervals from 2 to 1000"),
        (["--expected-interval", "-3"], "--expected-interval must be"),
    ]:
        with pytest.raises(usage.UsageError) as caught:
            Options().parseOptions(["--store", f"sqlite:{tmp_path / 'db'}", *argv])
        assert str(caught.value).startswith(message), str(caught.value)


@pytest_twisted.ensureDeferred
async def test_a_server_fires_and_resolves_a_rule_and_posts_both(tmp_path: Path, reactor: Any):
    """
    A committed reading above the threshold fires the rule at once (no
    for): the alert is in /api/alerts and /api/fleet, counted in /metrics,
    and POSTed to the webhook; a reading back below resolves it, posted too.
    """
    receiver = Receiver()
    hook = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(receiver))
    server = SensorServerService(
        ServerConfig(
            listen=["tcp:0:interface=127.0.0.1"], http="tcp:0:interface=127.0.0.1",
            store=f"sqlite:{tmp_path / 'db.sqlite3'}", logReadings=False, httpAuth="none",
            fleet=FleetConfig(rules=tuple(parseRules(RULES)),
                              webhooks=(f"http://127.0.0.1:{hook.getHost().port}/alerts",)),
        ),
        reactor,
    )
    server.startService()
    try:
        web = await within(server.whenWebListening(), reactor)
        url = f"http://127.0.0.1:{web.getHost().port}"
        now = reactor.seconds()

        def reading(value: float, seq: int) -> Reading:
            return Reading("greenhouse-3", "temperature", value, "C", ts=now + seq, seq=seq, dialect="native",
                           peer="127.0.0.1:1", received_at=now + seq)

        assert server.writer is not None
        await within(server.writer.submit([reading(45.0, 1)]), reactor)
        await until(lambda: len(receiver.bodies) == 1, reactor)
        assert {k: receiver.bodies[0][k] for k in ("rule", "sensor", "kind", "state", "value")} == {
            "rule": "hot greenhouse", "sensor": "greenhouse-3", "kind": "temperature", "state": "firing",
            "value": 45.0}
        _, alerts = await getJSON(reactor, url + "/api/alerts")
        assert [(a["rule"], a["state"]) for a in alerts["alerts"]] == [("hot greenhouse", "firing")]
        alertSchema = SPEC["paths"]["/api/alerts"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        schemaValidator(alertSchema).validate(alerts)
        _, fleet = await getJSON(reactor, url + "/api/fleet")
        assert fleet["alerts"] == {"pending": 0, "firing": 1}
        # The summary may be up to a second old (the gauges' first refresh
        # ran at start): the new series shows within two.
        for _ in range(30):
            _, fleet = await getJSON(reactor, url + "/api/fleet")
            if fleet["series"] == 1:
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        assert fleet["series"] == 1 and fleet["states"]["live"] == 1
        metrics = await within(httpClient(reactor).get(url + "/metrics"), reactor)
        text = (await within(metrics.content(), reactor)).decode()
        assert 'sensornet_alerts{state="firing"} 1.0' in text
        assert 'sensornet_webhook_deliveries_total{receiver="127.0.0.1:' in text
        await within(server.writer.submit([reading(30.0, 2)]), reactor)
        await until(lambda: len(receiver.bodies) == 2, reactor)
        assert (receiver.bodies[1]["state"], receiver.bodies[1]["previous"]) == ("resolved", "firing")
        _, alerts = await getJSON(reactor, url + "/api/alerts")
        assert [a["state"] for a in alerts["alerts"]] == ["resolved"]
        schemaValidator(alertSchema).validate(alerts)
    finally:
        await within(server.stopService(), reactor)
        await hook.stopListening()


def test_twistd_refuses_to_start_with_a_bad_rules_file(tmp_path: Path):
    """
    The installed server, started by twistd with a rules file holding a
    typo, exits at once with the file, the line and the reason, and
    listens on nothing.
    """
    import os
    import subprocess
    import sys

    rules = tmp_path / "rules.toml"
    rules.write_text(RULES + "abvoe = 3\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "sensornet-server", "--listen", "tcp:0:interface=127.0.0.1", "--http", "none",
         "--store", f"sqlite:{tmp_path / 'db.sqlite3'}", "--rules", str(rules)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert f"--rules: {rules}, line 7: unknown key 'abvoe' in a rule" in result.stdout + result.stderr
    assert not (tmp_path / "db.sqlite3").exists()


@pytest_twisted.ensureDeferred
async def test_a_silence_rule_fires_from_the_store_and_resolves_when_the_sensor_sends(tmp_path: Path, reactor: Any):
    """
    A series of a 10 s cadence last heard an hour ago is found silent by
    the silence check (a query on the real store), fires and is POSTed; a
    series heard just now is not; the silent one's next reading resolves
    its alert.
    """
    receiver = Receiver()
    hook = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(receiver))
    rules = parseRules('[[rule]]\nname = "quiet"\nsensor = "quiet-*"\nsilent_for = 3\n')
    server = SensorServerService(
        ServerConfig(
            listen=["tcp:0:interface=127.0.0.1"], http="tcp:0:interface=127.0.0.1",
            store=f"sqlite:{tmp_path / 'db.sqlite3'}", logReadings=False, httpAuth="none",
            fleet=FleetConfig(rules=tuple(rules), webhooks=(f"http://127.0.0.1:{hook.getHost().port}/",)),
        ),
        reactor,
    )
    server.startService()
    try:
        await within(server.whenWebListening(), reactor)
        now = reactor.seconds()

        def history(name: str, end: float, seq0: int = 0) -> list:
            return [Reading(name, "temperature", 20.0, "C", ts=end - 10 * k, seq=seq0 + k, dialect="native",
                            peer="127.0.0.1:1", received_at=end - 10 * k) for k in range(5)]

        assert server.writer is not None and server.alerts is not None
        await within(server.writer.submit(history("quiet-1", now - 3600) + history("quiet-2", now)), reactor)
        await within(server.alerts.check(), reactor)
        await until(lambda: len(receiver.bodies) == 1, reactor)
        assert [(b["rule"], b["sensor"], b["state"]) for b in receiver.bodies] == [("quiet", "quiet-1", "firing")]
        await within(server.writer.submit([Reading("quiet-1", "temperature", 21.0, "C", ts=now, seq=100,
                                                   dialect="native", peer="127.0.0.1:1", received_at=now)]), reactor)
        await until(lambda: len(receiver.bodies) == 2, reactor)
        assert (receiver.bodies[1]["sensor"], receiver.bodies[1]["state"]) == ("quiet-1", "resolved")
    finally:
        await within(server.stopService(), reactor)
        await hook.stopListening()
