"""
L{ListeningService} and L{OpenConnections} in memory: endpoints whose
listen() the tests answer by hand, L{MemoryReactor}, L{StringTransport} and
L{Clock}; no sockets.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from zope.interface import implementer

from sensornet.listening import ListeningService, OpenConnections

from test_web_hostile import loggedFailures


@implementer(IStreamServerEndpoint)
class HandAnsweredEndpoint:
    """
    An endpoint whose every listen() returns a Deferred the test fires.
    """

    def __init__(self) -> None:
        self.listens: List[Deferred[Any]] = []

    def listen(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.listens.append(d)
        return d


@implementer(IStreamServerEndpoint)
class TakenEndpoint:
    def listen(self, factory: Any) -> Deferred[Any]:
        return fail(CannotListenError("127.0.0.1", 5000, OSError("Address already in use")))


@implementer(IListeningPort)
class RecordingPort:
    def __init__(self) -> None:
        self.listening = True

    def startListening(self) -> None:
        pass

    def stopListening(self) -> None:
        self.listening = False

    def getHost(self) -> Any:
        return IPv4Address("TCP", "127.0.0.1", 4321)


def test_each_start_listens_again_and_tells_the_port():
    """
    whenListening fires with the bound port once bound (at once after); a
    stop closes it; a start after the stop listens anew (Twisted's
    StreamServerEndpointService does not).
    """
    endpoint = HandAnsweredEndpoint()
    service = ListeningService(endpoint, Factory.forProtocol(Protocol))
    early = service.whenListening()
    service.startService()
    assert not early.called
    port = RecordingPort()
    endpoint.listens[0].callback(port)
    assert early.result is port and service.whenListening().result is port
    assert service.stopService().called and not port.listening
    service.startService()
    assert len(endpoint.listens) == 2
    endpoint.listens[1].callback(RecordingPort())
    assert service.whenListening().result is not port
    service.stopService()


def test_a_real_endpoint_is_listened_on_at_start():
    reactor = MemoryReactor()
    service = ListeningService(TCP4ServerEndpoint(reactor, 0), Factory.forProtocol(Protocol))
    service.startService()
    assert IListeningPort.providedBy(service.whenListening().result) and len(reactor.tcpServers) == 1
    service.stopService()


def test_a_listen_failing_at_once_raises_from_start():
    """
    The port is taken: startService raises (so twistd exits), and
    whenListening fails with the same error until the service stops.
    """
    service = ListeningService(TakenEndpoint(), Factory.forProtocol(Protocol))
    with pytest.raises(CannotListenError):
        service.startService()
    waiter = service.whenListening()
    assert waiter.called
    with pytest.raises(CannotListenError):
        waiter.result.raiseException()
    waiter.addErrback(lambda _: None)
    assert service.stopService().called


def _listeningByHand() -> Tuple[HandAnsweredEndpoint, ListeningService, Deferred[Any]]:
    """
    A started service whose listen() is under way, and a waiter for its port.
    """
    endpoint = HandAnsweredEndpoint()
    service = ListeningService(endpoint, Factory.forProtocol(Protocol))
    service.startService()
    return endpoint, service, service.whenListening()


def test_a_listen_failing_later_is_logged_and_fails_the_waiters():
    """
    An endpoint that fails after start returned cannot raise from start:
    the failure is logged and given to whoever waits for the port.
    """
    endpoint, service, waiter = _listeningByHand()
    with loggedFailures() as failures:
        endpoint.listens[0].errback(CannotListenError("127.0.0.1", 5000, OSError("in use")))
    assert isinstance(waiter.result.value, CannotListenError)
    waiter.addErrback(lambda _: None)
    assert [event["log_failure"].type for event in failures] == [CannotListenError]


def test_stopping_before_the_port_is_bound_cancels_the_listen():
    """
    A stop while listen() is under way cancels it; waiters get
    CancelledError and nothing is logged.
    """
    _, service, waiter = _listeningByHand()
    with loggedFailures() as failures:
        assert service.stopService().called
    assert isinstance(waiter.result.value, CancelledError)
    waiter.addErrback(lambda _: None)
    assert failures == []


def _connect(connections: OpenConnections, port: int) -> Any:
    wrapper = connections.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
    wrapper.makeConnection(StringTransport())
    return wrapper


def test_close_all_closes_then_aborts_what_is_still_open_after_the_timeout():
    """
    closeAll asks every connection to close once its output is written;
    those still open after the timeout are aborted; it fires once none is
    open, and leaves no timer behind.
    """
    clock = Clock()
    connections = OpenConnections(Factory.forProtocol(Protocol))
    quick, stuck = _connect(connections, 1), _connect(connections, 2)
    assert len(connections) == 2
    closed = connections.closeAll(5, clock)
    assert quick.transport.disconnecting and stuck.transport.disconnecting
    quick.connectionLost(None)
    clock.advance(4.9)
    assert not stuck.transport.disconnected and not closed.called
    clock.advance(0.1)
    assert stuck.transport.disconnected, "aborted"
    stuck.connectionLost(None)
    assert closed.called and len(connections) == 0
    assert not clock.getDelayedCalls()


def test_close_all_without_connections_fires_at_once():
    clock = Clock()
    connections = OpenConnections(Factory.forProtocol(Protocol))
    assert connections.closeAll(5, clock).called
    quick = _connect(connections, 1)
    closed = connections.closeAll(5, clock)
    quick.connectionLost(None)
    assert closed.called and not clock.getDelayedCalls()
