"""
Listening on an endpoint, and letting go of it, through public API only.

  - L{ListeningService} listens with a factory while it runs, tells whoever
    asks which port it got (how tests and embedders learn the port of
    C{tcp:0}), and makes a failure to listen (the port is taken) raise from
    C{startService}, so C{twistd} fails loudly instead of logging and
    running deaf. Twisted's C{StreamServerEndpointService} keeps both of
    these behind private attributes (C{_waitingForPort},
    C{_raiseSynchronously}).
  - L{OpenConnections} wraps a server factory and keeps the connections it
    has open, so a stopping server can close every one of them and abort
    those that will not go; it is a L{sensornet.caps.CappedFactory}, so it
    can also cap how many it keeps open.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

from .caps import CappedFactory

__all__ = ["ListeningService", "OpenConnections"]


class ListeningService(Service):
    """
    Listens on C{endpoint} with C{factory} from start to stop; each start
    listens again.

    @ivar endpoint: Where to listen (an L{IStreamServerEndpoint}).
    @ivar factory: The factory for the connections accepted.
    """

    _log = Logger()

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> None:
        self.endpoint = endpoint
        self.factory = factory
        # At most one of these is set: the listen() under way, the port it
        # gave, or why it failed. All three are None while stopped.
        self._listening: Optional[Deferred[IListeningPort]] = None
        self._port: Optional[IListeningPort] = None
        self._failure: Optional[Failure] = None
        self._waiting: List[Deferred[IListeningPort]] = []

    def privilegedStartService(self) -> None:
        """
        Listen now (before C{twistd} drops privileges, so a port below 1024
        can be bound).

        @raise Exception: Whatever the endpoint failed with at once (such as
            L{twisted.internet.error.CannotListenError}); L{whenListening}
            then fails with it too, until the service is stopped.
        """
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        """
        Listen, unless L{privilegedStartService} already did.

        @raise Exception: As L{privilegedStartService}.
        """
        super().startService()
        if self._listening is None and self._port is None and self._failure is None:
            self._listen()

    def stopService(self) -> Deferred[None]:
        """
        Stop listening (or give up a listen still under way).

        @return: A L{Deferred} firing once the port is closed; connections
            already accepted stay open.
        """
        super().stopService()
        listening, self._listening = self._listening, None
        if listening is not None:
            listening.cancel()
        port, self._port = self._port, None
        self._failure = None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening).addCallback(lambda _: None)

    def whenListening(self) -> Deferred[IListeningPort]:
        """
        The port listened on, once bound.

        @return: A L{Deferred} firing with the L{IListeningPort} (at once if
            bound; at the next start if stopped), or failing as the listen
            did, or with L{CancelledError} if the service stops first.
        """
        if self._port is not None:
            return succeed(self._port)
        if self._failure is not None:
            return fail(self._failure)
        waiter: Deferred[IListeningPort] = Deferred()
        self._waiting.append(waiter)
        return waiter

    def _listen(self) -> None:
        failedNow: List[Failure] = []
        starting = True

        def listened(port: IListeningPort) -> None:
            self._listening = None
            self._port = port
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                waiter.callback(port)

        def failed(failure: Failure) -> None:
            self._listening = None
            self._failure = failure
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                waiter.errback(failure)
            if starting:
                failedNow.append(failure)
            elif not failure.check(CancelledError):
                self._log.failure("Could not listen on {endpoint}", failure, endpoint=self.endpoint)

        listening = self.endpoint.listen(self.factory)
        self._listening = listening
        listening.addCallbacks(listened, failed)
        starting = False
        if failedNow:
            failedNow[0].raiseException()


class OpenConnections(CappedFactory):
    """
    A server factory that builds its connections with C{wrappedFactory} and
    keeps those open, so that L{closeAll} can close them. Without C{limits}
    (see L{CappedFactory}) it caps nothing.

    The connections' protocols see a L{ProtocolWrapper} as their transport;
    it passes every transport call on.
    """

    def __init__(self, wrappedFactory: IProtocolFactory, **keywords: Any) -> None:
        """
        @param keywords: For L{CappedFactory}: C{limits}, C{clock},
            C{metrics}, C{port}, C{refusal}, C{openGauge}.
        """
        super().__init__(wrappedFactory, **keywords)
        self._whenNoneOpen: List[Deferred[None]] = []

    def unregisterProtocol(self, protocol: ProtocolWrapper) -> None:
        """
        Forget a connection that closed.
        """
        super().unregisterProtocol(protocol)
        if not self.protocols:
            waiting, self._whenNoneOpen = self._whenNoneOpen, []
            for waiter in waiting:
                waiter.callback(None)

    def closeAll(self, timeout: float, clock: IReactorTime) -> Deferred[None]:
        """
        Close every open connection once what was written to it has been
        sent; abort those still open after C{timeout} seconds (a client that
        does not read would otherwise keep its connection, and this
        process's memory, forever).

        @return: A L{Deferred} firing once no connection is open.
        """
        if not self.protocols:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._whenNoneOpen.append(waiter)
        for protocol in list(self.protocols):
            protocol.loseConnection()
        if not self.protocols:
            return waiter
        abort: IDelayedCall = clock.callLater(timeout, self._abortAll)

        def cancelAbort(result: None) -> None:
            if abort.active():
                abort.cancel()

        return waiter.addCallback(cancelAbort)

    def _abortAll(self) -> None:
        for protocol in list(self.protocols):
            if protocol.transport is not None:
                protocol.transport.abortConnection()
