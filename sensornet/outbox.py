"""
A sensor's outbox: the readings it produced that the server has not yet
acknowledged, oldest first, bounded.

A reading enters when it is produced and leaves when its C{ack} arrives (or
when the server rejects it for good). When the outbox is full the oldest
reading is dropped to make room, and counted: a sensor keeps its newest
data rather than stopping.

L{Outbox} lives in memory; L{SpoolOutbox} also keeps every entry in a small
SQLite file, so the readings survive a restart of the client itself. Spool
writes are synchronous (one small transaction per reading or ack, WAL mode):
fine at sensor cadences (a few per second per process), not for a firehose.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from typing import List, Optional, Tuple

__all__ = ["Outbox", "SpoolOutbox", "DEFAULT_OUTBOX_SIZE"]

#: Default bound: at the seed's cadence (one reading every 2 s) this holds
#: about 5.5 hours of readings from a sensor cut off from its server.
DEFAULT_OUTBOX_SIZE = 10_000


class _Entry:
    __slots__ = ("line", "sentAt")

    def __init__(self, line: bytes, sentAt: Optional[float] = None) -> None:
        self.line = line
        self.sentAt = sentAt


class Outbox:
    """
    Unacknowledged readings of one sensor, keyed by C{seq}, oldest first.

    @ivar maxSize: The most readings kept; adding to a full outbox drops the
        oldest.
    @ivar dropped: How many readings were dropped because the outbox was full.
    """

    def __init__(self, maxSize: int = DEFAULT_OUTBOX_SIZE) -> None:
        if maxSize < 1:
            raise ValueError("an outbox holds at least one reading")
        self.maxSize = maxSize
        self.dropped = 0
        self._entries: "OrderedDict[int, _Entry]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, seq: object) -> bool:
        return seq in self._entries

    def add(self, seq: int, line: bytes) -> List[int]:
        """
        Keep the reading C{seq} (its wire line C{line}, without newline) until
        it is acknowledged.

        @return: The seqs dropped to make room (oldest first), usually none.
        """
        dropped = []
        while len(self._entries) >= self.maxSize:
            oldSeq, _ = self._entries.popitem(last=False)
            dropped.append(oldSeq)
        self._entries[seq] = _Entry(line)
        self.dropped += len(dropped)
        return dropped

    def acknowledge(self, seq: int) -> bool:
        """
        The server stored C{seq}: forget it.

        @return: Whether it was here (a late duplicate ack returns False).
        """
        return self._entries.pop(seq, None) is not None

    def takeDue(self, now: float, ackTimeout: float) -> Tuple[List[bytes], int]:
        """
        The lines to send now, oldest first, marked as sent at C{now}: those
        never sent on the current connection, and those sent more than
        C{ackTimeout} seconds ago and still unacknowledged.

        @return: The lines, and how many of them are resends.
        """
        limit = now - ackTimeout
        lines = []
        resent = 0
        for entry in self._entries.values():
            sentAt = entry.sentAt
            if sentAt is None or sentAt <= limit:
                if sentAt is not None:
                    resent += 1
                lines.append(entry.line)
                entry.sentAt = now
        return lines, resent

    def retry(self, seq: int) -> None:
        """
        The server could not store C{seq} this time: send it again with the
        next batch of due lines.
        """
        entry = self._entries.get(seq)
        if entry is not None:
            entry.sentAt = None

    def markUnsent(self) -> None:
        """
        The connection is gone: everything unacknowledged goes out again on
        the next one.
        """
        for entry in self._entries.values():
            entry.sentAt = None

    def oldestSentAt(self) -> Optional[float]:
        """
        When the oldest reading still waiting for its ack was sent, or None.
        """
        for entry in self._entries.values():
            if entry.sentAt is not None:
                return entry.sentAt
        return None

    def lastSeq(self) -> Optional[int]:
        """
        The highest seq ever kept here, for resuming numbering (None if
        unknown).
        """
        if not self._entries:
            return None
        return next(reversed(self._entries))

    def close(self) -> None:
        """
        Release what the outbox holds outside memory (nothing, here); its
        sensor calls this once it has stopped.
        """


class SpoolOutbox(Outbox):
    """
    An L{Outbox} whose entries are also kept in a SQLite file, one table per
    file shared by every sensor of a process, so they survive a restart.

    @ivar sensor: Whose entries this outbox holds in the file.
    """

    def __init__(self, path: str, sensor: str, maxSize: int = DEFAULT_OUTBOX_SIZE) -> None:
        super().__init__(maxSize)
        self.sensor = sensor
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (sensor TEXT NOT NULL, seq INTEGER NOT NULL, "
            "line BLOB NOT NULL, PRIMARY KEY (sensor, seq))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS last_seq (sensor TEXT PRIMARY KEY, seq INTEGER NOT NULL)"
        )
        rows = self._db.execute(
            "SELECT seq, line FROM outbox WHERE sensor = ? ORDER BY seq", (sensor,)
        ).fetchall()
        for seq, line in rows[-maxSize:]:
            self._entries[seq] = _Entry(bytes(line))
        row = self._db.execute("SELECT seq FROM last_seq WHERE sensor = ?", (sensor,)).fetchone()
        self._lastSeq: Optional[int] = row[0] if row else None

    def add(self, seq: int, line: bytes) -> List[int]:
        dropped = super().add(seq, line)
        with self._db:
            self._db.execute("BEGIN")
            if dropped:
                self._db.executemany(
                    "DELETE FROM outbox WHERE sensor = ? AND seq = ?", [(self.sensor, s) for s in dropped]
                )
            self._db.execute("INSERT OR REPLACE INTO outbox VALUES (?, ?, ?)", (self.sensor, seq, line))
            self._db.execute("INSERT OR REPLACE INTO last_seq VALUES (?, ?)", (self.sensor, seq))
        self._lastSeq = seq
        return dropped

    def acknowledge(self, seq: int) -> bool:
        if not super().acknowledge(seq):
            return False
        self._db.execute("DELETE FROM outbox WHERE sensor = ? AND seq = ?", (self.sensor, seq))
        return True

    def lastSeq(self) -> Optional[int]:
        return self._lastSeq

    def close(self) -> None:
        """
        Close the spool file; the outbox must not be used afterwards.
        """
        self._db.close()
