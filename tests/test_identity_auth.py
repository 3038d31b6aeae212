"""
Authentication and authorization on the sensor port (issue 10, items 2, 3,
5 and 9): over real loopback sockets against real servers with real
credential registries (SQLite, and PostgreSQL where the store matters),
plus the pure parts (networks, the failure limiter, the start-up warning)
and the protocol on a StringTransport.

127.0.0.1 plays this host, 127.0.0.2 another host on the network (the
servers here take anonymous writes from 127.0.0.1/32 only).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from sensornet.accounting import ChunkAccounting
from sensornet.identity import Principal, Registry
from sensornet.identity.auth import (
    AnonymousNetworks,
    FailureLimiter,
    SensorAccess,
    anonymousExposure,
    listensBeyondLoopback,
    parseNetworks,
)
from sensornet.identity.tokens import newToken
from sensornet.metrics import ServerMetrics
from sensornet.protocol import CloseReason, ImmediateSink, SensorServerFactory
from sensornet.server import SensorServerService, ServerConfig
from sensornet.store import openStore

TIMEOUT = 30
OTHER_HOST = "127.0.0.2"

pytestmark = pytest.mark.timeout(120)


# -- helpers -------------------------------------------------------------------


class LineClient(LineOnlyReceiver):
    """
    A peer that writes what it is told and keeps every reply line.
    """

    delimiter = b"\n"

    def __init__(self) -> None:
        self.lines: List[bytes] = []
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.closedAt: Optional[float] = None

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def connectionLost(self, reason: Any = None) -> None:
        self.closedAt = time.monotonic()
        self.closed.callback(None)


@defer.inlineCallbacks
def waitFor(reactor: Any, predicate: Any, timeout: float = TIMEOUT, step: float = 0.02) -> Any:
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        yield task.deferLater(reactor, step, lambda: None)
        waited += step


@defer.inlineCallbacks
def connect(reactor: Any, port: int, source: str = "127.0.0.1") -> Any:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5, bindAddress=(source, 0))
    client = yield connectProtocol(endpoint, LineClient())
    return client


@defer.inlineCallbacks
def exchange(reactor: Any, client: LineClient, data: bytes, replies: int) -> Any:
    """
    Write C{data}, wait for C{replies} reply lines in all (or the close).
    """
    client.transport.write(data)
    yield waitFor(reactor, lambda: len(client.lines) >= replies or client.closedAt is not None)
    return client.lines


@defer.inlineCallbacks
def startServer(reactor: Any, store: str, **keywords: Any) -> Any:
    """
    A server on 127.0.0.1 taking anonymous writes from 127.0.0.1 only (the
    default, C{127.0.0.0/8}, would take 127.0.0.2 too), unless told.
    """
    keywords.setdefault("anonymousFrom", "127.0.0.1/32")
    config = ServerConfig(listen=["tcp:0:interface=127.0.0.1"], http=None, store=store, **keywords)
    service = SensorServerService(config, reactor)
    service.startService()
    ports = yield service.whenListening()
    if service.credentials is not None:
        yield service.credentials.ready.addTimeout(TIMEOUT, reactor)
    return service, ports[0].getHost().port


def provision(store: str, *names: str, **grants: Any) -> Dict[str, str]:
    """
    Sensor credentials for C{names}, gateways for C{grants}; their tokens.
    """
    registry = Registry(store)
    try:
        tokens = {name: registry.add(name) for name in names}
        for name, patterns in grants.items():
            tokens[name] = registry.add(name, role="gateway", grants=patterns)
        return tokens
    finally:
        registry.close()


def stored(store: str, sensor: str) -> List[Dict[str, Any]]:
    opened = openStore(store)
    try:
        return opened.readings(sensor=sensor, limit=10**6)
    finally:
        opened.close()


def native(sensor: str, seq: int, value: float = 1.0) -> bytes:
    return b"temperature,sensor=%s value=%r,seq=%di\n" % (sensor.encode(), value, seq)


def sample(service: SensorServerService, name: str, labels: Optional[Dict[str, str]] = None) -> float:
    value = service.metrics.registry.get_sample_value(name, labels or {})
    return value or 0.0


@pytest.fixture
def sqlite_store(tmp_path: Any) -> str:
    return "sqlite:" + os.path.join(str(tmp_path), "sensornet.db")


# -- over real sockets -----------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_anonymous_writes_only_from_the_allowed_networks(reactor, sqlite_store):
    """
    With C{--anonymous-from 127.0.0.1/32}, a seed-text reading from
    127.0.0.2 (no credential) gets C{error auth: refused} and the connection
    closes; the same line from 127.0.0.1 is stored and answered as the seed
    answered it. Nothing from 127.0.0.2 is stored.
    """
    service, port = yield startServer(reactor, sqlite_store, anonymousFrom="127.0.0.1/32")
    try:
        line = "Sensor1 - Temperatura: 25.34°C\n".encode("utf-8")
        intruder = yield connect(reactor, port, OTHER_HOST)
        lines = yield exchange(reactor, intruder, line, 1)
        yield intruder.closed.addTimeout(TIMEOUT, reactor)
        assert lines == [b"error auth: refused"]
        local = yield connect(reactor, port)
        lines = yield exchange(reactor, local, line, 1)
        assert lines == ["Dados recebidos com sucesso.".encode("utf-8")]
        local.transport.loseConnection()
        yield local.closed
        rows = yield threads.deferToThread(stored, sqlite_store, "Sensor1")
        assert [row["peer"].split(":")[0] for row in rows] == ["127.0.0.1"]
        assert sample(service, "sensornet_auth_failures_total", {"reason": "required"}) == 1
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_a_token_writes_as_its_own_sensor_only(reactor, store_url):
    """
    A connection authenticated as sensor A (from another host, where
    anonymous writes are not allowed) has its own reading acknowledged,
    and a reading naming B refused with C{error seq=N: not authorized to
    write as B}: counted, and not stored. Both backends.
    """
    tokens = yield threads.deferToThread(provision, store_url, "A", "B")
    service, port = yield startServer(reactor, store_url)
    try:
        client = yield connect(reactor, port, OTHER_HOST)
        data = b"auth " + tokens["A"].encode() + b"\n" + native("A", 1) + native("B", 1)
        lines = yield exchange(reactor, client, data, 3)
        assert lines == [b"ok auth A", b"ack 1", b"error seq=1: not authorized to write as B"]
        assert sample(service, "sensornet_readings_unauthorized_total") == 1
        assert sample(service, "sensornet_auth_successes_total", {"method": "token"}) == 1
        client.transport.loseConnection()
        yield client.closed
        a = yield threads.deferToThread(stored, store_url, "A")
        b = yield threads.deferToThread(stored, store_url, "B")
        assert [row["seq"] for row in a] == [1]
        assert b == []
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_a_gateway_writes_as_the_sensors_granted_to_it(reactor, sqlite_store):
    """
    A gateway credential granted C{lab-*} and C{roof} writes as C{lab-1}
    and C{roof}, not as C{cellar}.
    """
    tokens = yield threads.deferToThread(provision, sqlite_store, relay=["lab-*", "roof"])
    service, port = yield startServer(reactor, sqlite_store, anonymousFrom="none")
    try:
        client = yield connect(reactor, port)
        data = b"auth " + tokens["relay"].encode() + b"\n" + native("lab-1", 1) + native("roof", 2)
        data += native("cellar", 3)
        lines = yield exchange(reactor, client, data, 4)
        assert lines == [b"ok auth relay", b"ack 1", b"ack 2", b"error seq=3: not authorized to write as cellar"]
        client.transport.loseConnection()
        yield client.closed
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_seq_squatting_is_impossible(reactor, sqlite_store):
    """
    The issue's attack: another host writes the victim's future seqs 51-150
    first, with a credential of its own and without one. Every line is
    refused; the victim then sends its real 51-150, gets 100 acks, and the
    store keeps the victim's values, not the attacker's.
    """
    tokens = yield threads.deferToThread(provision, sqlite_store, "victim", "mallory")
    service, port = yield startServer(reactor, sqlite_store)
    try:
        squat = b"".join(native("victim", seq, 666.0) for seq in range(51, 151))
        attacker = yield connect(reactor, port, OTHER_HOST)
        lines = yield exchange(reactor, attacker, b"auth " + tokens["mallory"].encode() + b"\n" + squat, 101)
        assert lines[0] == b"ok auth mallory"
        assert lines[1:101] == [b"error seq=%d: not authorized to write as victim" % seq for seq in range(51, 151)]
        # A hundred refusals in a row spend the junk budget too.
        yield attacker.closed.addTimeout(TIMEOUT, reactor)
        assert lines[101:] == [b"error: 100 lines in a row refused; closing the connection"]
        anonymous = yield connect(reactor, port, OTHER_HOST)
        lines = yield exchange(reactor, anonymous, squat, 1)
        yield anonymous.closed.addTimeout(TIMEOUT, reactor)
        assert lines == [b"error auth: refused"]
        victim = yield connect(reactor, port, OTHER_HOST)
        real = b"".join(native("victim", seq, float(seq)) for seq in range(51, 151))
        lines = yield exchange(reactor, victim, b"auth " + tokens["victim"].encode() + b"\n" + real, 101)
        assert lines == [b"ok auth victim"] + [b"ack %d" % seq for seq in range(51, 151)]
        victim.transport.loseConnection()
        yield victim.closed
        rows = yield threads.deferToThread(stored, sqlite_store, "victim")
        assert sorted((row["seq"], row["value"]) for row in rows) == [(seq, float(seq)) for seq in range(51, 151)]
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_revocation_closes_live_connections_on_every_server_sharing_the_store(reactor, store_url):
    """
    Two servers share one store (one SQLite file; one PostgreSQL database).
    A sensor connected to each writes; its credential is revoked through
    the registry: both live connections get C{error: credential revoked or
    replaced; closing the connection} and close within 5 s, and a new
    connection with the token is refused.
    """
    tokens = yield threads.deferToThread(provision, store_url, "A", "B")
    first, firstPort = yield startServer(reactor, store_url)
    second, secondPort = yield startServer(reactor, store_url)
    try:
        clients = []
        for port in (firstPort, secondPort):
            client = yield connect(reactor, port, OTHER_HOST)
            lines = yield exchange(reactor, client, b"auth " + tokens["A"].encode() + b"\n" + native("A", port), 2)
            assert lines == [b"ok auth A", b"ack %d" % port]
            clients.append(client)
        # B's connection stays: only the revoked name is cut.
        bystander = yield connect(reactor, secondPort, OTHER_HOST)
        yield exchange(reactor, bystander, b"auth " + tokens["B"].encode() + b"\n", 1)
        registry = Registry(store_url)
        revokedAt = time.monotonic()
        try:
            yield threads.deferToThread(registry.revoke, "A")
        finally:
            registry.close()
        for client in clients:
            yield client.closed.addTimeout(TIMEOUT, reactor)
            assert client.closedAt is not None and client.closedAt - revokedAt < 5.0
            assert client.lines[-1] == b"error: credential revoked or replaced; closing the connection"
        for service in (first, second):
            assert sample(service, "sensornet_connections_closed_total", {"reason": CloseReason.revoked.value}) == 1
        assert bystander.closedAt is None
        again = yield connect(reactor, secondPort, OTHER_HOST)
        lines = yield exchange(reactor, again, b"auth " + tokens["A"].encode() + b"\n", 1)
        yield again.closed.addTimeout(TIMEOUT, reactor)
        assert lines == [b"error auth: refused"]
        bystander.transport.loseConnection()
        yield bystander.closed
    finally:
        yield first.stopService()
        yield second.stopService()


@pytest.mark.parametrize(
    "credential",
    ["wrong", "revoked", "malformed", "empty", "long"],
)
@pytest_twisted.inlineCallbacks
def test_a_bad_credential_gets_one_line_and_the_connection_closes(reactor, sqlite_store, credential):
    """
    A wrong, revoked, malformed, empty or overlong token: one line, C{error
    auth: refused}, whatever was wrong, then the close; the readings sent
    after it in the same write are not stored.
    """
    tokens = yield threads.deferToThread(provision, sqlite_store, "A", "gone")
    registry = Registry(sqlite_store)
    try:
        registry.revoke("gone")
    finally:
        registry.close()
    token = {
        "wrong": newToken(),
        "revoked": tokens["gone"],
        "malformed": "not a token\x01",
        "empty": "",
        "long": "x" * 3000,
    }[credential]
    service, port = yield startServer(reactor, sqlite_store)
    try:
        client = yield connect(reactor, port, OTHER_HOST)
        lines = yield exchange(reactor, client, b"auth " + token.encode() + b"\n" + native("A", 7), 1)
        yield client.closed.addTimeout(TIMEOUT, reactor)
        assert lines == [b"error auth: refused"]
        assert sample(service, "sensornet_auth_failures_total", {"reason": "invalid"}) == 1
        rows = yield threads.deferToThread(stored, sqlite_store, "A")
        assert rows == []
    finally:
        yield service.stopService()


@pytest_twisted.inlineCallbacks
def test_repeated_failures_from_one_address_are_rate_limited_and_counted(reactor, sqlite_store):
    """
    Ten failures in a row from 127.0.0.2 spend its tries: its next
    connection is closed on connecting, before it sends a byte, and counted
    under C{rate_limited}; 127.0.0.1 is not affected.
    """
    tokens = yield threads.deferToThread(provision, sqlite_store, "A")
    service, port = yield startServer(reactor, sqlite_store, anonymousFrom="none")
    try:
        for _ in range(10):
            client = yield connect(reactor, port, OTHER_HOST)
            lines = yield exchange(reactor, client, b"auth " + newToken().encode() + b"\n", 1)
            yield client.closed.addTimeout(TIMEOUT, reactor)
            assert lines == [b"error auth: refused"]
        blocked = yield connect(reactor, port, OTHER_HOST)
        yield blocked.closed.addTimeout(TIMEOUT, reactor)
        assert blocked.lines == [b"error auth: refused"]
        assert sample(service, "sensornet_auth_failures_total", {"reason": "invalid"}) == 10
        assert sample(service, "sensornet_auth_failures_total", {"reason": "rate_limited"}) == 1
        local = yield connect(reactor, port)
        lines = yield exchange(reactor, local, b"auth " + tokens["A"].encode() + b"\n" + native("A", 1), 2)
        assert lines == [b"ok auth A", b"ack 1"]
        local.transport.loseConnection()
        yield local.closed
    finally:
        yield service.stopService()


# -- the protocol on a StringTransport ---------------------------------------------


class StandInCredentials:
    """
    Credentials in a dict, for the protocol's unit tests (the real cache is
    used over sockets above).
    """

    def __init__(self) -> None:
        self.tokens: Dict[str, Principal] = {}
        self.subscribers: List[Any] = []

    def add(self, name: str, role: str = "sensor", grants: Any = ()) -> str:
        token = newToken()
        self.tokens[token] = Principal(name, role, tuple(grants))
        return token

    def verify(self, token: Any) -> Optional[Principal]:
        return self.tokens.get(token)

    def principalNamed(self, name: str) -> Optional[Principal]:
        return next((p for p in self.tokens.values() if p.name == name), None)

    def subscribeRevoked(self, callback: Any) -> None:
        self.subscribers.append(callback)


def makeFactory(anonymous: str = "127.0.0.0/8") -> Any:
    clock = Clock()
    metrics = ServerMetrics()
    events: List[dict] = []
    credentials = StandInCredentials()
    access = SensorAccess(credentials, AnonymousNetworks.fromString(anonymous), clock, metrics)
    accounting = ChunkAccounting(metrics, True, observer=events.append)
    factory = SensorServerFactory(ImmediateSink(), clock, metrics, accounting=accounting, access=access)
    factory._log = Logger(observer=events.append)
    factory.credentials = credentials  # type: ignore[attr-defined]
    factory.events = events  # type: ignore[attr-defined]
    return factory


def open_(factory: Any, host: str = "10.0.2.135") -> Any:
    address = IPv4Address("TCP", host, 54812)
    protocol = factory.buildProtocol(address)
    protocol.makeConnection(StringTransport(peerAddress=address))
    return protocol


def test_an_auth_line_after_the_first_is_refused_and_its_token_never_logged():
    """
    C{auth TOKEN} is only for the first line: later it is an error line, and
    the log shows C{auth <token not logged>}, never the token.
    """
    factory = makeFactory()
    token = factory.credentials.add("A")
    protocol = open_(factory, "127.0.0.1")
    protocol.dataReceived(native("A", 1) + b"auth " + token.encode() + b"\n")
    assert protocol.transport.value() == b"ack 1\nerror: auth is accepted only as the first line\n"
    text = repr(factory.events)
    assert token not in text
    assert "auth <token not logged>" in text


def test_authentication_is_checked_per_new_name_not_per_line():
    """
    A sensor's own readings cost no authorization work after the first:
    C{mayWrite} is asked once per new name on the connection.
    """
    factory = makeFactory()
    asked: List[str] = []

    class Counting(Principal):
        def mayWrite(self, sensor: str) -> bool:
            asked.append(sensor)
            return super().mayWrite(sensor)

    token = newToken()
    factory.credentials.tokens[token] = Counting("A", "sensor")
    protocol = open_(factory)
    protocol.dataReceived(b"auth " + token.encode() + b"\n" + b"".join(native("A", seq) for seq in range(100)))
    protocol.dataReceived(b"".join(native("A", seq) for seq in range(100, 200)))
    assert asked == ["A"]
    assert protocol.transport.value().count(b"ack ") == 200


def test_revocation_closes_only_the_connections_of_that_name():
    """
    The factory closes the connections authenticated as a revoked name
    (after their replies), counted under C{revoked}; others stay.
    """
    factory = makeFactory()
    a, b = factory.credentials.add("A"), factory.credentials.add("B")
    first, second = open_(factory), open_(factory)
    first.dataReceived(b"auth " + a.encode() + b"\n")
    second.dataReceived(b"auth " + b.encode() + b"\n")
    for callback in factory.credentials.subscribers:
        callback(frozenset(["A"]))
    assert first.transport.value().endswith(b"error: credential revoked or replaced; closing the connection\n")
    assert first.transport.disconnecting and not second.transport.disconnecting


def test_a_connection_that_must_authenticate_gets_one_line_for_anything_else():
    """
    From a network without anonymous writes, a first line that is not
    C{auth} (seed text here) is refused and closes the connection.
    """
    factory = makeFactory()
    protocol = open_(factory)
    protocol.dataReceived("Sensor1 - Temperatura: 25.34°C\n".encode("utf-8"))
    assert protocol.transport.value() == b"error auth: refused\n"
    assert protocol.transport.disconnecting


def test_a_seed_client_after_auth_writes_as_its_granted_name():
    """
    Seed text carries no credential: after C{auth} its name must be the
    credential's.
    """
    factory = makeFactory(anonymous="none")
    token = factory.credentials.add("Sensor1")
    protocol = open_(factory, "127.0.0.1")
    protocol.dataReceived(
        b"auth " + token.encode() + b"\n" + "Sensor1 - Temperatura: 25.34°C\nSensor2 - Umidade: 61%\n".encode()
    )
    assert protocol.transport.value() == (
        "ok auth Sensor1\nDados recebidos com sucesso.\nerror: not authorized to write as Sensor2\n".encode()
    )


# -- pure parts -------------------------------------------------------------------


def test_networks_parse_and_match():
    assert parseNetworks("none") == () == parseNetworks("")
    networks = AnonymousNetworks.fromString("127.0.0.0/8,::1")
    assert networks.allows("127.0.0.2") and networks.allows("::1") and networks.allows("::ffff:127.0.0.1")
    assert not networks.allows("10.0.0.1") and not networks.allows("not an address")
    assert networks.allows(None)  # a unix socket is local
    assert not AnonymousNetworks.fromString("none").allows(None)
    with pytest.raises(ValueError):
        parseNetworks("10.0.0.1/8")
    with pytest.raises(ValueError):
        parseNetworks("nonsense")


def test_the_start_up_warning_names_open_anonymous_writes():
    """
    Mosquitto 2.0's lesson: a warning when anonymous writes reach beyond
    this host on a listener reachable from beyond it; none otherwise.
    """
    wide = AnonymousNetworks.fromString("0.0.0.0/0")
    assert listensBeyondLoopback("tcp:5000") and listensBeyondLoopback("ssl:5001:privateKey=k.pem")
    assert not listensBeyondLoopback("tcp:5000:interface=127.0.0.1")
    assert not listensBeyondLoopback("unix:/run/sensornet.sock")
    warning = anonymousExposure(["tcp:5000"], wide)
    assert warning is not None and "0.0.0.0/0" in warning and "tcp:5000" in warning
    assert anonymousExposure(["tcp:5000:interface=127.0.0.1"], wide) is None
    assert anonymousExposure(["tcp:5000"], AnonymousNetworks.fromString("127.0.0.0/8,::1")) is None


def test_failure_limiter_refills_and_stays_bounded():
    clock = Clock()
    limiter = FailureLimiter(clock, burst=3, rate=0.5, maxAddresses=2)
    for _ in range(3):
        assert not limiter.blocked("10.0.0.1")
        limiter.failed("10.0.0.1")
    assert limiter.blocked("10.0.0.1")
    clock.advance(2)
    assert not limiter.blocked("10.0.0.1")
    # IPv6 per /64: another address of the same /64 is the same peer.
    for _ in range(3):
        limiter.failed("2001:db8::1")
    assert limiter.blocked("2001:db8::2")
    limiter.failed("10.9.9.9")
    assert len(limiter) == 2
    assert not limiter.blocked("10.0.0.1")  # forgotten: the least recent


# -- the client ------------------------------------------------------------------


def writeToken(directory: Any, token: str) -> str:
    path = os.path.join(str(directory), "token.txt")
    with open(path, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return path


@pytest_twisted.inlineCallbacks
def test_the_client_authenticates_with_its_token_file(reactor, sqlite_store, tmp_path):
    """
    C{sensornet-client --token-file}: every connection starts with C{auth},
    readings follow C{ok auth} and are stored as the sensor, on a server
    that takes no anonymous writes.
    """
    from sensornet.client import ClientConfig, SensorClientService

    tokens = yield threads.deferToThread(provision, sqlite_store, "A")
    service, port = yield startServer(reactor, sqlite_store, anonymousFrom="none")
    client = SensorClientService(
        ClientConfig(
            kind="temperature", sensor="A", endpoint=f"tcp:host=127.0.0.1:port={port}", interval=0.05,
            tokenFile=writeToken(tmp_path, tokens["A"]),
        ),
        reactor,
    )
    client.startService()
    try:
        yield waitFor(reactor, lambda: (client.metrics.acksReceived._value.get() or 0) >= 5)
        assert sample(service, "sensornet_auth_successes_total", {"method": "token"}) == 1
    finally:
        yield client.stopService()
        yield service.stopService()
    rows = yield threads.deferToThread(stored, sqlite_store, "A")
    assert len(rows) >= 5


@pytest_twisted.inlineCallbacks
def test_a_refused_client_stops_instead_of_reconnecting(reactor, sqlite_store, tmp_path):
    """
    A token the server refuses is fatal for the sensor: one connection,
    one failure at the server, a critical log line, no reconnect storm.
    """
    from sensornet.client import ClientConfig, SensorClientService

    events: List[dict] = []
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(events.append)
    service, port = yield startServer(reactor, sqlite_store, anonymousFrom="none")
    client = SensorClientService(
        ClientConfig(
            kind="temperature", sensor="A", endpoint=f"tcp:host=127.0.0.1:port={port}", interval=0.05,
            tokenFile=writeToken(tmp_path, newToken()),
        ),
        reactor,
    )
    client.startService()
    try:
        sensor = client.sensors[0]
        yield waitFor(reactor, lambda: sensor.refused)
        yield task.deferLater(reactor, 1.5, lambda: None)
        assert sensor.connections == 0  # never got past "auth"
        assert sample(service, "sensornet_auth_failures_total", {"reason": "invalid"}) == 1
        assert sample(service, "sensornet_connections_total") == 1
        assert any("refused this sensor's credential" in (e.get("log_format") or "") for e in events)
    finally:
        globalLogPublisher.removeObserver(events.append)
        yield client.stopService()
        yield service.stopService()


def test_client_options_check_the_token_file(tmp_path):
    from twisted.python import usage

    from sensornet.tap.client import Options

    options = Options()
    with pytest.raises(usage.UsageError, match="--token-file"):
        options.parseOptions(["--kind", "temperature", "--token-file", str(tmp_path / "missing")])
    path = writeToken(tmp_path, newToken())
    options = Options()
    options.parseOptions(["--kind", "temperature", "--token-file", path])
    assert options.toConfig().tokenFile == path
