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

Rollups (L{StoreQueries.rollups}) fold one sensor's readings into buckets of
a minute or an hour; a query covers at most L{MAX_BUCKETS} of them, so its
work is bounded whatever range a client names.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from zope.interface import implementer

from ..fleet.states import Cadence
from ..interfaces import IRollupQueries
from .base import Store, StoreUnavailable, parseStoreURL
from .threads import WorkerThreads

__all__ = [
    "StoreQueries",
    "MAX_LIMIT",
    "MAX_BUCKETS",
    "STEP_SECONDS",
    "EARLIEST_TIME",
    "LATEST_TIME",
    "bucketRange",
    "encodeCursor",
    "decodeCursor",
]

#: The most readings one page returns, whatever the caller asks for (the
#: HTTP API refuses a larger C{limit}).
MAX_LIMIT = 10_000

#: The earliest and latest times, in seconds since the epoch, a query takes
#: (C{since}, C{until}, a cursor's position): those ISO 8601 can write, years
#: 1 to 9999. Both backends compare them without overflowing; PostgreSQL
#: would refuse a time far beyond, SQLite an integer beyond 64 bits.
EARLIEST_TIME = -62_135_596_800.0
LATEST_TIME = 253_402_300_799.999_999

#: The most buckets one rollup query covers, per series: a day of minutes
#: is 1,440, a year of hours 8,760; a year of minutes (525,600) is refused.
MAX_BUCKETS = 100_000

#: The rollup steps the store keeps, and their widths in seconds.
STEP_SECONDS = {"1m": 60, "1h": 3600}

#: The largest row id (SQLite and PostgreSQL ids are signed 64-bit).
_MAX_ROW_ID = 2**63 - 1

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

    @raise ValueError: C{cursor} is not one, or names a position no row can
        have (a time outside L{EARLIEST_TIME}..L{LATEST_TIME}, a row id
        outside 0..2**63-1).
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        timeText, rowText = text.split(":")
        timeKey: Any = int(timeText) if _INTEGER.fullmatch(timeText) else float(timeText)
        rowId = int(rowText)
    except (ValueError, UnicodeError, binascii.Error, AttributeError):
        raise ValueError(f"invalid cursor: {cursor!r}") from None
    # An integer time is PostgreSQL's, in microseconds; a float is seconds.
    seconds = timeKey / 1_000_000 if isinstance(timeKey, int) else timeKey
    if (
        not _INTEGER.fullmatch(rowText)
        or not 0 <= rowId <= _MAX_ROW_ID
        or not EARLIEST_TIME <= seconds <= LATEST_TIME
    ):
        raise ValueError(f"invalid cursor: {cursor!r}")
    return timeKey, rowId


def bucketRange(since: float, until: float, step: str) -> Tuple[float, float, int]:
    """
    The buckets of C{step} overlapping [C{since}, C{until}): the start of
    the first, the end of the last (seconds since the epoch, multiples of
    the step's width) and how many there are (0 when C{until <= since}).
    Computed in whole microseconds, as the store keeps times, so no float
    rounding moves a bound across a bucket's edge.

    @raise KeyError: C{step} is not one of L{STEP_SECONDS}.
    """
    width = STEP_SECONDS[step] * 1_000_000
    start = int(round(since * 1_000_000))
    end = int(round(until * 1_000_000))
    first = start - start % width
    if end <= start:
        return first / 1_000_000, first / 1_000_000, 0
    last = end + (-end) % width
    return first / 1_000_000, last / 1_000_000, (last - first) // width


def _optionalTime(name: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds since the epoch, not {value!r}") from None
    if not EARLIEST_TIME <= number <= LATEST_TIME:
        raise ValueError(f"{name} must be a time between the years 1 and 9999, not {value!r}")
    return number


@implementer(IRollupQueries)
class StoreQueries(Service):
    """
    Asynchronous read queries over a store, for the HTTP API.

    @param storeURL: The store to read (the server's C{--store}).
    @param reactor: Bounds the wait for the threads to stop; it must also
        provide L{IReactorFromThreads}: the threads report back through it.
    @param poolSize: Threads, hence database connections.
    @param storeFactory: Makes an unopened store from the URL (tests).

    @raise ValueError: C{storeURL} is not a store URL.
    """

    def __init__(
        self,
        storeURL: str,
        reactor: IReactorTime,
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
        # Counts of /api/sensors by filter (see _count), shared by the
        # query threads.
        self._countLock = threading.Lock()
        self._counts: Dict[Any, Tuple[float, Tuple[int, bool]]] = {}

    def startService(self) -> None:
        super().startService()
        self._threads = WorkerThreads(
            IReactorFromThreads(self.reactor), self.poolSize, "sensornet-queries", onExit=self._closeLocal
        )
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

        @param since: Seconds since the epoch, from L{EARLIEST_TIME} to
            L{LATEST_TIME}; so is C{until}.
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
                "since": _optionalTime("since", since),
                "until": _optionalTime("until", until),
                "after": after,
            }
        except (TypeError, ValueError) as e:
            return fail(ValueError(str(e)))
        return self._run(self._page, limit, **filters)

    def rollups(
        self,
        sensor: str,
        kind: Optional[str],
        since: float,
        until: float,
        step: str,
        encode: Optional[Callable[[List[Dict[str, Any]]], Any]] = None,
    ) -> Deferred[Any]:
        """
        One sensor's readings, of one kind or of every kind (C{kind}
        L{None}), folded into buckets of C{step} overlapping [C{since},
        C{until}); compacted readings and those not yet compacted alike, each
        counted once (see L{sensornet.store.base.Store.rollups}).

        A bucket is always whole: the first holds its readings before
        C{since}, the last those from C{until} to its end
        (L{bucketRange} says which buckets a range covers).

        @param step: C{"1m"} or C{"1h"} (L{STEP_SECONDS}).
        @param encode: Called with the buckets on the query thread, its
            result what the L{Deferred} fires with: a year of hours is 8,760
            buckets, and turning them into a response body takes tens of
            milliseconds the reactor thread should not spend.
        @param since: Seconds since the epoch, from L{EARLIEST_TIME} to
            L{LATEST_TIME}, not after C{until}; so is C{until}.
        @return: A L{Deferred} firing with dicts with keys C{sensor},
            C{kind}, C{ts} (the bucket's start), C{count}, C{min}, C{max},
            C{mean}, C{last} (the value of its latest reading), ordered by
            (C{ts}, C{kind}); buckets without readings are left out. It
            fails with L{ValueError} for a bad argument or a range of more
            than L{MAX_BUCKETS} buckets, and with
            L{sensornet.store.StoreUnavailable} if the store cannot be read.
        """
        try:
            if not isinstance(sensor, str) or not sensor:
                raise ValueError(f"sensor must be a sensor's name, not {sensor!r}")
            if kind is not None and not isinstance(kind, str):
                raise ValueError(f"kind must be a kind's name or None, not {kind!r}")
            if step not in STEP_SECONDS:
                raise ValueError(f"step must be one of {', '.join(STEP_SECONDS)}, not {step!r}")
            start = _optionalTime("since", since)
            end = _optionalTime("until", until)
            if start is None or end is None:
                raise ValueError("since and until are both needed")
            if end < start:
                raise ValueError("until must not be earlier than since")
            buckets = bucketRange(start, end, step)[2]
            if buckets > MAX_BUCKETS:
                raise ValueError(f"{buckets} buckets of {step} is more than {MAX_BUCKETS}")
        except (TypeError, ValueError) as e:
            return fail(ValueError(str(e)))
        if encode is None:
            return self._run(self._inThread, "rollups", sensor, kind, start, end, step)
        shape = encode

        def query() -> Any:
            return shape(self._inThread("rollups", sensor, kind, start, end, step))

        return self._run(query)

    # -- the fleet view (sensornet.store.fleet) -------------------------------

    #: How series states are decided (the server sets it from its options).
    cadence: Cadence = Cadence()

    def _inConnection(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """
        On a query thread: C{function(connection, dialect, *args, **kwargs)}
        with this thread's store connection (opened on first use, dropped
        after a failure, as L{_inThread}).
        """
        from . import fleet

        self._inThread("ping")
        store = self._local.store
        from .sqlite import SQLiteStore

        if isinstance(store, SQLiteStore):
            dialect = fleet.SQLITE
        elif type(store).__module__.endswith(".postgresql"):
            dialect = fleet.POSTGRESQL
        else:
            raise StoreUnavailable(f"{type(store).__name__} cannot answer fleet queries")
        try:
            return function(store._connection(), dialect, *args, **kwargs)
        except StoreUnavailable:
            self._closeLocal()
            raise

    def sensorsPage(
        self,
        now: float,
        prefix: Optional[str] = None,
        glob: Optional[str] = None,
        kind: Optional[str] = None,
        state: Optional[str] = None,
        sort: str = "name",
        limit: int = 100,
        cursor: Optional[str] = None,
        total: bool = True,
        encode: Optional[Callable[[Dict[str, Any]], Any]] = None,
    ) -> Deferred[Any]:
        """
        One page of the fleet's series (see L{sensornet.store.fleet}): the
        filters, sort order and cursor are checked here, the page and its
        total read on a query thread, then handed to C{encode} there too.

        @param now: The server's time, seconds since the epoch: states are
            decided at it.
        @param limit: Rows per page, 1 to L{fleet.MAX_PAGE}.
        @return: A L{Deferred} firing with C{encode}'s result, or without
            C{encode} with C{{"sensors": rows, "next": cursor or None,
            "total": n, "total_capped": bool}}. It fails with L{ValueError}
            for a bad argument or cursor, with
            L{sensornet.store.StoreUnavailable} if the store cannot be read.
        """
        from . import fleet

        try:
            if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= fleet.MAX_PAGE:
                raise ValueError(f"limit must be from 1 to {fleet.MAX_PAGE}, not {limit!r}")
            if sort not in fleet.SORTS:
                raise ValueError(f"sort must be one of {', '.join(fleet.SORTS)}, not {sort!r}")
            where = fleet.SensorFilter(prefix=prefix, glob=glob, kind=kind, state=state)
            after = fleet.decodeSensorCursor(cursor, sort) if cursor is not None else None
        except (TypeError, ValueError) as e:
            return fail(ValueError(str(e)))
        cadence = self.cadence

        def query(connection: Any, dialect: Any) -> Any:
            rows, nextKey = fleet.sensorsPage(connection, dialect, cadence, now, where, sort, limit, after)
            page: Dict[str, Any] = {
                "sensors": rows,
                "next": fleet.encodeSensorCursor(sort, nextKey) if nextKey is not None else None,
            }
            if total:
                page["total"], page["total_capped"] = self._count(connection, dialect, cadence, now, where)
            return encode(page) if encode is not None else page

        return self._run(self._inConnection, query)

    #: Seconds a filter's count is reused: a dashboard paging through the
    #: fleet asks for the same count with every page, and counting 200,000
    #: series costs PostgreSQL a few hundred milliseconds.
    countTTL = 2.0

    def _count(self, connection: Any, dialect: Any, cadence: Cadence, now: float, where: Any) -> Tuple[int, bool]:
        from . import fleet

        key = (where, cadence)
        with self._countLock:
            found = self._counts.get(key)
        if found is not None and 0 <= now - found[0] < self.countTTL:
            return found[1]
        counted = fleet.countSensors(connection, dialect, cadence, now, where)
        with self._countLock:
            if len(self._counts) >= 256:
                self._counts.clear()
            self._counts[key] = (now, counted)
        return counted

    def fleetSummary(self, now: float) -> Deferred[Dict[str, Any]]:
        """
        The fleet at C{now} by state and kind
        (L{sensornet.store.fleet.fleetSummary}), read on a query thread.
        """
        from . import fleet

        cadence = self.cadence
        return self._run(self._inConnection, fleet.fleetSummary, cadence, now)

    def silentSeries(
        self, now: float, glob: str, kind: Optional[str], intervals: float, limit: int
    ) -> Deferred[List[Tuple[str, str, float]]]:
        """
        The series a silence rule finds silent at C{now}
        (L{sensornet.store.fleet.silentSeries}), read on a query thread.
        """
        from . import fleet

        try:
            fleet.validateGlob(glob)
        except ValueError as e:
            return fail(e)
        cadence = self.cadence
        return self._run(self._inConnection, fleet.silentSeries, cadence, now, glob, kind, intervals, limit)

    def sparklines(
        self,
        series: List[Tuple[str, str]],
        since: float,
        until: float,
        step: str,
        encode: Optional[Callable[[List[Dict[str, Any]]], Any]] = None,
    ) -> Deferred[Any]:
        """
        The rollup buckets of C{step} over [C{since}, C{until}) of up to
        L{sensornet.store.fleet.MAX_SPARKLINES} (sensor, kind) pairs, read
        together on a query thread (L{sensornet.store.fleet.sparklineRows}),
        then handed to C{encode} there.
        """
        from . import fleet

        try:
            if len(series) > fleet.MAX_SPARKLINES:
                raise ValueError(f"at most {fleet.MAX_SPARKLINES} series at once")
            if step not in STEP_SECONDS:
                raise ValueError(f"step must be one of {', '.join(STEP_SECONDS)}, not {step!r}")
            start = _optionalTime("since", since)
            end = _optionalTime("until", until)
            if start is None or end is None or end < start:
                raise ValueError("since and until are both needed, since first")
            if bucketRange(start, end, step)[2] > MAX_BUCKETS:
                raise ValueError(f"more than {MAX_BUCKETS} buckets of {step}")
        except (TypeError, ValueError) as e:
            return fail(ValueError(str(e)))
        pairs = list(series)

        def query(connection: Any, dialect: Any) -> Any:
            rows = fleet.sparklineRows(connection, dialect, pairs, start, end, step)
            return encode(rows) if encode is not None else rows

        return self._run(self._inConnection, query)

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
