"""
The fleet's endpoints: C{/api/sensors} (one page of series, filtered and
sorted), C{/api/fleet} (counts by state and kind) and C{/api/sparklines}
(many series' recent shape from the rollups, in one query).

The reactor thread only parses parameters; queries, states, totals and the
JSON encoding run on the query side's threads, so an answer's cost on the
reactor does not grow with the page, let alone the fleet. See docs/fleet.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..fleet.states import STATES
from ..fleet.summary import FleetSummaryCache
from ..store.fleet import MAX_PAGE, MAX_SPARKLINES, SORTS, validateGlob
from ..store.queries import STEP_SECONDS
from .api import Answer, _deliver, _errorAnswer, _jsonAnswer, _refused, _send
from .encoding import isoTime, jsonBytes
from .params import ParameterError, singleParameter

__all__ = [
    "SENSORS_PARAMETERS",
    "SPARKLINES_PARAMETERS",
    "SensorsQuery",
    "SparklinesQuery",
    "parseSensorsQuery",
    "parseSparklinesQuery",
    "sparklineValues",
    "SensorsResource",
    "FleetResource",
    "SparklinesResource",
]

#: Every query parameter C{GET /api/sensors} understands.
SENSORS_PARAMETERS = ("limit", "cursor", "prefix", "glob", "kind", "state", "sort")

#: Every query parameter C{GET /api/sparklines} understands.
SPARKLINES_PARAMETERS = ("series", "window", "points")

#: Rows per page when the client names no C{limit}.
DEFAULT_PAGE = 100

#: Sparkline defaults and bounds: the window in seconds, the points.
DEFAULT_WINDOW = 3600.0
MAX_WINDOW = 366 * 86_400.0
DEFAULT_POINTS = 60
MAX_POINTS = 500

#: Windows up to this many seconds are read from minute rollups, longer
#: ones from hours.
FINEST_WINDOW = 2 * 86_400.0

_JSON = b"application/json; charset=utf-8"


def _refuseUnknown(args: Mapping[bytes, Sequence[bytes]], known: Sequence[str]) -> None:
    for key in args:
        name = key.decode("utf-8", "replace")
        if name not in known:
            raise ParameterError(name, f"unknown parameter {name!r}; known: {', '.join(known)}")


@dataclass(frozen=True)
class SensorsQuery:
    """
    The validated parameters of C{GET /api/sensors}.
    """

    limit: int = DEFAULT_PAGE
    cursor: Optional[str] = None
    prefix: Optional[str] = None
    glob: Optional[str] = None
    kind: Optional[str] = None
    state: Optional[str] = None
    sort: str = "name"


def parseSensorsQuery(args: Mapping[bytes, Sequence[bytes]]) -> SensorsQuery:
    """
    Validate the query of C{GET /api/sensors}: unknown parameters are
    refused, empty values mean "not given".

    @raise ParameterError: For the first bad parameter found.
    """
    _refuseUnknown(args, SENSORS_PARAMETERS)
    values = {name: (singleParameter(args, name) or None) for name in SENSORS_PARAMETERS}
    limit = DEFAULT_PAGE
    if values["limit"] is not None:
        try:
            limit = int(values["limit"])
        except ValueError:
            raise ParameterError("limit", f"limit must be a whole number, not {values['limit']!r}") from None
        if not 1 <= limit <= MAX_PAGE:
            raise ParameterError("limit", f"limit must be between 1 and {MAX_PAGE}, not {limit}")
    if values["glob"] is not None:
        try:
            validateGlob(values["glob"])
        except ValueError as e:
            raise ParameterError("glob", str(e)) from None
    for name in ("prefix", "kind"):
        text = values[name]
        if text is not None and len(text) > 128:
            raise ParameterError(name, f"{name} has at most 128 characters")
    if values["state"] is not None and values["state"] not in STATES:
        raise ParameterError("state", f"state must be one of {', '.join(STATES)}, not {values['state']!r}")
    sort = values["sort"] or "name"
    if sort not in SORTS:
        raise ParameterError("sort", f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
    return SensorsQuery(limit, values["cursor"], values["prefix"], values["glob"], values["kind"],
                        values["state"], sort)


def _sensorEntry(row: Dict[str, Any], connected: bool) -> Dict[str, Any]:
    ts = row["ts"]
    return {
        "sensor": row["sensor"],
        "kind": row["kind"],
        "unit": row["unit"],
        "value": row["value"],
        "ts": ts,
        "time": isoTime(ts) if ts is not None else None,
        "count": row["count"],
        "first_seen": row["first_seen"],
        "last_seen": row["last_seen"],
        "connected": connected,
        "state": row["state"],
        "interval": row["interval"],
    }


class SensorsResource(Resource):
    """
    C{GET /api/sensors}: one page of the fleet's series (a sensor and a
    kind; a sensor never seen is one row with kind L{None}), each with its
    latest value, unit, reading count, first and last time seen, whether the
    sensor has a connection open now, its state and expected interval; the
    cursor of the next page (L{None} on the last); the count of series the
    filters match (C{total}, with C{total_capped} when it stopped counting);
    and the server's C{now}.

    A query side without fleet queries (no C{sensorsPage}) is asked for
    every series at once, as before paging existed.
    """

    isLeaf = True

    def __init__(
        self, queries: Any, connectedSensors: Callable[[], Collection[str]], clock: IReactorTime
    ) -> None:
        super().__init__()
        self._queries = queries
        self._connectedSensors = connectedSensors
        self._clock = clock

    def render_GET(self, request: Request) -> object:
        try:
            query = parseSensorsQuery(request.args or {})
        except ParameterError as e:
            _send(request, _errorAnswer(400, e.message, e.parameter))
            return NOT_DONE_YET
        now = self._clock.seconds()
        if not hasattr(self._queries, "sensorsPage"):
            return self._unpaged(request, now)
        # Membership tests only, on the query thread: the collection is the
        # factory's live view of connected names (a dict's keys), and a
        # lookup is one atomic operation under the GIL.
        connected = self._connectedSensors()

        def encode(page: Dict[str, Any]) -> Answer:
            sensors = [_sensorEntry(row, row["sensor"] in connected) for row in page["sensors"]]
            body = {"now": now, "sensors": sensors, "next": page["next"], "total": page["total"],
                    "total_capped": page["total_capped"]}
            return _jsonAnswer(200, body)

        d = maybeDeferred(
            self._queries.sensorsPage, now, prefix=query.prefix, glob=query.glob, kind=query.kind,
            state=query.state, sort=query.sort, limit=query.limit, cursor=query.cursor, encode=encode,
        )

        def refused(failure: Failure) -> Answer:
            if query.cursor is not None and failure.check(ValueError):
                return _errorAnswer(400, f"cursor is not valid: {failure.value}", "cursor")
            return _refused(failure, "sensors")

        d.addErrback(refused)
        return _deliver(request, d, "listing sensors")

    def _unpaged(self, request: Request, now: float) -> object:
        # A query side without paging (a test double, a store of another
        # kind): every series at once, in the paged answer's shape.
        from ..fleet.states import Cadence

        cadence = getattr(self._queries, "cadence", Cadence())

        def answer(rows: List[Dict[str, Any]]) -> Answer:
            connected = self._connectedSensors()
            sensors = []
            for row in sorted(rows, key=lambda r: (r["sensor"], r["kind"])):
                count, first, last = int(row.get("count") or 0), row.get("first_seen"), row.get("last_seen")
                entry = dict(row, state=cadence.state(now, count, first, last),
                             interval=cadence.interval(count, first, last), count=count)
                sensors.append(_sensorEntry(entry, row["sensor"] in connected))
            return _jsonAnswer(200, {"now": now, "sensors": sensors, "next": None, "total": len(sensors),
                                     "total_capped": False})

        return _deliver(request, maybeDeferred(self._queries.sensors).addCallback(answer), "listing sensors")


class FleetResource(Resource):
    """
    C{GET /api/fleet}: how many sensors and series there are, series by
    state and by kind, and the alerts pending and firing. Read through a
    L{FleetSummaryCache}: at most one grouped query a second.

    @param alertCounts: Gives C{{"pending": n, "firing": n}} (the rules
        engine's), or L{None} when no rules are loaded.
    """

    isLeaf = True

    def __init__(self, cache: FleetSummaryCache, alertCounts: Optional[Callable[[], Dict[str, int]]] = None) -> None:
        super().__init__()
        self._cache = cache
        self._alertCounts = alertCounts

    def render_GET(self, request: Request) -> object:
        if request.args:
            name = next(iter(request.args)).decode("utf-8", "replace")
            _send(request, _errorAnswer(400, f"unknown parameter {name!r}; /api/fleet takes none", name))
            return NOT_DONE_YET

        def answer(summary: Dict[str, Any]) -> Answer:
            alerts = self._alertCounts() if self._alertCounts is not None else {"pending": 0, "firing": 0}
            return _jsonAnswer(200, dict(summary, alerts=alerts))

        return _deliver(request, self._cache.get().addCallback(answer), "summarising the fleet")


@dataclass(frozen=True)
class SparklinesQuery:
    """
    The validated parameters of C{GET /api/sparklines}: the series, the
    rollup step read, the slots' width (C{slot}, seconds, a multiple of the
    step's) and how many (C{points}), the first slot's start (C{since}).
    """

    series: Tuple[Tuple[str, str], ...]
    step: str
    slot: float
    points: int
    since: float
    until: float


def _positive(name: str, text: Optional[str], default: float, maximum: float) -> float:
    if text is None:
        return default
    try:
        number = float(text)
    except ValueError:
        raise ParameterError(name, f"{name} must be a number, not {text!r}") from None
    if not (math.isfinite(number) and 0 < number <= maximum):
        raise ParameterError(name, f"{name} must be above 0 and at most {maximum:g}, not {text!r}")
    return number


def parseSparklinesQuery(args: Mapping[bytes, Sequence[bytes]], now: float) -> SparklinesQuery:
    """
    Validate the query of C{GET /api/sparklines}: C{series=SENSOR:KIND}
    (repeated, 1 to L{MAX_SPARKLINES}; the kind follows the last colon),
    C{window} seconds back from C{now} (default an hour), C{points} (default
    60, at most L{MAX_POINTS}; fewer when the window holds fewer rollup
    buckets).

    @raise ParameterError: For the first bad parameter found.
    """
    _refuseUnknown(args, SPARKLINES_PARAMETERS)
    raw = args.get(b"series") or []
    if not raw:
        raise ParameterError("series", "series is required: series=SENSOR:KIND, repeated")
    if len(raw) > MAX_SPARKLINES:
        raise ParameterError("series", f"at most {MAX_SPARKLINES} series at once")
    series = []
    for value in raw:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ParameterError("series", "series is not valid UTF-8") from None
        sensor, colon, kind = text.rpartition(":")
        if not colon or not sensor or not kind or "\x00" in text:
            raise ParameterError("series", f"series must be SENSOR:KIND, not {text!r}")
        series.append((sensor, kind))
    window = _positive("window", singleParameter(args, "window"), DEFAULT_WINDOW, MAX_WINDOW)
    points = int(_positive("points", singleParameter(args, "points"), DEFAULT_POINTS, MAX_POINTS))
    if points < 1:
        raise ParameterError("points", "points must be at least 1")
    step = "1m" if window <= FINEST_WINDOW else "1h"
    width = STEP_SECONDS[step]
    slot = max(1, math.ceil(window / points / width)) * width
    points = max(1, math.ceil(window / slot))
    until = math.ceil(now / width) * width
    since = until - points * slot
    return SparklinesQuery(tuple(dict.fromkeys(series)), step, float(slot), points, float(since), float(until))


def sparklineValues(query: SparklinesQuery, buckets: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """
    Rollup buckets folded into each series' C{query.points} slots: a slot's
    value is the mean of its readings (L{None} without any, or when the sum
    overflowed), in the order the series were asked for.
    """
    sums: Dict[Tuple[str, str], List[float]] = {}
    counts: Dict[Tuple[str, str], List[int]] = {}
    for pair in query.series:
        sums[pair] = [0.0] * query.points
        counts[pair] = [0] * query.points
    for bucket in buckets:
        pair = (bucket["sensor"], bucket["kind"])
        if pair not in sums:
            continue
        index = int((bucket["ts"] - query.since) // query.slot)
        if 0 <= index < query.points:
            sums[pair][index] += bucket["mean"] * bucket["count"]
            counts[pair][index] += bucket["count"]
    out = []
    for pair in query.series:
        values: List[Optional[float]] = []
        for total, count in zip(sums[pair], counts[pair]):
            mean = total / count if count else None
            values.append(mean if mean is not None and math.isfinite(mean) else None)
        out.append({"sensor": pair[0], "kind": pair[1], "values": values})
    return out


class SparklinesResource(Resource):
    """
    C{GET /api/sparklines}: the recent shape of up to L{MAX_SPARKLINES}
    series at once, from the rollups (one query for all; folded and encoded
    on the query thread).
    """

    isLeaf = True

    def __init__(self, queries: Any, clock: IReactorTime) -> None:
        super().__init__()
        self._queries = queries
        self._clock = clock

    def render_GET(self, request: Request) -> object:
        now = self._clock.seconds()
        try:
            query = parseSparklinesQuery(request.args or {}, now)
        except ParameterError as e:
            _send(request, _errorAnswer(400, e.message, e.parameter))
            return NOT_DONE_YET

        def encode(buckets: List[Dict[str, Any]]) -> Answer:
            body = {"now": now, "since": query.since, "step": query.slot, "rollup": query.step,
                    "series": sparklineValues(query, buckets)}
            return 200, {b"content-type": _JSON}, jsonBytes(body)

        d = maybeDeferred(self._queries.sparklines, list(query.series), query.since, query.until, query.step,
                          encode=encode)
        d.addErrback(_refused, "sparklines")
        return _deliver(request, d, "reading sparklines")
