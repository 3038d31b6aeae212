"""
The PostgreSQL store (C{postgresql://...}, psycopg 3): the backend for
several servers sharing one database.

Schema 2, the compact store (L{sensornet.store.layout}): a write batch
becomes one I{fresh} row per series it touches plus one update of each
series' summary row; the compactor merges fresh rows into compressed blocks
and rollups. Every server may write any sensor at any time, so:

  - Exactly once: at the start of each batch the writer locks the rows of
    the batch's sensors in C{sensors}, in id order (so concurrent writers
    cannot deadlock), and reads their high-water marks again from
    C{series.max_seq}: what it remembers may be stale, another server may
    have written since. Only then does it plan the batch.
  - Reading ids come from the sequence C{reading_id_blocks}, one C{nextval}
    per batch reserving L{IDS_PER_RANGE} ids: servers never wait for one
    another to number readings.
  - Dictionary rows (sensors, series, origins) are created with C{INSERT ..
    ON CONFLICT DO NOTHING} then read back, in one sorted order.
  - Compactors take fresh rows with C{FOR UPDATE SKIP LOCKED}: each is
    compacted once, whoever gets it.
  - Queries read fresh rows and blocks (or rollups) in one C{REPEATABLE
    READ} snapshot, so a row being compacted meanwhile is seen exactly once.

A batch waits for the server twice, whatever its size, once every name in
it is known: C{BEGIN}, the sensor lock, the high-water marks and the id
range travel together in pipeline mode; then, once the batch is planned,
the fresh rows (one C{INSERT .. SELECT FROM unnest(..)}), the summary
update (one C{UPDATE .. FROM unnest(..)}) and C{COMMIT}. A name met for the
first time costs one more wait per dictionary, once per server.

Times are bigint microseconds in the database and float seconds since the
epoch at this module's edge (row positions, C{_position}, are microseconds:
exact).

Durability: C{COMMIT} returns only after the transaction's WAL record is
flushed to disk on the database server, so nothing is acknowledged before
it is durable there. PostgreSQL's C{synchronous_commit} decides that, and a
server, database or role may set it to C{off}; the store's connection then
sets it back to C{on} for its own session (L{ensureSynchronousCommit}). Any
other value (C{local}, C{remote_write}, C{on}, C{remote_apply}) flushes
locally too and is kept, so an administrator's stronger choice for
synchronous standbys stands.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from operator import attrgetter
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..reading import Reading
from . import base
from .base import OriginGone, Store, StoreError, StoreRejected, StoreUnavailable, WriteResult, loadMigrations
from .codec import encodeFresh
from .layout import (
    BatchPlan,
    SensorState,
    SeriesEntry,
    assembleReadings,
    compact,
    decodeRow,
    expiryCutoffs,
    foldRollups,
    freshRows,
    fromMicroseconds,
    planBatch,
    originsOf,
    planRuns,
    wholeSeries,
    retentionRules,
    rollupTable,
    summaryRows,
    toMicroseconds,
)

__all__ = ["PostgreSQLStore", "ensureSynchronousCommit", "IDS_PER_RANGE"]

#: The advisory lock held while checking and migrating the schema, so that
#: servers starting together migrate once, one after the other.
SCHEMA_LOCK = 0x73656E736F726E  # "sensorn"

#: Reading ids one C{nextval('reading_id_blocks')} reserves: value V gives
#: V * IDS_PER_RANGE .. V * IDS_PER_RANGE + IDS_PER_RANGE - 1. Above the
#: writer's largest batch (5000), so a batch takes one range. Ids of one
#: writer increase; the sequence's maximum keeps them below 2**53.
IDS_PER_RANGE = 8192

#: v1 rows converted per round of migration 2.
CONVERT_CHUNK = 50_000

#: Blocks fetched per round trip while a query walks them in time order
#: (it usually stops after a few).
BLOCKS_PER_FETCH = 32

#: Connection parameters applied unless the URL sets them: bounded connect
#: time and TCP keepalives, so that a vanished server is noticed in seconds
#: rather than hanging the writer thread for the kernel's default of hours.
CONNECTION_DEFAULTS = {
    "connect_timeout": "5",
    "application_name": "sensornet",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}

_SENSOR_NAME = attrgetter("sensor")
_SERIES_KEY = attrgetter("sensor", "kind")
_ORIGIN_KEY = attrgetter("unit", "peer", "dialect")

# -- dictionaries ------------------------------------------------------------

# Names arrive sorted, and unnest keeps their order: concurrent writers
# insert new names in one order and cannot deadlock on each other's.
_INSERT_SENSORS = (
    "INSERT INTO sensors (name, created_at) SELECT name, %s FROM unnest(%s::text[]) AS name "
    "ON CONFLICT (name) DO NOTHING"
)
_SELECT_SENSORS = "SELECT id, name FROM sensors WHERE name = ANY(%s::text[])"
_INSERT_SERIES = (
    "INSERT INTO series (sensor, kind, policy) SELECT * FROM unnest(%s::int8[], %s::text[], %s::int4[]) "
    "ON CONFLICT (sensor, kind) DO NOTHING"
)
_SELECT_SERIES = (
    "SELECT id, sensor, kind FROM series WHERE (sensor, kind) IN "
    "(SELECT * FROM unnest(%s::int8[], %s::text[]))"
)
_INSERT_ORIGINS = (
    "INSERT INTO origins (unit, peer, dialect) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) "
    "ON CONFLICT (unit, peer, dialect) DO NOTHING"
)
# Origins unused since the first parameter (microseconds), at most the
# second, never the newest (as in SQLite; identity ids are not given out
# again here, but the rule is kept alike). The outer test is checked again
# on a row a concurrent writer just marked as used: that row stays.
_EXPIRE_ORIGINS = (
    "DELETE FROM origins WHERE last_used < %(before)s AND id IN (SELECT id FROM origins "
    "WHERE last_used < %(before)s "
    "AND id < (SELECT max(id) FROM origins) ORDER BY last_used LIMIT %(limit)s)"
)
# When origins were last used (see base.ORIGIN_USE_PERIOD): the ids found.
_ORIGIN_USED = "UPDATE origins SET last_used = %s WHERE id = ANY(%s) RETURNING id"
_SELECT_ORIGINS = (
    "SELECT id, unit, peer, dialect FROM origins WHERE (unit, peer, dialect) IN "
    "(SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]))"
)

# -- the write path ----------------------------------------------------------

# FOR NO KEY UPDATE serializes writers of a sensor as FOR UPDATE would, but
# lets rows that reference the sensor (its series) be checked meanwhile.
_LOCK_SENSORS = "SELECT id FROM sensors WHERE id = ANY(%s::int8[]) ORDER BY id FOR NO KEY UPDATE"
# A statement of its own, after the lock: in READ COMMITTED it then sees
# what the writer that held the lock before us committed.
_HIGH_WATER = "SELECT sensor, max(max_seq) FROM series WHERE sensor = ANY(%s::int8[]) GROUP BY sensor"
_NEXT_RANGE = "SELECT nextval('reading_id_blocks')"

_ROW_COLUMNS = "(series, t0, t1, seq0, seq1, n, data)"
# From arrays rather than COPY: equally fast for a batch's rows (measured:
# 4-6 ms for 1000 rows either way), and unlike COPY it can be pipelined with
# the summary update and the COMMIT.
_INSERT_FRESH = (
    f"INSERT INTO fresh {_ROW_COLUMNS} SELECT * FROM unnest(%b::int8[], %b::int8[], %b::int8[], %b::int8[], "
    "%b::int8[], %b::int4[], %b::bytea[])"
)
_ROW_TYPES = ["int8", "int8", "int8", "int8", "int8", "int4", "bytea"]

# The latest reading is the one with the greatest time; on a tie, the one
# written last. greatest() and least() skip NULLs (a series never written).
_UPDATE_SERIES = """
UPDATE series AS s SET
    unit = CASE WHEN s.ts IS NULL OR u.ts >= s.ts THEN u.unit ELSE s.unit END,
    value = CASE WHEN s.ts IS NULL OR u.ts >= s.ts THEN u.value ELSE s.value END,
    ts = greatest(s.ts, u.ts),
    count = s.count + u.count,
    first_seen = least(s.first_seen, u.first_seen),
    last_seen = greatest(s.last_seen, u.last_seen),
    max_seq = greatest(s.max_seq, u.max_seq)
FROM unnest(%b::int8[], %b::text[], %b::float8[], %b::int8[], %b::int8[], %b::int8[], %b::int8[], %b::int8[])
    AS u (series, unit, value, ts, count, first_seen, last_seen, max_seq)
WHERE s.id = u.series
"""

# One statement over both tables: one snapshot, so a row the compactor
# moves meanwhile is found in one place or the other, never in neither.
_STORED_SEQS = """
SELECT data FROM fresh
WHERE series IN (SELECT id FROM series WHERE sensor = %(sensor)s) AND seq0 <= %(hi)s AND seq1 >= %(lo)s
UNION ALL
SELECT data FROM blocks
WHERE series IN (SELECT id FROM series WHERE sensor = %(sensor)s) AND seq0 <= %(hi)s AND seq1 >= %(lo)s
"""

# -- compaction --------------------------------------------------------------

# Whole series at a time (sensornet.store.layout.wholeSeries), through the
# (series, t1) index.
_TAKE_FRESH = (
    "SELECT id, series, data FROM fresh WHERE series > %s AND series <= %s AND id <= %s "
    "ORDER BY series, t1 LIMIT %s "
    "FOR UPDATE SKIP LOCKED"
)

# Rows arrive ordered by (series, bucket), so concurrent compactors update
# shared buckets in one order. On a tie of last_ts the new row's last wins:
# it was stored later.
_UPSERT_ROLLUP = """
INSERT INTO {table} AS old (series, bucket, count, lo, hi, total, last_ts, last)
SELECT * FROM unnest(%b::int8[], %b::int8[], %b::int8[], %b::float8[], %b::float8[], %b::float8[],
                     %b::int8[], %b::float8[])
ON CONFLICT (series, bucket) DO UPDATE SET
    count = old.count + excluded.count,
    lo = least(old.lo, excluded.lo),
    hi = greatest(old.hi, excluded.hi),
    total = old.total + excluded.total,
    last = CASE WHEN excluded.last_ts >= old.last_ts THEN excluded.last ELSE old.last END,
    last_ts = greatest(old.last_ts, excluded.last_ts)
"""

# -- reading -----------------------------------------------------------------

_SENSORS = (
    "SELECT n.name, s.kind, s.unit, s.value, s.ts, s.count, s.first_seen, s.last_seen "
    "FROM series s JOIN sensors n ON n.id = s.sensor WHERE s.count > 0 ORDER BY n.name, s.kind"
)
_SERIES_NAMES = "SELECT s.id, n.name, s.kind FROM series s JOIN sensors n ON n.id = s.sensor"

# -- migration 2 -------------------------------------------------------------

_V1_CHUNK = (
    "SELECT id, sensor, kind, value, unit, "
    "(extract(epoch FROM ts) * 1000000)::int8, seq, (extract(epoch FROM received_at) * 1000000)::int8, "
    "peer, dialect FROM v1_readings WHERE id > %s ORDER BY id LIMIT %s"
)


def classify(error: BaseException) -> StoreError:
    """
    Turn an exception from psycopg (or from encoding a value) into
    L{StoreRejected} (SQLSTATE classes 22, data exception, and 23, integrity
    constraint violation: the data is at fault) or L{StoreUnavailable}
    (everything else: connection lost, server shutting down, disk full,
    deadlock or serialization failure, ...: try again later).
    """
    if isinstance(error, StoreError):
        return error
    if isinstance(error, (OverflowError, UnicodeError)):
        return StoreRejected(str(error).splitlines()[0] if str(error) else type(error).__name__)
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, psycopg.Error):
        diag = getattr(error, "diag", None)
        primary = getattr(diag, "message_primary", None) if diag is not None else None
        if primary:
            message = primary
        state = error.sqlstate or ""
        if state[:2] in ("22", "23") or (not state and isinstance(error, psycopg.DataError)):
            return StoreRejected(message)
    return StoreUnavailable(f"PostgreSQL: {message}")


def ensureSynchronousCommit(conn: "psycopg.Connection[Any]") -> None:
    """
    Make C{conn}'s session wait, at each C{COMMIT}, for its WAL record to be
    flushed to disk: if C{synchronous_commit} is C{off} (whatever set it:
    the server's configuration, C{ALTER DATABASE}, C{ALTER ROLE}, the URL's
    C{options}), set it to C{on} for this session. (In autocommit mode the
    C{SET} is not undone by any later transaction's rollback.)
    """
    row = conn.execute("SHOW synchronous_commit").fetchone()
    if row is None or row[0] == "off":
        conn.execute("SET synchronous_commit = on")


def _connectionString(url: str) -> str:
    given = conninfo_to_dict(url)
    extra = {name: value for name, value in CONNECTION_DEFAULTS.items() if name not in given}
    return make_conninfo(url, **extra)


def _columns(rows: Sequence[Sequence[Any]], width: int) -> List[List[Any]]:
    """
    C{rows} as C{width} column lists, the parameters of an C{unnest()}.
    """
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows)]


def _copyRows(cursor: "psycopg.Cursor[Any]", table: str, rows: Iterable[Sequence[Any]]) -> None:
    """
    Insert fresh rows or blocks (series, t0, t1, seq0, seq1, n, data) into
    C{table} with one binary C{COPY}.
    """
    with cursor.copy(f"COPY {table} {_ROW_COLUMNS} FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_ROW_TYPES)
        for row in rows:
            copy.write_row(row)


def _rollback(conn: "psycopg.Connection[Any]") -> None:
    """
    End the transaction C{conn} is in, if any, undoing it. On a broken
    connection the caller's error says more than this one would.
    """
    try:
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
    except psycopg.Error:
        pass


@contextmanager
def _snapshot(conn: "psycopg.Connection[Any]") -> Iterator[None]:
    """
    A read-only C{REPEATABLE READ} transaction: every statement inside sees
    the database as of its first one.
    """
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    try:
        yield
    finally:
        # Nothing to keep: ending it either way releases the snapshot.
        _rollback(conn)


class PostgreSQLStore(Store):
    """
    A L{Store} in a PostgreSQL database, through one psycopg connection.

    The connection runs in autocommit mode: single statements need no
    transaction, and each write, compaction or multi-statement read is one
    explicit transaction.

    The write path keeps three dictionaries in memory: sensor name to
    L{SensorState}, (sensor, kind) to L{SeriesEntry}, (unit, peer, dialect)
    to origin id. Ids never change once committed, so they stay valid while
    other servers write; high-water marks are read again at every batch.
    After any failed write the dictionaries are forgotten (the rolled-back
    transaction may have created some of their entries).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Optional[psycopg.Connection[Any]] = None
        self._forget()
        # Read side: series id to (sensor, kind), origin id to (unit, peer,
        # dialect). Only ever filled from committed rows.
        self._seriesNames: Dict[int, Tuple[str, str]] = {}
        self._originNames: Dict[int, Tuple[str, str, str]] = {}

    # -- connection ---------------------------------------------------------

    def open(self) -> None:
        if self._conn is not None:
            return
        try:
            conn = psycopg.connect(_connectionString(self.url), autocommit=True)
        except psycopg.Error as e:
            raise classify(e) from e
        try:
            ensureSynchronousCommit(conn)
            self._migrate(conn)
            self._applyRetention(conn)
        except BaseException as e:
            self._forget()
            conn.close()
            if isinstance(e, (psycopg.Error, OverflowError, UnicodeError)):
                raise StoreUnavailable(f"PostgreSQL: cannot prepare the schema: {classify(e)}") from e
            raise
        self._conn = conn

    def _migrate(self, conn: "psycopg.Connection[Any]") -> None:
        migrations = loadMigrations("postgresql")
        with conn.transaction():
            # Serializes servers starting at once against one database; the
            # lock is released at the end of the transaction.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
            current = int(row[0]) if row else 0
            if current > len(migrations):
                raise StoreUnavailable(
                    f"database schema version {current} is newer than this sensornet knows "
                    f"({len(migrations)}): upgrade sensornet"
                )
            for migration in migrations[current:]:
                # No parameters: psycopg sends the whole file as one simple
                # query, statements and all.
                conn.execute(migration.sql.encode("utf-8"))
                if migration.version == 2:
                    self._convertVersion1(conn)
                conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )

    def _convertVersion1(self, conn: "psycopg.Connection[Any]") -> None:
        """
        Inside migration 2's transaction: move schema 1's readings (renamed
        C{v1_readings}) into blocks, rollups and series summaries, keeping
        every reading's id, C{CONVERT_CHUNK} rows at a time in id order;
        drop the schema 1 tables; start reading ids above the greatest v1
        id.
        """
        self._forget()
        last = 0
        cursor = conn.cursor(binary=True)
        while True:
            rows = cursor.execute(_V1_CHUNK, (last, CONVERT_CHUNK)).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            # PostgreSQL keeps microseconds; a float of seconds converts back
            # to the same microseconds for any time before the year 2255.
            readings = [
                Reading(sensor, kind, value, unit, ts=ts / 1_000_000, seq=seq, dialect=dialect, peer=peer,
                        received_at=at / 1_000_000)
                for _, sensor, kind, value, unit, ts, seq, at, peer, dialect in rows
            ]
            self._ensureSensors(conn, sorted(set(map(_SENSOR_NAME, readings))))
            plan = self._plan(conn, readings, 0, readings)
            for seriesId, group in plan.groups.items():
                group.ids[:] = [rows[i][0] for i in plan.indexes[seriesId]]
            merged = compact([(seriesId, encodeFresh(group)) for seriesId, group in plan.groups.items()])
            self._storeCompacted(cursor, merged.blocks, merged.minutes, merged.hours)
            self._updateSeries(cursor, plan, readings)
        conn.execute("DROP TABLE v1_readings, v1_sensors")
        if last:
            conn.execute("SELECT setval('reading_id_blocks', %s, false)", (last // IDS_PER_RANGE + 1,))
        self._forget()

    def _applyRetention(self, conn: "psycopg.Connection[Any]") -> None:
        """
        Record in each series the index of the retention rule that applies
        to it now (the rules may have changed since it was created).
        """
        if self.retention is None:
            return
        rows = conn.execute(
            "SELECT s.id, s.policy, n.name, s.kind FROM series s JOIN sensors n ON n.id = s.sensor"
        ).fetchall()
        changed = [
            (seriesId, policy)
            for seriesId, old, name, kind in rows
            for policy in (self.retention.forSeries(name, kind),)
            if policy != old
        ]
        if changed:
            with conn.transaction():
                # The sensors' locks first, in id order, as writers take
                # them: then the series rows cannot deadlock with a write.
                conn.execute(
                    "SELECT id FROM sensors WHERE id IN (SELECT sensor FROM series WHERE id = ANY(%s::int8[])) "
                    "ORDER BY id FOR NO KEY UPDATE",
                    ([seriesId for seriesId, _ in changed],),
                )
                conn.execute(
                    "UPDATE series SET policy = c.policy FROM unnest(%s::int8[], %s::int4[]) AS c (id, policy) "
                    "WHERE series.id = c.id",
                    _columns(changed, 2),
                )

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._forget()
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _connection(self) -> "psycopg.Connection[Any]":
        if self._conn is None or self._conn.closed:
            raise StoreUnavailable("PostgreSQL store is not open")
        return self._conn

    def schemaVersion(self) -> int:
        try:
            row = self._connection().execute("SELECT max(version) FROM schema_version").fetchone()
        except psycopg.Error as e:
            raise classify(e) from e
        return int(row[0]) if row else 0

    def ping(self) -> bool:
        try:
            self.open()
            self._connection().execute("SELECT 1").fetchone()
            return True
        except Exception:
            return False

    # -- dictionaries -------------------------------------------------------

    def _forget(self) -> None:
        """
        Drop the write side's dictionaries (after a rollback: they may hold
        ids of rows that were never committed). They refill as needed.
        """
        self._sensorsByName: Dict[str, SensorState] = {}
        self._seriesByKey: Dict[Tuple[str, str], SeriesEntry] = {}
        self._originsByKey: Dict[Tuple[str, str, str], int] = {}
        self._originUse: Dict[int, int] = {}

    def _ensureSensors(self, conn: "psycopg.Connection[Any]", names: List[str]) -> None:
        """
        Make sure each of C{names} (sorted) has a sensor row and a
        L{SensorState} in memory. A new state's high-water mark is -1: it is
        read from the database under the sensor's lock before use.
        """
        missing = [name for name in names if name not in self._sensorsByName]
        if not missing:
            return
        conn.execute(_INSERT_SENSORS, (toMicroseconds(time.time()), missing))
        for sensorId, name in conn.execute(_SELECT_SENSORS, (missing,)):
            self._sensorsByName[name] = SensorState(sensorId, -1)

    def _ensureSeries(self, conn: "psycopg.Connection[Any]", readings: Sequence[Reading]) -> None:
        """
        Create or look up, in one go, every series of C{readings} not in
        memory yet (their sensors are).
        """
        missing = sorted(key for key in set(map(_SERIES_KEY, readings)) if key not in self._seriesByKey)
        if not missing:
            return
        states = self._sensorsByName
        sensorIds = [states[name].id for name, _ in missing]
        kinds = [kind for _, kind in missing]
        retention = self.retention
        policies = [retention.forSeries(name, kind) if retention is not None else 0 for name, kind in missing]
        conn.execute(_INSERT_SERIES, (sensorIds, kinds, policies))
        names = {states[name].id: name for name, _ in missing}
        for seriesId, sensorId, kind in conn.execute(_SELECT_SERIES, (sensorIds, kinds)):
            name = names[sensorId]
            self._seriesByKey[(name, kind)] = SeriesEntry(seriesId, states[name])

    def _ensureOrigins(self, conn: "psycopg.Connection[Any]", readings: Sequence[Reading]) -> None:
        """
        Create or look up, in one go, every origin of C{readings} not in
        memory yet.
        """
        missing = sorted(key for key in set(map(_ORIGIN_KEY, readings)) if key not in self._originsByKey)
        if not missing:
            return
        columns = _columns(missing, 3)
        conn.execute(_INSERT_ORIGINS, columns)
        for originId, unit, peer, dialect in conn.execute(_SELECT_ORIGINS, columns):
            self._originsByKey[(unit, peer, dialect)] = originId

    def _storedSeqs(self, conn: "psycopg.Connection[Any]", state: SensorState, lo: int, hi: int) -> Set[int]:
        """
        The seqs stored for a sensor between C{lo} and C{hi} (inclusive),
        fresh and compacted: the slow path, for readings at or below the
        sensor's high-water mark.
        """
        found: Set[int] = set()
        for (data,) in conn.cursor(binary=True).execute(_STORED_SEQS, {"sensor": state.id, "lo": lo, "hi": hi}):
            found.update(s for s in decodeRow(data).seqs if lo <= s <= hi)
        return found

    def _plan(
        self,
        conn: "psycopg.Connection[Any]",
        readings: Sequence[Reading],
        nextId: int,
        call: Sequence[Reading],
    ) -> BatchPlan:
        """
        L{planBatch} with this store's dictionaries. At the first miss, the
        series and origins of every reading of C{call} (the write call
        C{readings} belong to) that it does not know yet are created, in
        one sorted statement each.
        """
        seriesGet = self._seriesByKey.get
        originGet = self._originsByKey.get

        def series(name: str, kind: str) -> SeriesEntry:
            entry = seriesGet((name, kind))
            if entry is None:
                self._ensureSeries(conn, call)
                entry = self._seriesByKey[(name, kind)]
            return entry

        def origin(unit: str, peer: str, dialect: str) -> int:
            found = originGet((unit, peer, dialect))
            if found is None:
                self._ensureOrigins(conn, call)
                found = self._originsByKey[(unit, peer, dialect)]
            return found

        return planBatch(
            readings, series, origin, nextId, lambda state, lo, hi: self._storedSeqs(conn, state, lo, hi)
        )

    # -- writing ------------------------------------------------------------

    def write(self, readings: Sequence[Reading]) -> WriteResult:
        if not readings:
            return WriteResult(0, 0, ())
        if len(self._originsByKey) > base.ORIGIN_CACHE_LIMIT:
            self._originsByKey.clear()
        try:
            return self._writeOnce(readings)
        except OriginGone:
            # An origin in memory was deleted as unused meanwhile: rolled
            # back, caches forgotten; planned again from the database, which
            # creates it anew. Once: it cannot happen twice.
            return self._writeOnce(readings)

    def _writeOnce(self, readings: Sequence[Reading]) -> WriteResult:
        """
        One transaction of L{write}.

        @raise OriginGone: An origin the batch was planned with no longer
            exists; nothing is committed, the caches are forgotten.
        """
        conn = self._connection()
        duplicates: List[int] = []
        used: Set[int] = set()
        try:
            # Pipeline mode: statements whose results are not needed at once
            # travel together, and reading a result sends what is queued.
            # BEGIN and COMMIT are plain statements in the pipeline (a
            # psycopg transaction block would wait for the server at each).
            # After a failed statement the server skips the rest, COMMIT
            # included, and the pipeline raises its error.
            with conn.pipeline():
                conn.execute("BEGIN")
                # Every lock of the call in one statement, in id order, before
                # anything else is locked: writers cannot deadlock.
                parts = getattr(readings, "parts", None)
                names = sorted(
                    # A batch of runs names its sensors once a run, without
                    # making its readings.
                    {run[0][0] for _, chunk in parts for run in chunk.runs.values()} if parts
                    else set(map(_SENSOR_NAME, readings))
                )
                self._ensureSensors(conn, names)
                states = [self._sensorsByName[name] for name in names]
                ids = sorted(state.id for state in states)
                conn.execute(_LOCK_SENSORS, (ids,))
                marks: Optional[psycopg.Cursor[Any]] = conn.execute(_HIGH_WATER, (ids,))
                # Chunks that came with their runs are planned per run (one
                # part only: the writer's batches); see SQLiteStore.write.
                runs = parts if len(readings) <= IDS_PER_RANGE else None
                # One id range per part; the writer's batches are one part.
                for start in range(0, len(readings), IDS_PER_RANGE):
                    nextRange = conn.execute(_NEXT_RANGE)
                    if marks is not None:
                        highWater = dict(marks.fetchall())
                        for state in states:
                            state.highWater = highWater.get(state.id, -1)
                        marks = None
                    row = nextRange.fetchone()
                    assert row is not None
                    part = readings if runs else readings[start:start + IDS_PER_RANGE]
                    fast = (
                        planRuns(runs, len(part), self._seriesByKey, self._originsByKey, row[0] * IDS_PER_RANGE)
                        if runs else None
                    )
                    if fast is not None:
                        rows, summaries = fast.rows, fast.summaries
                        used.update(fast.origins)
                    else:
                        plan = self._plan(conn, part, row[0] * IDS_PER_RANGE, readings)
                        rows, summaries = freshRows(plan), summaryRows(plan, part)
                        used.update(originsOf(plan))
                        duplicates.extend(start + i for i in plan.duplicates)
                    if rows:
                        cursor = conn.cursor(binary=True)
                        cursor.execute(_INSERT_FRESH, _columns(rows, 7))
                        cursor.execute(_UPDATE_SERIES, _columns(summaries, 8))
                now = self.clock()
                record = self._originsToRecord(used, now)
                if record:
                    # Rare (once per origin an hour): waiting for the count
                    # here is no cost that matters.
                    found = conn.execute(_ORIGIN_USED, (int(now * 1_000_000), record)).fetchall()
                    if len(found) != len(record):
                        raise OriginGone()
                conn.execute("COMMIT")
        except BaseException as e:
            self._forget()
            _rollback(conn)
            if isinstance(e, (psycopg.Error, OverflowError, UnicodeError)):
                raise classify(e) from e
            raise
        self._originsRecorded(record, now)
        return WriteResult(len(readings) - len(duplicates), len(duplicates), tuple(duplicates))

    @staticmethod
    def _updateSeries(cursor: "psycopg.Cursor[Any]", plan: BatchPlan, readings: Sequence[Reading]) -> None:
        """
        Fold a planned batch into its series' summary rows, one statement.
        """
        summaries = summaryRows(plan, readings)
        if summaries:
            cursor.execute(_UPDATE_SERIES, _columns(summaries, 8))

    @staticmethod
    def _storeCompacted(
        cursor: "psycopg.Cursor[Any]",
        blocks: Sequence[Sequence[Any]],
        minutes: Sequence[Sequence[Any]],
        hours: Sequence[Sequence[Any]],
    ) -> None:
        """
        Insert blocks and fold rollup rows (both from L{compact}) into the
        rollup tables.
        """
        if blocks:
            _copyRows(cursor, "blocks", blocks)
        for table, rollups in (("rollup_1m", minutes), ("rollup_1h", hours)):
            if rollups:
                cursor.execute(_UPSERT_ROLLUP.format(table=table), _columns(rollups, 8))

    # -- reading ------------------------------------------------------------

    def sensors(self) -> List[Dict[str, Any]]:
        try:
            rows = self._connection().execute(_SENSORS).fetchall()
        except psycopg.Error as e:
            raise classify(e) from e
        return [
            {
                "sensor": name, "kind": kind, "unit": unit, "value": value, "ts": fromMicroseconds(ts),
                "count": count, "first_seen": fromMicroseconds(first), "last_seen": fromMicroseconds(last),
            }
            for name, kind, unit, value, ts, count, first, last in rows
        ]

    def _names(self, conn: "psycopg.Connection[Any]") -> Callable[[int], Tuple[str, str]]:
        """
        Series id to (sensor, kind), from memory or else the database:
        every series newer than the newest one known comes with the miss.
        """
        cache = self._seriesNames

        def names(seriesId: int) -> Tuple[str, str]:
            found = cache.get(seriesId)
            if found is None:
                newest = max(cache, default=0)
                for sid, name, kind in conn.execute(
                    _SERIES_NAMES + " WHERE s.id > %s OR s.id = %s", (newest, seriesId)
                ):
                    cache[sid] = (name, kind)
                found = cache[seriesId]
            return found

        return names

    def _origins(self, conn: "psycopg.Connection[Any]") -> Callable[[int], Tuple[str, str, str]]:
        """
        Origin id to (unit, peer, dialect), as L{_names} does for series.
        """
        cache = self._originNames

        def origins(originId: int) -> Tuple[str, str, str]:
            found = cache.get(originId)
            if found is None:
                newest = max(cache, default=0)
                for oid, unit, peer, dialect in conn.execute(
                    "SELECT id, unit, peer, dialect FROM origins WHERE id > %s OR id = %s", (newest, originId)
                ):
                    cache[oid] = (unit, peer, dialect)
                found = cache[originId]
            return found

        return origins

    @staticmethod
    def _seriesFilter(sensor: Optional[str], kind: Optional[str]) -> Tuple[List[str], List[Any]]:
        """
        A condition on C{series} (a column of series ids) for the filters,
        or none for all series.
        """
        where = []
        params: List[Any] = []
        if sensor is not None:
            where.append("sensor = (SELECT id FROM sensors WHERE name = %s)")
            params.append(sensor)
        if kind is not None:
            where.append("kind = %s")
            params.append(kind)
        if not where:
            return [], []
        return [f"series IN (SELECT id FROM series WHERE {' AND '.join(where)})"], params

    def readings(
        self,
        sensor: Optional[str] = None,
        kind: Optional[str] = None,
        since: Optional[float] = None,
        until: Optional[float] = None,
        limit: int = 1000,
        after: Optional[Tuple[Any, int]] = None,
    ) -> List[Dict[str, Any]]:
        sinceUs = toMicroseconds(since) if since is not None else None
        untilUs = toMicroseconds(until) if until is not None else None
        afterPos = None
        if after is not None:
            # Our cursors hold integer microseconds; older ones (SQLite's
            # schema 1) float seconds.
            afterTs = after[0] if isinstance(after[0], int) else toMicroseconds(float(after[0]))
            afterPos = (afterTs, int(after[1]))
        where, params = self._seriesFilter(sensor, kind)
        bounds = [x for x in (sinceUs, afterPos[0] if afterPos else None) if x is not None]
        if bounds:
            where.append("t1 >= %s")
            params.append(max(bounds))
        if untilUs is not None:
            where.append("t0 < %s")
            params.append(untilUs)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        if limit <= 0:
            return []
        conn = self._connection()
        try:
            # One snapshot: fresh rows and blocks as of one moment, so a row
            # the compactor moves meanwhile is seen once.
            with _snapshot(conn):
                fresh = conn.cursor(binary=True).execute(f"SELECT series, data FROM fresh{clause}", params).fetchall()
                with conn.cursor(name="sensornet_blocks", binary=True) as blocks:
                    blocks.itersize = BLOCKS_PER_FETCH
                    blocks.execute(f"SELECT series, t1, data FROM blocks{clause} ORDER BY t1", params)
                    return assembleReadings(
                        fresh, blocks, self._names(conn), self._origins(conn), sinceUs, untilUs, afterPos,
                        int(limit),
                    )
        except psycopg.Error as e:
            raise classify(e) from e

    def rollups(self, sensor: str, kind: Optional[str], since: float, until: float, step: str) -> List[Dict[str, Any]]:
        width, table = rollupTable(step)
        sinceUs, untilUs = toMicroseconds(since), toMicroseconds(until)
        start = sinceUs - sinceUs % width
        where, params = self._seriesFilter(sensor, kind)
        condition = " AND ".join(where)
        conn = self._connection()
        try:
            with _snapshot(conn):
                stored = conn.execute(
                    f"SELECT series, bucket, count, lo, hi, total, last_ts, last FROM {table} "
                    f"WHERE {condition} AND bucket >= %s AND bucket < %s",
                    params + [start, untilUs],
                ).fetchall()
                # In id order: on a tie of times, the reading stored later
                # is the bucket's last.
                fresh = conn.cursor(binary=True).execute(
                    f"SELECT series, data FROM fresh WHERE {condition} AND t1 >= %s AND t0 < %s ORDER BY id",
                    params + [start, untilUs],
                ).fetchall()
                return foldRollups(stored, fresh, width, sinceUs, untilUs, self._names(conn))
        except psycopg.Error as e:
            raise classify(e) from e

    # -- maintenance --------------------------------------------------------

    def freshWatermark(self) -> int:
        try:
            row = self._connection().execute("SELECT coalesce(max(id), 0) FROM fresh").fetchone()
        except psycopg.Error as e:
            raise classify(e) from e
        return int(row[0]) if row else 0

    def lastSeriesId(self) -> int:
        try:
            row = self._connection().execute("SELECT coalesce(max(id), 0) FROM series").fetchone()
        except psycopg.Error as e:
            raise classify(e) from e
        assert row is not None
        return int(row[0])

    def compactSeries(self, upTo: int, limit: int, after: int, through: int) -> Tuple[int, int]:
        conn = self._connection()
        try:
            with conn.transaction():
                cursor = conn.cursor(binary=True)
                # Rows another compactor holds are skipped: it compacts
                # them.
                rows, following = wholeSeries(
                    cursor.execute(_TAKE_FRESH, (after, through, upTo, limit)).fetchall(), limit
                )
                following = through if following is None else following
                if not rows:
                    return 0, following
                plan = compact([(series, data) for _, series, data in rows])
                cursor.execute("DELETE FROM fresh WHERE id = ANY(%s::int8[])", ([row[0] for row in rows],))
                self._storeCompacted(cursor, plan.blocks, plan.minutes, plan.hours)
        except (psycopg.Error, OverflowError) as e:
            raise classify(e) from e
        return plan.readings, following

    def expireOrigins(self, before: float, limit: int) -> int:
        conn = self._connection()
        try:
            with conn.transaction():
                cursor = conn.execute(_EXPIRE_ORIGINS, {"before": int(before * 1_000_000), "limit": limit})
                deleted = max(cursor.rowcount, 0)
        except psycopg.Error as e:
            raise classify(e) from e
        return deleted

    def expireOnce(self, now: float, after: int, limit: int, rows: Optional[int] = None) -> Tuple[int, int]:
        rules = retentionRules(self.retention)
        conn = self._connection()
        deleted = 0
        resume: Optional[int] = None
        try:
            with conn.transaction():
                series = conn.execute(
                    "SELECT id, policy FROM series WHERE id > %s ORDER BY id LIMIT %s", (after, limit)
                ).fetchall()
                if not series:
                    return 0, 0
                if rows is None:
                    # One statement per table, for all the series at once.
                    cutoffs: Dict[Tuple[str, str], List[Tuple[int, int]]] = {}
                    for seriesId, policy in series:
                        for table, column, cutoff in expiryCutoffs(rules, policy, now):
                            cutoffs.setdefault((table, column), []).append((seriesId, cutoff))
                    for (table, column), pairs in sorted(cutoffs.items()):
                        cursor = conn.execute(
                            f"DELETE FROM {table} AS t USING unnest(%s::int8[], %s::int8[]) AS c (series, cutoff) "
                            f"WHERE t.series = c.series AND t.{column} < c.cutoff",
                            _columns(pairs, 2),
                        )
                        deleted += max(cursor.rowcount, 0)
                else:
                    previous = after
                    for seriesId, policy in series:
                        for table, column, cutoff in expiryCutoffs(rules, policy, now):
                            cursor = conn.execute(
                                _boundedDelete(table), {"series": seriesId, "cutoff": cutoff, "n": rows - deleted}
                            )
                            deleted += max(cursor.rowcount, 0)
                            if deleted >= rows:
                                break
                        if deleted >= rows:
                            # This series may have more: the next call starts with it.
                            resume = previous
                            break
                        previous = seriesId
        except psycopg.Error as e:
            raise classify(e) from e
        if resume is not None:
            return resume, deleted
        return (series[-1][0] if len(series) == limit else 0), deleted

    def fleetStats(self) -> Dict[str, int]:
        try:
            row = self._connection().execute(
                "SELECT (SELECT count(*) FROM series), (SELECT coalesce(sum(n), 0) FROM fresh)"
            ).fetchone()
        except psycopg.Error as e:
            raise classify(e) from e
        assert row is not None
        return {"series": int(row[0]), "fresh_readings": int(row[1])}

    def medianInterval(self) -> Optional[float]:
        try:
            row = self._connection().execute(
                "SELECT percentile_disc(0.5) WITHIN GROUP "
                "(ORDER BY (last_seen - first_seen)::float8 / (count - 1)) FROM series WHERE count > 1"
            ).fetchone()
        except psycopg.Error as e:
            raise classify(e) from e
        return None if row is None or row[0] is None else float(row[0]) / 1_000_000


def _boundedDelete(table: str) -> str:
    """
    A statement deleting at most C{%(n)s} rows of C{table} for one series
    older than a cutoff, oldest first, through the C{(series, time)} index.
    """
    column = "t1" if table == "blocks" else "bucket"
    key = "id" if table == "blocks" else "bucket"
    return (f"DELETE FROM {table} WHERE series = %(series)s AND {key} IN "
            f"(SELECT {key} FROM {table} WHERE series = %(series)s AND {column} < %(cutoff)s "
            f"ORDER BY {column} LIMIT %(n)s)")
