"""
Properties of the fleet's SQL (sensornet.store.fleet) against the pure
definitions, with Hypothesis: a series' state as the database computes it
equals L{Cadence.state}; the names a prefix or glob filter keeps are those
whose text starts with the prefix or matches the glob, whatever characters
they hold (non-ASCII, the glob's own metacharacters, LIKE's and GLOB's);
keyset pages over any names visit each once, in code point order. On
SQLite in memory, and on PostgreSQL with fewer examples.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any, List

from hypothesis import given, settings
from hypothesis import strategies as st

from sensornet.fleet.states import Cadence
from sensornet.store import fleet
from sensornet.store.sqlite import splitStatements

NAME_CHARS = st.sampled_from(list("ab-_%*?[]\\.Zzé€😀") + ["\u00a0", "\U0010ffff"])
NAMES = st.lists(st.text(NAME_CHARS, min_size=1, max_size=6), min_size=1, max_size=25, unique=True)


def sqliteFleet(names: List[str]) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", isolation_level=None)
    for statement in splitStatements(
        "CREATE TABLE sensors (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL);\n"
        "CREATE TABLE series (id INTEGER PRIMARY KEY, sensor INTEGER NOT NULL, kind TEXT NOT NULL, unit TEXT NOT NULL "
        "DEFAULT '', value REAL, ts INTEGER, count INTEGER NOT NULL DEFAULT 0, first_seen INTEGER, last_seen INTEGER, "
        "max_seq INTEGER NOT NULL DEFAULT -1, policy INTEGER NOT NULL DEFAULT 0, UNIQUE (sensor, kind));"
    ):
        db.execute(statement)
    for i, name in enumerate(names, start=1):
        db.execute("INSERT INTO sensors (id, name, created_at) VALUES (?, ?, 0)", (i, name))
        db.execute("INSERT INTO series (sensor, kind, count, first_seen, last_seen) VALUES (?, 't', 2, 0, 10)", (i,))
    return db


def globMatches(glob: str, name: str) -> bool:
    pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.fullmatch(pattern, name, re.DOTALL) is not None


def listed(db: Any, dialect: fleet.Dialect, where: fleet.SensorFilter, sort: str = "name", limit: int = 1000) -> List[str]:
    out: List[str] = []
    after = None
    for _ in range(1000):
        rows, after = fleet.sensorsPage(db, dialect, Cadence(), 100.0, where, sort, limit, after)
        out += [r["sensor"] for r in rows]
        if after is None:
            return out
    raise AssertionError("paging did not end")


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(1, 10_000),
    first=st.integers(0, 10**12),
    gap=st.integers(0, 10**12),
    age=st.integers(-10**9, 10**13),
    expected=st.one_of(st.none(), st.floats(0.001, 10**6)),
    silentAfter=st.floats(2, 1000),
)
def test_the_database_decides_states_as_the_python_form(count, first, gap, age, expected, silentAfter):
    """
    For any history (microseconds), clock and cadence, the SQL CASE gives
    the state L{Cadence.stateMicros} gives.
    """
    cadence = Cadence(expected=expected, silentAfter=silentAfter)
    last = first + gap
    now = last + age
    db = sqliteFleet(["x"])
    db.execute("UPDATE series SET count = ?, first_seen = ?, last_seen = ?", (count, first, last))
    case, _ = fleet._stateSQL(fleet.SQLITE, cadence, now / 1_000_000)
    # The SQL form takes now rounded to a microsecond, as the Python one.
    nowMicros = cadence.sqlParameters(now / 1_000_000)["now"]
    (state,) = db.execute(f"SELECT {case} FROM sensors s LEFT JOIN series se ON se.sensor = s.id").fetchone()
    assert state == cadence.stateMicros(nowMicros, count, first, last)


@settings(max_examples=300, deadline=None)
@given(names=NAMES, data=st.data())
def test_prefix_and_glob_keep_exactly_the_matching_names_sqlite(names, data):
    """
    A prefix keeps the names starting with it; a glob those it matches
    (only * and ? are wildcards); both are served as an index range.
    """
    db = sqliteFleet(names)
    prefix = data.draw(st.one_of(st.sampled_from(names).map(lambda n: n[: len(n) // 2 + 1]),
                                 st.text(NAME_CHARS, min_size=1, max_size=3)))
    glob = data.draw(st.one_of(st.sampled_from(names), st.text(NAME_CHARS, min_size=1, max_size=5)))
    byCodePoint = sorted(names, key=lambda n: n.encode("utf-8"))
    assert listed(db, fleet.SQLITE, fleet.SensorFilter(prefix=prefix)) == [n for n in byCodePoint if n.startswith(prefix)]
    assert listed(db, fleet.SQLITE, fleet.SensorFilter(glob=glob)) == [n for n in byCodePoint if globMatches(glob, n)]


@settings(max_examples=100, deadline=None)
@given(names=NAMES, limit=st.integers(1, 7), sort=st.sampled_from(fleet.SORTS))
def test_keyset_pages_visit_every_name_once_in_order_sqlite(names, limit, sort):
    db = sqliteFleet(names)
    got = listed(db, fleet.SQLITE, fleet.SensorFilter(), sort, limit)
    want = sorted(names, key=lambda n: n.encode("utf-8"), reverse=sort == "-name")
    if sort.endswith("last_seen"):
        assert sorted(got) == sorted(names)
    else:
        assert got == want


def test_postgresql_filters_and_pages_agree_with_the_definitions(postgresql_db: str):
    """
    The same properties on PostgreSQL (LIKE with escapes, COLLATE "C"),
    for a fixed awkward set of names and every prefix and glob drawn from
    them.
    """
    import psycopg

    from sensornet.store import openStore

    openStore(postgresql_db).close()
    names = ["a", "A", "a%b", "a_b", "a*b", "a?b", "a[b]", "a\\b", "aé", "a€", "a😀", "b", "ab", "a\U0010ffff",
             "\U0010ffff", "Z-1", "z-1"]
    with psycopg.connect(postgresql_db, autocommit=True) as conn:
        for i, name in enumerate(names, start=1):
            conn.execute("INSERT INTO sensors (id, name, created_at) VALUES (%s, %s, 0)", (i, name))
            conn.execute("INSERT INTO series (sensor, kind, count, first_seen, last_seen) VALUES (%s, 't', 2, 0, 10)",
                         (i,))
        byCodePoint = sorted(names, key=lambda n: n.encode("utf-8"))
        for limit in (1, 3, 100):
            assert listed(conn, fleet.POSTGRESQL, fleet.SensorFilter(), "name", limit) == byCodePoint
            assert listed(conn, fleet.POSTGRESQL, fleet.SensorFilter(), "-name", limit) == byCodePoint[::-1]
        patterns = set(names) | {n[:1] for n in names} | {"a*", "*b", "a?b", "*", "?", "a%*", "a_?"}
        for text in sorted(patterns):
            assert listed(conn, fleet.POSTGRESQL, fleet.SensorFilter(prefix=text)) == [
                n for n in byCodePoint if n.startswith(text)], text
            assert listed(conn, fleet.POSTGRESQL, fleet.SensorFilter(glob=text)) == [
                n for n in byCodePoint if globMatches(text, n)], text
