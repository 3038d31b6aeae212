"""
Runs (L{sensornet.runs}): a chunk's readings grouped by head as the chunk
parser finds them, carried through the submission queue into the batch, and
planned per run by L{sensornet.store.layout.planRuns}, which must give
exactly what L{planBatch} plans (the same readings in each series' fresh
row, the same summaries, the same ids) or decline without changing
anything; and the stores, which store the same readings either way.
"""

from __future__ import annotations

import copy
import sqlite3
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from sensornet.batching import Call, SubmissionQueue
from sensornet.dialects.native import parseCanonical, parseCanonicalChunk
from sensornet.reading import Reading
from sensornet.runs import BatchReadings, ChunkReadings
from sensornet.store.layout import (
    BatchPlan, RunsPlan, SensorState, SeriesEntry, decodeRow, freshRows, planBatch, planRuns, summaryRows,
)
from sensornet.store import openStore
from sensornet.store.sqlite import SQLiteStore

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_SENSORS = ["a", "b", "c"]
_KINDS = ["temperature", "humidity"]
_NOW = 1_763_000_000.0


def line(sensor: str, kind: str, value: float, seq: Optional[int], ts: Optional[int], unit: str = "C") -> bytes:
    text = f"{kind},sensor={sensor},unit={unit} value={value!r}"
    if seq is not None:
        text += f",seq={seq}i"
    if ts is not None:
        text += f" {ts}"
    return text.encode()


def parsed(lines: List[bytes], peer: str = "127.0.0.1:5001", at: float = _NOW) -> ChunkReadings:
    """
    The chunk as the protocol submits it: parsed in one pass, each reading
    stamped with the peer and the time.
    """
    for each in lines:
        # Heads must be known for the one-pass parse.
        assert parseCanonical(each) is not None
    chunk = parseCanonicalChunk(lines)
    assert chunk is not None
    chunk.peer = peer
    chunk.receivedAt = at
    for reading in chunk:
        reading.peer = peer
        reading.received_at = at
    return chunk


@st.composite
def chunks(draw: Any) -> List[bytes]:
    out = []
    seqs: Dict[str, int] = {}
    pattern = draw(st.sampled_from(["rising", "any", "none", "mixed"]))
    for _ in range(draw(st.integers(2, 12))):
        sensor = draw(st.sampled_from(_SENSORS))
        kind = draw(st.sampled_from(_KINDS))
        if pattern == "rising":
            seqs[sensor] = seqs.get(sensor, draw(st.integers(0, 3))) + draw(st.integers(1, 3))
            seq: Optional[int] = seqs[sensor]
        elif pattern == "any":
            seq = draw(st.integers(0, 8))
        elif pattern == "none":
            seq = None
        else:
            seq = draw(st.one_of(st.none(), st.integers(0, 8)))
        ts = draw(st.one_of(st.none(), st.integers(1_700_000_000_000_000_000, 1_700_000_100_000_000_000)))
        value = draw(st.floats(-1e6, 1e6, allow_nan=False))
        out.append(line(sensor, kind, value, seq, ts))
    return out


def caches(highWaters: Dict[str, int]) -> Tuple[Dict[Tuple[str, str], SeriesEntry], Dict[Tuple[str, str, str], int]]:
    states = {name: SensorState(index, highWaters.get(name, -1)) for index, name in enumerate(_SENSORS)}
    series = {
        (name, kind): SeriesEntry(10 * states[name].id + k, states[name])
        for name in _SENSORS for k, kind in enumerate(_KINDS)
    }
    origins = {("C", f"127.0.0.1:{5001 + i}", "native"): 100 + i for i in range(3)}
    return series, origins


def perReading(readings: List[Reading], series: Dict[Any, SeriesEntry], origins: Dict[Any, int], nextId: int,
               stored: Dict[int, set]) -> BatchPlan:
    return planBatch(
        readings, lambda name, kind: series[(name, kind)], lambda *key: origins[key], nextId,
        lambda state, lo, hi: {s for s in stored.get(state.id, set()) if lo <= s <= hi},
    )


def written(plan: Any, readings: List[Reading]) -> Any:
    """
    What a plan writes, comparable across both planners: each fresh row
    with its readings decoded (a runs row and a plain one hold the same
    columns in different bytes), the summaries, the next id.
    """
    if isinstance(plan, RunsPlan):
        rows, summaries, nextId = plan.rows, plan.summaries, plan.nextId
    else:
        rows, summaries, nextId = freshRows(plan), summaryRows(plan, readings), plan.nextId
    return (
        sorted((*row[:6], decodeRow(row[6])) for row in rows),
        summaries,
        nextId,
    )


def marks(series: Dict[Any, SeriesEntry]) -> Dict[int, int]:
    return {entry.sensor.id: entry.sensor.highWater for entry in series.values()}


def batchOf(chunkList: List[ChunkReadings], most: int) -> List[BatchReadings]:
    queue = SubmissionQueue()
    for chunk in chunkList:
        queue.add(Call(chunk, Deferred()))
    batches = []
    while queue.queued:
        batch = queue.take(most).readings
        assert isinstance(batch, BatchReadings)
        batches.append(batch)
    return batches


@SETTINGS
@given(
    st.lists(chunks(), min_size=1, max_size=4),
    st.integers(1, 30),
    st.dictionaries(st.sampled_from(_SENSORS), st.integers(-1, 6)),
)
def test_planned_per_run_or_declined_never_otherwise(lineChunks: List[List[bytes]], most: int,
                                                      highWaters: Dict[str, int]) -> None:
    """
    Whatever the chunks, however the queue cuts them into batches and
    whatever is stored: per run, exactly L{planBatch}'s plan and high-water
    marks; or L{None}, the marks untouched.
    """
    chunkList = [parsed(each, peer=f"127.0.0.1:{5001 + i % 3}") for i, each in enumerate(lineChunks)]
    series, origins = caches(highWaters)
    slowSeries, slowOrigins = copy.deepcopy((series, origins))
    # What is stored at or below each mark: every seq there, so that a
    # reading at or below it is a duplicate (planRuns must then decline).
    stored = {series[(name, _KINDS[0])].sensor.id: set(range(0, mark + 1)) for name, mark in highWaters.items()}
    nextId = 1
    for batch in batchOf(chunkList, most):
        assert batch.parts is not None
        assert sum(len(chunk) for _, chunk in batch.parts) == len(batch)
        before = marks(series)
        fast = planRuns(batch.parts, len(batch), series, origins, nextId)
        slow = perReading(list(batch), slowSeries, slowOrigins, nextId, stored)
        if fast is None:
            assert marks(series) == before
            # Keep both sides in step for the next batch.
            perReading(list(batch), series, origins, nextId, stored)
        else:
            assert not slow.duplicates
            assert written(fast, list(batch)) == written(slow, list(batch))
        assert marks(series) == marks(slowSeries)
        nextId = slow.nextId


def test_rising_seqs_from_known_sensors_are_planned_per_run() -> None:
    """
    The common case does take the per-run path (so the property above is
    not met by declining everything): a relay's chunk, split by the batch.
    A resend of some of it is declined, and found duplicate per reading.
    """
    lines = [line(s, "temperature", 20.0 + i, 100 + i, 1_700_000_000_000_000_000 + i) for i in range(12)
             for s in _SENSORS]
    series, origins = caches({"a": 5})
    slowSeries, slowOrigins = copy.deepcopy((series, origins))
    nextId = 7
    batches = batchOf([parsed(lines)], 25)
    assert [len(batch) for batch in batches] == [25, 11]
    for batch in batches:
        assert batch.parts is not None
        fast = planRuns(batch.parts, len(batch), series, origins, nextId)
        assert fast is not None
        slow = perReading(list(batch), slowSeries, slowOrigins, nextId, {})
        assert written(fast, list(batch)) == written(slow, list(batch))
        nextId = fast.nextId
    assert series[("a", "temperature")].sensor.highWater == 111
    [resend] = batchOf([parsed(lines[:3], at=_NOW + 1)], 25)
    assert resend.parts is not None
    assert planRuns(resend.parts, len(resend), series, origins, nextId) is None
    stored = {entry.sensor.id: set(range(100, 112)) for entry in series.values()}
    assert perReading(list(resend), series, origins, nextId, stored).duplicates == [0, 1, 2]


def test_a_resent_chunk_and_an_unknown_sensor_are_declined() -> None:
    series, origins = caches({"b": 3})
    assert planRuns([(0, parsed([line("b", "temperature", 1.0, 3, None), line("b", "temperature", 1.0, 4, None)]))],
                    2, series, origins, 1) is None
    assert series[("b", "temperature")].sensor.highWater == 3
    chunk = parsed([line("a", "temperature", 1.0, 1, None), line("zz", "temperature", 1.0, 1, None)])
    assert planRuns([(0, chunk)], 2, series, origins, 1) is None
    assert series[("a", "temperature")].sensor.highWater == -1


def test_the_queue_keeps_runs_only_while_every_call_has_them() -> None:
    queue = SubmissionQueue()
    chunk = parsed([line("a", "temperature", 1.0, i, None) for i in range(6)])
    queue.add(Call(chunk, Deferred()))
    queue.add(Call([Reading("a", "temperature", 2.0, seq=9, peer="p", received_at=_NOW)], Deferred()))
    first = queue.take(4).readings
    assert isinstance(first, BatchReadings) and first.parts is not None
    [(offset, part)] = first.parts
    assert offset == 0 and list(part) == chunk[:4]
    [(names, positions, values, seqs, times)] = part.runs.values()
    assert positions == [0, 1, 2, 3] and seqs == [0, 1, 2, 3] and times == [None] * 4
    second = queue.take(10).readings
    assert isinstance(second, BatchReadings)
    assert second.parts is None
    assert [r.seq for r in second] == [4, 5, 9]


def storedRows(path: str) -> Any:
    db = sqlite3.connect(path)
    try:
        # By series, each row's readings decoded: the bytes of a runs row
        # and of a plain row differ.
        return (
            sorted((series, t0, t1, seq0, seq1, n, decodeRow(data)) for series, t0, t1, seq0, seq1, n, data
                   in db.execute("SELECT series, t0, t1, seq0, seq1, n, data FROM fresh")),
            db.execute("SELECT * FROM series ORDER BY id").fetchall(),
            db.execute("SELECT next_id FROM store_state").fetchall(),
        )
    finally:
        db.close()


def test_the_sqlite_store_stores_the_same_rows_with_and_without_runs(tmp_path: Any) -> None:
    """
    Chunk after chunk (new sensors, rising seqs, a resend, readings without
    seqs): the same fresh rows, summaries and ids through the queue's
    batches with runs as through plain lists; duplicates found either way.
    """
    chunkLines = [
        [line(s, k, 1.5 + i, i, 1_700_000_000_000_000_000 + i) for i in range(5) for s in _SENSORS for k in _KINDS[:1]],
        [line(s, "temperature", 2.5 + i, 5 + i, None) for i in range(5) for s in _SENSORS],
        [line(s, "temperature", 2.5 + i, 5 + i, None) for i in range(5) for s in _SENSORS],
        [line(s, "humidity", 40.0 + i, None, 1_700_000_000_000_000_000 + i, unit="%") for i in range(4)
         for s in _SENSORS],
        [line(s, "temperature", 3.5, 20 + i, None) for i in range(3) for s in _SENSORS],
    ]
    results = []
    for withRuns in (True, False):
        path = str(tmp_path / f"runs-{withRuns}.db")
        store = SQLiteStore(path)
        store.open()
        try:
            outcomes = []
            for index, each in enumerate(chunkLines):
                chunk = parsed(each, at=_NOW + index)
                for batch in batchOf([chunk], 1000):
                    result = store.write(batch if withRuns else list(batch))
                    outcomes.append((result.stored, result.duplicates))
        finally:
            store.close()
        results.append((outcomes, storedRows(path)))
    assert results[0] == results[1]
    outcomes = results[0][0]
    assert outcomes[2] == (0, 15)
    assert sum(stored for stored, _ in outcomes) == 15 + 15 + 12 + 9


@pytest.fixture(params=["sqlite", "postgresql"])
def twoStoreURLs(request: pytest.FixtureRequest, tmp_path: Any) -> List[str]:
    """
    Two fresh, empty stores of one backend.
    """
    if request.param == "sqlite":
        return [f"sqlite:{tmp_path / 'one.db'}", f"sqlite:{tmp_path / 'two.db'}"]
    server = request.getfixturevalue("postgresql_server")
    if not server.running:
        server.start()
    return [server.createDatabase(), server.createDatabase()]


def test_both_backends_store_the_same_with_and_without_runs(twoStoreURLs: List[str]) -> None:
    """
    The same chunks, through the queue's batches with runs into one store
    and as plain lists into the other: the same write results, the same
    readings (ids included) and the same summaries, on both backends.
    """
    chunkLines = [
        [line(s, "temperature", 1.5 + i, i, 1_700_000_000_000_000_000 + i * 10**9) for i in range(6) for s in _SENSORS],
        [line(s, "temperature", 2.5 + i, 6 + i, None) for i in range(4) for s in _SENSORS],
        [line(s, "temperature", 2.5 + i, 6 + i, None) for i in range(4) for s in _SENSORS],
        [line(s, "humidity", 40.0 + i, None, None, unit="%") for i in range(3) for s in _SENSORS],
        [line("a", "temperature", 9.0, 30 + i, None) for i in range(5)],
    ]
    seen = []
    for withRuns, url in zip((True, False), twoStoreURLs):
        store = openStore(url)
        try:
            results = []
            for index, each in enumerate(chunkLines):
                for batch in batchOf([parsed(each, at=_NOW + index)], 1000):
                    result = store.write(batch if withRuns else list(batch))
                    results.append((result.stored, result.duplicates, result.duplicateIndexes))
            seen.append((results, store.readings(limit=10**6), sorted(map(sorted, map(dict.items, store.sensors())))))
        finally:
            store.close()
    assert seen[0] == seen[1]
    assert seen[0][0][2] == (0, 12, tuple(range(12)))
    assert len(seen[0][1]) == 18 + 12 + 9 + 5


def test_the_latest_reading_is_the_same_when_times_meet_within_a_microsecond() -> None:
    """
    Two times a few nanoseconds apart are one microsecond in the store: the
    latest is then the one stored last, even with the smaller nanoseconds
    (planRuns must not pick it by nanoseconds); and a run whose last reading
    is not its latest, or that mixes readings with and without a time,
    gives the same summary and row as the per-reading path.
    """
    base = 1_700_000_000_000_001_000
    # The times, and the value of the latest reading (10.0 + its index).
    cases = [
        ([base + 700, base + 400], 11.0),
        ([base + 400, base + 700, base - 5_000_000], 11.0),
        ([None, base, None], 12.0),
        ([base, base], 11.0),
    ]
    # The first case's two times are one microsecond in the store.
    assert round((base + 700) / 10**9 * 10**6) == round((base + 400) / 10**9 * 10**6)
    for times, latest in cases:
        lines = [line("a", "temperature", 10.0 + i, 1 + i, ns) for i, ns in enumerate(times)]
        series, origins = caches({})
        slowSeries, slowOrigins = copy.deepcopy((series, origins))
        [batch] = batchOf([parsed(lines)], 100)
        assert batch.parts is not None
        fast = planRuns(batch.parts, len(batch), series, origins, 1)
        assert fast is not None
        slow = perReading(list(batch), slowSeries, slowOrigins, 1, {})
        assert written(fast, list(batch)) == written(slow, list(batch))
        [summary] = fast.summaries
        assert summary.value == latest


def test_a_batch_of_runs_is_stored_without_making_a_reading(tmp_path: Any) -> None:
    """
    The everyday path (chunks parsed in one pass, queued, planned per run,
    stored) makes no L{Reading}: they are made only when something iterates
    or indexes the chunk, and then with the chunk's peer and time.
    """
    lines = [line(s, "temperature", 20.0 + i, 1 + i, 1_700_000_000_000_000_000 + i) for i in range(4)
             for s in _SENSORS]
    for each in lines:
        parseCanonical(each)
    later = [line(s, "temperature", 30.0 + i, 10 + i, None) for i in range(2) for s in _SENSORS]
    for each in later:
        parseCanonical(each)
    chunks = [parseCanonicalChunk(lines, "127.0.0.1:5001", _NOW), parseCanonicalChunk(later, "127.0.0.1:5002", _NOW)]
    store = SQLiteStore(str(tmp_path / "lazy.db"))
    store.open()
    try:
        # The first write creates the series and origins (per reading).
        store.write([Reading(s, "temperature", 1.0, "C", peer=peer, received_at=_NOW)
                     for s in _SENSORS for peer in ("127.0.0.1:5001", "127.0.0.1:5002")])
        [first] = batchOf([chunks[0]], 100)
        assert store.write(first).stored == 12
        assert chunks[0]._readings is None and first._readings is None
        assert chunks[0].seqs == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
        # A batch cut from a chunk: its part is runs too.
        [second, third] = batchOf([chunks[1]], 4)
        assert store.write(second).stored == 4 and store.write(third).stored == 2
        assert chunks[1]._readings is None and second._readings is None and third._readings is None
        # A resend goes reading by reading (it needs them to find its
        # duplicates), and says so.
        [resend] = batchOf([parseCanonicalChunk(later, "127.0.0.1:5002", _NOW)], 100)
        assert store.write(resend).duplicates == 6 and resend._readings is not None
        stored = store.readings(limit=100)
    finally:
        store.close()
    assert len(stored) == 6 + 12 + 6
    made = list(chunks[0])
    expected = [parseCanonical(each) for each in lines]
    for reading in expected:
        assert reading is not None
        reading.peer, reading.received_at = "127.0.0.1:5001", _NOW
    assert made == expected
    assert chunks[0][3] is made[3] and chunks[0].cut(2, 5)[0] is made[2]
