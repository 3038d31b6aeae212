"""
The compact store's logic, shared by both backends, which only add SQL.

Schema 2 keeps a reading in three places over its life (see
C{docs/storage.md}):

  1. A write batch becomes one I{fresh} row per series it touches
     (L{planBatch}, L{freshRows}), and one update of each series' summary
     row (L{summaryRows}): the cost per batch grows with the series in it,
     not with its readings, and every loop over readings here is one pass.
     A batch of chunks that came with their runs (L{sensornet.runs}) is
     planned per run when its readings are new for sure (L{planRuns}),
     without that pass.
  2. The compactor, off the hot path, merges fresh rows older than a few
     seconds into compressed per-series I{blocks} (L{compact}), one block per
     series and hour, and folds exactly those readings into the 1-minute
     and 1-hour rollups in the same transaction: a reading enters the
     rollups once, when its fresh row is deleted, so resends, duplicates and
     crashes never count twice.
  3. Expiry deletes blocks and rollup rows older than their tier's
     retention, a few series at a time.

Exactly once: a reading with a seq is new when its seq is above its
sensor's high-water mark (the greatest seq stored for it), which is the
common case and costs a comparison. At or below it, it may be a resend; it
is then looked up among the sensor's stored seqs (L{settleCandidates}),
a slow path only resends take.
"""

from __future__ import annotations

from itertools import chain, islice
from operator import lt
from typing import (
    TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple,
)

from ..reading import NS_PER_SECOND, Reading
from .base import StoreRejected
from .codec import (
    NO_SEQ,
    Columns,
    Rollup,
    decodeBlock,
    decodeFresh,
    decodeFreshMany,
    decodeRuns,
    encodeBlock,
    encodeRun,
    runsRow,
    NO_TIME,
    encodeFresh,
    mergeRollup,
    rollups,
)

if TYPE_CHECKING:
    from ..runs import ChunkReadings

__all__ = [
    "MINUTE",
    "HOUR",
    "SensorState",
    "SeriesEntry",
    "BatchPlan",
    "planBatch",
    "planRuns",
    "RunsPlan",
    "originsOf",
    "settleCandidates",
    "freshRows",
    "summaryRows",
    "CompactionPlan",
    "compact",
    "wholeSeries",
    "toMicroseconds",
    "fromMicroseconds",
    "assembleReadings",
]

#: Rollup bucket widths, in microseconds.
MINUTE = 60_000_000
HOUR = 3_600_000_000

_LARGEST = 1.7976931348623157e308

#: A block never spans more than this (microseconds): queries that walk
#: blocks in order of their last reading's time can then stop early.
BLOCK_SPAN = HOUR


def toMicroseconds(seconds: float) -> int:
    """
    Float seconds since the epoch as integer microseconds.
    """
    return int(round(seconds * 1_000_000))


def fromMicroseconds(micro: int) -> float:
    """
    Integer microseconds as float seconds since the epoch.
    """
    return micro / 1_000_000


class SensorState:
    """
    What the write path keeps in memory about one sensor.

    @ivar id: The sensor's row id.
    @ivar highWater: The greatest seq stored for it (over all its kinds), or
        -1.
    """

    __slots__ = ("id", "highWater")

    def __init__(self, id: int, highWater: int) -> None:
        self.id = id
        self.highWater = highWater


class SeriesEntry(NamedTuple):
    """
    A series' row id and its sensor's state.
    """

    id: int
    sensor: SensorState


class BatchPlan(NamedTuple):
    """
    What one write batch does.

    @ivar groups: The newly stored readings, by series id.
    @ivar indexes: For each series id, the indexes (in the batch) of its
        newly stored readings, in the order of C{groups}.
    @ivar duplicates: Indexes of the readings dropped as already stored,
        ascending.
    @ivar nextId: The next free reading id after this batch.
    """

    groups: Dict[int, Columns]
    indexes: Dict[int, List[int]]
    duplicates: List[int]
    nextId: int


def planBatch(
    readings: Sequence[Reading],
    series: Callable[[str, str], SeriesEntry],
    origin: Callable[[str, str, str], int],
    nextId: int,
    storedSeqs: Callable[[SensorState, int, int], Set[int]],
) -> BatchPlan:
    """
    Sort C{readings} into per-series columns, dropping those already stored.

    @param series: Gives the series of (sensor, kind), creating it if new;
        called once per reading, so it should answer from a cache.
    @param origin: Gives the id of (unit, peer, dialect), likewise.
    @param nextId: The first reading id to give out.
    @param storedSeqs: Gives the seqs stored for a sensor between two seqs
        (inclusive); called only for readings at or below their sensor's
        high-water mark.

    High-water marks in the L{SensorState}s are advanced as readings are
    accepted: if the batch is not committed, the caller must forget them.
    """
    groups: Dict[int, Columns] = {}
    indexes: Dict[int, List[int]] = {}
    candidates: List[int] = []
    entries: List[Optional[SeriesEntry]] = []
    lastOriginKey: Tuple[str, str, str] = ("", "", "")
    lastOrigin = -1
    nid = nextId
    for i, r in enumerate(readings):
        if not -_LARGEST <= r.value <= _LARGEST:
            # NaN fails both comparisons.
            raise StoreRejected(f"value must be a finite number, not {r.value!r}")
        entry = series(r.sensor, r.kind)
        seq = r.seq
        if seq is not None:
            state = entry.sensor
            if seq > state.highWater:
                state.highWater = seq
            else:
                if not 0 <= seq < 2**63:
                    raise StoreRejected(f"seq must be between 0 and 2**63-1, not {seq!r}")
                candidates.append(i)
                entries.append(entry)
                continue
        else:
            seq = NO_SEQ
        entries.append(entry)
        key = (r.unit, r.peer, r.dialect)
        if key != lastOriginKey:
            lastOrigin = origin(*key)
            lastOriginKey = key
        group = groups.get(entry.id)
        if group is None:
            group = groups[entry.id] = Columns.empty()
            indexes[entry.id] = []
        indexes[entry.id].append(i)
        received = int(round(r.received_at * 1_000_000))
        group.ids.append(nid)
        group.ts.append(received if r.ts is None else int(round(r.ts * 1_000_000)))
        group.seqs.append(seq)
        group.values.append(r.value)
        group.received.append(received)
        group.origins.append(lastOrigin)
        nid += 1
    duplicates: List[int] = []
    if candidates:
        nid = settleCandidates(readings, candidates, entries, groups, indexes, duplicates, origin, nid, storedSeqs)
    return BatchPlan(groups, indexes, duplicates, nid)


class RunsPlan(NamedTuple):
    """
    What a write batch planned per run (L{planRuns}) does: every reading in
    it is new.

    @ivar rows: One fresh row per series, as L{freshRows} gives them, each
        a runs row (L{sensornet.store.codec.runsRow}).
    @ivar summaries: One L{Summary} per series, ordered by series id.
    @ivar nextId: The next free reading id after this batch.
    @ivar origins: The origins of its readings.
    """

    rows: List[Tuple[int, int, int, Optional[int], Optional[int], int, bytes]]
    summaries: List["Summary"]
    nextId: int
    origins: Set[int]


def originsOf(plan: BatchPlan) -> Set[int]:
    """
    The origins of the readings C{plan} stores.
    """
    return set(chain.from_iterable(group.origins for group in plan.groups.values()))


def _microseconds(ns: int) -> int:
    # A parsed time's microseconds, exactly as toMicroseconds gives them for
    # the reading's float seconds (ns / NS_PER_SECOND).
    return round(ns / NS_PER_SECOND * 1_000_000)


def planRuns(
    parts: Sequence[Tuple[int, "ChunkReadings"]],
    size: int,
    seriesByKey: Mapping[Tuple[str, str], SeriesEntry],
    originsByKey: Mapping[Tuple[str, str, str], int],
    nextId: int,
) -> Optional[RunsPlan]:
    """
    What L{planBatch}, L{freshRows} and L{summaryRows} give for a batch of
    C{size} readings that came in chunks with runs (L{sensornet.runs}),
    computed per run: the same readings in each series' fresh row (written
    as a runs row, which decodes to the same columns) and the same
    summaries; or L{None} when this batch needs the per-reading path after
    all.

    It returns L{None}, changing nothing, unless every series and origin is
    known already (C{seriesByKey}, C{originsByKey}: the store's caches),
    every value is finite, and every reading is new for sure: each sensor's
    seqs, in batch order, rise strictly from above its high-water mark, and
    no series or sensor with seqs has two runs in one chunk (their lines
    could interleave). Readings without a seq are new by definition, but a
    run must then have none at all. Otherwise it advances the high-water
    marks, as L{planBatch} does.

    The work per run is a handful of calls into C, none per reading: a
    run's numbers are packed as the parser read them, and their times are
    converted when the row is read.

    @param parts: (index in the batch of the chunk's first reading, the
        chunk), in batch order, covering the batch.
    """
    # Per series: [runs, readings, least time, greatest time, least seq,
    # greatest seq, (latest time, its id), latest value, latest unit,
    # first received, last received].
    planned: Dict[int, List[Any]] = {}
    marks: Dict[int, Tuple[SensorState, int]] = {}
    used: Set[int] = set()
    for offset, chunk in parts:
        peer = chunk.peer
        received = int(round(chunk.receivedAt * 1_000_000))
        base = nextId + offset
        seriesInChunk: Set[int] = set()
        sensorsInChunk: Set[int] = set()
        for names, positions, values, seqs, times in chunk.runs.values():
            entry = seriesByKey.get((names[0], names[1]))
            origin = originsByKey.get((names[2], peer, "native"))
            if entry is None or origin is None or entry.id in seriesInChunk:
                return None
            seriesInChunk.add(entry.id)
            used.add(origin)
            total = sum(values)
            if total - total != 0.0:
                return None
            n = len(positions)
            if seqs[0] is None:
                if seqs.count(None) != n:
                    return None
                seqColumn: Sequence[int] = [NO_SEQ] * n
                seq0 = seq1 = None
            else:
                state = entry.sensor
                key = id(state)
                if key in sensorsInChunk:
                    return None
                sensorsInChunk.add(key)
                floor = marks[key][1] if key in marks else state.highWater
                try:
                    # Comparing with a None (seqs and none in one run)
                    # raises: no scan for None first.
                    rising = all(map(lt, seqs, islice(seqs, 1, None)))  # type: ignore[arg-type]
                    if seqs[0] <= floor or not rising:  # type: ignore[operator]
                        return None
                except TypeError:
                    return None
                marks[key] = (state, seqs[-1])  # type: ignore[assignment]
                seqColumn = seqs  # type: ignore[assignment]
                seq0, seq1 = seqs[0], seqs[-1]
            try:
                # Raises on a run with times and readings without one.
                latest = max(times)  # type: ignore[type-var]
                earliest = min(times)  # type: ignore[type-var]
            except TypeError:
                latest = None
            if latest is not None and times[-1] == latest:
                # The usual run, in time order at its end: its last reading
                # is its latest (and the last stored of those at that time).
                packed: Sequence[int] = times  # type: ignore[assignment]
                t0 = _microseconds(earliest)  # type: ignore[arg-type]
                t1 = _microseconds(latest)
                at = n - 1
            else:
                # Readings without a time, or an earlier last reading: each
                # reading's microseconds, as planBatch has them.
                micro = [received if t is None else _microseconds(t) for t in times]
                packed = [NO_TIME if t is None else t for t in times]
                t0, t1 = min(micro), max(micro)
                at = n - 1 - micro[::-1].index(t1)
            newest = (t1, base + positions[at])
            piece = encodeRun(base, received, origin, positions, packed, seqColumn, values)
            found = planned.get(entry.id)
            if found is None:
                planned[entry.id] = [
                    [piece], n, t0, t1, seq0, seq1, newest, values[at], names[2], received, received,
                ]
                continue
            found[0].append(piece)
            found[1] += n
            if t0 < found[2]:
                found[2] = t0
            if t1 > found[3]:
                found[3] = t1
            if seq0 is not None:
                if found[4] is None or seq0 < found[4]:
                    found[4] = seq0
                if found[5] is None or seq1 > found[5]:  # type: ignore[operator]
                    found[5] = seq1
            if newest > found[6]:
                found[6], found[7], found[8] = newest, values[at], names[2]
            if received < found[9]:
                found[9] = received
            if received > found[10]:
                found[10] = received
    for state, mark in marks.values():
        state.highWater = mark
    rows = []
    summaries = []
    for sid in sorted(planned):
        pieces, n, t0, t1, seq0, seq1, (ts, _), value, unit, first, last = planned[sid]
        rows.append((sid, t0, t1, seq0, seq1, n, runsRow(pieces, n)))
        summaries.append(Summary(sid, unit, value, ts, n, first, last, NO_SEQ if seq1 is None else seq1))
    return RunsPlan(rows, summaries, nextId + size, used)


def settleCandidates(
    readings: Sequence[Reading],
    candidates: List[int],
    entries: List[Optional[SeriesEntry]],
    groups: Dict[int, Columns],
    indexes: Dict[int, List[int]],
    duplicates: List[int],
    origin: Callable[[str, str, str], int],
    nid: int,
    storedSeqs: Callable[[SensorState, int, int], Set[int]],
) -> int:
    """
    The slow path of L{planBatch}: decide, for each reading whose seq is at
    or below its sensor's high-water mark, whether that seq is stored
    (already, or earlier in this batch). Returns the next free id.
    """
    bySensor: Dict[int, List[int]] = {}
    for i in candidates:
        entry = entries[i]
        assert entry is not None
        bySensor.setdefault(entry.sensor.id, []).append(i)
    seen: Dict[int, Set[int]] = {}
    # The seqs this batch already accepted, per sensor.
    for sid, group in groups.items():
        members = indexes[sid]
        if not members:
            continue
        entry = entries[members[0]]
        assert entry is not None
        if entry.sensor.id in bySensor:
            seen.setdefault(entry.sensor.id, set()).update(s for s in group.seqs if s != NO_SEQ)
    for sensorId, members in bySensor.items():
        entry = entries[members[0]]
        assert entry is not None
        seqs = [readings[i].seq or 0 for i in members]
        stored = storedSeqs(entry.sensor, min(seqs), max(seqs))
        stored |= seen.get(sensorId, set())
        for i in members:
            r = readings[i]
            if r.seq in stored:
                duplicates.append(i)
                continue
            stored.add(r.seq)  # type: ignore[arg-type]
            e = entries[i]
            assert e is not None
            found = groups.get(e.id)
            if found is None:
                found = groups[e.id] = Columns.empty()
                indexes[e.id] = []
            group = found
            indexes[e.id].append(i)
            received = int(round(r.received_at * 1_000_000))
            group.ids.append(nid)
            group.ts.append(received if r.ts is None else int(round(r.ts * 1_000_000)))
            group.seqs.append(r.seq)  # type: ignore[arg-type]
            group.values.append(r.value)
            group.received.append(received)
            group.origins.append(origin(r.unit, r.peer, r.dialect))
            nid += 1
    duplicates.sort()
    return nid


def _seqRange(seqs: List[int]) -> Tuple[Optional[int], Optional[int]]:
    present = [s for s in seqs if s != NO_SEQ] if NO_SEQ in seqs else seqs
    if not present:
        return None, None
    return min(present), max(present)


def freshRows(plan: BatchPlan) -> List[Tuple[int, int, int, Optional[int], Optional[int], int, bytes]]:
    """
    One fresh row per series of C{plan}: (series, t0, t1, seq0, seq1, n,
    data), t0 and t1 the least and greatest reading time, seq0 and seq1 the
    least and greatest seq (L{None} when no reading has one).
    """
    rows = []
    for sid, group in plan.groups.items():
        seq0, seq1 = _seqRange(group.seqs)
        rows.append((sid, min(group.ts), max(group.ts), seq0, seq1, len(group.ids), encodeFresh(group)))
    return rows


class Summary(NamedTuple):
    """
    One batch's change to one series' summary row.

    @ivar series: The series id.
    @ivar unit: The unit of its latest reading in the batch.
    @ivar value: The value of that reading.
    @ivar ts: Its time (microseconds).
    @ivar stored: Readings newly stored.
    @ivar firstSeen: The earliest receive time (microseconds).
    @ivar lastSeen: The latest receive time.
    @ivar maxSeq: The greatest seq, or -1.
    """

    series: int
    unit: str
    value: float
    ts: int
    stored: int
    firstSeen: int
    lastSeen: int
    maxSeq: int


def summaryRows(plan: BatchPlan, readings: Sequence[Reading]) -> List[Summary]:
    """
    One L{Summary} per series of C{plan}, ordered by series id, so that
    concurrent writers lock summary rows in one order. The latest reading
    is the one with the greatest time; among equal times, the one stored
    last.
    """
    out = []
    for sid in sorted(plan.groups):
        group = plan.groups[sid]
        ts = group.ts
        latest = max(ts)
        # The last of the readings at the greatest time.
        at = len(ts) - 1 - ts[::-1].index(latest)
        reading = readings[plan.indexes[sid][at]]
        out.append(
            Summary(
                sid, reading.unit, group.values[at], latest, len(ts), min(group.received),
                max(group.received), max(group.seqs),
            )
        )
    return out


class CompactionPlan(NamedTuple):
    """
    What one compaction round writes.

    @ivar blocks: Rows (series, t0, t1, seq0, seq1, n, data).
    @ivar minutes: Rollup rows (series, bucket, count, min, max, sum,
        last_ts, last) for 1-minute buckets.
    @ivar hours: The same for 1-hour buckets.
    @ivar readings: How many readings the round moves.
    """

    blocks: List[Tuple[int, int, int, Optional[int], Optional[int], int, bytes]]
    minutes: List[Tuple[int, int, int, float, float, float, int, float]]
    hours: List[Tuple[int, int, int, float, float, float, int, float]]
    readings: int


def _rollupRows(series: int, folded: Dict[int, Rollup]) -> List[Tuple[int, int, int, float, float, float, int, float]]:
    return [(series, bucket, *r) for bucket, r in sorted(folded.items())]


def _splitBySpan(columns: Columns) -> List[Columns]:
    """
    C{columns} in time order, cut wherever a block would span more than
    L{BLOCK_SPAN}: readings of one hour-aligned window per block.
    """
    if columns.ts == sorted(columns.ts):
        # The usual case, checked in C: in time order already, and ids
        # grow in the order readings were stored.
        ordered = columns
    else:
        order = sorted(range(len(columns.ids)), key=lambda k: (columns.ts[k], columns.ids[k]))
        ordered = columns.select(order)
    windows: List[Columns] = []
    start = 0
    ts = ordered.ts
    n = len(ts)
    while start < n:
        window = ts[start] - ts[start] % BLOCK_SPAN
        end = start + 1
        limit = window + BLOCK_SPAN
        while end < n and ts[end] < limit:
            end += 1
        windows.append(ordered.slice(start, end))
        start = end
    return windows


def wholeSeries(rows: List[Any], limit: int) -> Tuple[List[Any], Optional[int]]:
    """
    Of fresh rows (id, series, ...) read in series order, C{limit} at most,
    those to compact now and the series the next read starts after, or
    L{None} when this read was short: it reached the end of its range.

    A series' pending rows are compacted together, so they make one block
    per hour and not a small block per call (the per-block work, rollups
    and encoding, is most of what compaction costs): the last series of a
    full read, perhaps cut short, is left whole for the next; a series that
    fills a read alone is taken and continued by the next.
    """
    if len(rows) < limit:
        return rows, None
    last = rows[-1][1]
    if rows[0][1] == last:
        return rows, last - 1
    kept = list(rows)
    while kept[-1][1] == last:
        kept.pop()
    return kept, kept[-1][1]


def compact(fresh: Iterable[Tuple[int, bytes]], level: int = 6) -> CompactionPlan:
    """
    Merge fresh rows (series id, data) into blocks and rollups: one block
    per series and hour-aligned window, in time order within it.
    """
    perSeries: Dict[int, List[bytes]] = {}
    for sid, data in fresh:
        perSeries.setdefault(sid, []).append(data)
    blocks = []
    minutes = []
    hours = []
    total = 0
    for sid in sorted(perSeries):
        merged = decodeFreshMany(perSeries[sid])
        total += len(merged.ids)
        minutes.extend(_rollupRows(sid, rollups(merged, MINUTE)))
        hours.extend(_rollupRows(sid, rollups(merged, HOUR)))
        for window in _splitBySpan(merged):
            seq0, seq1 = _seqRange(window.seqs)
            blocks.append(
                (sid, window.ts[0], window.ts[-1], seq0, seq1, len(window.ids), encodeBlock(window, level))
            )
    return CompactionPlan(blocks, minutes, hours, total)


def decodeRow(data: bytes) -> Columns:
    """
    The readings of a fresh row (plain or runs) or a block, whichever
    C{data} is.
    """
    kind = data[:1]
    if kind == b"\x01":
        return decodeFresh(data)
    if kind == b"\x03":
        return decodeRuns([data])
    return decodeBlock(data)


def assembleReadings(
    fresh: Iterable[Tuple[int, bytes]],
    blocks: Iterable[Tuple[int, int, bytes]],
    names: Callable[[int], Tuple[str, str]],
    origins: Callable[[int], Tuple[str, str, str]],
    since: Optional[int],
    until: Optional[int],
    after: Optional[Tuple[int, int]],
    limit: int,
) -> List[Dict[str, Any]]:
    """
    The readings with C{since <= ts < until} and (ts, id) after C{after},
    the first C{limit} in (ts, id) order, as the dicts
    L{sensornet.store.base.Store.readings} returns, taken from C{fresh}
    rows (series id, data) and C{blocks} (series id, t1, data).

    C{blocks} must come in ascending order of C{t1}: since a block's
    readings lie in one L{BLOCK_SPAN}-aligned window, once C{limit} readings
    are in hand and a block's window starts after the last of them, no later
    block can hold an earlier reading, and the blocks are not read further.

    @param names: Gives a series id's (sensor, kind).
    @param origins: Gives an origin id's (unit, peer, dialect).
    """
    picked: List[Tuple[int, int, int, int, int, float, int]] = []

    def take(sid: int, c: Columns) -> None:
        ids = c.ids
        for k, t in enumerate(c.ts):
            if since is not None and t < since:
                continue
            if until is not None and t >= until:
                continue
            if after is not None and (t, ids[k]) <= after:
                continue
            picked.append((t, ids[k], sid, c.seqs[k], c.origins[k], c.values[k], c.received[k]))

    for sid, data in fresh:
        take(sid, decodeRow(data))
    for sid, t1, data in blocks:
        if len(picked) >= limit:
            picked.sort()
            del picked[limit:]
            if t1 - t1 % BLOCK_SPAN > picked[-1][0]:
                break
        take(sid, decodeRow(data))
    picked.sort()
    del picked[limit:]
    out = []
    for t, rid, sid, seq, oid, value, received in picked:
        sensor, kind = names(sid)
        unit, peer, dialect = origins(oid)
        out.append(
            {
                "id": rid,
                "sensor": sensor,
                "kind": kind,
                "value": value,
                "unit": unit,
                "ts": t / 1_000_000,
                "seq": None if seq == NO_SEQ else seq,
                "received_at": received / 1_000_000,
                "peer": peer,
                "dialect": dialect,
                "_position": (t, rid),
            }
        )
    return out


#: The rollup tables, by step.
ROLLUP_TABLES = {"1m": (MINUTE, "rollup_1m"), "1h": (HOUR, "rollup_1h")}


def rollupTable(step: str) -> Tuple[int, str]:
    """
    The bucket width (microseconds) and table of a step (C{"1m"},
    C{"1h"}).

    @raise ValueError: Another step.
    """
    try:
        return ROLLUP_TABLES[step]
    except KeyError:
        raise ValueError(f"step must be one of {', '.join(ROLLUP_TABLES)}, not {step!r}") from None


def foldRollups(
    stored: Iterable[Sequence[Any]],
    fresh: Iterable[Tuple[int, bytes]],
    width: int,
    since: int,
    until: int,
    names: Callable[[int], Tuple[str, str]],
) -> List[Dict[str, Any]]:
    """
    Rollup rows from a rollup table (series, bucket, count, lo, hi, total,
    last_ts, last) merged with the not yet compacted readings of C{fresh}
    rows, for the whole buckets of C{width} overlapping [C{since}, C{until}),
    as
    L{sensornet.store.base.Store.rollups} returns them.
    """
    acc: Dict[Tuple[int, int], Rollup] = {}
    for seriesId, bucket, *rest in stored:
        acc[(seriesId, bucket)] = Rollup(*rest)
    # Whole buckets, as the rollup rows are: the one holding since and the
    # one holding the last microsecond before until, complete.
    start = since - since % width
    end = until + (-until) % width
    for seriesId, data in fresh:
        c = decodeRow(data)
        keep = [k for k, t in enumerate(c.ts) if start <= t < end]
        if not keep:
            continue
        picked = c.select(keep)
        for bucket, r in rollups(picked, width).items():
            acc[(seriesId, bucket)] = mergeRollup(acc.get((seriesId, bucket)), r)
    out = []
    for (seriesId, bucket), r in acc.items():
        sensor, kind = names(seriesId)
        out.append(
            {
                "sensor": sensor, "kind": kind, "ts": bucket / 1_000_000, "count": r.readings,
                "min": r.minimum, "max": r.maximum, "mean": r.total / r.readings, "last": r.last,
            }
        )
    out.sort(key=lambda row: (row["ts"], row["kind"]))
    return out


def retentionRules(retention: Any) -> List[Any]:
    """
    The rules of a retention policy (L{None}: the default policy's).
    """
    if retention is None:
        from .retention import RetentionPolicy

        retention = RetentionPolicy()
    return list(retention.rules)


def expiryCutoffs(rules: Sequence[Any], policy: int, now: float) -> List[Tuple[str, str, int]]:
    """
    What expires for a series under rule C{policy} at C{now}: (table, time
    column, cutoff in microseconds) for each tier not kept forever. A block
    expires when its last reading is older than the raw retention; a rollup
    row when its whole bucket is older than its tier's. An index beyond the
    rules (they were shortened since the series was created) is the
    default, rule 0.
    """
    rule = rules[policy] if 0 <= policy < len(rules) else rules[0]
    nowUs = toMicroseconds(now)
    out = []
    if rule.raw is not None:
        out.append(("blocks", "t1", nowUs - toMicroseconds(rule.raw)))
    if rule.minute is not None:
        out.append(("rollup_1m", "bucket", nowUs - toMicroseconds(rule.minute) - MINUTE))
    if rule.hour is not None:
        out.append(("rollup_1h", "bucket", nowUs - toMicroseconds(rule.hour) - HOUR))
    return out
