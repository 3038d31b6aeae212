"""
A server's in-memory view of the credential registry: token checks with no
I/O on the reactor thread, and revocations announced within a poll.

L{CredentialCache} loads every valid credential once, on a thread of its
own, then polls the registry's revision (one cheap query) every
C{interval} seconds and reloads only when it changed. Every server sharing
a store therefore sees an added, rotated or revoked credential within about
one C{interval}, and a revocation reaches L{CredentialCache.subscribeRevoked}
callbacks then (the sensor side closes the live connections of those
names; see C{docs/security.md}).
"""

from __future__ import annotations

import hmac
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..interfaces import IBlockingRunner
from ..store.threads import WorkerThreads
from .registry import Principal, Registry
from .tokens import MAX_TOKEN_LENGTH, tokenHash

__all__ = ["CredentialCache"]

# Bytes of a token's hash that index the table; the whole hash is then
# compared with hmac.compare_digest.
_KEY_BYTES = 8

_Table = Dict[bytes, Tuple[Tuple[bytes, Principal], ...]]


def _index(principals: Dict[bytes, Principal]) -> _Table:
    table: Dict[bytes, List[Tuple[bytes, Principal]]] = {}
    for digest, principal in principals.items():
        table.setdefault(digest[:_KEY_BYTES], []).append((digest, principal))
    return {key: tuple(entries) for key, entries in table.items()}


class CredentialCache(Service):
    """
    The valid credentials of the store at C{storeURL}, in memory.

    @ivar ready: A L{Deferred} fired (with L{None}) once the first load is
        done; until then L{verify} accepts nothing. If the store cannot be
        reached it keeps trying every C{interval} seconds.
    @ivar revision: The registry revision loaded last, or L{None} before
        the first load.
    @ivar polls: Polls finished (successful or not): tests count them.
    @ivar failures: Polls that failed (store unreachable ...). The cache
        keeps what it loaded last meanwhile: a revocation made during an
        outage takes effect once the store answers again.
    @cvar logInterval: Seconds between two log lines about a failing store.
    """

    _log = Logger()
    logInterval = 60.0

    def __init__(
        self,
        storeURL: str,
        reactor: IReactorTime,
        interval: float = 1.0,
        registryFactory: Callable[[str], Registry] = Registry,
        runner: Optional[IBlockingRunner] = None,
    ) -> None:
        """
        @param reactor: Runs the poll timer; with the default C{runner} it
            must provide L{IReactorFromThreads} too.
        @param interval: Seconds between two polls of the revision (C{> 0}).
        @param registryFactory: Makes the blocking registry (tests inject).
        @param runner: Runs the registry's blocking calls; by default one
            daemon thread of its own (L{WorkerThreads}), which closes the
            registry's connection when it exits.
        """
        if not interval > 0:
            raise ValueError("the poll interval must be > 0 seconds")
        self.storeURL = storeURL
        self.interval = interval
        self._reactor = reactor
        self._registry = registryFactory(storeURL)
        self._runner: IBlockingRunner = runner if runner is not None else WorkerThreads(
            cast(IReactorFromThreads, reactor), 1, name="sensornet-credentials", onExit=self._registry.close
        )
        self._table: _Table = {}
        self._hashByName: Dict[str, bytes] = {}
        self._subscribers: List[Callable[[FrozenSet[str]], Any]] = []
        self._loop: Optional[LoopingCall] = None
        self._lastLogged: Optional[float] = None
        self._unlogged = 0
        self.ready: Deferred[None] = Deferred()
        self.revision: Optional[int] = None
        self.polls = 0
        self.failures = 0

    # -- the reactor-side API -------------------------------------------------

    def verify(self, token: object) -> Optional[Principal]:
        """
        The L{Principal} C{token} speaks for, or L{None} if it is not the
        token of a valid credential (unknown, revoked, rotated away, not a
        string, or the cache not loaded yet).

        In memory only, no I/O: fit for the reactor thread. The token is
        hashed (SHA-256), a few bytes of the hash find the candidates and
        the whole hash is compared with L{hmac.compare_digest}. The time
        taken depends on the token's length and on its hash, which a caller
        cannot steer towards a stored one: it says nothing about how close a
        guess was.
        """
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        digest = tokenHash(token)
        found: Optional[Principal] = None
        for stored, principal in self._table.get(digest[:_KEY_BYTES], ()):
            if hmac.compare_digest(stored, digest):
                found = principal
        return found

    def principalNamed(self, name: str) -> Optional[Principal]:
        """
        The L{Principal} of the valid credential called C{name}, or L{None}
        (unknown, revoked, or the cache not loaded yet). In memory only:
        how a TLS client certificate, which names its sensor, is mapped to
        a live credential, so revoking a sensor cuts off its certificate.
        """
        digest = self._hashByName.get(name)
        if digest is None:
            return None
        for stored, principal in self._table.get(digest[:_KEY_BYTES], ()):
            if stored == digest:
                return principal
        return None

    def subscribeRevoked(self, callback: Callable[[FrozenSet[str]], Any]) -> Callable[[], None]:
        """
        Call C{callback(names)} on the reactor thread after each reload in
        which credentials were revoked or rotated (or deleted): C{names} is
        the frozenset of their names. Not called for the first load.

        @return: A function that unsubscribes C{callback}.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def __len__(self) -> int:
        """
        How many valid credentials are loaded.
        """
        return len(self._hashByName)

    # -- service ----------------------------------------------------------------

    def startService(self) -> None:
        """
        Start the thread and the first load, then poll every C{interval}.
        """
        super().startService()
        self._runner.start()
        self._loop = LoopingCall(self._poll)
        self._loop.clock = self._reactor
        # The loop waits for each poll's Deferred before timing the next:
        # polls never overlap, however slow the store.
        self._loop.start(self.interval, now=True).addErrback(self._loopFailed)

    def stopService(self) -> "Deferred[Any]":
        """
        Stop polling and let the thread exit (closing the registry's
        connection). Fires within 5 seconds even if the thread is stuck in
        a database call (it is a daemon and is left behind).
        """
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        stopped = maybeDeferred(self._runner.stop)
        stopped.addTimeout(5.0, self._reactor)
        return stopped.addErrback(lambda _: None)

    # -- polling ----------------------------------------------------------------

    def _poll(self) -> "Deferred[None]":
        known = self.revision
        d = self._runner.run(self._fetch, known)
        d.addCallbacks(self._fetched, self._failed)
        return d

    def _fetch(self, known: Optional[int]) -> Optional[Tuple[int, Dict[bytes, Principal]]]:
        """
        On the cache's thread: the registry's snapshot if its revision is
        not C{known}, else L{None} (one query).
        """
        if known is not None and self._registry.revision() == known:
            return None
        return self._registry.snapshot()

    def _fetched(self, result: Optional[Tuple[int, Dict[bytes, Principal]]]) -> None:
        self.polls += 1
        if self._lastLogged is not None:
            self._log.info(
                "credential registry reachable again after {count} failed poll(s)", count=self._unlogged + 1
            )
            self._lastLogged = None
            self._unlogged = 0
        if result is None:
            return
        revision, principals = result
        first = self.revision is None
        byName = {principal.name: digest for digest, principal in principals.items()}
        gone = frozenset(name for name, digest in self._hashByName.items() if byName.get(name) != digest)
        # Two plain assignments: verify() on the reactor thread sees the old
        # table or the new one, never a mix.
        self._table = _index(principals)
        self._hashByName = byName
        self.revision = revision
        if first:
            self._log.info("credentials loaded: {count} valid, revision {revision}", count=len(byName),
                           revision=revision)
            self.ready.callback(None)
        if gone:
            for callback in list(self._subscribers):
                try:
                    callback(gone)
                except Exception:
                    self._log.failure("a revocation subscriber failed")

    def _failed(self, failure: Failure) -> None:
        self.polls += 1
        self.failures += 1
        now = self._reactor.seconds()
        if self._lastLogged is None or now - self._lastLogged >= self.logInterval:
            self._log.warn(
                "cannot read the credential registry ({error}); keeping the credentials loaded before"
                "{more}",
                error=failure.getErrorMessage(),
                more=f" ({self._unlogged} more failure(s) since the last line)" if self._unlogged else "",
            )
            self._lastLogged = now
            self._unlogged = 0
        else:
            self._unlogged += 1

    def _loopFailed(self, failure: Failure) -> None:
        # _poll never fails (_failed handles every error); a bug would stop
        # the loop: say so rather than silently stop refreshing.
        self._log.failure("credential cache stopped polling", failure)
