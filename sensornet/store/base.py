"""
What every store backend promises: the L{Store} interface, its errors, the
result of a write, store URLs, and the per-batch summary arithmetic both
backends share.

A store is a plain blocking object holding ONE database connection. It is
used from one thread at a time (the writer thread, or one query thread); it
never touches the reactor. The asynchronous side lives in
L{sensornet.writer} and L{sensornet.store.queries}.
"""

from __future__ import annotations

import re
import time
from importlib import resources
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from zope.interface import implementer

from ..interfaces import IStore
from ..reading import Reading

__all__ = [
    "ALL_SERIES",
    "DEFAULT_STORE",
    "ORIGIN_CACHE_LIMIT",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoreRejected",
    "StoreURL",
    "WriteResult",
    "parseStoreURL",
    "Migration",
    "loadMigrations",
]

#: The store a server uses when told nothing: an SQLite file in the working
#: directory, which needs nothing installed.
DEFAULT_STORE = "sqlite:sensornet.db"

#: Most origins (unit, peer, dialect) a writing store keeps ids of in memory.
#: A peer is an address with its port, so every reconnection of a sensor is
#: a new origin: a fleet that reconnects often would grow the cache without
#: end. Past this many it is emptied before the next batch and refilled from
#: the origins table as batches need them.
ORIGIN_CACHE_LIMIT = 100_000

#: How often, at most, a writing store records that an origin is in use
#: (seconds): once per origin per such period, in the batch that uses it.
#: An origin unused for longer than raw readings are kept is deleted (see
#: L{Store.expireOrigins}); this is far finer than that.
ORIGIN_USE_PERIOD = 3600.0


def _usePeriod(origin: int, now: float) -> int:
    """
    The L{ORIGIN_USE_PERIOD} of C{origin} that C{now} falls in. Each origin's
    periods start at their own second of the hour, so that a fleet's
    origins are recorded spread over the hour, not all in the batches just
    after it turns (19,000 updates in two seconds, at 20,000 sensors).
    """
    return int((now + origin % ORIGIN_USE_PERIOD) // ORIGIN_USE_PERIOD)


class OriginGone(Exception):
    """
    An origin the writer had in memory was deleted meanwhile (unused for
    longer than raw readings are kept): the batch is planned again, from
    the database.
    """


#: Above every series id (ids are 64-bit): L{Store.compactSeries}' C{through}
#: for "to the last series".
ALL_SERIES = 2**63 - 1

class StoreError(Exception):
    """
    A write or read did not happen. Nothing from the failed call is
    committed.
    """


class StoreUnavailable(StoreError):
    """
    A transient failure: the connection was lost, the database is locked or
    restarting, the disk is full. Trying the same data again later may work.
    """


class StoreRejected(StoreError):
    """
    A permanent failure caused by the data itself (a CHECK or NOT NULL
    constraint, a value the backend cannot represent). Retrying the same
    data will fail the same way.
    """


class WriteResult(NamedTuple):
    """
    What one L{Store.write} call did.

    @ivar stored: How many readings were newly stored.
    @ivar duplicates: How many were already stored under the same
        (C{sensor}, C{seq}) (or appeared twice in the call) and were dropped.
    @ivar duplicateIndexes: The indexes, in the written list, of those
        duplicates, ascending; every other reading was newly stored. Usually
        empty, which is what makes it cheap to report.
    """

    stored: int
    duplicates: int
    duplicateIndexes: Tuple[int, ...] = ()


class StoreURL(NamedTuple):
    """
    A parsed store URL.

    @ivar backend: C{"sqlite"} or C{"postgresql"}.
    @ivar target: For SQLite the database file path (or C{":memory:"}); for
        PostgreSQL the libpq connection URI, as given.
    @ivar options: Backend options, with the default of each one the URL
        leaves out (SQLite: C{synchronous}, C{"full"} unless the URL says
        C{synchronous=normal}).
    """

    backend: str
    target: str
    options: Dict[str, str]


_SQLITE_OPTIONS = {"synchronous": ("normal", "full")}

#: Durable unless told otherwise: C{synchronous=full} fsyncs the WAL at every
#: commit, so nothing is acknowledged before it is on disk.
_SQLITE_DEFAULTS = {"synchronous": "full"}


def parseStoreURL(url: str) -> StoreURL:
    """
    Parse a store URL: C{sqlite:PATH} (relative or absolute path;
    C{sqlite::memory:} for a private in-memory database, one per
    connection: unit tests only), C{sqlite:PATH?synchronous=normal} (the
    weaker, faster mode; C{synchronous=full}, the default, may be written
    too), or
    C{postgresql://user:pass@host:port/db} (C{postgres://} too, with any
    libpq URI parameters).

    @raise ValueError: For anything else, with a message fit to show a user.
    """
    if not isinstance(url, str) or not url:
        raise ValueError("empty store URL: use sqlite:PATH or postgresql://user:password@host:port/database")
    scheme, colon, rest = url.partition(":")
    scheme = scheme.lower()
    if not colon:
        raise ValueError(
            f"store URL {url!r} has no scheme: use sqlite:PATH or postgresql://user:password@host:port/database"
        )
    if scheme == "sqlite":
        if rest.startswith("//"):
            raise ValueError(
                f"store URL {url!r}: write sqlite:PATH (sqlite:data/sensornet.db or "
                "sqlite:/var/lib/sensornet/sensornet.db), not sqlite://"
            )
        path, question, query = rest.partition("?")
        if not path:
            raise ValueError(f"store URL {url!r} names no file: use sqlite:PATH")
        options: Dict[str, str] = dict(_SQLITE_DEFAULTS)
        if question:
            for item in query.split("&"):
                name, equals, value = item.partition("=")
                allowed = _SQLITE_OPTIONS.get(name)
                if allowed is None or not equals or value.lower() not in allowed:
                    raise ValueError(
                        f"store URL {url!r}: unknown SQLite option {item!r} "
                        "(the only one is synchronous=full|normal)"
                    )
                options[name] = value.lower()
        return StoreURL("sqlite", path, options)
    if scheme in ("postgresql", "postgres"):
        if not rest.startswith("//"):
            raise ValueError(f"store URL {url!r}: write postgresql://user:password@host:port/database")
        try:
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            raise ValueError(
                "a PostgreSQL store needs psycopg 3: pip install 'sensornet[postgresql]'"
            ) from None
        try:
            params = conninfo_to_dict(url)
        except Exception as e:
            raise ValueError(f"store URL is not a valid PostgreSQL URI: {e}") from None
        port = str(params.get("port", ""))
        if port and not all(part.isdigit() for part in port.split(",")):
            raise ValueError(f"store URL {url!r}: the port must be a number, not {port!r}")
        return StoreURL("postgresql", url, {})
    raise ValueError(
        f"unknown store {scheme!r} in {url!r}: use sqlite:PATH or postgresql://user:password@host:port/database"
    )


@implementer(IStore)
class Store:
    """
    A database holding readings: the base both backends derive from, which
    declares that they provide L{sensornet.interfaces.IStore}.

    One instance holds at most one connection and is used by one thread at a
    time. Every method but L{close} raises L{StoreUnavailable} when the
    database cannot be reached; after that the caller should L{close} and
    L{open} again.
    """

    #: The URL this store was made from (for logs: may hold a password).
    url: str = ""

    #: The retention rules (a L{sensornet.store.retention.RetentionPolicy}),
    #: or L{None} for the default policy. Set before L{open}: a series
    #: records the index of its rule when it is created (and again at
    #: L{open}, when the rules changed).
    retention: Any = None

    #: Where L{compactOnce} goes on: the last series the previous call
    #: finished (0: from the first).
    _compactCursor: int = 0

    #: The time, for when origins were last used (a test's clock can stand
    #: in for it).
    clock: Callable[[], float] = staticmethod(time.time)  # type: ignore[assignment]

    #: The origins this writer recorded as used, by id: the
    #: L{ORIGIN_USE_PERIOD} in which it did.
    _originUse: Dict[int, int]

    def _originsToRecord(self, used: Iterable[int], now: float) -> List[int]:
        """
        Those of the origins C{used} by a batch written at C{now} whose use
        this period is not recorded yet.
        """
        recorded = self._originUse
        return [origin for origin in used if recorded.get(origin) != _usePeriod(origin, now)]

    def _originsRecorded(self, origins: Iterable[int], now: float) -> None:
        """
        Remember that the use of C{origins} at C{now} is committed.
        """
        recorded = self._originUse
        if len(recorded) > ORIGIN_CACHE_LIMIT:
            recorded.clear()
        for origin in origins:
            recorded[origin] = _usePeriod(origin, now)

    def open(self) -> None:
        """
        Connect, then create or migrate the schema to the newest version.
        Safe when several processes open one database at once. Does nothing
        if already open.

        @raise StoreUnavailable: The database cannot be reached or migrated.
        """
        raise NotImplementedError()

    def close(self) -> None:
        """
        Drop the connection (rolling back anything uncommitted). Never
        raises; harmless when not open.
        """
        raise NotImplementedError()

    def write(self, readings: Sequence[Reading]) -> WriteResult:
        """
        Store C{readings} and update the C{sensors} summary in ONE
        transaction. A reading whose (C{sensor}, C{seq}) is already stored
        (or appears earlier in C{readings}) is dropped as a duplicate;
        readings whose C{seq} is L{None} are always stored.

        @raise StoreRejected: Some reading is refused for good; nothing of
            this call is committed.
        @raise StoreUnavailable: A transient failure; nothing of this call is
            committed.
        """
        raise NotImplementedError()

    def sensors(self) -> List[Dict[str, Any]]:
        """
        One dict per (sensor, kind) ever stored, ordered by sensor then kind,
        with keys C{sensor}, C{kind}, C{unit} (of the latest reading),
        C{value} (latest reading's value), C{ts} (latest reading's time),
        C{count} (readings stored), C{first_seen}, C{last_seen} (when the
        first and latest were received). Times are float seconds since the
        epoch.
        """
        raise NotImplementedError()

    def readings(
        self,
        sensor: Optional[str] = None,
        kind: Optional[str] = None,
        since: Optional[float] = None,
        until: Optional[float] = None,
        limit: int = 1000,
        after: Optional[Tuple[Any, int]] = None,
    ) -> List[Dict[str, Any]]:
        """
        At most C{limit} readings with C{since <= ts < until} (either bound
        optional), of one sensor and/or kind if given, ordered by (C{ts},
        C{id}) ascending, starting strictly after the position C{after}
        (a (C{ts}, C{id}) pair taken from a previous page's last row).

        @param after: A row's C{_position}, as returned by an earlier call;
            rows up to and including it are skipped.
        @return: Dicts with keys C{id}, C{sensor}, C{kind}, C{value}, C{unit},
            C{ts}, C{seq}, C{received_at}, C{peer}, C{dialect} (times are
            float seconds since the epoch) and C{_position}: the row's exact
            place in (C{ts}, C{id}) order, an opaque pair of numbers to pass
            back as C{after} (for PostgreSQL the time is in whole
            microseconds, so paging never depends on float rounding).
        """
        raise NotImplementedError()

    def rollups(
        self,
        sensor: str,
        kind: Optional[str],
        since: float,
        until: float,
        step: str,
    ) -> List[Dict[str, Any]]:
        """
        One sensor's readings folded into buckets of C{step} (C{"1m"} or
        C{"1h"}): every whole bucket overlapping [C{since}, C{until}) (the
        first one may start before C{since}), from the rollup
        tables plus the readings not yet compacted (so a reading counts as
        soon as it is acknowledged, and exactly once).

        @return: Dicts with keys C{sensor}, C{kind}, C{ts} (the bucket's
            start, float seconds), C{count}, C{min}, C{max}, C{mean},
            C{last} (the value of the bucket's latest reading), ordered by
            (C{ts}, C{kind}).
        """
        raise NotImplementedError()

    def freshWatermark(self) -> int:
        """
        The id of the newest fresh row now (0 if none): the compactor
        compacts rows up to a watermark it took C{compactAfter} seconds
        earlier.
        """
        raise NotImplementedError()

    def lastSeriesId(self) -> int:
        """
        The greatest series id there is (0 if none): the end of the
        compactor's sweep over the series.
        """
        raise NotImplementedError()

    def compactSeries(self, upTo: int, limit: int, after: int, through: int) -> Tuple[int, int]:
        """
        Merge at most C{limit} fresh rows with ids up to C{upTo}, of the
        series with ids above C{after} and at most C{through}, in series
        order, into blocks and rollups, in one transaction (see
        L{sensornet.store.layout}). A series' rows go into one call
        (L{sensornet.store.layout.wholeSeries}) unless it alone has more
        than C{limit}. Safe beside writers and other compactors: a row is
        compacted once.

        @return: (readings moved, the series id the next call should start
            after: C{through} once the range holds nothing more to do).
        """
        raise NotImplementedError()

    def compactOnce(self, upTo: int, limit: int) -> int:
        """
        Merge at most C{limit} fresh rows with ids up to C{upTo} into blocks
        and rollups, in one transaction, over all the series: each call goes
        on after the series the previous one finished, and starts over at
        the first once past the last (L{compactSeries}). Returns how many
        readings were moved (0 when there was nothing to do).
        """
        after = self._compactCursor
        moved, following = self.compactSeries(upTo, limit, after, ALL_SERIES)
        if not moved and after:
            moved, following = self.compactSeries(upTo, limit, 0, ALL_SERIES)
        self._compactCursor = 0 if following >= ALL_SERIES else following
        return moved

    def expireOnce(self, now: float, after: int, limit: int, rows: Optional[int] = None) -> Tuple[int, int]:
        """
        Delete, for at most C{limit} series with ids above C{after}, the
        blocks and rollup rows older than the retention that applies to each
        (L{retention}), in one transaction of at most C{rows} deleted rows
        (oldest first; L{None}: no bound). Returns (where the next call
        starts: the last series id finished, or 0 when the end was reached;
        rows deleted). A call that ran out of C{rows} inside a series
        returns the id before it, so the next call finishes that series.
        """
        raise NotImplementedError()

    def expireOrigins(self, before: float, limit: int) -> int:
        """
        Delete at most C{limit} origins last used before C{before} (seconds
        since the epoch), never the newest origin (whose id SQLite would
        give out again); returns how many. The caller promises that no
        stored reading names them any more (see
        L{sensornet.store.maintenance.originHorizon}). A writer that still
        has one in memory finds it gone when it records its use, and plans
        its batch again (L{OriginGone}).
        """
        raise NotImplementedError()

    def fleetStats(self) -> Dict[str, int]:
        """
        Cheap gauges for C{/metrics}: C{series}, C{fresh_readings} (not yet
        compacted).
        """
        raise NotImplementedError()

    def medianInterval(self) -> Optional[float]:
        """
        The median, over the series with two readings or more, of each
        series' mean seconds between readings (first to last seen over
        count - 1), or L{None} when no series has two. It reads every series
        row: for a once-at-start figure (the disk estimate), not for a gauge.
        """
        raise NotImplementedError()

    def ping(self) -> bool:
        """
        Whether the database answers a trivial query now (connecting first if
        needed). Never raises.
        """
        raise NotImplementedError()

    def schemaVersion(self) -> int:
        """
        The schema version the open database is at.
        """
        raise NotImplementedError()


class Migration(NamedTuple):
    """
    One schema step: C{sql} takes a database from C{version - 1} to
    C{version}.
    """

    version: int
    name: str
    sql: str


def loadMigrations(backend: str) -> List[Migration]:
    """
    The versioned schema files of C{backend} (C{schema/BACKEND/NNN_name.sql},
    shipped as package data), in version order.
    """
    folder = resources.files(__package__).joinpath("schema").joinpath(backend)
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"schema files for {backend} are not numbered 1..n: {[m.version for m in found]}")
    return found


_MIGRATION_NAME = re.compile(r"^(\d{3})_(\w+)\.sql$")
