"""
The JSON/CSV API and the operational endpoints: C{/api/sensors},
C{/api/readings}, C{/metrics}, C{/healthz}, C{/readyz}.

Every store query goes through the store's query side, which runs it in its
own thread pool: the reactor thread only parses parameters and encodes
results. A client that goes away before its answer is ready is simply not
written to.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Dict, List, Optional, Tuple
from urllib.parse import urlencode

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..interfaces import IStoreQueries
from .encoding import jsonBytes, readingFromRow, readingsCSV, sensorFromRow
from .params import ParameterError, ReadingsQuery, parseReadingsQuery, wantsCSV

__all__ = [
    "SensorsResource",
    "ReadingsResource",
    "MetricsResource",
    "HealthResource",
    "ReadyResource",
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


class _NoStore(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        code, headers, body = _errorAnswer(503, "this server stores no readings (--store none)")
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body


class SensorsResource(Resource):
    """
    C{GET /api/sensors}: every stored series (sensor and kind) with its
    latest value and time, unit, reading count, first and last time seen and
    whether the sensor has a connection open now; plus the server's C{now},
    so a client can place times against the server's clock.
    """

    isLeaf = True

    def __init__(
        self, queries: IStoreQueries, connectedSensors: Callable[[], Collection[str]], clock: IReactorTime
    ) -> None:
        super().__init__()
        self._queries = queries
        self._connectedSensors = connectedSensors
        self._clock = clock

    def render_GET(self, request: Request) -> object:
        def answer(rows: List[Dict[str, Any]]) -> Answer:
            connected = set(self._connectedSensors())
            sensors = [sensorFromRow(row, row["sensor"] in connected) for row in rows]
            sensors.sort(key=lambda s: (s["sensor"], s["kind"]))
            return _jsonAnswer(200, {"now": self._clock.seconds(), "sensors": sensors})

        return _deliver(request, maybeDeferred(self._queries.sensors).addCallback(answer), "listing sensors")


class ReadingsResource(Resource):
    """
    C{GET /api/readings}: stored readings in time order, one page at a time.

    JSON (C{{"readings": [...], "next": CURSOR-or-null}}) unless the client
    asks for CSV (C{format=csv}, or C{Accept: text/csv}). Either way, when
    more readings follow, the C{Link} header (C{rel="next"}) holds the next
    page's URL and C{X-Next-Cursor} its cursor; the last page has neither.
    Bad parameters are answered with 400 and C{{"error": ..., "parameter": ...}}.
    """

    isLeaf = True

    def __init__(self, queries: IStoreQueries) -> None:
        super().__init__()
        self._queries = queries

    def render_GET(self, request: Request) -> object:
        try:
            query = parseReadingsQuery(request.args or {})
        except ParameterError as e:
            _send(request, _errorAnswer(400, e.message, e.parameter))
            return NOT_DONE_YET
        csv = wantsCSV(query, request.getHeader(b"accept"))
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
            from ..store import StoreRejected

            failure.trap(ValueError, StoreRejected)
            if failure.check(StoreRejected):
                # The parameters passed our checks but not the database's
                # (a value out of its range): still the request's fault.
                _log.warn("the store refused a readings query: {why}", why=failure.getErrorMessage())
                return _errorAnswer(400, f"the store refused the query: {failure.getErrorMessage()}")
            if query.cursor is not None:
                return _errorAnswer(400, f"cursor is not valid: {failure.value}", "cursor")
            return _errorAnswer(400, str(failure.value))

        def answer(page: Dict[str, Any]) -> Answer:
            return self._answer(request, query, page, csv)

        d.addCallbacks(answer, refused)
        return _deliver(request, d, "reading readings")

    def _answer(self, request: Request, query: ReadingsQuery, page: Dict[str, Any], csv: bool) -> Answer:
        readings = [readingFromRow(row) for row in page["readings"]]
        nextCursor: Optional[str] = page.get("next")
        headers = {b"vary": b"Accept"}
        if nextCursor is not None:
            headers[b"x-next-cursor"] = nextCursor.encode("ascii")
            headers[b"link"] = b"<" + self._nextURL(request, nextCursor) + b'>; rel="next"'
        if csv:
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
    seconds, else 503 with the reason (readiness). A server without a store
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
            return _jsonAnswer(503, {"status": "unavailable", "reason": failure.getErrorMessage() or repr(failure.value)})

        return _deliver(request, ping.addCallbacks(answered, failed), "checking the store")


def noStoreResource() -> Resource:
    """
    What C{/api/sensors} and C{/api/readings} are when the server stores
    nothing: 503 with a message saying so.
    """
    return _NoStore()
