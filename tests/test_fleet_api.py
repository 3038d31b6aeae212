"""
The fleet API over real HTTP on loopback, with readings stored through a
real writer, on SQLite and PostgreSQL: /api/sensors' keyset paging (every
series once, in order, whatever the sort), its filters (prefix, glob, kind,
state) and totals, its refusals; /api/fleet's counts by state and kind;
/api/sparklines from the rollups; and paging through 200,000 series in
SQLite with each page's size bounded.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlencode

import pytest
import pytest_twisted

from sensornet.reading import Reading
from sensornet.web.testing import WebHarness

from test_web_api import TIMEOUT, getJSON, httpClient, within

pytestmark = pytest.mark.timeout(300)

#: Names chosen so that code point order differs from a locale's (upper
#: case before lower, punctuation, non-ASCII, a literal bracket for GLOB).
NAMES = [
    "greenhouse-1", "greenhouse-2", "greenhouse-10", "Greenhouse-A", "greenhouse_x", "green%house",
    "barn-1", "barn-2", "barn[3]", "silo-ä", "silo-z", "silo-é", "yard-1",
]


def fleetReadings(now: float, names: List[str] = NAMES) -> List[Reading]:
    """
    Every name gets a temperature series read every 10 s and received until
    now; every second name a humidity series too. The barn sensors stopped
    30 s ago (late: 2 to 5 intervals), the silo ones an hour ago (silent).
    """
    out = []
    for i, name in enumerate(names):
        stopped = 3600.0 if name.startswith("silo") else 30.0 if name.startswith("barn") else 0.0
        kinds = ["temperature"] + (["humidity"] if i % 2 == 0 else [])
        for kind in kinds:
            for n in range(5):
                t = now - stopped - 10.0 * (4 - n)
                out.append(Reading(name, kind, 20.0 + n, "C" if kind == "temperature" else "%", ts=t,
                                   seq=n + (100 if kind == "humidity" else 0), dialect="native",
                                   peer="127.0.0.1:4000", received_at=t))
    return out


def expectedSeries(names: List[str] = NAMES) -> List[Tuple[str, str]]:
    out = []
    for i, name in enumerate(names):
        out.append((name, "temperature"))
        if i % 2 == 0:
            out.append((name, "humidity"))
    return out


@pytest_twisted.async_yield_fixture
async def fleet(tmp_path: Path, store_url: str, reactor: Any):
    h = WebHarness(tmp_path, reactor, storeURL=store_url)
    await within(h.start(), reactor)
    try:
        await within(h.store(fleetReadings(reactor.seconds())), reactor)
        yield h
    finally:
        await within(h.stop(), reactor)


async def pages(reactor: Any, url: str, **params: Any) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """
    Every page of /api/sensors for C{params}, following C{next}; the rows
    and the page bodies.
    """
    rows: List[Dict[str, Any]] = []
    bodies = []
    cursor: Optional[str] = None
    for _ in range(1000):
        query = dict(params)
        if cursor is not None:
            query["cursor"] = cursor
        _, body = await getJSON(reactor, url + "/api/sensors?" + urlencode(query))
        bodies.append(body)
        rows.extend(body["sensors"])
        cursor = body["next"]
        if cursor is None:
            return rows, bodies
    raise AssertionError("paging did not end")


def pairs(rows: List[Dict[str, Any]]) -> List[Tuple[str, Optional[str]]]:
    return [(r["sensor"], r["kind"]) for r in rows]


def codePointOrder(series: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    return sorted(series, key=lambda p: (p[0].encode("utf-8"), p[1].encode("utf-8")))


@pytest_twisted.ensureDeferred
async def test_pages_by_name_visit_every_series_once_in_code_point_order(fleet: WebHarness, reactor: Any):
    """
    Small pages, followed by their cursors, list every series exactly once
    in (name, kind) code point order, each page holding at most C{limit}
    rows and the same C{total}; descending order is the exact reverse.
    """
    want = codePointOrder(expectedSeries())
    rows, bodies = await pages(reactor, fleet.url, limit=4)
    assert pairs(rows) == want
    assert all(len(b["sensors"]) <= 4 for b in bodies) and len(bodies) == -(-len(want) // 4)
    assert {b["total"] for b in bodies} == {len(want)} and not any(b["total_capped"] for b in bodies)
    down, _ = await pages(reactor, fleet.url, limit=3, sort="-name")
    assert pairs(down) == want[::-1]


@pytest_twisted.ensureDeferred
async def test_pages_by_last_seen_visit_every_series_once(fleet: WebHarness, reactor: Any):
    """
    Sorted by last_seen (ties broken by name and kind), ascending and
    descending, the pages hold every series once in that order.
    """
    for sort in ("last_seen", "-last_seen"):
        rows, _ = await pages(reactor, fleet.url, limit=5, sort=sort)
        assert sorted(pairs(rows)) == sorted(expectedSeries())
        keys = [(r["last_seen"], r["sensor"].encode(), r["kind"].encode()) for r in rows]
        assert keys == sorted(keys, reverse=sort.startswith("-"))


@pytest_twisted.ensureDeferred
async def test_entries_keep_the_old_keys_and_add_state_and_interval(fleet: WebHarness, reactor: Any):
    """
    Each entry has the keys /api/sensors always had, plus its state and
    expected interval learned from its cadence (10 s here).
    """
    fleet.connected = {"greenhouse-1"}
    _, body = await getJSON(reactor, fleet.url + "/api/sensors?" + urlencode({"prefix": "greenhouse-1"}))
    entry = next(s for s in body["sensors"] if (s["sensor"], s["kind"]) == ("greenhouse-1", "temperature"))
    assert set(entry) >= {"sensor", "kind", "unit", "value", "ts", "time", "count", "first_seen", "last_seen",
                          "connected"}
    assert (entry["unit"], entry["value"], entry["count"], entry["connected"]) == ("C", 24.0, 5, True)
    assert (entry["state"], entry["interval"]) == ("live", pytest.approx(10.0))
    assert isinstance(body["now"], float)


@pytest_twisted.ensureDeferred
async def test_filters_prefix_glob_kind_state(fleet: WebHarness, reactor: Any):
    """
    prefix and glob match names literally but for the glob's * and ?
    (a %, _ or [ in a name is no wildcard); kind and state narrow further;
    total counts what the filters match.
    """
    every = expectedSeries()

    async def names(**params: Any) -> List[Tuple[str, Optional[str]]]:
        rows, bodies = await pages(reactor, fleet.url, limit=2, **params)
        assert bodies[0]["total"] == len(rows)
        return sorted(pairs(rows))

    assert await names(prefix="greenhouse-") == sorted(p for p in every if p[0].startswith("greenhouse-"))
    assert await names(prefix="silo-") == sorted(p for p in every if p[0].startswith("silo-"))
    assert await names(glob="greenhouse-?") == sorted(p for p in every if p[0] in ("greenhouse-1", "greenhouse-2"))
    assert await names(glob="*house*") == sorted(p for p in every if "house" in p[0])
    assert await names(glob="green%house") == sorted(p for p in every if p[0] == "green%house")
    assert await names(glob="barn[3]") == sorted(p for p in every if p[0] == "barn[3]")
    assert await names(glob="*_x") == sorted(p for p in every if p[0] == "greenhouse_x")
    assert await names(glob="silo-?") == sorted(p for p in every if p[0].startswith("silo-"))
    assert await names(kind="humidity") == sorted(p for p in every if p[1] == "humidity")
    assert await names(prefix="greenhouse", glob="*-1*", kind="temperature") == [
        ("greenhouse-1", "temperature"), ("greenhouse-10", "temperature")]
    assert await names(prefix="barn", glob="silo*") == []
    assert await names(state="late") == sorted(p for p in every if p[0].startswith("barn"))
    assert await names(state="silent") == sorted(p for p in every if p[0].startswith("silo"))
    live = await names(state="live")
    assert live == sorted(p for p in every if not p[0].startswith(("barn", "silo")))
    assert await names(state="never") == []
    rows, _ = await pages(reactor, fleet.url, limit=1000)
    assert {r["state"] for r in rows if r["sensor"].startswith("barn")} == {"late"}
    assert {r["state"] for r in rows if r["sensor"].startswith("silo")} == {"silent"}


@pytest_twisted.ensureDeferred
async def test_a_sensor_never_seen_is_one_row_in_state_never(fleet: WebHarness, reactor: Any):
    """
    A sensor known to the store (provisioned) without any reading is listed
    once with kind null and state never, and counted in /api/fleet.
    """
    _insertSensor(fleet.storeURL, "provisioned-1")
    rows, _ = await pages(reactor, fleet.url, limit=3, state="never")
    assert [(r["sensor"], r["kind"], r["state"], r["count"], r["last_seen"]) for r in rows] == [
        ("provisioned-1", None, "never", 0, None)]
    for sort in ("name", "-last_seen"):
        every, _ = await pages(reactor, fleet.url, limit=4, sort=sort)
        assert len(every) == len(expectedSeries()) + 1
    _, summary = await getJSON(reactor, fleet.url + "/api/fleet")
    assert summary["states"]["never"] == 1 and summary["sensors"] == len(NAMES) + 1


def _insertSensor(storeURL: str, name: str) -> None:
    if storeURL.startswith("sqlite:"):
        with sqlite3.connect(storeURL[len("sqlite:"):]) as db:
            db.execute("INSERT INTO sensors (name, created_at) VALUES (?, 0)", (name,))
        return
    import psycopg

    with psycopg.connect(storeURL, autocommit=True) as conn:
        conn.execute("INSERT INTO sensors (name, created_at) VALUES (%s, 0)", (name,))


@pytest_twisted.ensureDeferred
async def test_fleet_counts_series_by_state_and_kind(fleet: WebHarness, reactor: Any):
    """
    /api/fleet: sensors, series, series by state, by kind and state, and
    alert counts (none without rules); the same figures as the pages'.
    """
    _, body = await getJSON(reactor, fleet.url + "/api/fleet")
    every = expectedSeries()
    late = sum(1 for p in every if p[0].startswith("barn"))
    silent = sum(1 for p in every if p[0].startswith("silo"))
    assert body["sensors"] == len(NAMES) and body["series"] == len(every)
    assert body["states"] == {"live": len(every) - late - silent, "late": late, "silent": silent, "never": 0}
    humid = [p for p in every if p[1] == "humidity"]
    assert body["kinds"]["humidity"]["series"] == len(humid)
    assert sum(k["late"] for k in body["kinds"].values()) == late
    assert body["alerts"] == {"pending": 0, "firing": 0}
    metrics = await within(httpClient(reactor).get(fleet.url + "/metrics"), reactor)
    text = (await within(metrics.content(), reactor)).decode()
    assert f'sensornet_sensors{{state="silent"}} {float(silent)}' in text


@pytest.mark.parametrize(
    "query, parameter",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"state": "asleep"}, "state"),
        ({"sort": "value"}, "sort"),
        ({"glob": "a\x01"}, "glob"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"prefx": "a"}, "prefx"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_parameters_are_refused_with_400(fleet: WebHarness, reactor: Any, query, parameter):
    """
    A bad limit, state, sort, glob or cursor, or an unknown parameter, is
    answered 400 naming the parameter.
    """
    _, body = await getJSON(reactor, fleet.url + "/api/sensors?" + urlencode(query), expect=400)
    assert body["parameter"] == parameter


@pytest_twisted.ensureDeferred
async def test_a_cursor_is_refused_with_another_sort(fleet: WebHarness, reactor: Any):
    """
    A cursor names a position in one sort order: followed with another it
    is refused rather than silently misread.
    """
    _, first = await getJSON(reactor, fleet.url + "/api/sensors?limit=2")
    query = urlencode({"cursor": first["next"], "sort": "-last_seen"})
    _, body = await getJSON(reactor, fleet.url + "/api/sensors?" + query, expect=400)
    assert body["parameter"] == "cursor"


@pytest_twisted.ensureDeferred
async def test_sparklines_fold_rollups_into_points(fleet: WebHarness, reactor: Any):
    """
    /api/sparklines answers every asked series in one response, in the
    order asked, with one value per point (null where nothing was read);
    an unknown series has only nulls.
    """
    query = urlencode([("series", "greenhouse-1:temperature"), ("series", "silo-z:temperature"),
                       ("series", "nobody:temperature"), ("window", "7200"), ("points", "120")], doseq=True)
    _, body = await getJSON(reactor, fleet.url + "/api/sparklines?" + query)
    assert body["step"] == 60.0 and [s["sensor"] for s in body["series"]] == ["greenhouse-1", "silo-z", "nobody"]
    values = {s["sensor"]: s["values"] for s in body["series"]}
    assert all(len(v) == 120 for v in values.values())
    assert values["nobody"] == [None] * 120
    seen = [v for v in values["greenhouse-1"] if v is not None]
    # Five readings 20..24 over 40 s: one or two minute slots, their mean 22.
    assert 1 <= len(seen) <= 2 and min(seen) >= 20.0 and max(seen) <= 24.0
    silo = [i for i, v in enumerate(values["silo-z"]) if v is not None]
    assert silo and max(silo) < 120 - 55
    for bad in ({"series": "no-colon"}, {"window": "-1", "series": "a:b"}, {}):
        _, refused = await getJSON(reactor, fleet.url + "/api/sparklines?" + urlencode(bad), expect=400)
        assert refused["parameter"] in ("series", "window")


def _fillSeries(path: str, count: int, now: float) -> None:
    """
    C{count} sensors with one temperature series each, straight into the
    SQLite tables (the writer would take minutes): received 10 s apart,
    the last one C{now}.
    """
    nowUs = int(now * 1_000_000)
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO sensors (id, name, created_at) VALUES (?, ?, 0)",
            ((i + 1, f"node-{i:06d}") for i in range(count)),
        )
        db.executemany(
            "INSERT INTO series (id, sensor, kind, unit, value, ts, count, first_seen, last_seen, max_seq) "
            "VALUES (?, ?, 'temperature', 'C', ?, ?, 10, ?, ?, 9)",
            ((i + 1, i + 1, float(i % 40), nowUs - i, nowUs - 90_000_000 - i, nowUs - i) for i in range(count)),
        )


@pytest_twisted.ensureDeferred
async def test_200000_series_page_with_bounded_bytes_each_visited_once(tmp_path: Path, reactor: Any):
    """
    With 200,000 series stored, every page of 1,000 answers with a bounded
    body (not the 63 MB of the unpaged list), the pages together visit every
    series once, and a filtered page (a prefix) and the fleet summary
    answer too.
    """
    count = 200_000
    h = WebHarness(tmp_path, reactor)
    await within(h.start(), reactor)
    try:
        _fillSeries(str(tmp_path / "readings.sqlite3"), count, reactor.seconds())
        client = httpClient(reactor)
        seen = set()
        cursor = None
        biggest = 0
        started = time.monotonic()
        for page in range(count // 1000 + 1):
            query = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
            response = await within(client.get(h.url + "/api/sensors?" + urlencode(query)), reactor)
            raw = await within(response.content(), reactor)
            assert response.code == 200
            biggest = max(biggest, len(raw))
            body = json.loads(raw)
            names = [s["sensor"] for s in body["sensors"]]
            assert not seen.intersection(names)
            seen.update(names)
            assert body["total"] == count
            cursor = body["next"]
            if cursor is None:
                break
        assert len(seen) == count and page == count // 1000 - 1
        assert biggest < 400_000, biggest
        assert time.monotonic() - started < 240
        _, narrow = await getJSON(reactor, h.url + "/api/sensors?" + urlencode({"prefix": "node-19999"}))
        assert [s["sensor"] for s in narrow["sensors"]] == [f"node-19999{i}" for i in range(10)]
        assert narrow["total"] == 10 and narrow["next"] is None
        _, summary = await getJSON(reactor, h.url + "/api/fleet")
        assert summary["series"] == count and sum(summary["states"].values()) == count
    finally:
        await within(h.stop(), reactor)


@pytest_twisted.ensureDeferred
async def test_silent_series_for_a_rule_come_from_the_store(fleet: WebHarness, reactor: Any):
    """
    The query a silence rule runs: series matching its glob (and kind) that
    sent nothing for more than N of their intervals; never-seen sensors are
    not silent.
    """
    _insertSensor(fleet.storeURL, "barn-never")
    now = reactor.seconds()
    found = await within(fleet.queries.silentSeries(now, "barn*", None, 2.5, 100), reactor)
    assert sorted((s, k) for s, k, _ in found) == sorted(p for p in expectedSeries() if p[0].startswith("barn"))
    assert all(abs(last - (now - 30)) < 5 for _, _, last in found)
    assert await within(fleet.queries.silentSeries(now, "barn*", None, 4, 100), reactor) == []
    found = await within(fleet.queries.silentSeries(now, "*", "humidity", 6, 100), reactor)
    assert sorted(s for s, _, _ in found) == sorted(p[0] for p in expectedSeries()
                                                    if p[0].startswith("silo") and p[1] == "humidity")


@pytest_twisted.ensureDeferred
async def test_the_fleet_endpoints_need_a_readers_token(tmp_path: Path, reactor: Any):
    """
    With HTTP access control on, every fleet endpoint answers 401 without a
    token and with a sensor's, and answers a reader's.
    """
    from sensornet.identity.registry import Principal
    from sensornet.web.auth import BearerAuthenticator

    principals = {"snt_" + "r" * 43: Principal("ops", "reader", ()), "snt_" + "s" * 43: Principal("s1", "sensor", ())}
    h = WebHarness(tmp_path, reactor, authenticator=BearerAuthenticator(principals.get))
    await within(h.start(), reactor)
    try:
        for path in ("/api/sensors", "/api/fleet", "/api/sparklines?series=a:b", "/api/alerts"):
            await getJSON(reactor, h.url + path, expect=401)
            await getJSON(reactor, h.url + path, expect=401, headers={"Authorization": "Bearer snt_" + "s" * 43})
            await getJSON(reactor, h.url + path, headers={"Authorization": "Bearer snt_" + "r" * 43})
    finally:
        await within(h.stop(), reactor)
