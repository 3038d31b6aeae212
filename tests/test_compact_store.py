"""
Schema 2, the compact store: exactly once through compaction, rollups that
equal a recomputation from the raw readings (after a SIGKILL too), expiry,
the upgrade of a schema 1 SQLite file, and the maintenance service.
"""

from __future__ import annotations

import math
import random
import sqlite3
import time
from typing import Any, Dict, List, Tuple

import pytest
import pytest_twisted
from twisted.internet import defer

from sensornet.metrics import ServerMetrics
from sensornet.reading import Reading
from sensornet.store import openStore
from sensornet.store.base import loadMigrations
from sensornet.store.maintenance import StoreMaintenance, originHorizon
from sensornet.store.retention import RetentionPolicy, parseOverride, parseRetention
from sensornet.store.sqlite import SQLiteStore, splitStatements

from serverproc import ServerProcess
from test_durability import drain, sensors, sleep, stopSensors, waitFor

NOW = time.time()


def reading(sensor: str, seq: Any, value: float = 20.0, ts: Any = None, kind: str = "temperature") -> Reading:
    return Reading(sensor, kind, value, "C", ts=ts if ts is not None else NOW - 3000 + (seq or 0),
                   seq=seq, dialect="native", peer="127.0.0.1:4000", received_at=NOW)


def compactAll(store: Any) -> int:
    moved = 0
    while True:
        step = store.compactOnce(store.freshWatermark(), 100_000)
        if not step:
            return moved
        moved += step


def allReadings(store: Any, **filters: Any) -> List[Dict[str, Any]]:
    return store.readings(limit=10**7, **filters)


def recomputed(rows: List[Dict[str, Any]], width: float) -> Dict[Tuple[str, str, float], Tuple]:
    """
    Rollups computed from raw readings, the slow obvious way.
    """
    buckets: Dict[Tuple[str, str, float], List[Dict[str, Any]]] = {}
    for r in rows:
        micro = round(r["ts"] * 1e6)
        start = (micro - micro % int(width * 1e6)) / 1e6
        buckets.setdefault((r["sensor"], r["kind"], start), []).append(r)
    out = {}
    for key, members in buckets.items():
        values = [m["value"] for m in members]
        latest = max(members, key=lambda m: (m["ts"], m["id"]))
        out[key] = (len(values), min(values), max(values), sum(values) / len(values), latest["value"])
    return out


def fromStore(store: Any, sensors: List[str], step: str, since: float, until: float) -> Dict:
    out = {}
    for name in sensors:
        for b in store.rollups(name, None, since, until, step):
            out[(b["sensor"], b["kind"], b["ts"])] = (b["count"], b["min"], b["max"], b["mean"], b["last"])
    return out


def assertRollupsExact(store: Any, since: float, until: float) -> None:
    rows = allReadings(store)
    names = sorted({r["sensor"] for r in rows})
    for step, width in (("1m", 60.0), ("1h", 3600.0)):
        expected = recomputed(rows, width)
        got = fromStore(store, names, step, since, until)
        assert set(got) == set(expected), step
        for key, (count, lo, hi, mean, last) in expected.items():
            gCount, gLo, gHi, gMean, gLast = got[key]
            assert (gCount, gLo, gHi, gLast) == (count, lo, hi, last), (step, key)
            assert math.isclose(gMean, mean, rel_tol=1e-12), (step, key)


def test_resends_after_compaction_are_duplicates_and_gaps_are_filled(store_url) -> None:
    """
    A resend of a compacted reading is a duplicate (the slow path looks in
    the blocks); a seq below the high-water mark that was never stored (a
    gap) is stored; neither changes the rollups wrongly.
    """
    store = openStore(store_url)
    try:
        first = [reading(f"s{k}", seq) for seq in range(0, 100) if seq != 50 for k in range(3)]
        assert store.write(first).stored == len(first)
        assert compactAll(store) == len(first)
        again = [reading("s1", 10), reading("s1", 50), reading("s1", 50), reading("s2", 99), reading("s2", 100)]
        result = store.write(again)
        assert result.duplicateIndexes == (0, 2, 3)
        seqs = sorted(r["seq"] for r in allReadings(store, sensor="s1"))
        assert seqs == list(range(100))
        assert sorted(r["seq"] for r in allReadings(store, sensor="s2")) == [s for s in range(101) if s != 50]
        assertRollupsExact(store, NOW - 7200, NOW + 60)
        compactAll(store)
        assertRollupsExact(store, NOW - 7200, NOW + 60)
        summary = {(s["sensor"], s["kind"]): s["count"] for s in store.sensors()}
        assert summary == {("s0", "temperature"): 99, ("s1", "temperature"): 100, ("s2", "temperature"): 100}
    finally:
        store.close()


def test_a_sensor_seq_is_unique_across_its_kinds(store_url) -> None:
    """
    (sensor, seq) names one reading whatever its kind, as in schema 1.
    """
    store = openStore(store_url)
    try:
        assert store.write([reading("w", 1, kind="temperature")]).stored == 1
        result = store.write([reading("w", 1, kind="humidity"), reading("w", 2, kind="humidity")])
        assert result.duplicateIndexes == (0,)
    finally:
        store.close()


def test_readings_page_through_fresh_rows_and_blocks_in_time_order(store_url) -> None:
    """
    Paging by cursor position returns every reading once, in (ts, id)
    order, whether it is in a fresh row or a block, and the early stop over
    blocks loses nothing.
    """
    store = openStore(store_url)
    try:
        # Readings over three hours, out of order, in several batches.
        made = [reading(f"p{k % 7}", k, value=k, ts=NOW - 3 * 3600 + (k * 7919) % 10800) for k in range(2000)]
        for start in range(0, 2000, 300):
            store.write(made[start:start + 300])
            if start == 900:
                compactAll(store)
        everything = allReadings(store)
        assert [(r["ts"], r["id"]) for r in everything] == sorted((r["ts"], r["id"]) for r in everything)
        assert len(everything) == 2000
        seen = []
        after = None
        while True:
            page = store.readings(limit=137, after=after)
            if not page:
                break
            seen.extend(page)
            after = page[-1]["_position"]
        assert [r["id"] for r in seen] == [r["id"] for r in everything]
        window = store.readings(since=NOW - 7200, until=NOW - 3600, limit=10**6)
        assert window == [r for r in everything if NOW - 7200 <= r["ts"] < NOW - 3600]
    finally:
        store.close()


def test_expiry_deletes_each_tier_past_its_retention_only(tmp_path) -> None:
    """
    Blocks past the raw retention go, rollups past theirs go, a sensor
    matched by an override keeps its own retention; nothing newer is
    touched.
    """
    store = SQLiteStore(str(tmp_path / "x.db"))
    store.retention = RetentionPolicy(
        parseRetention("raw:2d,1m:10d,1h:100d"), [parseOverride("sensor:keep-*=raw:60d,1m:60d,1h:1y")]
    )
    store.open()
    try:
        day = 86400.0
        made = []
        for name in ("old", "keep-1"):
            for k, age in enumerate((50 * day, 5 * day, 1 * day)):
                made.append(reading(name, k, value=k, ts=NOW - age))
        store.write(made)
        compactAll(store)
        after, deleted = store.expireOnce(NOW, 0, 1000)
        assert after == 0 and deleted > 0
        assert [r["seq"] for r in allReadings(store, sensor="old")] == [2]
        assert [r["seq"] for r in allReadings(store, sensor="keep-1")] == [0, 1, 2]
        old1m = store.rollups("old", None, NOW - 60 * day, NOW, "1m")
        assert [b["last"] for b in old1m] == [1.0, 2.0]
        old1h = store.rollups("old", None, NOW - 60 * day, NOW, "1h")
        assert [b["last"] for b in old1h] == [0.0, 1.0, 2.0]
        assert [b["last"] for b in store.rollups("keep-1", None, NOW - 60 * day, NOW, "1m")] == [0.0, 1.0, 2.0]
        assert store.expireOnce(NOW, 0, 1000) == (0, 0)
    finally:
        store.close()


def test_a_schema_1_file_is_upgraded_in_place(tmp_path) -> None:
    """
    A database written by the schema 1 release (its tables made by its own
    schema file, with data) is migrated on open: every reading keeps its
    id and fields, the sensor summary is the same, resends stay duplicates,
    rollups equal a recomputation, and new ids continue above the old.
    """
    path = str(tmp_path / "v1.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)")
    for statement in splitStatements(loadMigrations("sqlite")[0].sql):
        db.execute(statement)
    db.execute("INSERT INTO schema_version VALUES (1, 'initial', 0)")
    rows = []
    for k in range(600):
        sensor = f"v1-{k % 5}"
        kind = "humidity" if k % 3 == 0 else "temperature"
        seq = None if k % 11 == 0 else k
        rows.append((k * 2 + 1, sensor, kind, 20.0 + k / 7, "C" if kind == "temperature" else "%",
                     NOW - 5000 + (k // 2), seq, NOW - 4000 + k, f"10.0.0.{k % 3}:5{k % 4}", "native"))
    db.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    summary: Dict[Tuple[str, str], List[Any]] = {}
    for _, sensor, kind, value, unit, ts, _, at, _, _ in rows:
        entry = summary.setdefault((sensor, kind), [unit, value, ts, 0, at, at])
        if ts >= entry[2]:
            entry[0:3] = [unit, value, ts]
        entry[3] += 1
        entry[4] = min(entry[4], at)
        entry[5] = max(entry[5], at)
    db.executemany(
        "INSERT INTO sensors VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(*key, *entry) for key, entry in summary.items()]
    )
    db.close()

    store = SQLiteStore(path)
    store.open()
    try:
        assert store.schemaVersion() == len(loadMigrations("sqlite"))
        got = {r["id"]: r for r in allReadings(store)}
        assert len(got) == len(rows)
        for rid, sensor, kind, value, unit, ts, seq, at, peer, dialect in rows:
            r = got[rid]
            assert (r["sensor"], r["kind"], r["value"], r["unit"], r["seq"], r["peer"], r["dialect"]) == (
                sensor, kind, value, unit, seq, peer, dialect)
            assert abs(r["ts"] - ts) < 1e-6 and abs(r["received_at"] - at) < 1e-6
        sensorsNow = {(s["sensor"], s["kind"]): s for s in store.sensors()}
        assert set(sensorsNow) == set(summary)
        for key, (unit, value, ts, count, first, last) in summary.items():
            s = sensorsNow[key]
            assert (s["unit"], s["value"], s["count"]) == (unit, value, count)
            assert abs(s["ts"] - ts) < 1e-6 and abs(s["first_seen"] - first) < 1e-6
        assertRollupsExact(store, NOW - 7200, NOW + 60)
        result = store.write([reading("v1-1", 1), reading("v1-1", 100000)])
        assert result.duplicateIndexes == (0,)
        newest = allReadings(store, sensor="v1-1")[-1]
        assert newest["seq"] == 100000 and newest["id"] > max(r[0] for r in rows)
    finally:
        store.close()
    tables = {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert not {"v1_readings", "v1_sensors", "readings"} & tables


def compactedSome(url: str) -> bool:
    """
    Whether some stored readings have left their fresh rows.
    """
    store = openStore(url)
    try:
        stored = sum(s["count"] for s in store.sensors())
        return store.fleetStats()["fresh_readings"] < stored
    finally:
        store.close()


@pytest_twisted.inlineCallbacks
def test_rollups_equal_a_recomputation_after_sigkill(reactor, tmp_path, store_url):
    """
    With the compactor running every round (compact-after 0.3 s), a server
    is SIGKILLed mid-stream and restarted; once the sensors have drained,
    every rollup equals a recomputation from the raw readings, before and
    after the last fresh rows are compacted: no reading counted twice or
    missed, whatever the kill interrupted.
    """
    extra = ["--compact-after", "0.3"]
    server = ServerProcess(store_url, str(tmp_path), extra=extra).start()
    made = sensors(reactor, server.port, 4, "kill", interval=0.005)
    try:
        for _ in range(2):
            yield waitFor(reactor, lambda: all(len(s.outbox.acked) > 60 for s in made), what="acks")
            yield waitFor(reactor, lambda: compactedSome(store_url), what="a compaction round")
            yield sleep(reactor, random.uniform(0.0, 1.0))
            server.kill()
            yield sleep(reactor, 0.3)
            server = ServerProcess(store_url, str(tmp_path), port=server.port, extra=extra).start()
            for s in made:
                s.outbox.acked.clear()
        yield sleep(reactor, 1.0)
        yield drain(reactor, made)
    finally:
        yield stopSensors(made)
        server.kill()
    store = openStore(store_url)
    try:
        rows = allReadings(store)
        assert len(rows) > 300
        for s in made:
            seqs = sorted(r["seq"] for r in rows if r["sensor"] == s.name)
            assert seqs == list(range(seqs[0], s.nextSeq))
        since, until = min(r["ts"] for r in rows) - 3600, max(r["ts"] for r in rows) + 3600
        assertRollupsExact(store, since, until)
        compactAll(store)
        assert store.fleetStats()["fresh_readings"] == 0
        assertRollupsExact(store, since, until)
    finally:
        store.close()


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_maintenance_compacts_old_fresh_rows_and_counts_them(reactor, tmp_path):
    """
    The maintenance service compacts what is older than compactAfter (not
    newer), reports it in its metrics, and stops cleanly.
    """
    url = f"sqlite:{tmp_path / 'm.db'}"
    store = openStore(url)
    store.write([reading(f"m{k}", seq) for seq in range(50) for k in range(10)])
    metrics = ServerMetrics()
    service = StoreMaintenance(url, reactor, metrics, compactAfter=0.5)
    service.interval = 0.1
    service.statsInterval = 0.1
    service.startService()
    try:
        yield waitFor(reactor, lambda: service.compacted == 500, timeout=20, what="compaction")
        store.write([reading("m0", 1000)])
        yield sleep(reactor, 0.2)
        assert store.fleetStats()["fresh_readings"] == 1
        assert metrics.registry.get_sample_value("sensornet_store_compacted_readings_total") == 500
        yield waitFor(reactor, lambda: service.compacted == 501, timeout=20, what="the late one")
        yield waitFor(
            reactor, lambda: metrics.registry.get_sample_value("sensornet_store_fresh_readings") == 0,
            timeout=20, what="gauge",
        )
        assert metrics.registry.get_sample_value("sensornet_store_series") == 10
        assert service.failures == 0
    finally:
        yield service.stopService()
        store.close()
    assert [r["seq"] for r in allReadings(openStore(url), sensor="m0")] == list(range(50)) + [1000]


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_maintenance_survives_a_failing_store_and_counts_failures(reactor, tmp_path):
    """
    A round that fails is counted and retried; maintenance goes on once the
    store answers again.
    """
    url = f"sqlite:{tmp_path / 'f.db'}"
    seed = openStore(url)
    seed.write([reading("f", seq) for seq in range(20)])
    seed.close()
    broken = [True]

    class Flaky(SQLiteStore):
        def compactSeries(self, upTo: int, limit: int, after: int, through: int) -> Tuple[int, int]:
            if broken[0]:
                raise sqlite3.OperationalError("disk I/O error")
            return super().compactSeries(upTo, limit, after, through)

    metrics = ServerMetrics()
    service = StoreMaintenance(url, reactor, metrics, compactAfter=0.0, openStore=lambda u: Flaky(u[7:]))
    service.interval = 0.05
    service.startService()
    try:
        yield waitFor(reactor, lambda: service.failures >= 3, timeout=20, what="failures")
        assert metrics.registry.get_sample_value("sensornet_store_maintenance_failures_total") >= 3
        broken[0] = False
        yield waitFor(reactor, lambda: service.compacted == 20, timeout=20, what="recovery")
    finally:
        yield service.stopService()


def test_rollups_are_whole_buckets_before_and_after_compaction(store_url) -> None:
    """
    A query ending inside a bucket answers that whole bucket, the same
    before the readings are compacted as after (it used to count only the
    fresh readings before the end).
    """
    store = openStore(store_url)
    try:
        bucket = (int(NOW) // 60 - 30) * 60
        store.write([reading("edge", 1, value=1.0, ts=bucket + 10), reading("edge", 2, value=3.0, ts=bucket + 50)])
        before = store.rollups("edge", None, bucket + 5, bucket + 30, "1m")
        compactAll(store)
        after = store.rollups("edge", None, bucket + 5, bucket + 30, "1m")
        assert before == after
        assert [(b["ts"], b["count"], b["mean"], b["last"]) for b in after] == [(bucket, 2, 2.0, 3.0)]
    finally:
        store.close()


def cadenceReadings() -> List[Reading]:
    """
    Three series received every 2, 4 and 10 seconds (their median: 4 s),
    and one with a single reading (no cadence yet).
    """
    out = []
    for sensor, every in (("fast", 2.0), ("middle", 4.0), ("slow", 10.0)):
        for k in range(6):
            at = NOW - 100 + k * every
            out.append(Reading(sensor, "temperature", 20.0, "C", ts=at, seq=k, dialect="native",
                               peer="127.0.0.1:4000", received_at=at))
    out.append(Reading("once", "humidity", 50.0, "%", ts=NOW, seq=0, dialect="native",
                       peer="127.0.0.1:4000", received_at=NOW))
    return out


def test_median_interval_is_the_fleets_typical_cadence(store_url):
    """
    The median over series of each one's mean interval between readings,
    alike on both backends; L{None} before any series has two readings.
    """
    store = openStore(store_url)
    try:
        assert store.medianInterval() is None
        store.write(cadenceReadings()[-1:])
        assert store.medianInterval() is None
        store.write(cadenceReadings()[:-1])
        assert store.medianInterval() == pytest.approx(4.0)
    finally:
        store.close()


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_maintenance_logs_the_expected_disk_once_at_start(reactor, tmp_path):
    """
    The first maintenance round logs the disk the retention policy costs
    for the stored fleet at its median cadence and for the reference fleet
    (20,000 series every 2 s); later rounds do not log it again.
    """
    from twisted.logger import formatEvent, globalLogPublisher

    url = f"sqlite:{tmp_path / 'e.db'}"
    store = openStore(url)
    store.write(cadenceReadings())
    store.close()
    seen: List[str] = []

    def observe(event: Dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("sensornet.store.maintenance"):
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    service = StoreMaintenance(url, reactor, retention=RetentionPolicy(parseRetention("raw:7d,1m:30d,1h:1y")))
    service.interval = 0.05
    service.startService()
    try:
        yield waitFor(reactor, lambda: service.rounds >= 3, timeout=20, what="three rounds")
    finally:
        yield service.stopService()
        globalLogPublisher.removeObserver(observe)
    estimates = [line for line in seen if "expected disk" in line]
    assert len(estimates) == 2, seen
    assert estimates[0].startswith("retention raw:1w,1m:30d,1h:1y: expected disk at 4 series every 4 s: raw ")
    assert estimates[0].endswith("(the stored fleet at its median cadence)")
    assert "expected disk at 20,000 series every 2 s: raw " in estimates[1]
    assert estimates[1].endswith("(reference fleet)")


def test_bounded_expiry_in_steps_equals_one_unbounded_pass(store_url, tmp_path) -> None:
    """
    The same store expired by one unbounded call and (a copy) by calls of
    at most 37 rows ends with the same readings and rollups; no call
    deletes more than 37 rows, and the calls resume inside a series.
    """
    day = 86400.0
    policy = RetentionPolicy(parseRetention("raw:2d,1m:3d,1h:4d"))
    names = ("a", "b", "c")
    made = []
    for name in names:
        made += [reading(name, k, value=k, ts=NOW - 10 * day + 60 * k) for k in range(180)]
        made.append(reading(name, 1000, value=1000, ts=NOW - 60))

    def snapshot(store: Any) -> Dict[str, Any]:
        return {n: ([r["seq"] for r in allReadings(store, sensor=n)],
                    store.rollups(n, None, NOW - 20 * day, NOW, "1m"),
                    store.rollups(n, None, NOW - 20 * day, NOW, "1h")) for n in names}

    store = openStore(store_url)
    store.retention = policy
    try:
        store.write(made)
        compactAll(store)
        steps = []
        after = 0
        for _ in range(100):
            after, deleted = store.expireOnce(NOW, after, 1000, rows=37)
            steps.append(deleted)
            if deleted < 37:
                break
        stepped = snapshot(store)
    finally:
        store.close()
    assert max(steps) == 37 and len(steps) == sum(steps) // 37 + 1

    other = f"sqlite:{tmp_path / 'one-pass.db'}"
    store = openStore(other)
    store.retention = policy
    try:
        store.write(made)
        compactAll(store)
        # Each series: 180 1m rollups, and the blocks and 1h rollups of the
        # three hours they touch (four unless they start on the hour).
        after, deleted = store.expireOnce(NOW, 0, 1000)
        assert after == 0 and deleted == sum(steps) >= 3 * 186
        assert snapshot(store) == stepped
        for name in names:
            assert stepped[name][0] == [1000]
    finally:
        store.close()


def test_a_series_with_and_without_seqs_up_to_the_largest_compacts(store_url) -> None:
    """
    One series holding a reading without a seq and one with the largest
    seq a line may carry (2**63 - 1): their seq step is 2**63, which a
    64-bit delta once could not hold, so one sender could stop compaction
    for every series. It compacts, and reads back the same.
    """
    store = openStore(store_url)
    try:
        store.write([reading("edge", None, value=1.0, ts=NOW - 100), reading("edge", 2**63 - 1, value=2.0, ts=NOW - 50)])
        before = allReadings(store, sensor="edge")
        assert compactAll(store) == 2
        assert store.fleetStats()["fresh_readings"] == 0
        assert allReadings(store, sensor="edge") == before
        assert sorted(r["seq"] for r in before if r["seq"] is not None) == [2**63 - 1]
    finally:
        store.close()


class SweepRecorder:
    """
    A store that records the compactor's sweep: the series ranges asked
    for, and moves one reading per series in them.
    """

    def __init__(self, last: int) -> None:
        self.last = last
        self.visits: List[int] = []

    def lastSeriesId(self) -> int:
        return self.last

    def compactSeries(self, upTo: int, limit: int, after: int, through: int) -> Tuple[int, int]:
        # Like a real store, at most `limit` series a call.
        end = min(through, after + limit)
        self.visits.extend(range(after + 1, end + 1))
        return end - after, end


@pytest.mark.parametrize("last, compactAfter, interval", [(100, 10.0, 1.0), (7, 60.0, 1.0), (19_000, 60.0, 1.0),
                                                         (50, 0.0, 1.0), (3, 0.5, 0.1)])
def test_the_sweep_visits_every_series_once_per_compact_after(last: int, compactAfter: float,
                                                             interval: float) -> None:
    """
    Round after round, the sweep visits the series in id order, each
    exactly once per sweep, and a sweep takes C{compactAfter} seconds of
    rounds (one round when that is shorter than a round), however the
    series split into calls.
    """
    from twisted.internet.task import Clock

    service = StoreMaintenance("sqlite::memory:", Clock(), compactAfter=compactAfter)
    service.interval = interval
    service.compactRows = 7
    store = SweepRecorder(last)
    rounds = max(1, math.ceil(max(compactAfter, interval) / interval))
    perSweep = []
    for _ in range(3):
        store.visits = []
        for _ in range(rounds):
            service._sweep(store, upTo=1)  # type: ignore[arg-type]
        perSweep.append(store.visits)
    assert perSweep == [list(range(1, last + 1))] * 3


@pytest.mark.timeout(120)
def test_a_sensor_at_the_fleet_cadence_gets_blocks_of_a_sweep(store_url) -> None:
    """
    Sixty series sending every 2 s (half of them each second, like a
    fleet), with a round a second and compactAfter 10 s: each visit of the
    sweep merges about five readings of a series into one block, where
    compacting every old row each round made a block of each reading. No
    reading waits in a fresh row much over twice compactAfter, and nothing
    is lost or counted twice.
    """
    from twisted.internet.task import Clock

    service = StoreMaintenance(store_url, Clock(), compactAfter=10.0)
    writer = openStore(store_url)
    base = (int(NOW) // 3600 - 2) * 3600 + 60.0
    marks = []
    try:
        for second in range(90):
            writer.write([
                Reading(f"fleet{k}", "temperature", 20.0 + k + second / 100, "C", ts=base + second, seq=second,
                        dialect="native", peer="127.0.0.1:4000", received_at=base + second)
                for k in range(60) if k % 2 == second % 2
            ])
            marks.append(writer.freshWatermark())
            service._round(float(second), base + second)
        rows = allReadings(writer)
        assert len(rows) == 90 * 30
        assert len({(r["sensor"], r["seq"]) for r in rows}) == len(rows)
        db = writer._connection()
        blocks, inBlocks = db.execute("SELECT count(*), sum(n) FROM blocks").fetchone()
        assert inBlocks >= 90 * 30 - 2 * 11 * 30
        assert inBlocks / blocks >= 3.5, (blocks, inBlocks)
        # Rows written more than 2 * compactAfter + a round ago are gone.
        oldest = db.execute("SELECT min(id) FROM fresh").fetchone()[0]
        assert oldest is None or oldest > marks[90 - 2 * 10 - 2]
        assertRollupsExact(writer, base - 3600, base + 3600)
    finally:
        service._drop()
        writer.close()


def test_the_size_gauges_are_read_once_per_stats_interval(tmp_path) -> None:
    """
    The store's size (a scan of every fresh row) is read for the gauges in
    the first round and then once every statsInterval, not every round; the
    rounds in between report no stats.
    """
    from twisted.internet.task import Clock

    calls: List[float] = []

    class Counting(SQLiteStore):
        def fleetStats(self) -> Dict[str, int]:
            calls.append(now)
            return super().fleetStats()

    url = f"sqlite:{tmp_path / 'g.db'}"
    service = StoreMaintenance(url, Clock(), compactAfter=5.0, openStore=lambda u: Counting(u[7:]))
    reported = []
    try:
        for step in range(31):
            now = float(step)
            reported.append(service._round(now, NOW + now)[2] is not None)
    finally:
        service._drop()
    # The first round also reads it once for the disk estimate.
    assert calls == [0.0, 0.0, 15.0, 30.0]
    assert [k for k, r in enumerate(reported) if r] == [0, 15, 30]


def test_origins_no_stored_reading_names_expire_after_a_whole_expiry_pass(store_url) -> None:
    """
    A fleet that reconnects leaves an origin per connection. Once retention
    has dropped every reading that named one (a whole expiry pass), and it
    was last used longer ago than the horizon (raw retention, the clock
    skew limit, a block's hour, the recording period, a day), it goes,
    counted; an origin in use stays. Without a clock skew limit, or with
    raw readings kept for ever, none goes.
    """
    from twisted.internet.task import Clock

    horizon = originHorizon(None, 300.0)
    assert horizon == 30 * 86400 + 300 + 3600 + 3600 + 86400
    assert originHorizon(None, None) is None
    assert originHorizon(RetentionPolicy(parseRetention("raw:forever,1m:forever,1h:forever")), 300.0) is None
    writer = openStore(store_url)
    then = NOW - horizon - 7200
    try:
        writer.clock = lambda: then
        writer.write([
            Reading(f"gone{k}", "temperature", 1.0, "C", ts=then, seq=1, peer=f"192.0.2.9:{4000 + k}",
                    received_at=then)
            for k in range(5)
        ])
        writer.compactOnce(writer.freshWatermark(), 10_000)
        writer.clock = lambda: NOW
        writer.write([Reading("live", "temperature", 2.0, "C", ts=NOW, seq=1, peer="192.0.2.1:5000", received_at=NOW)])
        for skew in (None, 300.0):
            metrics = ServerMetrics()
            service = StoreMaintenance(store_url, Clock(), metrics, maxClockSkew=skew)
            try:
                service._succeeded(service._round(0.0, NOW))
            finally:
                service._drop()
            db = writer._connection()
            peers = sorted(peer for (peer,) in db.execute("SELECT peer FROM origins"))
            expired = metrics.registry.get_sample_value("sensornet_store_expired_origins_total")
            if skew is None:
                # Retention dropped the old readings' blocks; the origins stay.
                assert db.execute("SELECT count(*) FROM blocks").fetchone()[0] == 0
                assert len(peers) == 6 and expired == 0
        assert peers == ["192.0.2.1:5000"] and expired == 5 and service.originsExpired == 5
        assert [(r["sensor"], r["peer"]) for r in allReadings(writer)] == [("live", "192.0.2.1:5000")]
    finally:
        writer.close()
