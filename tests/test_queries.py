"""
StoreQueries (the HTTP API's read side) with the real reactor, against both
backends; cursor encoding as pure functions.
"""

from __future__ import annotations

from typing import Any, List

import pytest
import pytest_twisted

from sensornet.reading import Reading
from sensornet.store import openStore
from sensornet.store.queries import MAX_LIMIT, StoreQueries, decodeCursor, encodeCursor

T0 = 1_718_100_000.0
TIMEOUT = 20


@pytest.fixture
def filled(store_url):
    """
    A store with 95 readings of 3 sensors whose times repeat (many equal ts).
    """
    store = openStore(store_url)
    store.write([
        Reading(f"s{i % 3}", "temperature" if i % 2 else "humidity", float(i), "C",
                ts=T0 + (i % 4), seq=i, received_at=T0 + 10 + i, peer="p", dialect="native")
        for i in range(95)
    ])
    store.close()
    return store_url


@pytest.fixture
def queries(filled, reactor):
    service = StoreQueries(filled, reactor)
    service.startService()
    yield service
    pytest_twisted.blockon(service.stopService())


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_pages_visit_every_row_once_in_order(queries, reactor):
    """
    Following C{next} visits every reading exactly once, in (ts, id) order,
    though many share a ts; the last page has C{next} None.
    """
    seen: List[Any] = []
    cursor = None
    pages = 0
    while True:
        page = yield queries.readings(limit=8, cursor=cursor).addTimeout(TIMEOUT, reactor)
        pages += 1
        seen.extend(page["readings"])
        cursor = page["next"]
        if cursor is None:
            break
    assert pages == 12
    assert len({r["seq"] for r in seen}) == len(seen) == 95
    assert [(r["ts"], r["id"]) for r in seen] == sorted((r["ts"], r["id"]) for r in seen)
    assert set(seen[0]) == {"id", "sensor", "kind", "value", "unit", "ts", "seq", "received_at", "peer", "dialect"}


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_filters_and_limit_cap(queries, reactor):
    """
    sensor, kind, since and until filter; a huge limit is capped.
    """
    page = yield queries.readings(sensor="s1", kind="temperature", since=T0 + 1, until=T0 + 3, limit=10**9)
    expected = [i for i in range(95) if i % 3 == 1 and i % 2 == 1 and 1 <= i % 4 < 3]
    assert sorted(r["seq"] for r in page["readings"]) == expected
    assert page["next"] is None
    assert MAX_LIMIT == 10_000


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_sensors_from_summary(queries, reactor):
    """
    sensors() lists every (sensor, kind) with its count and latest value.
    """
    sensors = yield queries.sensors().addTimeout(TIMEOUT, reactor)
    assert [(s["sensor"], s["kind"]) for s in sensors] == [
        (f"s{i}", k) for i in range(3) for k in ("humidity", "temperature")
    ]
    assert sum(s["count"] for s in sensors) == 95
    assert set(sensors[0]) == {"sensor", "kind", "unit", "value", "ts", "count", "first_seen", "last_seen"}


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_bad_arguments_are_value_errors(queries, reactor):
    """
    A malformed cursor or limit fails the Deferred with ValueError.
    """
    for kwargs in ({"cursor": "not a cursor"}, {"cursor": encodeCursor((1.0, 1))[:-2] + "!!"},
                   {"limit": 0}, {"limit": "many"}, {"since": "yesterday"}):
        error = yield queries.readings(**kwargs).addErrback(lambda f: f.value)
        assert isinstance(error, ValueError), kwargs


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_ping_reachable_and_unreachable(queries, reactor):
    """
    ping() is True for a live store and False (never an error) for one that
    cannot be reached.
    """
    assert (yield queries.ping().addTimeout(TIMEOUT, reactor)) is True
    dead = StoreQueries("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2", reactor, poolSize=1)
    dead.startService()
    try:
        assert (yield dead.ping().addTimeout(TIMEOUT, reactor)) is False
    finally:
        yield dead.stopService()


def test_cursor_round_trip() -> None:
    """
    Cursors carry float and integer positions exactly.
    """
    for position in [(T0 + 0.1, 5), (1718100000123457, 2**40), (-1.5e-7, 0)]:
        assert decodeCursor(encodeCursor(position)) == position
        assert type(decodeCursor(encodeCursor(position))[0]) is type(position[0])
    for bad in ["", "AAAA", encodeCursor((float("nan"), 1)), encodeCursor((1.0, -1))]:
        with pytest.raises(ValueError):
            decodeCursor(bad)


@pytest.mark.timeout(60)
@pytest_twisted.inlineCallbacks
def test_rollups_encoder_runs_off_the_reactor_thread(queries, reactor):
    """
    The encoder a caller hands to rollups() (the API's response body) runs
    on the query thread, and its result is what the Deferred fires with.
    """
    import threading

    seen = []

    def encode(rows):
        seen.append(threading.current_thread())
        return ("encoded", sum(row["count"] for row in rows))

    result = yield queries.rollups("s0", None, T0 - 3600, T0 + 3600, "1m", encode=encode)
    assert result[0] == "encoded" and result[1] > 0
    assert seen and seen[0] is not threading.main_thread()
