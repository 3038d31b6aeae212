"""
Pure parsing of the HTTP API's query parameters.

Every function here takes the decoded query (as C{twisted.web} gives it:
C{dict[bytes, list[bytes]]}) and either returns plain values or raises
L{ParameterError} naming the offending parameter, so the resource can answer
C{400} with a message a person can act on. Nothing here touches a request,
a reactor or the store (only the store's limits are shared with it): the
time "now", which a rollup range defaults to, is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, List, Mapping, Optional, Sequence

from ..store.queries import EARLIEST_TIME, LATEST_TIME, MAX_BUCKETS, MAX_LIMIT, STEP_SECONDS, bucketRange

__all__ = [
    "ParameterError",
    "ReadingsQuery",
    "RollupRange",
    "parseReadingsQuery",
    "rollupRange",
    "parseTime",
    "singleParameter",
    "wantsCSV",
    "DEFAULT_LIMIT",
    "READINGS_PARAMETERS",
    "STEPS",
    "DEFAULT_SPANS",
    "AUTO_FINEST_SPAN",
]

#: Readings per page when the client names no C{limit}; the largest
#: accepted is the store's L{MAX_LIMIT}.
DEFAULT_LIMIT = 1000

#: Every query parameter C{GET /api/readings} understands.
READINGS_PARAMETERS = ("sensor", "kind", "since", "until", "limit", "cursor", "format", "step")
_FORMATS = ("json", "csv")

#: The values C{step} takes: a bucket width the store keeps, or C{auto}.
#: Case matters: C{1M} could as well mean a month.
STEPS = tuple(STEP_SECONDS) + ("auto",)

#: How far back C{since} defaults to, from C{until}, per step (seconds).
DEFAULT_SPANS = {"1m": 86_400.0, "1h": 30 * 86_400.0, "auto": 86_400.0}

#: C{step=auto} takes minutes up to this range (seconds), hours beyond it.
AUTO_FINEST_SPAN = 2 * 86_400.0


class ParameterError(ValueError):
    """
    A query parameter is missing, repeated, unknown or malformed.

    @ivar parameter: The parameter's name, as the client spelled it.
    @ivar message: A sentence saying what is wrong, naming the parameter.
    """

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


@dataclass(frozen=True)
class ReadingsQuery:
    """
    The validated parameters of C{GET /api/readings}.

    Times are seconds since the epoch (UTC); C{since} is inclusive and
    C{until} exclusive, as the store reads them.
    """

    sensor: Optional[str] = None
    kind: Optional[str] = None
    since: Optional[float] = None
    until: Optional[float] = None
    limit: int = DEFAULT_LIMIT
    cursor: Optional[str] = None
    format: Optional[str] = None
    step: Optional[str] = None


@dataclass(frozen=True)
class RollupRange:
    """
    What a C{GET /api/readings?step=...} reads: the buckets of C{step}
    (C{"1m"} or C{"1h"}, never C{"auto"}) from C{since} (inclusive) to
    C{until} (exclusive), both on the step's edges, in seconds since the
    epoch; C{buckets} of them per series, at most L{MAX_BUCKETS}.
    """

    step: str
    since: float
    until: float
    buckets: int


def parseTime(name: str, text: str) -> float:
    """
    Read a point in time given either as seconds since the epoch
    (C{"1718100942"}, C{"1718100942.5"}) or as ISO 8601
    (C{"2024-06-11T10:15:42Z"}, C{"2024-06-11T10:15:42+02:00"},
    C{"2024-06-11"}); an ISO time without an offset is taken as UTC.

    @param name: The parameter's name, for the error message.
    @return: Seconds since the epoch, from the year 1 to the year 9999
        (L{EARLIEST_TIME} to L{LATEST_TIME}).
    @raise ParameterError: If C{text} is neither, or is out of that range.
    """
    stripped = text.strip()
    try:
        seconds = float(stripped)
    except ValueError:
        try:
            moment = datetime.fromisoformat(stripped.replace("z", "Z"))
        except ValueError:
            raise ParameterError(
                name,
                f"{name} must be seconds since the epoch or an ISO 8601 time "
                f"(e.g. 2024-06-11T10:15:42Z), not {text!r}",
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        seconds = moment.timestamp()
    if not math.isfinite(seconds):
        raise ParameterError(name, f"{name} must be a finite time, not {text!r}")
    if not EARLIEST_TIME <= seconds <= LATEST_TIME:
        raise ParameterError(name, f"{name} must be a time between the years 1 and 9999, not {text!r}")
    return seconds


def singleParameter(args: Mapping[bytes, Sequence[bytes]], name: str) -> Optional[str]:
    """
    The one value of query parameter C{name}, decoded, or L{None} when it
    is absent.

    @raise ParameterError: It is given more than once, is not UTF-8, or
        holds a NUL character.
    """
    values = args.get(name.encode("ascii"))
    if not values:
        return None
    if len(values) > 1:
        raise ParameterError(name, f"{name} may be given only once")
    try:
        value = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ParameterError(name, f"{name} is not valid UTF-8") from None
    if "\x00" in value:
        # No stored name holds one, and PostgreSQL refuses it in a query.
        raise ParameterError(name, f"{name} must not contain a NUL character")
    return value


def parseReadingsQuery(args: Mapping[bytes, Sequence[bytes]]) -> ReadingsQuery:
    """
    Validate the query of C{GET /api/readings}.

    Unknown parameters are refused rather than ignored, so a typo
    (C{sensr=...}) is not silently answered with every sensor's readings.
    Empty values (C{sensor=}) mean "not given".

    @raise ParameterError: For the first bad parameter found.
    """
    for key in args:
        name = key.decode("utf-8", "replace")
        if name not in READINGS_PARAMETERS:
            raise ParameterError(
                name,
                f"unknown parameter {name!r}; known: {', '.join(READINGS_PARAMETERS)}",
            )
    values: Dict[str, Optional[str]] = {
        name: (singleParameter(args, name) or None) for name in READINGS_PARAMETERS
    }
    since = parseTime("since", values["since"]) if values["since"] else None
    until = parseTime("until", values["until"]) if values["until"] else None
    if since is not None and until is not None and until < since:
        raise ParameterError("until", "until must not be earlier than since")
    limit = DEFAULT_LIMIT
    if values["limit"] is not None:
        try:
            limit = int(values["limit"])
        except ValueError:
            raise ParameterError("limit", f"limit must be a whole number, not {values['limit']!r}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise ParameterError("limit", f"limit must be between 1 and {MAX_LIMIT}, not {limit}")
    step = values["step"]
    if step is not None:
        if step not in STEPS:
            raise ParameterError(
                "step",
                f"step must be one of {', '.join(STEPS)} (minute, hour, or chosen from the range), not {step!r}",
            )
        if values["sensor"] is None:
            raise ParameterError("sensor", "sensor is required with step: rollups are read one sensor at a time")
        for paging in ("cursor", "limit"):
            if values[paging] is not None:
                raise ParameterError(
                    paging,
                    f"{paging} pages raw readings and cannot be used with step: a step answer is one list of "
                    f"at most {MAX_BUCKETS} buckets per kind; narrow since and until instead",
                )
    fmt = values["format"]
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in _FORMATS:
            raise ParameterError("format", f"format must be one of {', '.join(_FORMATS)}, not {values['format']!r}")
    return ReadingsQuery(
        sensor=values["sensor"],
        kind=values["kind"],
        since=since,
        until=until,
        limit=limit,
        cursor=values["cursor"],
        format=fmt,
        step=step,
    )


def rollupRange(query: ReadingsQuery, now: float) -> RollupRange:
    """
    The buckets a query with a C{step} reads.

    C{until} defaults to C{now}, C{since} to C{until} less
    L{DEFAULT_SPANS}C{[step]}. C{auto} is C{1m} when C{until - since} is at
    most L{AUTO_FINEST_SPAN}, else C{1h}. The range then grows to the
    step's edges (a bucket is always whole; within the years 1 to 9999).

    @param query: A query from L{parseReadingsQuery} whose C{step} is set.
    @param now: Seconds since the epoch.
    @raise ParameterError: C{since} is later than C{until} (or than now,
        when C{until} is not given), or the range holds more than
        L{MAX_BUCKETS} buckets of the step.
    """
    if query.step is None:
        raise ValueError("rollupRange needs a query with a step")
    until = query.until if query.until is not None else min(max(now, EARLIEST_TIME), LATEST_TIME)
    if query.since is not None:
        since = query.since
    else:
        since = max(until - DEFAULT_SPANS[query.step], EARLIEST_TIME)
    if until < since:
        raise ParameterError(
            "since", "since must not be later than until (which is now when not given)"
        )
    step = query.step
    if step == "auto":
        step = "1m" if until - since <= AUTO_FINEST_SPAN else "1h"
    start, end, buckets = bucketRange(since, until, step)
    end = min(end, LATEST_TIME)
    if buckets > MAX_BUCKETS:
        coarser = [s for s in STEP_SECONDS if STEP_SECONDS[s] > STEP_SECONDS[step]]
        advice = f"use step={coarser[0]} or a shorter range" if coarser else "use a shorter range"
        raise ParameterError(
            "step",
            f"since to until holds {buckets} buckets of {step}, more than the {MAX_BUCKETS} one request "
            f"may read: {advice}",
        )
    return RollupRange(step, start, end, buckets)


def wantsCSV(query: ReadingsQuery, accept: Optional[bytes]) -> bool:
    """
    Whether to answer in CSV: C{format} decides when given; otherwise CSV
    when the C{Accept} header names C{text/csv} (with a non-zero quality)
    and does not rank JSON above it.
    """
    if query.format is not None:
        return query.format == "csv"
    if not accept:
        return False
    ranks: Dict[str, float] = {}
    for part in accept.decode("latin-1").split(","):
        pieces: List[str] = [p.strip() for p in part.split(";")]
        mediaType = pieces[0].lower()
        quality = 1.0
        for parameter in pieces[1:]:
            if parameter.lower().startswith("q="):
                try:
                    quality = float(parameter[2:])
                except ValueError:
                    quality = 0.0
        ranks[mediaType] = quality
    csvRank = ranks.get("text/csv", 0.0)
    return csvRank > 0 and csvRank >= ranks.get("application/json", 0.0)
