"""
How a series' readings are laid out in the database: columns of numbers,
encoded as bytes once per group of readings instead of one row per reading.

Both backends keep raw readings as rows of L{Columns}, one row per series
per group:

  - a I{fresh} row (L{encodeFresh}) holds one write batch's readings of one
    series, as plain little-endian arrays: cheap to write on the hot path,
    about 44 bytes per reading;
  - a I{runs} row (L{encodeRun}, L{runsRow}) is a fresh row too, written
    from the runs of parsed chunks (L{sensornet.runs}): each run packed as
    the parser left it, in one C{struct} call (its first id, receive time
    and origin once, then positions, nanosecond times, seqs and values), so
    that the writer thread converts nothing per reading; the conversions
    happen when it is read (by the compactor, off the hot path). About 28
    bytes per reading plus 24 per run;
  - a I{block} (L{encodeBlock}) holds what the compactor merged from many
    fresh rows: each column delta- or XOR-coded, its bytes shuffled (all
    first bytes, then all second bytes, ...) and compressed with zlib, the
    filter that makes Blosc and Gorilla small: a few bytes per reading.

Everything here is a pure function of its arguments, and every loop over
readings runs in C (C{array}, slicing, C{zlib}) except the delta and XOR
passes, which are list comprehensions: the compactor runs beside the
reactor and competes with it for the GIL.

Units: times are integer microseconds since the epoch (UTC); a missing seq
is C{-1}; an origin is an index into the store's C{origins} dictionary
(unit, peer, dialect).
"""

from __future__ import annotations

import struct
import sys
import zlib
from itertools import accumulate, groupby, repeat
from operator import add, mod, mul, sub, truediv, xor
from array import array
from functools import lru_cache
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from ..reading import NS_PER_SECOND

__all__ = [
    "Columns",
    "Rollup",
    "NO_SEQ",
    "encodeFresh",
    "decodeFresh",
    "decodeFreshMany",
    "NO_TIME",
    "encodeRun",
    "runsRow",
    "decodeRuns",
    "nanosecondsToMicroseconds",
    "encodeBlock",
    "decodeBlock",
    "rollups",
    "mergeRollup",
    "CodecError",
]

#: The seq column's value for a reading sent without one.
NO_SEQ = -1

_FRESH = 1
_BLOCK = 2
_RUNS = 3
_HEADER = struct.Struct("<BI")
_LITTLE = sys.byteorder == "little"


class CodecError(ValueError):
    """
    Bytes that are not an encoding this module wrote.
    """


class Columns(NamedTuple):
    """
    One series' readings as parallel lists, in the order they were stored.

    @ivar ids: Each reading's store-wide id (unique, assigned at write).
    @ivar ts: The reading's own time, integer microseconds.
    @ivar seqs: The sender's seq, or L{NO_SEQ}.
    @ivar values: The measured value (finite floats).
    @ivar received: When the server received it, integer microseconds.
    @ivar origins: Index of the reading's (unit, peer, dialect).
    """

    ids: List[int]
    ts: List[int]
    seqs: List[int]
    values: List[float]
    received: List[int]
    origins: List[int]

    @classmethod
    def empty(cls) -> "Columns":
        return cls([], [], [], [], [], [])

    def select(self, indexes: Iterable[int]) -> "Columns":
        """
        The readings at C{indexes}, in that order.
        """
        order = list(indexes)
        return Columns(
            [self.ids[k] for k in order], [self.ts[k] for k in order], [self.seqs[k] for k in order],
            [self.values[k] for k in order], [self.received[k] for k in order], [self.origins[k] for k in order],
        )

    def slice(self, start: int, end: int) -> "Columns":
        """
        The readings from C{start} up to C{end}.
        """
        return Columns(
            self.ids[start:end], self.ts[start:end], self.seqs[start:end], self.values[start:end],
            self.received[start:end], self.origins[start:end],
        )

    def extend(self, other: "Columns") -> None:
        """
        Append C{other}'s readings.
        """
        self.ids.extend(other.ids)
        self.ts.extend(other.ts)
        self.seqs.extend(other.seqs)
        self.values.extend(other.values)
        self.received.extend(other.received)
        self.origins.extend(other.origins)


def _pack(code: str, values: Sequence) -> bytes:
    a = array(code, values)
    if not _LITTLE:
        a.byteswap()
    return a.tobytes()


def _unpack(code: str, data: bytes) -> List:
    a = array(code)
    a.frombytes(data)
    if not _LITTLE:
        a.byteswap()
    return a.tolist()


_LAYOUT = (("q", 8), ("q", 8), ("q", 8), ("d", 8), ("q", 8), ("i", 4))


@lru_cache(maxsize=256)
def _freshStruct(n: int) -> struct.Struct:
    """
    The little-endian layout of C{n} readings' columns, as L{_LAYOUT} gives
    it (the same bytes as C{array} writes, in one call).
    """
    return struct.Struct("<" + "".join(f"{n}{code}" for code, _ in _LAYOUT))


def encodeFresh(columns: Columns) -> bytes:
    """
    The columns as plain arrays (44 bytes a reading plus a 5-byte header).

    @raise OverflowError: A number does not fit its column.
    """
    n = len(columns.ids)
    try:
        # One struct call instead of six arrays: this runs once per series
        # in every write batch, on the writer thread.
        body = _freshStruct(n).pack(
            *columns.ids, *columns.ts, *columns.seqs, *columns.values, *columns.received, *columns.origins
        )
    except struct.error as e:
        raise OverflowError(str(e)) from None
    return _HEADER.pack(_FRESH, n) + body


def decodeFresh(data: bytes) -> Columns:
    """
    The inverse of L{encodeFresh}.

    @raise CodecError: C{data} is not a fresh row.
    """
    kind, n = _header(data, _FRESH)
    if len(data) != _HEADER.size + n * 44:
        raise CodecError(f"a fresh row of {n} readings cannot be {len(data)} bytes")
    offset = _HEADER.size
    out = []
    for code, width in _LAYOUT:
        out.append(_unpack(code, data[offset:offset + n * width]))
        offset += n * width
    return Columns(*out)


def decodeFreshMany(rows: Sequence[bytes]) -> Columns:
    """
    The readings of several fresh rows (plain or runs rows, in any mix),
    one after the other: the same as the columns of each row decoded alone,
    one row after the other, with one array conversion per column for each
    stretch of rows of one kind instead of one per row and column (the
    compactor's rows hold a handful of readings each).

    @raise CodecError: One of C{rows} is not a fresh row.
    """
    out: Optional[Columns] = None
    for kind, stretch in groupby(rows, key=lambda data: data[:1]):
        part = decodeRuns(list(stretch)) if kind == b"\x03" else _decodePlainMany(list(stretch))
        if out is None:
            out = part
        else:
            out.extend(part)
    return Columns.empty() if out is None else out


def _decodePlainMany(rows: Sequence[bytes]) -> Columns:
    parts: List[List[bytes]] = [[] for _ in _LAYOUT]
    for data in rows:
        _, n = _header(data, _FRESH)
        if len(data) != _HEADER.size + n * 44:
            raise CodecError(f"a fresh row of {n} readings cannot be {len(data)} bytes")
        offset = _HEADER.size
        for index, (_, width) in enumerate(_LAYOUT):
            parts[index].append(data[offset:offset + n * width])
            offset += n * width
    ids, ts, seqs, values, received, origins = (
        _unpack(code, b"".join(chunks)) for (code, _), chunks in zip(_LAYOUT, parts)
    )
    return Columns(ids, ts, seqs, values, received, origins)


#: A runs row's time for a reading sent without one (outside the parser's
#: range of nanoseconds): its time is its receive time.
NO_TIME = -(2**63)

#: A run's own header in a runs row: its first reading's id (the others
#: are that plus their positions), receive time in microseconds, origin,
#: number of readings.
_RUN_HEAD = struct.Struct("<qqiI")

# The parser's conversions are kept exactly: a reading's time in seconds is
# C{ns / NS_PER_SECOND} (int by int), and a store's microseconds are that
# times a million, rounded (layout.toMicroseconds).


@lru_cache(maxsize=512)
def _runStruct(n: int) -> struct.Struct:
    return struct.Struct(f"<qqiI{n}I{n}q{n}q{n}d")


def encodeRun(
    firstId: int, received: int, origin: int, positions: Sequence[int], times: Sequence[int],
    seqs: Sequence[int], values: Sequence[float],
) -> bytes:
    """
    One run of a runs row: C{n} readings whose ids are C{firstId} plus each
    of C{positions} (ascending, below 2**32), all received at C{received}
    (microseconds) from C{origin}; C{times} in nanoseconds as the parser
    read them (L{NO_TIME} for none), C{seqs} (L{NO_SEQ} for none), C{values}.
    Join runs with L{runsRow}.

    @raise OverflowError: A number does not fit its column.
    """
    n = len(positions)
    try:
        return _runStruct(n).pack(firstId, received, origin, n, *positions, *times, *seqs, *values)
    except struct.error as e:
        raise OverflowError(str(e)) from None


def runsRow(runs: Sequence[bytes], n: int) -> bytes:
    """
    A fresh row of C{runs} (from L{encodeRun}) holding C{n} readings in all,
    in the order given: what L{decodeRuns} reads back as one L{Columns}.
    """
    return _HEADER.pack(_RUNS, n) + b"".join(runs)


def nanosecondsToMicroseconds(times: List[int], received: List[int]) -> List[int]:
    """
    Times in nanoseconds as a runs row keeps them, as the store's
    microseconds: exactly what C{round(ns / 1_000_000_000 * 1_000_000)}
    gives for each, and C{received}'s for L{NO_TIME}.
    """
    if NO_TIME in times:
        return [
            r if t == NO_TIME else round(t / NS_PER_SECOND * 1_000_000) for t, r in zip(times, received)
        ]
    # The same arithmetic in C: each time divided (int by int, correctly
    # rounded), multiplied, rounded to an int.
    return list(map(round, map(mul, map(truediv, times, repeat(NS_PER_SECOND)), repeat(1_000_000))))


def decodeRuns(rows: Sequence[bytes]) -> Columns:
    """
    The readings of runs rows (L{runsRow}), one row after the other, with one
    array conversion per column for all of them.

    @raise CodecError: One of C{rows} is not a runs row, or is damaged.
    """
    heads: List[Tuple[int, int, int, int]] = []
    parts: List[List[bytes]] = [[], [], [], []]
    for data in rows:
        _, n = _header(data, _RUNS)
        offset = _HEADER.size
        end = len(data)
        total = 0
        while offset < end:
            if end - offset < _RUN_HEAD.size:
                raise CodecError("a runs row ends inside a run's header")
            head = _RUN_HEAD.unpack_from(data, offset)
            m = head[3]
            offset += _RUN_HEAD.size
            if end - offset < m * 28:
                raise CodecError(f"a run of {m} readings does not fit in its row")
            for index, width in enumerate((4, 8, 8, 8)):
                parts[index].append(data[offset:offset + m * width])
                offset += m * width
            heads.append(head)
            total += m
        if total != n:
            raise CodecError(f"a runs row of {n} readings holds {total}")
    positions, times, seqs = (_unpack(code, b"".join(chunks)) for code, chunks in zip("Iqq", parts))
    values = _unpack("d", b"".join(parts[3]))
    firsts: List[int] = []
    received: List[int] = []
    origins: List[int] = []
    for first, at, origin, m in heads:
        firsts.extend(repeat(first, m))
        received.extend(repeat(at, m))
        origins.extend(repeat(origin, m))
    ids = list(map(add, firsts, positions))
    return Columns(ids, nanosecondsToMicroseconds(times, received), seqs, values, received, origins)


def _header(data: bytes, expected: int) -> Tuple[int, int]:
    if len(data) < _HEADER.size:
        raise CodecError("too short for a header")
    kind, n = _HEADER.unpack_from(data)
    if kind != expected:
        raise CodecError(f"encoding {kind}, expected {expected}")
    return kind, n


_INT64_LOW, _INT64_HIGH = -(2**63), 2**63 - 1


def _wrap(values: List[int]) -> List[int]:
    """
    C{values} taken modulo 2**64 into the signed 64-bit range, when any is
    outside it (a seq column holding both L{NO_SEQ} and a seq near 2**63
    has a step of 2**63).
    """
    if values and (min(values) < _INT64_LOW or max(values) > _INT64_HIGH):
        return [(v + 2**63) % 2**64 - 2**63 for v in values]
    return values


def _delta(values: List[int]) -> List[int]:
    if not values:
        return []
    return _wrap([values[0]] + list(map(sub, values[1:], values)))


def _undelta(deltas: List[int]) -> List[int]:
    # Every value encoded was in the signed 64-bit range, so wrapping the
    # running sums gives each back, steps that wrapped included.
    return _wrap(list(accumulate(deltas)))


def _shuffle(raw: bytes, width: int) -> bytes:
    # All first bytes, then all second bytes, ...: the high bytes of small
    # deltas are zeros in a row, which zlib folds into almost nothing.
    return b"".join(raw[lane::width] for lane in range(width))


def _unshuffle(data: bytes, width: int) -> bytes:
    n = len(data) // width
    out = bytearray(len(data))
    for lane in range(width):
        out[lane::width] = data[lane * n:(lane + 1) * n]
    return bytes(out)


def encodeBlock(columns: Columns, level: int = 6) -> bytes:
    """
    The columns compressed: ids, times and seqs as differences from the
    previous reading, the receive time as its difference from the reading's
    own time, values XOR the previous value's bits; every column
    byte-shuffled, then all of it through zlib at C{level}.
    """
    n = len(columns.ids)
    bits = _unpack("q", _pack("d", columns.values))
    xored = [bits[0]] + list(map(xor, bits[1:], bits)) if bits else []
    lag = list(map(sub, columns.received, columns.ts))
    parts = (
        _shuffle(_pack("q", _delta(columns.ids)), 8),
        _shuffle(_pack("q", _delta(columns.ts)), 8),
        _shuffle(_pack("q", _delta(columns.seqs)), 8),
        _shuffle(_pack("q", xored), 8),
        _shuffle(_pack("q", lag), 8),
        _shuffle(_pack("i", columns.origins), 4),
    )
    return _HEADER.pack(_BLOCK, n) + zlib.compress(b"".join(parts), level)


def decodeBlock(data: bytes) -> Columns:
    """
    The inverse of L{encodeBlock}.

    @raise CodecError: C{data} is not a block, or is damaged.
    """
    _, n = _header(data, _BLOCK)
    try:
        raw = zlib.decompress(data[_HEADER.size:])
    except zlib.error as e:
        raise CodecError(f"damaged block: {e}") from None
    if len(raw) != n * 44:
        raise CodecError(f"a block of {n} readings cannot hold {len(raw)} bytes")
    offset = 0

    def take(width: int) -> bytes:
        nonlocal offset
        chunk = _unshuffle(raw[offset:offset + n * width], width)
        offset += n * width
        return chunk

    ids = _undelta(_unpack("q", take(8)))
    ts = _undelta(_unpack("q", take(8)))
    seqs = _undelta(_unpack("q", take(8)))
    bits = list(accumulate(_unpack("q", take(8)), xor))
    values = _unpack("d", _pack("q", bits))
    lag = _unpack("q", take(8))
    received = list(map(add, ts, lag))
    origins = _unpack("i", take(4))
    return Columns(ids, ts, seqs, values, received, origins)


class Rollup(NamedTuple):
    """
    What a series' readings in one time bucket add up to.

    @ivar readings: How many readings.
    @ivar minimum: The least value.
    @ivar maximum: The greatest value.
    @ivar total: The sum of the values (the mean is C{total / count}).
    @ivar lastTs: The greatest reading time in the bucket, microseconds.
    @ivar last: The value of the reading at C{lastTs} (of those at that
        time, the one stored last).
    """

    readings: int
    minimum: float
    maximum: float
    total: float
    lastTs: int
    last: float


def rollups(columns: Columns, width: int) -> Dict[int, Rollup]:
    """
    The readings of C{columns} folded into buckets C{width} microseconds
    wide, keyed by each bucket's start (a multiple of C{width}).

    The work is per run of readings in one bucket (C{min}, C{max}, C{sum}
    over slices, in C), not per reading: a compacted series is in time
    order, so a bucket is usually one run. A bucket met again later (readings
    out of order) is merged into what it holds, in storage order.
    """
    ts = columns.ts
    values = columns.values
    acc: Dict[int, List] = {}
    start = 0
    for bucket, run in groupby(list(map(sub, ts, map(mod, ts, repeat(width))))):
        end = start + len(list(run))
        vs = values[start:end]
        stamps = ts[start:end]
        lastTs = max(stamps)
        # The last of the run's readings at its greatest time.
        last = vs[len(stamps) - 1 - stamps[::-1].index(lastTs)]
        row = acc.get(bucket)
        if row is None:
            acc[bucket] = [end - start, min(vs), max(vs), _sum(vs), lastTs, last]
        else:
            row[0] += end - start
            row[1] = min(row[1], min(vs))
            row[2] = max(row[2], max(vs))
            row[3] = _sum(vs, row[3])
            if lastTs >= row[4]:
                row[4] = lastTs
                row[5] = last
        start = end
    return {bucket: Rollup(*row) for bucket, row in acc.items()}


def _sum(values: List[float], start: float = 0.0) -> float:
    """
    C{values} added one after the other to C{start}: the same sum whether
    readings are folded one by one or a run at a time (C{sum} of floats
    since Python 3.12 compensates rounding, which would not be).
    """
    if sys.version_info < (3, 12):
        return sum(values, start)
    total = start
    for v in values:
        total += v
    return total


def mergeRollup(old: Optional[Rollup], new: Rollup) -> Rollup:
    """
    Two rollups of one bucket as one (C{new}'s last wins a tie: it was
    stored later).
    """
    if old is None:
        return new
    later = new.lastTs >= old.lastTs
    return Rollup(
        old.readings + new.readings,
        min(old.minimum, new.minimum),
        max(old.maximum, new.maximum),
        old.total + new.total,
        new.lastTs if later else old.lastTs,
        new.last if later else old.last,
    )
