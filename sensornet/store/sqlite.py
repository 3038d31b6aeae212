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

__all__ = ["SQLiteStore"]

#: Used from the checkpointer's thread: a Twisted logger only formats and
#: hands the event to the global publisher, which twistd's file observer
#: writes under a lock.
_log = Logger()

_INSERT = (
    "INSERT INTO readings (sensor, kind, value, unit, ts, seq, received_at, peer, dialect) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sensor, seq) DO NOTHING"
)

# Column references in DO UPDATE see the row as it was before the update,
# so every SET below reads the old values.
_UPSERT_SENSOR = (
    "INSERT INTO sensors (sensor, kind, unit, value, ts, count, first_seen, last_seen) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (sensor, kind) DO UPDATE SET "
    "unit = CASE WHEN excluded.ts >= sensors.ts THEN excluded.unit ELSE sensors.unit END, "
    "value = CASE WHEN excluded.ts >= sensors.ts THEN excluded.value ELSE sensors.value END, "
    "ts = max(sensors.ts, excluded.ts), "
    "count = sensors.count + excluded.count, "
    "first_seen = min(sensors.first_seen, excluded.first_seen), "
    "last_seen = max(sensors.last_seen, excluded.last_seen)"
)

_READING_COLUMNS = ("id", "sensor", "kind", "value", "unit", "ts", "seq", "received_at", "peer", "dialect")
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
        self._writeLock = threading.Lock()

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
            self._enableWAL(db)
            db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            self._migrate(db)
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

    def _migrate(self, db: sqlite3.Connection) -> None:
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
                db.execute(
                    "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
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
        try:
            rows = [
                (
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
                for r in readings
            ]
            # The checkpointer's short second pass takes this lock too: a
            # transaction never runs beside it.
            with self._writeLock:
                db.execute("BEGIN IMMEDIATE")
                try:
                    # With the write lock held, rows this transaction inserts
                    # get ids above the current maximum.
                    before = db.execute("SELECT max(id) FROM readings").fetchone()[0] or 0
                    stored = db.executemany(_INSERT, rows).rowcount
                    duplicateIndexes: Tuple[int, ...] = ()
                    new: Sequence[Reading] = readings
                    if stored != len(readings):
                        duplicateIndexes = self._duplicates(db, readings, before)
                        skip = set(duplicateIndexes)
                        new = [r for i, r in enumerate(readings) if i not in skip]
                    db.executemany(_UPSERT_SENSOR, summarize(new))
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise
        except (sqlite3.Error, OverflowError, UnicodeError) as e:
            raise classify(e) from e
        return WriteResult(stored, len(duplicateIndexes), duplicateIndexes)

    @staticmethod
    def _duplicates(db: sqlite3.Connection, readings: Sequence[Reading], before: int) -> Tuple[int, ...]:
        """
        Which of C{readings}, just inserted, were dropped as duplicates: the
        keyed ones whose (sensor, seq) is not among the rows with an id
        above C{before}, plus repeats within C{readings}.
        """
        inserted: Set[Tuple[str, int]] = set(
            db.execute("SELECT sensor, seq FROM readings WHERE id > ? AND seq IS NOT NULL", (before,))
        )
        duplicates = []
        for index, r in enumerate(readings):
            if r.seq is None:
                continue
            key = (r.sensor, r.seq)
            if key in inserted:
                inserted.discard(key)
            else:
                duplicates.append(index)
        return tuple(duplicates)

    # -- reading ------------------------------------------------------------

    def sensors(self) -> List[Dict[str, Any]]:
        try:
            rows = self._connection().execute(
                f"SELECT {', '.join(_SENSOR_COLUMNS)} FROM sensors ORDER BY sensor, kind"
            ).fetchall()
        except sqlite3.Error as e:
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
        where, params = readingFilters(sensor, kind, since, until, "?", "?")
        if after is not None:
            where.append("(ts, id) > (?, ?)")
            params.extend((float(after[0]), int(after[1])))
        sql = f"SELECT {', '.join(_READING_COLUMNS)} FROM readings"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts, id LIMIT ?"
        params.append(int(limit))
        try:
            rows = self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise classify(e) from e
        result = []
        for row in rows:
            reading = dict(zip(_READING_COLUMNS, row))
            reading["_position"] = (row[5], row[0])
            result.append(reading)
        return result


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
