"""
docs/openapi.yaml is a valid OpenAPI 3.1 description, and the running
server answers as it says: every documented (path, status) is produced by a
real request here, with a documented media type, and every JSON body (and
the live stream's event data) validates against the documented schema.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Optional, Set, Tuple

import pytest_twisted
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validateSpec
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock

from sensornet.feed import LiveFeed
from sensornet.metrics import ServerMetrics
from sensornet.reading import Reading
from sensornet.web import makeResource, makeSite
from sensornet.web.params import READINGS_PARAMETERS
from sensornet.web.testing import WebHarness

from test_web_api import T0, _FailingQueries, httpClient, openStream, sampleReadings, within

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
SPEC: Dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text("utf-8"))


def schemaValidator(schema: Dict[str, Any]) -> Draft202012Validator:
    # Carry the components along so "#/components/..." resolves inside the
    # schema's own document.
    root = dict(schema)
    root["components"] = SPEC["components"]
    return Draft202012Validator(root)


def resolve(node: Dict[str, Any]) -> Dict[str, Any]:
    while "$ref" in node:
        target: Any = SPEC
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def operationFor(path: str) -> Tuple[str, Dict[str, Any]]:
    """
    The documented path template matching C{path}, and its GET operation.
    """
    for template, item in SPEC["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path):
            return template, item["get"]
    raise AssertionError(f"{path} is not documented")


class Conformance:
    """
    Checks answers against the description and remembers which documented
    (path, status) pairs were seen.
    """

    def __init__(self) -> None:
        self.seen: Set[Tuple[str, str]] = set()

    def check(self, path: str, code: int, contentType: Optional[bytes], body: bytes,
              headers: Any = None) -> None:
        template, operation = operationFor(path)
        status = str(code)
        assert status in operation["responses"], f"GET {path} answered {code}, not documented"
        self.seen.add((template, status))
        response = resolve(operation["responses"][status])
        content = response.get("content")
        if not content:
            return
        assert contentType is not None, f"GET {path}: no content type"
        mediaType = contentType.decode().split(";")[0].strip()
        assert mediaType in content, f"GET {path} {code}: {mediaType} not documented ({list(content)})"
        if mediaType == "application/json":
            schemaValidator(content[mediaType]["schema"]).validate(json.loads(body))
        for name in response.get("headers", {}):
            if headers is not None and headers.hasHeader(name.encode()):
                assert headers.getRawHeaders(name.encode())[0]


def test_description_is_valid_openapi_31():
    """
    The document passes openapi-spec-validator.
    """
    validateSpec(SPEC)
    assert SPEC["openapi"].startswith("3.1")


def test_documented_readings_parameters_are_the_ones_the_server_reads():
    """
    The description and the parser agree on /api/readings' query parameters.
    """
    documented = {p["name"] for p in SPEC["paths"]["/api/readings"]["get"]["parameters"]}
    assert documented == set(READINGS_PARAMETERS)


@pytest_twisted.ensureDeferred
async def test_running_server_conforms_to_the_description(tmp_path: Path, reactor: Any):
    """
    Real requests (loopback, real store) for every documented answer, plus
    in-memory ones for failures a healthy store cannot produce; every answer
    conforms and every documented (path, status) is produced.
    """
    conformance = Conformance()
    harness = WebHarness(tmp_path, reactor)
    await within(harness.start(), reactor)
    try:
        await within(harness.store(sampleReadings()), reactor)
        harness.connected = {"client-1"}
        client = httpClient(reactor)
        requests = [
            ("/", ""),
            ("/static/dashboard.js", ""),
            ("/static/dashboard.css", ""),
            ("/static/index.html", ""),
            ("/static/nothing-here.js", ""),
            ("/api/sensors", ""),
            ("/api/readings", ""),
            ("/api/readings", "?limit=3"),
            ("/api/readings", "?sensor=client-1&kind=humidity&since=2024-06-11T10:00:00Z&until=1718100100"),
            ("/api/readings", "?limit=3&format=csv"),
            ("/api/readings", "?limit=0"),
            ("/api/readings", "?cursor=garbage"),
            ("/api/readings", "?sensor=client-1&step=1m&since=2024-06-11T10:00:00Z&until=1718100100"),
            ("/api/readings", "?sensor=client-1&kind=temperature&step=auto&format=csv"),
            ("/api/readings", "?step=1h"),
            ("/api/readings", "?sensor=client-1&step=1m&since=1"),
            ("/metrics", ""),
            ("/healthz", ""),
            ("/readyz", ""),
        ]
        answers: Dict[str, Tuple[int, bytes]] = {}
        for path, query in requests:
            response = await within(client.get(harness.url + path + query), reactor)
            body = await within(response.content(), reactor)
            conformance.check(
                path, response.code, (response.headers.getRawHeaders(b"content-type") or [None])[0],
                body, response.headers,
            )
            answers[path + query] = (response.code, body)
        # The step answer validated above is a real one, not an empty list.
        code, body = answers["/api/readings?sensor=client-1&step=1m&since=2024-06-11T10:00:00Z&until=1718100100"]
        assert code == 200 and [b["kind"] for b in json.loads(body)["buckets"]] == ["humidity", "temperature"]

        # The stream: headers, then one event whose data is documented.
        response, collector = await openStream(reactor, harness.url + "/api/stream")
        conformance.check("/api/stream", response.code, response.headers.getRawHeaders(b"content-type")[0], b"")
        await within(collector.whenContains(b"retry:"), reactor)
        await within(harness.store([Reading("client-9", "pressure", 1013.2, "hPa", ts=T0 + 500, seq=1,
                                            dialect="native", peer="127.0.0.1:5", received_at=T0 + 500)]), reactor)
        await within(collector.whenContains(b"client-9"), reactor)
        eventSchema = SPEC["paths"]["/api/stream"]["get"]["responses"]["200"]["content"]["text/event-stream"][
            "x-event-data-schema"]
        for event in collector.events():
            schemaValidator(eventSchema).validate(json.loads(event["data"]))
        collector.transport.stopProducing()
        await within(collector.done, reactor)
    finally:
        await within(harness.stop(), reactor)

    # Failures a healthy store does not produce, in memory.
    for queries in (_FailingQueries(lambda: defer.succeed(False)), None):
        stub = StubTreq(makeResource(queries, LiveFeed(), ServerMetrics(), lambda: (), Clock()))
        for path in ("/api/sensors", "/api/readings", "/readyz"):
            response = await stub.get("http://x" + path)
            body = await response.content()
            conformance.check(path, response.code, response.headers.getRawHeaders(b"content-type")[0], body)
        # A query side without rollups cannot answer a step.
        response = await stub.get("http://x/api/readings?sensor=client-1&step=1h")
        body = await response.content()
        conformance.check("/api/readings", response.code, response.headers.getRawHeaders(b"content-type")[0], body)

    # The live stream's refusals: a bad parameter, and one stream past the cap.
    site = makeSite(None, LiveFeed(), ServerMetrics(), lambda: (), Clock())
    site.stream.maxClients = 0
    stub = StubTreq(site.resource)
    for query in ("?sensr=x", ""):
        response = await stub.get("http://x/api/stream" + query)
        body = await response.content()
        conformance.check("/api/stream", response.code, response.headers.getRawHeaders(b"content-type")[0], body,
                          response.headers)

    # Without a reader's token, with --http-auth required: 401, documented.
    from sensornet.web.auth import BearerAuthenticator

    guarded = makeSite(None, LiveFeed(), ServerMetrics(), lambda: (), Clock(),
                       authenticator=BearerAuthenticator(lambda token: None))
    stub = StubTreq(guarded.resource)
    for path, headers in (("/api/readings", {}), ("/api/stream", {"Authorization": "Bearer nope"}),
                          ("/metrics", {"Authorization": "Basic eDp5"})):
        response = await stub.get("http://x" + path, headers=headers)
        body = await response.content()
        assert response.code == 401, path
        conformance.check(path, response.code, response.headers.getRawHeaders(b"content-type")[0], body,
                          response.headers)

    # The fleet's paths are checked in full by test_fleet_openapi.py.
    fleetPaths = ("/api/sensors", "/api/fleet", "/api/sparklines", "/api/alerts")
    documented = {
        (template, status)
        for template, item in SPEC["paths"].items()
        if template not in fleetPaths
        for status in item["get"]["responses"]
    }
    assert documented - conformance.seen == set(), "documented answers never produced"
