"""
Read-side queries for the HTTP API, answered off the reactor thread.

L{StoreQueries} owns a few daemon threads, each with its own store
connection (opened on first use, reopened after a failure), so a slow query
never blocks the reactor and never waits behind the writer's transaction
queue.

Paging uses an opaque cursor: the position, in (C{ts}, C{id}) order, of the
last row of the previous page. Rows with equal C{ts} are ordered by C{id},
so a page boundary falling among them neither repeats nor skips a row, and
rows stored after the first page was read appear on later pages if their
position comes after the cursor.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed

from .base import Store, StoreUnavailable, parseStoreURL
from .threads import WorkerThreads

__all__ = ["StoreQueries", "MAX_LIMIT", "encodeCursor", "decodeCursor"]

#: The most readings one page returns, whatever the caller asks for.
MAX_LIMIT = 10_000

_INTEGER = re.compile(r"-?[0-9]{1,20}")


def encodeCursor(position: Tuple[Any, int]) -> str:
    """
    The cursor string for a row's C{_position}: URL-safe, opaque to
    clients.
    """
    timeKey, rowId = position
    text = f"{timeKey!r}:{int(rowId)}"
    return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii").rstrip("=")


def decodeCursor(cursor: str) -> Tuple[Any, int]:
    """
    The position a cursor from L{encodeCursor} stands for.

    @raise ValueError: C{cursor} is not one.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        timeText, rowText = text.split(":")
        timeKey: Any = int(timeText) if _INTEGER.fullmatch(timeText) else float(timeText)
        rowId = int(rowText)
    except (ValueError, UnicodeError, binascii.Error, AttributeError):
        raise ValueError(f"invalid cursor: {cursor!r}") from None
    if isinstance(timeKey, float) and not math.isfinite(timeKey) or rowId < 0 or not _INTEGER.fullmatch(rowText):
        raise ValueError(f"invalid cursor: {cursor!r}")
    return timeKey, rowId


def _optionalFloat(name: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds since the epoch, not {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite")
    return number


class StoreQueries(Service):
    """
    Asynchronous read queries over a store, for the HTTP API.

    @param storeURL: The store to read (the server's C{--store}).
    @param poolSize: Threads, hence database connections.
    @param storeFactory: Makes an unopened store from the URL (tests).

    @raise ValueError: C{storeURL} is not a store URL.
    """

    def __init__(
        self,
        storeURL: str,
        reactor: Any,
        poolSize: int = 2,
        storeFactory: Optional[Callable[[str], Store]] = None,
    ) -> None:
        if storeFactory is None:
            from . import storeFromURL

            parseStoreURL(storeURL)
            storeFactory = storeFromURL
        self.storeURL = storeURL
        self.reactor = reactor
        self.poolSize = poolSize
        self._storeFactory = storeFactory
        self._local = threading.local()
        self._threads: Optional[WorkerThreads] = None

    def startService(self) -> None:
        super().startService()
        self._threads = WorkerThreads(self.reactor, self.poolSize, "sensornet-queries", onExit=self._closeLocal)
        self._threads.start()

    def stopService(self) -> Deferred[None]:
        """
        Let the threads finish their current query, close their connections
        and exit; fires when they have, or after 5 seconds at most.
        """
        super().stopService()
        threads, self._threads = self._threads, None
        if threads is None:
            return succeed(None)
        d = threads.stop()
        d.addTimeout(5, self.reactor)
        return d.addBoth(lambda _: None)

    # -- on the query threads -------------------------------------------------

    def _closeLocal(self) -> None:
        store = getattr(self._local, "store", None)
        self._local.store = None
        if store is not None:
            store.close()

    def _inThread(self, method: str, *args: Any, **kwargs: Any) -> Any:
        store: Optional[Store] = getattr(self._local, "store", None)
        if store is None:
            store = self._storeFactory(self.storeURL)
            try:
                store.open()
            except BaseException:
                store.close()
                raise
            self._local.store = store
        try:
            return getattr(store, method)(*args, **kwargs)
        except StoreUnavailable:
            # Reconnect on the next query.
            self._closeLocal()
            raise

    def _page(self, limit: int, **filters: Any) -> Dict[str, Any]:
        rows: List[Dict[str, Any]] = self._inThread("readings", limit=limit + 1, **filters)
        nextCursor = None
        if len(rows) > limit:
            del rows[limit:]
            nextCursor = encodeCursor(rows[-1]["_position"])
        for row in rows:
            del row["_position"]
        return {"readings": rows, "next": nextCursor}

    # -- public ---------------------------------------------------------------

    def _run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        if self._threads is None:
            return fail(StoreUnavailable("store queries are not running"))
        return self._threads.run(function, *args, **kwargs)

    def sensors(self) -> Deferred[List[Dict[str, Any]]]:
        """
        Every (sensor, kind) stored, from the summary table (no scan of the
        readings): dicts with keys C{sensor}, C{kind}, C{unit}, C{value},
        C{ts}, C{count}, C{first_seen}, C{last_seen}.

        @return: A L{Deferred}; fails with
            L{sensornet.store.StoreUnavailable} if the store cannot be read.
        """
        return self._run(self._inThread, "sensors")

    def readings(
        self,
        sensor: Optional[str] = None,
        kind: Optional[str] = None,
        since: Optional[float] = None,
        until: Optional[float] = None,
        limit: int = 1000,
        cursor: Optional[str] = None,
    ) -> Deferred[Dict[str, Any]]:
        """
        One page of readings with C{since <= ts < until}, optionally of one
        sensor and/or kind, in (C{ts}, C{id}) order.

        @param limit: Readings per page, at least 1; more than L{MAX_LIMIT}
            is capped to it.
        @param cursor: The C{next} of the previous page, to continue it.
        @return: A L{Deferred} firing with C{{"readings": [...], "next":
            cursor or None}}, each reading a dict with keys C{id}, C{sensor},
            C{kind}, C{value}, C{unit}, C{ts}, C{seq}, C{received_at},
            C{peer}, C{dialect}. It fails with L{ValueError} for a bad
            argument or cursor, and with
            L{sensornet.store.StoreUnavailable} if the store cannot be read.
        """
        try:
            if isinstance(limit, bool) or not isinstance(limit, int):
                limit = int(limit)
            if limit < 1:
                raise ValueError(f"limit must be at least 1, not {limit}")
            limit = min(limit, MAX_LIMIT)
            after = decodeCursor(cursor) if cursor is not None else None
            filters = {
                "sensor": sensor,
                "kind": kind,
                "since": _optionalFloat("since", since),
                "until": _optionalFloat("until", until),
                "after": after,
            }
        except (TypeError, ValueError) as e:
            return fail(ValueError(str(e)))
        return self._run(self._page, limit, **filters)

    def ping(self) -> Deferred[bool]:
        """
        Whether the store answers now. Never fails.
        """

        def check() -> bool:
            try:
                if self._inThread("ping"):
                    return True
            except Exception:
                pass
            self._closeLocal()
            return False

        d = self._run(check)
        return d.addErrback(lambda _: False)
