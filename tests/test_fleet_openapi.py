"""
The fleet endpoints answer as docs/openapi.yaml says (the pattern of
tests/test_openapi.py, which leaves these paths to this module): every
documented (path, status) of /api/sensors, /api/fleet, /api/sparklines and
/api/alerts is produced by a real request, and every body validates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest_twisted
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock

from sensornet.feed import LiveFeed
from sensornet.metrics import ServerMetrics
from sensornet.web import makeResource
from sensornet.web.testing import WebHarness

from test_fleet_api import fleetReadings, _insertSensor
from test_openapi import SPEC, Conformance
from test_web_api import _FailingQueries, httpClient, within

#: The paths this module checks in full.
FLEET_PATHS = ("/api/sensors", "/api/fleet", "/api/sparklines", "/api/alerts")


@pytest_twisted.ensureDeferred
async def test_fleet_endpoints_conform_to_the_description(tmp_path: Path, reactor: Any):
    """
    Real requests (loopback, real store) for the answers a healthy store
    gives, in-memory ones for the failures; all conform, all are produced.
    """
    conformance = Conformance()
    harness = WebHarness(tmp_path, reactor)
    await within(harness.start(), reactor)
    try:
        await within(harness.store(fleetReadings(reactor.seconds())), reactor)
        _insertSensor(harness.storeURL, "provisioned")
        client = httpClient(reactor)
        requests = [
            ("/api/sensors", ""),
            ("/api/sensors", "?" + urlencode({"limit": 2, "sort": "-last_seen", "glob": "*e*"})),
            ("/api/sensors", "?state=never"),
            ("/api/sensors", "?limit=0"),
            ("/api/fleet", ""),
            ("/api/fleet", "?x=1"),
            ("/api/sparklines", "?" + urlencode([("series", "greenhouse-1:temperature"),
                                                  ("series", "barn-1:temperature")])),
            ("/api/sparklines", "?series=nocolon"),
            ("/api/alerts", ""),
            ("/api/alerts", "?x=1"),
            ("/api/alerts", "?limit=0"),
            ("/api/alerts", "?limit=5"),
        ]
        for path, query in requests:
            response = await within(client.get(harness.url + path + query), reactor)
            body = await within(response.content(), reactor)
            conformance.check(path, response.code, (response.headers.getRawHeaders(b"content-type") or [None])[0],
                              body, response.headers)
    finally:
        await within(harness.stop(), reactor)

    for queries in (_FailingQueries(lambda: defer.succeed(False)), None):
        stub = StubTreq(makeResource(queries, LiveFeed(), ServerMetrics(), lambda: (), Clock()))
        for path in ("/api/sensors", "/api/fleet", "/api/sparklines?series=a:b"):
            response = await stub.get("http://x" + path)
            body = await response.content()
            conformance.check(path.split("?")[0], response.code, response.headers.getRawHeaders(b"content-type")[0],
                              body)

    # Without a reader's token, with --http-auth required: 401.
    from sensornet.web import makeSite
    from sensornet.web.auth import BearerAuthenticator

    guarded = makeSite(_FailingQueries(lambda: defer.succeed(True)), LiveFeed(), ServerMetrics(), lambda: (),
                       Clock(), authenticator=BearerAuthenticator(lambda token: None))
    stub = StubTreq(guarded.resource)
    for path in FLEET_PATHS:
        response = await stub.get("http://x" + path)
        body = await response.content()
        assert response.code == 401, path
        conformance.check(path, response.code, response.headers.getRawHeaders(b"content-type")[0], body,
                          response.headers)

    documented = {
        (template, status)
        for template, item in SPEC["paths"].items()
        if template in FLEET_PATHS
        for status in item["get"]["responses"]
    }
    assert documented - conformance.seen == set(), "documented answers never produced"
