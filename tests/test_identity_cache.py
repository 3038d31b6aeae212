"""
The credential cache: verify() in memory, reloads only when the registry's
revision changes, revocations announced to subscribers, a failing store
keeps what was loaded (unit tests on task.Clock with an in-memory
registry); and one real test on SQLite with the cache's own thread, where a
revoke through a second Registry reaches subscribeRevoked within 2 polls.
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from sensornet.identity import Principal, Registry
from sensornet.identity.cache import CredentialCache
from sensornet.identity.tokens import newToken, tokenHash
from sensornet.interfaces import IBlockingRunner
from sensornet.store import StoreUnavailable

pytestmark = pytest.mark.timeout(30)


class MemoryRegistry:
    """
    The two calls a cache makes, on a dict; counts them; can be made to fail.
    """

    def __init__(self, url: str) -> None:
        self.revisionNow = 1
        self.principals: Dict[bytes, Principal] = {}
        self.calls: List[str] = []
        self.down = False
        self.closed = False

    def add(self, name: str, role: str = "sensor", grants: Tuple[str, ...] = ()) -> str:
        token = newToken()
        self.principals[tokenHash(token)] = Principal(name, role, grants)
        self.revisionNow += 1
        return token

    def remove(self, name: str) -> None:
        self.principals = {h: p for h, p in self.principals.items() if p.name != name}
        self.revisionNow += 1

    def revision(self) -> int:
        self.calls.append("revision")
        if self.down:
            raise StoreUnavailable("database is down")
        return self.revisionNow

    def snapshot(self) -> Tuple[int, Dict[bytes, Principal]]:
        self.calls.append("snapshot")
        if self.down:
            raise StoreUnavailable("database is down")
        return self.revisionNow, dict(self.principals)

    def close(self) -> None:
        self.closed = True


@implementer(IBlockingRunner)
class InlineRunner:
    """
    Runs each call at once on the caller's thread (unit tests only).
    """

    def start(self) -> None:
        pass

    def run(self, function: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        try:
            return succeed(function(*args, **kwargs))
        except Exception:
            return fail()

    def stop(self) -> Deferred[None]:
        return succeed(None)


def makeCache(interval: float = 1.0) -> Tuple[CredentialCache, MemoryRegistry, task.Clock]:
    clock = task.Clock()
    made: List[MemoryRegistry] = []

    def factory(url: str) -> Any:
        made.append(MemoryRegistry(url))
        return made[0]

    cache = CredentialCache("sqlite:unused.db", clock, interval=interval, registryFactory=factory,
                            runner=InlineRunner())
    return cache, made[0], clock


def test_verify_accepts_only_valid_tokens_after_the_first_load() -> None:
    cache, registry, clock = makeCache()
    token = registry.add("lab-1")
    reader = registry.add("grafana", "reader")
    assert cache.verify(token) is None  # not loaded yet
    ready: List[Any] = []
    cache.ready.addCallback(ready.append)
    cache.startService()
    assert ready == [None]
    assert cache.verify(token) == Principal("lab-1", "sensor", ())
    assert cache.verify(reader).mayRead()  # type: ignore[union-attr]
    assert len(cache) == 2
    for bad in [newToken(), "", token + "x", token[:-1], None, 42, b"bytes", "x" * 100_000]:
        assert cache.verify(bad) is None
    cache.stopService()


def test_principal_named_is_the_live_credential_of_that_name() -> None:
    """
    A client certificate names its sensor: the name finds the live
    principal, and nothing once the credential is revoked (or before the
    first load).
    """
    cache, registry, clock = makeCache()
    registry.add("lab-1")
    registry.add("relay", "gateway", ("lab-*",))
    assert cache.principalNamed("lab-1") is None
    cache.startService()
    assert cache.principalNamed("lab-1") == Principal("lab-1", "sensor", ())
    assert cache.principalNamed("relay") == Principal("relay", "gateway", ("lab-*",))
    assert cache.principalNamed("lab-2") is None
    registry.remove("lab-1")
    clock.advance(1.0)
    assert cache.principalNamed("lab-1") is None
    cache.stopService()


def test_polls_the_revision_and_reloads_only_on_change() -> None:
    """
    Each poll is one revision query; a snapshot is read only when the
    revision moved.
    """
    cache, registry, clock = makeCache(interval=1.0)
    registry.add("lab-1")
    cache.startService()
    assert registry.calls == ["snapshot"]
    clock.advance(1.0)
    clock.advance(1.0)
    assert registry.calls == ["snapshot", "revision", "revision"]
    late = registry.add("lab-2")
    assert cache.verify(late) is None
    clock.advance(1.0)
    assert registry.calls[-2:] == ["revision", "snapshot"]
    assert cache.verify(late).name == "lab-2"  # type: ignore[union-attr]
    assert cache.polls == 4
    cache.stopService()
    clock.advance(10)
    assert cache.polls == 4


def test_revoked_and_rotated_names_reach_subscribers_once() -> None:
    cache, registry, clock = makeCache()
    old = registry.add("lab-1")
    registry.add("lab-2")
    registry.add("lab-3")
    seen: List[FrozenSet[str]] = []
    unsubscribe = cache.subscribeRevoked(seen.append)
    cache.startService()
    assert seen == []  # the first load announces nothing
    registry.remove("lab-1")
    new = registry.add("lab-1")  # rotated: same name, another hash
    registry.remove("lab-2")  # revoked
    clock.advance(1.0)
    assert seen == [frozenset({"lab-1", "lab-2"})]
    assert cache.verify(old) is None and cache.verify(new).name == "lab-1"  # type: ignore[union-attr]
    clock.advance(1.0)
    assert len(seen) == 1
    unsubscribe()
    registry.remove("lab-3")
    clock.advance(1.0)
    assert len(seen) == 1
    assert len(cache) == 1
    cache.stopService()


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    cache, registry, clock = makeCache()
    registry.add("lab-1")
    seen: List[FrozenSet[str]] = []

    def broken(names: FrozenSet[str]) -> None:
        raise RuntimeError("subscriber bug")

    cache.subscribeRevoked(broken)
    cache.subscribeRevoked(seen.append)
    cache.startService()
    registry.remove("lab-1")
    clock.advance(1.0)
    assert seen == [frozenset({"lab-1"})]
    clock.advance(1.0)
    assert cache.polls == 3
    cache.stopService()


def test_an_unreachable_store_keeps_the_last_load_and_retries() -> None:
    """
    Before the first load nothing is accepted and ready waits; after it, an
    outage keeps the loaded credentials; failures are counted; when the
    store answers again changes made meanwhile are loaded.
    """
    cache, registry, clock = makeCache()
    token = registry.add("lab-1")
    registry.down = True
    cache.startService()
    assert not cache.ready.called and cache.failures == 1 and cache.verify(token) is None
    clock.advance(1.0)
    assert cache.failures == 2
    registry.down = False
    clock.advance(1.0)
    assert cache.ready.called and cache.verify(token) is not None
    registry.down = True
    clock.advance(1.0)
    clock.advance(1.0)
    assert cache.failures == 4 and cache.verify(token) is not None
    registry.remove("lab-1")
    registry.down = False
    clock.advance(1.0)
    assert cache.verify(token) is None
    cache.stopService()


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CredentialCache("sqlite:x.db", task.Clock(), interval=0)


@pytest_twisted.ensureDeferred
async def test_a_revoke_by_another_registry_reaches_subscribers_within_two_polls(reactor, tmp_path) -> None:
    """
    Real SQLite, the cache's own thread, the real reactor: a reader's token
    is accepted once loaded; a revoke through another Registry (another
    server, the admin command) is announced within two polls of it and the
    token is refused from then on.
    """
    url = f"sqlite:{tmp_path / 'sensornet.db'}"
    admin = Registry(url)
    reader = admin.add("grafana", role="reader")
    sensor = admin.add("lab-1")
    cache = CredentialCache(url, reactor, interval=0.2)
    cache.startService()
    try:
        await cache.ready.addTimeout(10, reactor)
        assert cache.verify(reader) == Principal("grafana", "reader", ())
        assert cache.verify(sensor).mayWrite("lab-1")  # type: ignore[union-attr]
        announced: Deferred[FrozenSet[str]] = Deferred()
        cache.subscribeRevoked(lambda names: announced.callback(names) if not announced.called else None)
        other = Registry(url)
        try:
            await defer.maybeDeferred(lambda: None)
            pollsBefore = cache.polls
            assert other.revoke("grafana")
        finally:
            other.close()
        names = await announced.addTimeout(10, reactor)
        assert names == frozenset({"grafana"})
        assert cache.polls - pollsBefore <= 2
        assert cache.verify(reader) is None
        assert cache.verify(sensor) is not None
        assert cache.failures == 0
    finally:
        admin.close()
        await cache.stopService()
