"""
L{sensornet.directwrite.writeNow} over real loopback sockets: bytes keep
their order whatever the socket takes, the direct path leaves nothing in
Twisted's buffer, and any other transport goes through C{write}.
"""

from __future__ import annotations

from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet import defer, tcp
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from sensornet.directwrite import writeNow

from test_durability import sleep, waitFor


class Held(Protocol):
    """
    The server side: keeps its transport for the test to write on.
    """

    def connectionMade(self) -> None:
        self.factory.connected.callback(self)


class Reader(Protocol):
    """
    The client side: collects what arrives.
    """

    def __init__(self) -> None:
        self.received: List[bytes] = []
        self.lost = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)

    def total(self) -> int:
        return sum(map(len, self.received))


@defer.inlineCallbacks
def connectedPair(reactor: Any) -> Any:
    factory = Factory.forProtocol(Held)
    factory.connected = defer.Deferred()
    port = yield serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(factory)
    reader = Reader()
    yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
        Factory.forProtocol(lambda: reader)
    )
    server = yield factory.connected.addTimeout(10, reactor)
    return port, server, reader


@defer.inlineCallbacks
def receives(reactor: Any, reader: Reader, expected: bytes) -> Any:
    """
    Wait until C{reader} holds as many bytes as C{expected}; they must be
    exactly those, in order.
    """
    yield waitFor(reactor, lambda: reader.total() == len(expected), timeout=20, what="the bytes")
    assert b"".join(reader.received) == expected


@defer.inlineCallbacks
def closePair(port: Any, server: Held, reader: Reader) -> Any:
    server.transport.loseConnection()
    yield reader.lost
    yield port.stopListening()


@pytest.mark.timeout(30)
@pytest_twisted.inlineCallbacks
def test_a_write_with_nothing_buffered_is_sent_at_once(reactor) -> None:
    """
    On a plain TCP connection with an empty buffer, the bytes leave at once:
    nothing is buffered and the socket is not registered for writing (the
    attributes it relies on are those of the installed Twisted).
    """
    port, server, reader = yield connectedPair(reactor)
    try:
        transport = server.transport
        assert type(transport) is tcp.Server
        for name in ("_tempDataLen", "dataBuffer", "offset", "_writeDisconnected", "TLS", "socket"):
            assert hasattr(transport, name), name
        for k in range(100):
            writeNow(transport, b"ack %d\n" % k)
            assert transport._tempDataLen == 0 and transport.dataBuffer == b""
            assert transport not in reactor.getWriters()
        yield receives(reactor, reader, b"".join(b"ack %d\n" % k for k in range(100)))
    finally:
        yield closePair(port, server, reader)


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_bytes_keep_their_order_when_the_peer_stops_reading(reactor) -> None:
    """
    A client that does not read: once the socket's buffer is full, what it
    does not take is buffered by Twisted, later writes queue behind it, and
    when the client reads again it gets every byte in order.
    """
    port, server, reader = yield connectedPair(reactor)
    try:
        reader.transport.pauseProducing()
        transport = server.transport
        pieces = [(b"%08d" % k) * 512 + b"\n" for k in range(2000)]  # 8 MB
        for piece in pieces:
            writeNow(transport, piece)
        # More than loopback's socket buffers hold: Twisted holds the rest.
        assert transport._tempDataLen or transport.offset < len(transport.dataBuffer)
        small = [b"ack %d\n" % k for k in range(10)]
        for piece in small:
            writeNow(transport, piece)
        reader.transport.resumeProducing()
        yield receives(reactor, reader, b"".join(pieces + small))
    finally:
        yield closePair(port, server, reader)


@pytest.mark.timeout(30)
@pytest_twisted.inlineCallbacks
def test_a_closing_connection_goes_through_twisted(reactor) -> None:
    """
    After loseConnection the bytes go to Twisted's write, which sends them
    before it closes, as it always did.
    """
    port, server, reader = yield connectedPair(reactor)
    try:
        transport = server.transport
        writeNow(transport, b"before\n")
        transport.loseConnection()
        writeNow(transport, b"late\n")
        assert transport._tempDataLen == len(b"late\n")
        yield reader.lost.addTimeout(10, reactor)
        assert b"".join(reader.received) == b"before\nlate\n"
    finally:
        yield port.stopListening()


@pytest.mark.timeout(30)
@pytest_twisted.inlineCallbacks
def test_a_send_to_a_reset_connection_never_raises(reactor) -> None:
    """
    A send to a peer that is gone never raises from writeNow: the bytes go
    to Twisted's write, and the connection is lost through connectionLost.
    """
    port, server, reader = yield connectedPair(reactor)
    lost = defer.Deferred()
    server.connectionLost = lambda reason: lost.callback(None)
    try:
        transport = server.transport
        reader.transport.abortConnection()
        yield reader.lost
        yield sleep(reactor, 0.1)
        for _ in range(50):
            writeNow(transport, b"after the reset\n" * 100)
        yield lost.addTimeout(10, reactor)
    finally:
        yield port.stopListening()


def test_any_other_transport_gets_write() -> None:
    """
    A transport that is not a plain TCP server connection (here a test's
    StringTransport) gets the bytes through its write, whole.
    """
    transport = StringTransport()
    writeNow(transport, b"ack 1\n")
    writeNow(transport, b"ack 2\n")
    assert transport.value() == b"ack 1\nack 2\n"


@pytest.mark.timeout(30)
@pytest_twisted.inlineCallbacks
def test_a_connection_behind_a_plain_protocol_wrapper_is_sent_at_once(reactor) -> None:
    """
    The server's listeners wrap each sensor protocol in a plain
    ProtocolWrapper (connection caps): writeNow looks through it, so the
    ack path really takes the direct send.
    """
    from sensornet.caps import CappedFactory
    from sensornet.listening import OpenConnections

    assert CappedFactory.protocol is ProtocolWrapper
    assert OpenConnections.protocol is ProtocolWrapper
    port, server, reader = yield connectedPair(reactor)
    try:
        wrapper = ProtocolWrapper(WrappingFactory(Factory()), Protocol())
        wrapper.makeConnection(server.transport)
        writeNow(wrapper, b"through the wrapper\n")
        assert server.transport._tempDataLen == 0 and server.transport not in reactor.getWriters()
        yield receives(reactor, reader, b"through the wrapper\n")
    finally:
        yield closePair(port, server, reader)
