"""
The SQLite store: the default, embedded backend (C{sqlite:PATH}).

Durability: the database runs in WAL mode with C{synchronous=FULL} by
default: C{COMMIT} returns only after the WAL frames of the transaction are
fsynced, so a reading is acknowledged only once it is on disk and survives
an operating-system crash or power loss, not just the process being killed.
(The writer's group commit pays that fsync once per batch, not per
reading.) C{sqlite:PATH?synchronous=normal} is the explicit, weaker option:
the WAL is fsynced only at checkpoints, so a commit survives the process
being killed (even with SIGKILL) but an OS crash or power loss can lose the
acknowledged transactions of the last checkpoint interval.

Checkpoints: a writing store turns SQLite's automatic checkpoint off and
runs checkpoints on a connection and thread of their own (see
L{_Checkpointer}): an automatic checkpoint runs inside C{COMMIT} and
fsyncs the database file there, stalling the writer. Measured here on
20-reading batches: commit p99 3.7 ms with automatic checkpoints, 0.7 ms
with the background checkpointer. The checkpointer survives its failures
(it reconnects with backoff and logs them, rate-limited), counts them
(L{SQLiteStore.checkpointFailures}), and keeps the WAL bounded
(L{SQLiteStore.walBytes}) by escalating to a C{TRUNCATE} checkpoint when it
passes L{SQLiteStore.walLimit}.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from twisted.logger import Logger
from zope.interface import implementer

from ..interfaces import ICheckpointedStore
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

__all__ = ["SQLiteStore"]

#: Used from the checkpointer's thread: a Twisted logger only formats and
#: hands the event to the global publisher, which twistd's file observer
#: writes under a lock.
_log = Logger()

_INSERT_FRESH = "INSERT INTO fresh (series, t0, t1, seq0, seq1, n, data) VALUES (?, ?, ?, ?, ?, ?, ?)"

# When an origin was last used (see base.ORIGIN_USE_PERIOD): 1 the time in
# microseconds, 2 the origin.
_ORIGIN_USED = "UPDATE origins SET last_used = ?1 WHERE id = ?2"

# Origins unused since 1 (microseconds), at most 2 of them, never the newest:
# a table without AUTOINCREMENT gives the greatest id out again once it is
# deleted, and a reader may still have that id's names in memory. An origin
# whose use was never recorded (NULL) is kept.
_EXPIRE_ORIGINS = (
    "DELETE FROM origins WHERE last_used < ?1 AND id IN (SELECT id FROM origins WHERE last_used < ?1 "
    "AND id < (SELECT max(id) FROM origins) ORDER BY last_used LIMIT ?2)"
)

# Column references in SET see the row as it was before the update. The
# parameters: 1 ts, 2 unit, 3 value, 4 count, 5 first seen, 6 last seen,
# 7 max seq, 8 series id.
_UPDATE_SERIES = (
    "UPDATE series SET "
    "unit = CASE WHEN ts IS NULL OR ?1 >= ts THEN ?2 ELSE unit END, "
    "value = CASE WHEN ts IS NULL OR ?1 >= ts THEN ?3 ELSE value END, "
    "ts = CASE WHEN ts IS NULL OR ?1 >= ts THEN ?1 ELSE ts END, "
    "count = count + ?4, "
    "first_seen = coalesce(min(first_seen, ?5), ?5), "
    "last_seen = coalesce(max(last_seen, ?6), ?6), "
    "max_seq = max(max_seq, ?7) "
    "WHERE id = ?8"
)

_INSERT_BLOCK = "INSERT INTO blocks (series, t0, t1, seq0, seq1, n, data) VALUES (?, ?, ?, ?, ?, ?, ?)"

_UPSERT_ROLLUP = (
    "INSERT INTO {table} (series, bucket, count, lo, hi, total, last_ts, last) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (series, bucket) DO UPDATE SET "
    "count = count + excluded.count, lo = min(lo, excluded.lo), hi = max(hi, excluded.hi), "
    "total = total + excluded.total, "
    "last = CASE WHEN excluded.last_ts >= last_ts THEN excluded.last ELSE last END, "
    "last_ts = max(last_ts, excluded.last_ts)"
)

_SENSOR_COLUMNS = ("sensor", "kind", "unit", "value", "ts", "count", "first_seen", "last_seen")


def splitStatements(script: str) -> List[str]:
    """
    Split an SQL script into complete statements. (C{executescript} would
    commit the migration transaction half-way, so statements run one by
    one.)
    """
    statements = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statement = pending.strip()
            if statement:
                statements.append(statement)
            pending = ""
    if pending.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in pending.splitlines()
    ):
        raise ValueError(f"incomplete SQL statement at the end of a schema file: {pending!r}")
    return statements


def classify(error: BaseException) -> StoreError:
    """
    Turn an exception from C{sqlite3} (or from binding a value) into a
    L{StoreRejected} (the data is at fault, for good) or a
    L{StoreUnavailable} (locked, disk full, I/O error, not open: try again).
    """
    message = str(error) or type(error).__name__
    if isinstance(error, (sqlite3.IntegrityError, sqlite3.DataError, OverflowError, UnicodeError)):
        return StoreRejected(message)
    if isinstance(error, sqlite3.ProgrammingError) and "binding" in message:
        return StoreRejected(message)
    return StoreUnavailable(f"SQLite: {message}")


class _CheckpointPinned(Exception):
    """
    The WAL is over its limit and a reader keeps it from being reset.
    """


class _Checkpointer:
    """
    Copies the WAL back into the database file every C{interval} seconds,
    on its own connection and daemon thread, in two passes: a passive
    checkpoint while commits go on (the bulk of the copying and the fsyncs),
    then a second one holding C{writeLock}, which the writer takes around
    each transaction, to copy the few frames committed meanwhile. After
    that second pass the WAL is wholly copied, so the writer's next
    transaction starts it again from the beginning: the WAL stays small and
    the writer waits only for the short second pass.

    It never stops before L{stop}:

      - Any failure (its connection cannot be opened, e.g. C{EMFILE} when
        the server is at its open-file limit; an I/O error) is counted in
        L{failures} and logged: the first of a run at once, then at most one
        line per C{logInterval} seconds with the count, and one line when it
        recovers. After a failure it drops its connection and opens a new
        one, waiting C{interval} doubled per failure in a row, up to
        C{maxBackoff} seconds.
      - While it has no connection of its own, every round runs the
        checkpoint on the writer's connection (C{writerConnection}), holding
        C{writeLock}: the writer waits for the whole copy, but the WAL stays
        bounded.
      - When the WAL holds more than C{walLimit} bytes after the second pass
        (a long reader kept the writer from starting it again), the
        checkpoint is escalated, still holding C{writeLock}: a C{TRUNCATE}
        checkpoint waits up to C{escalateTimeout} seconds for readers to
        finish, copies everything and truncates the WAL file to zero bytes.
        If a reader is still there, that counts as a failure and is retried
        with the same backoff.

    @ivar failures: Failed rounds so far (connect, checkpoint, or a WAL kept
        over its limit by a reader).
    @ivar escalations: C{TRUNCATE} checkpoints run because the WAL was over
        C{walLimit}.
    @ivar rounds: Rounds that ended without a failure.
    """

    interval = 0.25
    maxBackoff = 5.0
    logInterval = 60.0
    walLimit = 64 * 1024 * 1024
    escalateTimeout = 0.5

    def __init__(
        self,
        path: str,
        busyTimeout: float,
        writeLock: threading.Lock,
        writerConnection: Callable[[], Optional[sqlite3.Connection]] = lambda: None,
        connect: Optional[Callable[[], sqlite3.Connection]] = None,
        log: Optional[Logger] = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.busyTimeout = busyTimeout
        self.writeLock = writeLock
        self.writerConnection = writerConnection
        self.connect = connect or self._connect
        self.log = log or _log
        self.monotonic = monotonic
        self.failures = 0
        self.escalations = 0
        self.rounds = 0
        self._db: Optional[sqlite3.Connection] = None
        self._frameBytes = 0
        self._inARow = 0
        self._firstFailure = 0.0
        self._lastLogged = 0.0
        self._unlogged = 0
        self._nextConnect = 0.0
        self._nextEscalation = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sensornet-sqlite-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=self.busyTimeout, isolation_level=None, check_same_thread=False)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._delay()):
                self._round()
        finally:
            self._drop()

    def _delay(self) -> float:
        if self._inARow == 0:
            return self.interval
        # Only the reconnection backs off: while there is no connection of
        # its own, the fallback checkpoint on the writer's runs every round.
        return self.interval if self._db is None and self.writerConnection() is not None else self._backoff()

    def _backoff(self) -> float:
        return min(self.interval * 2 ** min(self._inARow, 30), self.maxBackoff)

    def _round(self) -> None:
        if self._db is None and self.monotonic() >= self._nextConnect:
            try:
                db = self.connect()
                try:
                    self._frameBytes = db.execute("PRAGMA page_size").fetchone()[0] + 24
                except BaseException:
                    db.close()
                    raise
                self._db = db
            except Exception as e:
                self._failed(e)
                self._nextConnect = self.monotonic() + self._backoff()
        if self._db is None:
            self._fallback()
            return
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            with self.writeLock:
                settled = self._secondPass(self._db)
        except _CheckpointPinned as e:
            self._failed(e)
        except Exception as e:
            self._drop()
            self._failed(e)
            self._nextConnect = self.monotonic() + self._backoff()
        else:
            if settled:
                self._succeeded()

    def _fallback(self) -> None:
        """
        Without a connection of its own: checkpoint on the writer's, holding
        C{writeLock}, so the WAL stays bounded. Neither a failure nor a
        recovery unless it raises.
        """
        try:
            with self.writeLock:
                writer = self.writerConnection()
                if writer is None:
                    return
                if not self._frameBytes:
                    self._frameBytes = writer.execute("PRAGMA page_size").fetchone()[0] + 24
                self._secondPass(writer)
        except Exception as e:
            self._failed(e)

    def _secondPass(self, db: sqlite3.Connection) -> bool:
        """
        With C{writeLock} held: copy what is left, and escalate if the WAL
        is over its limit. Returns whether the WAL is within its limit, or
        at least was not tried again yet (after a reader kept an escalation
        from finishing, the next one waits for the backoff, so that the
        writer is not held every round).

        @raise _CheckpointPinned: The escalation could not reset the WAL.
        """
        frames = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        if frames * self._frameBytes <= self.walLimit:
            return True
        if self.monotonic() < self._nextEscalation:
            return False
        self.escalations += 1
        db.execute(f"PRAGMA busy_timeout={int(self.escalateTimeout * 1000)}")
        try:
            busy, frames, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            db.execute(f"PRAGMA busy_timeout={int(self.busyTimeout * 1000)}")
        if busy:
            raise _CheckpointPinned(
                f"the WAL holds {frames * self._frameBytes} bytes, over its limit of {self.walLimit}, "
                f"and a reader kept it from being reset for {self.escalateTimeout} s"
            )
        return True

    def _drop(self) -> None:
        db, self._db = self._db, None
        _closeQuietly(db)

    def _failed(self, error: BaseException) -> None:
        now = self.monotonic()
        self.failures += 1
        self._inARow += 1
        reason = f"{type(error).__name__}: {error}"
        if self._inARow == 1:
            self._firstFailure = self._lastLogged = now
            self._unlogged = 0
            self.log.warn(
                "SQLite checkpointer for {path} failed: {reason}; retrying (while it keeps failing, "
                "logged once per {every}s)",
                path=self.path, reason=reason, every=self.logInterval,
            )
        elif now - self._lastLogged >= self.logInterval:
            self.log.warn(
                "SQLite checkpointer for {path} still failing: {count} failures in a row over {seconds:.0f}s "
                "({unlogged} not logged), latest: {reason}",
                path=self.path, count=self._inARow, seconds=now - self._firstFailure,
                unlogged=self._unlogged, reason=reason,
            )
            self._lastLogged = now
            self._unlogged = 0
        else:
            self._unlogged += 1
        if isinstance(error, _CheckpointPinned):
            self._nextEscalation = now + self._backoff()

    def _succeeded(self) -> None:
        self.rounds += 1
        if self._inARow:
            self.log.info(
                "SQLite checkpointer for {path} recovered after {count} failures in a row over {seconds:.1f}s",
                path=self.path, count=self._inARow, seconds=self.monotonic() - self._firstFailure,
            )
            self._inARow = 0


@implementer(ICheckpointedStore)
class SQLiteStore(Store):
    """
    A L{Store} in one SQLite file, through one C{sqlite3} connection in
    autocommit mode (every transaction is an explicit C{BEGIN IMMEDIATE} ..
    C{COMMIT}, so a writer takes the write lock up front and waits up to
    C{busyTimeout} seconds for another writer instead of failing half-way).

    A store that writes runs a background checkpointer (L{_Checkpointer});
    L{checkpointFailures} and L{walBytes} say how it is doing.

    @param path: The database file (created if missing), or C{":memory:"}.
    @param synchronous: C{"full"} (the default: every commit is fsynced
        before it returns, so an acknowledged reading survives power loss)
        or C{"normal"} (the WAL is fsynced only at checkpoints: a commit
        survives the process being killed, not an OS crash or power loss);
        see the module docstring.
    @param busyTimeout: Seconds to wait for a lock held by another
        connection before giving up with L{StoreUnavailable}.

    @cvar walLimit: Bytes of WAL above which the checkpointer escalates to a
        C{TRUNCATE} checkpoint holding the write lock.
    """

    walLimit = _Checkpointer.walLimit

    def __init__(self, path: str, synchronous: str = "full", busyTimeout: float = 5.0, url: str = "") -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self.path = path
        self.synchronous = synchronous
        self.busyTimeout = busyTimeout
        self.url = url or f"sqlite:{path}"
        self._db: Optional[sqlite3.Connection] = None
        self._checkpointer: Optional[_Checkpointer] = None
        self._pastCheckpointFailures = 0
        self._countLock = threading.Lock()
        self._writeLock = _fileLock(path)
        # Who we are in store_state.writer (see write).
        self._token = os.urandom(8).hex()
        self._seriesNames: Dict[int, Tuple[str, str]] = {}
        self._originNames: Dict[int, Tuple[str, str, str]] = {}
        self._forget()

    # -- the checkpointer's health -----------------------------------------

    @property
    def checkpointFailures(self) -> int:
        """
        How many checkpointer rounds of this store object have failed so far
        (see L{_Checkpointer}); never decreases. Readable from any thread.
        """
        with self._countLock:
            checkpointer = self._checkpointer
            return self._pastCheckpointFailures + (checkpointer.failures if checkpointer is not None else 0)

    def walBytes(self) -> int:
        """
        The size of the WAL file on disk now, in bytes (0 when there is none,
        or for C{":memory:"}). A C{stat}, cheap enough for any thread.
        """
        if self.path == ":memory:":
            return 0
        try:
            return os.stat(self.path + "-wal").st_size
        except OSError:
            return 0

    def _newCheckpointer(self) -> _Checkpointer:
        """
        The checkpointer a writing store starts at its first write (tests
        override this to inject failures).
        """
        checkpointer = _Checkpointer(self.path, self.busyTimeout, self._writeLock, lambda: self._db)
        checkpointer.walLimit = self.walLimit
        return checkpointer

    # -- connection ---------------------------------------------------------

    def open(self) -> None:
        if self._db is not None:
            return
        try:
            # check_same_thread=False: a store is used by one thread at a
            # time, but may be closed by another once that thread is gone.
            db = sqlite3.connect(
                self.path, timeout=self.busyTimeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise classify(e) from e
        try:
            if db.execute("PRAGMA page_count").fetchone()[0] == 0:
                # A new file: let the compactor give the pages of deleted
                # fresh rows back to the file system (set before any table).
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._enableWAL(db)
            db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            if self._migrate(db):
                # Schema 1's rows were converted: reclaim their space, and
                # turn on incremental vacuum (only VACUUM can, on a file
                # that has tables). Once, at the upgrade.
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                db.execute("VACUUM")
            self._applyRetention(db)
        except BaseException as e:
            db.close()
            if isinstance(e, sqlite3.Error):
                raise classify(e) from e
            raise
        self._db = db

    def _enableWAL(self, db: sqlite3.Connection) -> None:
        """
        Switch to WAL mode (a property of the file, kept once set). The
        switch fails at once, without waiting for the busy timeout, while
        another connection opens the same new file: retry until the timeout.
        """
        deadline = time.monotonic() + self.busyTimeout
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL").fetchone()
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _migrate(self, db: sqlite3.Connection) -> bool:
        """
        Apply the migrations the file lacks; returns whether schema 1 data
        was converted.
        """
        converted = False
        migrations = loadMigrations("sqlite")
        # The write lock, taken before reading the version, makes two
        # servers opening one file at once apply each migration once.
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            current = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            if current > len(migrations):
                raise StoreUnavailable(
                    f"database schema version {current} is newer than this sensornet knows "
                    f"({len(migrations)}): upgrade sensornet"
                )
            for migration in migrations[current:]:
                for statement in splitStatements(migration.sql):
                    db.execute(statement)
                if migration.version == 2:
                    converted = current >= 1
                    self._convertVersion1(db)
                db.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        return converted

    def _convertVersion1(self, db: sqlite3.Connection) -> None:
        """
        Inside migration 2's transaction: move schema 1's readings (renamed
        C{v1_readings}) into blocks, rollups and series summaries, keeping
        every reading's id, then drop the schema 1 tables.
        """
        self._forget()
        last = 0
        while True:
            rows = db.execute(
                "SELECT id, sensor, kind, value, unit, ts, seq, received_at, peer, dialect FROM v1_readings "
                "WHERE id > ? ORDER BY id LIMIT 50000",
                (last,),
            ).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            readings = [
                Reading(sensor, kind, value, unit, ts=ts, seq=seq, dialect=dialect, peer=peer, received_at=at)
                for _, sensor, kind, value, unit, ts, seq, at, peer, dialect in rows
            ]
            plan = planBatch(
                readings,
                lambda name, kind: self._seriesByKey.get((name, kind)) or self._seriesEntry(db, name, kind),
                lambda unit, peer, dialect: self._originId(db, unit, peer, dialect),
                0,
                lambda state, lo, hi: self._storedSeqs(db, state, lo, hi),
            )
            for seriesId, group in plan.groups.items():
                group.ids[:] = [rows[i][0] for i in plan.indexes[seriesId]]
            self._writeCompacted(db, plan, readings)
        db.execute("DROP TABLE v1_readings")
        db.execute("DROP TABLE v1_sensors")
        self._forget()

    def _writeCompacted(self, db: sqlite3.Connection, plan: BatchPlan, readings: Sequence[Reading]) -> None:
        """
        Store a planned batch straight as blocks and rollups (the upgrade's
        way; the hot path writes fresh rows).
        """
        merged = compact([(seriesId, encodeFresh(group)) for seriesId, group in plan.groups.items()])
        db.executemany(_INSERT_BLOCK, merged.blocks)
        db.executemany(_UPSERT_ROLLUP.format(table="rollup_1m"), merged.minutes)
        db.executemany(_UPSERT_ROLLUP.format(table="rollup_1h"), merged.hours)
        db.executemany(
            _UPDATE_SERIES,
            [(u.ts, u.unit, u.value, u.stored, u.firstSeen, u.lastSeen, u.maxSeq, u.series)
             for u in summaryRows(plan, readings)],
        )

    def _applyRetention(self, db: sqlite3.Connection) -> None:
        """
        Record in each series the index of the retention rule that applies
        to it now (the rules may have changed since it was created).
        """
        if self.retention is None:
            return
        rows = db.execute("SELECT se.id, s.name, se.kind, se.policy FROM series se JOIN sensors s ON s.id = se.sensor")
        changed = [
            (policy, seriesId)
            for seriesId, name, kind, old in rows
            for policy in (self.retention.forSeries(name, kind),)
            if policy != old
        ]
        if changed:
            with self._writeLock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany("UPDATE series SET policy = ? WHERE id = ?", changed)
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise

    def close(self) -> None:
        checkpointer = self._checkpointer
        if checkpointer is not None:
            checkpointer.stop()
            with self._countLock:
                self._pastCheckpointFailures += checkpointer.failures
                self._checkpointer = None
        db, self._db = self._db, None
        _closeQuietly(db)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreUnavailable("SQLite store is not open")
        return self._db

    def schemaVersion(self) -> int:
        try:
            return int(self._connection().execute("SELECT max(version) FROM schema_version").fetchone()[0])
        except sqlite3.Error as e:
            raise classify(e) from e

    def ping(self) -> bool:
        try:
            self.open()
            self._connection().execute("SELECT 1").fetchone()
            return True
        except Exception:
            return False

    # -- writing ------------------------------------------------------------

    def _forget(self) -> None:
        """
        Drop every write-side cache (after a rollback, or when another
        process wrote): they are reloaded from the database as needed.
        """
        self._sensorsByName: Dict[str, SensorState] = {}
        self._seriesByKey: Dict[Tuple[str, str], SeriesEntry] = {}
        self._originsByKey: Dict[Tuple[str, str, str], int] = {}
        self._originUse: Dict[int, int] = {}

    def _sensorState(self, db: sqlite3.Connection, name: str) -> SensorState:
        state = self._sensorsByName.get(name)
        if state is not None:
            return state
        row = db.execute("SELECT id FROM sensors WHERE name = ?", (name,)).fetchone()
        if row is None:
            sensorId = _inserted(db.execute(
                "INSERT INTO sensors (name, created_at) VALUES (?, ?)", (name, toMicroseconds(time.time()))
            ))
            highWater = -1
        else:
            sensorId = row[0]
            highWater = db.execute(
                "SELECT coalesce(max(max_seq), -1) FROM series WHERE sensor = ?", (sensorId,)
            ).fetchone()[0]
        state = self._sensorsByName[name] = SensorState(sensorId, highWater)
        return state

    def _seriesEntry(self, db: sqlite3.Connection, name: str, kind: str) -> SeriesEntry:
        state = self._sensorState(db, name)
        row = db.execute("SELECT id FROM series WHERE sensor = ? AND kind = ?", (state.id, kind)).fetchone()
        if row is None:
            policy = self.retention.forSeries(name, kind) if self.retention is not None else 0
            seriesId = _inserted(db.execute(
                "INSERT INTO series (sensor, kind, policy) VALUES (?, ?, ?)", (state.id, kind, policy)
            ))
        else:
            seriesId = row[0]
        entry = self._seriesByKey[(name, kind)] = SeriesEntry(seriesId, state)
        return entry

    def _originId(self, db: sqlite3.Connection, unit: str, peer: str, dialect: str) -> int:
        key = (unit, peer, dialect)
        found = self._originsByKey.get(key)
        if found is not None:
            return found
        row = db.execute(
            "SELECT id FROM origins WHERE unit = ? AND peer = ? AND dialect = ?", key
        ).fetchone()
        originId: int = row[0] if row is not None else _inserted(db.execute(
            "INSERT INTO origins (unit, peer, dialect) VALUES (?, ?, ?)", key
        ))
        self._originsByKey[key] = originId
        return originId

    def _storedSeqs(self, db: sqlite3.Connection, state: SensorState, lo: int, hi: int) -> Set[int]:
        """
        The seqs stored for a sensor between C{lo} and C{hi} (inclusive),
        fresh and compacted.
        """
        found: Set[int] = set()
        for table in ("fresh", "blocks"):
            for (data,) in db.execute(
                f"SELECT data FROM {table} WHERE series IN (SELECT id FROM series WHERE sensor = ?) "
                "AND seq0 <= ? AND seq1 >= ?",
                (state.id, hi, lo),
            ):
                found.update(s for s in decodeRow(data).seqs if lo <= s <= hi)
        return found

    def write(self, readings: Sequence[Reading]) -> WriteResult:
        if not readings:
            return WriteResult(0, 0, ())
        db = self._connection()
        if self._checkpointer is None and self.path != ":memory:":
            # Only a store that writes checkpoints in the background; the
            # read-side stores keep SQLite's defaults.
            db.execute("PRAGMA wal_autocheckpoint=0")
            # The WAL file keeps its largest size once rewound; cap what
            # stays on disk after a burst.
            db.execute("PRAGMA journal_size_limit=67108864").fetchall()
            self._checkpointer = self._newCheckpointer()
            self._checkpointer.start()
        if len(self._originsByKey) > base.ORIGIN_CACHE_LIMIT:
            self._originsByKey.clear()
        try:
            try:
                return self._writeOnce(db, readings)
            except OriginGone:
                # An origin in memory was deleted as unused meanwhile: the
                # transaction is rolled back and the caches forgotten, so
                # the batch is planned again from the database (which
                # creates the origin anew). Once: it cannot happen twice.
                return self._writeOnce(db, readings)
        except (sqlite3.Error, OverflowError, UnicodeError) as e:
            raise classify(e) from e

    def _writeOnce(self, db: sqlite3.Connection, readings: Sequence[Reading]) -> WriteResult:
        """
        One transaction of L{write}.

        @raise OriginGone: An origin the batch was planned with no longer
            exists; nothing is committed, the caches are forgotten.
        """
        seriesCache = self._seriesByKey
        # The checkpointer's short second pass and the compactor's
        # transaction take this lock too: neither runs beside a write.
        with self._writeLock:
            db.execute("BEGIN IMMEDIATE")
            try:
                writer, nextId = db.execute("SELECT writer, next_id FROM store_state").fetchone()
                if writer != self._token:
                    # Another process wrote since we last did: what we
                    # remember of high-water marks may be stale.
                    self._forget()
                    seriesCache = self._seriesByKey
                    db.execute("UPDATE store_state SET writer = ?", (self._token,))
                get = seriesCache.get

                def series(name: str, kind: str) -> SeriesEntry:
                    entry = get((name, kind))
                    return entry if entry is not None else self._seriesEntry(db, name, kind)

                # Chunks that came with their runs are planned per run;
                # anything else (and a batch of runs that is not all new
                # for sure) reading by reading.
                parts = getattr(readings, "parts", None)
                fast = (
                    planRuns(parts, len(readings), seriesCache, self._originsByKey, nextId)
                    if parts else None
                )
                if fast is not None:
                    rows, summaries, following, used = fast
                    duplicates: Sequence[int] = ()
                else:
                    plan = planBatch(
                        readings,
                        series,
                        lambda unit, peer, dialect: self._originId(db, unit, peer, dialect),
                        nextId,
                        lambda state, lo, hi: self._storedSeqs(db, state, lo, hi),
                    )
                    rows, summaries, following = freshRows(plan), summaryRows(plan, readings), plan.nextId
                    used = originsOf(plan)
                    duplicates = plan.duplicates
                now = self.clock()
                record = self._originsToRecord(used, now)
                if record:
                    at = int(now * 1_000_000)
                    if db.executemany(_ORIGIN_USED, [(at, origin) for origin in record]).rowcount != len(record):
                        raise OriginGone()
                db.executemany(_INSERT_FRESH, rows)
                db.executemany(
                    _UPDATE_SERIES,
                    [(u.ts, u.unit, u.value, u.stored, u.firstSeen, u.lastSeen, u.maxSeq, u.series)
                     for u in summaries],
                )
                db.execute("UPDATE store_state SET next_id = ?", (following,))
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                self._forget()
                raise
        self._originsRecorded(record, now)
        return WriteResult(len(readings) - len(duplicates), len(duplicates), tuple(duplicates))

    # -- reading ------------------------------------------------------------

    def sensors(self) -> List[Dict[str, Any]]:
        try:
            rows = self._connection().execute(
                "SELECT s.name, se.kind, se.unit, se.value, se.ts, se.count, se.first_seen, se.last_seen "
                "FROM series se JOIN sensors s ON s.id = se.sensor WHERE se.count > 0 ORDER BY s.name, se.kind"
            ).fetchall()
        except sqlite3.Error as e:
            raise classify(e) from e
        return [
            {
                "sensor": name, "kind": kind, "unit": unit, "value": value, "ts": fromMicroseconds(ts),
                "count": count, "first_seen": fromMicroseconds(first), "last_seen": fromMicroseconds(last),
            }
            for name, kind, unit, value, ts, count, first, last in rows
        ]

    def _names(self, db: sqlite3.Connection) -> Callable[[int], Tuple[str, str]]:
        cache = self._seriesNames

        def names(seriesId: int) -> Tuple[str, str]:
            found = cache.get(seriesId)
            if found is None:
                found = cache[seriesId] = db.execute(
                    "SELECT s.name, se.kind FROM series se JOIN sensors s ON s.id = se.sensor WHERE se.id = ?",
                    (seriesId,),
                ).fetchone()
            return found

        return names

    def _origins(self, db: sqlite3.Connection) -> Callable[[int], Tuple[str, str, str]]:
        cache = self._originNames

        def origins(originId: int) -> Tuple[str, str, str]:
            found = cache.get(originId)
            if found is None:
                found = cache[originId] = db.execute(
                    "SELECT unit, peer, dialect FROM origins WHERE id = ?", (originId,)
                ).fetchone()
            return found

        return origins

    @staticmethod
    def _seriesFilter(sensor: Optional[str], kind: Optional[str]) -> Tuple[str, List[Any]]:
        """
        A condition on C{series} (a column holding series ids) for the
        filters, or C{""} for all series.
        """
        where = []
        params: List[Any] = []
        if sensor is not None:
            where.append("sensor = (SELECT id FROM sensors WHERE name = ?)")
            params.append(sensor)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if not where:
            return "", []
        return f"series IN (SELECT id FROM series WHERE {' AND '.join(where)})", params

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
            # Cursors hold integer microseconds; older ones float seconds.
            afterTs = after[0] if isinstance(after[0], int) else toMicroseconds(float(after[0]))
            afterPos = (afterTs, int(after[1]))
        lower = max(x for x in (sinceUs, afterPos[0] if afterPos else None, -(2**63)) if x is not None)
        condition, params = self._seriesFilter(sensor, kind)
        where = [c for c in (condition, "t1 >= ?") if c]
        params = params + [lower]
        if untilUs is not None:
            where.append("t0 < ?")
            params.append(untilUs)
        clause = " AND ".join(where)
        db = self._connection()
        try:
            # A snapshot: fresh rows and blocks as of one moment, so a row
            # the compactor moves meanwhile is seen once.
            db.execute("BEGIN")
            try:
                fresh = db.execute(f"SELECT series, data FROM fresh WHERE {clause}", params).fetchall()
                blocks = db.execute(f"SELECT series, t1, data FROM blocks WHERE {clause} ORDER BY t1", params)
                return assembleReadings(
                    fresh, blocks, self._names(db), self._origins(db), sinceUs, untilUs, afterPos, int(limit)
                )
            finally:
                _rollback(db)
        except sqlite3.Error as e:
            raise classify(e) from e

    def rollups(self, sensor: str, kind: Optional[str], since: float, until: float, step: str) -> List[Dict[str, Any]]:
        width, table = rollupTable(step)
        sinceUs, untilUs = toMicroseconds(since), toMicroseconds(until)
        condition, params = self._seriesFilter(sensor, kind)
        db = self._connection()
        try:
            db.execute("BEGIN")
            try:
                stored = db.execute(
                    f"SELECT series, bucket, count, lo, hi, total, last_ts, last FROM {table} "
                    f"WHERE {condition} AND bucket >= ? AND bucket < ?",
                    params + [sinceUs - sinceUs % width, untilUs],
                ).fetchall()
                fresh = db.execute(
                    f"SELECT series, data FROM fresh WHERE {condition} AND t1 >= ? AND t0 < ?",
                    params + [sinceUs - sinceUs % width, untilUs + (-untilUs) % width],
                ).fetchall()
                return foldRollups(stored, fresh, width, sinceUs, untilUs, self._names(db))
            finally:
                _rollback(db)
        except sqlite3.Error as e:
            raise classify(e) from e

    # -- maintenance --------------------------------------------------------

    def freshWatermark(self) -> int:
        try:
            return int(self._connection().execute("SELECT coalesce(max(id), 0) FROM fresh").fetchone()[0])
        except sqlite3.Error as e:
            raise classify(e) from e

    def lastSeriesId(self) -> int:
        try:
            return int(self._connection().execute("SELECT coalesce(max(id), 0) FROM series").fetchone()[0])
        except sqlite3.Error as e:
            raise classify(e) from e

    def compactSeries(self, upTo: int, limit: int, after: int, through: int) -> Tuple[int, int]:
        db = self._connection()
        try:
            # Read and merge outside the write lock: writers go on meanwhile
            # (they never change a fresh row once written).
            rows, following = wholeSeries(db.execute(
                "SELECT id, series, data FROM fresh WHERE series > ? AND series <= ? AND id <= ? "
                "ORDER BY series, t1 LIMIT ?",
                (after, through, upTo, limit),
            ).fetchall(), limit)
            following = through if following is None else following
            if not rows:
                return 0, following
            plan = compact([(series, data) for _, series, data in rows])
            ids = [(rowId,) for rowId, _, _ in rows]
            with self._writeLock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    deleted = db.executemany("DELETE FROM fresh WHERE id = ?", ids).rowcount
                    if deleted != len(ids):
                        # Another compactor took some of them first.
                        _rollback(db)
                        return 0, following
                    db.executemany(_INSERT_BLOCK, plan.blocks)
                    db.executemany(_UPSERT_ROLLUP.format(table="rollup_1m"), plan.minutes)
                    db.executemany(_UPSERT_ROLLUP.format(table="rollup_1h"), plan.hours)
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise
                self._shrink(db)
        except (sqlite3.Error, OverflowError) as e:
            raise classify(e) from e
        return plan.readings, following

    #: Free pages (of deleted fresh rows) kept for reuse, as a share of the
    #: file, before the compactor gives the rest back to the file system.
    freeShare = 0.25

    def _shrink(self, db: sqlite3.Connection) -> None:
        """
        With the write lock held: when more than L{freeShare} of the file is
        free pages (a burst of fresh rows, now compacted), give back at most
        4096 pages (16 MiB) of them, so the file follows the data down.
        """
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        excess = free - int(pages * self.freeShare)
        if excess > 256:
            # executescript steps the pragma to its end; execute() would
            # free a single page (it stops at the first step).
            db.executescript(f"PRAGMA incremental_vacuum({min(excess, 4096)});")

    def expireOnce(self, now: float, after: int, limit: int, rows: Optional[int] = None) -> Tuple[int, int]:
        rules = retentionRules(self.retention)
        db = self._connection()
        deleted = 0
        resume: Optional[int] = None
        try:
            series = db.execute(
                "SELECT id, policy FROM series WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
            if not series:
                return 0, 0
            with self._writeLock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    previous = after
                    for seriesId, policy in series:
                        for table, column, cutoff in expiryCutoffs(rules, policy, now):
                            if rows is None:
                                deleted += db.execute(
                                    f"DELETE FROM {table} WHERE series = ? AND {column} < ?", (seriesId, cutoff)
                                ).rowcount
                                continue
                            left = rows - deleted
                            deleted += db.execute(_boundedDelete(table), (seriesId, cutoff, left)).rowcount
                            if deleted >= rows:
                                break
                        if rows is not None and deleted >= rows:
                            # This series may have more: the next call starts with it.
                            resume = previous
                            break
                        previous = seriesId
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise
        except sqlite3.Error as e:
            raise classify(e) from e
        if resume is not None:
            return resume, deleted
        return (series[-1][0] if len(series) == limit else 0), deleted

    def expireOrigins(self, before: float, limit: int) -> int:
        db = self._connection()
        try:
            with self._writeLock:
                # One statement: a transaction of its own, under the lock
                # the writer and the compactor take.
                deleted = db.execute(_EXPIRE_ORIGINS, (int(before * 1_000_000), limit)).rowcount
        except sqlite3.Error as e:
            raise classify(e) from e
        return int(deleted)

    def fleetStats(self) -> Dict[str, int]:
        try:
            db = self._connection()
            seriesCount = db.execute("SELECT count(*) FROM series").fetchone()[0]
            fresh = db.execute("SELECT coalesce(sum(n), 0) FROM fresh").fetchone()[0]
        except sqlite3.Error as e:
            raise classify(e) from e
        return {"series": int(seriesCount), "fresh_readings": int(fresh)}

    def medianInterval(self) -> Optional[float]:
        try:
            row = self._connection().execute(
                "SELECT iv FROM (SELECT (last_seen - first_seen) / (count - 1.0) AS iv FROM series "
                "WHERE count > 1) ORDER BY iv LIMIT 1 OFFSET ((SELECT count(*) FROM series WHERE count > 1) - 1) / 2"
            ).fetchone()
        except sqlite3.Error as e:
            raise classify(e) from e
        return None if row is None else row[0] / 1_000_000


def _boundedDelete(table: str) -> str:
    """
    A statement deleting at most C{?3} rows of C{table} for series C{?1}
    older than C{?2}, oldest first, through the C{(series, time)} index.
    Rollup tables have no rowid: their bucket is unique per series, so
    "before the bucket at offset N" is exactly N rows.
    """
    if table == "blocks":
        return ("DELETE FROM blocks WHERE id IN "
                "(SELECT id FROM blocks WHERE series = ?1 AND t1 < ?2 ORDER BY t1 LIMIT ?3)")
    return (f"DELETE FROM {table} WHERE series = ?1 AND bucket < coalesce("
            f"(SELECT bucket FROM {table} WHERE series = ?1 AND bucket < ?2 ORDER BY bucket LIMIT 1 OFFSET ?3), ?2)")


#: One lock per database file in this process, shared by every store object
#: on that file (the writer's, the compactor's): SQLite's own lock makes a
#: second writer poll with sleeps, which would stall the writer for
#: milliseconds; a thread lock hands over at once. A process-wide table is
#: right here because the file is a process-wide resource.
_FILE_LOCKS: Dict[str, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _fileLock(path: str) -> threading.Lock:
    if path == ":memory:":
        return threading.Lock()
    key = os.path.realpath(path)
    with _FILE_LOCKS_GUARD:
        lock = _FILE_LOCKS.get(key)
        if lock is None:
            lock = _FILE_LOCKS[key] = threading.Lock()
        return lock


def _inserted(cursor: sqlite3.Cursor) -> int:
    """
    The id of the row an INSERT just made.
    """
    rowId = cursor.lastrowid
    assert rowId is not None
    return rowId


def _closeQuietly(db: Optional[sqlite3.Connection]) -> None:
    """
    Close C{db} if there is one; closing never raises (a broken connection
    has nothing left to lose).
    """
    if db is not None:
        try:
            db.close()
        except Exception:
            pass


def _rollback(db: sqlite3.Connection) -> None:
    """
    Roll back if a transaction is open; a failed rollback (the connection
    is already broken) is left for the caller's original error to report.
    """
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error:
        pass
