"""
The compact store's codec (sensornet.store.codec), as pure functions: blocks
and fresh rows give back exactly what was encoded, and rollups equal a fold
of the readings one at a time, whatever their order.
"""

from __future__ import annotations

import sys
from typing import Dict, List

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from sensornet.store.codec import (
    NO_SEQ,
    NO_TIME,
    CodecError,
    Columns,
    Rollup,
    decodeBlock,
    decodeFresh,
    decodeFreshMany,
    decodeRuns,
    encodeBlock,
    encodeFresh,
    encodeRun,
    rollups,
    runsRow,
)
from sensornet.store.layout import toMicroseconds

MINUTE = 60_000_000

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@st.composite
def columnsOf(draw: st.DrawFn, maxSize: int = 60) -> Columns:
    """
    Readings as a compacted series holds them: times mostly rising, some
    out of order and some equal, seqs with gaps or none, any finite value.
    """
    n = draw(st.integers(0, maxSize))
    t = draw(st.integers(1_600_000_000_000_000, 1_800_000_000_000_000))
    ids, ts, seqs, values, received, origins = [], [], [], [], [], []
    for k in range(n):
        t += draw(st.sampled_from([0, 1, 999_999, 2_000_000, 61_000_000, -30_000_000, 3_600_000_000]))
        ids.append(1000 + k * draw(st.integers(1, 3)))
        ts.append(t)
        seqs.append(draw(st.one_of(st.just(-1), st.integers(0, 2**63 - 1))))
        values.append(draw(finite))
        received.append(t + draw(st.integers(-10**9, 10**9)))
        origins.append(draw(st.integers(0, 2**31 - 1)))
    return Columns(ids, ts, seqs, values, received, origins)


def foldOneByOne(columns: Columns, width: int) -> Dict[int, Rollup]:
    """
    The definition: each reading added to its bucket in storage order; the
    last value is the one at the greatest time, the later stored on a tie.
    """
    acc: Dict[int, List] = {}
    for t, v in zip(columns.ts, columns.values):
        bucket = t - t % width
        row = acc.get(bucket)
        if row is None:
            acc[bucket] = [1, v, v, v, t, v]
            continue
        row[0] += 1
        row[1] = min(row[1], v)
        row[2] = max(row[2], v)
        row[3] += v
        if t >= row[4]:
            row[4], row[5] = t, v
    return {bucket: Rollup(*row) for bucket, row in acc.items()}


def same(a: Columns, b: Columns) -> bool:
    # Compare values by their bits: -0.0 and 0.0 differ, as they are stored.
    import struct

    def bits(vs: List[float]) -> List[bytes]:
        return [struct.pack("<d", v) for v in vs]

    return a._replace(values=bits(a.values)) == b._replace(values=bits(b.values))


@settings(max_examples=300, deadline=None)
@given(columnsOf())
def test_a_block_gives_back_exactly_what_it_holds(columns: Columns) -> None:
    assert same(decodeBlock(encodeBlock(columns)), columns)


@settings(max_examples=200, deadline=None)
@given(st.lists(columnsOf(maxSize=8), max_size=6))
def test_fresh_rows_give_back_their_readings_alone_and_together(parts: List[Columns]) -> None:
    rows = [encodeFresh(p) for p in parts]
    for row, part in zip(rows, parts):
        assert same(decodeFresh(row), part)
    together = Columns.empty()
    for part in parts:
        together.extend(part)
    assert same(decodeFreshMany(rows), together)


@settings(max_examples=400, deadline=None)
@given(columnsOf(), st.sampled_from([MINUTE, 60 * MINUTE]))
def test_rollups_equal_the_fold_of_one_reading_at_a_time(columns: Columns, width: int) -> None:
    """
    Run by run, out-of-order readings and equal times included: the same
    counts, extremes, last values and (bit for bit) sums as the fold.
    """
    assert rollups(columns, width) == foldOneByOne(columns, width)


def test_a_bucket_met_again_out_of_order_merges_into_the_first_run() -> None:
    base = 1_700_000_000_000_000 - 1_700_000_000_000_000 % MINUTE
    columns = Columns(
        [1, 2, 3, 4], [base + 5, base + MINUTE, base + 9, base + 9], [-1] * 4,
        [1.5, 7.0, -2.0, 4.0], [base] * 4, [0] * 4,
    )
    assert rollups(columns, MINUTE) == {
        base: Rollup(3, -2.0, 4.0, 3.5, base + 9, 4.0),
        base + MINUTE: Rollup(1, 7.0, 7.0, 7.0, base + MINUTE, 7.0),
    }


@settings(max_examples=200, deadline=None)
@given(columnsOf(maxSize=40))
def test_fresh_bytes_are_the_six_little_endian_arrays_of_schema_2(columns: Columns) -> None:
    """
    A fresh row's bytes are what schema 2 defined them as (and stores
    already hold): the header, then six little-endian arrays, q q q d q i.
    """
    import struct
    from array import array

    body = b""
    for code, values in zip("qqqdqi", columns):
        part = array(code, values)
        if sys.byteorder != "little":
            part.byteswap()
        body += part.tobytes()
    assert encodeFresh(columns) == struct.pack("<BI", 1, len(columns.ids)) + body


def test_a_number_too_large_for_its_column_is_an_overflow() -> None:
    """
    The store classifies OverflowError (a refused batch); nothing else may
    come out of encoding a column.
    """
    with pytest.raises(OverflowError):
        encodeFresh(Columns([1], [2**63], [0], [1.0], [1], [0]))


@st.composite
def runsOf(draw: st.DrawFn) -> tuple:
    """
    One run as the parser leaves it: first id, receive time, origin, then
    ascending positions, nanosecond times (some missing), seqs (or none),
    values.
    """
    n = draw(st.integers(1, 12))
    positions = sorted(draw(st.sets(st.integers(0, 2**32 - 1), min_size=n, max_size=n)))
    times = [
        draw(st.one_of(st.just(NO_TIME), st.integers(-9223372036 * 10**9, 9223372036 * 10**9),
                       st.integers(1_700_000_000_000_000_000, 1_700_000_000_000_010_000)))
        for _ in range(n)
    ]
    seqs = [draw(st.one_of(st.just(NO_SEQ), st.integers(0, 2**63 - 1))) for _ in range(n)]
    values = [draw(finite) for _ in range(n)]
    return (draw(st.integers(0, 2**40)), draw(st.integers(0, 2**62)), draw(st.integers(0, 2**31 - 1)),
            positions, times, seqs, values)


def expected(runs: List[tuple]) -> Columns:
    """
    The definition of a runs row's readings: ids are the first id plus the
    positions; a time is the parser's seconds (ns / 10**9) as microseconds,
    or the receive time when missing.
    """
    out = Columns.empty()
    for first, received, origin, positions, times, seqs, values in runs:
        for position, ns, seq, value in zip(positions, times, seqs, values):
            out.ids.append(first + position)
            out.ts.append(received if ns == NO_TIME else toMicroseconds(ns / 1_000_000_000))
            out.seqs.append(seq)
            out.values.append(value)
            out.received.append(received)
            out.origins.append(origin)
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(runsOf(), min_size=1, max_size=3), min_size=1, max_size=4))
def test_runs_rows_give_back_their_readings_alone_and_together(rows: List[List[tuple]]) -> None:
    """
    Times are converted when read, exactly as the per-reading path converts
    them when written; rows alone and together, mixed with plain fresh
    rows in any order, read back as what they hold.
    """
    encoded = [runsRow([encodeRun(*run) for run in runs], sum(len(run[3]) for run in runs)) for runs in rows]
    for data, runs in zip(encoded, rows):
        assert same(decodeRuns([data]), expected(runs))
    allRuns = [run for runs in rows for run in runs]
    assert same(decodeRuns(encoded), expected(allRuns))
    plain = expected(rows[0])
    mixed = [encodeFresh(plain)] + encoded + [encodeFresh(plain)]
    together = Columns.empty()
    together.extend(plain)
    together.extend(expected(allRuns))
    together.extend(plain)
    assert same(decodeFreshMany(mixed), together)


def test_a_damaged_runs_row_is_a_codec_error() -> None:
    run = encodeRun(1, 2, 3, [0, 1], [NO_TIME, 5], [NO_SEQ, 7], [1.0, 2.0])
    good = runsRow([run], 2)
    assert decodeRuns([good]).ids == [1, 2]
    for damaged in (good[:-1], good + b"\0", runsRow([run], 3), runsRow([run[:20]], 2), encodeFresh(Columns.empty())):
        with pytest.raises(CodecError):
            decodeRuns([damaged])
    with pytest.raises(OverflowError):
        encodeRun(1, 2, 3, [2**32], [0], [0], [0.0])
