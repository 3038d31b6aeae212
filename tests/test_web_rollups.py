"""
C{GET /api/readings?step=...}: one sensor's readings folded into buckets of
a minute or an hour, read from the store's rollups over real HTTP on
loopback, against SQLite and a real PostgreSQL (the C{store_url} fixture).

Every answer is checked against a recomputation from the raw readings
written, before and after the compactor moved them into blocks and rollups,
and after more readings arrived on top of compacted buckets. Plus: how
C{auto} chooses, the default range, the bound on buckets, the 400s for
hostile parameters, CSV, and the pure range arithmetic.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlencode

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from sensornet.interfaces import IRollupQueries, IStoreQueries
from sensornet.reading import Reading
from sensornet.store import Store, StoreUnavailable, openStore
from sensornet.store.layout import ROLLUP_TABLES
from sensornet.store.queries import EARLIEST_TIME, LATEST_TIME, MAX_BUCKETS, STEP_SECONDS, StoreQueries, bucketRange
from sensornet.web.api import ROLLUP_CSV_COLUMNS, ReadingsResource, bucketsFromRows
from sensornet.web.encoding import isoTime
from sensornet.web.params import ParameterError, parseReadingsQuery, rollupRange
from sensornet.web.testing import WebHarness

from test_web_api import _FailingQueries, httpClient, within

#: "Now" by the resource's clock in these tests: 2024-06-11T10:00:00Z plus
#: 17.25 s, so that "now" falls inside a minute and an hour.
NOW = 1718100017.25
DAY = 86_400.0


# -- the site -----------------------------------------------------------------


@dataclass
class RollupSite:
    """
    A store to write to, its query side, and C{/api/readings} served on
    loopback with a fake clock at L{NOW}.
    """

    url: str
    store: Store
    clock: Clock
    readings: List[Reading]

    def write(self, readings: Sequence[Reading]) -> None:
        # In batches of varying size, so the store holds several fresh rows
        # per series (and, once compacted, several blocks).
        batch = list(readings)
        i = 0
        while i < len(batch):
            size = 1 + (i * 7) % 53
            self.store.write(batch[i:i + size])
            i += size
        self.readings.extend(batch)

    def compact(self) -> None:
        self.store.compactOnce(self.store.freshWatermark(), 10**6)


@pytest_twisted.async_yield_fixture
async def site(store_url: str, reactor: Any):
    store = openStore(store_url)
    queries = StoreQueries(store_url, reactor)
    queries.startService()
    clock = Clock()
    clock.advance(NOW)
    root = Resource()
    api = Resource()
    root.putChild(b"api", api)
    api.putChild(b"readings", ReadingsResource(queries, clock))
    port = await within(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(root)), reactor)
    try:
        yield RollupSite(f"http://127.0.0.1:{port.getHost().port}/api/readings", store, clock, [])
    finally:
        await within(defer.maybeDeferred(port.stopListening), reactor)
        await within(queries.stopService(), reactor)
        store.close()


async def get(reactor: Any, url: str, **kw: Any) -> Tuple[int, Any, bytes]:
    response = await within(httpClient(reactor).get(url, **kw), reactor)
    body = await within(response.content(), reactor)
    return response.code, response.headers, body


async def rollupsJSON(reactor: Any, site: RollupSite, **params: Any) -> Dict[str, Any]:
    code, headers, body = await get(reactor, site.url + "?" + urlencode(params))
    assert code == 200, body
    assert headers.getRawHeaders(b"content-type")[0].startswith(b"application/json")
    answer = json.loads(body)
    assert headers.getRawHeaders(b"x-step") == [answer["step"].encode()]
    return answer


async def refusal(reactor: Any, url: str) -> Tuple[Optional[str], str]:
    """
    The parameter and message of a 400 answer to C{url}.
    """
    code, headers, body = await get(reactor, url)
    assert code == 400, body
    assert headers.getRawHeaders(b"content-type")[0].startswith(b"application/json")
    answer = json.loads(body)
    return answer.get("parameter"), answer["error"]


# -- the recomputation ---------------------------------------------------------


def recompute(
    readings: Sequence[Reading], sensor: str, kind: Optional[str], since: float, until: float, step: str
) -> List[Dict[str, Any]]:
    """
    The buckets of C{step} in [C{since}, C{until}) computed from the raw
    readings, whole (as the API answers them), ordered by (ts, kind).
    """
    width = STEP_SECONDS[step]
    groups: Dict[Tuple[float, str], List[Reading]] = {}
    for r in readings:
        if r.sensor != sensor or (kind is not None and r.kind != kind):
            continue
        assert r.ts is not None
        start = math.floor(r.ts / width) * width
        if since <= start < until:
            groups.setdefault((float(start), r.kind), []).append(r)
    out = []
    for (start, k), members in sorted(groups.items()):
        values = [m.value for m in members]
        latest = max(members, key=lambda m: m.ts or 0.0)
        out.append({
            "sensor": sensor, "kind": k, "ts": start, "count": len(members), "min": min(values),
            "max": max(values), "mean": math.fsum(values) / len(values), "last": latest.value,
        })
    return out


def assertSameBuckets(answered: List[Dict[str, Any]], expected: List[Dict[str, Any]]) -> None:
    assert [(b["ts"], b["kind"]) for b in answered] == [(b["ts"], b["kind"]) for b in expected]
    for got, want in zip(answered, expected):
        assert got["sensor"] == want["sensor"]
        assert (got["count"], got["min"], got["max"], got["last"]) == (
            want["count"], want["min"], want["max"], want["last"]
        ), got
        # The store sums in its own order: the mean may differ in the last bits.
        assert got["mean"] == pytest.approx(want["mean"], rel=1e-12, abs=1e-12)


def fleet(seed: int = 1) -> List[Reading]:
    """
    Three days of readings before L{NOW} for sensor C{s1} (temperature every
    few seconds over the last three hours and sparsely before; humidity now
    and then) and a neighbour C{s2} that must never show up. Times are
    distinct within a series, so "last" is unambiguous.
    """
    rng = random.Random(seed)
    out: List[Reading] = []
    seq = 0

    def add(sensor: str, kind: str, ts: float) -> None:
        nonlocal seq
        seq += 1
        out.append(Reading(sensor, kind, round(rng.uniform(-20, 40), 3), "C", ts=ts, seq=seq,
                           peer="127.0.0.1:4000", received_at=ts + 0.01))

    t = NOW - 3 * 3600
    while t < NOW:
        add("s1", "temperature", t)
        t += rng.uniform(1.0, 9.0)
    t = NOW - 3 * DAY
    while t < NOW - 3 * 3600:
        add("s1", "temperature", t)
        t += rng.uniform(300.0, 2400.0)
    t = NOW - 2 * DAY
    while t < NOW:
        add("s1", "humidity", t)
        t += rng.uniform(60.0, 900.0)
    for i in range(200):
        add("s2", "temperature", NOW - i * 37.0)
    rng.shuffle(out)
    return out


# -- exact answers, before and after compaction --------------------------------


CASES = [
    # (step, kind, since, until) as the client gives them; None: not given.
    ("1m", None, NOW - 3 * 3600 + 13.7, NOW),
    ("1m", "temperature", NOW - 1800, NOW - 600.5),
    ("1h", None, NOW - 3 * DAY, NOW),
    ("1h", "humidity", NOW - 2 * DAY - 1234.5, NOW - 3600.1),
    ("1h", "temperature", None, None),
    ("1m", None, None, None),
]


async def checkCases(reactor: Any, site: RollupSite) -> None:
    for step, kind, since, until in CASES:
        params: Dict[str, Any] = {"sensor": "s1", "step": step}
        if kind is not None:
            params["kind"] = kind
        if since is not None:
            params["since"] = repr(since)
        if until is not None:
            params["until"] = repr(until)
        answer = await rollupsJSON(reactor, site, **params)
        start, end, _ = bucketRange(
            since if since is not None else (until or NOW) - (DAY if step == "1m" else 30 * DAY),
            until if until is not None else NOW,
            step,
        )
        assert (answer["sensor"], answer["step"], answer["since"], answer["until"]) == ("s1", step, start, end)
        expected = recompute(site.readings, "s1", kind, start, end, step)
        assert expected, "the case covers some readings"
        assertSameBuckets(answer["buckets"], expected)


@pytest_twisted.ensureDeferred
async def test_buckets_equal_a_recomputation_from_raw_readings_before_and_after_compaction(site, reactor):
    """
    1m and 1h buckets (count, min, max, mean, last), with and without a
    kind, with bounds inside buckets and with the default range, equal what
    the raw readings add up to: while every reading is fresh, once all are
    compacted, and when new readings land in buckets already compacted (the
    stored rollup and the fresh readings merge).
    """
    readings = fleet()
    site.write(readings[: len(readings) // 2])
    await checkCases(reactor, site)
    site.write(readings[len(readings) // 2:])
    await checkCases(reactor, site)
    site.compact()
    await checkCases(reactor, site)
    more = fleet(seed=2)
    site.write([Reading(r.sensor, r.kind, r.value, r.unit, ts=r.ts + 0.5, seq=100_000 + (r.seq or 0),
                        peer=r.peer, received_at=r.received_at) for r in more if r.sensor == "s1"][:800])
    await checkCases(reactor, site)
    site.compact()
    await checkCases(reactor, site)


@pytest_twisted.ensureDeferred
async def test_buckets_have_the_readings_time_format_and_nothing_of_other_sensors(site, reactor):
    """
    A bucket is {sensor, kind, ts, time, count, min, max, mean, last}: ts
    in epoch seconds and time in ISO 8601, as a reading's; no other
    sensor's readings appear, and an unknown sensor has no buckets.
    """
    site.write(fleet())
    answer = await rollupsJSON(reactor, site, sensor="s1", step="1h", since="2024-06-11T08:00:00Z",
                               until="2024-06-11T10:00:00Z")
    first = answer["buckets"][0]
    assert set(first) == {"sensor", "kind", "ts", "time", "count", "min", "max", "mean", "last"}
    assert (first["ts"], first["time"]) == (1718092800.0, "2024-06-11T08:00:00.000Z")
    assert {b["sensor"] for b in answer["buckets"]} == {"s1"}
    assert (answer["since"], answer["until"]) == (1718092800.0, 1718100000.0)
    empty = await rollupsJSON(reactor, site, sensor="nobody", step="1h")
    assert empty["buckets"] == []


@pytest_twisted.ensureDeferred
async def test_a_sum_that_overflows_gives_a_null_mean_not_a_500(site, reactor):
    """
    Two readings of 1.7e308 in one bucket sum past the largest float: the
    mean is null (JSON has no infinity), CSV leaves it empty; min, max
    and last stay exact.
    """
    site.write([Reading("huge", "x", 1.7e308, ts=NOW - 30, seq=1), Reading("huge", "x", 1.7e308, ts=NOW - 20, seq=2)])
    answer = await rollupsJSON(reactor, site, sensor="huge", step="1m", since=NOW - 60)
    assert [(b["count"], b["mean"], b["max"]) for b in answer["buckets"]] == [(2, None, 1.7e308)]
    code, _, body = await get(reactor, site.url + "?" + urlencode({"sensor": "huge", "step": "1m", "format": "csv"}))
    assert code == 200
    row = list(csv.DictReader(io.StringIO(body.decode())))[0]
    assert (row["count"], row["mean"]) == ("2", "")


# -- auto, the default range, the bound ----------------------------------------


@pytest.mark.parametrize(
    "params, step, since, until",
    [
        ({}, "1m", NOW - DAY, NOW),
        ({"since": NOW - 2 * DAY}, "1m", NOW - 2 * DAY, NOW),
        ({"since": NOW - 2 * DAY - 0.001}, "1h", NOW - 2 * DAY - 0.001, NOW),
        ({"since": NOW - 40 * DAY, "until": NOW - 30 * DAY}, "1h", NOW - 40 * DAY, NOW - 30 * DAY),
        ({"until": NOW - 5 * DAY}, "1m", NOW - 6 * DAY, NOW - 5 * DAY),
    ],
)
@pytest_twisted.ensureDeferred
async def test_auto_takes_minutes_up_to_two_days_and_hours_beyond_and_says_which(
    site, reactor, params, step, since, until
):
    """
    step=auto answers with 1m buckets when until - since is at most two
    days (since defaulting to a day before until, until to now), 1h
    beyond; the answer's step (and X-Step) name the one used, and its
    buckets are those of that step.
    """
    site.write(fleet())
    answer = await rollupsJSON(reactor, site, sensor="s1", step="auto", **params)
    assert answer["step"] == step
    start, end, _ = bucketRange(since, until, step)
    assert (answer["since"], answer["until"]) == (start, end)
    assertSameBuckets(answer["buckets"], recompute(site.readings, "s1", None, start, end, step))


@pytest_twisted.ensureDeferred
async def test_the_default_range_ends_now_by_the_resources_clock(site, reactor):
    """
    Without until, the range ends at the resource's clock, not the
    wall clock: advancing the fake clock by an hour moves it.
    """
    one = await rollupsJSON(reactor, site, sensor="s1", step="1h")
    assert (one["since"], one["until"]) == (1718100000.0 - 30 * DAY, 1718103600.0)
    site.clock.advance(3600)
    two = await rollupsJSON(reactor, site, sensor="s1", step="1h")
    assert (two["since"], two["until"]) == (1718103600.0 - 30 * DAY, 1718107200.0)


@pytest_twisted.ensureDeferred
async def test_more_than_the_bucket_limit_is_refused_suggesting_a_coarser_step(site, reactor):
    """
    1m over a year is 525,600 buckets: 400 naming the limit and step=1h;
    1h over twenty years is refused too (suggesting a shorter range); the
    largest range allowed is answered.
    """
    parameter, message = await refusal(
        reactor, site.url + "?" + urlencode({"sensor": "s1", "step": "1m", "since": NOW - 365 * DAY}))
    assert parameter == "step"
    assert "100000" in message and "step=1h" in message
    parameter, message = await refusal(
        reactor, site.url + "?" + urlencode({"sensor": "s1", "step": "1h", "since": NOW - 20 * 365 * DAY}))
    assert parameter == "step" and "100000" in message and "shorter range" in message
    parameter, message = await refusal(
        reactor, site.url + "?" + urlencode({"sensor": "s1", "step": "auto", "since": "1", "until": "9999-01-01"}))
    assert parameter == "step" and "100000" in message
    edge = 1718092800.0
    answer = await rollupsJSON(reactor, site, sensor="s1", step="1m", since=edge - MAX_BUCKETS * 60, until=edge)
    assert answer["buckets"] == []


# -- hostile parameters --------------------------------------------------------


HOSTILE = [
    # (raw query string, the parameter the 400 names, words the message holds)
    ("sensor=s1&step=1M", "step", "1m, 1h, auto"),
    ("sensor=s1&step=0", "step", "1m, 1h, auto"),
    ("sensor=s1&step=1d", "step", "1m, 1h, auto"),
    ("sensor=s1&step=%201m", "step", "1m, 1h, auto"),
    ("sensor=s1&step=1m&step=1h", "step", "only once"),
    ("sensor=s1&step=1m%00", "step", "NUL"),
    ("sensor=s1%00&step=1m", "sensor", "NUL"),
    ("sensor=s1&step=%ff", "step", "UTF-8"),
    ("step=1h", "sensor", "required"),
    ("step=1h&kind=temperature", "sensor", "required"),
    ("sensor=s1&step=1h&cursor=abc", "cursor", "cannot be used with step"),
    ("sensor=s1&step=1h&limit=10", "limit", "cannot be used with step"),
    ("sensor=s1&step=1h&since=1e300", "since", "between the years 1 and 9999"),
    ("sensor=s1&step=1h&until=-1e300", "until", "between the years 1 and 9999"),
    ("sensor=s1&step=1h&since=nan", "since", "finite"),
    ("sensor=s1&step=1h&since=inf", "since", "finite"),
    ("sensor=s1&step=1h&since=2024-06-11&until=2024-06-10", "until", "earlier than since"),
    ("sensor=s1&step=1m&since=2030-01-01", "since", "later than until"),
    ("sensor=s1&step=1h&since=0001-01-01&until=9999-12-31T23:59:59Z", "step", "100000"),
    ("sensor=s1&step=1h&format=xml", "format", "json, csv"),
    ("sensor=s1&step=1h&steps=1h", "steps", "unknown parameter"),
]


@pytest.mark.parametrize("query, parameter, words", HOSTILE)
@pytest_twisted.ensureDeferred
async def test_hostile_step_queries_are_400_naming_the_parameter(site, reactor, query, parameter, words):
    """
    A bad step (wrong case, zero, a day, padded, repeated, with a NUL, not
    UTF-8), a missing sensor, paging with a step, out-of-range or inverted
    times, a range too wide for any step: 400 with the parameter and a
    message saying what is wrong, never a 500.
    """
    named, message = await refusal(reactor, site.url + "?" + query)
    assert named == parameter
    assert words in message, message


@pytest_twisted.ensureDeferred
async def test_extreme_but_valid_ranges_are_answered(site, reactor):
    """
    The first and the last hours ISO 8601 can write, and an empty range
    (since == until), are answered 200, not 500: the range stays within
    what both backends compare.
    """
    first = await rollupsJSON(reactor, site, sensor="s1", step="1h", since="0001-01-01T00:00:00Z",
                              until="0001-01-01T00:30:00Z")
    assert (first["since"], first["buckets"]) == (-62135596800.0, [])
    last = await rollupsJSON(reactor, site, sensor="s1", step="1h", since="9999-12-31T23:10:00Z",
                             until="9999-12-31T23:59:59.999Z")
    assert last["until"] == LATEST_TIME and last["buckets"] == []
    empty = await rollupsJSON(reactor, site, sensor="s1", step="1m", since=NOW, until=NOW)
    assert empty["since"] == empty["until"] and empty["buckets"] == []


@pytest_twisted.ensureDeferred
async def test_without_step_the_raw_answer_is_unchanged(site, reactor):
    """
    The same query without step still pages raw readings; an empty step
    (step=) means "not given", as for every other parameter.
    """
    site.write(fleet()[:50])
    code, headers, body = await get(reactor, site.url + "?sensor=s1&step=&limit=5")
    assert code == 200
    answer = json.loads(body)
    assert set(answer) == {"readings", "next"} and len(answer["readings"]) == 5
    assert headers.getRawHeaders(b"x-step") is None


# -- CSV ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_csv_has_the_bucket_columns_and_neutralises_formula_text(site, reactor):
    """
    format=csv (or Accept: text/csv) answers sensor, kind, ts, count, min,
    max, mean, last: ts in epoch seconds as the readings' CSV writes it,
    numbers (negative ones too) as plain numbers, a sensor or kind a
    spreadsheet would run as a formula with a leading apostrophe.
    """
    site.write([
        Reading("=HYPERLINK(1)", "@kind", -5.5, ts=NOW - 100, seq=1),
        Reading("=HYPERLINK(1)", "@kind", 7.25, ts=NOW - 90, seq=2),
        Reading("=HYPERLINK(1)", "@kind", 1.0, ts=NOW - 30, seq=3),
    ])
    for extra in ({"format": "csv"}, {}):
        code, headers, body = await get(
            reactor, site.url + "?" + urlencode({"sensor": "=HYPERLINK(1)", "step": "1m", **extra}),
            headers={b"accept": [b"text/csv"]},
        )
        assert code == 200, body
        assert headers.getRawHeaders(b"content-type")[0].startswith(b"text/csv")
        assert headers.getRawHeaders(b"x-step") == [b"1m"]
        lines = body.decode().split("\r\n")
        assert lines[0] == ",".join(ROLLUP_CSV_COLUMNS)
        rows = list(csv.DictReader(io.StringIO(body.decode())))
        assert [(r["sensor"], r["kind"], r["ts"]) for r in rows] == [
            ("'=HYPERLINK(1)", "'@kind", "1718099880.0"),
            ("'=HYPERLINK(1)", "'@kind", "1718099940.0"),
        ]
        assert [(r["count"], r["min"], r["max"], r["mean"], r["last"]) for r in rows] == [
            ("2", "-5.5", "7.25", "0.875", "7.25"),
            ("1", "1.0", "1.0", "1.0", "1.0"),
        ]


# -- the whole site ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_servers_site_answers_steps_with_the_readings_a_writer_committed(tmp_path, reactor):
    """
    Through the site a server builds (WebHarness: a BatchWriter, the query
    side, makeSite), readings committed a moment ago are in the 1m bucket of
    now, and in the 1h one.
    """
    harness = WebHarness(tmp_path, reactor)
    await within(harness.start(), reactor)
    try:
        now = time.time()
        readings = [Reading("w1", "temperature", v, "C", ts=now - 0.5 + v / 100, seq=int(v), received_at=now)
                    for v in (1.0, 2.0, 3.0)]
        await within(harness.store(readings), reactor)
        for step in ("1m", "1h"):
            code, _, body = await get(reactor, harness.url + f"/api/readings?sensor=w1&step={step}")
            assert code == 200, body
            answer = json.loads(body)
            assert answer["step"] == step and answer["until"] >= now
            assert sum(b["count"] for b in answer["buckets"]) == 3
            assertSameBuckets(answer["buckets"], recompute(readings, "w1", None, answer["since"], answer["until"], step))
    finally:
        await within(harness.stop(), reactor)


@pytest_twisted.ensureDeferred
async def test_a_query_side_without_rollups_answers_501():
    """
    A query side that provides only IStoreQueries (an embedder's stand-in)
    still serves raw readings' errors as before, and a step is answered
    501, not a traceback.
    """
    stub = StubTreq(ReadingsResource(_FailingQueries(lambda: defer.succeed(True)), Clock()))
    response = await stub.get("http://x/?sensor=s1&step=1h")
    body = json.loads(await response.content())
    assert response.code == 501 and body["parameter"] == "step"


def test_the_query_side_provides_rollups_and_the_store_steps_agree(tmp_path: Path, reactor: Any):
    """
    StoreQueries provides IRollupQueries (and so IStoreQueries); the steps
    the API offers are the rollup tables the store keeps.
    """
    queries = StoreQueries(f"sqlite:{tmp_path / 'unopened.sqlite3'}", reactor)
    assert verifyObject(IRollupQueries, queries) and verifyObject(IStoreQueries, queries)
    assert {step: seconds * 1_000_000 for step, seconds in STEP_SECONDS.items()} == {
        step: width for step, (width, _) in ROLLUP_TABLES.items()
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"step": "1d"},
        {"step": "auto"},
        {"sensor": ""},
        {"sensor": None},
        {"since": None},
        {"since": float("nan")},
        {"since": 1e300},
        {"since": NOW, "until": NOW - 1},
        {"since": NOW - 365 * DAY, "step": "1m"},
    ],
)
@pytest_twisted.ensureDeferred
async def test_the_query_side_refuses_bad_arguments_before_any_thread(kwargs, reactor):
    """
    StoreQueries.rollups fails with ValueError for a bad argument, a
    missing bound or too many buckets, even when not running (nothing
    reaches a store).
    """
    queries = StoreQueries("sqlite::memory:", reactor)
    arguments: Dict[str, Any] = {"sensor": "s1", "kind": None, "since": NOW - 3600, "until": NOW, "step": "1m"}
    arguments.update(kwargs)
    with pytest.raises(ValueError):
        await queries.rollups(**arguments)


# -- the pure parts -------------------------------------------------------------


@given(st.lists(st.one_of(
    st.integers(min_value=-62135596800 // 60, max_value=253402300740 // 60).map(lambda m: m * 60.0),
    st.floats(min_value=-62135596800.0, max_value=253402300740.0),
), max_size=50))
def test_bucket_times_are_written_as_isoTime_writes_them(times):
    """
    bucketsFromRows formats times by the day for speed; every time is still
    exactly what isoTime (a reading's time) writes, whole minutes or not.
    """
    rows = [{"sensor": "s", "kind": "k", "ts": t, "count": 1, "min": 0.0, "max": 0.0, "mean": 0.0, "last": 0.0}
            for t in times]
    assert [b["time"] for b in bucketsFromRows(rows)] == [isoTime(t) for t in times]



@pytest.mark.parametrize(
    "since, until, step, expected",
    [
        (60.0, 120.0, "1m", (60.0, 120.0, 1)),
        (61.0, 119.0, "1m", (60.0, 120.0, 1)),
        (59.999999, 120.000001, "1m", (0.0, 180.0, 3)),
        (-61.0, -1.0, "1m", (-120.0, 0.0, 2)),
        (3600.5, 3600.5, "1h", (3600.0, 3600.0, 0)),
        (0.0, 365 * DAY, "1h", (0.0, 365 * DAY, 8760)),
    ],
)
def test_bucket_range_covers_the_buckets_overlapping_the_range(since, until, step, expected):
    """
    bucketRange widens a range to its step's edges and counts the buckets,
    in whole microseconds (negative times included); an empty range has
    none.
    """
    assert bucketRange(since, until, step) == expected


def test_rollup_range_defaults_and_auto_without_a_server():
    """
    rollupRange: until defaults to now, since to a day (1m, auto) or 30
    days (1h) before until; auto's threshold is two days inclusive.
    """
    def plan(now: float, **args: str):
        query = parseReadingsQuery({k.encode(): [v.encode()] for k, v in args.items()})
        return rollupRange(query, now)

    assert plan(7200.0, sensor="s", step="1h") == rollupRange(
        parseReadingsQuery({b"sensor": [b"s"], b"step": [b"1h"], b"since": [b"-2584800"], b"until": [b"7200"]}),
        0.0,
    )
    assert plan(10 * DAY, sensor="s", step="auto").step == "1m"
    assert plan(10 * DAY, sensor="s", step="auto", since=str(8 * DAY)).step == "1m"
    assert plan(10 * DAY, sensor="s", step="auto", since=str(8 * DAY - 1)).step == "1h"
    with pytest.raises(ParameterError) as caught:
        plan(0.0, sensor="s", step="1m", since="60")
    assert caught.value.parameter == "since"


_stepNames = st.sampled_from([b"sensor", b"kind", b"since", b"until", b"limit", b"cursor", b"format", b"step"])
_stepValues = st.one_of(
    st.sampled_from([b"1m", b"1h", b"auto", b"1M", b"0", b"1d", b"", b"s1", b"\x00", b"\xff"]),
    st.text(max_size=20).map(lambda text: text.encode("utf-8")),
    st.floats().map(lambda number: repr(number).encode("ascii")),
    st.datetimes().map(lambda moment: moment.isoformat().encode("ascii")),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(_stepNames, st.lists(_stepValues, min_size=1, max_size=2)),
    st.floats(min_value=EARLIEST_TIME, max_value=LATEST_TIME),
)
def test_any_step_query_is_planned_within_the_bounds_or_refused_naming_a_parameter(args, now):
    """
    Whatever the query and the clock, parsing and planning a step query
    either raise ParameterError naming a parameter, or give a range on the
    step's edges, within the years 1 to 9999, of at most MAX_BUCKETS
    buckets, that StoreQueries.rollups takes.
    """
    try:
        query = parseReadingsQuery(args)
        if query.step is None:
            return
        plan = rollupRange(query, now)
    except ParameterError as e:
        assert isinstance(e.parameter, str) and e.message
        return
    assert plan.step in STEP_SECONDS and query.sensor
    assert EARLIEST_TIME <= plan.since <= plan.until <= LATEST_TIME
    assert 0 <= plan.buckets <= MAX_BUCKETS
    assert plan.since % STEP_SECONDS[plan.step] == 0
    failures: List[Any] = []
    StoreQueries("sqlite::memory:", Clock()).rollups(
        query.sensor, query.kind, plan.since, plan.until, plan.step).addErrback(failures.append)
    assert [f.value for f in failures if not f.check(StoreUnavailable)] == []
