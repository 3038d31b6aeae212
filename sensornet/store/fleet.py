"""
The fleet's read SQL, per backend: one page of series (keyset paging over
the sort key and the series' (sensor, kind), never OFFSET), the count for a
filter, the summary by state and kind, and sparklines from the rollups.

Each function takes an open DB-API connection (C{sqlite3} or psycopg, in
autocommit mode as the stores keep them) and a L{Dialect}; it runs on the
caller's thread (the query side's, L{sensornet.store.queries.StoreQueries})
and raises L{sensornet.store.StoreUnavailable} or
L{sensornet.store.StoreRejected} as the stores do.

Series states (L{sensornet.fleet.states}) are computed by the database for
filters and counts, from the same numbers as the Python form
(L{sensornet.fleet.states.Cadence.sqlParameters}), in integer arithmetic.

Cost, at 200,000 series: a page sorted by name costs what the page costs
(the sensor name index is walked from the cursor on; a prefix or a glob's
literal prefix narrows it to a range); a page sorted by C{last_seen}, a
state filter or C{total} read every series the other filters leave (no
index on C{last_seen}: every batch updates it, and an index would cost every
write, on PostgreSQL its HOT updates too). C{total} is capped at
L{TOTAL_CAP}.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

from ..fleet.states import LATE, LIVE, NEVER, SILENT, STATES, Cadence
from .base import StoreError
from .layout import foldRollups, fromMicroseconds, rollupTable, toMicroseconds

__all__ = [
    "Dialect",
    "SQLITE",
    "POSTGRESQL",
    "SORTS",
    "TOTAL_CAP",
    "MAX_PAGE",
    "MAX_SPARKLINES",
    "countSensors",
    "SensorFilter",
    "globPrefix",
    "validateGlob",
    "encodeSensorCursor",
    "decodeSensorCursor",
    "sensorsPage",
    "fleetSummary",
    "silentSeries",
    "sparklineRows",
]

#: The sort orders of a page: by name (then kind), or by when the series
#: was last seen (then name, kind); C{-} for descending.
SORTS = ("name", "-name", "last_seen", "-last_seen")

#: C{total} counts at most this many series, and says C{total_capped} when
#: there are more: a count reads every series the filter leaves.
TOTAL_CAP = 1_000_000

#: The sort key of a series never seen, sorting by C{last_seen}: before
#: every real time (the earliest a store takes is -62,135,596,800 s).
_NEVER_SEEN = -(2**62)

#: The most rows one page holds (C{limit}'s maximum); 100 by default.
MAX_PAGE = 1000

#: The most series one sparkline query takes.
MAX_SPARKLINES = 200

#: A glob names at most this many characters (sensor names are at most 128).
MAX_PATTERN = 256


@dataclass(frozen=True)
class Dialect:
    """
    What differs between the backends' SQL.

    @ivar name: C{"sqlite"} or C{"postgresql"}.
    @ivar mark: The parameter placeholder.
    @ivar collate: Appended to a text expression compared or sorted: names
        compare by code point on both backends (SQLite's BINARY; PostgreSQL's
        "C", whatever the database's locale), so a prefix is a range.
    """

    name: str
    mark: str
    collate: str
    greatest: str
    least: str
    classify: Callable[[BaseException], StoreError]
    errors: Tuple[Type[BaseException], ...]


def _sqliteClassify(error: BaseException) -> StoreError:
    from .sqlite import classify

    return classify(error)


def _postgresqlClassify(error: BaseException) -> StoreError:
    from .postgresql import classify

    return classify(error)


def _sqliteErrors() -> Tuple[Type[BaseException], ...]:
    import sqlite3

    return (sqlite3.Error, OverflowError)


def _postgresqlErrors() -> Tuple[Type[BaseException], ...]:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - a server without PostgreSQL support
        return (OverflowError,)
    return (psycopg.Error, OverflowError)


SQLITE = Dialect("sqlite", "?", "", "max", "min", _sqliteClassify, _sqliteErrors())
POSTGRESQL = Dialect("postgresql", "%s", ' COLLATE "C"', "greatest", "least", _postgresqlClassify,
                     _postgresqlErrors())


def validateGlob(pattern: str) -> str:
    """
    C{pattern} if it is a sensor-name glob: C{*} matches any run of
    characters, C{?} one character, every other character itself; at most
    L{MAX_PATTERN} characters, no control characters.

    @raise ValueError: It is not.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("a glob must not be empty")
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"a glob has at most {MAX_PATTERN} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in pattern):
        raise ValueError("a glob must not hold control characters")
    return pattern


def globPrefix(pattern: str) -> str:
    """
    The literal text every name matching the glob C{pattern} starts with.
    """
    for i, c in enumerate(pattern):
        if c in "*?":
            return pattern[:i]
    return pattern


def _successor(prefix: str) -> Optional[str]:
    """
    The least string greater than every string starting with C{prefix}, in
    code point order; L{None} when there is none (C{prefix} is made only of
    U+10FFFF).
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


def _sqliteGlob(pattern: str) -> str:
    # SQLite's GLOB knows [...] classes: a literal bracket is written as a
    # class of one.
    return pattern.replace("[", "[[]")


def _postgresqlLike(pattern: str) -> str:
    out = []
    for c in pattern:
        if c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        elif c in "%_\\":
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


@dataclass(frozen=True)
class SensorFilter:
    """
    Which series a page or a count takes: every one of the given conditions.

    @ivar prefix: Sensor names starting with this text.
    @ivar glob: Sensor names matching this glob (L{validateGlob}).
    @ivar kind: Series of this kind only (never-seen sensors have none).
    @ivar state: Series in this state (one of L{STATES}) at C{now}.
    """

    prefix: Optional[str] = None
    glob: Optional[str] = None
    kind: Optional[str] = None
    state: Optional[str] = None

    def __post_init__(self) -> None:
        if self.glob is not None:
            validateGlob(self.glob)
        if self.state is not None and self.state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, not {self.state!r}")


def encodeSensorCursor(sort: str, key: Sequence[Any]) -> str:
    """
    The opaque cursor after a row whose sort key is C{key} (the sort value,
    then name and kind), for the sort order C{sort}.
    """
    text = json.dumps([sort, *key], separators=(",", ":"), ensure_ascii=True)
    return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii").rstrip("=")


def decodeSensorCursor(cursor: str, sort: str) -> Tuple[Any, ...]:
    """
    The sort key a cursor from L{encodeSensorCursor} holds.

    @raise ValueError: It is not one, or was made for another sort order.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii"))
    except (ValueError, UnicodeError, binascii.Error):
        raise ValueError("not a cursor of /api/sensors") from None
    if not isinstance(value, list) or not value or value[0] != sort:
        raise ValueError("the cursor was made for another sort order: follow it with the same sort")
    key = tuple(value[1:])
    name = "name" if sort.lstrip("-") == "name" else "last_seen"
    if name == "name":
        ok = len(key) == 2 and all(isinstance(k, str) for k in key)
    else:
        ok = (
            len(key) == 3 and isinstance(key[0], int) and not isinstance(key[0], bool)
            and -(2**63) < key[0] < 2**63 and all(isinstance(k, str) for k in key[1:])
        )
    if not ok:
        raise ValueError("not a cursor of /api/sensors")
    return key


class _Query:
    """
    An SQL text under construction with its parameters, in order.
    """

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.where: List[str] = []
        self.params: List[Any] = []

    def add(self, condition: str, *params: Any) -> None:
        self.where.append(condition.replace("?", self.dialect.mark))
        self.params.extend(params)


def _intervalSQL(dialect: Dialect, p: Dict[str, int]) -> str:
    # Literal integers (computed here, never from a request) keep the
    # statement's parameters simple; they are the same for every query of
    # a server, so a statement cache still reuses it.
    if p["fixed"] >= 0:
        return str(p["fixed"])
    learned = (
        f"CASE WHEN se.count > 1 THEN (se.last_seen - se.first_seen) / (se.count - 1) ELSE {p['default']} END"
    )
    return f"{dialect.greatest}({p['lo']}, {dialect.least}({p['hi']}, {learned}))"


def _stateSQL(dialect: Dialect, cadence: Cadence, now: float) -> Tuple[str, Dict[str, str]]:
    """
    A CASE expression giving each joined row's state, and the condition for
    each state alone. The thresholds are C{late_milli * interval // 1000}
    microseconds, as in L{Cadence.stateMicros}.
    """
    p = cadence.sqlParameters(now)
    interval = _intervalSQL(dialect, p)
    age = f"({p['now']} - se.last_seen)"
    late = f"({p['late_milli']} * {interval} / 1000)"
    silent = f"({p['silent_milli']} * {interval} / 1000)"
    case = (
        f"CASE WHEN se.id IS NULL THEN '{NEVER}' WHEN {age} <= {late} THEN '{LIVE}' "
        f"WHEN {age} <= {silent} THEN '{LATE}' ELSE '{SILENT}' END"
    )
    conditions = {
        NEVER: "se.id IS NULL",
        LIVE: f"se.id IS NOT NULL AND {age} <= {late}",
        LATE: f"se.id IS NOT NULL AND {age} > {late} AND {age} <= {silent}",
        SILENT: f"se.id IS NOT NULL AND {age} > {silent}",
    }
    return case, conditions


_FROM = "FROM sensors s LEFT JOIN series se ON se.sensor = s.id AND se.count > 0"


def _filtered(dialect: Dialect, cadence: Cadence, now: float, where: SensorFilter) -> _Query:
    q = _Query(dialect)
    c = dialect.collate
    literal = globPrefix(where.glob) if where.glob is not None else None
    # Names in range of the longer literal prefix: an index range.
    low = max((t for t in (where.prefix, literal) if t), key=len, default=None)
    if where.prefix and literal and not (where.prefix.startswith(literal) or literal.startswith(where.prefix)):
        q.add("1 = 0")
    if low:
        q.add(f"s.name{c} >= ?", low)
        high = _successor(low)
        if high is not None:
            q.add(f"s.name{c} < ?", high)
    if where.glob is not None:
        if literal == where.glob:
            q.add(f"s.name{c} = ?", where.glob)
        elif dialect is SQLITE:
            q.add("s.name GLOB ?", _sqliteGlob(where.glob))
        else:
            q.add(f"s.name{c} LIKE ? ESCAPE '\\'", _postgresqlLike(where.glob))
    if where.kind is not None:
        q.add("se.kind = ?", where.kind)
    if where.state is not None:
        q.add(_stateSQL(dialect, cadence, now)[1][where.state])
    return q


def _orderAndKey(dialect: Dialect, sort: str) -> Tuple[List[str], bool]:
    c = dialect.collate
    name = f"s.name{c}"
    kind = f"coalesce(se.kind, ''){c}"
    if sort.lstrip("-") == "name":
        columns = [name, kind]
    else:
        columns = [f"coalesce(se.last_seen, {_NEVER_SEEN})", name, kind]
    return columns, sort.startswith("-")


def _run(connection: Any, dialect: Dialect, sql: str, params: Sequence[Any]) -> List[Sequence[Any]]:
    try:
        return list(connection.execute(sql, params).fetchall())
    except dialect.errors as e:
        raise dialect.classify(e) from e


def sensorsPage(
    connection: Any,
    dialect: Dialect,
    cadence: Cadence,
    now: float,
    where: SensorFilter,
    sort: str = "name",
    limit: int = 100,
    after: Optional[Sequence[Any]] = None,
) -> Tuple[List[Dict[str, Any]], Optional[Tuple[Any, ...]]]:
    """
    One page of series matching C{where}, in C{sort} order, after the row
    whose sort key is C{after} (from the previous page's cursor).

    A sensor with no stored series (provisioned, never seen) is one row
    with C{kind} L{None} and state C{never}.

    @return: The rows (dicts with keys C{sensor}, C{kind}, C{unit},
        C{value}, C{ts}, C{count}, C{first_seen}, C{last_seen} in seconds,
        C{state}, C{interval} in seconds or L{None}), and the sort key of
        the last one when more rows follow, else L{None}.
    """
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
    q = _filtered(dialect, cadence, now, where)
    columns, descending = _orderAndKey(dialect, sort)
    if after is not None:
        if len(after) != len(columns):
            raise ValueError("the cursor was made for another sort order")
        op = "<" if descending else ">"
        marks = ", ".join("?" for _ in columns)
        if sort.lstrip("-") == "name":
            # A bound on the name alone lets the name index seek to the
            # cursor; the row comparison then skips the rows before it.
            q.add(f"s.name{dialect.collate} {op}= ?", after[0])
        q.add(f"({', '.join(columns)}) {op} ({marks})", *after)
    direction = " DESC" if descending else ""
    order = ", ".join(column + direction for column in columns)
    sql = (
        "SELECT s.name, se.kind, se.unit, se.value, se.ts, se.count, se.first_seen, se.last_seen "
        f"{_FROM} {'WHERE ' + ' AND '.join(q.where) if q.where else ''} "
        f"ORDER BY {order} LIMIT {int(limit) + 1}"
    )
    rows = _run(connection, dialect, sql, q.params)
    more = len(rows) > limit
    del rows[limit:]
    nowMicros = toMicroseconds(now)
    out = []
    for name, kind, unit, value, ts, count, first, last in rows:
        interval = cadence.intervalMicros(count or 0, first, last)
        out.append({
            "sensor": name,
            "kind": kind,
            "unit": unit or "",
            "value": value,
            "ts": fromMicroseconds(ts) if ts is not None else None,
            "count": count or 0,
            "first_seen": fromMicroseconds(first) if first is not None else None,
            "last_seen": fromMicroseconds(last) if last is not None else None,
            "state": cadence.stateMicros(nowMicros, count or 0, first, last),
            "interval": interval / 1_000_000 if interval is not None else None,
            "_key": (
                (name, kind or "") if sort.lstrip("-") == "name"
                else (last if last is not None else _NEVER_SEEN, name, kind or "")
            ),
        })
    nextKey = out[-1]["_key"] if more and out else None
    for row in out:
        del row["_key"]
    return out, nextKey


def countSensors(
    connection: Any, dialect: Dialect, cadence: Cadence, now: float, where: SensorFilter, cap: int = TOTAL_CAP
) -> Tuple[int, bool]:
    """
    How many rows L{sensorsPage} would list for C{where} in all, at most
    C{cap}; and whether there are more than C{cap}.
    """
    q = _filtered(dialect, cadence, now, where)
    sql = (
        f"SELECT count(*) FROM (SELECT 1 {_FROM} {'WHERE ' + ' AND '.join(q.where) if q.where else ''} "
        f"LIMIT {int(cap) + 1}) AS counted"
    )
    total = int(_run(connection, dialect, sql, q.params)[0][0])
    return min(total, cap), total > cap


def silentSeries(
    connection: Any,
    dialect: Dialect,
    cadence: Cadence,
    now: float,
    glob: str,
    kind: Optional[str],
    intervals: float,
    limit: int,
) -> List[Tuple[str, str, float]]:
    """
    Up to C{limit} series whose sensor matches C{glob} (and of C{kind}, if
    given) that have sent nothing for more than C{intervals} of their
    expected intervals at C{now}: (sensor, kind, last_seen in seconds), in
    name order. Series never seen are not silent here.
    """
    p = cadence.sqlParameters(now)
    q = _filtered(dialect, cadence, now, SensorFilter(glob=glob, kind=kind))
    milli = int(round(intervals * 1000))
    q.add(f"se.id IS NOT NULL AND ({p['now']} - se.last_seen) > ({milli} * {_intervalSQL(dialect, p)} / 1000)")
    c = dialect.collate
    rows = _run(
        connection, dialect,
        f"SELECT s.name, se.kind, se.last_seen {_FROM} WHERE {' AND '.join(q.where)} "
        f"ORDER BY s.name{c}, se.kind{c} LIMIT {int(limit)}",
        q.params,
    )
    return [(name, kind, fromMicroseconds(last)) for name, kind, last in rows]


def fleetSummary(connection: Any, dialect: Dialect, cadence: Cadence, now: float) -> Dict[str, Any]:
    """
    The fleet at C{now} in one grouped pass over the series: C{sensors}
    (names known), C{series} (with readings), C{states} (series per state,
    C{never} counting sensors with no series) and C{kinds} (per kind: its
    C{series} and the count in each state but C{never}).
    """
    case, _ = _stateSQL(dialect, cadence, now)
    grouped = _run(
        connection, dialect,
        f"SELECT se.kind, {case} AS state, count(*) FROM series se WHERE se.count > 0 GROUP BY se.kind, state",
        (),
    )
    counts = _run(
        connection, dialect,
        "SELECT (SELECT count(*) FROM sensors), (SELECT count(*) FROM sensors s WHERE NOT EXISTS "
        "(SELECT 1 FROM series se WHERE se.sensor = s.id AND se.count > 0))",
        (),
    )
    sensors, never = (int(n) for n in counts[0])
    states = {state: 0 for state in STATES}
    states[NEVER] = never
    kinds: Dict[str, Dict[str, int]] = {}
    series = 0
    for kind, state, n in grouped:
        entry = kinds.setdefault(kind, {"series": 0, LIVE: 0, LATE: 0, SILENT: 0, NEVER: 0})
        entry["series"] += int(n)
        entry[state] += int(n)
        states[state] += int(n)
        series += int(n)
    return {"sensors": sensors, "series": series, "states": states, "kinds": dict(sorted(kinds.items()))}


def sparklineRows(
    connection: Any,
    dialect: Dialect,
    series: Sequence[Tuple[str, str]],
    since: float,
    until: float,
    step: str,
) -> List[Dict[str, Any]]:
    """
    The rollup buckets of C{step} over [C{since}, C{until}) of every
    (sensor, kind) in C{series}, in one query per table (rollups, then the
    not yet compacted rows), as L{sensornet.store.base.Store.rollups} shapes
    them. Unknown series are left out.
    """
    if not series:
        return []
    width, table = rollupTable(step)
    sinceUs, untilUs = toMicroseconds(since), toMicroseconds(until)
    start = sinceUs - sinceUs % width
    m = dialect.mark
    pairs = " OR ".join(f"(s.name = {m} AND se.kind = {m})" for _ in series)
    params: List[Any] = [value for pair in series for value in pair]
    ids = _run(
        connection, dialect,
        f"SELECT se.id, s.name, se.kind FROM series se JOIN sensors s ON s.id = se.sensor WHERE {pairs}",
        params,
    )
    if not ids:
        return []
    names = {int(i): (name, kind) for i, name, kind in ids}
    idList = ", ".join(str(i) for i in names)
    if dialect is POSTGRESQL:
        connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    else:
        connection.execute("BEGIN")
    try:
        stored = _run(
            connection, dialect,
            f"SELECT series, bucket, count, lo, hi, total, last_ts, last FROM {table} "
            f"WHERE series IN ({idList}) AND bucket >= {m} AND bucket < {m}",
            [start, untilUs],
        )
        fresh = _run(
            connection, dialect,
            f"SELECT series, data FROM fresh WHERE series IN ({idList}) AND t1 >= {m} AND t0 < {m} ORDER BY id",
            [start, untilUs + (-untilUs) % width],
        )
    finally:
        try:
            connection.execute("ROLLBACK")
        except dialect.errors:
            pass
    return foldRollups(stored, [(s, bytes(d)) for s, d in fresh], width, sinceUs, untilUs, names.__getitem__)
