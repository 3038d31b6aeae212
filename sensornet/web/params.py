"""
Pure parsing of the HTTP API's query parameters.

Every function here takes the decoded query (as C{twisted.web} gives it:
C{dict[bytes, list[bytes]]}) and either returns plain values or raises
L{ParameterError} naming the offending parameter, so the resource can answer
C{400} with a message a person can act on. Nothing here touches a request,
a reactor or the store (only the store's limits are shared with it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, List, Mapping, Optional, Sequence

from ..store.queries import EARLIEST_TIME, LATEST_TIME, MAX_LIMIT

__all__ = [
    "ParameterError",
    "ReadingsQuery",
    "parseReadingsQuery",
    "parseTime",
    "singleParameter",
    "wantsCSV",
    "DEFAULT_LIMIT",
    "READINGS_PARAMETERS",
]

#: Readings per page when the client names no C{limit}; the largest
#: accepted is the store's L{MAX_LIMIT}.
DEFAULT_LIMIT = 1000

#: Every query parameter C{GET /api/readings} understands.
READINGS_PARAMETERS = ("sensor", "kind", "since", "until", "limit", "cursor", "format")
_FORMATS = ("json", "csv")


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
    )


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
