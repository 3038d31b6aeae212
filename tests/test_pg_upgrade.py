"""
The PostgreSQL store's schema 2 against a real server: the upgrade of a
schema 1 database (migration 002 converts every v1 row into blocks, rollups
and series summaries), compaction (alone and by two servers at once),
servers writing the same sensors at once, and expiry.
"""

from __future__ import annotations

import datetime
import math
import random
import threading
from collections import namedtuple
from importlib import resources
from typing import Any, Dict, List, Optional, Tuple

import psycopg
import pytest

from sensornet.reading import Reading
from sensornet.store import WriteResult, openStore
from sensornet.store import postgresql as pgstore
from sensornet.store.base import loadMigrations

T0 = 1_718_100_000.0
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
FAR = 4_000_000_000.0


def at(micro: int) -> datetime.datetime:
    """
    A timestamptz parameter for exactly C{micro} microseconds since the
    epoch.
    """
    return EPOCH + datetime.timedelta(microseconds=micro)


class V1Row:
    """
    One row of schema 1's C{readings}, as the test wrote it.
    """

    def __init__(self, id: int, sensor: str, kind: str, value: float, unit: str, ts: int, seq: Optional[int],
                 received: int, peer: str, dialect: str) -> None:
        self.id, self.sensor, self.kind, self.value, self.unit = id, sensor, kind, value, unit
        self.ts, self.seq, self.received, self.peer, self.dialect = ts, seq, received, peer, dialect

    def asReading(self) -> Dict[str, Any]:
        """
        The dict schema 1's store returned for this row from readings().
        """
        return {
            "id": self.id, "sensor": self.sensor, "kind": self.kind, "value": self.value, "unit": self.unit,
            "ts": self.ts / 1_000_000, "seq": self.seq, "received_at": self.received / 1_000_000,
            "peer": self.peer, "dialect": self.dialect, "_position": (self.ts, self.id),
        }


def makeV1Rows(count: int, seed: int = 7) -> List[V1Row]:
    """
    C{count} plausible schema 1 rows over 5 sensors and 2 kinds, spread
    over 3 hours: some without seq, runs sharing one time, units changing
    within a series, ids with gaps (as ON CONFLICT DO NOTHING leaves them).
    """
    rnd = random.Random(seed)
    seqs = {f"s{i}": 0 for i in range(5)}
    rows = []
    rowId = 0
    base = int(T0 * 1_000_000)
    ts = base
    for _ in range(count):
        sensor = rnd.choice(sorted(seqs))
        kind = rnd.choice(["temperature", "humidity"])
        if rnd.random() < 0.8:
            ts = base + rnd.randrange(3 * 3600 * 1_000_000)
        # else: the same time as the previous row
        seq: Optional[int] = None
        if rnd.random() < 0.8:
            seqs[sensor] += rnd.choice([1, 1, 1, 3])
            seq = seqs[sensor]
        rowId += rnd.choice([1, 1, 2, 5])
        rows.append(
            V1Row(
                rowId, sensor, kind, round(rnd.uniform(-40, 60), rnd.choice([1, 3, 6])),
                rnd.choice(["C", "C", "K"]) if kind == "temperature" else "%", ts, seq,
                ts + rnd.randrange(2_000_000), rnd.choice(["10.0.0.1:4000", "10.0.0.2:4001", "[::1]:5"]),
                rnd.choice(["native", "graphite", "seed"]),
            )
        )
    return rows


def v1Summary(rows: List[V1Row]) -> List[Dict[str, Any]]:
    """
    What schema 1's C{sensors} table held after C{rows} were written one
    after the other: the unit and value of the latest time (on a tie, the
    later row), the count, the first and last reception time.
    """
    acc: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for r in rows:
        old = acc.get((r.sensor, r.kind))
        if old is None:
            acc[(r.sensor, r.kind)] = {"unit": r.unit, "value": r.value, "ts": r.ts, "count": 1,
                                       "first_seen": r.received, "last_seen": r.received}
            continue
        if r.ts >= old["ts"]:
            old.update(unit=r.unit, value=r.value, ts=r.ts)
        old["count"] += 1
        old["first_seen"] = min(old["first_seen"], r.received)
        old["last_seen"] = max(old["last_seen"], r.received)
    return [
        {"sensor": sensor, "kind": kind, "unit": s["unit"], "value": s["value"], "ts": at(s["ts"]),
         "count": s["count"], "first_seen": at(s["first_seen"]), "last_seen": at(s["last_seen"])}
        for (sensor, kind), s in sorted(acc.items())
    ]


def createV1Database(url: str, rows: List[V1Row]) -> None:
    """
    A database as schema 1's store left it: C{001_initial.sql} applied and
    recorded, C{rows} in C{readings} and their summary in C{sensors}.
    """
    sql = resources.files("sensornet.store").joinpath("schema/postgresql/001_initial.sql").read_text()
    with psycopg.connect(url, autocommit=True) as db:
        with db.transaction():
            db.execute(
                "CREATE TABLE schema_version ("
                "version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            db.execute(sql.encode("utf-8"))
            db.execute("INSERT INTO schema_version (version, name) VALUES (1, 'initial')")
            db.cursor().executemany(
                "INSERT INTO readings (id, sensor, kind, value, unit, ts, seq, received_at, peer, dialect) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(r.id, r.sensor, r.kind, r.value, r.unit, at(r.ts), r.seq, at(r.received), r.peer, r.dialect)
                 for r in rows],
            )
            db.cursor().executemany(
                "INSERT INTO sensors (sensor, kind, unit, value, ts, count, first_seen, last_seen) "
                "VALUES (%(sensor)s, %(kind)s, %(unit)s, %(value)s, %(ts)s, %(count)s, %(first_seen)s, "
                "%(last_seen)s)",
                v1Summary(rows),
            )


def v1SensorsAsStored(url: str) -> List[Dict[str, Any]]:
    """
    The v1 summary table as schema 1's store returned it from sensors().
    """
    with psycopg.connect(url) as db:
        rows = db.execute(
            "SELECT sensor, kind, unit, value, extract(epoch FROM ts)::float8, count, "
            "extract(epoch FROM first_seen)::float8, extract(epoch FROM last_seen)::float8 "
            "FROM sensors ORDER BY sensor, kind"
        ).fetchall()
    keys = ("sensor", "kind", "unit", "value", "ts", "count", "first_seen", "last_seen")
    return [dict(zip(keys, row)) for row in rows]


def expectedRollups(readings: List[Dict[str, Any]], width: float) -> Dict[Tuple[str, str, float], Dict[str, Any]]:
    """
    Rollups recomputed from raw readings (dicts as readings() returns them),
    keyed by (sensor, kind, bucket start in seconds); the last value is the
    reading with the greatest (ts, id).
    """
    out: Dict[Tuple[str, str, float], Dict[str, Any]] = {}
    micro = int(width * 1_000_000)
    for r in sorted(readings, key=lambda r: r["_position"]):
        t = r["_position"][0]
        key = (r["sensor"], r["kind"], (t - t % micro) / 1_000_000)
        b = out.setdefault(key, {"count": 0, "min": math.inf, "max": -math.inf, "total": 0.0, "last": None})
        b["count"] += 1
        b["min"] = min(b["min"], r["value"])
        b["max"] = max(b["max"], r["value"])
        b["total"] += r["value"]
        b["last"] = r["value"]
    return out


def assertRollupsMatch(store: Any, readings: List[Dict[str, Any]]) -> None:
    """
    store.rollups() for every sensor, at both steps, equals the
    recomputation from C{readings}.
    """
    for step, width in (("1m", 60.0), ("1h", 3600.0)):
        expected = expectedRollups(readings, width)
        got = {}
        for sensor in sorted({r["sensor"] for r in readings}):
            rows = store.rollups(sensor, None, 0.0, FAR, step)
            assert [(r["ts"], r["kind"]) for r in rows] == sorted((r["ts"], r["kind"]) for r in rows)
            for r in rows:
                got[(r["sensor"], r["kind"], r["ts"])] = r
        assert sorted(got) == sorted(expected), step
        for key, e in expected.items():
            g = got[key]
            assert (g["count"], g["min"], g["max"], g["last"]) == (e["count"], e["min"], e["max"], e["last"]), key
            assert g["mean"] == pytest.approx(e["total"] / e["count"], rel=1e-12), key


def tableCount(url: str, table: str) -> int:
    with psycopg.connect(url) as db:
        row = db.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def v1(postgresql_db: str, monkeypatch: pytest.MonkeyPatch) -> Tuple[str, List[V1Row]]:
    """
    A schema 1 database of 400 rows; the conversion takes them 64 at a
    time, so several rounds build on each other's blocks and rollups.
    """
    monkeypatch.setattr(pgstore, "CONVERT_CHUNK", 64)
    rows = makeV1Rows(400)
    createV1Database(postgresql_db, rows)
    return postgresql_db, rows


# -- the upgrade --------------------------------------------------------------


def test_upgrade_keeps_every_reading(v1) -> None:
    """
    After the upgrade every v1 reading comes back from readings() with its
    id, sensor, kind, value, unit, time, seq, reception time, peer and
    dialect, in (ts, id) order, from blocks (nothing is left fresh); the
    schema 1 tables are gone.
    """
    url, rows = v1
    store = openStore(url)
    try:
        assert store.schemaVersion() == len(loadMigrations("postgresql")) >= 2
        expected = sorted((r.asReading() for r in rows), key=lambda r: r["_position"])
        assert store.readings(limit=10_000) == expected
        assert store.fleetStats() == {"series": 10, "fresh_readings": 0}
        # Paging by position walks the same rows, in pages across blocks.
        paged: List[Dict[str, Any]] = []
        after = None
        while True:
            page = store.readings(limit=37, after=after)
            if not page:
                break
            paged.extend(page)
            after = page[-1]["_position"]
        assert paged == expected
        # Filters still apply to converted rows.
        s1 = [r for r in expected if r["sensor"] == "s1" and r["kind"] == "humidity"]
        assert store.readings(sensor="s1", kind="humidity", limit=10_000) == s1
        middle = expected[len(expected) // 2]["ts"]
        assert store.readings(since=middle, limit=10_000) == [r for r in expected if r["ts"] >= middle]
    finally:
        store.close()
    with psycopg.connect(url) as db:
        tables = {row[0] for row in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert "v1_readings" not in tables and "v1_sensors" not in tables and "readings" not in tables


def test_upgrade_keeps_the_summary(v1) -> None:
    """
    sensors() after the upgrade says what schema 1's summary table said.
    """
    url, rows = v1
    before = v1SensorsAsStored(url)
    assert len(before) == 10
    store = openStore(url)
    try:
        assert store.sensors() == before
    finally:
        store.close()


def test_upgrade_keeps_exactly_once(v1) -> None:
    """
    A resend of a v1 reading (sensor, seq) is a duplicate, whether its seq
    is the sensor's highest or an older one; new readings get ids above
    every v1 id and count in the summary.
    """
    url, rows = v1
    keyed = [r for r in rows if r.seq is not None]
    newest = max(keyed, key=lambda r: r.seq if r.sensor == "s2" else -1)
    oldest = min((r for r in keyed if r.sensor == "s2"), key=lambda r: r.seq)
    store = openStore(url)
    try:
        before = {(s["sensor"], s["kind"]): s["count"] for s in store.sensors()}
        resends = [Reading(r.sensor, r.kind, 1.0, r.unit, ts=T0, seq=r.seq, received_at=T0)
                   for r in (newest, oldest, keyed[0])]
        assert store.write(resends) == WriteResult(0, 3, (0, 1, 2))
        assert store.write([Reading("s2", "temperature", 1.0, "C", ts=T0, seq=newest.seq + 1,
                                    received_at=T0)]) == WriteResult(1, 0, ())
        fresh = store.readings(sensor="s2", kind="temperature", since=T0, until=T0 + 0.000001)
        assert [r["seq"] for r in fresh] == [newest.seq + 1]
        assert fresh[0]["id"] > max(r.id for r in rows)
        after = {(s["sensor"], s["kind"]): s["count"] for s in store.sensors()}
        before[("s2", "temperature")] += 1
        assert after == before
    finally:
        store.close()


def test_upgrade_fills_the_rollups_exactly(v1) -> None:
    """
    The rollups after the upgrade equal a recomputation from the raw
    readings, at both steps.
    """
    url, rows = v1
    store = openStore(url)
    try:
        assertRollupsMatch(store, [r.asReading() for r in rows])
    finally:
        store.close()


def test_second_open_does_nothing(v1) -> None:
    """
    Opening the upgraded database again converts nothing again: the version,
    the blocks, the rollups and the readings stay as they were.
    """
    url, rows = v1
    first = openStore(url)
    readings = first.readings(limit=10_000)
    first.close()
    counts = {table: tableCount(url, table) for table in ("schema_version", "blocks", "rollup_1m", "series")}
    again = openStore(url)
    try:
        assert again.schemaVersion() == len(loadMigrations("postgresql"))
        assert again.readings(limit=10_000) == readings
    finally:
        again.close()
    assert {table: tableCount(url, table) for table in counts} == counts


def test_upgrade_of_an_empty_v1_database(postgresql_db: str) -> None:
    """
    A schema 1 database without readings upgrades to an empty store that
    works.
    """
    createV1Database(postgresql_db, [])
    store = openStore(postgresql_db)
    try:
        assert store.schemaVersion() == len(loadMigrations("postgresql"))
        assert store.sensors() == [] and store.readings() == []
        assert store.write([Reading("a", "temperature", 1.0, "C", ts=T0, seq=1, received_at=T0)]).stored == 1
        assert [r["seq"] for r in store.readings()] == [1]
    finally:
        store.close()


def test_fresh_install_goes_from_nothing_to_schema_2(postgresql_db: str) -> None:
    """
    An empty database gets schema 1, 2 and every later one in one open, all
    recorded, and no schema 1 table is left.
    """
    store = openStore(postgresql_db)
    store.close()
    with psycopg.connect(postgresql_db) as db:
        versions = [row[0] for row in db.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, len(loadMigrations("postgresql")) + 1))
        tables = {row[0] for row in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"sensors", "series", "origins", "fresh", "blocks", "rollup_1m", "rollup_1h"} <= tables
    assert not {"readings", "v1_readings", "v1_sensors"} & tables


# -- compaction ---------------------------------------------------------------


def fleetBatches(batches: int, sensors: int, perSensor: int, seed: int = 3) -> List[List[Reading]]:
    """
    Write batches as a fleet sends them: each batch holds C{perSensor}
    readings of each of C{sensors} sensors (two kinds), interleaved, a
    second apart, some without seq, some sharing a time.
    """
    rnd = random.Random(seed)
    out = []
    seq = 0
    for b in range(batches):
        batch = []
        for k in range(perSensor):
            t = T0 + (b * perSensor + k) * 7.5 + rnd.randrange(1_000_000) / 1_000_000
            for s in range(sensors):
                keyed = rnd.random() < 0.9
                batch.append(
                    Reading(f"fleet-{s}", "temperature" if s % 3 else "humidity", round(rnd.gauss(20, 5), 2),
                            "C" if s % 3 else "%", ts=t if rnd.random() < 0.9 else round(t), seq=seq if keyed else None,
                            peer=f"10.0.0.{s}:4000", received_at=t + 0.25)
                )
            seq += 1
        out.append(batch)
    return out


def test_compaction_keeps_readings_and_rollups(postgresql_db: str) -> None:
    """
    compactOnce moves fresh rows into blocks (a few rows at a time, then the
    rest) without changing what readings() returns; rollups equal the
    recomputation from raw readings before, during and after; a resend of
    a compacted reading is still a duplicate.
    """
    store = openStore(postgresql_db)
    try:
        total = 0
        for batch in fleetBatches(12, 8, 5):
            total += store.write(batch).stored
        before = store.readings(limit=100_000)
        assert len(before) == total == 12 * 8 * 5
        assert store.fleetStats() == {"series": 8, "fresh_readings": total}
        assertRollupsMatch(store, before)
        watermark = store.freshWatermark()
        assert watermark > 0
        moved = store.compactOnce(watermark, 10)
        assert 0 < moved < total
        assert store.readings(limit=100_000) == before
        assertRollupsMatch(store, before)
        while True:
            step = store.compactOnce(watermark, 1000)
            if not step:
                break
            moved += step
        assert moved == total
        assert store.fleetStats() == {"series": 8, "fresh_readings": 0}
        assert store.freshWatermark() == 0
        assert store.readings(limit=100_000) == before
        assertRollupsMatch(store, before)
        resend = [r for r in fleetBatches(12, 8, 5)[3] if r.seq is not None][:5]
        assert store.write(resend) == WriteResult(0, 5, (0, 1, 2, 3, 4))
    finally:
        store.close()


def test_two_compactors_compact_each_row_once(postgresql_db: str) -> None:
    """
    Two stores (two servers) compacting one database at once, each in
    small transactions, move every reading exactly once between them: the
    blocks hold each reading once and the rollups count each once.
    """
    writer = openStore(postgresql_db)
    stores = [openStore(postgresql_db) for _ in range(2)]
    try:
        for batch in fleetBatches(40, 10, 2):
            writer.write(batch)
        before = writer.readings(limit=100_000)
        watermark = writer.freshWatermark()
        moved = [0, 0]
        errors: List[BaseException] = []
        barrier = threading.Barrier(2)

        def compactor(index: int) -> None:
            try:
                barrier.wait()
                while True:
                    step = stores[index].compactOnce(watermark, 7)
                    if not step:
                        return
                    moved[index] += step
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=compactor, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert sum(moved) == len(before) == 40 * 10 * 2
        assert all(moved), moved  # both took part
        with psycopg.connect(postgresql_db) as db:
            assert db.execute("SELECT sum(n) FROM blocks").fetchone()[0] == len(before)
            assert db.execute("SELECT sum(count) FROM rollup_1m").fetchone()[0] == len(before)
            assert db.execute("SELECT sum(count) FROM rollup_1h").fetchone()[0] == len(before)
        assert writer.readings(limit=100_000) == before
        assertRollupsMatch(writer, before)
    finally:
        writer.close()
        for s in stores:
            s.close()


def test_servers_writing_the_same_sensors_store_each_reading_once(postgresql_db: str) -> None:
    """
    Three stores (three servers) writing overlapping resends of the same
    sensors at the same time store each (sensor, seq) once and report
    every other copy as a duplicate; the summary counts what is stored.
    """
    stores = [openStore(postgresql_db) for _ in range(3)]
    readings = [
        Reading(f"shared-{s}", "temperature", float(seq), "C", ts=T0 + seq, seq=seq, received_at=T0 + seq)
        for seq in range(300) for s in range(6)
    ]
    results: List[List[WriteResult]] = [[], [], []]
    errors: List[BaseException] = []
    barrier = threading.Barrier(3)

    def server(index: int) -> None:
        rnd = random.Random(index)
        try:
            barrier.wait()
            for start in range(0, len(readings), 90):
                batch = readings[start:start + 90] + rnd.sample(readings, 20)
                rnd.shuffle(batch)
                results[index].append(stores[index].write(batch))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=server, args=(i,)) for i in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        stored = sum(r.stored for rs in results for r in rs)
        assert stored == len(readings)
        rows = stores[0].readings(limit=100_000)
        assert sorted((r["sensor"], r["seq"]) for r in rows) == sorted((r.sensor, r.seq) for r in readings)
        assert len({r["id"] for r in rows}) == len(rows)
        assert sum(s["count"] for s in stores[1].sensors()) == len(readings)
    finally:
        for s in stores:
            s.close()


# -- expiry -------------------------------------------------------------------

Rule = namedtuple("Rule", "raw minute hour")


class TwoRules:
    """
    A stand-in retention policy: sensors named "short-*" keep 1 hour of raw
    readings and 2 hours of minute rollups; the rest keep everything.
    """

    rules = [Rule(None, None, None), Rule(3600.0, 7200.0, None)]

    def forSeries(self, sensor: str, kind: str) -> int:
        return 1 if sensor.startswith("short-") else 0


def test_expiry_follows_each_series_rule(postgresql_db: str) -> None:
    """
    expireOnce deletes, series by series in id order, the blocks and rollup
    rows older than the series' rule, and nothing of a series kept forever.
    """
    store = pgstore.PostgreSQLStore(postgresql_db)
    store.retention = TwoRules()
    store.open()
    try:
        hour = 3600.0
        store.write([
            Reading(name, "temperature", float(i), "C", ts=T0 + i * 600, seq=i, received_at=T0 + i * 600)
            for i in range(30) for name in ("short-a", "long-b")
        ])
        while store.compactOnce(store.freshWatermark(), 1000):
            pass
        now = T0 + 30 * 600  # 5 hours after the first reading
        # One series a call: (long-b, 0 rows), (short-a, some), then the end.
        calls = []
        last = 0
        while True:
            last, deleted = store.expireOnce(now, last, 1)
            calls.append((last, deleted))
            if not last:
                break
        assert [last > 0 for last, _ in calls] == [True, True, False]
        assert sorted(deleted for _, deleted in calls)[:2] == [0, 0] and sum(d for _, d in calls) > 0
        short = store.readings(sensor="short-a", limit=1000)
        assert short and min(r["ts"] for r in short) >= now - hour - 3600  # whole blocks go
        assert max(r["ts"] for r in short) == T0 + 29 * 600
        assert len(store.readings(sensor="long-b", limit=1000)) == 30
        minutes = store.rollups("short-a", None, 0.0, FAR, "1m")
        assert minutes and all(m["ts"] + 60 > now - 2 * hour for m in minutes)
        assert len(store.rollups("long-b", None, 0.0, FAR, "1m")) == 30
        assert len(store.rollups("short-a", None, 0.0, FAR, "1h")) == 5  # hours are kept forever
    finally:
        store.close()


def test_a_call_larger_than_one_id_range(postgresql_db: str) -> None:
    """
    A write call of more readings than one id range holds (several ranges,
    one transaction) numbers every reading uniquely, in increasing order,
    and finds duplicates across its parts.
    """
    size = pgstore.IDS_PER_RANGE * 2 + 500
    readings = [
        Reading(f"big-{i % 3}", "temperature", float(i), "C", ts=T0 + i, seq=i // 3, received_at=T0 + i)
        for i in range(size)
    ]
    # Resends, within the call, of readings in its first part, placed in its
    # last.
    readings[-2] = readings[10]
    readings[-1] = readings[20]
    store = openStore(postgresql_db)
    try:
        assert store.write(readings) == WriteResult(size - 2, 2, (size - 2, size - 1))
        rows = store.readings(limit=size)
        assert len(rows) == size - 2
        ids = [r["id"] for r in rows]
        assert ids == sorted(ids) and len(set(ids)) == len(ids) and max(ids) < 2**53
        assert sum(s["count"] for s in store.sensors()) == size - 2
        assert store.write(readings[:5]) == WriteResult(0, 5, (0, 1, 2, 3, 4))
    finally:
        store.close()


def test_open_records_changed_retention_rules(postgresql_db: str) -> None:
    """
    A series records its rule's index when it is created, and again at
    open when the rules now say otherwise.
    """
    store = pgstore.PostgreSQLStore(postgresql_db)
    store.retention = TwoRules()
    store.open()
    try:
        store.write([Reading(name, "temperature", 1.0, "C", ts=T0, seq=1, received_at=T0)
                     for name in ("short-a", "long-b")])
    finally:
        store.close()

    def policies() -> Dict[str, int]:
        with psycopg.connect(postgresql_db) as db:
            return dict(db.execute("SELECT n.name, s.policy FROM series s JOIN sensors n ON n.id = s.sensor"))

    assert policies() == {"short-a": 1, "long-b": 0}

    class Swapped(TwoRules):
        def forSeries(self, sensor: str, kind: str) -> int:
            return 0 if sensor.startswith("short-") else 1

    again = pgstore.PostgreSQLStore(postgresql_db)
    again.retention = Swapped()
    again.open()
    again.close()
    assert policies() == {"short-a": 0, "long-b": 1}
