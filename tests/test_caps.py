"""
Connection caps (issue 10, item 8): a total cap below the open-file limit
keeping a reserve, and a per-address cap, on the sensor port and on the HTTP
port, so one address cannot lock out the others or the HTTP side. Proved on
StringTransports, over real loopback sockets (127.0.0.2 as the greedy
address, 127.0.0.1 as everyone else), and against a real twistd server whose
open-file limit is lowered, so it stays responsive at the limit.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import time
from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.web.client import Agent, readBody

from sensornet.caps import (
    AUTO,
    HTTP_REFUSAL,
    SENSOR_REFUSAL,
    CappedFactory,
    ConnectionLimits,
    defaultLimits,
    parseNetworks,
    serverLimits,
)
from sensornet.metrics import ServerMetrics
from sensornet.server import SensorServerService, ServerConfig

from serverproc import ServerProcess, freePort
from test_guardrails import GoodSensor, Peer, closeAll, sleep, waitUntil, within

REFUSED = "sensornet_connections_refused_total"


# -- the arithmetic --------------------------------------------------------------


def test_default_totals_keep_a_reserve_and_give_http_its_own_share():
    """
    With the usual hard limit of 20,000 descriptors: 256 reserved, 512 for
    HTTP, the rest (19,232) for sensors; smaller limits scale down, and
    the two totals plus the reserve never exceed the limit.
    """
    assert defaultLimits(20_000) == (19_232, 512)
    assert defaultLimits(1024) == (672, 96)
    assert defaultLimits(200) == (132, 18)
    for limit in (8, 64, 200, 1024, 4096, 65536, 1 << 20):
        sensor, http = defaultLimits(limit)
        assert sensor >= 1 and http >= 1
        assert sensor + http + min(256, limit // 4) == limit
    assert defaultLimits(None) == (None, None)
    with pytest.raises(ValueError):
        defaultLimits(1)


def test_a_per_address_cap_above_the_total_is_lowered_to_it():
    sensor, http = serverLimits(AUTO, 256, 10, 64, (), 200)
    assert (sensor.total, sensor.perAddress) == (132, 132)
    assert (http.total, http.perAddress) == (10, 10)
    sensor, http = serverLimits(None, None, None, None, (), 200)
    assert (sensor.total, sensor.perAddress, http.total, http.perAddress) == (None, None, None, None)


def test_caps_that_eat_the_reserve_are_reported():
    from sensornet.caps import overcommitted

    assert overcommitted(19_232, 512, 20_000) is None
    assert "reserve of 256" in overcommitted(19_500, 512, 20_000)
    assert "without a total cap" in overcommitted(None, 512, 20_000)
    assert overcommitted(None, None, None) is None


def test_exempt_networks():
    limits = ConnectionLimits(10, 2, parseNetworks("127.0.0.1, 10.1.0.0/16,::1"))
    assert limits.isExempt("127.0.0.1") and limits.isExempt("10.1.2.3") and limits.isExempt("::1")
    assert not limits.isExempt("127.0.0.2") and not limits.isExempt("10.2.0.1") and not limits.isExempt("x")
    assert parseNetworks("none") == ()
    with pytest.raises(ValueError, match="not an address"):
        parseNetworks("127.0.0.1,bogus")
    with pytest.raises(ValueError):
        ConnectionLimits(0, None)


# -- on StringTransports ---------------------------------------------------------------


class Recorder(Protocol):
    """
    What the wrapped factory builds: records that it was made.
    """

    made = 0

    def connectionMade(self) -> None:
        Recorder.made += 1


def capped(total: Any = None, perAddress: Any = None, exempt: str = "none", **keywords: Any) -> CappedFactory:
    metrics = ServerMetrics()
    return CappedFactory(
        Factory.forProtocol(Recorder), ConnectionLimits(total, perAddress, parseNetworks(exempt)), Clock(),
        metrics, **keywords,
    )


def connectFrom(factory: CappedFactory, host: str, port: int = 40000) -> Any:
    address = IPv4Address("TCP", host, port)
    protocol = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def refused(factory: CappedFactory, reason: str, port: str = "sensor") -> float:
    return factory._metrics.registry.get_sample_value(REFUSED, {"port": port, "reason": reason})


def test_per_address_cap_refuses_with_one_line_and_counts():
    """
    The third connection from one address, with a cap of two, gets
    C{error: too many connections} and is closed, without the wrapped
    factory building anything for it; another address still connects;
    closing one frees its address's slot.
    """
    factory = capped(perAddress=2)
    opened = [connectFrom(factory, "10.0.0.1", port) for port in (1, 2)]
    made = Recorder.made
    protocol, transport = connectFrom(factory, "10.0.0.1", 3)
    assert transport.value() == SENSOR_REFUSAL == b"error: too many connections\n"
    assert transport.disconnecting
    assert Recorder.made == made
    assert refused(factory, "per_address") == 1 and refused(factory, "total") == 0
    # The refused connection says nothing more, whatever it sends.
    protocol.dataReceived(b"temperature,sensor=a value=1,seq=1i\n")
    assert transport.value() == SENSOR_REFUSAL
    other, otherTransport = connectFrom(factory, "10.0.0.2")
    assert not otherTransport.disconnecting and Recorder.made == made + 1
    assert factory.openFrom("10.0.0.1") == 2 and len(factory) == 3
    opened[0][0].connectionLost(None)
    assert factory.openFrom("10.0.0.1") == 1
    _, again = connectFrom(factory, "10.0.0.1", 4)
    assert not again.disconnecting
    assert factory.openFrom("10.0.0.1") == 2


def test_total_cap_applies_to_every_address_and_exempt_ones_too():
    """
    The total cap counts every connection; an exempt address escapes only
    the per-address cap. A UNIX socket peer (no host) counts against the
    total only.
    """
    factory = capped(total=3, perAddress=1, exempt="127.0.0.1")
    for port in (1, 2):
        _, transport = connectFrom(factory, "127.0.0.1", port)
        assert not transport.disconnecting
    unix = factory.buildProtocol(UNIXAddress(b"/tmp/x"))
    unix.makeConnection(StringTransport())
    assert not unix.transport.disconnecting
    _, transport = connectFrom(factory, "127.0.0.1", 3)
    assert transport.disconnecting
    assert refused(factory, "total") == 1


def test_a_burst_of_refusals_past_max_refusing_is_closed_at_accept():
    """
    At most C{maxRefusing} refused connections hold a descriptor for their
    reply at once; past that, a plain TCP listener's refusals are closed
    at accept (C{buildProtocol} returns L{None}), and a TLS listener's are
    aborted without a reply. All are counted.
    """
    factory = capped(perAddress=1)
    factory.maxRefusing = 2
    factory.closeAtAccept = True
    connectFrom(factory, "10.0.0.1")
    told = [connectFrom(factory, "10.0.0.1", port) for port in (2, 3)]
    assert factory.refusing == 2
    assert factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 4)) is None
    assert refused(factory, "per_address") == 3
    told[0][0].connectionLost(None)
    assert factory.refusing == 1
    factory.closeAtAccept = False
    connectFrom(factory, "10.0.0.1", 5)
    _, aborted = connectFrom(factory, "10.0.0.1", 6)
    assert aborted.value() == b"" and aborted.disconnecting
    assert refused(factory, "per_address") == 5


def test_only_plain_tcp_and_unix_listeners_close_at_accept():
    from sensornet.caps import closesAtAccept

    assert closesAtAccept(["tcp:5000", "tcp6:5000:interface=\\:\\:1", "unix:/run/s.sock"])
    assert not closesAtAccept(["tcp:5000", "ssl:5001:privateKey=k.pem"])


def test_http_refusal_is_a_503_and_open_connections_are_a_gauge():
    metrics = ServerMetrics()
    factory = CappedFactory(
        Factory.forProtocol(Recorder), ConnectionLimits(1, None), Clock(), metrics, port="http",
        refusal=HTTP_REFUSAL, openGauge=metrics.httpConnectionsOpen,
    )
    first, _ = connectFrom(factory, "10.0.0.1")
    assert metrics.registry.get_sample_value("sensornet_http_connections_open") == 1
    _, transport = connectFrom(factory, "10.0.0.2")
    assert transport.value().startswith(b"HTTP/1.1 503 ") and transport.disconnecting
    assert refused(factory, "total", "http") == 1
    first.connectionLost(None)
    assert metrics.registry.get_sample_value("sensornet_http_connections_open") == 0
    assert metrics.registry.get_sample_value("sensornet_connection_limit", {"port": "http", "scope": "total"}) == 1
    assert metrics.registry.get_sample_value(
        "sensornet_connection_limit", {"port": "http", "scope": "per_address"}
    ) == -1


def test_refusals_are_logged_at_most_once_per_interval_with_their_count():
    events: List[dict] = []
    factory = capped(perAddress=1)
    from twisted.logger import Logger

    factory._log = Logger(observer=events.append)
    connectFrom(factory, "10.0.0.1")
    for port in range(2, 12):
        connectFrom(factory, "10.0.0.1", port)
    assert len(events) == 1 and events[0]["count"] == 1
    factory.clock.advance(factory.logInterval)
    connectFrom(factory, "10.0.0.1", 99)
    assert len(events) == 2 and events[1]["count"] == 10


def test_every_refusal_series_is_exported_at_zero():
    metrics = ServerMetrics()
    for port in ("sensor", "http"):
        for reason in ("total", "per_address"):
            assert metrics.registry.get_sample_value(REFUSED, {"port": port, "reason": reason}) == 0


# -- the options --------------------------------------------------------------------


def parse(*argv: str) -> ServerConfig:
    from sensornet.tap.server import Options

    options = Options()
    options.parseOptions(["--store", "none", "--http-auth", "none", *argv])
    return options.toConfig()


def test_cap_options_default_to_the_documented_values():
    config = parse()
    assert config.maxConnections == ServerConfig().maxConnections == "auto"
    assert config.maxConnectionsPerAddress == ServerConfig().maxConnectionsPerAddress == 256
    assert config.maxHTTPConnections == ServerConfig().maxHTTPConnections == "auto"
    assert config.maxHTTPConnectionsPerAddress == ServerConfig().maxHTTPConnectionsPerAddress == 64
    assert config.capExempt == ServerConfig().capExempt == parseNetworks("127.0.0.1,::1")


def test_cap_options_take_numbers_auto_and_none():
    config = parse(
        "--max-connections", "100", "--max-connections-per-address", "none", "--max-http-connections", "none",
        "--max-http-connections-per-address", "3", "--cap-exempt", "none",
    )
    assert config.maxConnections == 100 and config.maxConnectionsPerAddress is None
    assert config.maxHTTPConnections is None and config.maxHTTPConnectionsPerAddress == 3
    assert config.capExempt == ()


@pytest.mark.parametrize(
    "option, bad",
    [
        ("max-connections", "0"),
        ("max-connections", "-5"),
        ("max-connections", "lots"),
        ("max-connections-per-address", "auto"),
        ("max-http-connections", "0"),
        ("max-http-connections-per-address", "x"),
        ("cap-exempt", "10.0.0.0/33"),
    ],
)
def test_cap_options_refuse_nonsense(option: str, bad: str):
    with pytest.raises(usage.UsageError, match=f"--{option}"):
        parse(f"--{option}", bad)


# -- over real loopback sockets --------------------------------------------------------


async def startServer(reactor: Any, **config: Any) -> Any:
    server = SensorServerService(
        ServerConfig(
            listen=["tcp:0:interface=127.0.0.1"], http="tcp:0:interface=127.0.0.1", store="none",
            logReadings=False, handshakeTimeout=None, httpAuth="none", **config,
        ),
        reactor,
    )
    server.startService()
    (port,) = await within(server.whenListening(), reactor)
    web = await within(server.whenWebListening(), reactor)
    return server, port.getHost().port, web.getHost().port


async def connectFromHost(reactor: Any, host: str, port: int, protocol: Peer) -> Any:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(host, 0))
    return await within(connectProtocol(endpoint, protocol), reactor)


async def healthz(reactor: Any, port: int) -> int:
    response = await within(Agent(reactor).request(b"GET", b"http://127.0.0.1:%d/healthz" % port), reactor)
    await within(readBody(response), reactor)
    return response.code


def sample(server: Any, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, labels)


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_one_address_at_its_cap_does_not_lock_out_another_nor_healthz(reactor: Any):
    """
    127.0.0.2 opens 30 sensor connections against a per-address cap of 20:
    20 stay open, 10 are told C{error: too many connections} and closed,
    counted under C{per_address}; meanwhile a sensor from 127.0.0.1 (not
    exempt here) connects, writes and is acknowledged, and C{/healthz}
    answers.
    """
    server, port, webPort = await startServer(reactor, maxConnectionsPerAddress=20, capExempt=())
    peers: List[Peer] = []
    try:
        for _ in range(30):
            peers.append(await connectFromHost(reactor, "127.0.0.2", port, Peer()))
        greedy = list(peers)
        await waitUntil(reactor, lambda: sum(p.reason is not None for p in greedy) == 10, "10 refusals")
        refusedPeers = [p for p in greedy if p.reason is not None]
        assert all(p.data == b"error: too many connections\n" for p in refusedPeers)
        assert sum(p.reason is None for p in greedy) == 20
        assert server.sensorConnections.openFrom("127.0.0.2") == 20
        assert sample(server, REFUSED, port="sensor", reason="per_address") == 10
        assert sample(server, REFUSED, port="sensor", reason="total") == 0
        good = await connectFromHost(reactor, "127.0.0.1", port, GoodSensor(reactor))
        peers.append(good)
        await waitUntil(reactor, lambda: good.acks >= 5, "five acknowledgements")
        assert good.reason is None
        assert await healthz(reactor, webPort) == 200
        assert sample(server, "sensornet_connections_open") == 21
    finally:
        await closeAll(reactor, server, peers)


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_http_port_exhausted_by_one_address_leaves_healthz_and_sensors(reactor: Any):
    """
    127.0.0.2 holds 5 idle HTTP connections, its per-address cap; its next
    one gets a 503 and is closed (counted under C{http}/C{per_address});
    C{/healthz} from 127.0.0.1 still answers. Then with the HTTP side's
    total cap reached as well, a sensor still connects and is
    acknowledged: the ports' caps are apart.
    """
    server, port, webPort = await startServer(
        reactor, maxHTTPConnections=6, maxHTTPConnectionsPerAddress=5, capExempt=()
    )
    peers: List[Peer] = []
    try:
        for _ in range(5):
            peers.append(await connectFromHost(reactor, "127.0.0.2", webPort, Peer()))
        await waitUntil(reactor, lambda: len(server._webConnections) == 5, "five HTTP connections")
        over = await connectFromHost(reactor, "127.0.0.2", webPort, Peer())
        peers.append(over)
        await within(over.closed, reactor)
        assert over.data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert sample(server, REFUSED, port="http", reason="per_address") == 1
        assert await healthz(reactor, webPort) == 200
        # Fill the total from a third address; the sensor port is not affected.
        peers.append(await connectFromHost(reactor, "127.0.0.3", webPort, Peer()))
        await waitUntil(reactor, lambda: len(server._webConnections) == 6, "six HTTP connections")
        assert sample(server, "sensornet_http_connections_open") == 6
        good = await connectFromHost(reactor, "127.0.0.1", port, GoodSensor(reactor))
        peers.append(good)
        await waitUntil(reactor, lambda: good.acks >= 5, "five acknowledgements")
        late = await connectFromHost(reactor, "127.0.0.1", webPort, Peer())
        peers.append(late)
        await within(late.closed, reactor)
        assert late.data.startswith(b"HTTP/1.1 503 ")
        assert sample(server, REFUSED, port="http", reason="total") == 1
    finally:
        await closeAll(reactor, server, peers)


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_total_sensor_cap_refuses_everyone_over_it_and_frees_slots_on_close(reactor: Any):
    """
    With a total of 10 sensor connections, the eleventh from any address is
    refused under C{total}; once one closes, a new one connects and is
    acknowledged.
    """
    server, port, _ = await startServer(reactor, maxConnections=10)
    peers: List[Peer] = []
    try:
        for index in range(10):
            peers.append(await connectFromHost(reactor, f"127.0.0.{2 + index % 3}", port, Peer()))
        await waitUntil(reactor, lambda: len(server.factory.protocols) == 10, "ten connections")
        over = await connectFromHost(reactor, "127.0.0.1", port, Peer())
        peers.append(over)
        await within(over.closed, reactor)
        assert over.data == b"error: too many connections\n"
        assert sample(server, REFUSED, port="sensor", reason="total") == 1
        peers[0].transport.loseConnection()
        await within(peers[0].closed, reactor)
        await waitUntil(reactor, lambda: len(server.factory.protocols) == 9, "a free slot")
        good = await connectFromHost(reactor, "127.0.0.1", port, GoodSensor(reactor))
        peers.append(good)
        await waitUntil(reactor, lambda: good.acks >= 3, "acknowledgements")
    finally:
        await closeAll(reactor, server, peers)


# -- a real server at its open-file limit ------------------------------------------------


FILE_LIMIT = 200


def lowFileLimit() -> None:
    # Soft and hard both: the server raises its soft limit to the hard one.
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))


def readAll(sock: socket.socket, timeout: float) -> bytes:
    """
    What C{sock} receives until its peer closes it (a reset counts as a
    close); L{AssertionError} if it is still open after C{timeout} s.
    """
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data
    except socket.timeout:
        raise AssertionError(f"still open after {timeout} s, having sent {data!r}")


def httpGet(port: int, path: str, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        return readAll(s, timeout)


@pytest.mark.timeout(120)
def test_server_at_its_open_file_limit_stays_responsive(tmp_path: Any):
    """
    A real twistd server with an open-file limit of 200 (so, by default, 132
    sensor connections, 18 HTTP ones and 50 descriptors in reserve): one
    address opens 300 sensor connections. 132 stay open and the rest are
    told C{error: too many connections} at once; the server never runs out
    of descriptors (no failed accept in its log), C{/healthz} answers
    throughout, and once the greedy address lets go of some connections a
    sensor from 127.0.0.1 connects and is acknowledged.
    """
    webPort = freePort()
    # A real store (the HTTP side's token check needs one; /healthz is open).
    proc = ServerProcess(
        "sqlite:" + str(tmp_path / "caps.db"), str(tmp_path),
        extra=["--http", f"tcp:{webPort}:interface=127.0.0.1", "--http-auth", "none", "--no-log-readings",
               "--handshake-timeout", "0"],
    )
    proc.process = subprocess.Popen(
        proc.command(), cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lowFileLimit,
    )
    greedy: List[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.alive(), proc.log()
            try:
                assert httpGet(webPort, "/healthz", 1).startswith(b"HTTP/1.1 200")
                break
            except (OSError, AssertionError):
                assert time.monotonic() < deadline, proc.log()
                time.sleep(0.1)
        assert "sensors 132 in all, 132 per address; HTTP 18 in all" in proc.log()
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", proc.port), timeout=10, source_address=("127.0.0.2", 0))
            greedy.append(s)
        # Each refused one is closed at once: told why, or (past the 16
        # refusals whose reply may be on its way at once) closed at accept.
        told = 0
        for s in greedy[132:]:
            data = readAll(s, 5)
            assert data in (b"error: too many connections\n", b""), proc.log()
            told += bool(data)
        assert told >= 1
        # The first 132 are still open: nothing to read, no EOF.
        for s in greedy[:132]:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
        assert httpGet(webPort, "/healthz").startswith(b"HTTP/1.1 200")
        # Everyone is over the total now, 127.0.0.1 included, and told so.
        with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as s:
            assert readAll(s, 5) == b"error: too many connections\n"
        assert "EMFILE" not in proc.log()
        for s in greedy[:10]:
            s.close()
        deadline = time.monotonic() + 20
        while True:
            with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as s:
                s.sendall(b"temperature,sensor=late value=1,seq=1i\n")
                s.settimeout(5)
                reply = s.recv(100)
            if reply == b"ack 1\n":
                break
            assert reply in (b"error: too many connections\n", b"") and time.monotonic() < deadline
            time.sleep(0.1)
        assert proc.alive()
        log = proc.log()
        assert "Could not accept" not in log and "EMFILE" not in log and "Too many open files" not in log, log
    finally:
        for s in greedy:
            s.close()
        proc.kill()
