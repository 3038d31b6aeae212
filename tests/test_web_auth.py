"""
HTTP access control over real loopback HTTP: a real server (SQLite store,
credential cache, HTTP side with C{httpAuth="required"}) answers 401 with a
Bearer challenge and a JSON error to a request without a token, with a
wrong, malformed, revoked or non-reader token; 200 to a reader on the API,
the CSV, C{/metrics} and the live stream; C{/healthz}, C{/readyz} and the
dashboard's files are open and carry no data; no response has CORS
headers; refusals are counted. Plus the pure header parser and the option.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, protocol, task
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from sensornet.identity import Registry
from sensornet.identity.tokens import newToken
from sensornet.reading import Reading
from sensornet.server import SensorServerService, ServerConfig
from sensornet.web.auth import MALFORMED, MISSING, OPEN_PATHS, REALM, bearerToken

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 15


def within(d: Any, reactor: Any) -> Any:
    return defer.ensureDeferred(d).addTimeout(TIMEOUT, reactor)


class Site:
    """
    A running server and what the tests need of it.
    """

    def __init__(self, server: SensorServerService, base: str, tokens: Dict[str, str], url: str) -> None:
        self.server = server
        self.base = base
        self.tokens = tokens
        self.url = url
        self.http = treq.client.HTTPClient(Agent(server.reactor, pool=HTTPConnectionPool(server.reactor,
                                                                                        persistent=False)))

    async def get(self, path: str, token: Optional[str] = None, headers: Optional[Dict[bytes, List[bytes]]] = None,
                  method: str = "GET") -> Any:
        allHeaders = dict(headers or {})
        if token is not None:
            allHeaders[b"authorization"] = [b"Bearer " + token.encode()]
        d = self.http.request(method, self.base + path, headers=allHeaders)
        response = await within(d, self.server.reactor)
        body = await within(response.content(), self.server.reactor)
        return response, body

    def unauthorized(self, reason: str) -> float:
        value = self.server.metrics.registry.get_sample_value(
            "sensornet_http_unauthorized_total", {"reason": reason}
        )
        return value or 0.0


@pytest_twisted.async_yield_fixture
async def site(reactor: Any, tmp_path: Any) -> Any:
    url = f"sqlite:{tmp_path / 'auth.db'}"
    registry = Registry(url)
    tokens = {
        "reader": registry.add("grafana", role="reader"),
        "sensor": registry.add("lab-1"),
        "gateway": registry.add("gw", role="gateway", grants=["lab-*"]),
    }
    registry.close()
    config = ServerConfig(
        listen=["tcp:0:interface=127.0.0.1"], http="tcp:0:interface=127.0.0.1", store=url, logReadings=False
    )
    assert config.httpAuth == "required"
    server = SensorServerService(config, reactor)
    assert server.credentials is not None
    server.credentials.interval = 0.2
    server.startService()
    try:
        web = await within(server.whenWebListening(), reactor)
        await within(server.credentials.ready, reactor)
        assert server.writer is not None
        now = time.time()
        await within(server.writer.submit([
            Reading("lab-1", "temperature", 20.0 + i, "C", ts=now - 10 + i, seq=i, dialect="native",
                    peer="10.9.8.7:4000", received_at=now)
            for i in range(5)
        ]), reactor)
        yield Site(server, f"http://127.0.0.1:{web.getHost().port}", tokens, url)
    finally:
        await within(defer.maybeDeferred(server.stopService), reactor)


def assertRefused(response: Any, body: bytes) -> None:
    assert response.code == 401
    assert response.headers.getRawHeaders(b"www-authenticate") == [REALM]
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json; charset=utf-8"]
    assert isinstance(json.loads(body)["error"], str)
    assert b"10.9.8.7" not in body and b"lab-1" not in body


def assertNoCORS(response: Any) -> None:
    names = [name.lower() for name, _ in response.headers.getAllRawHeaders()]
    assert not [name for name in names if name.startswith(b"access-control-")]


GUARDED = ["/api/readings?sensor=lab-1", "/api/readings?sensor=lab-1&format=csv", "/metrics",
           "/api/sensors", "/api/fleet", "/nowhere", "/api/nowhere", "/api/readings%2F..", "//api/readings"]


@pytest_twisted.ensureDeferred
async def test_no_token_wrong_token_and_other_roles_get_401(site: Site) -> None:
    """
    No token, a well-formed token nobody holds, a sensor's and a gateway's
    token: 401 on every guarded path, with one message for every wrong
    token; counted by reason.
    """
    for path in GUARDED:
        response, body = await site.get(path)
        if path == "//api/readings":
            # The dashboard page's path: never the API's data.
            assert b"10.9.8.7" not in body and b"temperature" not in body
            continue
        assertRefused(response, body)
        assertNoCORS(response)
    assert site.unauthorized("missing") == len(GUARDED) - 1
    messages = set()
    for token in (newToken(), site.tokens["sensor"], site.tokens["gateway"]):
        for path in ("/api/readings?sensor=lab-1", "/metrics"):
            response, body = await site.get(path, token)
            assertRefused(response, body)
            messages.add(json.loads(body)["error"])
    assert len(messages) == 1
    assert site.unauthorized("invalid") == 6


@pytest.mark.parametrize(
    "value",
    [
        [b"Bearer"], [b"Bearer "], [b"Basic dXNlcjpwYXNz"], [b"Bearer a b c"], [b"Bearer short"],
        [b"Bearer \xff\xfe" + b"x" * 40], [b"Bearer " + b"x" * 5000], [b"bearer"], [b""],
        [b"Bearer snt_" + b"A" * 43, b"Bearer snt_" + b"B" * 43],
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_malformed_authorization_header_is_a_401_never_a_500(site: Site, value: List[bytes]) -> None:
    response, body = await site.get("/api/readings?sensor=lab-1", headers={b"authorization": value})
    assertRefused(response, body)
    assert site.unauthorized("malformed") + site.unauthorized("missing") == 1


@pytest_twisted.ensureDeferred
async def test_a_reader_reads_the_api_csv_metrics_and_stream(site: Site) -> None:
    reader = site.tokens["reader"]
    response, body = await site.get("/api/readings?sensor=lab-1", reader)
    assert response.code == 200, body
    rows = json.loads(body)["readings"]
    assert len(rows) == 5 and rows[0]["peer"] == "10.9.8.7:4000"
    assertNoCORS(response)
    response, body = await site.get("/api/readings?sensor=lab-1&format=csv", reader)
    assert response.code == 200 and response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/csv")
    assert body.count(b"\n") >= 6
    response, body = await site.get("/api/sensors", reader)
    assert response.code == 200 and b"lab-1" in body
    await site.get("/metrics")
    response, body = await site.get("/metrics", reader)
    assert response.code == 200 and b'sensornet_http_unauthorized_total{reason="missing"} 1.0' in body
    # Case of the scheme does not matter; extra spaces are allowed.
    response, _ = await site.get("/metrics", headers={b"authorization": [b"bEaReR   " + reader.encode() + b"  "]})
    assert response.code == 200

    # The live stream: headers, then its first event, then hang up.
    reactor = site.server.reactor
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    refused = await within(agent.request(b"GET", (site.base + "/api/stream").encode()), reactor)
    assert refused.code == 401
    await within(treq.content(refused), reactor)
    response = await within(agent.request(
        b"GET", (site.base + "/api/stream").encode(), Headers({b"authorization": [b"Bearer " + reader.encode()]})
    ), reactor)
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream; charset=utf-8"]
    first: defer.Deferred = defer.Deferred()

    class Collector(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            if not first.called:
                first.callback(data)

    collector = Collector()
    response.deliverBody(collector)
    assert b"retry:" in await within(first, reactor)
    collector.transport.stopProducing()


@pytest_twisted.ensureDeferred
async def test_a_revoked_reader_gets_401_after_the_cache_refresh(site: Site) -> None:
    reader = site.tokens["reader"]
    response, _ = await site.get("/metrics", reader)
    assert response.code == 200
    revoked: defer.Deferred = defer.Deferred()
    assert site.server.credentials is not None
    site.server.credentials.subscribeRevoked(lambda names: revoked.callback(names) if not revoked.called else None)
    registry = Registry(site.url)
    try:
        assert registry.revoke("grafana")
        rotatedReader = registry.add("second-reader", role="reader")
    finally:
        registry.close()
    assert await within(revoked, site.server.reactor) == frozenset({"grafana"})
    response, body = await site.get("/metrics", reader)
    assertRefused(response, body)
    response, _ = await site.get("/metrics", rotatedReader)
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_health_checks_and_dashboard_files_are_open_and_reveal_nothing(site: Site) -> None:
    for path in ("/healthz", "/readyz"):
        response, body = await site.get(path)
        assert response.code == 200, body
        assert json.loads(body)["status"] in ("ok", "ready")
        for secret in (b"lab-1", b"10.9.8.7", b"grafana", b"sqlite", b"auth.db"):
            assert secret not in body
        assertNoCORS(response)
    for path in ("/", "/static/dashboard.js", "/static/dashboard.css"):
        response, body = await site.get(path)
        assert response.code == 200
        assert b"10.9.8.7" not in body and b"grafana" not in body
    assert site.unauthorized("missing") == 0
    assert OPEN_PATHS == frozenset({b"", b"static", b"healthz", b"readyz"})


@pytest_twisted.ensureDeferred
async def test_no_cors_even_for_a_preflight_from_another_origin(site: Site) -> None:
    origin = {b"origin": [b"http://evil.example"], b"access-control-request-method": [b"GET"],
              b"access-control-request-headers": [b"authorization"]}
    for method in ("OPTIONS", "GET"):
        for path in ("/api/readings?sensor=lab-1", "/healthz"):
            response, _ = await site.get(path, site.tokens["reader"], headers=origin, method=method)
            assert response.code != 500
            assertNoCORS(response)


@pytest_twisted.ensureDeferred
async def test_an_unknown_path_is_401_without_a_token_and_404_with_one(site: Site) -> None:
    response, body = await site.get("/api/nowhere")
    assertRefused(response, body)
    response, _ = await site.get("/api/nowhere", site.tokens["reader"])
    assert response.code == 404


# -- the pieces ----------------------------------------------------------------


def test_bearer_token_parser() -> None:
    token = newToken()
    assert bearerToken([b"Bearer " + token.encode()]) == token
    assert bearerToken([b"BEARER  " + token.encode() + b" "]) == token
    assert bearerToken(None) is MISSING and bearerToken([]) is MISSING
    for bad in ([b"Bearer"], [b"Token " + token.encode()], [b"Bearer " + token.encode() + b" x"],
                [b"Bearer\t" + token.encode()], [b"Bearer " + token.encode()] * 2, [b"Bearer \x80" * 30]):
        assert bearerToken(bad) is MALFORMED, bad


def test_required_http_auth_needs_a_store() -> None:
    """
    Without a store there is no registry: the option is refused with a
    clear message, and so is the config.
    """
    from sensornet.tap.server import Options

    with pytest.raises(usage.UsageError, match="--http-auth none"):
        Options().parseOptions(["--store", "none", "--http", "tcp:0"])
    options = Options()
    options.parseOptions(["--store", "none", "--http", "tcp:0", "--http-auth", "none"])
    assert options.toConfig().httpAuth == "none"
    options = Options()
    options.parseOptions(["--store", "none", "--http", "none"])
    assert options.toConfig().httpAuth == "required"
    with pytest.raises(usage.UsageError, match="required"):
        Options().parseOptions(["--http-auth", "maybe"])
    with pytest.raises(ValueError, match="store"):
        SensorServerService(ServerConfig(listen=[], http="tcp:0", store="none"), task.Clock())


def test_before_the_credentials_are_loaded_a_token_gets_503() -> None:
    """
    A server that just started cannot tell a good token from a bad one
    yet: 503 with Retry-After, not a 401 that would call the token bad.
    """
    from twisted.web.test.requesthelper import DummyRequest

    from sensornet.metrics import ServerMetrics
    from sensornet.web.auth import BearerAuthenticator

    metrics = ServerMetrics()
    loaded = False
    guard = BearerAuthenticator(lambda token: None, lambda: loaded, metrics.httpUnauthorized)
    request = DummyRequest([b"api", b"readings"])
    request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + newToken().encode()])
    refusal = guard.guard(b"api", request)
    assert refusal is not None
    body = refusal.render(request)
    assert request.responseCode == 503 and request.responseHeaders.getRawHeaders(b"retry-after") == [b"1"]
    assert b"try again" in body
    loaded = True
    request = DummyRequest([b"api"])
    request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + newToken().encode()])
    refusal = guard.guard(b"api", request)
    assert refusal is not None
    refusal.render(request)
    assert request.responseCode == 401
    assert metrics.registry.get_sample_value("sensornet_http_unauthorized_total", {"reason": "not_ready"}) == 1
    assert guard.guard(b"healthz", DummyRequest([b"healthz"])) is None


@pytest_twisted.ensureDeferred
async def test_readyz_names_no_host_when_the_store_fails(reactor: Any) -> None:
    """
    /readyz is open to anyone: a store failure is a plain 503, the error
    (which may name the database's host) stays in the log.
    """
    from treq.testing import StubTreq

    from sensornet.web.api import ReadyResource

    class Failing:
        def ping(self) -> Any:
            return defer.fail(OSError("could not connect to server at db.internal.example (10.1.2.3)"))

    stub = StubTreq(ReadyResource(Failing(), reactor))  # type: ignore[arg-type]
    response = await stub.get("http://x/")
    body = await response.content()
    assert response.code == 503
    assert b"10.1.2.3" not in body and b"db.internal" not in body
    stub.flush()


# -- the demo ------------------------------------------------------------------


def test_provision_demo_writes_0600_token_files_and_keeps_valid_ones(tmp_path: Any) -> None:
    """
    Each demo sensor and the dashboard reader get a credential and a 0600
    token file; started again, valid files are kept as they are; a missing
    file means its credential is rotated (the old token is dead).
    """
    import os
    import stat

    from sensornet.identity.tokens import tokenHash
    from sensornet.tap.demo import provisionDemo

    url = f"sqlite:{tmp_path / 'demo.db'}"
    paths = provisionDemo(url, str(tmp_path), ["Sensor1", "Sensor2"])
    assert {name: os.path.basename(path) for name, path in paths.items()} == {
        "Sensor1": "Sensor1-token.txt", "Sensor2": "Sensor2-token.txt", "dashboard": "dashboard-token.txt"}
    tokens = {}
    for name, path in paths.items():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with open(path) as f:
            tokens[name] = f.read().strip()
    registry = Registry(url)
    try:
        principals = registry.snapshot()[1]
        assert principals[tokenHash(tokens["dashboard"])].mayRead()
        assert principals[tokenHash(tokens["Sensor1"])].mayWrite("Sensor1")
        revision = registry.revision()
        assert provisionDemo(url, str(tmp_path), ["Sensor1", "Sensor2"]) == paths
        assert registry.revision() == revision  # nothing changed
        os.unlink(paths["Sensor2"])
        provisionDemo(url, str(tmp_path), ["Sensor1", "Sensor2"])
        with open(paths["Sensor2"]) as f:
            fresh = f.read().strip()
        principals = registry.snapshot()[1]
        assert fresh != tokens["Sensor2"] and principals[tokenHash(fresh)].name == "Sensor2"
        assert tokenHash(tokens["Sensor2"]) not in principals
    finally:
        registry.close()


@pytest_twisted.ensureDeferred
async def test_the_demo_dashboard_token_reads_the_api_and_is_never_logged(reactor: Any, tmp_path: Any) -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    from sensornet.tap.demo import DemoConfig, DemoService

    events: List[str] = []

    def observe(event: Dict[str, Any]) -> None:
        events.append(formatEvent(event) or "")

    config = DemoConfig(
        ServerConfig(listen=["tcp:0:interface=127.0.0.1"], http="tcp:0:interface=127.0.0.1",
                     store=f"sqlite:{tmp_path / 'demo.db'}", logReadings=False),
        clients=[], tokenDirectory=str(tmp_path),
    )
    demo = DemoService(config, reactor)
    globalLogPublisher.addObserver(observe)
    try:
        demo.startService()
        try:
            web = await within(demo.server.whenWebListening(), reactor)
            assert demo.server.credentials is not None
            await within(demo.server.credentials.ready, reactor)
            token = (tmp_path / "dashboard-token.txt").read_text().strip()
            http = treq.client.HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
            base = f"http://127.0.0.1:{web.getHost().port}"
            response = await within(http.get(base + "/metrics"), reactor)
            await within(response.content(), reactor)
            assert response.code == 401
            authorized = {b"authorization": [b"Bearer " + token.encode()]}
            response = await within(http.get(base + "/metrics", headers=authorized), reactor)
            await within(response.content(), reactor)
            assert response.code == 200
        finally:
            await within(defer.maybeDeferred(demo.stopService), reactor)
    finally:
        globalLogPublisher.removeObserver(observe)
    logged = "\n".join(events)
    assert str(tmp_path / "dashboard-token.txt") in logged
    assert token not in logged and token[4:20] not in logged


@pytest_twisted.ensureDeferred
async def test_the_demo_starts_its_sensors_once_their_credentials_are_loaded(reactor: Any, tmp_path: Any) -> None:
    """
    The demo's sensors connect after the server's credentials are loaded:
    their first connection authenticates and writes (no "try again"
    refusal greets the demo's user), and their readings are stored.
    """
    import socket

    from twisted.logger import formatEvent, globalLogPublisher

    from sensornet.client import ClientConfig
    from sensornet.store import openStore
    from sensornet.tap.demo import DemoConfig, DemoService, tokenFileName

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    events: List[str] = []

    def observe(event: Dict[str, Any]) -> None:
        events.append(formatEvent(event) or "")

    store = f"sqlite:{tmp_path / 'demo.db'}"
    config = DemoConfig(
        ServerConfig(listen=[f"tcp:{port}:interface=127.0.0.1"], http=None, store=store, logReadings=False,
                     anonymousFrom="none"),
        clients=[ClientConfig(kind="temperature", sensor="Sensor1", endpoint=f"tcp:host=127.0.0.1:port={port}",
                              interval=0.1, tokenFile=str(tmp_path / tokenFileName("Sensor1")))],
        tokenDirectory=str(tmp_path),
    )
    demo = DemoService(config, reactor)
    globalLogPublisher.addObserver(observe)
    try:
        demo.startService()
        try:
            sensor = demo.clients[0]
            deadline = reactor.seconds() + 20
            stored: List[Dict[str, Any]] = []
            while reactor.seconds() < deadline:
                await task.deferLater(reactor, 0.1)
                check = openStore(store)
                try:
                    stored = [s for s in check.sensors() if s["sensor"] == "Sensor1"]
                finally:
                    check.close()
                if stored and stored[0]["count"] >= 3:
                    break
            assert stored and stored[0]["count"] >= 3, events[-20:]
            assert sensor.running
        finally:
            await within(defer.maybeDeferred(demo.stopService), reactor)
    finally:
        globalLogPublisher.removeObserver(observe)
    logged = "\n".join(events)
    assert "not loaded yet" not in logged
    assert "refused" not in logged
