"""
The floor of a storing server in pure Python, for bench/run.py's W1: the
least any server on this stack must do to acknowledge a reading only once
it is durably stored, and nothing more.

    python floor_server.py PORT DATABASE

What it does, per chunk of lines on the reactor thread: split, one regular
expression over the chunk (sensornet's canonical native line), the numbers
converted with C-level maps, lines grouped per head; on a writer thread,
per batch of whatever chunks wait: one SQLite transaction (WAL,
C{synchronous=FULL}, as sensornet's default store) with one fresh row per
head and chunk (its columns packed in one C{struct} call), one summary
C{UPDATE} per head, C{COMMIT}; then, back on the reactor, one C{ack SEQ}
line per reading, in one write per chunk.

What it leaves out, and sensornet does: logging, metrics, authentication,
clock and size limits, backpressure, resends and duplicates (a seq at or
below a head's last one gets C{error}), lines that are not canonical or
lack a seq or a time (C{error}), compaction, retention, rollups, queries. So its rate is an upper
bound for sensornet's C{sqlite} row, not something to match: what is left
between the two is the price of those features, and what is left between it
and the bare acker is the price of parsing and storing in Python at all.
"""

import re
import sqlite3
import struct
import sys
import threading
import time
from collections import deque
from functools import lru_cache
from itertools import islice
from operator import itemgetter, lt

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol

# sensornet.dialects.native's canonical line, the same expression.
_NAME = rb'[^\x00-\x20,=\\"\x7f-\xff]+'
_CHUNK = re.compile(
    rb"^(" + _NAME + rb",sensor=" + _NAME + rb"(?:,unit=" + _NAME + rb")?) "
    rb"value=([0-9.eE+-]+),seq=([0-9]{1,19})[iu] (-?[0-9]{1,19})$",
    re.MULTILINE,
).findall


@lru_cache(maxsize=256)
def _rowStruct(n: int) -> struct.Struct:
    # First id, received, then positions, times, seqs, values.
    return struct.Struct(f"<qq{n}I{n}q{n}q{n}d")


class Writer(threading.Thread):
    """
    The one writer: takes every chunk waiting, stores them in one
    transaction, hands them back to the reactor to be acknowledged.
    """

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self._waiting: deque = deque()
        self._ready = threading.Condition()
        db = self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE series (id INTEGER PRIMARY KEY, head BLOB UNIQUE NOT NULL, value REAL, ts INTEGER, "
            "count INTEGER NOT NULL DEFAULT 0, max_seq INTEGER NOT NULL DEFAULT -1)"
        )
        db.execute(
            "CREATE TABLE fresh (id INTEGER PRIMARY KEY, series INTEGER NOT NULL, t0 INTEGER, t1 INTEGER, "
            "seq0 INTEGER, seq1 INTEGER, n INTEGER NOT NULL, data BLOB NOT NULL)"
        )
        db.execute("CREATE INDEX fresh_series ON fresh (series, t1)")
        self._series: dict = {}
        self._marks: dict = {}
        self._nextId = 1

    def submit(self, chunk: tuple) -> None:
        with self._ready:
            self._waiting.append(chunk)
            self._ready.notify()

    def run(self) -> None:
        db = self._db
        series, marks = self._series, self._marks
        while True:
            with self._ready:
                while not self._waiting:
                    self._ready.wait()
                chunks = list(self._waiting)
                self._waiting.clear()
            rows = []
            summaries = []
            stored = []
            refused = []
            nextId = self._nextId
            db.execute("BEGIN IMMEDIATE")
            for chunk in chunks:
                _, runs, received, seqs = chunk
                planned = []
                for head, (positions, values, runSeqs, times) in runs.items():
                    sid = series.get(head)
                    if sid is None:
                        sid = series[head] = db.execute("INSERT INTO series (head) VALUES (?)", (head,)).lastrowid
                    if runSeqs[0] <= marks.get(sid, -1) or not all(map(lt, runSeqs, islice(runSeqs, 1, None))):
                        break
                    planned.append((sid, positions, values, runSeqs, times))
                else:
                    for sid, positions, values, runSeqs, times in planned:
                        marks[sid] = runSeqs[-1]
                        n = len(positions)
                        rows.append((
                            sid, min(times) // 1000, max(times) // 1000, runSeqs[0], runSeqs[-1], n,
                            _rowStruct(n).pack(nextId, received, *positions, *times, *runSeqs, *values),
                        ))
                        summaries.append((times[-1] // 1000, values[-1], n, runSeqs[-1], sid))
                    nextId += len(seqs)
                    stored.append(chunk)
                    continue
                refused.append(chunk)
            db.executemany("INSERT INTO fresh (series, t0, t1, seq0, seq1, n, data) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.executemany("UPDATE series SET ts = ?, value = ?, count = count + ?, max_seq = ? WHERE id = ?", summaries)
            db.execute("COMMIT")
            self._nextId = nextId
            reactor.callFromThread(_answer, stored, refused)


def _answer(stored: list, refused: list) -> None:
    for protocol, _, _, seqs in stored:
        protocol.transport.write((b"ack %d\n" * len(seqs)) % tuple(seqs))
    for protocol, _, _, seqs in refused:
        protocol.transport.write(b"error\n" * len(seqs))


class FloorProtocol(Protocol):
    _partial = b""

    def dataReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if not lines:
            return
        matches = _CHUNK(b"\n".join(lines))
        if len(matches) != len(lines):
            self.transport.write(b"error\n" * len(lines))
            return
        heads, rawValues, rawSeqs, rawTimes = zip(*matches)
        values = list(map(float, rawValues))
        seqs = list(map(int, rawSeqs))
        times = list(map(int, rawTimes))
        total = sum(values)
        if total - total != 0.0 or max(seqs) >= 2**63:
            self.transport.write(b"error\n" * len(lines))
            return
        groups: dict = {}
        for index, head in enumerate(heads):
            group = groups.get(head)
            if group is None:
                groups[head] = [index]
            else:
                group.append(index)
        runs = {}
        for head, positions in groups.items():
            if len(positions) == 1:
                (i,) = positions
                runs[head] = (positions, [values[i]], [seqs[i]], [times[i]])
            else:
                pick = itemgetter(*positions)
                runs[head] = (positions, pick(values), pick(seqs), pick(times))
        self.factory.writer.submit((self, runs, int(time.time() * 1_000_000), seqs))


def main() -> None:
    factory = Factory.forProtocol(FloorProtocol)
    factory.writer = Writer(sys.argv[2])
    factory.writer.start()
    serverFromString(reactor, f"tcp:{sys.argv[1]}:interface=127.0.0.1").listen(factory)
    reactor.run()


if __name__ == "__main__":
    main()
