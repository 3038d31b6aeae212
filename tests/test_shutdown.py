"""
A stopped server leaves nothing behind: over real loopback sockets, every
connection it had (sensors, a live stream, an idle keep-alive HTTP client,
a sensor that never reads its replies) is closed, the one that would not
close is aborted after C{closeTimeout}, and no timer it created is still
pending. Also: the listeners' ports are had through public API, and a port
in use fails the start.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any, List, Optional, Set

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import CannotListenError, ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from sensornet.server import SensorServerService, ServerConfig

from test_web_api import deferLater, openStream, within

TIMEOUT = 30
CLOSE_TIMEOUT = 1.0


class Peer(Protocol):
    """
    A client connection that records what it received and when it closed.
    """

    def __init__(self, greeting: bytes = b"") -> None:
        self.greeting = greeting
        self.data = b""
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.reason: Optional[Failure] = None

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason
        self.closed.callback(None)


class Deaf(Peer):
    """
    A sensor that floods the server with lines it must answer and never
    reads a reply: the server's send buffer fills and stays full.
    """

    def connectionMade(self) -> None:
        # A small receive window, and no reading: the replies back up into
        # the server's own buffer.
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.transport.pauseProducing()
        self.flood()

    def flood(self) -> None:
        # Each junk line is answered with a ~100-byte error: 50 times what it costs.
        self.transport.write(b"x\n" * 200_000)


async def waitUntil(reactor: Any, predicate: Any, what: str) -> None:
    for _ in range(int(TIMEOUT / 0.02)):
        if predicate():
            return
        await deferLater(reactor, 0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def connect(reactor: Any, port: int, protocol: Peer) -> Peer:
    return await within(connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol), reactor)


def openDescriptors(reactor: Any) -> Set[Any]:
    return set(reactor.getReaders()) | set(reactor.getWriters())


@pytest.mark.timeout(90)
@pytest_twisted.ensureDeferred
async def test_stopped_server_leaves_no_connection_open_and_no_timer_pending(tmp_path: Path, reactor: Any):
    """
    A whole server (SQLite store, HTTP side) with two reading sensors, a
    live stream client, an idle keep-alive HTTP connection and a sensor
    that never reads: once C{stopService} has fired, every one of them has
    seen its connection closed (gracefully, but the deaf sensor's aborted
    once C{closeTimeout} has passed), the sensors got their acknowledgements
    first, and neither a delayed call nor a socket the server made is left
    in the reactor.
    """
    timersBefore = set(reactor.getDelayedCalls())
    descriptorsBefore = openDescriptors(reactor)
    config = ServerConfig(
        listen=["tcp:0:interface=127.0.0.1"],
        http="tcp:0:interface=127.0.0.1",
        store=f"sqlite:{tmp_path / 'shutdown.sqlite3'}",
        closeTimeout=CLOSE_TIMEOUT,
        httpAuth="none",
    )
    server = SensorServerService(config, reactor)
    server.startService()
    peers: List[Peer] = []
    try:
        (sensorPort,) = await within(server.whenListening(), reactor)
        webPort = await within(server.whenWebListening(), reactor)
        port, http = sensorPort.getHost().port, webPort.getHost().port

        readers = [
            await connect(reactor, port, Peer(b"temperature,sensor=s%d value=21.5,seq=1i\n" % i)) for i in range(2)
        ]
        peers.extend(readers)
        for reader in readers:
            await waitUntil(reactor, lambda: b"ack 1\n" in reader.data, "an acknowledgement")

        keepAlive = await connect(reactor, http, Peer(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
        peers.append(keepAlive)
        await waitUntil(reactor, lambda: keepAlive.data.endswith(b'{"status":"ok"}'), "the health answer")

        response, stream = await openStream(reactor, f"http://127.0.0.1:{http}/api/stream")
        assert response.code == 200
        await within(stream.whenContains(b"retry:"), reactor)

        deaf = await connect(reactor, port, Deaf())
        peers.append(deaf)
        paused = "sensornet_transports_paused"
        await waitUntil(reactor, lambda: server.metrics.registry.get_sample_value(paused) == 1, "a full send buffer")

        stopping = time.monotonic()
        await within(defer.maybeDeferred(server.stopService), reactor)
        stopped = time.monotonic()

        # It waited closeTimeout for the deaf sensor, then aborted it.
        assert stopped - stopping >= CLOSE_TIMEOUT * 0.9
        assert not server.factory.protocols
        assert server.metrics.registry.get_sample_value("sensornet_stream_clients") == 0
        # The deaf sensor learns of it once it reads again.
        deaf.transport.resumeProducing()
        await within(defer.gatherResults([peer.closed for peer in peers] + [stream.done]), reactor, 5)
        for graceful in readers + [keepAlive]:
            assert graceful.reason is not None and graceful.reason.check(ConnectionDone)
        assert deaf.reason is not None and deaf.reason.check(ConnectionLost), "aborted"
    finally:
        for peer in peers:
            if peer.transport is not None and peer.reason is None:
                peer.transport.abortConnection()
        await within(defer.DeferredList([peer.closed for peer in peers]), reactor)
        if server.running:
            await within(defer.maybeDeferred(server.stopService), reactor)

    # Our own clients' sockets are closed by now too (the last connectionLost
    # ran), so whatever is left was left by the server.
    left = [call for call in reactor.getDelayedCalls() if call not in timersBefore and call.active()]
    assert left == [], [str(call) for call in left]
    assert openDescriptors(reactor) <= descriptorsBefore


@pytest_twisted.ensureDeferred
async def test_listening_ports_come_from_public_api_and_stop_with_the_server(reactor: Any):
    """
    C{whenListening} and C{whenWebListening} give the bound ports (of
    C{tcp:0}); after the stop both ports refuse connections; a server
    without HTTP says so.
    """
    config = ServerConfig(
        listen=["tcp:0:interface=127.0.0.1"] * 2, http="tcp:0:interface=127.0.0.1", store="none", httpAuth="none"
    )
    server = SensorServerService(config, reactor)
    server.startService()
    try:
        ports = await within(server.whenListening(), reactor)
        web = await within(server.whenWebListening(), reactor)
        numbers = [p.getHost().port for p in ports] + [web.getHost().port]
        assert len(set(numbers)) == 3 and 0 not in numbers
    finally:
        await within(defer.maybeDeferred(server.stopService), reactor)
    for number in numbers:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", number), timeout=5).close()
    with pytest.raises(RuntimeError):
        SensorServerService(ServerConfig(listen=[], http=None, store="none"), reactor).whenWebListening()


@pytest.mark.parametrize("which", ["listen", "http"])
@pytest_twisted.ensureDeferred
async def test_a_port_in_use_fails_the_start(reactor: Any, which: str):
    """
    A sensor or HTTP port already taken makes C{startService} raise, so
    twistd exits instead of running deaf.
    """
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        config = ServerConfig(listen=["tcp:0:interface=127.0.0.1"], http=None, store="none", httpAuth="none")
        if which == "listen":
            config.listen = [endpoint]
        else:
            config.http = endpoint
        server = SensorServerService(config, reactor)
        with pytest.raises(CannotListenError):
            server.startService()
        await within(defer.maybeDeferred(server.stopService), reactor)
    finally:
        taken.close()
