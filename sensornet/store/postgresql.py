"""
The PostgreSQL store (C{postgresql://...}, psycopg 3): the backend for
several servers sharing one database.

A batch is written with binary C{COPY} into a per-connection temporary
staging table, then one C{INSERT .. SELECT .. ON CONFLICT (sensor, seq) DO
NOTHING} into C{readings}, then one upsert of the batch's summary rows into
C{sensors}, then C{COMMIT}: four round trips per batch whatever its size.
(Measured against C{executemany} in pipeline mode and against one INSERT
from C{unnest()} of array parameters: COPY was the fastest, about 3 times
pipeline mode; see C{docs/storage.md}.)

Timestamps are C{timestamptz} (microseconds) in the database and float
seconds since the epoch at this module's edge.

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

from typing import Any, Dict, List, Optional, Sequence, Tuple

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..reading import Reading
from .base import (
    Store,
    StoreError,
    StoreRejected,
    StoreUnavailable,
    WriteResult,
    loadMigrations,
    readingFilters,
    summarize,
)

__all__ = ["PostgreSQLStore", "ensureSynchronousCommit"]

#: The advisory lock held while checking and migrating the schema, so that
#: servers starting together migrate once, one after the other.
SCHEMA_LOCK = 0x73656E736F726E  # "sensorn"

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

_STAGING = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS sensornet_staging ("
    "ord integer, sensor text, kind text, value double precision, unit text, ts double precision, "
    "seq bigint, received_at double precision, peer text, dialect text) ON COMMIT DELETE ROWS"
)
_STAGING_TYPES = ["int4", "text", "text", "float8", "text", "float8", "int8", "float8", "text", "text"]
_COPY = "COPY sensornet_staging FROM STDIN (FORMAT BINARY)"

# Sorting by (sensor, seq) makes concurrent servers take row locks in one
# order. The outer SELECT returns the staging rows that were NOT inserted:
# the duplicates, usually none, so usually nothing travels back.
_INSERT = """
WITH inserted AS (
    INSERT INTO readings (sensor, kind, value, unit, ts, seq, received_at, peer, dialect)
    SELECT sensor, kind, value, unit, to_timestamp(ts), seq, to_timestamp(received_at), peer, dialect
    FROM sensornet_staging ORDER BY sensor, seq
    ON CONFLICT (sensor, seq) DO NOTHING
    RETURNING sensor, seq
)
SELECT s.ord FROM sensornet_staging s
WHERE s.seq IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM inserted i WHERE i.sensor = s.sensor AND i.seq = s.seq)
ORDER BY s.ord
"""

_UPSERT_SENSORS = """
INSERT INTO sensors AS old (sensor, kind, unit, value, ts, count, first_seen, last_seen)
SELECT sensor, kind, unit, value, to_timestamp(ts), count, to_timestamp(first_seen), to_timestamp(last_seen)
FROM unnest(%b::text[], %b::text[], %b::text[], %b::float8[], %b::float8[], %b::int8[], %b::float8[], %b::float8[])
    AS new (sensor, kind, unit, value, ts, count, first_seen, last_seen)
ON CONFLICT (sensor, kind) DO UPDATE SET
    unit = CASE WHEN excluded.ts >= old.ts THEN excluded.unit ELSE old.unit END,
    value = CASE WHEN excluded.ts >= old.ts THEN excluded.value ELSE old.value END,
    ts = greatest(old.ts, excluded.ts),
    count = old.count + excluded.count,
    first_seen = least(old.first_seen, excluded.first_seen),
    last_seen = greatest(old.last_seen, excluded.last_seen)
"""

_READING_SELECT = (
    "SELECT id, sensor, kind, value, unit, (extract(epoch FROM ts) * 1000000)::int8, seq, "
    "extract(epoch FROM received_at)::float8, peer, dialect FROM readings"
)
_SENSOR_COLUMNS = ("sensor", "kind", "unit", "value", "ts", "count", "first_seen", "last_seen")
_SENSOR_SELECT = (
    "SELECT sensor, kind, unit, value, extract(epoch FROM ts)::float8, count, "
    "extract(epoch FROM first_seen)::float8, extract(epoch FROM last_seen)::float8 "
    "FROM sensors ORDER BY sensor, kind"
)


def classify(error: BaseException) -> StoreError:
    """
    Turn an exception from psycopg (or from encoding a value) into
    L{StoreRejected} (SQLSTATE classes 22, data exception, and 23, integrity
    constraint violation: the data is at fault) or L{StoreUnavailable}
    (everything else: connection lost, server shutting down, disk full,
    deadlock or serialization failure, ...: try again later).
    """
    if isinstance(error, (OverflowError, UnicodeError)):
        return StoreRejected(str(error) or type(error).__name__)
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


class PostgreSQLStore(Store):
    """
    A L{Store} in a PostgreSQL database, through one psycopg connection.

    The connection runs in autocommit mode: reads are single statements
    (no transaction left open between calls), and each write is one
    explicit transaction.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Optional[psycopg.Connection[Any]] = None

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
            conn.execute(_STAGING)
        except BaseException as e:
            conn.close()
            if isinstance(e, psycopg.Error):
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
                conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )

    def close(self) -> None:
        conn, self._conn = self._conn, None
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

    # -- writing ------------------------------------------------------------

    def write(self, readings: Sequence[Reading]) -> WriteResult:
        if not readings:
            return WriteResult(0, 0, ())
        conn = self._connection()
        # Repeats of one (sensor, seq) inside the batch are settled here, so
        # the staging table holds each key once: the later ones are
        # duplicates of the first.
        keys = [(r.sensor, r.seq) for r in readings if r.seq is not None]
        inBatch: List[int] = []
        if len(set(keys)) != len(keys):
            seen = set()
            for index, r in enumerate(readings):
                if r.seq is not None:
                    key = (r.sensor, r.seq)
                    if key in seen:
                        inBatch.append(index)
                    seen.add(key)
        skip = set(inBatch)
        try:
            with conn.transaction():
                cursor = conn.cursor(binary=True)
                with cursor.copy(_COPY) as copy:
                    copy.set_types(_STAGING_TYPES)
                    for index, r in enumerate(readings):
                        if index in skip:
                            continue
                        copy.write_row(
                            (
                                index,
                                r.sensor,
                                r.kind,
                                r.value,
                                r.unit,
                                r.ts if r.ts is not None else r.received_at,
                                r.seq,
                                r.received_at,
                                r.peer,
                                r.dialect,
                            )
                        )
                cursor.execute(_INSERT)
                duplicates = sorted([row[0] for row in cursor.fetchall()] + inBatch)
                new: Sequence[Reading] = readings
                if duplicates:
                    dropped = set(duplicates)
                    new = [r for i, r in enumerate(readings) if i not in dropped]
                summary = summarize(new)
                if summary:
                    cursor.execute(_UPSERT_SENSORS, [list(column) for column in zip(*summary)])
        except (psycopg.Error, OverflowError, UnicodeError) as e:
            raise classify(e) from e
        return WriteResult(len(readings) - len(duplicates), len(duplicates), tuple(duplicates))

    # -- reading ------------------------------------------------------------

    def sensors(self) -> List[Dict[str, Any]]:
        try:
            rows = self._connection().execute(_SENSOR_SELECT).fetchall()
        except psycopg.Error as e:
            raise classify(e) from e
        return [dict(zip(_SENSOR_COLUMNS, row)) for row in rows]

    def readings(
        self,
        sensor: Optional[str] = None,
        kind: Optional[str] = None,
        since: Optional[float] = None,
        until: Optional[float] = None,
        limit: int = 1000,
        after: Optional[Tuple[Any, int]] = None,
    ) -> List[Dict[str, Any]]:
        where, params = readingFilters(sensor, kind, since, until, "%s", "to_timestamp(%s::float8)")
        if after is not None:
            position, lastId = after
            if isinstance(position, int):
                # Exact: the position is the row's timestamp in microseconds.
                where.append("(ts, id) > (to_timestamp(0) + %s::int8 * interval '1 microsecond', %s::int8)")
            else:
                where.append("(ts, id) > (to_timestamp(%s::float8), %s::int8)")
            params.extend((position, int(lastId)))
        sql = _READING_SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts, id LIMIT %s"
        params.append(int(limit))
        try:
            rows = self._connection().execute(sql, params).fetchall()
        except psycopg.Error as e:
            raise classify(e) from e
        return [
            {
                "id": row[0],
                "sensor": row[1],
                "kind": row[2],
                "value": row[3],
                "unit": row[4],
                "ts": row[5] / 1_000_000,
                "seq": row[6],
                "received_at": row[7],
                "peer": row[8],
                "dialect": row[9],
                "_position": (row[5], row[0]),
            }
            for row in rows
        ]
