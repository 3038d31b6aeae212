"""
The JSON/CSV API and the operational endpoints: C{/api/sensors},
C{/api/readings}, C{/metrics}, C{/healthz}, C{/readyz}.

Every store query goes through the store's query side, which runs it in its
own thread pool: the reactor thread only parses parameters and encodes
results. A client that goes away before its answer is ready is simply not
written to.
"""

from __future__ import annotations

import csv
import io
import math
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, cast
from urllib.parse import urlencode

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..interfaces import IRollupQueries, IStoreQueries
from .encoding import isoTime, jsonBytes, neutraliseCSVText, readingFromRow, readingsCSV
from .params import ParameterError, ReadingsQuery, parseReadingsQuery, rollupRange, wantsCSV

__all__ = [
    "ReadingsResource",
    "MetricsResource",
    "HealthResource",
    "ReadyResource",
    "ROLLUP_CSV_COLUMNS",
    "bucketsFromRows",
    "bucketsCSV",
]

_JSON = b"application/json; charset=utf-8"
_CSV = b"text/csv; charset=utf-8"

#: What an answer is: status code, extra headers, body.
Answer = Tuple[int, Dict[bytes, bytes], bytes]

_log = Logger()


def _jsonAnswer(code: int, body: Any, headers: Optional[Dict[bytes, bytes]] = None) -> Answer:
    allHeaders = {b"content-type": _JSON}
    allHeaders.update(headers or {})
    return code, allHeaders, jsonBytes(body)


def _errorAnswer(code: int, message: str, parameter: Optional[str] = None) -> Answer:
    body: Dict[str, Any] = {"error": message}
    if parameter is not None:
        body["parameter"] = parameter
    return _jsonAnswer(code, body)


def _send(request: Request, answer: Answer) -> None:
    code, headers, body = answer
    request.setResponseCode(code)
    request.setHeader(b"cache-control", b"no-store")
    for name, value in headers.items():
        request.setHeader(name, value)
    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    request.write(body)
    request.finish()


def _deliver(request: Request, answer: "Deferred[Answer]", what: str) -> object:
    """
    Write C{answer} to C{request} when it fires, unless the client has gone
    by then. A store that cannot be read is answered with 503; any other
    failure is a bug here: logged with its traceback and answered with 500.

    @return: L{NOT_DONE_YET}, for C{render_GET} to return.
    """
    gone: List[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def failed(failure: Failure) -> Answer:
        from ..store import StoreUnavailable

        if failure.check(StoreUnavailable):
            _log.warn("{what} failed: store unavailable: {why}", what=what, why=failure.getErrorMessage())
            return _errorAnswer(503, f"{what} failed: the store is unavailable")
        _log.failure("{what} failed", failure, what=what)
        return _errorAnswer(500, f"{what} failed; see the server log")

    def send(result: Answer) -> None:
        if not gone:
            _send(request, result)

    answer.addErrback(failed).addCallback(send)
    return NOT_DONE_YET


def _refused(failure: Failure, what: str) -> Answer:
    """
    A query the query side or the store refused as the request's fault
    (L{ValueError}, L{sensornet.store.StoreRejected}), as a 400; any other
    failure passes on.
    """
    from ..store import StoreRejected

    failure.trap(ValueError, StoreRejected)
    if failure.check(StoreRejected):
        # The parameters passed our checks but not the database's
        # (a value out of its range): still the request's fault.
        _log.warn("the store refused a {what} query: {why}", what=what, why=failure.getErrorMessage())
        return _errorAnswer(400, f"the store refused the query: {failure.getErrorMessage()}")
    return _errorAnswer(400, str(failure.value))


#: The columns of a step answer in CSV, in order (its header line names them).
ROLLUP_CSV_COLUMNS = ("sensor", "kind", "ts", "count", "min", "max", "mean", "last")


def _finite(value: Any) -> Optional[float]:
    number = float(value)
    return number if math.isfinite(number) else None


def bucketsFromRows(rows: Iterable[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """
    Buckets as the query side returns them, in the API's shape: C{ts} is
    each bucket's start in seconds since the epoch and C{time} the same
    instant in ISO 8601 (as a reading's, L{isoTime}); C{mean} is L{None}
    when the sum of the values overflowed (values near 1.8e308), since JSON
    has no infinity.
    """
    out = []
    for row in rows:
        ts = float(row["ts"])
        out.append({
            "sensor": row["sensor"],
            "kind": row["kind"],
            "ts": ts,
            "time": isoTime(ts),
            "count": int(row["count"]),
            "min": float(row["min"]),
            "max": float(row["max"]),
            "mean": _finite(row["mean"]),
            "last": float(row["last"]),
        })
    return out


def bucketsCSV(buckets: Iterable[Mapping[str, Any]]) -> bytes:
    """
    Buckets (in the API's shape) as UTF-8 CSV with a header line naming
    L{ROLLUP_CSV_COLUMNS} and C{\\r\\n} line ends, as the readings' CSV: times
    as seconds since the epoch, numbers as numbers, text cells a spreadsheet
    would take for a formula with a leading apostrophe
    (L{neutraliseCSVText}); a missing value is an empty field.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(ROLLUP_CSV_COLUMNS)
    for bucket in buckets:
        writer.writerow([_csvCell(bucket.get(column)) for column in ROLLUP_CSV_COLUMNS])
    return out.getvalue().encode("utf-8")


def _csvCell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        # repr() of a float round-trips exactly.
        return repr(value)
    if isinstance(value, str):
        return neutraliseCSVText(value)
    return str(value)


class _NoStore(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        code, headers, body = _errorAnswer(503, "this server stores no readings (--store none)")
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body


class ReadingsResource(Resource):
    """
    C{GET /api/readings}: stored readings in time order, one page at a time;
    or, with C{step}, one sensor's readings folded into buckets of a minute
    or an hour (count, min, max, mean, last), read from the rollups.

    JSON (C{{"readings": [...], "next": CURSOR-or-null}}) unless the client
    asks for CSV (C{format=csv}, or C{Accept: text/csv}). Either way, when
    more readings follow, the C{Link} header (C{rel="next"}) holds the next
    page's URL and C{X-Next-Cursor} its cursor; the last page has neither.
    A step answer is not paged (its size is bounded by
    L{sensornet.store.queries.MAX_BUCKETS}): C{{"sensor": ..., "step": ...,
    "since": ..., "until": ..., "buckets": [...]}}, the step it used also
    in the C{X-Step} header (for CSV).
    Bad parameters are answered with 400 and C{{"error": ..., "parameter": ...}}.

    @param queries: The store's query side; C{step} needs one that provides
        L{IRollupQueries} too, else it is answered 501.
    @param clock: Gives "now" (C{seconds()}), where a step's range ends when
        the client names no C{until}; the wall clock when not given.
    """

    isLeaf = True

    def __init__(self, queries: IStoreQueries, clock: Optional[IReactorTime] = None) -> None:
        super().__init__()
        self._queries = queries
        self._now: Callable[[], float] = clock.seconds if clock is not None else time.time

    def render_GET(self, request: Request) -> object:
        try:
            query = parseReadingsQuery(request.args or {})
        except ParameterError as e:
            _send(request, _errorAnswer(400, e.message, e.parameter))
            return NOT_DONE_YET
        asCSV = wantsCSV(query, request.getHeader(b"accept"))
        if query.step is not None:
            return self._renderRollups(request, query, asCSV)
        d = maybeDeferred(
            self._queries.readings,
            sensor=query.sensor,
            kind=query.kind,
            since=query.since,
            until=query.until,
            limit=query.limit,
            cursor=query.cursor,
        )

        def refused(failure: Failure) -> Answer:
            if query.cursor is not None and failure.check(ValueError):
                return _errorAnswer(400, f"cursor is not valid: {failure.value}", "cursor")
            return _refused(failure, "readings")

        def answer(page: Dict[str, Any]) -> Answer:
            return self._answer(request, query, page, asCSV)

        d.addCallbacks(answer, refused)
        return _deliver(request, d, "reading readings")

    def _renderRollups(self, request: Request, query: ReadingsQuery, asCSV: bool) -> object:
        if not IRollupQueries.providedBy(self._queries):
            _send(request, _errorAnswer(501, "this server's store cannot answer with a step", "step"))
            return NOT_DONE_YET
        try:
            span = rollupRange(query, self._now())
        except ParameterError as e:
            _send(request, _errorAnswer(400, e.message, e.parameter))
            return NOT_DONE_YET
        queries = cast(IRollupQueries, self._queries)
        headers = {b"vary": b"Accept", b"x-step": span.step.encode("ascii")}

        def encode(rows: List[Dict[str, Any]]) -> Answer:
            # On the query thread: shaping and encoding a year of hours
            # takes tens of milliseconds.
            buckets = bucketsFromRows(rows)
            if asCSV:
                return 200, {**headers, b"content-type": _CSV}, bucketsCSV(buckets)
            body = {"sensor": query.sensor, "step": span.step, "since": span.since, "until": span.until,
                    "buckets": buckets}
            return _jsonAnswer(200, body, headers)

        d = maybeDeferred(
            queries.rollups,
            sensor=query.sensor,
            kind=query.kind,
            since=span.since,
            until=span.until,
            step=span.step,
            encode=encode,
        )

        d.addErrback(_refused, "rollups")
        return _deliver(request, d, "reading rollups")

    def _answer(self, request: Request, query: ReadingsQuery, page: Dict[str, Any], asCSV: bool) -> Answer:
        readings = [readingFromRow(row) for row in page["readings"]]
        nextCursor: Optional[str] = page.get("next")
        headers = {b"vary": b"Accept"}
        if nextCursor is not None:
            headers[b"x-next-cursor"] = nextCursor.encode("ascii")
            headers[b"link"] = b"<" + self._nextURL(request, nextCursor) + b'>; rel="next"'
        if asCSV:
            headers[b"content-type"] = _CSV
            return 200, headers, readingsCSV(readings)
        return _jsonAnswer(200, {"readings": readings, "next": nextCursor}, headers)

    @staticmethod
    def _nextURL(request: Request, cursor: str) -> bytes:
        # The same query with the cursor replaced: a client follows it as is.
        args: Dict[bytes, List[bytes]] = request.args or {}
        pairs = [
            (key, value)
            for key, values in args.items()
            if key != b"cursor"
            for value in values
        ]
        pairs.append((b"cursor", cursor.encode("ascii")))
        return request.path + b"?" + urlencode(pairs).encode("ascii")


class MetricsResource(Resource):
    """
    C{GET /metrics}: every metric in C{registry}, in the Prometheus text
    format.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self._registry)


class HealthResource(Resource):
    """
    C{GET /healthz}: 200 whenever the reactor answers at all (liveness).
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", _JSON)
        request.setHeader(b"cache-control", b"no-store")
        return jsonBytes({"status": "ok"})


class ReadyResource(Resource):
    """
    C{GET /readyz}: 200 when the store answers a ping within C{timeout}
    seconds, else 503 (readiness). Open to anyone, so the answer names no
    host or error: the reason goes to the log. A server without a store
    is always ready: there is nothing to wait for.
    """

    isLeaf = True

    #: Seconds to wait for the store's answer before calling it unreachable.
    timeout = 5.0

    def __init__(self, queries: Optional[IStoreQueries], clock: IReactorTime) -> None:
        super().__init__()
        self._queries = queries
        self._clock = clock

    def render_GET(self, request: Request) -> object:
        if self._queries is None:
            _send(request, _jsonAnswer(200, {"status": "ready", "store": "none"}))
            return NOT_DONE_YET
        ping: Deferred[bool] = maybeDeferred(self._queries.ping)
        ping.addTimeout(self.timeout, self._clock)

        def answered(ok: bool) -> Answer:
            if ok:
                return _jsonAnswer(200, {"status": "ready"})
            return _jsonAnswer(503, {"status": "unavailable", "reason": "the store did not answer the ping"})

        def failed(failure: Failure) -> Answer:
            # /readyz is open to anyone: the error (which may name the
            # database's host) goes to the log, not to the client.
            _log.warn("readiness check: the store did not answer: {why}",
                      why=failure.getErrorMessage() or repr(failure.value))
            return _jsonAnswer(503, {"status": "unavailable", "reason": "the store did not answer"})

        return _deliver(request, ping.addCallbacks(answered, failed), "checking the store")


def noStoreResource() -> Resource:
    """
    What C{/api/sensors} and C{/api/readings} are when the server stores
    nothing: 503 with a message saying so.
    """
    return _NoStore()
