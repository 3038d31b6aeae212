"""
Test support for the HTTP side (in the spirit of L{twisted.internet.testing}):
a real store, writer, query side and web site on loopback, without the
sensor-facing half of a server.

Used by sensornet's own tests (API, metrics, browser) and usable by anyone
who wants a dashboard over a throw-away SQLite store.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Set

from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTime

from ..feed import LiveFeed
from ..metrics import ServerMetrics
from ..reading import Reading
from .resource import WebSite, makeSite

if TYPE_CHECKING:
    from .auth import BearerAuthenticator

__all__ = ["WebHarness"]


class WebHarness:
    """
    A store (SQLite in C{directory}, unless C{storeURL} names another), a
    L{sensornet.writer.BatchWriter} writing to it, a
    L{sensornet.store.queries.StoreQueries} reading it and the web site on
    C{127.0.0.1}, a free port.

    @ivar url: The site's base URL (C{"http://127.0.0.1:PORT"}), once started.
    @ivar connected: The sensor names C{/api/sensors} reports as connected;
        tests change it freely.
    @ivar authenticator: The site's guard (L{sensornet.web.auth}), or
        L{None} for an open site.
    @ivar alerts: The rules engine behind C{/api/alerts} and the alert counts
        of C{/api/fleet} (L{sensornet.fleet.rules.RulesEngine}; the caller
        subscribes it to C{feed}), or L{None}.
    """

    def __init__(
        self,
        directory: Path,
        reactor: IReactorTime,
        storeURL: Optional[str] = None,
        authenticator: Optional["BearerAuthenticator"] = None,
        alerts: Optional[Any] = None,
    ) -> None:
        self.storeURL = storeURL or f"sqlite:{directory / 'readings.sqlite3'}"
        self.reactor = reactor
        self.authenticator = authenticator
        self.alerts = alerts
        self.metrics = ServerMetrics()
        self.feed = LiveFeed()
        self.connected: Set[str] = set()
        self.url = ""
        self.site: Optional[WebSite] = None
        self._port: Optional[IListeningPort] = None
        from ..store.queries import StoreQueries
        from ..writer import BatchWriter

        self.writer = BatchWriter(self.storeURL, reactor, self.metrics, self.feed)
        self.queries = StoreQueries(self.storeURL, reactor)

    async def start(self) -> "WebHarness":
        """
        Open the store and listen; returns C{self}.
        """
        self.writer.startService()
        await self.writer.whenOpen()
        self.queries.startService()
        self.site = makeSite(self.queries, self.feed, self.metrics, lambda: self.connected, self.reactor,
                             alerts=self.alerts, authenticator=self.authenticator)
        self._port = await TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(self.site)
        self.url = f"http://127.0.0.1:{self._port.getHost().port}"  # type: ignore[union-attr]
        return self

    async def store(self, readings: Iterable[Reading]) -> List[Reading]:
        """
        Commit C{readings} through the writer (which then publishes them on
        the live feed); fires once they are committed.
        """
        batch = list(readings)
        await self.writer.submit(batch)
        return batch

    async def stop(self) -> None:
        """
        Stop listening, end the live streams and close the store; idempotent.
        """
        if self._port is not None:
            port, self._port = self._port, None
            await maybeDeferred(port.stopListening)
        if self.site is not None:
            self.site.stream.closeAll()
        if self.queries.running:
            await maybeDeferred(self.queries.stopService)
        if self.writer.running:
            await maybeDeferred(self.writer.stopService)
