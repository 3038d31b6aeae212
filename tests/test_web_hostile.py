"""
The HTTP side under hostile requests: whatever a client sends, a bad request
is answered 400 or 404 with a clear message, never 500, and nothing is
logged with a traceback. Real requests on loopback against both store
backends (PostgreSQL refuses values SQLite takes), plus properties of the
pure parameter and cursor parsers over generated input.
"""

from __future__ import annotations

import base64
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from sensornet.store import StoreRejected
from sensornet.store.queries import EARLIEST_TIME, LATEST_TIME, decodeCursor, encodeCursor
from sensornet.web.params import ParameterError, ReadingsQuery, parseReadingsQuery
from sensornet.web.testing import WebHarness

from test_web_api import T0, _FailingQueries, _stub, httpClient, openStream, sampleReadings, within


def rawCursor(text: str) -> str:
    """
    A cursor carrying C{text} as is, as an attacker would craft it.
    """
    return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii").rstrip("=")


@contextmanager
def loggedFailures() -> Iterator[List[Dict[str, Any]]]:
    """
    Collect every log event that carries a traceback (C{log.failure},
    C{log.err}) while the block runs.
    """
    failures: List[Dict[str, Any]] = []

    def observe(event: Dict[str, Any]) -> None:
        if event.get("log_failure") is not None:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield failures
    finally:
        globalLogPublisher.removeObserver(observe)


@pytest_twisted.async_yield_fixture
async def anyStore(store_url: str, tmp_path: Path, reactor: Any):
    """
    A web harness over each backend, holding the sample readings.
    """
    harness = WebHarness(tmp_path, reactor, storeURL=store_url)
    await within(harness.start(), reactor)
    try:
        await within(harness.store(sampleReadings()), reactor)
        yield harness
    finally:
        await within(harness.stop(), reactor)


async def get(reactor: Any, url: str, method: str = "GET") -> Tuple[int, bytes]:
    response = await within(httpClient(reactor).request(method, url), reactor)
    body = await within(response.content(), reactor)
    return response.code, body


@pytest_twisted.ensureDeferred
async def test_cursor_naming_a_row_id_past_64_bits_is_400_not_500(anyStore: WebHarness, reactor: Any):
    """
    Regression: a crafted cursor with a 20-digit row id overflowed the
    database's integer (OverflowError), answered 500 and logged a traceback.
    """
    with loggedFailures() as failures:
        code, body = await get(reactor, anyStore.url + "/api/readings?cursor=" + encodeCursor((T0, int("9" * 20))))
    assert code == 400, body
    answer = json.loads(body)
    assert answer["parameter"] == "cursor" and "cursor" in answer["error"]
    assert failures == []


@pytest_twisted.ensureDeferred
async def test_static_name_with_a_nul_byte_is_404_not_500(anyStore: WebHarness, reactor: Any):
    """
    Regression: C{/static/%00} made the operating system refuse the path
    (ValueError: embedded null byte), answered 500 and logged a traceback.
    """
    with loggedFailures() as failures:
        code, body = await get(reactor, anyStore.url + "/static/%00")
    assert code == 404, body
    assert b"No such file" in body
    assert failures == []


#: (path and query, the answer expected): each is a request a person could
#: send by hand or by mistake; 400s must name what is wrong.
HOSTILE: List[Tuple[str, int]] = [
    # Cursors: crafted positions, not base64, not ASCII, huge.
    ("/api/readings?cursor=" + rawCursor("1718100000.0:" + "9" * 20), 400),
    ("/api/readings?cursor=" + rawCursor("9" * 20 + ":1"), 400),
    ("/api/readings?cursor=" + rawCursor("-" + "9" * 20 + ":1"), 400),
    ("/api/readings?cursor=" + rawCursor("9" * 19 + ":1"), 400),
    ("/api/readings?cursor=" + rawCursor("1e308:1"), 400),
    ("/api/readings?cursor=" + rawCursor("nan:1"), 400),
    ("/api/readings?cursor=" + rawCursor("-inf:1"), 400),
    ("/api/readings?cursor=" + rawCursor("1.0:-1"), 400),
    ("/api/readings?cursor=" + rawCursor("1.0:1:2"), 400),
    ("/api/readings?cursor=" + rawCursor(":"), 400),
    ("/api/readings?cursor=" + rawCursor("1.0:" + "1" * 5000), 400),
    ("/api/readings?cursor=" + "A" * 8000, 400),
    ("/api/readings?cursor=%00", 400),
    ("/api/readings?cursor=%C3%A9", 400),
    ("/api/readings?cursor=%ff", 400),
    ("/api/readings?cursor=a&cursor=b", 400),
    # Times: beyond any calendar, not numbers, not finite.
    ("/api/readings?since=1e300", 400),
    ("/api/readings?since=-1e300", 400),
    ("/api/readings?until=1e309", 400),
    ("/api/readings?since=-inf", 400),
    ("/api/readings?since=NaN", 400),
    ("/api/readings?since=" + "9" * 30, 400),
    ("/api/readings?since=0001-01-01T00:00:00%2B01:00", 400),
    ("/api/readings?until=9999-12-31T23:59:59-23:59", 400),
    ("/api/readings?since=%00", 400),
    ("/api/readings?since=%E2%88%9E", 400),
    ("/api/readings?since=-62135596800&until=253402300799", 200),
    # Limits.
    ("/api/readings?limit=-1", 400),
    ("/api/readings?limit=0x10", 400),
    ("/api/readings?limit=1e3", 400),
    ("/api/readings?limit=" + "9" * 5000, 400),
    ("/api/readings?limit=1&limit=2", 400),
    ("/api/readings?limit=%D9%A3", 200),  # ARABIC-INDIC DIGIT THREE: int() reads 3
    # Names: NUL, not UTF-8, long, unicode.
    ("/api/readings?sensor=a%00b", 400),
    ("/api/readings?kind=%00", 400),
    ("/api/readings?sensor=%ff", 400),
    ("/api/readings?sensor=a&sensor=b", 400),
    ("/api/readings?sensor=%E2%82%AC%F0%9F%94%A5", 200),
    ("/api/readings?sensor=" + "x" * 5000, 200),
    ("/api/readings?format=%00", 400),
    ("/api/readings?%ff=1", 400),
    ("/api/readings?%00=1", 400),
    ("/api/readings/%00", 200),  # a leaf: the rest of the path is ignored
    ("/api/sensors?%00=%ff", 400),  # paged and filtered now: its parameters are checked like /api/readings'
    ("/readyz?%00", 200),
    ("/metrics?%ff", 200),
    # Paths: NUL, not UTF-8, traversal however encoded, long, files as directories.
    ("/static/%00", 404),
    ("/static/app.js%00.html", 404),
    ("/static/%ff", 404),
    ("/static/..%2f", 404),
    ("/static/%2e%2e/", 404),
    ("/static/%2e%2e", 404),
    ("/static/%2e%2e%2f%2e%2e%2fweb%2fapi.py", 404),
    ("/static/..%5c..%5cweb%5capi.py", 404),
    ("/static/" + "a" * 3000, 404),
    ("/static/index.html/x", 404),
    ("/static//", 404),
    ("/%00", 404),
    ("/api/%00", 404),
    ("/api/%ff", 404),
]


@pytest_twisted.ensureDeferred
async def test_hostile_requests_get_400_or_404_never_500_nor_a_logged_traceback(anyStore: WebHarness, reactor: Any):
    """
    Every request of L{HOSTILE} gets the answer listed (a 400 in JSON that
    names the parameter it refuses), and not one logs a traceback.
    """
    answers: List[Tuple[str, int]] = []
    with loggedFailures() as failures:
        for path, _ in HOSTILE:
            code, body = await get(reactor, anyStore.url + path)
            answers.append((path, code))
            if code == 400:
                assert json.loads(body)["error"], (path, body)
    assert answers == HOSTILE
    assert [event.get("log_format") for event in failures] == []


@pytest_twisted.ensureDeferred
async def test_hostile_methods_and_streams_never_get_a_500(anyStore: WebHarness, reactor: Any):
    """
    A method a resource does not serve gets 405, a method the server never
    serves 501 (Twisted's answer: not a failure); a live stream asked for
    with a filter that is not UTF-8, holds a NUL or is repeated gets 400, and
    one filtered on a very long name opens (it matches nothing) and closes
    cleanly; nothing logs a traceback.
    """
    with loggedFailures() as failures:
        for method, path, expected in [
            ("POST", "/api/readings", 405),
            ("POST", "/static/dashboard.js", 405),
            ("DELETE", "/static/dashboard.js", 501),
            ("PUT", "/metrics", 501),
        ]:
            code, _ = await get(reactor, anyStore.url + path, method)
            assert code == expected, (method, path)
        for query in ("sensor=%ff", "sensor=a%00", "kind=%00&kind=x", "prefix=%c3"):
            code, _ = await get(reactor, anyStore.url + "/api/stream?" + query)
            assert code == 400, query
        response, collector = await openStream(reactor, anyStore.url + "/api/stream?sensor=" + "x" * 5000)
        assert response.code == 200
        await within(collector.whenContains(b"retry:"), reactor)
        collector.transport.stopProducing()
        await within(collector.done, reactor)
    assert [event.get("log_format") for event in failures] == []


class _RefusingQueries(_FailingQueries):
    def readings(self, sensor=None, kind=None, since=None, until=None, limit=1000, cursor=None) -> defer.Deferred:
        return defer.fail(StoreRejected("timestamp out of range"))


@pytest_twisted.ensureDeferred
async def test_a_query_the_store_refuses_is_400_not_500():
    """
    Should a value pass the API's checks but not the database's (PostgreSQL
    refuses some times SQLite takes), the answer is 400 with the store's
    reason, and no traceback is logged.
    """
    stub = _stub(_RefusingQueries(lambda: defer.succeed(True)))
    with loggedFailures() as failures:
        response = await stub.get("http://x/api/readings?since=1")
        body = await response.json()
    assert response.code == 400
    assert "refused" in body["error"] and "timestamp out of range" in body["error"]
    assert failures == []
    stub.flush()


# -- the pure parsers over generated input ------------------------------------

GENERATED = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_names = st.sampled_from([b"sensor", b"kind", b"since", b"until", b"limit", b"cursor", b"format"])
_values = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda text: text.encode("utf-8")),
    st.integers().map(lambda number: str(number).encode("ascii")),
    st.floats().map(lambda number: repr(number).encode("ascii")),
    st.datetimes().map(lambda moment: moment.isoformat().encode("ascii")),
)


@GENERATED
@given(st.dictionaries(st.one_of(_names, st.binary(max_size=8)), st.lists(_values, min_size=1, max_size=3)))
def test_any_query_is_parsed_or_refused_naming_a_parameter(args: Mapping[bytes, Sequence[bytes]]) -> None:
    """
    L{parseReadingsQuery} never raises anything but L{ParameterError}, and
    what it accepts is within what the store takes.
    """
    try:
        query = parseReadingsQuery(args)
    except ParameterError as e:
        assert isinstance(e.parameter, str) and e.message
        return
    assert isinstance(query, ReadingsQuery)
    for moment in (query.since, query.until):
        assert moment is None or EARLIEST_TIME <= moment <= LATEST_TIME
    for text in (query.sensor, query.kind, query.cursor):
        assert text is None or "\x00" not in text


_cursorTexts = st.one_of(
    st.text(max_size=60),
    st.tuples(
        st.one_of(st.integers(), st.floats(), st.text(max_size=10)),
        st.one_of(st.integers(), st.text(max_size=10)),
    ).map(lambda pair: rawCursor(f"{pair[0]!r}:{pair[1]}") if all(c.isascii() for c in f"{pair[0]!r}:{pair[1]}") else ""),
)


@GENERATED
@given(_cursorTexts)
def test_any_cursor_is_decoded_within_the_store_range_or_refused(cursor: str) -> None:
    """
    L{decodeCursor} never raises anything but L{ValueError}, and a position
    it accepts fits both backends: a 64-bit row id and a time in range.
    """
    try:
        timeKey, rowId = decodeCursor(cursor)
    except ValueError:
        return
    assert 0 <= rowId < 2**63
    seconds = timeKey / 1_000_000 if isinstance(timeKey, int) else timeKey
    assert EARLIEST_TIME <= seconds <= LATEST_TIME
