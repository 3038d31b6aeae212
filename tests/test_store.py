"""
The blocking store backends, each test run against SQLite and a real
PostgreSQL (the C{store_url} fixture from C{tests/pgserver.py}).
"""

from __future__ import annotations

import math
import threading
from typing import List

import pytest

from zope.interface.verify import verifyObject

from sensornet.interfaces import IStore
from sensornet.reading import Reading
from sensornet.store import (
    DEFAULT_STORE,
    StoreRejected,
    StoreUnavailable,
    WriteResult,
    openStore,
    parseStoreURL,
    storeFromURL,
)
from sensornet.store.base import loadMigrations

T0 = 1_718_100_000.0


def reading(sensor: str = "s1", seq: int | None = 0, value: float = 20.0, ts: float | None = T0, **kw) -> Reading:
    kw.setdefault("kind", "temperature")
    kw.setdefault("unit", "C")
    kw.setdefault("received_at", T0 + 0.5)
    kw.setdefault("peer", "127.0.0.1:4000")
    return Reading(sensor, kw.pop("kind"), value, kw.pop("unit"), ts=ts, seq=seq, **kw)


@pytest.fixture
def store(store_url):
    s = openStore(store_url)
    yield s
    s.close()


def count(store) -> int:
    return len(store.readings(limit=1_000_000))


def test_both_backends_provide_the_store_interface(store) -> None:
    """
    An open store of either backend provides every method and attribute of
    IStore, the seam the writer and the query side are written against.
    """
    assert verifyObject(IStore, store)


# -- URLs ------------------------------------------------------------------


def test_parse_store_url_accepts_both_backends() -> None:
    """
    sqlite:PATH, sqlite::memory:, postgresql:// and postgres:// parse.
    """
    assert parseStoreURL(DEFAULT_STORE) == ("sqlite", "sensornet.db", {"synchronous": "full"})
    assert parseStoreURL("sqlite:/var/lib/x.db").target == "/var/lib/x.db"
    assert parseStoreURL("sqlite::memory:").target == ":memory:"
    assert parseStoreURL("sqlite:x.db?synchronous=full").options == {"synchronous": "full"}
    assert parseStoreURL("sqlite:x.db?synchronous=NORMAL").options == {"synchronous": "normal"}
    assert parseStoreURL("postgresql://u:p@db.example:5432/sensornet").backend == "postgresql"
    assert parseStoreURL("postgres://u@localhost/db").backend == "postgresql"


@pytest.mark.parametrize(
    "url",
    ["", "sensornet.db", "mysql://x/y", "sqlite:", "sqlite:///x.db", "sqlite:x.db?journal=off",
     "postgresql:x", "postgresql://u@h:notaport/db"],
)
def test_parse_store_url_refuses_others(url: str) -> None:
    """
    Anything else is a ValueError whose message says what to write.
    """
    with pytest.raises(ValueError) as e:
        parseStoreURL(url)
    assert str(e.value)


def test_store_from_url_does_not_connect(tmp_path) -> None:
    """
    storeFromURL makes a store without touching the database; openStore
    opens it.
    """
    path = tmp_path / "x.db"
    store = storeFromURL(f"sqlite:{path}")
    assert not path.exists()
    store.open()
    assert path.exists()
    store.close()


# -- schema ----------------------------------------------------------------


def test_schema_created_versioned_and_reopen_idempotent(store_url) -> None:
    """
    Opening creates the schema and records its version; opening again (the
    store, or a new one) changes nothing and keeps the data.
    """
    latest = len(loadMigrations("sqlite"))
    assert latest == len(loadMigrations("postgresql")) >= 1
    store = openStore(store_url)
    assert store.schemaVersion() == latest
    store.write([reading()])
    store.open()  # already open: nothing happens
    store.close()
    again = openStore(store_url)
    try:
        assert again.schemaVersion() == latest
        assert count(again) == 1
    finally:
        again.close()


def test_concurrent_opens_migrate_once(store_url) -> None:
    """
    Several stores opening one empty database at the same moment (servers
    starting together) all succeed, and the schema is applied once.
    """
    errors: List[BaseException] = []
    stores = [storeFromURL(store_url) for _ in range(6)]
    barrier = threading.Barrier(len(stores))

    def openOne(s) -> None:
        barrier.wait()
        try:
            s.open()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=openOne, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        assert {s.schemaVersion() for s in stores} == {len(loadMigrations("sqlite"))}
        stores[0].write([reading()])
        assert count(stores[-1]) == 1
    finally:
        for s in stores:
            s.close()


def test_closed_store_is_unavailable(store_url) -> None:
    """
    Writing to a store that is not open is a transient failure.
    """
    store = storeFromURL(store_url)
    with pytest.raises(StoreUnavailable):
        store.write([reading()])
    assert store.ping() is True  # ping connects
    store.close()
    store.close()  # harmless twice


def test_unreachable_store_is_unavailable(tmp_path) -> None:
    """
    A database that cannot be reached raises StoreUnavailable, and ping
    says False.
    """
    for url in [f"sqlite:{tmp_path}/missing/dir/x.db", "postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2"]:
        store = storeFromURL(url)
        with pytest.raises(StoreUnavailable):
            store.open()
        assert store.ping() is False


# -- writing ---------------------------------------------------------------


def test_duplicates_stored_once_and_reported(store) -> None:
    """
    The same (sensor, seq) twice is stored once and reported as a duplicate,
    in a later call or in the same one; the same seq of another sensor is
    not a duplicate.
    """
    assert store.write([reading(seq=1), reading(seq=2)]) == WriteResult(2, 0, ())
    result = store.write([reading(seq=2), reading(seq=3), reading("s2", seq=2), reading(seq=3)])
    assert result == WriteResult(2, 2, (0, 3))
    assert sorted((r["sensor"], r["seq"]) for r in store.readings()) == [
        ("s1", 1), ("s1", 2), ("s1", 3), ("s2", 2)
    ]


def test_readings_without_seq_always_stored(store) -> None:
    """
    Readings without seq cannot be recognised as resent: each is stored.
    """
    assert store.write([reading(seq=None), reading(seq=None)]) == WriteResult(2, 0, ())
    assert store.write([reading(seq=None)]).stored == 1
    assert count(store) == 3


def test_columns_round_trip(store) -> None:
    """
    Every column comes back as written; a reading without its own time is
    stored at its reception time.
    """
    store.write([
        reading("a", seq=7, value=-1.25, ts=T0 + 0.125, unit="%", kind="humidity", dialect="graphite",
                peer="10.0.0.1:5", received_at=T0 + 1),
        reading("a", seq=None, ts=None, received_at=T0 + 2),
    ])
    rows = store.readings()
    for row in rows:
        row.pop("id")
        row.pop("_position")
    assert rows == [
        {"sensor": "a", "kind": "humidity", "value": -1.25, "unit": "%", "ts": T0 + 0.125, "seq": 7,
         "received_at": T0 + 1, "peer": "10.0.0.1:5", "dialect": "graphite"},
        {"sensor": "a", "kind": "temperature", "value": 20.0, "unit": "C", "ts": T0 + 2, "seq": None,
         "received_at": T0 + 2, "peer": "127.0.0.1:4000", "dialect": "native"},
    ]


@pytest.mark.parametrize(
    "bad",
    [
        reading(value=math.nan, seq=90),
        reading(value=math.inf, seq=91),
        reading(value=-math.inf, seq=92),
        reading("x" * 129, seq=93),
        reading("", seq=94),
        reading(seq=-1),
        reading(seq=2**63),
        reading("bad\ud800", seq=95),
    ],
    ids=["nan", "inf", "-inf", "long-sensor", "empty-sensor", "negative-seq", "huge-seq", "surrogate"],
)
def test_bad_reading_rejects_the_whole_call(store, bad: Reading) -> None:
    """
    A reading the schema refuses raises StoreRejected, and nothing else of
    that call is committed.
    """
    with pytest.raises(StoreRejected) as e:
        store.write([reading(seq=1), bad, reading(seq=2)])
    assert "\n" not in str(e.value)
    assert count(store) == 0
    assert store.sensors() == []
    # The store is still usable.
    assert store.write([reading(seq=1)]).stored == 1


def test_summary_counts_only_new_readings(store) -> None:
    """
    The sensors table counts stored readings (not duplicates) per (sensor,
    kind), keeps the value of the reading with the latest time, and the
    first and last reception times.
    """
    store.write([
        reading(seq=1, value=1.0, ts=T0 + 10, received_at=T0 + 20),
        reading(seq=2, value=2.0, ts=T0 + 30, received_at=T0 + 21),
        reading(seq=3, value=3.0, ts=T0 + 5, received_at=T0 + 22),
        reading(seq=100, kind="humidity", unit="%", value=50.0, ts=T0, received_at=T0 + 23),
    ])
    store.write([reading(seq=2, value=99.0), reading(seq=4, value=4.0, ts=T0 + 1, received_at=T0 + 24)])
    sensors = store.sensors()
    assert sensors == [
        {"sensor": "s1", "kind": "humidity", "unit": "%", "value": 50.0, "ts": T0, "count": 1,
         "first_seen": T0 + 23, "last_seen": T0 + 23},
        {"sensor": "s1", "kind": "temperature", "unit": "C", "value": 2.0, "ts": T0 + 30, "count": 4,
         "first_seen": T0 + 20, "last_seen": T0 + 24},
    ]
    assert sum(s["count"] for s in sensors) == count(store)


def test_readings_filters(store) -> None:
    """
    readings() filters by sensor, kind and [since, until), in (ts, id)
    order, and honours limit.
    """
    store.write([reading(f"s{i % 3}", seq=i, ts=T0 + i, kind="temperature" if i % 2 else "humidity")
                 for i in range(30)])
    assert [r["seq"] for r in store.readings(sensor="s1")] == list(range(1, 30, 3))
    assert [r["seq"] for r in store.readings(sensor="s1", kind="humidity")] == [4, 10, 16, 22, 28]
    assert [r["seq"] for r in store.readings(since=T0 + 10, until=T0 + 13)] == [10, 11, 12]
    assert [r["seq"] for r in store.readings(limit=4)] == [0, 1, 2, 3]
    assert store.readings(sensor="nobody") == []


def test_paging_with_equal_times_never_repeats_or_skips(store) -> None:
    """
    Paging by position visits every row once, in order, even when many rows
    share one ts.
    """
    store.write([reading(f"s{i % 4}", seq=i, ts=T0 + (i % 5) * 0.001) for i in range(60)])
    seen = []
    after = None
    while True:
        page = store.readings(limit=7, after=after)
        if not page:
            break
        seen.extend(r["id"] for r in page)
        after = page[-1]["_position"]
    everything = store.readings(limit=1000)
    assert seen == [r["id"] for r in everything]
    assert len(set(seen)) == 60
    assert [r["ts"] for r in everything] == sorted(r["ts"] for r in everything)


# -- durability --------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix, expected", [("", 2), ("?synchronous=full", 2), ("?synchronous=normal", 1)],
    ids=["default", "full", "normal"],
)
def test_sqlite_is_durable_unless_told_otherwise(tmp_path, suffix: str, expected: int) -> None:
    """
    The default SQLite store, from its URL or built directly, runs WAL with
    synchronous=FULL (2: the WAL is fsynced at every commit); only an
    explicit ?synchronous=normal gives the weaker mode (1). (That FULL puts
    the fsync before the ack is proved under strace in test_fsync_order.)
    """
    store = openStore(f"sqlite:{tmp_path}/x.db{suffix}")
    try:
        db = store._connection()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == expected
    finally:
        store.close()
    from sensornet.store.sqlite import SQLiteStore

    direct = SQLiteStore(str(tmp_path / "y.db"))
    direct.open()
    try:
        assert direct._connection().execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        direct.close()


def test_postgresql_commits_synchronously_even_when_the_database_says_off(postgresql_db) -> None:
    """
    With synchronous_commit turned off for the database (ALTER DATABASE ...
    SET synchronous_commit = off, which every new session inherits), the
    store's own session still runs with synchronous_commit = on: COMMIT
    waits for the WAL flush, so no reading is acknowledged before it is on
    disk.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    name = conninfo_to_dict(postgresql_db)["dbname"]
    with psycopg.connect(postgresql_db, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    with psycopg.connect(postgresql_db) as plain:
        assert plain.execute("SHOW synchronous_commit").fetchone()[0] == "off"
    store = openStore(postgresql_db)
    try:
        assert store._connection().execute("SHOW synchronous_commit").fetchone()[0] == "on"
        store.write([reading(seq=1)])
        assert store._connection().execute("SHOW synchronous_commit").fetchone()[0] == "on"
    finally:
        store.close()


def test_postgresql_keeps_a_stronger_synchronous_commit(postgresql_db) -> None:
    """
    A setting that already flushes locally (here remote_apply, chosen for
    synchronous standbys) is kept, not weakened to on.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    name = conninfo_to_dict(postgresql_db)["dbname"]
    with psycopg.connect(postgresql_db, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = remote_apply')
    store = openStore(postgresql_db)
    try:
        assert store._connection().execute("SHOW synchronous_commit").fetchone()[0] == "remote_apply"
    finally:
        store.close()


def test_the_origin_cache_stays_bounded_when_sensors_reconnect(store, monkeypatch) -> None:
    """
    Every reconnection is a new origin (the peer has a new port): past
    ORIGIN_CACHE_LIMIT the writer's cache of origin ids is emptied, not
    grown, and readings keep their peers, resends stay duplicates and no
    origin is stored twice after it was forgotten.
    """
    from sensornet.store import base

    monkeypatch.setattr(base, "ORIGIN_CACHE_LIMIT", 5)
    sizes = []
    for k in range(30):
        peer = f"192.0.2.{k % 7}:{40000 + k}"
        result = store.write([
            Reading("roamer", "temperature", float(k), "C", ts=1_790_000_000.0 + k, seq=k, peer=peer),
            Reading("roamer", "humidity", float(k), "%", ts=1_790_000_000.0 + k, seq=1000 + k, peer=peer),
        ])
        assert (result.stored, result.duplicates) == (2, 0)
        sizes.append(len(store._originsByKey))
    assert max(sizes) <= 5 + 2
    # Resent after their origins were forgotten: duplicates, nothing new.
    again = store.write([
        Reading("roamer", "temperature", 0.0, "C", ts=1_790_000_000.0, seq=0, peer="192.0.2.0:40000"),
        Reading("roamer", "temperature", 99.0, "C", ts=1_790_000_099.0, seq=99, peer="192.0.2.0:40000"),
    ])
    assert (again.stored, again.duplicates) == (1, 1)
    rows = store.readings(sensor="roamer", limit=1000)
    peers = {(r["kind"], r["seq"]): r["peer"] for r in rows}
    assert len(rows) == 61
    assert all(peers[("temperature", k)] == f"192.0.2.{k % 7}:{40000 + k}" for k in range(30))
    assert peers[("temperature", 99)] == "192.0.2.0:40000"
    db = store._connection()
    total = db.execute("SELECT count(*) FROM origins").fetchone()[0]
    distinct = db.execute("SELECT count(*) FROM (SELECT DISTINCT unit, peer, dialect FROM origins) AS o").fetchone()[0]
    # Two units for each of the 30 peers; the resend's origin was one of them.
    assert total == distinct == 60


def test_an_origin_records_its_use_once_an_hour_and_one_unused_expires(store) -> None:
    """
    A writer records when it last stored a reading from each origin, at
    most once an hour per origin. Origins unused since a time go (never the
    newest); a writer that still had one in memory plans its batch again
    and stores it under the origin made anew, with its peer.
    """
    now = [1_790_000_000.0]
    store.clock = lambda: now[0]

    def write(sensor: str, seq: int, peer: str) -> WriteResult:
        return store.write([Reading(sensor, "temperature", 1.0, "C", ts=now[0], seq=seq, peer=peer,
                                    received_at=now[0])])

    def origins() -> dict:
        db = store._connection()
        return {peer: (originId, used) for originId, peer, used in db.execute("SELECT id, peer, last_used FROM origins")}

    a, b, c = "192.0.2.1:1000", "192.0.2.2:1000", "192.0.2.3:1000"
    write("a", 1, a)
    write("b", 1, b)
    first = origins()
    assert first[a][1] == first[b][1] == int(now[0] * 1_000_000)
    now[0] += 600
    write("a", 2, a)
    assert origins() == first, "recorded again within the hour"
    now[0] += 3600
    write("a", 3, a)
    assert origins()[a] == (first[a][0], int(now[0] * 1_000_000))
    write("c", 1, c)
    # b was last used over an hour ago; a and c (the newest) just now.
    assert store.expireOrigins(now[0] - 60, 100) == 1
    assert set(origins()) == {a, c}
    # Even unused, the newest origin stays; a goes.
    assert store.expireOrigins(now[0] + 60, 100) == 1
    assert set(origins()) == {c}
    # The writer still has b's id in memory: it finds it gone, and stores
    # the reading under a new origin.
    result = write("b2", 1, b)
    assert (result.stored, result.duplicates) == (1, 0)
    assert origins()[b][0] > first[b][0]
    [row] = store.readings(sensor="b2", limit=10)
    assert row["peer"] == b


def test_a_fleets_origins_record_their_use_spread_over_the_hour() -> None:
    """
    Each origin's hour turns at its own second: of 360 origins ten ids
    apart, one turns in each ten seconds of an hour, never all at once (which would make a burst of updates at every turn of the hour).
    """
    from sensornet.store.base import _usePeriod

    now = 1_790_000_000.0
    turning = [
        sum(_usePeriod(origin, now + t) != _usePeriod(origin, now + t + 10) for origin in range(7, 7 + 3600, 10))
        for t in range(0, 3600, 10)
    ]
    assert turning == [1] * 360
